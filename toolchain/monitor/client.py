"""The service's `POST /classify` from the feeder's side: API key, retries with backoff, clear errors.

Retried with exponential backoff (full jitter, ``Retry-After`` honoured): 429, 502, 503, 504 and
connection errors or timeouts. A 401/403 stops the feeder (the key is wrong). Other 4xx answers
refuse the request's content: the caller splits the batch to find the item at fault.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass

RETRY_STATUSES = (429, 502, 503, 504)


class MonitorError(Exception):
    """A problem the user must fix (bad URL, wrong key, missing source); the feeder stops."""


class StopRequested(Exception):
    """The feeder was asked to stop while waiting to retry."""


class GaveUp(Exception):
    """Every retry failed (only with a retry limit)."""


@dataclass
class Rejected(Exception):
    """The service refused the request's content (4xx other than auth): not worth retrying as is."""
    status: int
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    max_attempts: int = 0          # 0: retry until stopped

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter over an exponential cap; a server's Retry-After is a floor."""
        cap = min(self.max_s, self.initial_s * (2 ** (attempt - 1)))
        return max(rng.uniform(0, cap), min(retry_after or 0.0, self.max_s))


class ServiceClient:
    def __init__(self, url: str, api_key: str | None, timeout_s: float, backoff: Backoff,
                 stop: threading.Event, warn, seed: int | None = None):
        import httpx

        self.url = url.rstrip("/") + "/classify"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout_s)
        self.backoff, self.stop, self.warn = backoff, stop, warn
        self.rng = random.Random(seed)
        self.retries = 0
        self.reached = False      # whether an attempt of the current request may have been processed

    def classify(self, texts: list[str], topic: str | None) -> list[dict]:
        """Predictions for ``texts`` (one dict with ``label`` and ``score`` per text, in order)."""
        body = {"texts": texts} if topic is None else {"texts": texts, "topic": topic}
        self.reached = False
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(body)
            if isinstance(outcome, list):
                return outcome
            self._wait(attempt, outcome, len(texts))

    def _attempt(self, body: dict):
        """The predictions, or (why, retry_after) for a retryable failure."""
        import httpx

        try:
            response = self.http.post(self.url, json=body)
        except httpx.TransportError as exc:
            # A refused connection never reached the service; a timeout or a dropped answer may have.
            self.reached |= not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            return f"{type(exc).__name__}: {exc}", None
        if response.status_code in RETRY_STATUSES:
            # 429/503 are refusals before inference; a proxy's 502/504 may hide a processed request.
            self.reached |= response.status_code in (502, 504)
            return f"HTTP {response.status_code} {_message(response)}", _retry_after(response)
        return self._result(response, len(body["texts"]))

    def _result(self, response, count: int) -> list[dict]:
        if response.status_code in (401, 403):
            raise MonitorError(f"the service refused the API key (HTTP {response.status_code}: {_message(response)}); "
                               "set TOOLCHAIN_API_KEY or --api-key-file")
        if response.status_code == 404:
            raise MonitorError(f"{self.url} answered 404: is --url the service's base address?")
        if response.status_code >= 400:
            raise Rejected(response.status_code, _message(response), _field(response))
        predictions = response.json()
        if not isinstance(predictions, list) or len(predictions) != count:
            raise MonitorError(f"{self.url} answered {str(predictions)[:80]!r}, expected {count} predictions")
        return predictions

    def _wait(self, attempt: int, outcome: tuple, items: int) -> None:
        why, retry_after = outcome
        if self.backoff.max_attempts and attempt >= self.backoff.max_attempts:
            raise GaveUp(f"{self.url}: {attempt} attempts failed, the last with {why}")
        delay = self.backoff.delay(attempt, retry_after, self.rng)
        self.retries += 1
        self.warn(f"{self.url}: {why}; retrying {items} items in {delay:.1f}s (attempt {attempt + 1})")
        if self.stop.wait(delay):
            raise StopRequested()

    def close(self) -> None:
        self.http.close()


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
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

