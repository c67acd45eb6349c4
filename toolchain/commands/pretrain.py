"""`toolchain pretrain --config PRESET [key=value ...] [--output DIR] [--resume [OUT_DIR]]`: continued masked-LM
pre-training (see :mod:`toolchain.pretrain`)."""
from __future__ import annotations

import argparse

from toolchain.commands.options import (add_output_option, add_overrides, add_resume_option, resume_target,
                                        with_output_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="pretrain preset (kind: pretrain) or YAML file, e.g. pretrain-fomc")
    add_overrides(p, "key=value overrides, e.g. train.max_steps=500 masking.whole_word=true")
    add_output_option(p, "output directory (the same as output_dir=DIR); its model/ folder is the new base model")
    add_resume_option(p, "pre-training")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args) -> int:
    from toolchain.core.config import ConfigError
    from toolchain.pretrain import load_pretrain_config, resume_config
    from toolchain.pretrain.trainer import pretrain

    target = resume_target(args)
    if isinstance(target, str):
        if args.config or args.overrides or args.output:
            raise ConfigError("--resume OUT_DIR takes the config stored in the output dir; drop --config, overrides "
                              "and --output (or give --resume alone to resume the dir they name)")
        cfg = resume_config(target)
    else:
        if not args.config:
            raise ConfigError("give --config PRESET (e.g. pretrain-fomc) or --resume OUT_DIR")
        cfg = load_pretrain_config(args.config, with_output_dir(args))
        if target:
            cfg = resume_config(cfg.output_dir)
    out = pretrain(cfg, resume=bool(target), overwrite=args.overwrite)
    print(f"pretrain dir: {out}")
    return 0
