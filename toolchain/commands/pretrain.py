"""`toolchain pretrain --config PRESET [key=value ...] | --resume OUT_DIR`: continued masked-LM pre-training
(see :mod:`toolchain.pretrain`)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="pretrain preset (kind: pretrain) or YAML file, e.g. pretrain-fomc")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=500 masking.whole_word=true")
    p.add_argument("--resume", metavar="OUT_DIR", help="continue an interrupted pre-training from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args) -> int:
    from toolchain.core.config import ConfigError
    from toolchain.pretrain import load_pretrain_config, resume_config
    from toolchain.pretrain.trainer import pretrain

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume takes the config stored in the output dir; drop --config and overrides")
        cfg = resume_config(args.resume)
    else:
        if not args.config:
            raise ConfigError("give --config PRESET (e.g. pretrain-fomc) or --resume OUT_DIR")
        cfg = load_pretrain_config(args.config, args.overrides)
    out = pretrain(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"pretrain dir: {out}")
    return 0
