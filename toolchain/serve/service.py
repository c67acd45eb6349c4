"""The BentoML service: one export dir variant, loaded once per worker, behind the request gate.

The model comes from the Bento (``toolchain build`` packs the variant as a BentoML model and records
its tag as the Bento argument ``model_tag``) or, for local runs, from ``TOOLCHAIN_EXPORT_DIR``.
Settings are read from ``TOOLCHAIN_*`` environment variables (see :mod:`toolchain.serve.settings`).

Routes: ``POST /classify`` for a sequence-classification export (see :mod:`toolchain.serve.classify`),
``POST /ner`` for a token-classification one (see :mod:`toolchain.serve.ner`), both batchable; the route of
the other task answers 404. ``POST /explain`` (sequence classification, not batched, its own concurrency cap:
see :mod:`toolchain.serve.explain`) says which words drove a prediction. ``GET /livez``, ``GET /readyz`` (200 only after the model answered a warm-up
request), ``GET /metrics``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from typing import Annotated

import bentoml
from bentoml.validators import ContentType

from toolchain.privacy import install_log_masking
from toolchain.serve import auth
from toolchain.serve import classify as text_classification
from toolchain.serve import explain as explanation
from toolchain.serve import ner as token_classification
from toolchain.serve.gate import BENTOML_ERROR_LOGGER, RequestGate, Route
from toolchain.serve.metrics import service_metrics
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

# Every inference route and how the gate checks it; a route missing here would be unprotected.
ROUTES = {
    text_classification.ROUTE: Route(text_classification.TASK, text_classification.parse_request,
                                     text_classification.predicted_labels),
    token_classification.ROUTE: Route(token_classification.TASK, token_classification.parse_request,
                                      token_classification.entity_types),
    explanation.ROUTE: Route(explanation.TASK, explanation.parser(lambda: SERVED_LABELS or None),
                             explanation.no_predictions, concurrency=explanation.CONCURRENCY_SETTING),
}
SERVED_LABELS: list[str] = []   # the served model's labels once it has loaded (/explain checks its target)

# The task of the model this worker serves, set once it has loaded (the gate answers 404 on the other route).
SERVED: dict[str, str | None] = {"task": None}


def served_task() -> str | None:
    return SERVED["task"]


def bento_model():
    """The model packed in the Bento, when this code runs from one built by `toolchain build`."""
    tag = getattr(BENTO_ARGS, "model_tag", None)
    return bentoml.models.BentoModel(tag) if tag else None


def serving_layout(settings, model):
    """Workers x threads for this machine and model (decided once, before the workers start)."""
    from toolchain.serve.layout import export_layout_figures
    from toolchain.serve.runtime import wants_gpu

    if settings.export_dir:
        source, variant = settings.export_dir, settings.variant
    elif model is not None and model.stored is not None:
        source, variant = model.stored.path, settings.variant or getattr(BENTO_ARGS, "variant", None)
    else:
        source, variant = None, None
    size, measured = export_layout_figures(source, variant)
    return settings.layout(size, measured, wants_gpu(settings.provider))


BENTO_MODEL = bento_model()
LAYOUT = serving_layout(SETTINGS, BENTO_MODEL)
log.info("serving layout: %d worker(s) x %d thread(s): %s", LAYOUT.workers, LAYOUT.threads, LAYOUT.why)


@bentoml.service(
    name="toolchain-service",
    workers=LAYOUT.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
class ToolchainService:
    bento_model = BENTO_MODEL

    def __init__(self) -> None:
        from toolchain.serve.runtime import load_model

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
        SERVED["task"] = self.task
        SERVED_LABELS[:] = self.model.labels
        self.metrics.set_model(self.model_name(export_dir), self.model.variant, self.config_hash(), self.model.provider)
        self.warm_up()

    def model_source(self) -> tuple[str, str | None]:
        """(export dir, variant): TOOLCHAIN_EXPORT_DIR wins over the Bento's model."""
        if self.settings.export_dir:
            return self.settings.export_dir, self.settings.variant
        if self.bento_model is None:
            raise RuntimeError("no model to serve: set TOOLCHAIN_EXPORT_DIR=EXPORT_DIR, or serve a Bento built "
                               "by `toolchain build`")
        return self.bento_model.path, self.settings.variant or getattr(BENTO_ARGS, "variant", None)

    def model_name(self, export_dir: str) -> str:
        if self.settings.export_dir or self.bento_model is None:
            return Path(export_dir).name
        return self.bento_model.tag.name

    def config_hash(self) -> str:
        manifest = self.model.export.manifest
        return str(manifest.get("run_config_hash") or "unknown")

    def warm_up(self) -> None:
        result = self.predict(["Warm-up request: the model is loaded."], observe=False)
        if len(result) != 1:
            raise RuntimeError(f"warm-up returned {len(result)} predictions for 1 text")
        self.ready = True
        self.metrics.set_ready(True)
        log.info("model ready: task %s on POST %s, labels %s", self.task, self.route.ROUTE,
                 ", ".join(self.model.labels))

    def __is_ready__(self) -> bool:
        return self.ready

    def predict(self, texts: list[str], observe: bool = True) -> list:
        output = self.route.infer(self.model, texts)
        result = self.route.results(texts, output.logits, output.encodings, self.model.labels, output.truncated)
        if observe:
            self.metrics.observe_model_call(self.task, output.seconds, output.tokens, sum(output.truncated))
            self.metrics.observe_confidence(self.task, self.route.scores(result))
        return result

    def require(self, task: str) -> None:
        """The gate answers 404 before this; kept so the API never runs the wrong task's post-processing."""
        if task != self.task:
            raise bentoml.exceptions.NotFound(f"this deployment serves {self.task}: use POST {self.route.ROUTE}")

    @bentoml.api(route=text_classification.ROUTE, batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def classify(self, texts: list[str]) -> Predictions:
        """Classify texts: label, its score and all class scores per text, in input order.

        Body: {"texts": ["..."], "source": "optional ticker/desk/publisher (metric label only)"}.
        """
        self.require(text_classification.TASK)
        return self.predict(texts)

    @bentoml.api(route=token_classification.ROUTE, batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
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
        queues behind an explanation; the gate caps it at TOOLCHAIN_EXPLAIN_CONCURRENCY per worker.
        """
        import anyio.to_thread

        self.require(explanation.TASK)
        return await anyio.to_thread.run_sync(explanation.explain, self.model, texts, target)


ToolchainService.add_asgi_middleware(RequestGate, routes=ROUTES, served_task=served_task)
