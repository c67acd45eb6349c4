"""The rolling tables of sentiment share: by predicted topic and by source, and the end-of-run summary.

Each prediction is counted twice: under its predicted topic (the service's ``topic.label``, from a
model with a topic head; ``predicted_topic`` here) and under its news source (the item's ``source`` field;
``news_source`` here). The tables show, per
key, the shares of each sentiment label over that key's last ``window`` items. The topic table is
shown once any prediction carried a topic; with a model without a topic head only the source table
is (as before topics existed).

The summary names the topics whose negative share rose most during the run, comparing the first and
the second half of each topic's own items in arrival order (so both halves hold the same number of
that topic's items); a topic needs ``min_items`` items in each half to be named. A burst of negative
Earnings news at the end of a run shows as Earnings rising from its usual share to the burst's.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone

LABELS = ("negative", "neutral", "positive")
NO_SOURCE = "(none)"
NEGATIVE = "negative"
NAME_WIDTH = 28            # the longest topic class, "Treasuries | Corporate Debt", fits


class View:
    """Per key (a predicted topic or a news source): the labels of its last ``window`` items, its total, its
    newest time."""

    def __init__(self, name: str, window: int):
        self.name, self.window = name, window
        self.everything = f"all {name}s"
        self.recent: dict[str, deque] = {}
        self.totals: Counter = Counter()
        self.newest: dict[str, float] = {}

    def add(self, key: str, label: str, timestamp: float | None) -> None:
        for k in (key, self.everything):
            self.recent.setdefault(k, deque(maxlen=self.window)).append(label)
            self.totals[k] += 1
            if timestamp is not None:
                self.newest[k] = max(timestamp, self.newest.get(k, timestamp))

    def shares(self, key: str) -> dict[str, float]:
        labels = self.recent.get(key, ())
        counts = Counter(labels)
        return {label: counts[label] / len(labels) for label in set(labels) | set(LABELS)} if labels else {}

    def keys(self) -> list[str]:
        """By total items, then name; the "all ..." row last."""
        keys = sorted((k for k in self.recent if k != self.everything), key=lambda k: (-self.totals[k], k))
        return keys + ([self.everything] if self.everything in self.recent else [])

    def render(self, labels: list[str], stamp: str) -> str:
        header = (f"{self.name:<{NAME_WIDTH}} {'items':>7} {'window':>6} " + " ".join(f"{label:>9}" for label in labels)
                  + "  newest item")
        rows = [self._row(key, labels) for key in self.keys()] or ["(no items yet)"]
        title = f"sentiment share by {self.name}, last {self.window} items per {self.name} ({stamp})"
        return "\n".join([title, header, "-" * len(header), *rows])

    def _row(self, key: str, labels: list[str]) -> str:
        shares = self.shares(key)
        cells = " ".join(f"{shares.get(label, 0.0):>9.1%}" for label in labels)
        newest = self.newest.get(key)
        when = datetime.fromtimestamp(newest, timezone.utc).strftime("%Y-%m-%d %H:%M") if newest else "-"
        return f"{key[:NAME_WIDTH]:<{NAME_WIDTH}} {self.totals[key]:>7} {len(self.recent[key]):>6} {cells}  {when}"


@dataclass(frozen=True)
class Rise:
    """A predicted topic's negative share in the first and the second half of its items this run."""
    predicted_topic: str
    items: int
    before: float
    after: float

    @property
    def points(self) -> float:
        return 100 * (self.after - self.before)


class RollingShare:
    """The rolling tables (by predicted topic, by news source) and each predicted topic's negative flags."""

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError(f"the rolling window must hold at least 1 item, got {window}")
        self.window = window
        self.by_predicted_topic = View("topic", window)
        self.by_source = View("source", window)
        self.negative_flags: dict[str, bytearray] = {}   # per predicted topic, one byte per item of this run

    @property
    def totals(self) -> Counter:
        return self.by_source.totals

    def add(self, news_source: str | None, label: str, timestamp: float | None = None,
            predicted_topic: str | None = None) -> None:
        """One prediction: the item's ``news_source`` and the ``predicted_topic`` (None: no topic head)."""
        self.by_source.add(news_source or NO_SOURCE, label, timestamp)
        if predicted_topic is not None:
            self.by_predicted_topic.add(predicted_topic, label, timestamp)
            self.negative_flags.setdefault(predicted_topic, bytearray()).append(label == NEGATIVE)

    def shares(self, key: str) -> dict[str, float]:
        """The shares of ``key`` in the by-topic view if it is a predicted topic there, else in the by-source view."""
        view = self.by_predicted_topic if key in self.by_predicted_topic.recent else self.by_source
        return view.shares(key)

    def _labels(self) -> list[str]:
        views = (self.by_predicted_topic, self.by_source)
        seen = {label for view in views for recent in view.recent.values() for label in recent}
        return list(LABELS) + sorted(seen - set(LABELS))

    def render(self, now: float | None = None) -> str:
        """Fixed-width tables: by predicted topic (when the model has a topic head), then by source."""
        stamp = datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        labels = self._labels()
        views = ([self.by_predicted_topic] if self.by_predicted_topic.recent else []) + [self.by_source]
        return "\n\n".join(view.render(labels, stamp) for view in views)

    def rising(self, min_items: int = 10, top: int = 3) -> list[Rise]:
        """The predicted topics whose negative share rose most, first half of their items this run vs second half."""
        rises = []
        for topic, flags in self.negative_flags.items():
            half = len(flags) // 2
            if half < min_items:
                continue
            first, second = flags[:half], flags[len(flags) - half:]
            rise = Rise(topic, len(flags), sum(first) / half, sum(second) / half)
            if rise.after > rise.before:
                rises.append(rise)
        return sorted(rises, key=lambda r: (-r.points, r.predicted_topic))[:top]

    def summary(self, min_items: int = 10, top: int = 3) -> str:
        """The end-of-run lines naming the topics whose negative share rose most ("" without topics)."""
        if not self.negative_flags:
            return ""
        head = "negative share rising most, first half vs second half of each topic's items this run"
        rises = self.rising(min_items, top)
        if not rises:
            return (f"{head}: none rose (a topic needs {min_items} items in each half; "
                    f"{len(self.negative_flags)} topics seen)")
        lines = [f"  {r.predicted_topic[:NAME_WIDTH]:<{NAME_WIDTH}} {r.before:>6.1%} -> {r.after:>6.1%}  "
                 f"({r.points:+.1f} points, {r.items} items)" for r in rises]
        return "\n".join([f"{head}:", *lines])
