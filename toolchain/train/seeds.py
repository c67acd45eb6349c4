"""Several seeds of one configuration.

``toolchain train --config X --seeds 3`` trains ``OUTPUT/seed-S`` for S = train.seed, +1, +2 and writes
``OUTPUT/seeds.json``: every run's dev and test metrics, their mean and sample standard deviation.
One seed, one split: a 240-sentence test set moves 0.42 points per sentence, so a gain smaller than
the seeds' spread is not a gain; :mod:`toolchain.train.comparison` tells whether two groups differ.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path


from toolchain.core.artifacts import GROUP_FILE, ArtifactError, write_json
from toolchain.train.comparison import HEADLINE


def seed_configs(cfg, count: int) -> list:
    """``count`` copies of ``cfg``: seeds train.seed, +1, ...; run dirs OUTPUT/seed-S."""
    if count < 1:
        raise ValueError(f"--seeds: expected at least 1, got {count}")
    root = cfg.output_dir.rstrip("/")
    return [replace(cfg, output_dir=f"{root}/seed-{cfg.train.seed + i}",
                    train=replace(cfg.train, seed=cfg.train.seed + i)) for i in range(count)]


def train_seeds(cfg, count: int, overwrite: bool = False) -> Path:
    """Train every seed (a complete run with the same config and data is reused), then summarize the group.

    A seed dir holding anything else (a run of another config, or trained on data that changed since) is
    replaced only with ``overwrite`` (--overwrite), as a single run is; without it the group stops before
    training any seed, naming the seed dirs."""
    from toolchain.core.run_dirs import run_staleness
    from toolchain.core.config import config_hash
    from toolchain.train.runner import train

    group = Path(cfg.output_dir)
    if group.is_dir() and (group / "toolchain.yaml").is_file():
        raise ArtifactError(f"{group} is a run dir; a seed group needs its own folder (output_dir=NEW_DIR)")
    planned, blocked = [], []
    for seed_cfg in seed_configs(cfg, count):
        run_dir = Path(seed_cfg.output_dir)
        state, why = run_staleness(run_dir, config_hash(seed_cfg))  # up to date | resume (interrupted) | train
        if state == "resume" and overwrite:
            state = "train"
        replaces = state == "train" and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir()))
        if replaces and not overwrite and not interrupted_run_of(run_dir, config_hash(seed_cfg)):
            blocked.append(why)
        planned.append((seed_cfg, run_dir, state, replaces))
    if blocked:
        raise ArtifactError(f"{group}: training these seeds would replace what their seed dirs hold: "
                            + "; ".join(blocked) + ". Nothing was trained. Pass --overwrite to train them again, "
                            "or output_dir=NEW_DIR for a new group")
    runs = []
    for index, (seed_cfg, run_dir, state, replaces) in enumerate(planned, 1):
        print(f"seed {seed_cfg.train.seed} ({index}/{count}): {state} {run_dir}", flush=True)
        if state != "up to date":
            train(seed_cfg, resume=state == "resume", overwrite=replaces)
        runs.append(run_dir)
    summary = summarize([str(r) for r in runs])
    write_json(group / GROUP_FILE, summary)
    print(group_table(summary))
    return group


def interrupted_run_of(run_dir: Path, expected_hash: str) -> bool:
    """An incomplete run of this very config (killed before its first checkpoint): training it again loses
    nothing, so it is replaced without --overwrite, as before."""
    import yaml

    from toolchain.core.artifacts import INCOMPLETE, MANIFEST

    try:
        manifest = yaml.safe_load((run_dir / MANIFEST).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return (isinstance(manifest, dict) and manifest.get("stage") == "train" and manifest.get("status") != "complete"
            and manifest.get("config_hash") == expected_hash and (run_dir / INCOMPLETE).is_file())


def headline_metrics(split_metrics: dict) -> dict[str, float]:
    return {k: float(split_metrics[k]) for k in HEADLINE if isinstance(split_metrics.get(k), (int, float))}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(run_dirs: list[str]) -> dict:
    """Per split and metric: the values of every run, their mean and sample std."""
    per_run = {d: json.loads((Path(d) / "metrics.json").read_text(encoding="utf-8")) for d in run_dirs}
    out = {"runs": run_dirs, "seeds": [], "metrics": {}}
    out["seeds"] = [_manifest(d)["config"]["train"]["seed"] for d in run_dirs]
    for split in ("dev", "test"):
        names = headline_metrics(next(iter(per_run.values()))[split])
        out["metrics"][split] = {name: mean_std([headline_metrics(m[split])[name] for m in per_run.values()])
                                 for name in names}
    return out


def _manifest(run_dir: str) -> dict:
    import yaml

    return yaml.safe_load((Path(run_dir) / "toolchain.yaml").read_text(encoding="utf-8"))


def group_table(summary: dict) -> str:
    from toolchain.core.report import format_table

    rows = [[split, name, f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}",
             "  ".join(f"{100 * v:.2f}" for v in s["values"])]
            for split, metrics in summary["metrics"].items() for name, s in metrics.items()]
    return format_table(["split", "metric", f"mean ± std ({len(summary['runs'])} seeds)", "per seed"], rows)


# --------------------------------------------------------------------------- predictions and significance


