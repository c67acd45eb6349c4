"""`toolchain build [--config PRESET] [key=value ...]`: the main job (see toolchain.build for the stages)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from toolchain.build import (build_bento, ensure_export, ensure_run, packed_variant_line, plan, print_summary,
                             register_model)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="sentiment-full",
                   help="training preset or YAML (default: sentiment-full, finance sentiment on PhraseBank allagree)")
    p.add_argument("overrides", nargs="*", help="key=value overrides; export.KEY=VALUE goes to the export config")
    p.add_argument("--export-config", metavar="PRESET", help="export preset or YAML (default: built-in defaults)")
    p.add_argument("--export-dir", metavar="DIR", help="build from this export dir (skips train and export)")
    p.add_argument("--variant", help="ONNX variant to pack (default: the export's serve_variant)")


def run(args) -> int:
    from toolchain.export.gate import GateError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.export_dir:
        export_dir = Path(args.export_dir)
        print(f"export  given         {export_dir}", flush=True)
    else:
        stages = plan(args.config, args.overrides, args.export_config)
        print(f"train   {stages.run_state:<13} {stages.run_dir}\n"
              f"export  {stages.export_state:<13} {stages.export_dir}", flush=True)
        try:
            ensure_run(stages)
            ensure_export(stages)
        except GateError as exc:
            print(f"toolchain build: export gate failed: {exc}", flush=True)
            return 1
        export_dir = stages.export_dir
    model, variant = register_model(export_dir, args.variant)
    print(packed_variant_line(export_dir, variant, bool(args.variant)), flush=True)
    print_summary(build_bento(model, variant), model)
    return 0
