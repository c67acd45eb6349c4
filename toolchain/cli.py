"""`toolchain <verb>`: a table of verbs, each imported lazily so `toolchain --help` imports no torch.

Each verb's module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its heavy
imports (torch, transformers, onnxruntime, bentoml) inside functions.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module with add_arguments/run, one line of help)
VERBS = {
    "train": ("toolchain.commands.train", "fine-tune a base model (config preset + key=value overrides) into a run dir"),
    "update": ("toolchain.commands.update", "continue a run's model on new labelled data (replay, penalty towards the "
                                            "parent), scored on both test sets"),
    "tune": ("toolchain.commands.tune", "hyper-parameter search (Optuna) scored on dev only; each trial a run dir, "
                                        "the best written as a preset"),
    "evaluate": ("toolchain.commands.evaluate", "score a run dir on its test split or any labelled file"),
    "compare": ("toolchain.commands.compare", "print several runs side by side (before vs after adaptation)"),
    "ensemble": ("toolchain.commands.ensemble", "average several runs' class probabilities on one labelled file; "
                                                "the ensemble's metrics next to each member's"),
    "explain": ("toolchain.commands.explain", "which words drove a prediction: per-word attributions of a run or export"),
    "config": ("toolchain.commands.config", "print a preset fully resolved, or every option with its help"),
    "export": ("toolchain.commands.export", "merge, prune, export to ONNX, optimize and quantize a run dir"),
    "build": ("toolchain.commands.build", "train/export as needed, then build a Bento (the main job)"),
    "serve": ("toolchain.commands.serve", "serve an export dir or a Bento locally"),
    "monitor": ("toolchain.commands.monitor", "stream news items to the service and show sentiment by topic"),
    "pretrain": ("toolchain.commands.pretrain", "continued masked-LM pre-training on unlabeled domain text"),
    "bench": ("toolchain.commands.bench", "run benchmarks / the latency regression gate"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen verb's module is imported to declare its arguments."""
    from toolchain import __version__

    top = argparse.ArgumentParser(prog="toolchain", description="train -> compress -> serve for BERT-family encoders")
    top.add_argument("--version", action="version", version=f"toolchain {__version__}")
    sub = top.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_line) in VERBS.items():
        if not _available(module):
            continue
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    top = parser(verb if verb in VERBS else None)
    args, extra = top.parse_known_args(argv)
    if not args.verb:
        parser().print_help()
        return 2
    module = importlib.import_module(VERBS[args.verb][0])
    trailing = getattr(module, "TRAILING_OVERRIDES", None)  # key=value after the options (argparse stops at them)
    if extra and trailing and all("=" in a and not a.startswith("-") for a in extra):
        setattr(args, trailing, getattr(args, trailing) + extra)
    elif extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    from toolchain.core.errors import USER_ERRORS
    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as exc:
        print(f"toolchain {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"toolchain {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
