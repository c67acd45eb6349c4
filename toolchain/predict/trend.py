"""The backfill view (``--trend COLUMN``): the daily negative share, overall and per predicted topic, and the
days on which the negative-surge alert would have fired on that history.

The criterion is the one of ``deploy/prometheus/alert_rules/surge.py``, read from its settings file
(``deploy/prometheus/alert-settings.yaml``, or ``--alert-settings``), applied to days: a scope (all news,
or one predicted topic) surges on a day when

    share(day) > max(baseline * surge_factor, surge_floor)   and   items(day) >= minimum

where ``baseline`` is the negative share over the ``k`` days with items ending that day (a day without items neither
counts nor dilutes it: for a sparse archive, e.g. one meeting every six weeks, the ``k`` latest meetings; for
daily news, the ``k`` latest days), ``k`` = the rule's baseline
window over its short window (1h / 5m = 12 days overall, 1h / 10m = 6 days per topic: the rule's baseline
also includes its short window), and ``minimum`` is ``surge_min_items`` overall, ``topic_min_items`` per
topic. Simplified from the live rule: one calendar day (UTC) stands for the short window, so the minimum
counts per day, and the ``surge_for`` hold time is dropped (one day over the threshold counts as a firing);
counts replace Prometheus' per-second rates (the same shares).
"""
from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from toolchain.core.artifacts import atomic_write_text
from toolchain.core.errors import ConfigError
from toolchain.predict.shards import read_columns

NEGATIVE = "negative"
OVERALL = "(all)"
TREND_CSV, TREND_PNG = "trend.csv", "trend.png"
SETTINGS = Path(__file__).resolve().parent.parent.parent / "deploy" / "prometheus" / "alert-settings.yaml"
DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
MOST_PANELS = 12


@dataclass(frozen=True)
class SurgeRule:
    factor: float
    floor: float
    minimum: int
    baseline_days: int


def seconds(duration: str) -> float:
    parts = DURATION_PART.findall(str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ConfigError(f"alert settings: {duration!r} is not a Prometheus duration (e.g. 5m, 1h)")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in parts)


def surge_rules(path: str | None) -> tuple[dict[str, SurgeRule], str]:
    """(the overall and the per-topic rule, the settings file read)."""
    import yaml

    file = Path(path) if path else SETTINGS
    if not file.is_file():
        raise ConfigError(f"{file}: alert settings not found; give --alert-settings deploy/prometheus/alert-settings.yaml")
    s = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    try:
        base = seconds(s["baseline_window"])
        rule = {"overall": SurgeRule(float(s["surge_factor"]), float(s["surge_floor"]), int(s["surge_min_items"]),
                                     max(1, round(base / seconds(s["short_window"])))),
                "topic": SurgeRule(float(s["surge_factor"]), float(s["surge_floor"]), int(s["topic_min_items"]),
                                   max(1, round(base / seconds(s["topic_window"]))))}
    except KeyError as exc:
        raise ConfigError(f"{file}: no {exc.args[0]} (the surge rule's settings)") from None
    return rule, str(file)


def day_of(value) -> date | None:
    """The UTC day of an ISO 8601 date or time, or of Unix seconds; None when it is neither."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc).date()
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    except ValueError:
        return None
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment).date()


def daily_counts(output: Path, plan, column: str, topics: bool):
    """{(scope, day): [items, negative]} and the number of rows without a readable date."""
    counts: dict = defaultdict(lambda: [0, 0])
    undated = 0
    for table in read_columns(output, plan.shards, [column, "label", *(["topic"] if topics else [])]):
        days = table.column(column).to_pylist()
        labels = table.column("label").to_pylist()
        found = table.column("topic").to_pylist() if topics else [None] * len(labels)
        for value, label, topic in zip(days, labels, found):
            day = day_of(value)
            if day is None:
                undated += 1
                continue
            for scope in (OVERALL, topic) if topic is not None else (OVERALL,):
                counts[(scope, day)][0] += 1
                counts[(scope, day)][1] += label == NEGATIVE
    return counts, undated


def trend_rows(counts: dict, rules: dict[str, SurgeRule]) -> list[dict]:
    """One row per scope and calendar day from the first to the last dated item (days without items: 0)."""
    if not counts:
        return []
    first, last = min(day for _, day in counts), max(day for _, day in counts)
    days = [first + timedelta(n) for n in range((last - first).days + 1)]
    rows = []
    for scope in sorted({scope for scope, _ in counts}, key=lambda s: (s != OVERALL, s)):
        rule = rules["overall" if scope == OVERALL else "topic"]
        series = [counts.get((scope, day), [0, 0]) for day in days]
        active: list[int] = []   # the days of this scope that have items, up to the current one
        for index, day in enumerate(days):
            items, negative = series[index]
            if items:
                active.append(index)
            window = [series[i] for i in active[-rule.baseline_days:]]
            seen = sum(w[0] for w in window)
            baseline = sum(w[1] for w in window) / seen if seen else None
            threshold = max(baseline * rule.factor, rule.floor) if baseline is not None else None
            share = negative / items if items else None
            rows.append({"day": day.isoformat(), "scope": scope, "items": items, "negative": negative,
                         "negative_share": share, "baseline_share": baseline, "threshold": threshold,
                         "surge": bool(share is not None and items >= rule.minimum and share > threshold)})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["day", "scope", "items", "negative", "negative_share",
                                                "baseline_share", "threshold", "surge"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def plot(rows: list[dict], path: Path, column: str) -> None:
    from toolchain.core.report import pyplot

    plt = pyplot()
    by_scope: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_scope[row["scope"]].append(row)
    scopes = sorted(by_scope, key=lambda s: (s != OVERALL, -sum(r["items"] for r in by_scope[s])))[:MOST_PANELS]
    cols = min(3, len(scopes))
    lines = -(-len(scopes) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 2.8 * lines), squeeze=False, sharex=True)
    for ax, scope in zip(axes.flat, scopes):
        panel(ax, by_scope[scope], scope)
    for ax in list(axes.flat)[len(scopes):]:
        ax.axis("off")
    fig.suptitle(f"daily negative share by predicted topic ({column}); red: the surge alert would have fired")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def panel(ax, rows: list[dict], scope: str) -> None:
    days = [date.fromisoformat(r["day"]) for r in rows]
    ax.plot(days, [r["negative_share"] for r in rows], marker=".", lw=1, label="negative share")
    ax.plot(days, [r["threshold"] for r in rows], ls="--", lw=1, color="grey", label="alert threshold")
    surges = [(d, r["negative_share"]) for d, r in zip(days, rows) if r["surge"]]
    if surges:
        ax.scatter(*zip(*surges), color="red", zorder=3, label="would have fired")
    ax.set_title(f"{scope}: {sum(r['items'] for r in rows):,} items, {len(surges)} surge day(s)", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def backfill(output: Path, plan, column: str, spec, settings: str | None, report=print) -> dict:
    """trend.csv and trend.png in the output; prints the surge days; returns what the summary records."""
    if NEGATIVE not in spec.classes:
        raise ConfigError(f"--trend needs a model with a {NEGATIVE!r} class (the surge rule's); this one has "
                          f"{', '.join(spec.classes)}")
    rules, settings_file = surge_rules(settings)
    counts, undated = daily_counts(output, plan, column, spec.topics)
    rows = trend_rows(counts, rules)
    write_csv(rows, output / TREND_CSV)
    if rows:
        plot(rows, output / TREND_PNG, column)
    surges = [r for r in rows if r["surge"]]
    report(f"trend: {len({r['day'] for r in rows})} day(s) of {column!r}, {undated} row(s) without a readable date; "
           f"surge rule from {settings_file}; {len(surges)} surge day(s) -> {output / TREND_CSV}")
    for row in surges:
        report(f"  {row['day']}  {row['scope']:<28} negative {row['negative_share']:.0%} of {row['items']} > "
               f"threshold {row['threshold']:.0%} (baseline {row['baseline_share']:.0%})")
    return {"column": column, "days": len({r["day"] for r in rows}), "undated_rows": undated,
            "settings": settings_file, "surges": [{k: r[k] for k in ("day", "scope", "items", "negative_share",
                                                                      "threshold")} for r in surges]}
