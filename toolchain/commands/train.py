"""`toolchain train --config PRESET [key=value ...] | --resume RUN_DIR`"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name (see `toolchain config --list`) or YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method.name=lora train.epochs=3")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    p.add_argument("--seeds", type=int, metavar="N", help="train N runs (seeds train.seed, +1, ...) into "
                   "OUTPUT_DIR/seed-S and report mean ± std per metric in OUTPUT_DIR/seeds.json")


def run(args) -> int:
    from toolchain.core.config import ConfigError, load_config
    from toolchain.train.runner import resume_config, train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume takes the config stored in the run dir; drop --config and overrides")
        cfg = resume_config(args.resume)
    else:
        cfg = load_config(args.config or "sentiment-full", args.overrides)
    if args.seeds is not None:
        from toolchain.train.seeds import train_seeds

        if args.resume:
            raise ConfigError("--seeds trains (or reuses) every seed's run dir; drop --resume")
        print(f"seed group: {train_seeds(cfg, args.seeds, overwrite=args.overwrite)}")
        return 0
    run_dir = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"run dir: {run_dir}")
    return 0
