"""`toolchain update PARENT_RUN_DIR --data NEW_FILE [key=value ...]`: continue a run's model on new data."""
from __future__ import annotations

import argparse

TRAILING_OVERRIDES = "args"   # `toolchain update PARENT --data NEW key=value ...`: overrides may follow the options


def add_arguments(p: argparse.ArgumentParser) -> None:
    # one positional list (the parent, then overrides), so overrides may follow the options
    p.add_argument("args", nargs="+", metavar="PARENT_RUN_DIR [key=value ...]",
                   help="the run whose model is continued, then key=value overrides, e.g. update.l2sp=1.0 "
                   "train.epochs=2 (section update of `toolchain config --options`); by default update.replay=0.3 "
                   "(the measured choice), update.replay=0 for naive continued fine-tuning")
    p.add_argument("--data", required=True, metavar="FILE", help="new labelled training file")
    p.add_argument("--dev", metavar="FILE", help="new dev file (default: split off --data, stratified, seeded)")
    p.add_argument("--test", metavar="FILE", help="new test file (default: split off --data, stratified, seeded)")
    p.add_argument("--output", "-o", metavar="DIR", help="run dir to write (default: PARENT_RUN_DIR-update)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    p.add_argument("--resume", action="store_true", help="continue an interrupted update from its last checkpoint")


def run(args) -> int:
    from toolchain.train.runner import resume_config, train
    from toolchain.train.update import update_config, update_summary

    from toolchain.core.config import ConfigError

    parent, overrides = args.args[0], args.args[1:]
    if "=" in parent:
        raise ConfigError(f"the first argument is the parent run dir, got the override {parent!r}")
    cfg = update_config(parent, args.data, args.dev, args.test, args.output, overrides)
    if args.resume:
        cfg = resume_config(cfg.output_dir)
    run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(update_summary(run_dir))
    print(f"run dir: {run_dir}")
    return 0
