"""Alert settings: alert-settings.yaml read into a frozen AlertSettings, checked when it is built.

Every threshold and window is validated up front (Prometheus durations, shares in [0, 1), item minimums,
windows shorter than the baseline), so a typo fails the render instead of shipping a rule that never fires.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

SETTINGS_FILE = Path(__file__).resolve().parent.parent / "alert-settings.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows; docs/DEPLOY.md explains each one."""
    job: str = "toolchain"
    short_window: str = "5m"
    baseline_window: str = "1h"
    surge_factor: float = 2.0
    surge_floor: float = 0.30
    surge_min_items: int = 50
    topic_window: str = "10m"
    topic_min_items: int = 20
    source_min_items: int = 20
    surge_for: str = "5m"
    latency_route: str = "/classify"
    latency_p95_seconds: float = 1.0
    latency_for: str = "10m"
    error_ratio: float = 0.05
    errors_for: str = "5m"
    not_ready_for: str = "5m"
    drift_window: str = "1h"
    drift_for: str = "30m"
    drift_min_items: int = 200
    drift_label_distance: float = 0.25
    drift_confidence_drop: float = 0.10
    drift_low_confidence_margin: float = 0.15
    drift_unseen_token_margin: float = 0.05
    canary_window: str = "15m"
    canary_for: str = "10m"
    canary_min_requests: int = 100
    canary_min_items: int = 200
    canary_error_margin: float = 0.02
    canary_latency_factor: float = 1.5
    canary_latency_margin_seconds: float = 0.05
    canary_negative_margin: float = 0.10
    evaluation_interval: str | None = None

    def __post_init__(self):
        _check_surge_and_service_settings(self)
        _check_drift_settings(self)
        _check_canary_settings(self)


def _check_surge_and_service_settings(s: AlertSettings) -> None:
    for name in ("short_window", "baseline_window", "topic_window", "surge_for", "latency_for", "errors_for",
                 "not_ready_for"):
        _check_duration(name, getattr(s, name))
    if s.evaluation_interval is not None:
        _check_duration("evaluation_interval", s.evaluation_interval)
    for name in ("surge_factor", "latency_p95_seconds"):
        if not getattr(s, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(s, name)!r}")
    for name in ("surge_floor", "error_ratio"):
        if not 0 <= getattr(s, name) < 1:
            raise ValueError(f"{name} must be a share in [0, 1), got {getattr(s, name)!r}")
    for name in ("surge_min_items", "topic_min_items", "source_min_items"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number of items >= 0, got {value!r}")
    for name in ("short_window", "topic_window"):
        if seconds(getattr(s, name)) >= seconds(s.baseline_window):
            raise ValueError(f"{name} {getattr(s, name)!r} must be shorter than "
                             f"baseline_window {s.baseline_window!r}")


def _check_drift_settings(s: AlertSettings) -> None:
    for name in ("drift_window", "drift_for"):
        _check_duration(name, getattr(s, name))
    if isinstance(s.drift_min_items, bool) or not isinstance(s.drift_min_items, (int, float)) or s.drift_min_items < 0:
        raise ValueError(f"drift_min_items must be a number of items >= 0, got {s.drift_min_items!r}")
    if isinstance(s.drift_label_distance, bool) or not isinstance(s.drift_label_distance, (int, float)) \
            or not 0 < s.drift_label_distance <= 1:
        raise ValueError(f"drift_label_distance must be a distance in (0, 1], got {s.drift_label_distance!r}")
    for name in ("drift_confidence_drop", "drift_low_confidence_margin", "drift_unseen_token_margin"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a share in [0, 1), got {value!r}")


def _check_canary_settings(s: AlertSettings) -> None:
    for name in ("canary_window", "canary_for"):
        _check_duration(name, getattr(s, name))
    checks = {"canary_min_requests": (0, None, "a number of requests >= 0"),
              "canary_min_items": (0, None, "a number of items >= 0"),
              "canary_error_margin": (0, 1, "a share in [0, 1)"),
              "canary_negative_margin": (0, 1, "a share in [0, 1)"),
              "canary_latency_factor": (1, None, "a factor >= 1"),
              "canary_latency_margin_seconds": (0, None, "a number of seconds >= 0")}
    for name, (low, high, what) in checks.items():
        value = getattr(s, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < low or (high is not None and value >= high):
            raise ValueError(f"{name} must be {what}, got {value!r}")


def _check_duration(name: str, value) -> None:
    if not isinstance(value, str) or not DURATION.match(value):
        raise ValueError(f"{name} must be a Prometheus duration such as 30s, 5m or 1h, got {value!r}")


def seconds(duration: str) -> float:
    """A Prometheus duration such as 1h30m in seconds (volume minimums multiply a per-second rate by it)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


def load_settings(path: Path = SETTINGS_FILE, overrides: dict | None = None) -> AlertSettings:
    """The settings file with `overrides` on top; an unknown key is an error, not silently ignored."""
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides or {})
    known = {f.name for f in dataclasses.fields(AlertSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown alert setting(s) {unknown} in {path}; known: {sorted(known)}")
    return AlertSettings(**data)
