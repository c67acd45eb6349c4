"""The request gate: ASGI middleware in front of every inference route.

In order, for each inference request: API key (401), bounded concurrency per worker (fast 503),
media type (415), body cap (413, without reading an over-long body), the route's own validation
(400/422). Only then does the request reach BentoML's API and its adaptive batching. The gate also
counts rejections by reason, requests by status, and predictions by label and topic. Health probes
pass untouched; ``/metrics`` needs a key only when ``TOOLCHAIN_METRICS_AUTH`` is on.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolchain.serve import auth
from toolchain.serve.metrics import service_metrics, topic_label
from toolchain.serve.settings import ServeSettings, load_settings
from toolchain.serve.validation import Limits, RequestRejected

log = logging.getLogger("toolchain.serve")
METRICS_PATH = "/metrics"
JSON_TYPES = ("application/json", "text/json")


@dataclass(frozen=True)
class Route:
    """What the gate needs to know about one inference route."""
    task: str
    parse: Callable[[bytes, Limits], Any]              # body -> request with .topic; raises RequestRejected
    labels_of: Callable[[Any], list[str]]              # response JSON -> predicted labels


class ClientDisconnected(Exception):
    pass


def unauthorized() -> RequestRejected:
    return RequestRejected(401, "unauthorized", "missing or invalid API key; send 'Authorization: Bearer <key>' "
                           "or 'X-API-Key: <key>'", reason="auth")


def overloaded(limit: int) -> RequestRejected:
    return RequestRejected(503, "overloaded", f"the server is at its limit of {limit} requests in flight per "
                           "worker (TOOLCHAIN_MAX_CONCURRENCY); retry shortly", reason="overload")


def too_large(size: int | str, cap: int) -> RequestRejected:
    return RequestRejected(413, "payload_too_large", f"the body has {size} bytes; the cap is {cap} "
                           "(TOOLCHAIN_MAX_BODY_BYTES)", reason="size")


async def send_json(send, status: int, payload: dict, extra_headers: list | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_rejection(send, rejected: RequestRejected) -> None:
    extra = {401: [(b"www-authenticate", b"Bearer")], 503: [(b"retry-after", b"1")],
             413: [(b"connection", b"close")]}.get(rejected.status)
    await send_json(send, rejected.status, rejected.body(), extra)


async def read_body(receive, cap: int) -> bytes:
    """The whole body, refusing (413) as soon as it grows past ``cap`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise too_large(f"more than {cap}", cap)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that hands the already-read body to the app once, then waits as the original does."""
    delivered = False

    async def receive_again():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


class ResponseRecorder:
    """Holds a (small, JSON) response so the gate can read it before passing it on."""

    def __init__(self):
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def status(self) -> int:
        return self.start["status"] if self.start else 500

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def forward(self, send) -> None:
        await send(self.start)
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class RequestGate:
    """ASGI middleware; BentoML adds it with ``Service.add_asgi_middleware(RequestGate, routes=...)``."""

    def __init__(self, app, routes: dict[str, Route], settings: ServeSettings | None = None,
                 served_task: Callable[[], str | None] = lambda: None):
        self.app = app
        self.routes = routes
        self.served_task = served_task
        self.settings = settings or load_settings()
        self.keys = auth.load_keys() if self.settings.auth or self.settings.metrics_auth else auth.KeyRing([])
        self.limits = Limits(self.settings.max_batch_items, self.settings.max_text_chars)
        self.topics = self.settings.topic_allow_list
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == METRICS_PATH and self.settings.metrics_auth and not self.authorized(scope):
            service_metrics().reject("auth")
            return await send_rejection(send, unauthorized())
        route = self.routes.get(path)
        if route is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = await self.handle(route, scope, receive, send)
        if status:
            service_metrics().observe_request(path, status, time.perf_counter() - started)

    def authorized(self, scope) -> bool:
        return self.keys.check(auth.presented_key(dict(scope["headers"])))

    async def handle(self, route: Route, scope, receive, send) -> int | None:
        """Gate one inference request; returns the status sent (None if the client went away)."""
        try:
            self.admit(scope)
            self.check_task(route)
        except RequestRejected as rejected:
            return await self.refuse(send, rejected)
        self.in_flight += 1
        try:
            body = await read_body(receive, self.settings.max_body_bytes)
            request = route.parse(body, self.limits)
            return await self.forward(route, request, scope, replay(body, receive), send)
        except RequestRejected as rejected:
            return await self.refuse(send, rejected)
        except ClientDisconnected:
            return None
        finally:
            self.in_flight -= 1

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

    def check_task(self, route: Route) -> None:
        """404 on the route of a task this deployment does not serve (once the model has loaded)."""
        served = self.served_task()
        if served is None or served == route.task:
            return
        others = [path for path, other in self.routes.items() if other.task == served]
        raise RequestRejected(404, "wrong_task", f"this deployment serves a {served} model; it has no "
                              f"{route.task} route" + (f": use POST {others[0]}" if others else ""))

    async def refuse(self, send, rejected: RequestRejected) -> int:
        service_metrics().reject(rejected.reason)
        await send_rejection(send, rejected)
        return rejected.status

    async def forward(self, route: Route, request, scope, receive, send) -> int:
        """Run the API; count its predictions; turn a batching-queue 503 into a clear overload error."""
        recorder = ResponseRecorder()
        await self.app(scope, receive, recorder)
        status = recorder.status
        if status == 200:
            self.count_predictions(route, request, recorder.body)
        elif status == 503:
            return await self.refuse(send, RequestRejected(
                503, "overloaded", "the batching queue is full (a request would wait longer than "
                "TOOLCHAIN_MAX_LATENCY_MS); retry shortly", reason="overload"))
        elif status >= 500:
            log.error("inference route %s answered %d: %s", scope["path"], status, recorder.body[:500])
        await recorder.forward(send)
        return status

    def count_predictions(self, route: Route, request, body: bytes) -> None:
        try:
            labels = route.labels_of(json.loads(body))
        except (ValueError, TypeError, KeyError):
            log.warning("could not read the predicted labels from a %s response", route.task)
            return
        service_metrics().count_predictions(route.task, labels, topic_label(request.topic, self.topics))
