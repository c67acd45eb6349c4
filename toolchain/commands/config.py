"""`toolchain config [--list | --config PRESET [key=value ...]]`"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name or YAML file to resolve")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--list", action="store_true", help="list the shipped presets")


def run(args) -> int:
    import yaml

    from toolchain.config import PRESET_DIR, field_help, load_config, to_dict
    if args.list:
        for path in sorted(PRESET_DIR.glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ")
            print(f"{path.stem:24s} {first}")
    elif args.config or args.overrides:
        print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    else:
        for key, default, help_line in field_help():
            print(f"{key:34s} {str(default):26s} {help_line}")
    return 0
