"""Admission control: ASGI middleware in front of every inference route (rate, concurrency and size limits,
auth and validation before the API).

In order, for each inference request: API key (401), bounded concurrency per worker (fast 503; a
costly route such as ``/explain`` also has its own, lower cap: ``Route.concurrency``),
media type (415), body cap (413, without reading an over-long body), ``Idempotency-Key`` replay
(see :mod:`toolchain.serve.idempotency`), the route's own validation (400/422). Only then does the
request reach the model: ``/classify`` and ``/ner`` go to the worker's model queue
(:mod:`toolchain.serve.model_queue`: a fast 503 with ``Retry-After`` when its queued work is over its bound, checked
on the headers already), and their answer is built there and sent from here, without BentoML's API layer (a second
JSON parse and pydantic validation of the body, a worker-thread hop); ``/explain`` goes to its BentoML API.
Admission control also counts rejections by reason, predictions by label and topic, and every response of an
inference route by status, whatever produced it: admission control, BentoML, the model, a timeout (504), an
exception in admission control itself (500).
Health probes pass untouched; ``/metrics`` needs a key only when ``TOOLCHAIN_METRICS_AUTH`` is on.

Where BentoML puts things (``_bentoml_impl/server/app.py``, ``ServiceAppFactory.middlewares``): its
``TimeoutMiddleware`` (``traffic.timeout``) wraps this middleware from outside. On expiry it cancels the
request's task and sends its own 504, so admission control would never see that response. It therefore
keeps its own deadline, slightly shorter (:func:`admission_deadline`): it answers 504 (or 408 while the body
is still arriving) itself and counts it; a cancellation from outside is still counted as 504.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolchain.core.privacy import clip
from toolchain.serve import auth
from toolchain.serve.idempotency import REPLAYED_HEADER, request_key, store_for_workers
from toolchain.serve.metrics import REJECT_REASONS, service_metrics, source_label
from toolchain.serve.model_queue import ClientGone, ModelError, wait_for_job, within
from toolchain.serve.responses import (  # noqa: F401  (BENTOML_ERROR_LOGGER: the service installs the watcher)
    BENTOML_ERROR_LOGGER, CURRENT_REQUEST, JSON_HEADERS, ClientDisconnected, RequestNote, ResponseRecorder,
    StatusTracker, describe, internal_error, overloaded, read_body, replay, route_overloaded, send_json,
    send_rejection, timed_out, too_large, unauthorized, unavailable, watch_bentoml_errors)
from toolchain.serve.settings import ServeSettings, load_settings
from toolchain.serve.validation import Limits, RequestRejected, without_bom

log = logging.getLogger("toolchain.serve")
METRICS_PATH = "/metrics"
JSON_TYPES = ("application/json", "text/json")


@dataclass(frozen=True)
class Route:
    """What admission control needs to know about one inference route."""
    task: str
    parse: Callable[[bytes, Limits], Any]              # body -> request with .source; raises RequestRejected
    labels_of: Callable[[Any], list[tuple[str, str]]]  # response JSON -> (predicted label, predicted topic) pairs
    concurrency: str | None = None                     # a ServeSettings field: this route's own in-flight cap
    queued: bool = False                               # answered through the worker's model queue (not the API)


def admission_deadline(timeout_s: float) -> float:
    """Admission control's own deadline: a little before BentoML's TimeoutMiddleware, so it answers first."""
    return timeout_s - min(0.5, 0.1 * timeout_s)


# --------------------------------------------------------------------------- the exception behind a response


# --------------------------------------------------------------------------- admission control

class AdmissionControl:
    """ASGI middleware; BentoML adds it with ``Service.add_asgi_middleware(AdmissionControl, routes=...)``."""

    def __init__(self, app, routes: dict[str, Route], settings: ServeSettings | None = None,
                 served_task: Callable[[], str | None] = lambda: None,
                 model_queue: Callable[[], Any] = lambda: None):
        self.app = app
        self.routes = routes
        self.served_task = served_task
        self.model_queue = model_queue   # the worker's ModelQueue once the model has loaded (None before)
        self.settings = settings or load_settings()
        self.keys = auth.ReloadingKeys() if self.settings.auth or self.settings.metrics_auth else auth.KeyRing([])
        self.limits = Limits(self.settings.max_batch_items, self.settings.max_text_chars)
        self.sources = self.settings.source_allow_list
        self.deadline_s = admission_deadline(self.settings.timeout_s)
        self.idempotency = store_for_workers()
        self.in_flight = 0
        self.route_in_flight: dict[str, int] = {}   # per path, for routes with their own cap (Route.concurrency)
        watch_bentoml_errors()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == METRICS_PATH and self.settings.metrics_auth and not self.authorized(scope):
            service_metrics().reject("auth")
            return await send_rejection(send, unauthorized())
        route = self.routes.get(path)
        if route is None:
            return await self.app(scope, receive, send)
        await self.counted(route, scope, receive, StatusTracker(send))

    async def counted(self, route: Route, scope, receive, send: StatusTracker) -> None:
        """Serve one request of an inference route and count its response, whatever produced it."""
        started = time.perf_counter()
        try:
            if scope["method"] == "POST":
                await self.handle(route, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        except asyncio.CancelledError:  # BentoML's TimeoutMiddleware cancels us, then answers 504 itself
            if send.status is None and time.perf_counter() - started >= self.deadline_s:
                send.status = 504
            raise
        except Exception:
            log.exception("admission control failed on %s %s", scope["method"], scope["path"])
            if send.status is None:
                await send_json(send, 500, {"error": "internal_error", "message": "the server failed on this "
                                            "request; the error is in the server log"})
        finally:
            if send.status is not None:
                service_metrics().observe_request(scope["path"], send.status, time.perf_counter() - started)

    def authorized(self, scope) -> bool:
        return self.keys.check(auth.presented_key(scope["headers"]))

    async def handle(self, route: Route, scope, receive, send) -> None:
        """Admit (or refuse) one inference request and answer it within the deadline."""
        try:
            self.admit(scope)
            self.check_task(route)
            self.admit_route(route, scope["path"])
            self.admit_queued(route)
        except RequestRejected as rejected:
            return await self.refuse(send, rejected)
        deadline = time.perf_counter() + self.deadline_s
        self.in_flight += 1
        self.route_in_flight[scope["path"]] = self.route_in_flight.get(scope["path"], 0) + 1
        try:
            body = without_bom(await self.read_within(receive, deadline))
            await self.answer(route, scope, body, receive, send, deadline)
        except RequestRejected as rejected:
            await self.refuse(send, rejected)
        except ClientDisconnected:
            pass
        finally:
            self.in_flight -= 1
            self.route_in_flight[scope["path"]] -= 1

    async def read_within(self, receive, deadline: float) -> bytes:
        try:
            return await within(read_body(receive, self.settings.max_body_bytes), deadline - time.perf_counter())
        except asyncio.TimeoutError:
            raise RequestRejected(408, "request_timeout", "the request body did not arrive within "
                                  f"{self.deadline_s:g} s (TOOLCHAIN_TIMEOUT_S)", reason="timeout") from None

    async def answer(self, route: Route, scope, body: bytes, receive, send, deadline: float) -> None:
        """The model's (or the API's) response, or the stored one for a repeated ``Idempotency-Key``; ``receive``
        is the request's, its body already read."""
        headers = dict(scope["headers"])
        key = request_key(headers)
        if key is None:
            await self.forward(route, body, route.parse(body, self.limits), scope, receive, send, deadline)
            return
        scope_key = self.idempotency.scope(auth.presented_key(headers), scope["path"], key)
        stored = self.idempotency.begin(scope_key, body)
        if stored is not None:
            await send({"type": "http.response.start", "status": stored.status,
                        "headers": [*stored.headers, REPLAYED_HEADER]})
            await send({"type": "http.response.body", "body": stored.body, "more_body": False})
            return
        recorder = None
        try:
            recorder = await self.forward(route, body, route.parse(body, self.limits), scope, receive, send, deadline)
        finally:
            if recorder is not None and recorder.start is not None:
                self.idempotency.finish(scope_key, recorder.status, recorder.headers, recorder.body)
            else:
                self.idempotency.abandon(scope_key)

    def admit(self, scope) -> None:
        """Checks that need only the headers: key, concurrency, media type, declared length."""
        if self.settings.auth and not self.authorized(scope):
            raise unauthorized()
        if self.in_flight >= self.settings.max_concurrency:
            raise overloaded(self.settings.max_concurrency)
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"application/json").decode("latin-1").split(";")[0].strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise RequestRejected(415, "unsupported_media_type", f"content-type {media!r} is not supported; "
                                  "send application/json")
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            raise too_large(int(declared), self.settings.max_body_bytes)

    def admit_queued(self, route: Route) -> None:
        """A route answered through the model queue is refused (503, Retry-After) while the queue is over its
        bound: on the headers alone, before the body is read or parsed."""
        model_queue = self.model_queue() if route.queued else None
        rejected = model_queue.refusal() if model_queue is not None else None
        if rejected is not None:
            raise rejected

    def admit_route(self, route: Route, path: str) -> None:
        """A route with a cap of its own (a costly one: /explain) refuses past it, leaving the others' slots."""
        if route.concurrency is None:
            return
        limit = getattr(self.settings, route.concurrency)
        if self.route_in_flight.get(path, 0) >= limit:
            raise route_overloaded(path, limit, route.concurrency)

    def check_task(self, route: Route) -> None:
        """404 on the route of a task this deployment does not serve (once the model has loaded)."""
        served = self.served_task()
        if served is None or served == route.task:
            return
        others = [path for path, other in self.routes.items() if other.task == served]
        raise RequestRejected(404, "wrong_task", f"this deployment serves a {served} model; it has no "
                              f"{route.task} route" + (f": use POST {others[0]}" if others else ""))

    async def refuse(self, send, rejected: RequestRejected) -> None:
        if self.settings.mask_pii:   # a message may quote the request (toolchain.serve.validation.preview)
            rejected = rejected.masked()
        if rejected.reason in REJECT_REASONS:
            service_metrics().reject(rejected.reason)
        await send_rejection(send, rejected)

    async def forward(self, route: Route, body: bytes, request, scope, receive, send,
                      deadline: float) -> ResponseRecorder:
        """Answer within the deadline (else 504) through the model queue or the API; count the predictions;
        say what a 503 was."""
        model_queue = self.model_queue() if route.queued else None
        if model_queue is not None:
            return await self.run_queued(route, model_queue, request, receive, send, deadline)
        recorder, note = ResponseRecorder(), RequestNote()
        token = CURRENT_REQUEST.set(note)
        try:
            await self.run_app(scope, replay(body, receive), recorder, deadline)
        finally:
            CURRENT_REQUEST.reset(token)
        status = recorder.status
        if status == 200:
            self.count_predictions(route, request, recorder.body)
        elif status == 503:
            await self.refuse(send, unavailable(note.exception))
            return recorder
        elif status >= 500:
            log.error("inference route %s answered %d (%s): %s", scope["path"], status, describe(note.exception),
                      clip(recorder.body.decode("utf-8", "replace"), 500))
        await recorder.forward(send)
        return recorder

    async def run_queued(self, route: Route, model_queue, request, receive, send,
                         deadline: float) -> ResponseRecorder:
        """The request's texts through the worker's model queue; its answer (JSON and predicted labels) is built
        on the model thread. Refused (503) when the queue is over its bound."""
        job = model_queue.submit(request.texts)
        try:
            answer = await wait_for_job(model_queue, job, receive, deadline - time.perf_counter())
        except asyncio.TimeoutError:
            raise timed_out(self.deadline_s) from None
        except ClientGone:
            raise ClientDisconnected() from None
        except ModelError as failed:
            if getattr(failed.cause, "error_code", None) == 503:   # bentoml.exceptions.ServiceUnavailable and kin
                raise unavailable(failed.cause) from None
            log.error("a %s request failed on the model: %s", route.task, describe(failed.cause),
                      exc_info=(type(failed.cause), failed.cause, failed.cause.__traceback__))
            raise internal_error() from None
        recorder = ResponseRecorder.of(200, answer.body)
        service_metrics().count_predictions(route.task, answer.labels, source_label(request.source, self.sources))
        await recorder.forward(send)
        return recorder

    async def run_app(self, scope, receive, recorder: ResponseRecorder, deadline: float) -> None:
        """The API, in a task of its own so that the deadline does not depend on how it handles cancellation."""
        task = asyncio.ensure_future(self.app(scope, receive, recorder))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.perf_counter()))
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its late answer is dropped
        raise timed_out(self.deadline_s)

    def count_predictions(self, route: Route, request, body: bytes) -> None:
        try:
            labels = route.labels_of(json.loads(body))
        except (ValueError, TypeError, KeyError):
            log.warning("could not read the predicted labels from a %s response", route.task)
            return
        service_metrics().count_predictions(route.task, labels, source_label(request.source, self.sources))
