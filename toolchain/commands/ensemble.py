"""`toolchain ensemble RUN_DIR [RUN_DIR ...] [--data FILE] [--split test] [--json OUT]`"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs or seed groups (train --seeds N: each "
                   "stands for its runs); any methods and bases, trained for the same labels")
    p.add_argument("--data", help="labelled file to score (default: the first run's own split)")
    p.add_argument("--split", default="test", choices=("dev", "test"),
                   help="the first run's split when --data is absent")
    p.add_argument("--json", dest="json_out", help="also write every member's and the ensemble's metrics as JSON")


def run(args) -> int:
    from toolchain.ensemble import run_ensemble
    run_ensemble(args.run_dirs, args.data, args.split, args.json_out)
    return 0
