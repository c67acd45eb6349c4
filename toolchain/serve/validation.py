"""Request checks shared by every inference route: JSON body, text lists, topic; clear 4xx errors.

Each check raises :class:`RequestRejected` with the HTTP status, the rejection reason used by the
``toolchain_rejected_requests_total`` metric and a message that names the offending field and value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class RequestRejected(Exception):
    status: int
    error: str          # short machine-readable code
    message: str        # what was wrong, naming the field and value, and what to do
    reason: str = "validation"
    field: str | None = None

    def body(self) -> dict:
        payload = {"error": self.error, "message": self.message}
        if self.field is not None:
            payload["field"] = self.field
        return payload


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_chars: int


def invalid(message: str, field: str | None = None) -> RequestRejected:
    return RequestRejected(422, "invalid_request", message, field=field)


def preview(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def decode_json_object(body: bytes) -> dict:
    """The body as a JSON object: 400 for non-UTF-8 or malformed JSON, 422 for another JSON type."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(400, "invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start}: "
                              f"{body[exc.start:exc.start + 1]!r}); send JSON encoded as UTF-8") from None
    if not text.strip():
        raise RequestRejected(400, "invalid_json", 'the body is empty; send a JSON object like {"texts": ["..."]}')
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RequestRejected(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f'the body must be a JSON object like {{"texts": ["..."]}}, got {type(data).__name__}')
    return data


def check_fields(data: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    for name in data:
        if name not in required + optional:
            raise invalid(f"unknown field {preview(name)}; fields: {', '.join(required + optional)}", field=name)
    for name in required:
        if name not in data:
            raise invalid(f"missing field {name!r}", field=name)


def check_texts(value: Any, limits: Limits, field: str = "texts") -> list[str]:
    """A non-empty list of at most ``max_items`` non-blank strings of at most ``max_chars`` characters."""
    if not isinstance(value, list):
        raise invalid(f"{field} must be a list of strings, got {type(value).__name__} {preview(value)}", field)
    if not value:
        raise invalid(f"{field} is empty; send at least one text", field)
    if len(value) > limits.max_items:
        raise invalid(f"{field} has {len(value)} items; at most {limits.max_items} per request "
                      "(TOOLCHAIN_MAX_BATCH_ITEMS); split the request", field)
    for i, text in enumerate(value):
        check_text(text, limits, f"{field}[{i}]")
    return value


def check_text(text: Any, limits: Limits, field: str) -> None:
    if not isinstance(text, str):
        raise invalid(f"{field} must be a string, got {type(text).__name__} {preview(text)}", field)
    if not text.strip():
        raise invalid(f"{field} is empty or whitespace only ({preview(text)})", field)
    if len(text) > limits.max_chars:
        raise invalid(f"{field} has {len(text)} characters; at most {limits.max_chars} "
                      "(TOOLCHAIN_MAX_TEXT_CHARS)", field)
    if "\ud800" <= max(text) and any("\ud800" <= ch <= "\udfff" for ch in text):
        raise invalid(f"{field} contains a lone surrogate (invalid Unicode)", field)


def check_topic(value: Any, field: str = "topic") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, got {type(value).__name__} {preview(value)}", field)
    if len(value) > 200:
        raise invalid(f"{field} has {len(value)} characters; at most 200", field)
    return value
