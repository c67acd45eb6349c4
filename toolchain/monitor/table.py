"""The rolling table of sentiment share by topic, over each topic's most recent items."""
from __future__ import annotations

import time
from collections import Counter, deque
from datetime import datetime, timezone

LABELS = ("negative", "neutral", "positive")
NO_TOPIC = "(none)"
ALL = "all topics"


class RollingShare:
    """Per topic: the labels of the last ``window`` items, the total seen, the newest item time."""

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError(f"the rolling window must hold at least 1 item, got {window}")
        self.window = window
        self.recent: dict[str, deque] = {}
        self.totals: Counter = Counter()
        self.newest: dict[str, float] = {}

    def add(self, topic: str | None, label: str, timestamp: float | None = None) -> None:
        for key in (topic or NO_TOPIC, ALL):
            self.recent.setdefault(key, deque(maxlen=self.window)).append(label)
            self.totals[key] += 1
            if timestamp is not None:
                self.newest[key] = max(timestamp, self.newest.get(key, timestamp))

    def shares(self, topic: str) -> dict[str, float]:
        labels = self.recent.get(topic, ())
        counts = Counter(labels)
        return {label: counts[label] / len(labels) for label in self._labels()} if labels else {}

    def _labels(self) -> list[str]:
        seen = {label for recent in self.recent.values() for label in recent}
        return list(LABELS) + sorted(seen - set(LABELS))

    def render(self, now: float | None = None) -> str:
        """A fixed-width table: topics by total items, the "all topics" row last."""
        labels = self._labels()
        header = f"{'topic':<20} {'items':>7} {'window':>6} " + " ".join(f"{label:>9}" for label in labels) + "  newest item"
        topics = sorted((t for t in self.recent if t != ALL), key=lambda t: (-self.totals[t], t))
        rows = [self._row(t, labels) for t in topics + ([ALL] if ALL in self.recent else [])] or ["(no items yet)"]
        stamp = datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return "\n".join([f"sentiment share by topic, last {self.window} items per topic ({stamp})", header,
                          "-" * len(header), *rows])

    def _row(self, topic: str, labels: list[str]) -> str:
        shares = self.shares(topic)
        cells = " ".join(f"{shares.get(label, 0.0):>9.1%}" for label in labels)
        newest = self.newest.get(topic)
        when = datetime.fromtimestamp(newest, timezone.utc).strftime("%Y-%m-%d %H:%M") if newest else "-"
        return f"{topic[:20]:<20} {self.totals[topic]:>7} {len(self.recent[topic]):>6} {cells}  {when}"
