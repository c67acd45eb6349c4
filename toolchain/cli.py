"""`toolchain <verb>`: a table of verbs, each imported lazily so `toolchain --help` imports no torch.

Each verb's module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its heavy
imports (torch, transformers, onnxruntime, bentoml) inside functions. The options that several verbs
share (--output, --json, --resume, key=value overrides) are declared by :mod:`toolchain.commands.options`;
this module adds the overrides given after options and maps errors to exit codes, for every verb:

- 0 done; 2 a user error (``USER_ERRORS``, a usage error); 1 a check that failed (``CHECK_FAILURES``: the
  export's accuracy gate, the latency check); 130 interrupted. One line on stderr for 2 and 1.
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
    "monitor": ("toolchain.commands.monitor", "stream news to the service; sentiment by predicted topic and source"),
    "predict": ("toolchain.commands.predict", "score archives in bulk (JSONL, CSV, Parquet -> Parquet shards), resumable"),
    "pretrain": ("toolchain.commands.pretrain", "continued masked-LM pre-training on unlabeled domain text"),
    "bench": ("toolchain.commands.bench", "run benchmarks / the latency check"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen verb's module is imported to declare its arguments."""
    from toolchain import __version__

    top = argparse.ArgumentParser(prog="toolchain", description="train -> compress -> serve for BERT-family encoders")
    top.add_argument("--version", action="version", version=f"toolchain {__version__}")
    sub = top.add_subparsers(dest="verb", metavar="VERB")
    top.verb_parsers = sub.choices   # verb -> its parser (usage errors name the verb)
    for name, (module, help_line) in VERBS.items():
        if not _available(module):
            continue
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    return top


def collect_overrides(top: argparse.ArgumentParser, args, extra: list[str], argv: list[str]) -> None:
    """``key=value`` after the options (argparse stops a positional list at the first option) join
    ``args.overrides``, in the order given; anything else left over, or an override to a verb that takes none, is
    a usage error. An override right after ``--json`` or ``--resume`` (which take an optional value) is an override,
    the option a flag."""
    from toolchain.commands.options import is_override

    if not args.verb:
        if extra:
            top.error(f"unrecognized arguments: {' '.join(extra)}")
        return
    p = top.verb_parsers[args.verb]
    unknown = [a for a in extra if not is_override(a)]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not isinstance(getattr(args, "overrides", None), list):
        if extra:
            p.error(f"{args.verb} takes no key=value overrides, got: {' '.join(extra)}")
        return
    args.overrides.extend(extra)
    for option, flag in (("json", "-"), ("resume", True)):
        value = getattr(args, option, None)
        if isinstance(value, str) and is_override(value):
            args.overrides.append(value)
            setattr(args, option, flag)
    args.overrides.sort(key=lambda token: argv.index(token) if token in argv else len(argv))


def run_verb(verb: str, run, args) -> int:
    """Run a verb's handler; map user errors to exit 2, failed checks to 1, Ctrl-C to 130 (one line on stderr)."""
    from toolchain.core.errors import CHECK_FAILURES, USER_ERRORS

    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"toolchain {verb}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"toolchain {verb}: error: {exc}", file=sys.stderr)
        return 2
    except CHECK_FAILURES as exc:
        print(f"toolchain {verb}: check failed: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    top = parser(verb if verb in VERBS else None)
    try:
        args, extra = top.parse_known_args(argv)
        collect_overrides(top, args, extra, argv)
    except SystemExit as exc:  # a usage error (2), or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not args.verb:
        parser().print_help()
        return 2
    return run_verb(args.verb, importlib.import_module(VERBS[args.verb][0]).run, args)


if __name__ == "__main__":
    sys.exit(main())
