"""`toolchain bench COMMAND`: the benchmarks and the latency check.

    toolchain bench all                 # offline + serve + train, then RESULTS.md and plots (long)
    toolchain bench offline|serve|train # one benchmark, then RESULTS.md and plots
    toolchain bench report              # RESULTS.md and plots from the JSON already in benchmarks/results
    toolchain bench latency-check [--json [PATH]]  # quick ratios vs benchmarks/baseline.json; exit 1 on a regression
    toolchain bench update-baseline     # measure the same ratios and rewrite benchmarks/baseline.json

`toolchain bench gate` is the deprecated former name of `latency-check` (a one-line warning; kept for one release).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolchain.commands.options import add_json_option, emit_json, human_output

COMMANDS = ("all", "offline", "serve", "train", "report", "latency-check", "update-baseline")
DEPRECATED_COMMANDS = {"gate": "latency-check"}   # former name -> command; hidden from --help, one release


def repo_root() -> Path:
    """The checkout holding benchmarks/ (the package's parent in a development install, else the cwd)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "benchmarks").is_dir() else Path.cwd()


def add_benchmark_options(p: argparse.ArgumentParser, command: str) -> None:
    results = repo_root() / "benchmarks" / "results"
    p.add_argument("--results", type=Path, default=results, help=f"results folder (default {results})")
    if command in ("all", "offline", "serve"):
        p.add_argument("--export-dir", type=Path, help="export dir to measure (default: the complete export "
                       "under exports/ with the most variants)")
    if command in ("all", "offline"):
        p.add_argument("--scale", type=float, default=1.0, help="multiply the timing rounds (0.2 = quick look)")
    if command in ("all", "offline", "train"):
        p.add_argument("--threads", type=int, default=0, help="threads per model for PyTorch and ONNX Runtime "
                       "(0 = all usable cores; 1 gives steadier figures on a shared machine)")
    if command in ("all", "serve"):
        p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per serving phase")
    if command in ("all", "train"):
        p.add_argument("--steps", type=int, default=60, help="optimizer steps per training variant")


def add_latency_check_options(p: argparse.ArgumentParser, command: str) -> None:
    baseline = repo_root() / "benchmarks" / "baseline.json"
    p.add_argument("--baseline", type=Path, default=baseline, help=f"baseline file (default {baseline})")
    p.add_argument("--export-dir", type=Path, help="measure this export dir (needs fp32 and int8) instead of "
                   "building the quick model")
    p.add_argument("--parts", default="offline,serve", help="offline, serve or both (default offline,serve)")
    p.add_argument("--repeats", type=int, default=3, help="offline repeats (default 3)")
    p.add_argument("--serve-repeats", type=int, default=3, help="serving repeats (default 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="per serving repeat: seconds of single-client "
                   "requests (and as many offline), twice that of 64 clients per server (default 3)")
    p.add_argument("--threads", type=int, default=1, help="threads per model, offline and served (default 1: "
                   "single-threaded ratios are the stable ones on a shared machine)")
    if command == "latency-check":
        add_json_option(p, "the measured ratios, the verdict and the conditions", deprecated=("--out",))
    if command == "update-baseline":
        p.add_argument("--tolerance", type=float, help="one relative tolerance for every ratio (default: keep "
                       "the tolerances of the baseline being replaced; a new ratio gets its default from "
                       "toolchain.bench.latency_check.RATIOS)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    helps = {"all": "offline + serve + train benchmarks, then RESULTS.md and plots",
             "offline": "offline inference: every export variant vs the transformers pipeline",
             "serve": "the HTTP load benchmark (1 and 64 clients, batching on/off)",
             "train": "the training throughput benchmark",
             "report": "regenerate benchmarks/RESULTS.md and the plots from benchmarks/results/*.json",
             "latency-check": "the quick latency check: speed ratios against benchmarks/baseline.json",
             "update-baseline": "measure the latency check's ratios and rewrite the baseline (records this machine)"}
    for command in COMMANDS:
        p = sub.add_parser(command, help=helps[command], description=helps[command])
        if command in ("latency-check", "update-baseline"):
            add_latency_check_options(p, command)
        else:
            add_benchmark_options(p, command)
    for old, command in DEPRECATED_COMMANDS.items():   # no help=: not listed by --help
        add_latency_check_options(sub.add_parser(old, description=f"deprecated name of `toolchain bench {command}`: "
                                                 + helps[command]), command)


def run(args) -> int:
    from toolchain.core.errors import ConfigError

    command = current_command(args.bench_command)
    try:
        if command == "latency-check":
            return run_latency_check_command(args)
        if command == "update-baseline":
            from toolchain.bench.latency_check_command import run_latency_check

            return run_latency_check(args, update=True)
        from toolchain.bench.suite import run_suite

        return run_suite(args, repo_root())
    except (FileNotFoundError, ValueError) as exc:   # a missing file or a bad option value, named in the message
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc


def current_command(command: str) -> str:
    """The command a deprecated former name stands for, with a one-line warning on stderr."""
    if command not in DEPRECATED_COMMANDS:
        return command
    print(f"toolchain bench: warning: `bench {command}` is deprecated and goes in the next release; use "
          f"`toolchain bench {DEPRECATED_COMMANDS[command]}`", file=sys.stderr)
    return DEPRECATED_COMMANDS[command]


def run_latency_check_command(args) -> int:
    """The latency check: its verdict as --json asks, a regression raised as a failed check (exit 1)."""
    import json
    import tempfile

    from toolchain.bench.latency_check_command import run_latency_check
    from toolchain.core.errors import CheckFailed

    with tempfile.TemporaryDirectory() as tmp, human_output(args):
        args.out = Path(tmp) / "latency-check.json" if args.json else None   # where the verdict is written
        code = run_latency_check(args, update=False)
        verdict = json.loads(args.out.read_text()) if args.out and args.out.is_file() else None
    if verdict is not None:
        emit_json(args, verdict)
    if code:
        raise CheckFailed(f"latency check failed against {args.baseline} (the regressions are listed "
                          "above; if the slowdown is intended, `toolchain bench update-baseline` records it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`toolchain bench ARGV...` without the top-level CLI (the scripts in benchmarks/ call this): the same
    parsing and exit codes as `toolchain bench`."""
    from toolchain.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
