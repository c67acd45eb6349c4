"""The service's `POST /classify` from the feeder's side: API key, idempotency key, retries, clear errors.

What an answer means to the feeder:

- **200 with one prediction per text**: the request was counted; the answer is returned (each
  prediction's ``label`` and ``score``, and ``topic`` ``{"label", "score"}`` when the model has a topic head).
- **Transient**, retried with the same ``Idempotency-Key`` and exponential backoff (full jitter;
  ``Retry-After`` honoured, in seconds or as an HTTP date, up to ``--backoff-max``): connection errors
  and timeouts, 408, 409 (the same key still being processed), 425, 429, every 5xx, and a 200 whose
  body is not the expected JSON list (a proxy's page, a cut answer). Once ``give_up_after_s`` passed
  since the first attempt (or ``max_attempts`` were made), :class:`GaveUp`: the feeder stops with its
  position kept, and nothing unacknowledged is committed.
- **Refused content** (:class:`Rejected`): 413, and 422 (validation; its ``field`` ``texts[i]`` names
  the item at fault). Nothing of such a request was counted; the feeder decides what to resend.
- **Anything else** (401/403: the key; 404: the address; 3xx: a redirect; any other 4xx) is a
  :class:`MonitorError`: the feeder stops with its position kept; resending cannot help.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETRY_STATUSES = frozenset({408, 409, 425, 429})      # and every 5xx
NOT_PROCESSED = frozenset({429, 503})                  # refused before inference: cannot have been counted
REFUSED_CONTENT = frozenset({413, 422})


class MonitorError(Exception):
    """A problem the user must fix (bad URL, wrong key, missing source); the feeder stops."""


class StopRequested(Exception):
    """The feeder was asked to stop while waiting to retry."""


class GaveUp(Exception):
    """Retries ran out (``--give-up-after`` or ``--max-retries``); the position is kept."""


@dataclass
class Rejected(Exception):
    """The service refused the request's content (413, 422): nothing of it was counted."""
    status: int
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    max_attempts: int = 0          # 0: no limit on attempts
    give_up_after_s: float = 600.0  # stop retrying once this long has passed since the first attempt (0: never)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter over an exponential cap; a server's Retry-After is a floor (up to max_s)."""
        cap = min(self.max_s, self.initial_s * (2 ** (attempt - 1)))
        return max(rng.uniform(0, cap), min(retry_after or 0.0, self.max_s))


class ServiceClient:
    def __init__(self, url: str, api_key: str | None, timeout_s: float, backoff: Backoff,
                 stop: threading.Event, warn, seed: int | None = None):
        import httpx

        self.url = url.rstrip("/") + "/classify"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=False)
        self.backoff, self.stop, self.warn = backoff, stop, warn
        self.rng = random.Random(seed)
        self.retries = 0
        self.replayed = 0         # answers the service replayed for a key it had already answered
        self.reached = False      # whether an attempt of the current request may have been processed

    def classify(self, texts: list[str], source: str | None, key: str | None = None) -> list[dict]:
        """Predictions for ``texts`` (one dict with ``label`` and ``score`` per text, in order), sent with
        the request's ``source`` (the items' ticker, desk or publisher: a metric label at the service).

        ``key`` goes in the Idempotency-Key header of every attempt: a service that honours it counts
        the request once however often it is sent."""
        body = encode({"texts": texts} if source is None else {"texts": texts, "source": source})
        headers = {"content-type": "application/json", **({IDEMPOTENCY_HEADER: key} if key else {})}
        self.reached = False
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            outcome = self._attempt(body, headers, len(texts))
            if isinstance(outcome, list):
                return outcome
            self._wait(attempt, outcome, len(texts), time.monotonic() - started)

    def _attempt(self, body: bytes, headers: dict, count: int):
        """The predictions, or (why, retry_after) for a transient failure."""
        import httpx

        try:
            response = self.http.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            # A refused connection never reached the service; a timeout or a dropped answer may have.
            self.reached |= not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            return f"{type(exc).__name__}: {exc}", None
        status = response.status_code
        if status in RETRY_STATUSES or status >= 500:
            self.reached |= status not in NOT_PROCESSED
            return f"HTTP {status} {_message(response)}", _retry_after(response)
        self._refuse(response)
        self.replayed += response.headers.get(REPLAYED_HEADER, "").lower() == "true"
        return self._predictions(response, count)

    def _refuse(self, response) -> None:
        """Raise for an answer that is neither a success nor transient."""
        status = response.status_code
        if 300 <= status < 400:
            raise MonitorError(f"{self.url} redirects (HTTP {status}) to {response.headers.get('location')!r}; "
                               "give that address as --url (the API key is never sent to a redirect)")
        if status in (401, 403):
            raise MonitorError(f"the service refused the API key (HTTP {status}: {_message(response)}); "
                               "set TOOLCHAIN_API_KEY or --api-key-file")
        if status == 404:
            raise MonitorError(f"{self.url} answered 404: is --url the service's base address?")
        if status == 422 and _field(response) == "source":
            raise MonitorError(f"{self.url} refused the request's 'source' field ({_message(response)}); if it "
                               "calls the field unknown, the service predates it (it took it as 'topic'): upgrade "
                               "the service; nothing of the batch was committed")
        if status in REFUSED_CONTENT:
            raise Rejected(status, _message(response), _field(response))
        if status != 200:
            raise MonitorError(f"{self.url} answered HTTP {status} ({_message(response)}), which the feeder does "
                               "not know how to handle; nothing of the batch was committed")

    def _predictions(self, response, count: int):
        """A 200's predictions, or (why, None) when its body is not one prediction per text."""
        self.reached = True
        try:
            predictions = response.json()
        except ValueError:
            return f"HTTP 200 whose body is not JSON ({response.text[:80]!r})", None
        if not (isinstance(predictions, list) and len(predictions) == count
                and all(isinstance(p, dict) and isinstance(p.get("label"), str) for p in predictions)):
            return f"HTTP 200 with {str(predictions)[:80]!r}, expected {count} predictions", None
        return predictions

    def _wait(self, attempt: int, outcome: tuple, items: int, elapsed: float) -> None:
        why, retry_after = outcome
        limit = self.backoff.give_up_after_s
        if (self.backoff.max_attempts and attempt >= self.backoff.max_attempts) or (limit and elapsed >= limit):
            raise GaveUp(f"{self.url}: {attempt} attempts over {elapsed:.1f}s failed, the last with {why}")
        delay = self.backoff.delay(attempt, retry_after, self.rng)
        if limit:
            delay = min(delay, limit - elapsed)
        self.retries += 1
        self.warn(f"{self.url}: {why}; retrying {items} items in {delay:.1f}s (attempt {attempt + 1})")
        if self.stop.wait(delay):
            raise StopRequested()

    def close(self) -> None:
        self.http.close()


def encode(body: dict) -> bytes:
    """The request body, byte for byte the same for the same request (a key's resend must match it)."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def _message(response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("message") or data.get("error") or data)[:300] if isinstance(data, dict) else str(data)[:300]


def _field(response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get("field") if isinstance(data, dict) else None


def _retry_after(response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
