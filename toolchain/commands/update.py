"""`toolchain update PARENT_RUN_DIR --data NEW_FILE [key=value ...] [--output DIR] [--resume [RUN_DIR]]`:
continue a run's model on new data."""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_output_option, add_overrides, add_resume_option, resume_target


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parent", nargs="?", metavar="PARENT_RUN_DIR", help="the run whose model is continued")
    add_overrides(p, "key=value overrides, e.g. update.l2sp=1.0 train.epochs=2 (section update of `toolchain config "
                  "--options`); by default update.replay=0.3 (the measured choice), update.replay=0 for naive "
                  "continued fine-tuning")
    p.add_argument("--data", metavar="FILE", help="new labelled training file (required, but with --resume RUN_DIR)")
    p.add_argument("--dev", metavar="FILE", help="new dev file (default: split off --data, stratified, seeded)")
    p.add_argument("--test", metavar="FILE", help="new test file (default: split off --data, stratified, seeded)")
    add_output_option(p, "run dir to write (default: PARENT_RUN_DIR-update)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    add_resume_option(p, "update")


def update_run_config(args):
    """The update run's config: built from the parent and the new data, or stored in the run dir being resumed."""
    from toolchain.core.config import ConfigError
    from toolchain.train.runner import resume_config
    from toolchain.train.update import update_config

    target = resume_target(args)
    if isinstance(target, str):
        given = [name for name, value in (("PARENT_RUN_DIR", args.parent), ("--data", args.data), ("--dev", args.dev),
                                          ("--test", args.test), ("overrides", args.overrides),
                                          ("--output", args.output)) if value]
        if given:
            raise ConfigError(f"--resume RUN_DIR takes the config stored in the run dir; drop {', '.join(given)} "
                              "(or give --resume alone to resume the run dir they name)")
        return resume_config(target)
    if not args.parent:
        raise ConfigError("give the parent run dir: toolchain update PARENT_RUN_DIR --data NEW_FILE")
    if "=" in args.parent:
        raise ConfigError(f"the first argument is the parent run dir, got the override {args.parent!r}")
    if not args.data:
        raise ConfigError("--data NEW_FILE is required: the new labelled training file")
    cfg = update_config(args.parent, args.data, args.dev, args.test, args.output, args.overrides)
    return resume_config(cfg.output_dir) if target else cfg


def run(args) -> int:
    from toolchain.train.runner import train
    from toolchain.train.update import update_summary

    cfg = update_run_config(args)
    run_dir = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(update_summary(run_dir))
    print(f"run dir: {run_dir}")
    check_forgetting(run_dir)
    return 0


def check_forgetting(run_dir) -> None:
    """The forgetting limit is a check: an update that forgot more than ``update.max_forgetting`` is kept, marked
    not promotable, and the command exits 1 (a failed check) so a pipeline does not promote it."""
    import json
    from pathlib import Path

    from toolchain.core.errors import CheckFailed

    update = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8")).get("update") or {}
    if update.get("promotable") is False:
        raise CheckFailed(f"{run_dir}: not promotable: {update.get('why_not_promotable')}")
