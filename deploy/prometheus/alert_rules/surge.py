"""The sentiment-surge rules: negative share now against its own baseline, per scope.

A surge is relative (the share over a short window above `surge_factor` times its `baseline_window` share)
and absolute (above `surge_floor`), and needs a minimum of items in the short window, so a quiet topic or
source with three negative items out of five cannot page anyone. The same recording rules serve three
scopes: all news, each predicted topic and each caller-declared source.
"""
from __future__ import annotations

from dataclasses import dataclass

from .common import alert_rule
from .settings import AlertSettings, seconds


@dataclass(frozen=True)
class Scope:
    """One level of the negative-share rules and of its surge alert."""
    name: str           # the alert's `scope` label
    level: str          # recording-rule prefix
    by: str             # the `sum by` labels
    window: str         # the "now" window
    minimum: float      # items in `window` before the alert may fire
    selector: str = ""  # extra series matchers
    label: str | None = None   # the label naming the scope's member (topic, source)


def scopes(s: AlertSettings) -> list[Scope]:
    """Overall; per predicted topic (a model with a topic head; `none` marks a model without one);
    per source (the caller's free-text field, allow-listed by the service)."""
    return [Scope("overall", "job", "job", s.short_window, s.surge_min_items),
            Scope("topic", "job_topic", "job, topic", s.topic_window, s.topic_min_items, ', topic!="none"', "topic"),
            Scope("source", "job_source", "job, source", s.short_window, s.source_min_items, "", "source")]


def share_rules(s: AlertSettings) -> list[dict]:
    """Item rate and negative share over each scope's window and the baseline window."""
    rules = []
    for scope in scopes(s):
        for window in (scope.window, s.baseline_window):
            selector = f'job="{s.job}"{scope.selector}'
            total = f'sum by ({scope.by}) (rate(toolchain_predictions_total{{{selector}}}[{window}]))'
            negative = f'sum by ({scope.by}) (rate(toolchain_predictions_total{{{selector}, label="negative"}}[{window}]))'
            rules.append({"record": f"{scope.level}:toolchain_predictions:rate{window}", "expr": total})
            # `or 0 * total`: a window without any negative item has share 0, not "no data".
            rules.append({"record": f"{scope.level}:toolchain_negative_share:ratio_rate{window}",
                          "expr": f"(\n  {negative}\n  or 0 * {total}\n)\n/ {total}\n"})
    return rules


def surge_alerts(s: AlertSettings) -> list[dict]:
    """NegativeSentimentSurge per scope: its `scope` label says which, the `topic` / `source` label whose."""
    base = s.baseline_window
    alerts = []
    for scope in scopes(s):
        level, window = scope.level, scope.window
        expr = (f"{level}:toolchain_negative_share:ratio_rate{window}\n"
                f"  > clamp_min({level}:toolchain_negative_share:ratio_rate{base} * {s.surge_factor}, {s.surge_floor})\n"
                f"and on ({scope.by})\n"
                f"  {level}:toolchain_predictions:rate{window} * {seconds(window):g} >= {scope.minimum:g}\n")
        where = {"overall": "across all news",
                 "topic": 'in topic "{{ $labels.topic }}"',
                 "source": 'from source "{{ $labels.source }}"'}[scope.name]
        of = "" if scope.label is None else f" {where}"
        alerts.append(alert_rule("NegativeSentimentSurge", expr, s.surge_for, "warning", scope.name, {
            "summary": f"Negative news share surging {where}",
            "description": (f"Negative share{of} over {window} is {{{{ $value | humanizePercentage }}}}, above "
                            f"{s.surge_factor:g}x its {base} baseline and above {s.surge_floor:.0%}, "
                            f"with at least {scope.minimum:g} items in {window}."),
        }))
    return alerts
