"""`toolchain compare RUN_DIR... [--data FILE]`: before vs after adaptation, side by side."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--data", help="re-score every run on this file instead of using stored metrics")
    p.add_argument("--split", default="test", choices=("dev", "test"))


def run(args) -> int:
    from toolchain.core.artifacts import ArtifactError, is_group

    if any(is_group(d) for d in args.run_dirs):
        if not all(is_group(d) for d in args.run_dirs) or args.data:
            raise ArtifactError("compare: give either run dirs or seed groups (train --seeds N), not both; "
                                "--data re-scores run dirs only")
        from toolchain.train.comparison import compare_groups
        print(compare_groups(args.run_dirs, args.split))
        return 0
    from toolchain.evaluate import compare_runs
    print(compare_runs(args.run_dirs, args.data, args.split))
    return 0
