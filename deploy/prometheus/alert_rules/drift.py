"""The drift rules: is live traffic still like the data the model was trained and calibrated on.

Every exported variant stores a drift reference (the train split's label shares; the dev set's mean
confidence, low-confidence share and unseen-token share), which the service exports as gauges beside its
live counters (docs/DEPLOY.md, Model drift). These rules compare the two over `drift_window`; each signal
needs `drift_min_items` predictions in the window and must stay past its bar for `drift_for`, so a short
burst of unusual news does not fire. A model exported without a reference records nothing and cannot fire.
"""
from __future__ import annotations

from .common import alert_rule
from .settings import AlertSettings, seconds

DRIFT_SELECTOR = 'task="sequence-classification"'   # the task whose exports carry a drift reference


def drift_rules(s: AlertSettings) -> list[dict]:
    """Live drift signals over `drift_window` (toolchain.inference.drift): volume, predicted-label shares and their
    total variation distance from the train split's shares, mean confidence, low-confidence share, share of
    input tokens no training text holds. Nothing is recorded for a model without a reference."""
    w, sel = s.drift_window, f'job="{s.job}", {DRIFT_SELECTOR}'

    def ratio(numerator: str, denominator: str, by: str = "job") -> str:
        return f"sum by ({by}) (rate({numerator}[{w}]))\n/ on (job){' group_left' if by != 'job' else ''}\n" \
               f"sum by (job) (rate({denominator}[{w}]))\n"

    share, reference = f"job_label:toolchain_predicted_share:ratio_rate{w}", "job_label:toolchain_reference_label_share:max"
    scored = f"toolchain_prediction_confidence_count{{{sel}}}"
    return [
        {"record": f"job:toolchain_drift_predictions:rate{w}", "expr": f"sum by (job) (rate({scored}[{w}]))"},
        {"record": share, "expr": ratio(f"toolchain_predictions_total{{{sel}}}", f"toolchain_predictions_total{{{sel}}}",
                                        "job, label")},
        {"record": reference, "expr": f"max by (job, label) (toolchain_reference_label_share{{{sel}}})"},
        # `or 0 * reference`: a label the model stopped predicting counts with share 0.
        {"record": f"job:toolchain_label_drift:distance_rate{w}",
         "expr": f"0.5 * sum by (job) (abs(\n  ({share} or 0 * {reference})\n  - {reference}\n))\n"
                 f"and on (job) job:toolchain_drift_predictions:rate{w} > 0\n"},
        {"record": f"job:toolchain_prediction_confidence:mean_rate{w}",
         "expr": ratio(f"toolchain_prediction_confidence_sum{{{sel}}}", scored)},
        {"record": f"job:toolchain_low_confidence:ratio_rate{w}",
         "expr": ratio(f"toolchain_low_confidence_predictions_total{{{sel}}}", scored)},
        {"record": f"job:toolchain_unseen_tokens:ratio_rate{w}",
         "expr": ratio(f'toolchain_drift_tokens_total{{{sel}, vocabulary="unseen"}}', f"toolchain_drift_tokens_total{{{sel}}}")},
    ]


def drift_alerts(s: AlertSettings) -> list[dict]:
    """SentimentModelDrift per signal (its `signal` label): each live signal over `drift_window` past its
    training-time reference by the set margin, with `drift_min_items` predictions in the window, for `drift_for`."""
    alerts = []
    for signal, expr, summary, description in _drift_signals(s):
        alert = alert_rule("SentimentModelDrift", expr, s.drift_for, "warning", "drift",
                           {"summary": summary, "description": description})
        alert["labels"]["signal"] = signal
        alerts.append(alert)
    return alerts


def _drift_signals(s: AlertSettings) -> list[tuple[str, str, str, str]]:
    """(signal, expr, summary, description) of each drift alert."""
    w, sel = s.drift_window, f'job="{s.job}", {DRIFT_SELECTOR}'
    volume = f"and on (job)\n  job:toolchain_drift_predictions:rate{w} * {seconds(w):g} >= {s.drift_min_items:g}\n"

    def past(live: str, op: str, reference: str, margin: float) -> str:
        bound = f"max by (job) ({reference}{{{sel}}}) {'-' if op == '<' else '+'} {margin:g}"
        return f"{live}\n  {op} on (job) ({bound})\n{volume}"

    return [
        ("label_distribution", f"job:toolchain_label_drift:distance_rate{w} > {s.drift_label_distance:g}\n{volume}",
         "Predicted sentiment labels drifting from the training distribution",
         f"Predicted-label shares over {w} are {{{{ $value | printf \"%.2f\" }}}} (total variation distance) from the "
         f"train split's (threshold {s.drift_label_distance:g})."),
        ("mean_confidence", past(f"job:toolchain_prediction_confidence:mean_rate{w}", "<",
                                 "toolchain_reference_confidence_mean", s.drift_confidence_drop),
         "Sentiment model confidence dropping below its reference",
         f"Mean confidence over {w} is {{{{ $value | printf \"%.3f\" }}}}, more than {s.drift_confidence_drop:g} below "
         "the dev-set mean (toolchain_reference_confidence_mean)."),
        ("low_confidence", past(f"job:toolchain_low_confidence:ratio_rate{w}", ">",
                                "toolchain_reference_low_confidence_share", s.drift_low_confidence_margin),
         "Low-confidence sentiment predictions rising above their reference",
         f"{{{{ $value | humanizePercentage }}}} of predictions over {w} scored below the low-confidence threshold, "
         f"more than {s.drift_low_confidence_margin:g} above the dev-set share."),
        ("unseen_tokens", past(f"job:toolchain_unseen_tokens:ratio_rate{w}", ">",
                               "toolchain_reference_unseen_token_share", s.drift_unseen_token_margin),
         "Sentiment inputs drifting: tokens unseen in training",
         f"{{{{ $value | humanizePercentage }}}} of input tokens over {w} occur in no training text, more than "
         f"{s.drift_unseen_token_margin:g} above the dev-set share (new vocabulary, publishers or language)."),
    ]
