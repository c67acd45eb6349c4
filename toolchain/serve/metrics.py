"""The service's Prometheus metrics, declared once (names are a contract: see docs/ARTIFACTS.md).

They are plain ``prometheus_client`` metrics. BentoML runs each worker with
``PROMETHEUS_MULTIPROC_DIR`` set and serves ``/metrics`` through a ``MultiProcessCollector``, so the
values of every worker are summed there. ``prometheus_client`` must therefore be imported only after
that variable is set: :func:`service_metrics` creates the metrics on first use, inside the worker.
"""
from __future__ import annotations

import functools
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REJECT_REASONS = ("auth", "validation", "size", "overload")
OTHER_SOURCE = "other"   # a source outside the allow-list, or none sent
NO_PREDICTED_TOPIC = "none"   # the `topic` label (the predicted topic) of a model without a topic head

CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
VOCABULARY_LABELS = ("seen", "unseen")   # an input token the training texts hold, or one they never did


@dataclass
class ServiceMetrics:
    predictions: Any
    confidence: Any
    inference_seconds: Any
    batch_size: Any
    input_tokens: Any
    truncated: Any
    rejected: Any
    requests: Any
    request_seconds: Any
    model_info: Any
    model_ready: Any
    drift_reference: Any
    reference_label_share: Any
    reference_confidence_mean: Any
    reference_low_confidence_share: Any
    reference_unseen_token_share: Any
    low_confidence: Any
    drift_tokens: Any
    queue_wait: Any = None
    children: dict = field(default_factory=dict, repr=False)   # (metric name, label values) -> labelled child

    def child(self, metric, *values: str):
        """``metric.labels(*values)``, looked up once: the request path skips prometheus_client's label checks."""
        key = (id(metric), values)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*values)
        return found

    def observe_model_call(self, task: str, seconds: float, tokens: Iterable[int], truncated: int) -> None:
        tokens = list(tokens)
        self.child(self.inference_seconds, task).observe(seconds)
        self.child(self.batch_size, task).observe(len(tokens))
        histogram = self.child(self.input_tokens, task)
        for count in tokens:
            histogram.observe(count)
        if truncated:
            self.child(self.truncated, task).inc(truncated)

    def observe_confidence(self, task: str, scores: Iterable[float]) -> None:
        histogram = self.child(self.confidence, task)
        for score in scores:
            histogram.observe(score)

    def observe_queue_wait(self, task: str, seconds: float) -> None:
        """How long a request waited in the model queue before the model took it (no batching wait: only the
        work ahead of it)."""
        if self.queue_wait is not None:
            self.child(self.queue_wait, task).observe(seconds)

    def count_predictions(self, task: str, predicted: Iterable[tuple[str, str]], source: str) -> None:
        """Count (label, predicted topic) pairs; the topic is ``none`` for a model without a topic head."""
        for (label, topic), count in Tally(predicted).items():
            self.child(self.predictions, label, topic, source, task).inc(count)

    def reject(self, reason: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"rejection reason {reason!r} is not one of {', '.join(REJECT_REASONS)}")
        self.child(self.rejected, reason).inc()

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.child(self.requests, route, str(status)).inc()
        self.child(self.request_seconds, route).observe(seconds)

    def set_model(self, model: str, variant: str, config_hash: str, provider: str, version: str,
                  batching: str = "", call_pattern: str = "") -> None:
        """The served model's series; ``batching`` (on/off) and ``call_pattern`` (per-text/length-grouped) say how
        its requests reach the model (see toolchain.serve.model_queue)."""
        self.model_info.labels(model=model, variant=variant, config_hash=config_hash, provider=provider,
                               version=version, batching=batching, call_pattern=call_pattern).set(1)

    def set_drift_reference(self, task: str, reference) -> None:
        """Expose a loaded reference (toolchain.inference.drift.DriftReference) and create the drift counters at 0,
        so rates exist from the first scrape; ``None`` (an export without one) marks the reference absent."""
        self.drift_reference.labels(task=task).set(0 if reference is None else 1)
        if reference is None:
            return
        for label, share in reference.label_shares.items():
            self.reference_label_share.labels(task=task, label=label).set(share)
        self.reference_confidence_mean.labels(task=task).set(reference.confidence_mean)
        self.reference_low_confidence_share.labels(task=task).set(reference.low_confidence_share)
        self.reference_unseen_token_share.labels(task=task).set(reference.unseen_token_share)
        self.low_confidence.labels(task=task)
        for vocabulary in VOCABULARY_LABELS:
            self.drift_tokens.labels(task=task, vocabulary=vocabulary)

    def observe_drift(self, task: str, low_confidence: int, seen_tokens: int, unseen_tokens: int) -> None:
        if low_confidence:
            self.child(self.low_confidence, task).inc(low_confidence)
        if seen_tokens:
            self.child(self.drift_tokens, task, "seen").inc(seen_tokens)
        if unseen_tokens:
            self.child(self.drift_tokens, task, "unseen").inc(unseen_tokens)

    def set_ready(self, ready: bool) -> None:
        self.model_ready.set(1 if ready else 0)


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The metrics of this process, created on first use (after BentoML set the multiprocess dir)."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServiceMetrics(
        predictions=Counter("toolchain_predictions", "Predictions by label, predicted topic ('none' without a topic "
                            "head) and the caller's allow-listed source", ["label", "topic", "source", "task"]),
        confidence=Histogram("toolchain_prediction_confidence", "Score of the predicted label", ["task"],
                             buckets=CONFIDENCE_BUCKETS),
        inference_seconds=Histogram("toolchain_inference_seconds", "Model time of one batch (ONNX Runtime calls "
                                    "only: no tokenizing, no HTTP)", ["task"], buckets=INFERENCE_BUCKETS),
        batch_size=Histogram("toolchain_batch_size", "Texts per round handed to the model (one request, or the "
                             "requests merged for a batch-invariant variant)", ["task"], buckets=BATCH_BUCKETS),
        input_tokens=Histogram("toolchain_input_tokens", "Tokens per input text after truncation", ["task"],
                               buckets=TOKEN_BUCKETS),
        truncated=Counter("toolchain_truncated_inputs", "Inputs truncated to the model's max length", ["task"]),
        rejected=Counter("toolchain_rejected_requests", "Requests refused before inference", ["reason"]),
        requests=Counter("toolchain_requests", "Inference requests by route and status", ["route", "status"]),
        request_seconds=Histogram("toolchain_request_seconds", "Whole-request time of inference routes", ["route"],
                                  buckets=REQUEST_BUCKETS),
        model_info=Gauge("toolchain_model_info", "The served model (value 1); batching on/off and the model call "
                         "pattern say how requests reach it", ["model", "variant", "config_hash", "provider", "version",
                                                               "batching", "call_pattern"], multiprocess_mode="max"),
        model_ready=Gauge("toolchain_model_ready", "1 once the model has loaded and answered a warm-up request",
                          multiprocess_mode="livemin"),
        **drift_metrics(Counter, Gauge),
        queue_wait=Histogram("toolchain_queue_wait_seconds", "Time a request waited in the model queue before the "
                             "model took it (the work queued ahead of it; there is no batching wait)", ["task"],
                             buckets=WAIT_BUCKETS),
    )


def drift_metrics(Counter, Gauge) -> dict:
    """Drift signals and the training-time reference they are compared with (toolchain.inference.drift)."""
    def reference(name: str, text: str, labels: tuple[str, ...] = ("task",)):
        return Gauge(name, text + " (training-time reference of the served variant)", list(labels),
                     multiprocess_mode="max")

    return dict(
        drift_reference=Gauge("toolchain_drift_reference", "1 when the served variant has a drift reference "
                              "(drift_reference.json), 0 when it has none and drift signals are off", ["task"],
                              multiprocess_mode="max"),
        reference_label_share=reference("toolchain_reference_label_share", "Share of each label in the train split",
                                        ("task", "label")),
        reference_confidence_mean=reference("toolchain_reference_confidence_mean", "Mean score of the predicted "
                                            "label on dev"),
        reference_low_confidence_share=reference("toolchain_reference_low_confidence_share", "Share of dev "
                                                 "predictions scored below the low-confidence threshold"),
        reference_unseen_token_share=reference("toolchain_reference_unseen_token_share", "Share of dev input "
                                               "tokens that no training text holds"),
        low_confidence=Counter("toolchain_low_confidence_predictions", "Predictions whose score is below the "
                               "reference's low-confidence threshold", ["task"]),
        drift_tokens=Counter("toolchain_drift_tokens", "Input tokens (special tokens excluded) by whether the "
                             "training texts hold them", ["task", "vocabulary"]),
    )


def model_version(configured: str | None, bento_model, config_hash: str) -> str:
    """The ``version`` label of toolchain_model_info: TOOLCHAIN_MODEL_VERSION when set, else the tag version of
    the Bento's model when served from a Bento, else the export's run config hash (its first 8 characters)."""
    if configured:
        return configured
    if bento_model is not None:
        return str(bento_model.tag.version)
    return config_hash[:8]


def source_label(source: str | None, allowed: frozenset[str]) -> str:
    """A bounded metric label: the caller's source if allow-listed, else (absent or unknown) ``other``."""
    return source if source is not None and source in allowed else OTHER_SOURCE
