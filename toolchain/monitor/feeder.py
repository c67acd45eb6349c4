"""The feeder loop: read a batch, send it by topic, commit the position, show the rolling table.

Delivery guarantee. The service counts a request's predictions just before it answers, and has no
request ids, so no client can make delivery exactly-once across every possible crash. What this
feeder guarantees:

- A stop by SIGTERM/SIGINT finishes the batch in hand (or, while the service is unreachable, records
  that nothing of it was delivered) and commits: a restart neither loses nor repeats an item.
- After a hard kill, a restart resends only the topic group whose request was in flight (the state
  records it before each request, and each acknowledged group after it). The group is counted twice
  only if the kill fell after the service counted it and before the state was written; the restart
  reports that group by file and line. ``--uncertain skip`` drops it instead (at most once).
- Lines the service never acknowledged are sent; lines it acknowledged are not sent again.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.monitor.client import GaveUp, MonitorError, Rejected, StopRequested
from toolchain.monitor.sources import STDIN, BadLine, NewsItem
from toolchain.monitor.state import FeedState
from toolchain.monitor.table import RollingShare

ITEM_FIELD = re.compile(r"^texts\[(\d+)\]$")


@dataclass(frozen=True)
class FeedOptions:
    batch_size: int = 32
    flush_s: float = 1.0          # send a partial batch once no new line came for this long
    poll_s: float = 1.0           # pause between looks for new lines when following
    table_every_s: float = 10.0   # print the rolling table this often (0: only at the end)
    uncertain: str = "resend"     # resend | skip: the group in flight when the last run was killed
    default_topic: str | None = None   # topic of items that carry none


class Feeder:
    def __init__(self, sources: list, client, state: FeedState, state_path: Path | None, options: FeedOptions,
                 table: RollingShare, report, show, stop: threading.Event, predictions_path: Path | None = None,
                 bad_lines_path: Path | None = None):
        self.sources, self.client, self.state, self.state_path = sources, client, state, state_path
        self.options, self.table, self.report, self.show, self.stop = options, table, report, show, stop
        self.predictions_path, self.bad_lines_path = predictions_path, bad_lines_path
        self.sent_this_run = 0
        self.last_table = time.monotonic()

    def run(self) -> None:
        """Until the sources are exhausted or a stop is asked; the state is consistent on every exit."""
        try:
            self.recover()
            while not self.stop.is_set():
                records = self.collect()
                if records:
                    self.deliver(records)
                elif self.exhausted():
                    break
                else:
                    self.stop.wait(self.options.poll_s)
                self.maybe_show_table()
        except StopRequested:
            self.park()
            self.report("stopped while the service was unavailable; the unsent items will be sent on restart")
        except (GaveUp, MonitorError):
            self.park()
            raise
        self.show(self.table.render())

    def exhausted(self) -> bool:
        return all(source.exhausted for source in self.sources)

    def read(self, limit: int) -> list:
        records = []
        for source in self.sources:
            if len(records) < limit:
                records += source.read(limit - len(records))
        return records

    def collect(self) -> list:
        """Up to a batch of records; a partial batch waits up to flush_s for more lines."""
        records = self.read(self.options.batch_size)
        deadline = time.monotonic() + self.options.flush_s
        while (records and len(records) < self.options.batch_size and time.monotonic() < deadline
               and not self.exhausted() and not self.stop.is_set()):
            self.stop.wait(min(0.1, self.options.poll_s))
            records += self.read(self.options.batch_size - len(records))
        return records

    def positions_after(self, records: list) -> dict[str, dict]:
        inodes = {name: inode for source in self.sources for name, inode in source.inodes().items()}
        end = {}
        for record in records:
            offset = None if record.source == STDIN else record.end
            end[record.source] = {"offset": offset, "line": record.line, "inode": inodes.get(record.source)}
        return end

    def deliver(self, records: list) -> None:
        self.state.begin(self.positions_after(records))
        self.state.pending["records"] = len(records)
        self.send_batch(records)

    def send_batch(self, records: list) -> None:
        """Send the groups not yet acknowledged, then commit the whole batch."""
        bad = [r for r in records if isinstance(r, BadLine)]
        for line in bad:
            self.report_bad(line)
        items = [r for r in records if isinstance(r, NewsItem)]
        for key, group in group_by_topic(items, self.options.default_topic).items():
            if key in self.state.pending["sent"]:
                continue
            self.state.pending["attempting"] = key
            self.state.save(self.state_path)
            answered = self.send_group(group, key or None)
            self.state.pending["sent"].append(key)
            self.state.pending["attempting"] = None
            self.state.save(self.state_path)
            self.record(answered)
        self.state.bad_lines += len(bad)
        self.state.commit(len(items))
        self.state.save(self.state_path)

    def send_group(self, group: list[NewsItem], topic: str | None) -> list[tuple[NewsItem, dict]]:
        """Predictions for one topic group; items the service refuses are reported and left out."""
        try:
            predictions = self.client.classify([item.text for item in group], topic)
            return list(zip(group, predictions))
        except Rejected as exc:
            match = ITEM_FIELD.match(exc.field or "")
            if match and int(match.group(1)) < len(group):
                at = int(match.group(1))
                self.report_rejected(group[at], exc)
                rest = group[:at] + group[at + 1:]
                return self.send_group(rest, topic) if rest else []
            if len(group) == 1:
                self.report_rejected(group[0], exc)
                return []
            half = len(group) // 2
            return self.send_group(group[:half], topic) + self.send_group(group[half:], topic)

    def record(self, answered: list[tuple[NewsItem, dict]]) -> None:
        for item, prediction in answered:
            self.table.add(item.topic or self.options.default_topic, prediction["label"], item.timestamp)
        self.sent_this_run += len(answered)
        if self.predictions_path and answered:
            with open(self.predictions_path, "a", encoding="utf-8") as out:
                for item, p in answered:
                    out.write(json.dumps({"source": item.source, "line": item.line, "id": item.item_id,
                                          "topic": item.topic or self.options.default_topic, "label": p["label"], "score": p.get("score")}) + "\n")

    def recover(self) -> None:
        """Finish the batch a previous run left pending, reporting a group that may be counted twice."""
        pending = self.state.pending
        if not pending:
            return
        records = self.read(pending["records"])
        if len(records) < pending["records"]:
            self.report(f"the pending batch had {pending['records']} lines, only {len(records)} could be "
                        "read again (a source was replaced or truncated); sending those")
        uncertain = pending.get("attempting")
        if uncertain is not None:
            self.settle_uncertain(uncertain, records)
        self.send_batch(records)

    def settle_uncertain(self, key: str, records: list) -> None:
        items = [r for r in records if isinstance(r, NewsItem)]
        group = group_by_topic(items, self.options.default_topic).get(key, [])
        lines = f"{group[0].where} .. {group[-1].where}" if group else "(none)"
        topic = key or "(none)"
        if self.options.uncertain == "skip":
            self.report(f"not resending {len(group)} items of topic {topic} ({lines}): the previous run was "
                        "stopped while sending them, so the service may or may not have counted them")
            self.state.pending["sent"].append(key)
        else:
            self.report(f"resending {len(group)} items of topic {topic} ({lines}): the previous run was stopped "
                        "while sending them; if the service had already answered, they are counted twice")
        self.state.pending["attempting"] = None

    def park(self) -> None:
        """Stopping mid-batch: if no attempt can have reached the service, the group is not in doubt."""
        if self.state.pending and not self.client.reached:
            self.state.pending["attempting"] = None
        self.state.save(self.state_path)

    def report_bad(self, line: BadLine) -> None:
        self.report(f"{line.where}: skipped bad line: {line.reason}")
        if self.bad_lines_path:
            with open(self.bad_lines_path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"source": line.source, "line": line.line, "reason": line.reason}) + "\n")

    def report_rejected(self, item: NewsItem, exc: Rejected) -> None:
        self.state.rejected_items += 1
        self.report(f"{item.where}: rejected by the service (HTTP {exc.status}): {exc.message}")

    def maybe_show_table(self) -> None:
        every = self.options.table_every_s
        if every and time.monotonic() - self.last_table >= every and self.table.totals:
            self.show(self.table.render())
            self.last_table = time.monotonic()


def group_by_topic(items: list[NewsItem], default: str | None = None) -> dict[str, list[NewsItem]]:
    """Items by topic ("" for none), in order of first appearance; one request per group."""
    groups: dict[str, list[NewsItem]] = {}
    for item in items:
        groups.setdefault(item.topic or default or "", []).append(item)
    return groups
