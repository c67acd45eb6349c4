"""The feeder loop: read a batch, record it, send it by source, commit the position, show the table.

Delivery protocol. The state file is the write-ahead log: each state change below is written
atomically (and fsynced) before the action that depends on it.

1. *Begin*: the batch's exact lines (one byte range per file, with a digest; stdin lines stored whole,
   see :mod:`toolchain.monitor.batch`), the positions after it and the output files' lengths; written
   with its first request's *attempting* (nothing depends on it before).
2. Per request (a source group, or part of one): *attempting*, with a new Idempotency-Key and the
   items it holds (written together with the previous request's answer); then the request, sent with
   that key and retried with it until answered (transient failures: see
   :mod:`toolchain.monitor.client`); its answer is kept as *acked*. A 422 naming ``texts[i]`` (or a
   413 on a single item) records that item as rejected and the rest is sent as a new request; a 413
   or a 422 on the whole list splits the request in two. Nothing else is taken for a rejection.
3. Once every item is settled: the answers are written to the state; only then are the batch's bad
   lines and predictions appended to ``--bad-lines`` / ``--predictions``, which are fsynced.
4. *Commit*: the positions become the batch's ends, the output lengths and counters are updated.

A restart with a pending batch replays exactly its recorded lines (however the inputs grew or new
files appeared since), cuts the output files back to their lengths when the batch began, resends
the request in doubt with *the same* Idempotency-Key and items, sends the items not yet settled,
and goes on from step 3. Inputs read on from the batch's ends.

Guarantee. Assume the inputs are append-only (a complete line is never changed; files are not
replaced or truncated while lines of theirs are pending; stdin is replayed identically), fsync is
honoured, the feeder is the only writer of its state and output files, and the service honours
``Idempotency-Key``: a request with a key it has answered with 200 gets that answer again and is not
counted again, for as long as the feeder may stay down, whichever worker or replica receives it (the
body of a resend is byte for byte the first one's). Then, for any sequence of kills (SIGKILL or power
loss at any instant; SIGTERM/SIGINT finish the batch in hand) and restarts, ended by a run that
drains its inputs: every line is, exactly once, either counted by the service (and written to
``--predictions``), or refused by it by name (422 ``texts[i]``, or 413 alone; reported), or reported
as a bad line (and written to ``--bad-lines``); the state's counters agree. A transient failure never
drops an item: after ``--give-up-after`` the feeder stops (exit 1) with the batch pending.

Against a service that ignores the key (or has forgotten it), only the request in flight at a hard
kill, or one retried after a timeout, can be counted twice; a restart names the former by file and
line. ``--uncertain skip`` drops that request instead (at most once; counted as uncertain).
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.monitor.batch import describe, replay
from toolchain.monitor.client import GaveUp, MonitorError, Rejected, StopRequested
from toolchain.monitor.outputs import Outputs
from toolchain.monitor.inputs import BadLine, NewsItem
from toolchain.monitor.state import FeedState
from toolchain.monitor.table import RollingShare
from toolchain.core.privacy import masker

ITEM_FIELD = re.compile(r"^texts\[(\d+)\]$")
# Output rows also carry these former key names, beside the current ones, until the next release.
FORMER_ROW_KEYS = {"source": "file", "topic": "predicted_topic", "topic_score": "predicted_topic_score"}


@dataclass(frozen=True)
class FeedOptions:
    batch_size: int = 32
    flush_s: float = 1.0          # send a partial batch once no new line came for this long
    poll_s: float = 1.0           # pause between looks for new lines when following
    table_every_s: float = 10.0   # print the rolling table this often (0: only at the end)
    uncertain: str = "resend"     # resend | skip: the request in flight when the last run was killed
    default_source: str | None = None  # source of items that carry none
    mask: bool = True             # mask personal data in the output files and reports (toolchain.core.privacy)


class Feeder:
    def __init__(self, inputs: list, client, state: FeedState, state_path: Path | None, options: FeedOptions,
                 table: RollingShare, report, show, stop: threading.Event, predictions_path: Path | None = None,
                 bad_lines_path: Path | None = None):
        self.inputs, self.client, self.state, self.state_path = inputs, client, state, state_path
        self.options, self.table, self.report, self.show, self.stop = options, table, report, show, stop
        self.redact = masker(options.mask)   # texts go to the service as they are; what is kept or printed is masked
        self.outputs = Outputs({"predictions": predictions_path, "bad_lines": bad_lines_path}, report, self.redact)
        self.sent_this_run = 0
        self.last_table = time.monotonic()

    def run(self) -> None:
        """Until the inputs are exhausted or a stop is asked; the state is consistent on every exit."""
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
        finally:
            self.outputs.close()
        self.show(self.table.render())

    def exhausted(self) -> bool:
        return all(feed.exhausted for feed in self.inputs)

    def read(self, limit: int) -> list:
        records = []
        for feed in self.inputs:
            if len(records) < limit:
                records += feed.read(limit - len(records))
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

    def deliver(self, records: list) -> None:
        """Send a new batch; its write-ahead reaches the disk with its first request (or at step 3)."""
        records, ranges, end = describe(records)
        bad = sum(isinstance(r, BadLine) for r in records)
        self.state.begin(ranges, end, self.outputs.sizes(), bad)
        self.finish(records)

    def recover(self) -> None:
        """Finish the batch a previous run left pending: exactly its lines, nothing counted twice."""
        pending = self.state.pending
        if not pending:
            return
        records = replay(pending["ranges"], self.report)
        if pending["bad_lines"] is None:
            pending["bad_lines"] = sum(isinstance(r, BadLine) for r in records)
        self.outputs.rewind(pending["outputs"])
        if "legacy" in pending:
            self.settle_legacy(pending.pop("legacy"), records)
        self.finish(records, in_doubt=pending["attempting"])

    def finish(self, records: list, in_doubt: dict | None = None) -> None:
        """Send what of the pending batch is not settled yet, write its outputs, commit it."""
        bad = [r for r in records if isinstance(r, BadLine)]
        for line in bad:
            self.report(f"{line.location}: skipped bad line: {self.redact(line.reason)}")
        if in_doubt is not None:
            self.resend_in_doubt(in_doubt, records)
        settled = self.state.settled()
        items = [i for i, r in enumerate(records) if isinstance(r, NewsItem) and i not in settled]
        for source, group in group_by_source(records, items, self.options.default_source).items():
            self.send_group(records, group, source)
        self.save()
        self.outputs.append("bad_lines", [with_former_keys({"file": r.file, "line": r.line, "reason": r.reason})
                                          for r in bad])
        for acked in self.state.pending["acked"]:
            self.record(acked["rows"], [records[i] for i in acked["items"]])
        self.outputs.sync()
        self.state.commit(self.outputs.sizes())
        self.save()

    def send_group(self, records: list, group: list[int], source: str, key: str | None = None) -> None:
        """Requests for one source's items until each is answered or refused by name."""
        parts = [(group, key)]
        while parts:
            part, key = parts.pop(0)
            try:
                self.request(records, part, source, key)
            except Rejected as exc:
                self.state.pending["attempting"] = None
                parts[:0] = [(rest, None) for rest in self.refused(records, part, source, exc)]

    def request(self, records: list, part: list[int], source: str, key: str | None) -> None:
        pending = self.state.pending
        key = key or self.state.next_key()
        pending["attempting"] = {"key": key, "items": part, "source": source}
        self.save()
        predictions = self.client.classify([records[i].text for i in part], source or None, key)
        rows = [prediction_row(records[i], p, source) for i, p in zip(part, predictions)]
        pending["acked"].append({"key": key, "items": part, "rows": rows})
        pending["attempting"] = None
        self.sent_this_run += len(rows)

    def refused(self, records: list, part: list[int], source: str, exc: Rejected) -> list[list[int]]:
        """What to send instead of a refused request: without the item it names, or in two halves."""
        match = ITEM_FIELD.match(exc.field or "")
        if match and int(match.group(1)) < len(part):
            at = int(match.group(1))
            self.reject(records[part[at]], part[at], exc)
            return [part[:at] + part[at + 1:]] if len(part) > 1 else []
        if len(part) > 1 and (exc.status == 413 or exc.field == "texts"):
            half = len(part) // 2
            return [part[:half], part[half:]]
        if exc.status == 413:
            self.reject(records[part[0]], part[0], exc)
            return []
        raise MonitorError(f"the service refused {len(part)} items of source {source or '(none)'} "
                           f"({locations(records, part)}) with HTTP {exc.status} ({exc.message}) without naming an "
                           "item; nothing of the batch was committed: fix the cause and restart")

    def reject(self, item: NewsItem, index: int, exc: Rejected) -> None:
        self.state.pending["rejected"].append(index)
        self.report(f"{item.location}: rejected by the service (HTTP {exc.status}): {self.redact(exc.message)}")

    def resend_in_doubt(self, request: dict, records: list) -> None:
        """The request a hard kill interrupted: resent with its key (or dropped with --uncertain skip)."""
        part = [i for i in request["items"] if records[i] is not None]
        source, count = attempted_source(request), len(part)
        lines = f"{locations(records, part)}" if part else "(none)"
        self.state.pending["attempting"] = None
        if not part:
            return
        if self.options.uncertain == "skip":
            self.state.pending["skipped"] += part
            self.report(f"not resending {count} items of source {source or '(none)'} ({lines}): the previous run was "
                        "stopped while sending them, so the service may or may not have counted them")
            return
        key = request["key"] if len(part) == len(request["items"]) else None
        how = ("with the same Idempotency-Key, so a service that honours it counts them once" if key else
               "without the Idempotency-Key of the first attempt: if the service had answered, they are counted twice")
        self.report(f"resending {count} items of source {source or '(none)'} ({lines}) {how}: the previous run was "
                    "stopped while sending them")
        self.send_group(records, part, source, key)

    def settle_legacy(self, legacy: dict, records: list) -> None:
        """A pending batch of a version-1 state: its acknowledged source groups, its group in doubt."""
        items = [i for i, r in enumerate(records) if isinstance(r, NewsItem)]
        groups = group_by_source(records, items, self.options.default_source)
        for source in legacy["sent"]:
            self.state.pending["acked"].append({"key": None, "items": groups.get(source, []), "rows": []})
        if legacy["attempting"] is not None:
            self.state.pending["attempting"] = {"key": None, "items": groups.get(legacy["attempting"], []),
                                                "source": legacy["attempting"]}

    def record(self, rows: list[dict], items: list) -> None:
        """Answered predictions: into the rolling table and the predictions file (with each item's text, which
        the output masks; the state holds the rows without it)."""
        rows = [with_former_keys(current_row(row)) for row in rows]
        for row, item in zip(rows, items):
            self.table.add(row["news_source"], row["label"], item.timestamp if item is not None else None,
                           predicted_topic=row["predicted_topic"])
        self.outputs.append("predictions", [row if item is None else {**row, "text": item.text}
                                            for row, item in zip(rows, items)])

    def park(self) -> None:
        """Stopping mid-batch: if no attempt can have reached the service, the request is not in doubt."""
        if self.state.pending and not self.client.reached:
            self.state.pending["attempting"] = None
        self.save()

    def save(self) -> None:
        self.state.save(self.state_path)

    def maybe_show_table(self) -> None:
        every = self.options.table_every_s
        if every and time.monotonic() - self.last_table >= every and self.table.totals:
            self.show(self.table.render())
            self.last_table = time.monotonic()


def prediction_row(item: NewsItem, prediction: dict, source: str) -> dict:
    """A predictions-file row: where the item was read (``file``, ``line``), its ``id`` and ``news_source`` (the
    request's ``source``), the sentiment ``label``/``score`` and the ``predicted_topic``/``predicted_topic_score``
    (the service's ``topic``; None when the model has no topic head)."""
    topic = prediction.get("topic") if isinstance(prediction.get("topic"), dict) else {}
    return {"file": item.file, "line": item.line, "id": item.item_id, "news_source": source or None,
            "label": prediction["label"], "score": prediction.get("score"), "predicted_topic": topic.get("label"),
            "predicted_topic_score": topic.get("score")}


def current_row(row: dict) -> dict:
    """A row in today's names. A row an earlier version kept in a pending batch held the file as ``source`` and
    the predicted topic as ``topic``/``topic_score``; before that, ``topic`` was the news source."""
    if "file" in row:
        return {key: value for key, value in row.items() if key not in FORMER_ROW_KEYS}
    if "news_source" not in row:
        row = {**row, "news_source": row.get("topic"), "topic": None, "topic_score": None}
    current = {new: row.get(old) for old, new in FORMER_ROW_KEYS.items()}
    return {**{key: value for key, value in row.items() if key not in FORMER_ROW_KEYS}, **current}


def with_former_keys(row: dict) -> dict:
    """An output row with the former key names as well (``source`` = ``file``, ``topic`` = ``predicted_topic``,
    ...), so readers of the old names keep working until the next release."""
    return {**row, **{old: row[new] for old, new in FORMER_ROW_KEYS.items() if new in row}}


def attempted_source(request: dict) -> str | None:
    """The source of a request in the write-ahead (``topic``: its key in a state an earlier version wrote)."""
    return request["source"] if "source" in request else request.get("topic")


def locations(records: list, part: list[int]) -> str:
    return f"{records[part[0]].location} .. {records[part[-1]].location}"


def group_by_source(records: list, items: list[int], default: str | None = None) -> dict[str, list[int]]:
    """Item indices by source ("" for none), in order of first appearance; one request per group."""
    groups: dict[str, list[int]] = {}
    for i in items:
        groups.setdefault(records[i].news_source or default or "", []).append(i)
    return groups
