"""`toolchain compare RUN_DIR... [--data FILE]`: before vs after adaptation, side by side."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--data", help="re-score every run on this file instead of using stored metrics")
    p.add_argument("--split", default="test", choices=("dev", "test"))


def run(args) -> int:
    from toolchain.evaluate import compare_runs
    print(compare_runs(args.run_dirs, args.data, args.split))
    return 0
