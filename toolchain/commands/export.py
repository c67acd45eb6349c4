"""`toolchain export RUN_DIR [--config PRESET|YAML] [--output DIR] [key=value ...] [--json [PATH]]`"""
from __future__ import annotations

import argparse
import sys

from toolchain.commands.options import add_json_option, add_output_option, add_overrides, emit_json, human_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a complete run dir written by `toolchain train`")
    p.add_argument("--config", "-c", help="export preset (e.g. export-default, export-prune) or YAML file")
    add_output_option(p, "export dir (default: output_dir, else exports/<run name>)", deprecated=("--out",))
    add_overrides(p, "key=value overrides, e.g. prune.amount=0.4 quantize.isa=avx2")
    add_json_option(p, "the export dir, its serve variant, variants and summary")


def summary(out) -> dict:
    import json

    from toolchain.core.artifacts import load_export

    export = load_export(out)
    report = export.path / "report.json"
    return {"export_dir": str(out), "task": export.task, "serve_variant": export.serve_variant,
            "variants": export.variant_names(),
            "summary": json.loads(report.read_text()).get("summary") if report.is_file() else None}


def run(args) -> int:
    import logging
    import signal

    from toolchain.core.errors import CheckFailed
    from toolchain.export.config import load_export_config
    from toolchain.export.accuracy_gate import AccuracyGateError
    from toolchain.export.pipeline import export

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("toolchain").setLevel(logging.INFO)  # our progress lines, not every library's INFO
    # SIGTERM unwinds like Ctrl-C, so the temporary build dir is removed on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cfg = load_export_config(args.config, args.overrides)
    with human_output(args):
        try:
            out = export(args.run_dir, args.output, cfg)
        except AccuracyGateError as exc:
            raise CheckFailed(f"accuracy gate failed: {exc}; no export dir was written (the failed build is kept as "
                              "*.failed)") from exc
        print(f"export dir: {out}")
    emit_json(args, summary(out))
    return 0
