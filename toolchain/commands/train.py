"""`toolchain train --config PRESET [key=value ...] [--output DIR] [--resume [RUN_DIR]]`"""
from __future__ import annotations

import argparse

from toolchain.commands.options import (add_output_option, add_overrides, add_resume_option, resume_target,
                                        with_output_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name (see `toolchain config --list`) or YAML file")
    add_overrides(p, "key=value overrides, e.g. method.name=lora train.epochs=3")
    add_output_option(p, "run dir to write (the same as output_dir=DIR; default: the preset's output_dir)")
    add_resume_option(p, "run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    p.add_argument("--seeds", type=int, metavar="N", help="train N runs (seeds train.seed, +1, ...) into "
                   "OUTPUT_DIR/seed-S and report mean ± std per metric in OUTPUT_DIR/seeds.json")


def run_config(args):
    """The config to train: the preset with overrides, or the one stored in the run dir being resumed."""
    from toolchain.core.config import ConfigError, load_config
    from toolchain.train.runner import resume_config

    target = resume_target(args)
    if isinstance(target, str):
        if args.config or args.overrides or args.output:
            raise ConfigError("--resume RUN_DIR takes the config stored in the run dir; drop --config, overrides "
                              "and --output (or give --resume alone to resume the run dir they name)")
        return resume_config(target)
    cfg = load_config(args.config or "sentiment-full", with_output_dir(args))
    return resume_config(cfg.output_dir) if target else cfg


def run(args) -> int:
    from toolchain.core.config import ConfigError
    from toolchain.train.runner import train

    cfg = run_config(args)
    if args.seeds is not None:
        from toolchain.train.seeds import train_seeds

        if args.resume:
            raise ConfigError("--seeds trains (or reuses) every seed's run dir; drop --resume")
        print(f"seed group: {train_seeds(cfg, args.seeds, overwrite=args.overwrite)}")
        return 0
    run_dir = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"run dir: {run_dir}")
    return 0
