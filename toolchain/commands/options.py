"""The options every verb shares, declared once so that they have one shape everywhere (README, "CLI conventions").

- ``--output/-o DIR``: where a verb that writes an artifact dir writes it.
- ``--json [PATH]``: the verb's result as JSON; without PATH (or with ``-``) on stdout, the human view then going
  to stderr so that stdout is exactly one JSON document; with PATH to that file, the human view as usual.
- ``--resume [RUN_DIR]``: without a value, resume the run dir the other arguments name; with one, resume that run
  dir from the config stored in it.
- ``key=value`` overrides: a positional list; ``toolchain.cli`` adds the ones given after options.

Light imports only: ``toolchain --help`` imports this module for every verb's parser.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys

OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")   # train.epochs=2, export.quantize.isa=avx2, output_dir=runs/x
STDOUT = "-"


def is_override(token: str) -> bool:
    return bool(OVERRIDE.match(token))


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option (``export --out``): stores like the option it stands for, with a one-line
    warning on stderr; hidden from --help. Kept for one release."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated and goes in the next release; use "
              f"{self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_overrides(p: argparse.ArgumentParser, help_line: str) -> None:
    """``key=value`` overrides, before or after the options (``toolchain.cli`` collects the ones after)."""
    p.add_argument("overrides", nargs="*", metavar="key=value", help=help_line)


def add_output_option(p: argparse.ArgumentParser, help_line: str, deprecated: tuple[str, ...] = ()) -> None:
    p.add_argument("--output", "-o", metavar="DIR", help=help_line)
    for alias in deprecated:
        p.add_argument(alias, dest="output", metavar="DIR", action=DeprecatedAlias, replacement="--output/-o")


def add_json_option(p: argparse.ArgumentParser, what: str, deprecated: tuple[str, ...] = ()) -> None:
    p.add_argument("--json", nargs="?", const=STDOUT, metavar="PATH",
                   help=f"{what} as JSON: to stdout without PATH (or with -; stdout then holds only the JSON), "
                        "else to the file PATH")
    for alias in deprecated:
        p.add_argument(alias, dest="json", metavar="PATH", action=DeprecatedAlias, replacement="--json PATH")


def add_resume_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                   help=f"continue an interrupted {what} from its last checkpoint: without RUN_DIR the one the "
                        "other arguments name (--output, output_dir=, the preset), with RUN_DIR that one, from the "
                        "config stored in it")


def resume_target(args) -> str | bool:
    """False (no --resume), True (resume the run dir the other arguments name) or the RUN_DIR given."""
    return args.resume or False


def with_output_dir(args) -> list[str]:
    """The overrides, plus ``output_dir=DIR`` for ``--output DIR`` (train, pretrain: the two are one setting)."""
    from toolchain.core.errors import ConfigError

    if not args.output:
        return list(args.overrides)
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("output_dir=")]
    if any(os.path.normpath(g) != os.path.normpath(args.output) for g in given):
        raise ConfigError(f"--output {args.output} and output_dir={given[-1]} name different dirs; give one")
    return [*args.overrides, f"output_dir={args.output}"]


def json_to_stdout(args) -> bool:
    return getattr(args, "json", None) == STDOUT


def json_file(args) -> str | None:
    target = getattr(args, "json", None)
    return None if target in (None, STDOUT) else target


@contextlib.contextmanager
def human_output(args):
    """While JSON goes to stdout, send everything else printed (ours, libraries', child processes') to stderr."""
    if not json_to_stdout(args):
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:   # no file descriptors (an embedded interpreter): Python-level redirection only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def emit_json(args, data) -> None:
    """Write the verb's result where ``--json`` says (nothing without --json)."""
    if json_to_stdout(args):
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        sys.stdout.flush()
    elif json_file(args):
        from toolchain.core.artifacts import write_json

        write_json(json_file(args), data)
        print(f"wrote {json_file(args)}", file=sys.stderr)
