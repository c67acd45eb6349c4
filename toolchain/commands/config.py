"""`toolchain config [--list | --config PRESET [key=value ...] [--options] | --kind KIND]`

Every preset that ``--list`` shows resolves here with the loader of its kind: training presets (no
``kind``), ``kind: export`` and ``kind: pretrain``. Without ``--config`` it lists a kind's options.
"""
from __future__ import annotations

import argparse
import importlib

# kind -> (module, loader(name_or_path, overrides), config class); None = a training preset
KINDS = {
    "train": ("toolchain.core.config", "load_config", "RunConfig"),
    "export": ("toolchain.export.config", "load_export_config", "ExportConfig"),
    "pretrain": ("toolchain.pretrain", "load_pretrain_config", "PretrainConfig"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name or YAML file to resolve (any kind: train, export, pretrain)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--list", action="store_true", help="list the shipped presets")
    p.add_argument("--options", action="store_true",
                   help="with --config: every option of the preset's kind with its resolved value and help")
    p.add_argument("--kind", choices=tuple(KINDS), default=None,
                   help="without --config: list the options of this kind of config (default: train)")


def preset_kind(name_or_path: str) -> str:
    from toolchain.core.config import ConfigError, read_preset

    kind = read_preset(name_or_path).get("kind") or "train"
    if kind not in KINDS:
        raise ConfigError(f"{name_or_path}: unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return kind


def load_any(name_or_path: str | None, overrides: list[str], kind: str):
    module, loader, _ = KINDS[kind]
    return getattr(importlib.import_module(module), loader)(name_or_path, overrides)


def print_options(rows) -> None:
    for key, value, help_line in rows:
        print(f"{key:34s} {str(value):26s} {help_line}")


def run(args) -> int:
    import yaml

    from toolchain.core.config import PRESET_DIR, ConfigError, field_help, to_dict
    if args.list:
        for path in sorted(PRESET_DIR.glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ")
            print(f"{path.stem:24s} {first}")
        return 0
    if args.config and args.kind:
        raise ConfigError("--kind is for listing options without --config; a preset's kind comes from its file")
    kind = preset_kind(args.config) if args.config else args.kind or "train"
    if args.options:
        cfg = load_any(args.config, args.overrides, kind)
        print_options(field_help(type(cfg), values=cfg))
    elif args.config or args.overrides:
        print(yaml.safe_dump(to_dict(load_any(args.config, args.overrides, kind)), sort_keys=False), end="")
    else:
        module, _, cls = KINDS[kind]
        print_options(field_help(getattr(importlib.import_module(module), cls)))
    return 0
