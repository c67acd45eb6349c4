"""The machinery of typed configs: an option with its default, help and limits (:func:`opt`); a mapping read
into a config class with every key and value checked (:func:`from_dict`); ``key=value`` overrides; renamed keys
kept working for one release; the stable hash that tells whether a stage is out of date. The configs themselves
(the run config, the export config, the pretrain config) are declared with it elsewhere."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
from dataclasses import field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from toolchain.core.errors import ConfigError


def opt(default: Any, help: str, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, factory: Any = None) -> Any:
    """A config field with its help line and validation rules (read by the CLI and validator)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError naming the key."""
    origin, args = get_origin(tp), get_args(tp)
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(str(value), 10) if isinstance(value, str) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and (not isinstance(number, int) or isinstance(number, float)):
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return tp(number)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}{hint}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, validating every key and value."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp, key = hints[f.name], prefix + f.name
        if _is_dataclass_type(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
            _check_range(kwargs[f.name], f.metadata, key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def deprecated_key(old: str, new: str, where: str = "") -> None:
    print(f"toolchain: warning: {where}config key '{old}' is deprecated and goes in the next release; use '{new}'",
          file=sys.stderr)


def current_key(key: str, renamed: dict[str, str]) -> str:
    """A dotted key with a former name (of it or of a section above it) replaced by the current one, warning."""
    for old, new in renamed.items():
        if key == old or key.startswith(old + "."):
            current = new + key[len(old):]
            deprecated_key(key, current)
            return current
    return key


def current_keys(raw: dict, renamed: dict[str, str], where: str = "") -> dict:
    """A config mapping (one file's) with its sections and keys under former names moved to the current names
    (merged into the current section when a file gives both; the current names win), warning once per key."""
    for old, new in renamed.items():
        *parents, name = old.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if name not in node:
            continue
        deprecated_key(old, new, f"{where}: " if where else "")
        value = node.pop(name)
        *new_parents, new_name = new.split(".")
        target = raw
        for part in new_parents:
            target = target.setdefault(part, {})
        given = target.get(new_name)
        if isinstance(value, dict) and isinstance(given, dict):
            target[new_name] = deep_merge(value, given)
        elif given is None:
            target[new_name] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str], renamed: dict[str, str] | None = None) -> dict:
    """Apply ``a.b=value`` overrides to a nested dict (values parsed as YAML scalars); ``renamed`` maps former
    key names to current ones (:func:`current_key`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        path, value = item.split("=", 1)
        node = raw
        parts = current_key(path.strip(), renamed or {}).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return raw


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config (sorted JSON), used to detect out-of-date stages. A key renamed since
    (the class's ``RENAMED_KEYS``) is hashed under its former name, so the rename changes no hash. A key added
    since (a section's ``ADDED_KEYS``: key -> default) is hashed only when set to another value than its default,
    and a key that cannot change the model (``UNHASHED_KEYS``) never is, so adding either changes no hash."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    if dataclasses.is_dataclass(cfg):
        _drop_unhashed(cfg, data)
    for old, new in getattr(cfg, "RENAMED_KEYS", {}).items():
        if "." not in old and "." not in new and new in data:
            data[old] = data.pop(new)
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _drop_unhashed(cfg: Any, data: dict) -> None:
    for f in dataclasses.fields(cfg):
        value, section = getattr(cfg, f.name), data.get(f.name)
        if not (dataclasses.is_dataclass(value) and isinstance(section, dict)):
            continue
        for key, default in getattr(value, "ADDED_KEYS", {}).items():
            if key in section and section[key] == default:
                section.pop(key)
        for key in getattr(value, "UNHASHED_KEYS", ()):
            section.pop(key, None)
        _drop_unhashed(value, section)
