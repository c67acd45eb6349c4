"""The service rules: is the sentiment service up, ready, fast and answering without server errors.

p95 latency on `latency_route` and the 5xx share over `short_window`, recorded once and alerted on; the
readiness and scrape-target alerts catch a model that failed to load and a service Prometheus cannot see.
"""
from __future__ import annotations

from .common import alert_rule
from .settings import AlertSettings


def service_rules(s: AlertSettings) -> list[dict]:
    """p95 request latency on `latency_route` and the share of 5xx answers over `short_window`."""
    w = s.short_window
    p95 = ("histogram_quantile(0.95, sum by (job, le) (rate(toolchain_request_seconds_bucket"
           f'{{job="{s.job}", route=~"{s.latency_route}"}}[{w}])))')
    total = f'sum by (job) (rate(toolchain_requests_total{{job="{s.job}"}}[{w}]))'
    errors = f'sum by (job) (rate(toolchain_requests_total{{job="{s.job}", status=~"5.."}}[{w}]))'
    return [
        {"record": f"job:toolchain_request_seconds:p95_rate{w}", "expr": p95},
        {"record": f"job:toolchain_request_errors:ratio_rate{w}",
         "expr": f"(\n  {errors}\n  or 0 * {total}\n)\n/ {total}\n"},
    ]


def service_alerts(s: AlertSettings) -> list[dict]:
    """Slow, erroring, not ready, target down, target missing."""
    w = s.short_window
    return [
        alert_rule("SentimentServiceHighLatency",
                   f"job:toolchain_request_seconds:p95_rate{w} > {s.latency_p95_seconds:g}", s.latency_for, "warning",
                   "service",
                   {"summary": "Sentiment service p95 latency is high",
                    "description": f"p95 request latency on {s.latency_route} is {{{{ $value | humanizeDuration }}}} "
                                   f"(threshold {s.latency_p95_seconds:g}s)."}),
        alert_rule("SentimentServiceErrors", f"job:toolchain_request_errors:ratio_rate{w} > {s.error_ratio:g}",
                   s.errors_for, "critical", "service",
                   {"summary": "Sentiment service answers with server errors",
                    "description": f"{{{{ $value | humanizePercentage }}}} of requests got a 5xx answer over {w} "
                                   f"(threshold {s.error_ratio:.0%}); 503 is also overload shedding, see "
                                   "toolchain_rejected_requests_total."}),
        alert_rule("SentimentModelNotReady", f'toolchain_model_ready{{job="{s.job}"}} == 0', s.not_ready_for,
                   "critical", "service",
                   {"summary": "Sentiment model not ready on {{ $labels.instance }}",
                    "description": "toolchain_model_ready is 0: the model failed to load or its checksum did not "
                                   "match."}),
        alert_rule("SentimentServiceTargetDown", f'up{{job="{s.job}"}} == 0', s.not_ready_for, "critical", "service",
                   {"summary": "Prometheus cannot scrape the sentiment service on {{ $labels.instance }}",
                    "description": "The scrape target is down: pod crashed, not running, or /metrics unreachable."}),
        alert_rule("SentimentServiceTargetMissing", f'absent(up{{job="{s.job}"}})', s.not_ready_for, "critical",
                   "service",
                   {"summary": f'No scrape target of job "{s.job}"',
                    "description": "Prometheus has no target for the service: deployment gone or discovery broken."}),
    ]
