"""`toolchain compare RUN_DIR... [--data FILE] [--json [PATH]]`: before vs after adaptation, side by side."""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_json_option, emit_json, human_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--data", help="re-score every run on this file instead of using stored metrics")
    p.add_argument("--split", default="test", choices=("dev", "test"))
    add_json_option(p, "each run's metrics (of a seed group: mean, std and values per metric)")


def compared(args) -> dict:
    """What the table shows, as data: each run's metrics on the split (re-scored on --data), or each group's."""
    import json
    from pathlib import Path

    from toolchain.core.artifacts import is_group, load_group

    if is_group(args.run_dirs[0]):
        groups = [(g, load_group(g)) for g in args.run_dirs]
        return {"split": args.split, "groups": [{"group": g, "runs": len(s["runs"]), "metrics": s["metrics"][args.split]}
                                                for g, s in groups]}
    if args.data:
        from toolchain.evaluate import evaluate_file

        metrics = [evaluate_file(d, args.data, args.split) for d in args.run_dirs]
    else:
        metrics = [json.loads((Path(d) / "metrics.json").read_text())[args.split] for d in args.run_dirs]
    return {"split": args.split, "data": args.data, "runs": [{"run_dir": d, "metrics": m}
                                                             for d, m in zip(args.run_dirs, metrics)]}


def check_arguments(args) -> None:
    from toolchain.core.artifacts import ArtifactError, is_group

    groups = [is_group(d) for d in args.run_dirs]
    if any(groups) and (not all(groups) or args.data):
        raise ArtifactError("compare: give either run dirs or seed groups (train --seeds N), not both; "
                            "--data re-scores run dirs only")


def table(args) -> str:
    from toolchain.core.artifacts import is_group

    if is_group(args.run_dirs[0]):
        from toolchain.train.comparison import compare_groups
        return compare_groups(args.run_dirs, args.split)
    from toolchain.evaluate import compare_runs
    return compare_runs(args.run_dirs, args.data, args.split)


def run(args) -> int:
    check_arguments(args)
    with human_output(args):
        print(table(args))
        result = compared(args) if args.json else None   # with --data each run is scored again (for the JSON)
    emit_json(args, result)
    return 0
