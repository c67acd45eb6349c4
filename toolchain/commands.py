"""Handlers behind each CLI verb: parse nothing, import the stage lazily, call it."""
from __future__ import annotations

import sys


def train(args) -> int:
    from toolchain.config import load_config
    from toolchain.train.runner import resume_config
    from toolchain.train.runner import train as run_training

    if args.resume:
        if args.config or args.overrides:
            print("toolchain train: --resume takes the config stored in the run dir; drop --config/overrides",
                  file=sys.stderr)
            return 2
        cfg = resume_config(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)
    run_dir = run_training(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"run dir: {run_dir}")
    return 0


def evaluate(args) -> int:
    from toolchain.evaluate import run_evaluate
    run_evaluate(args.run_dir, args.data, args.split, args.json_out)
    return 0


def compare(args) -> int:
    from toolchain.evaluate import compare_runs
    print(compare_runs(args.run_dirs, args.data, args.split))
    return 0


def show_config(args) -> int:
    import yaml

    from toolchain.config import PRESET_DIR, field_help, load_config, to_dict
    if args.list:
        for path in sorted(PRESET_DIR.glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ")
            print(f"{path.stem:28s} {first}")
        return 0
    if args.config or args.overrides:
        print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False))
        return 0
    for key, default, help_line in field_help():
        print(f"{key:34s} {str(default):28s} {help_line}")
    return 0
