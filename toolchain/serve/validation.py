"""Request checks shared by every inference route: JSON body, text lists, source; clear 4xx errors.

Each check raises :class:`RequestRejected` with the HTTP status, the rejection reason used by the
``toolchain_rejected_requests_total`` metric and a message that names the offending field and value.
A message quotes at most the start of a value (:func:`preview`); :meth:`RequestRejected.masked` is what
admission control sends when personal data is masked (the default).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from toolchain.core.privacy import clip, mask


@dataclass
class RequestRejected(Exception):
    status: int
    error: str          # short machine-readable code
    message: str        # what was wrong, naming the field and value, and what to do
    reason: str = "validation"
    field: str | None = None
    retry_after: int | None = None   # seconds, for a 503 (default 1) or a 409

    def masked(self) -> "RequestRejected":
        """The same rejection with personal data in its message masked (toolchain.core.privacy)."""
        return replace(self, message=mask(self.message))

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
    """The start of ``value``'s repr for an error message, never cut inside an e-mail address, card number or
    other span that :func:`toolchain.core.privacy.mask` replaces: admission control masks the whole message
    (``TOOLCHAIN_MASK_PII``), and a cut one would not be recognised."""
    text = repr(value)
    return text if len(text) <= width else clip(text, width) + "..."


MAX_INT_DIGITS = 100   # JSON numbers are never needed here; a long one is refused before int() sees it
BOM = "\ufeff"


class MalformedJson(ValueError):
    """Raised from inside the JSON parser's hooks: the body is not strict JSON."""


def strict_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise MalformedJson(f"a number with {len(digits.lstrip('-'))} digits; at most {MAX_INT_DIGITS}")
    return int(digits)


def no_constant(name: str):
    raise MalformedJson(f"{name} is not JSON (JSON numbers are finite)")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise MalformedJson(f"duplicate key {preview(duplicate)} in an object")
    return data


def parse_json(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys, no numbers longer than MAX_INT_DIGITS digits."""
    try:
        return json.loads(text, parse_int=strict_int, parse_constant=no_constant, object_pairs_hook=unique_keys)
    except MalformedJson as exc:
        raise RequestRejected(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestRejected(400, "invalid_json", "the body is not valid JSON for this API: arrays or objects "
                              "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and any other parse failure (never a 500)
        raise RequestRejected(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:200]}") from None


def without_bom(body: bytes) -> bytes:
    """The body without a leading UTF-8 byte-order mark (RFC 8259 section 8.1 lets a parser ignore it);
    admission control hands this to BentoML too, whose own JSON parsing would refuse the mark."""
    return body[3:] if body.startswith(BOM.encode("utf-8")) else body


def decode_json_object(body: bytes) -> dict:
    """The body as a JSON object: 400 for non-UTF-8 or malformed JSON, 422 for another JSON type.

    A leading UTF-8 byte-order mark is ignored (RFC 8259 section 8.1 allows it).
    """
    body = without_bom(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(400, "invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start}: "
                              f"{body[exc.start:exc.start + 1]!r}); send JSON encoded as UTF-8") from None
    if not text.strip():
        raise RequestRejected(400, "invalid_json", 'the body is empty; send a JSON object like {"texts": ["..."]}')
    data = parse_json(text)
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


SOURCE_FIELDS = ("source", "topic")  # "topic" is the field's former name, still accepted


def check_source(data: dict) -> str | None:
    """The caller's ``source`` (a ticker, desk or publisher; a metric label only), or its former name ``topic``."""
    if "source" in data and "topic" in data:
        raise invalid("send the caller's label as 'source' only ('topic' is its former name)", "topic")
    field = "source" if "source" in data else "topic"
    return check_source_value(data.get(field), field)


def check_source_value(value: Any, field: str = "source") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, got {type(value).__name__} {preview(value)}", field)
    if len(value) > 200:
        raise invalid(f"{field} has {len(value)} characters; at most 200", field)
    return value
