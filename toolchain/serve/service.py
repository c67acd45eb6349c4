"""The BentoML service: one export dir variant, loaded once per worker, behind admission control.

The model comes from the Bento (``toolchain build`` packs the variant as a BentoML model and records
its tag as the Bento argument ``model_tag``) or, for local runs, from ``TOOLCHAIN_EXPORT_DIR``. A topic
model served beside it (``toolchain build --topic-config``: Bento argument ``topic_model_tag``, or
``TOOLCHAIN_TOPIC_EXPORT_DIR``) adds the predicted topic to every ``/classify`` answer; ``/explain``
keeps explaining the main model.
Settings are read from ``TOOLCHAIN_*`` environment variables (see :mod:`toolchain.serve.settings`).

Routes: ``POST /classify`` for a sequence-classification export (see :mod:`toolchain.serve.classify`),
``POST /ner`` for a token-classification one (see :mod:`toolchain.serve.ner`), both answered through the
worker's model queue (:mod:`toolchain.serve.model_queue`: one model thread, requests merged only for a
batch-invariant variant, a bound in seconds of queued model work); the route of the other task answers 404.
``POST /explain`` (sequence classification, not batched, its own concurrency cap: see :mod:`toolchain.serve.explain`)
says which words drove a prediction. ``GET /livez``, ``GET /readyz`` (200 only after the model answered a warm-up
request), ``GET /metrics``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import TypeAdapter

from toolchain.core.privacy import install_log_masking
from toolchain.serve import auth
from toolchain.serve import classify as text_classification
from toolchain.serve import explain as explanation
from toolchain.serve import ner as token_classification
from toolchain.serve.admission import BENTOML_ERROR_LOGGER, AdmissionControl, Route
from toolchain.inference.drift import drift_monitor
from toolchain.serve.metrics import model_version, service_metrics
from toolchain.serve.model_queue import ModelQueue, TextCost, model_cost
from toolchain.serve.settings import load_settings

log = logging.getLogger("toolchain.serve")
log.setLevel(logging.INFO)  # BentoML's root handler prints it; the root logger itself stays at WARNING

SETTINGS = load_settings()
if SETTINGS.mask_pii:  # request texts reach the log only masked: in our messages and in BentoML's exception logs
    install_log_masking(log, logging.getLogger(BENTOML_ERROR_LOGGER))
BENTO_ARGS = bentoml.use_arguments()  # set by `toolchain build`, stored in the Bento: model_tag, variant

# The JSON media type stated up front spares BentoML a JSON-schema build on every response.
Predictions = Annotated[list[text_classification.Prediction], ContentType("application/json")]
NerResults = Annotated[list[token_classification.NerResult], ContentType("application/json")]
Explanations = Annotated[list[explanation.Explanation], ContentType("application/json")]

# The route module of each task: request parsing, response building, labels for the metrics.
TASK_ROUTES = {text_classification.TASK: text_classification, token_classification.TASK: token_classification}
# The JSON of each task's answer, as BentoML would write the API's return value.
TASK_ANSWERS = {text_classification.TASK: TypeAdapter(list[text_classification.Prediction]),
                token_classification.TASK: TypeAdapter(list[token_classification.NerResult])}

# Every inference route and how admission control checks it; a route missing here would be unprotected.
ROUTES = {
    text_classification.ROUTE: Route(text_classification.TASK, text_classification.parse_request,
                                     text_classification.predicted_labels, queued=True),
    token_classification.ROUTE: Route(token_classification.TASK, token_classification.parse_request,
                                      token_classification.entity_types, queued=True),
    explanation.ROUTE: Route(explanation.TASK, explanation.parser(lambda: SERVED_LABELS or None),
                             explanation.no_predictions, concurrency=explanation.CONCURRENCY_SETTING),
}
SERVED_LABELS: list[str] = []   # the served model's labels once it has loaded (/explain checks its target)

# The task of the model this worker serves and its model queue, set once it has loaded (admission control answers
# 404 on the other route, and sends /classify or /ner to the queue).
SERVED: dict = {"task": None, "queue": None}


def served_task() -> str | None:
    return SERVED["task"]


def served_queue() -> ModelQueue | None:
    return SERVED["queue"]


@dataclass
class Answer:
    """One request's answer, built on the model thread: the response body and the predicted labels to count."""
    body: bytes
    labels: list[tuple[str, str]]


def bento_model(argument: str = "model_tag"):
    """The model packed in the Bento (``topic_model_tag``: the topic model), when this code runs from one built
    by `toolchain build`."""
    tag = getattr(BENTO_ARGS, argument, None)
    return bentoml.models.BentoModel(tag) if tag else None


def topic_model_export(settings, model) -> tuple[str | None, str | None]:
    """(export dir, variant) of the topic model, (None, None) without one: TOOLCHAIN_TOPIC_EXPORT_DIR wins over
    the Bento's topic model."""
    if settings.topic_export_dir:
        return settings.topic_export_dir, settings.topic_variant
    if model is None:
        return None, None
    # the class attribute is a BentoModel (resolve() names a missing model); an instance sees the stored model
    stored = (model.stored or model.resolve()) if hasattr(model, "stored") else model
    return stored.path, settings.topic_variant or getattr(BENTO_ARGS, "topic_variant", None)


def serving_layout(settings, model, topic_model=None):
    """Workers x threads for this machine and model(s) (decided once, before the workers start)."""
    from toolchain.serve.layout import export_layout_figures, slower_figures
    from toolchain.inference.runtime import wants_gpu

    if settings.export_dir:
        export_dir, variant = settings.export_dir, settings.variant
    elif model is not None and model.stored is not None:
        export_dir, variant = model.stored.path, settings.variant or getattr(BENTO_ARGS, "variant", None)
    else:
        export_dir, variant = None, None
    size, measured = export_layout_figures(export_dir, variant)
    topic_dir, topic_variant = topic_model_export(settings, topic_model)
    if topic_dir is None:
        return settings.layout(size, measured, wants_gpu(settings.provider))
    topic_size, topic_measured = export_layout_figures(topic_dir, topic_variant)
    return settings.layout(size + topic_size, slower_figures(measured, topic_measured), wants_gpu(settings.provider),
                           models=2)


BENTO_MODEL = bento_model()
TOPIC_BENTO_MODEL = bento_model("topic_model_tag")
LAYOUT = serving_layout(SETTINGS, BENTO_MODEL, TOPIC_BENTO_MODEL)
log.info("serving layout: %d worker(s) x %d thread(s): %s", LAYOUT.workers, LAYOUT.threads, LAYOUT.why)


INFERENCE_PATHS = [text_classification.ROUTE, token_classification.ROUTE]


def served_paths_config(settings) -> dict:
    """BentoML's own per-request layers that /classify and /ner can do without (admission control counts every
    response, keeps its own deadline and limits): its access log line (TOOLCHAIN_ACCESS_LOG) and its OpenTelemetry
    middleware (TOOLCHAIN_TRACING), which builds a span per request even where nothing exports it."""
    config: dict = {}
    if not settings.access_log:
        config["logging"] = {"access": {"enabled": False}}
    if not settings.tracing:
        config["tracing"] = {"excluded_urls": INFERENCE_PATHS}
    return config


@bentoml.service(
    name="toolchain-service",
    workers=LAYOUT.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    **served_paths_config(SETTINGS),
)
class ToolchainService:
    bento_model = BENTO_MODEL
    topic_bento_model = TOPIC_BENTO_MODEL   # None without a topic model (BentoML packs the models set here)

    def __init__(self) -> None:
        from toolchain.inference.runtime import load_model

        self.ready = False
        self.settings = load_settings()
        self.metrics = service_metrics()
        self.metrics.set_ready(False)
        auth.check_configuration(self.settings.auth)
        export_dir, variant = self.model_source()
        self.model = load_model(export_dir, variant, self.settings, LAYOUT.threads)
        self.task = self.model.export.task
        if self.task not in TASK_ROUTES:
            raise RuntimeError(f"{export_dir}: task {self.task!r} has no route in this service "
                               f"(served: {', '.join(TASK_ROUTES)})")
        self.route = TASK_ROUTES[self.task]
        self.answers = TASK_ANSWERS[self.task]
        SERVED["task"] = self.task
        SERVED_LABELS[:] = self.model.labels
        self.drift = drift_monitor(self.metrics, self.model)
        self.classifier = self.with_topic_model()   # what predict runs: the model, or it and the topic model
        self.batching = self.settings.batching and not self.classifier.per_text
        self.classifier.limit_calls(self.settings.max_batch_size, self.settings.max_batch_tokens)
        self.metrics.set_model(self.model_name(export_dir), self.model.variant, self.config_hash(), self.model.provider,
                               model_version(self.settings.model_version, None if self.settings.export_dir else
                                             self.bento_model, self.config_hash()), *self.batching_labels())
        self.warm_up()
        self.queue = self.start_queue()
        SERVED["queue"] = self.queue
        self.ready = True
        self.metrics.set_ready(True)
        log.info("model ready: task %s on POST %s, labels %s", self.task, self.route.ROUTE,
                 ", ".join(self.model.labels))

    def model_source(self) -> tuple[str, str | None]:
        """(export dir, variant): TOOLCHAIN_EXPORT_DIR wins over the Bento's model."""
        if self.settings.export_dir:
            return self.settings.export_dir, self.settings.variant
        if self.bento_model is None:
            raise RuntimeError("no model to serve: set TOOLCHAIN_EXPORT_DIR=EXPORT_DIR, or serve a Bento built "
                               "by `toolchain build`")
        return self.bento_model.path, self.settings.variant or getattr(BENTO_ARGS, "variant", None)

    def with_topic_model(self):
        """The main model, or with a topic model configured the two as a TopicPair (the pair checked, both
        models' checksums verified); the topic model gets its own toolchain_model_info series."""
        from toolchain.inference.runtime import load_topic_pair

        self.topic_info = None
        topic_dir, topic_variant = topic_model_export(self.settings, self.topic_bento_model)
        if topic_dir is None:
            return self.model
        pair = load_topic_pair(self.model, topic_dir, topic_variant, self.settings, LAYOUT.threads,
                               LAYOUT.concurrent_models)
        topic_hash = str(pair.topic.export.manifest.get("run_config_hash") or "unknown")
        packed = None if self.settings.topic_export_dir else self.topic_bento_model
        self.topic_info = (packed.tag.name if packed else Path(topic_dir).name, pair.topic.variant, topic_hash,
                           pair.topic.provider, model_version(self.settings.model_version, packed, topic_hash))
        log.info("topic model %s variant %s beside the main model: %d topics, %s calls", topic_dir,
                 pair.topic.variant, len(pair.topic.labels), "concurrent" if pair.concurrent else "sequential")
        return pair

    def model_name(self, export_dir: str) -> str:
        if self.settings.export_dir or self.bento_model is None:
            return Path(export_dir).name
        return self.bento_model.tag.name

    def config_hash(self) -> str:
        manifest = self.model.export.manifest
        return str(manifest.get("run_config_hash") or "unknown")

    def batching_labels(self) -> tuple[str, str]:
        """The ``batching`` and ``call_pattern`` labels of toolchain_model_info (the topic model's series too)."""
        labels = ("on" if self.batching else "off", self.classifier.call_pattern)
        if self.topic_info is not None:
            self.metrics.set_model(*self.topic_info, *labels)
        return labels

    def warm_up(self) -> None:
        self.warm_up_seconds = []
        for _ in range(3):   # the first call is slow (allocations); the fastest is the cost if the export has none
            started = time.perf_counter()
            result = self.predict(["Warm-up request: the model is loaded."], observe=False)
            self.warm_up_seconds.append(time.perf_counter() - started)
            if len(result) != 1:
                raise RuntimeError(f"warm-up returned {len(result)} predictions for 1 text")

    def text_cost(self) -> TextCost:
        """Seconds of model time per request size: TOOLCHAIN_TEXT_COST_MS, else the export's measured figures for
        this variant and thread count (both models' with a topic model), else the warm-up's fastest call."""
        cost = model_cost(self.model, LAYOUT.threads, self.settings.text_cost_ms)
        topic = getattr(self.classifier, "topic", None)
        if cost is not None and topic is not None and not self.settings.text_cost_ms:
            topic_cost = model_cost(topic, LAYOUT.threads)
            cost = cost.plus(topic_cost) if topic_cost is not None else None
        if cost is None:
            fastest = min(self.warm_up_seconds)
            cost = TextCost(fastest, None, f"{1000 * fastest:.2f} ms per text (timed at warm-up: the export measured "
                                           "none)")
        return cost

    def start_queue(self) -> ModelQueue:
        cost, bound = self.text_cost(), self.settings.queue_bound_s
        model_queue = ModelQueue(self.run_requests, cost, bound, self.batching, self.settings.max_batch_size,
                                 on_start=self.observe_wait)
        if self.batching:
            how = (f"batching on: requests that queue while the model is busy share model calls of similar-length "
                   f"texts, at most {self.settings.max_batch_size} texts and {self.settings.max_batch_tokens} padded "
                   f"tokens per call ({self.classifier.call_pattern} {self.model.variant})")
        elif self.classifier.per_text:
            how = (f"batching off: {self.model.variant} runs one text per model call (its scores would depend on "
                   "the other texts of a call), so requests are never merged")
        else:
            how = "batching off (TOOLCHAIN_BATCHING=false): each request runs alone"
        log.info("model queue: %s; no batching wait: a request starts as soon as the model is free; bound %g s of "
                 "queued model work per worker (TOOLCHAIN_MAX_QUEUE_S), costed at %s", how, bound, cost.source)
        return model_queue

    def observe_wait(self, seconds: float, texts: int) -> None:
        self.metrics.observe_queue_wait(self.task, seconds)

    def run_requests(self, requests: list[list[str]]) -> list[Answer]:
        """One round of the model queue (on its thread): every request's texts in one ``infer`` (the runtime plans
        the model calls), then each request's answer as JSON with its predicted labels."""
        texts = requests[0] if len(requests) == 1 else [text for request in requests for text in request]
        output = self.route.infer(self.classifier, texts)
        labels, answers, scores, start = self.classifier.labels, [], [], 0
        for request in requests:
            end = start + len(request)
            result = self.route.results(request, output.logits[start:end], output.encodings[start:end], labels,
                                        output.truncated[start:end])
            answers.append(Answer(self.answers.dump_json(result), self.route.result_labels(result)))
            scores += self.route.scores(result)
            start = end
        self.metrics.observe_model_call(self.task, output.seconds, output.tokens, sum(output.truncated))
        self.metrics.observe_confidence(self.task, scores)
        self.drift.observe(scores, output.encodings)
        return answers

    def __is_ready__(self) -> bool:
        return self.ready

    def predict(self, texts: list[str], observe: bool = True) -> list:
        output = self.route.infer(self.classifier, texts)
        result = self.route.results(texts, output.logits, output.encodings, self.classifier.labels, output.truncated)
        if observe:
            self.metrics.observe_model_call(self.task, output.seconds, output.tokens, sum(output.truncated))
            self.metrics.observe_confidence(self.task, self.route.scores(result))
            self.drift.observe(self.route.scores(result), output.encodings)
        return result

    def require(self, task: str) -> None:
        """Admission control answers 404 before this; kept so the API never runs the wrong task's post-processing."""
        if task != self.task:
            raise bentoml.exceptions.NotFound(f"this deployment serves {self.task}: use POST {self.route.ROUTE}")

    # /classify and /ner are answered by admission control through the model queue (run_requests): these API
    # methods declare the routes (OpenAPI, BentoML's schema) and answer only if a request reaches BentoML's API.
    # Not batchable: BentoML's adaptive batcher would add a wait and shed by its own latency estimate.
    @bentoml.api(route=text_classification.ROUTE)
    def classify(self, texts: list[str]) -> Predictions:
        """Classify texts: label, its score and all class scores per text, in input order.

        Body: {"texts": ["..."], "source": "optional ticker/desk/publisher (metric label only)"}.
        """
        self.require(text_classification.TASK)
        return self.predict(texts)

    @bentoml.api(route=token_classification.ROUTE)
    def ner(self, texts: list[str]) -> NerResults:
        """Named entities per text: type, text, character start/end in the text as sent, and score.

        Body: {"texts": ["..."], "source": "optional ticker/desk/publisher (metric label only)"}.
        """
        self.require(token_classification.TASK)
        return self.predict(texts)

    @bentoml.api(route=explanation.ROUTE)
    async def explain(self, texts: list[str], target: str | None = None) -> Explanations:
        """Which words drove the served model's prediction: leave-one-word-out occlusion on the served variant.

        Body: {"texts": ["..."], "target": "optional label (default: the predicted one)", "source": "optional"}.
        Runs in a thread of its own, not in the one BentoML gives the batched routes, so /classify never
        queues behind an explanation; admission control caps it at TOOLCHAIN_EXPLAIN_CONCURRENCY per worker.
        """
        import anyio.to_thread

        self.require(explanation.TASK)
        return await anyio.to_thread.run_sync(explanation.explain, self.model, texts, target)


ToolchainService.add_asgi_middleware(AdmissionControl, routes=ROUTES, served_task=served_task,
                                     model_queue=served_queue)
