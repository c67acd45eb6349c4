"""The search space of `toolchain tune`: which training options a study varies, and over what.

A space file (``kind: tune-space``) names training options by their dotted keys, as in ``key=value``
overrides. Each entry is a range, ``{low: 1.0e-5, high: 1.0e-4, log: true}`` (``step`` for a grid), or a
list, ``{choices: [4, 8, 16]}``. Entries under ``methods.NAME`` are searched only in trials whose
``method.name`` is NAME, under their own Optuna parameter (``train.learning_rate[lora]``), so LoRA's
learning rates never share a model with full fine-tuning's. Every key, type and bound is checked
against the training config when the space is loaded: a mistake fails naming the key.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, get_args, get_type_hints

from toolchain.core.config import METHODS, ConfigError, RunConfig, field_help, from_dict, read_preset

KIND = "tune-space"
ENTRY_FIELDS = ("low", "high", "log", "step", "choices")
# Not searchable: the study owns the run dirs, compares trials on one metric, and one task.
FIXED_KEYS = ("version", "output_dir", "train.metric", "model.task")
DEFAULT_SPACES = {"sequence-classification": "tune-space-sentiment", "token-classification": "tune-space-ner"}


@dataclass(frozen=True)
class Dimension:
    """One searched option: a numeric range (int or float) or a list of choices."""

    key: str
    kind: str                     # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list:
        """The values that bound this dimension (checked against the config's own limits)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high}
        return {**out, **({"log": True} if self.log else {}), **({"step": self.step} if self.step else {})}


@dataclass(frozen=True)
class SearchSpace:
    name_or_path: str           # as given to --space (a preset name or a YAML file)
    shared: dict[str, Dimension] = field(default_factory=dict)
    per_method: dict[str, dict[str, Dimension]] = field(default_factory=dict)

    def sample(self, trial, base_method: str) -> dict[str, Any]:
        """The overrides of one trial: shared options first, then those of the trial's method."""
        values = {key: dim.suggest(trial, key) for key, dim in self.shared.items()}
        method = values.get("method.name", base_method)
        for key, dim in self.per_method.get(method, {}).items():
            values[key] = dim.suggest(trial, f"{key}[{method}]")
        return values

    def without(self, fixed: set[str]) -> SearchSpace:
        """The space with options the user fixed (``key=value`` on the command line) left out."""
        keep = lambda dims: {k: d for k, d in dims.items() if k not in fixed}  # noqa: E731
        return SearchSpace(self.name_or_path, keep(self.shared), {m: keep(dims) for m, dims in self.per_method.items()})

    def keys(self) -> list[str]:
        """Every searched option once, shared ones first."""
        return list(dict.fromkeys([*self.shared, *(k for dims in self.per_method.values() for k in dims)]))

    def to_dict(self) -> dict:
        return {"space": {k: d.to_dict() for k, d in self.shared.items()},
                "methods": {m: {k: d.to_dict() for k, d in dims.items()} for m, dims in self.per_method.items()}}


def load_space(name_or_path: str, overrides: list[str] | None = None, base: dict | None = None) -> SearchSpace:
    """Read and check a space file (a shipped ``tune-space-*`` name or a YAML path).

    ``base`` is the raw training config the trials start from: every bound is validated on it."""
    if overrides:
        raise ConfigError(f"{name_or_path}: a search space takes no key=value overrides; edit a copy of the file")
    raw = read_preset(name_or_path)
    if raw.pop("kind", KIND) != KIND:
        raise ConfigError(f"{name_or_path}: not a search space (expected 'kind: {KIND}')")
    unknown = sorted(set(raw) - {"space", "methods"})
    if unknown:
        raise ConfigError(f"{name_or_path}: unknown section {unknown[0]!r}; a search space has "
                          f"'kind: {KIND}', 'space' and 'methods'")
    shared = _dimensions(raw.get("space") or {}, "space")
    per_method = {}
    for method, entries in _mapping(raw.get("methods") or {}, "methods").items():
        if method not in METHODS:
            raise ConfigError(f"methods.{method}: unknown method; methods: {', '.join(METHODS)}")
        per_method[method] = _dimensions(entries or {}, f"methods.{method}")
        clash = sorted(set(per_method[method]) & set(shared))
        if clash or "method.name" in per_method[method]:
            raise ConfigError(f"methods.{method}.{(clash or ['method.name'])[0]}: already searched in 'space'; "
                              f"give it in one place")
    space = SearchSpace(str(name_or_path), shared, per_method)
    check_values(space, {} if base is None else base)
    return space


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of option: {{low, high}} | {{choices}}, got {value!r}")
    return value


def _dimensions(entries: Any, where: str) -> dict[str, Dimension]:
    return {key: dimension(str(key), spec) for key, spec in _mapping(entries, where).items()}


def dimension(key: str, spec: Any) -> Dimension:
    """One entry of a space file, checked against the option's declared type."""
    tp = option_type(key)
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}")
    extra = sorted(set(spec) - set(ENTRY_FIELDS))
    if extra:
        raise ConfigError(f"{key}: unknown field {extra[0]!r} (fields: {', '.join(ENTRY_FIELDS)})")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: choices must be a non-empty list, got {choices!r}")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise ConfigError(f"{key}: choices must be plain values, got {choices!r}")
        return Dimension(key, "choice", choices=tuple(choices))
    return _range(key, spec, tp)


def _range(key: str, spec: dict, tp: type) -> Dimension:
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: a range needs both low and high (or give choices: [..])")
    if tp not in (int, float):
        raise ConfigError(f"{key}: a range needs a numeric option, and {key} takes {tp.__name__} values; "
                          f"give choices: [..]")
    for bound in ("low", "high", "step"):
        value = spec.get(bound)
        if value is None and bound == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if isinstance(value, str) and "e" in value else ""
            raise ConfigError(f"{key}: {bound} {value!r} is not a number{hint}")
        if tp is int and not float(value).is_integer():
            raise ConfigError(f"{key}: {key} is an integer option; {bound} {value!r} is not an integer")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}: log must be true or false, got {log!r}")
    if low >= high:
        raise ConfigError(f"{key}: low {low} must be below high {high}")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{key}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ConfigError(f"{key}: step must be positive, got {step}")
    return Dimension(key, tp.__name__, float(low), float(high), log, None if step is None else float(step))


def option_type(key: str) -> type:
    """The Python type of a training option (``train.learning_rate`` -> float), or an error naming it."""
    known = [k for k, _, _ in field_help(RunConfig)]
    if key in FIXED_KEYS:
        raise ConfigError(f"{key}: not searchable (a study compares trials of one task on one metric, in its own "
                          f"run dirs); set it on the command line")
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        raise ConfigError(f"unknown option {key!r} in the search space" +
                          (f"; did you mean {close[0]!r}?" if close else "; see `toolchain config --options`"))
    cls: Any = RunConfig
    for part in key.split("."):
        tp = get_type_hints(cls)[part]
        cls = tp
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def check_values(space: SearchSpace, base: dict) -> None:
    """Every bound and choice must make a valid training config (ranges, choices, cross-checks)."""
    checks = [(dim, {}) for dim in space.shared.values()]
    checks += [(dim, {"method.name": m}) for m, dims in space.per_method.items() for dim in dims.values()]
    for dim, context in checks:
        for value in dim.candidates():
            if dim.kind == "int":
                value = int(value)
            try:
                from_dict(RunConfig, with_values(base, {**context, dim.key: value}))
            except ConfigError as exc:
                raise ConfigError(f"{space.name_or_path}: {dim.key}={value!r} is not a valid value: {exc}") from None


def with_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of a raw (nested) config with dotted ``values`` set."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        node = out
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return out


def default_space(task: str) -> str:
    return DEFAULT_SPACES[task]
