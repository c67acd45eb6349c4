"""`toolchain export RUN_DIR [--config PRESET|YAML] [--out DIR] [key=value ...]`"""
from __future__ import annotations

import argparse
import sys


class IntermixedParser(argparse.ArgumentParser):
    """Accepts options between positionals: `RUN_DIR --config X key=value` (plain argparse stops at X)."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser
    p.add_argument("run_dir", metavar="RUN_DIR", help="a complete run dir written by `toolchain train`")
    p.add_argument("--config", "-c", help="export preset (e.g. export-default, export-prune) or YAML file")
    p.add_argument("--out", "-o", metavar="DIR", help="export dir (default: output_dir, else exports/<run name>)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. prune.amount=0.4 quantize.isa=avx2")


def run(args) -> int:
    import logging

    from toolchain.export.config import load_export_config
    from toolchain.export.gate import GateError
    from toolchain.export.pipeline import export

    import signal

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("toolchain").setLevel(logging.INFO)  # our progress lines, not every library's INFO
    # SIGTERM unwinds like Ctrl-C, so the temporary build dir is removed on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cfg = load_export_config(args.config, args.overrides)
    try:
        out = export(args.run_dir, args.out, cfg)
    except GateError as exc:
        print(f"toolchain export: gate failed: {exc}", file=sys.stderr)
        print("toolchain export: no export dir was written (the failed build is kept as *.failed)", file=sys.stderr)
        return 1
    print(f"export dir: {out}")
    return 0
