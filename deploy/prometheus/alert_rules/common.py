"""What every alert of every group carries: `severity` and `scope` labels and a runbook link."""
from __future__ import annotations

RUNBOOK = "docs/DEPLOY.md#alerts-and-how-to-tune-them"  # in the toolchain repository


def alert_rule(name: str, expr: str, for_: str, severity: str, scope: str, annotations: dict) -> dict:
    """One alerting rule; `scope` says which group (or surge scope) fired, for routing and silences."""
    annotations = {**annotations, "runbook": RUNBOOK}
    return {"alert": name, "expr": expr, "for": for_,
            "labels": {"severity": severity, "scope": scope}, "annotations": annotations}
