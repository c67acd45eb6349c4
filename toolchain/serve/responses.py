"""The ASGI plumbing admission control answers with: the refusals it sends (each with its status, error code,
message and metric reason), JSON responses, a body read under a cap, a response held to be read before it is
passed on, and the exception behind a response BentoML produced (its 5xx bodies are generic)."""
from __future__ import annotations

import contextvars
import json
import logging
from dataclasses import dataclass

from toolchain.core.privacy import clip
from toolchain.serve.settings import env_name
from toolchain.serve.validation import RequestRejected

JSON_HEADERS = [(b"content-type", b"application/json")]
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"   # where BentoML logs an API's exception


class ClientDisconnected(Exception):
    pass


def unauthorized() -> RequestRejected:
    return RequestRejected(401, "unauthorized", "missing or invalid API key; send 'Authorization: Bearer <key>' "
                           "or 'X-API-Key: <key>'", reason="auth")


def overloaded(limit: int) -> RequestRejected:
    return RequestRejected(503, "overloaded", f"the server is at its limit of {limit} requests in flight per "
                           "worker (TOOLCHAIN_MAX_CONCURRENCY); retry shortly", reason="overload")


def route_overloaded(path: str, limit: int, setting: str) -> RequestRejected:
    return RequestRejected(503, "overloaded", f"the server is at its limit of {limit} {path} requests in flight per "
                           f"worker ({env_name(setting)}); retry shortly (other routes are not affected)",
                           reason="overload")


def too_large(size: int | str, cap: int) -> RequestRejected:
    return RequestRejected(413, "payload_too_large", f"the body has {size} bytes; the cap is {cap} "
                           "(TOOLCHAIN_MAX_BODY_BYTES)", reason="size")


async def send_json(send, status: int, payload: dict, extra_headers: list | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_rejection(send, rejected: RequestRejected) -> None:
    extra = {401: [(b"www-authenticate", b"Bearer")], 413: [(b"connection", b"close")],
             408: [(b"connection", b"close")]}.get(rejected.status)
    if rejected.status in (503, 409):
        extra = [(b"retry-after", str(rejected.retry_after or 1).encode())]
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
    """Holds a (small, JSON) response so admission control can read it before passing it on."""

    def __init__(self):
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    @classmethod
    def of(cls, status: int, body: bytes) -> "ResponseRecorder":
        """A JSON response built here (the model queue's answer)."""
        recorder = cls()
        recorder.start = {"type": "http.response.start", "status": status,
                          "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]}
        recorder.chunks.append(body)
        return recorder

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def status(self) -> int:
        return self.start["status"] if self.start else 500

    @property
    def headers(self) -> list:
        return list(self.start.get("headers", [])) if self.start else []

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def forward(self, send, extra_headers: list | None = None) -> None:
        await send({**self.start, "headers": self.headers + (extra_headers or [])})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class StatusTracker:
    """Passes messages on to ``send`` and remembers the status of the response that went out."""

    def __init__(self, send):
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


@dataclass
class RequestNote:
    exception: BaseException | None = None


CURRENT_REQUEST: contextvars.ContextVar[RequestNote] = contextvars.ContextVar("toolchain_request")


class ExceptionNotes(logging.Handler):
    """Keeps the exception BentoML logs for a request (its 5xx bodies are generic) on the request's note."""

    def emit(self, record: logging.LogRecord) -> None:
        note = CURRENT_REQUEST.get(None)
        if note is not None and record.exc_info and record.exc_info[1] is not None:
            note.exception = record.exc_info[1]


def watch_bentoml_errors() -> None:
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(h, ExceptionNotes) for h in logger.handlers):
        logger.addHandler(ExceptionNotes(logging.ERROR))


def describe(exception: BaseException | None) -> str:
    if exception is None:
        return "no exception recorded"
    return f"{type(exception).__name__}: {clip(str(exception), 300)}"


def unavailable(exception: BaseException | None) -> RequestRejected:
    """A 503 from the model or the API (say, a model being reloaded), its cause named."""
    cause = clip(str(exception), 300) if exception is not None else "no cause was recorded (see the server log)"
    return RequestRejected(503, "unavailable", f"the service is unavailable: {cause}; retry shortly",
                           reason="unavailable")


def timed_out(deadline_s: float) -> RequestRejected:
    return RequestRejected(504, "timeout", f"no answer within {deadline_s:g} s (TOOLCHAIN_TIMEOUT_S): the model is too "
                           "slow or overloaded; retry later or send fewer texts", reason="timeout")


def internal_error() -> RequestRejected:
    return RequestRejected(500, "internal_error", "the server failed on this request; the error is in the server log",
                           reason="error")
