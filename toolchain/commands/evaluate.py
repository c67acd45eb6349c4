"""`toolchain evaluate RUN_DIR [--data FILE] [--json OUT]`"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled file to score (default: the run's own split)")
    p.add_argument("--split", default="test", choices=("dev", "test"), help="the run's split when --data is absent")
    p.add_argument("--json", dest="json_out", help="also write the metrics as JSON (and a confusion-matrix PNG)")


def run(args) -> int:
    from toolchain.evaluate import run_evaluate
    run_evaluate(args.run_dir, args.data, args.split, args.json_out)
    return 0
