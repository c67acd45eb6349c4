"""`toolchain ensemble RUN_DIR [RUN_DIR ...] [--data FILE] [--split test] [--json [PATH]]`"""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_json_option, emit_json, human_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs or seed groups (train --seeds N: each "
                   "stands for its runs); any methods and bases, trained for the same labels")
    p.add_argument("--data", help="labelled file to score (default: the first run's own split)")
    p.add_argument("--split", default="test", choices=("dev", "test"),
                   help="the first run's split when --data is absent")
    add_json_option(p, "every member's and the ensemble's metrics")


def run(args) -> int:
    from toolchain.ensemble import run_ensemble

    with human_output(args):
        result = run_ensemble(args.run_dirs, args.data, args.split, None)
    emit_json(args, result)
    return 0
