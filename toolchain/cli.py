"""`toolchain <verb>`: a table of verbs, each imported lazily so `toolchain --help` imports no torch."""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module:function that runs it, one line of help)
VERBS = {
    "train": ("toolchain.commands:train", "fine-tune a base model (config preset + key=value overrides) into a run dir"),
    "evaluate": ("toolchain.commands:evaluate", "score a run dir on its test split or any labelled file"),
    "compare": ("toolchain.commands:compare", "print several runs side by side (before vs after adaptation)"),
    "config": ("toolchain.commands:show_config", "print a preset fully resolved, or every option with its help"),
    "export": ("toolchain.commands:export", "merge, prune, export to ONNX, optimize and quantize a run dir"),
    "build": ("toolchain.commands:build", "train/export as needed, then build a Bento (the main job)"),
    "serve": ("toolchain.commands:serve", "serve an export dir or a Bento locally"),
    "monitor": ("toolchain.commands:monitor", "stream news items to the service and show sentiment by topic"),
    "pretrain": ("toolchain.commands:pretrain", "continued masked-LM pre-training on unlabeled domain text"),
    "bench": ("toolchain.commands:bench", "run benchmarks / the latency regression gate"),
}


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name (see `toolchain config --list`) or YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method.name=lora train.epochs=3")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled file to score (default: the run's own split)")
    p.add_argument("--split", default="test", choices=("dev", "test"), help="the run's split when --data is absent")
    p.add_argument("--json", dest="json_out", help="also write the metrics as JSON (and a confusion-matrix PNG)")


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--data", help="re-score every run on this file instead of using stored metrics")
    p.add_argument("--split", default="test", choices=("dev", "test"))


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name or YAML file to resolve")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--list", action="store_true", help="list the shipped presets")


ARGUMENTS = {"train": add_train_args, "evaluate": add_evaluate_args, "compare": add_compare_args,
             "config": add_config_args}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="toolchain", description="train -> compress -> serve for BERT-family encoders")
    from toolchain import __version__
    top.add_argument("--version", action="version", version=f"toolchain {__version__}")
    sub = top.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_line) in VERBS.items():
        p = sub.add_parser(verb, help=help_line, description=help_line)
        add = ARGUMENTS.get(verb)
        if add is None:
            add = _module_arguments(verb)
        add(p)
    return top


def _module_arguments(verb: str):
    """Stages added later declare their own arguments in toolchain.commands (still light imports)."""
    module = importlib.import_module("toolchain.commands")
    return getattr(module, f"add_{verb}_args", lambda p: p.add_argument("args", nargs=argparse.REMAINDER))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.verb:
        parser().print_help()
        return 2
    module_name, function = VERBS[args.verb][0].split(":")
    handler = getattr(importlib.import_module(module_name), function)
    from toolchain.errors import USER_ERRORS
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"toolchain {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"toolchain {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
