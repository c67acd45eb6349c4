"""The canary rules: a second model version beside the stable one, compared on the same traffic.

The canary overlay labels each pod `track: stable` or `track: canary`, and the label is copied onto every
series at scrape time, so the service's own metrics split by track. These rules record per track over
`canary_window` and alert when the canary is worse than the stable track right now (more 5xx, a slower
p95) or classifies the same mix of news differently (its negative share moved either way). Both tracks
need a volume minimum, so a quiet canary's few requests cannot fire. docs/DEPLOY.md, Canary rollout.
"""
from __future__ import annotations

from .common import alert_rule
from .settings import AlertSettings, seconds

CANARY_RUNBOOK = "docs/DEPLOY.md#canary-rollout"


def canary_rules(s: AlertSettings) -> list[dict]:
    """Per track over `canary_window`: requests, 5xx share, p95 latency, items and negative share. The
    `track` label (stable / canary) is the pod's, copied onto every series at scrape time."""
    w = s.canary_window
    selector = f'job="{s.job}", track=~"stable|canary"'

    def rate(metric: str, extra: str = "", by: str = "job, track") -> str:
        return f"sum by ({by}) (rate({metric}{{{selector}{extra}}}[{w}]))"

    def share(part: str, total: str) -> str:   # 0, not "no data", when the part is empty
        return f"(\n  {part}\n  or 0 * {total}\n)\n/ {total}\n"

    requests, items = rate("toolchain_requests_total"), rate("toolchain_predictions_total")
    buckets = rate("toolchain_request_seconds_bucket", f', route=~"{s.latency_route}"', "job, track, le")
    return [
        {"record": f"job_track:toolchain_requests:rate{w}", "expr": requests},
        {"record": f"job_track:toolchain_request_errors:ratio_rate{w}",
         "expr": share(rate("toolchain_requests_total", ', status=~"5.."'), requests)},
        {"record": f"job_track:toolchain_request_seconds:p95_rate{w}", "expr": f"histogram_quantile(0.95, {buckets})"},
        {"record": f"job_track:toolchain_predictions:rate{w}", "expr": items},
        {"record": f"job_track:toolchain_negative_share:ratio_rate{w}",
         "expr": share(rate("toolchain_predictions_total", ', label="negative"'), items)},
    ]


def canary_alerts(s: AlertSettings) -> list[dict]:
    """The canary against the stable track, with volume minimums on both tracks (a quiet canary's few
    requests cannot fire): more 5xx, a slower p95, a negative share moved either way."""
    annotations = _canary_annotations(s)
    severity = {"SentimentCanaryErrors": "critical"}
    alerts = [alert_rule(name, expr, s.canary_for, severity.get(name, "warning"), "canary", annotations[name])
              for name, expr in _canary_exprs(s).items()]
    for alert in alerts:
        alert["annotations"]["runbook"] = CANARY_RUNBOOK
    return alerts


def _canary_records(s: AlertSettings) -> tuple[str, str, str]:
    """The recording rules the alerts compare: 5xx share, p95 latency, negative share."""
    w = s.canary_window
    return (f"job_track:toolchain_request_errors:ratio_rate{w}", f"job_track:toolchain_request_seconds:p95_rate{w}",
            f"job_track:toolchain_negative_share:ratio_rate{w}")


def _canary_exprs(s: AlertSettings) -> dict[str, str]:
    """Each canary alert's expression: the canary's value past the stable track's, with volume minimums."""
    w, n = s.canary_window, seconds(s.canary_window)
    errors, p95, negative = _canary_records(s)

    def against_stable(record: str, op: str, bound: float, outer: str = "") -> str:
        # `A and on (job) (A - B) > m`: the alert's value is the canary's own, its labels keep `track`.
        return (f'and on (job)\n  {outer}(\n    {record}{{track="canary"}}\n'
                f'    {op} on (job) {record}{{track="stable"}}\n  ) > {bound:g}\n')

    def on_each_track(record: str, minimum: float) -> str:
        return f"and on (job)\n  min by (job) ({record}) * {n:g} >= {minimum:g}\n"

    enough_requests = on_each_track(f"job_track:toolchain_requests:rate{w}", s.canary_min_requests)
    return {
        "SentimentCanaryErrors": f'{errors}{{track="canary"}}\n' + against_stable(errors, "-", s.canary_error_margin)
        + enough_requests,
        "SentimentCanaryHighLatency": f'{p95}{{track="canary"}}\n' + against_stable(p95, "/", s.canary_latency_factor)
        + against_stable(p95, "-", s.canary_latency_margin_seconds) + enough_requests,
        "SentimentCanaryNegativeShareShift": f'{negative}{{track="canary"}}\n'
        + against_stable(negative, "-", s.canary_negative_margin, "abs")
        + on_each_track(f"job_track:toolchain_predictions:rate{w}", s.canary_min_items),
    }


def _canary_annotations(s: AlertSettings) -> dict[str, dict]:
    """Summary and description of each canary alert, naming both tracks' model versions and values."""
    w = s.canary_window
    errors, p95, negative = _canary_records(s)
    canary, stable = _canary_versions(s, "canary"), _canary_versions(s, "stable")
    volume = f"with at least {s.canary_min_requests:g} requests on each track in {w}."
    return {
        "SentimentCanaryErrors": {
            "summary": f"Canary {canary} answers more server errors than stable {stable}",
            "description": f"{{{{ $value | humanizePercentage }}}} of the canary's requests got a 5xx answer over {w}, "
                           f"{_stable_value(s, errors, 'humanizePercentage')} of the stable track's: more than "
                           f"{s.canary_error_margin * 100:g} points above, {volume}"},
        "SentimentCanaryHighLatency": {
            "summary": f"Canary {canary} is slower than stable {stable}",
            "description": f"The canary's p95 request latency on {s.latency_route} over {w} is "
                           f"{{{{ $value | humanizeDuration }}}}, the stable track's "
                           f"{_stable_value(s, p95, 'humanizeDuration')}: above {s.canary_latency_factor:g}x and "
                           f"{s.canary_latency_margin_seconds * 1000:g}ms more, {volume}"},
        "SentimentCanaryNegativeShareShift": {
            "summary": f"Canary {canary} predicts a different negative share than stable {stable}",
            "description": f"{{{{ $value | humanizePercentage }}}} of the canary's items are negative over {w}, "
                           f"{_stable_value(s, negative, 'humanizePercentage')} of the stable track's: more than "
                           f"{s.canary_negative_margin * 100:g} points apart on the same mix of news, with at least "
                           f"{s.canary_min_items:g} items on each track in {w}."},
    }


def _canary_versions(s: AlertSettings, track: str) -> str:
    """Template text: the model version(s) of the track's targets (two while one of them rolls out)."""
    query = f'count by (model_version) (up{{job="{s.job}", track="{track}"}})'
    return (f"{{{{ range $i, $t := query `{query}` }}}}{{{{ if $i }}}}, {{{{ end }}}}"
            "{{ $t.Labels.model_version }}{{ end }}")


def _stable_value(s: AlertSettings, record: str, humanize: str) -> str:
    """Template text: the stable track's value of a recording rule."""
    return (f'{{{{ with query `{record}{{job="{s.job}", track="stable"}}` }}}}'
            f"{{{{ . | first | value | {humanize} }}}}{{{{ end }}}}")
