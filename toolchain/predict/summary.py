"""The end of a predict run: what the output holds (rows, bad rows, label and topic shares) and this run's pace."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from toolchain.predict.inputs import Plan
from toolchain.predict.shards import read_columns


def label_counts(output: Path, plan: Plan, topics: bool) -> tuple[Counter, Counter]:
    """Predicted labels and topics over every finished shard (the whole output, not only this run's part)."""
    labels, found_topics = Counter(), Counter()
    for table in read_columns(output, plan.shards, ["label", "topic"] if topics else ["label"]):
        labels.update(table.column("label").to_pylist())
        if topics:
            found_topics.update(table.column("topic").to_pylist())
    return labels, found_topics


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {name: count / total for name, count in counts.most_common()} if total else {}


def summarize(output: Path, plan: Plan, topics: bool, run: dict) -> dict:
    """The summary written to summary.json and printed: ``run`` holds this run's figures (rows, bad, seconds)."""
    labels, found_topics = label_counts(output, plan, topics)
    scored = sum(labels.values())
    summary = {"output": str(output), "inputs": len(plan.files), "shards": len(plan.shards),
               "rows": plan.rows, "scored": scored, "bad_rows": run["bad_total"],
               "label_shares": shares(labels), "this_run": {
                   "shards": run["shards"], "skipped_shards": run["skipped"], "rows": run["rows"],
                   "bad_rows": run["bad"], "wall_s": round(run["seconds"], 3),
                   "rows_per_s": round((run["rows"] + run["bad"]) / run["seconds"], 1) if run["seconds"] else None,
                   "engine": run["engine"], "workers": run["workers"]}}
    if topics:
        summary["topic_shares"] = shares(found_topics)
    return summary


def percent(shares_: dict[str, float], most: int = 8) -> str:
    shown = [f"{name} {share:.1%}" for name, share in list(shares_.items())[:most]]
    return "  ".join(shown) + (f"  ... ({len(shares_)} in all)" if len(shares_) > most else "")


def render(summary: dict) -> str:
    run = summary["this_run"]
    rate = f"{run['rows_per_s']:,.1f} rows/s" if run["rows_per_s"] is not None else "-"
    lines = [f"output       {summary['output']}",
             f"rows         {summary['rows']:,} in {summary['inputs']} input(s), {summary['shards']} shard(s): "
             f"{summary['scored']:,} scored, {summary['bad_rows']:,} bad (bad-rows.jsonl)",
             f"this run     {run['rows']:,} scored + {run['bad_rows']:,} bad in {run['shards']} shard(s) "
             f"({run['skipped_shards']} done before, skipped); {run['wall_s']:.1f} s wall, {rate}, engine "
             f"{run['engine']} x {run['workers']}",
             f"labels       {percent(summary['label_shares']) or '-'}"]
    if "topic_shares" in summary:
        lines.append(f"topics       {percent(summary['topic_shares'], 6) or '-'}")
    return "\n".join(lines)
