#!/usr/bin/env python3
"""Render the toolchain recording rules and alerts from alert-settings.yaml.

One source, two outputs with the same rule groups:
  rules/toolchain.rules.yml      a plain Prometheus rule file (clusters without the operator)
  operator/prometheusrule.yaml   a Prometheus Operator PrometheusRule

    python deploy/prometheus/render_rules.py             # rewrite both files
    python deploy/prometheus/render_rules.py --check     # exit 1 when they differ from the settings
    python deploy/prometheus/render_rules.py --set surge_factor=3 --out /tmp/rules   # try a variant

The rule groups live in alert_rules/ beside this script, one module per group (its __init__ lists them);
this script is the entry point and re-exports their public names for the tests that import it by path.

Needs only Python and PyYAML.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# Run as a script, this folder is already sys.path[0]; loaded by file path (tests), it is not.
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

from alert_rules.canary import CANARY_RUNBOOK, canary_alerts, canary_rules
from alert_rules.common import RUNBOOK, alert_rule
from alert_rules.drift import DRIFT_SELECTOR, drift_alerts, drift_rules
from alert_rules.render import (HEADER, OPERATOR_FILE, PLAIN_FILE, dump, plain_rule_file, prometheus_rule, rendered,
                                rule_groups)
from alert_rules.service import service_alerts, service_rules
from alert_rules.settings import DURATION, SETTINGS_FILE, AlertSettings, load_settings, seconds
from alert_rules.surge import Scope, scopes, share_rules, surge_alerts

__all__ = ["CANARY_RUNBOOK", "DRIFT_SELECTOR", "DURATION", "HEADER", "HERE", "OPERATOR_FILE", "PLAIN_FILE",
           "RUNBOOK", "SETTINGS_FILE", "AlertSettings", "Scope", "alert_rule", "canary_alerts", "canary_rules",
           "drift_alerts", "drift_rules", "dump", "load_settings", "main", "plain_rule_file", "prometheus_rule",
           "rendered", "rule_groups", "scopes", "seconds", "service_alerts", "service_rules", "share_rules",
           "surge_alerts"]


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", type=Path, default=SETTINGS_FILE)
    p.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[],
                   metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--out", type=Path, default=HERE, help="folder to write rules/ and operator/ into")
    p.add_argument("--check", action="store_true", help="only compare with the files in --out")
    args = p.parse_args(argv)
    settings = load_settings(args.settings, dict(args.overrides))
    stale = []
    for rel, text in rendered(settings).items():
        path = args.out / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"out of date (run {Path(__file__).name} to re-render): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
