"""`toolchain evaluate RUN_DIR [--data FILE] [--json [PATH]]`"""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_json_option, emit_json, human_output, json_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled file to score (default: the run's own split)")
    p.add_argument("--split", default="test", choices=("dev", "test"), help="the run's split when --data is absent")
    add_json_option(p, "the metrics (with PATH also a confusion-matrix PNG beside it)")


def run(args) -> int:
    from pathlib import Path

    from toolchain.evaluate import run_evaluate

    with human_output(args):
        metrics = run_evaluate(args.run_dir, args.data, args.split, None)
    if json_file(args) and "confusion_matrix" in metrics:
        from toolchain.core.report import plot_confusion

        plot_confusion(metrics["confusion_matrix"], metrics["labels"], Path(json_file(args)).with_suffix(".png"),
                       title=f"confusion matrix: {Path(metrics['data']).name}")
    emit_json(args, metrics)
    return 0
