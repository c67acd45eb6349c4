#!/usr/bin/env python3
"""Re-fine-tuning on new publishers without forgetting: PhraseBank parent -> SEntFiN headlines.

For each seed: the parent (``toolchain train --config sentiment-full train.seed=S``), then ``toolchain
update`` on ``sentfin/train.jsonl`` (dev split off it; test = ``sentfin/test.jsonl``) once per variant:
naive continued fine-tuning, and the anti-forgetting levers (replay of parent examples, the L2-SP penalty
towards the parent's weights, both). Each update scores the PhraseBank allagree test set (the parent's)
and the SEntFiN test set, before (the parent) and after. The table gives mean +- std over the seeds.

    python benchmarks/update_scenario.py train-parents --seeds 42 43 44         # runs/upd/parent-sS
    python benchmarks/update_scenario.py update --variants naive replay+l2sp --seeds 42 43 44 --jobs 2
    python benchmarks/update_scenario.py table                                  # results/update_scenario.{json,md}

Each training runs as its own process with one thread (``--jobs 2`` runs two at once on two cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "upd"
RESULTS = ROOT / "benchmarks" / "results"
# shared settings of every update run (the parent's other hyper-parameters are kept)
COMMON = ["train.epochs=2", "train.batch_size=32", "train.learning_rate=3e-5", "train.eval_steps=50"]
VARIANTS = {
    "naive": ["update.replay=0", "update.l2sp=0", "update.parent_dev=false"],
    "replay": ["update.replay=0.3", "update.l2sp=0", "update.parent_dev=true"],
    "l2sp": ["update.replay=0", "update.l2sp=1.0", "update.parent_dev=true"],
    "replay+l2sp": ["update.replay=0.3", "update.l2sp=1.0", "update.parent_dev=true"],
}


def data_root() -> Path:
    return Path(os.environ.get("TOOLCHAIN_DATA_DIR", ROOT.parent / "shared" / "data"))


def run_logged(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w") as out:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log}")
    return time.time() - started


def train_parent(seed: int) -> None:
    out = RUNS / f"parent-s{seed}"
    if (out / "metrics.json").is_file():
        return
    run_logged(["toolchain", "train", "--config", "sentiment-full", f"output_dir={out}", f"train.seed={seed}"],
               ROOT / "logs" / f"parent-s{seed}.log")


def update_run(variant: str, seed: int) -> None:
    out = RUNS / f"{variant}-s{seed}"
    if (out / "metrics.json").is_file():
        return
    sentfin = data_root() / "sentfin"
    cmd = ["toolchain", "update", str(RUNS / f"parent-s{seed}"), "--data", str(sentfin / "train.jsonl"),
           "--test", str(sentfin / "test.jsonl"), "--output", str(out), "--overwrite",
           *COMMON, *VARIANTS[variant], f"train.seed={seed}"]
    run_logged(cmd, ROOT / "logs" / f"update-{variant}-s{seed}.log")


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect() -> dict:
    rows: dict[str, dict] = {}
    parent_on_sentfin: dict[int, tuple[float, float]] = {}   # seed -> the parent's (accuracy, macro-F1)
    for metrics_file in sorted(RUNS.glob("*-s*/metrics.json")):
        name, seed = metrics_file.parent.name.rsplit("-s", 1)
        metrics = json.loads(metrics_file.read_text())
        row = rows.setdefault(name, {"seeds": [], "pb_acc": [], "pb_f1": [], "sf_acc": [], "sf_f1": [],
                                     "train_minutes": []})
        row["seeds"].append(int(seed))
        row["train_minutes"].append(metrics["train"]["wall_seconds"] / 60)
        if name == "parent":
            row["pb_acc"].append(metrics["test"]["accuracy"])
            row["pb_f1"].append(metrics["test"]["macro_f1"])
            continue
        update = metrics["update"]
        row["pb_acc"].append(metrics["parent_test"]["accuracy"])
        row["pb_f1"].append(metrics["parent_test"]["macro_f1"])
        row["sf_acc"].append(metrics["test"]["accuracy"])
        row["sf_f1"].append(metrics["test"]["macro_f1"])
        row.setdefault("promotable", []).append(update["promotable"])
        row.setdefault("pb_drop", []).append(update["parent_test"]["drop_points"] / 100)
        row.setdefault("sf_f1_gain", []).append(update["new_test_macro_f1"]["run"] - update["new_test_macro_f1"]["parent"])
        parent_on_sentfin[int(seed)] = (update["new_test"]["parent"], update["new_test_macro_f1"]["parent"])
    if "parent" in rows:   # the parent's SEntFiN figures, from the updates of its seeds
        seeds = [s for s in rows["parent"]["seeds"] if s in parent_on_sentfin]
        rows["parent"]["sf_acc"] = [parent_on_sentfin[s][0] for s in seeds]
        rows["parent"]["sf_f1"] = [parent_on_sentfin[s][1] for s in seeds]
    return rows


def table(rows: dict) -> str:
    lines = ["| run | seeds | PhraseBank allagree test acc | macro-F1 | SEntFiN test acc | macro-F1 | "
             "PhraseBank acc drop vs its parent (points) | SEntFiN macro-F1 gain vs its parent (points) | "
             "promotable | train min (median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ["parent", *[v for v in VARIANTS if v in rows]]:
        if name not in rows:
            continue
        r = rows[name]
        cells = [mean_std(r[k]) if r.get(k) else "-" for k in ("pb_acc", "pb_f1", "sf_acc", "sf_f1", "pb_drop",
                                                               "sf_f1_gain")]
        promotable = f"{sum(r['promotable'])}/{len(r['promotable'])}" if "promotable" in r else "-"
        lines.append(f"| {name} | {len(r['seeds'])} | {' | '.join(cells)} | {promotable} | "
                     f"{statistics.median(r['train_minutes']):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train-parents", "update", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", default=["naive", "replay+l2sp"], choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.step == "train-parents":
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train_parent, args.seeds))
    elif args.step == "update":
        jobs = [(v, s) for s in args.seeds for v in args.variants]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: update_run(*job), jobs))
    rows = collect()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "update_scenario.json").write_text(json.dumps({"common": COMMON, "variants": VARIANTS, "rows": rows},
                                                             indent=2) + "\n")
    text = table(rows)
    (RESULTS / "update_scenario.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
