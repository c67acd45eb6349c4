"""Service settings: typed, with defaults and help, each overridable by an environment variable.

A Kubernetes ConfigMap sets these variables; locally, export them before ``toolchain serve``.
Every setting ``name`` is read from ``TOOLCHAIN_<NAME>`` (upper case); a bad value stops the
server at start-up with a message naming the variable.

| environment variable          | default        | meaning |
|-------------------------------|----------------|---------|
| TOOLCHAIN_EXPORT_DIR          | (Bento model)  | export dir to serve; overrides the model packed in the Bento |
| TOOLCHAIN_VARIANT             | (manifest)     | ONNX variant to load (fp32, optimized, int8, ...) |
| TOOLCHAIN_TOPIC_EXPORT_DIR    | (Bento topic model) | export dir of a single-task topic model served beside the main one: /classify adds its topic per text; overrides the topic model packed in the Bento |
| TOOLCHAIN_TOPIC_VARIANT       | (manifest)     | ONNX variant of the topic model to load |
| TOOLCHAIN_TOPIC_CALLS         | auto           | how the two models run per batch: auto (concurrently where the worker layout leaves a CPU for it, else one after the other), concurrent, sequential |
| TOOLCHAIN_MODEL_VERSION       | (Bento tag)    | ``version`` label of toolchain_model_info; default: the Bento model's tag version, else the run config hash (8 characters) |
| TOOLCHAIN_PROVIDER            | auto           | auto (CUDA when a GPU and onnxruntime-gpu are present), cpu, cuda |
| TOOLCHAIN_THREADS             | 0              | ONNX Runtime intra-op threads per worker (0 = auto, see toolchain.serve.layout) |
| TOOLCHAIN_SPIN                | false          | let idle ONNX Runtime threads spin: a little lower latency on dedicated cores, burnt CPU on shared ones |
| TOOLCHAIN_MODEL_CALLS         | auto           | auto: one text per model call for dynamically quantized variants (exact, batch-independent scores), texts grouped by length otherwise; per-text; batched |
| TOOLCHAIN_WORKERS             | 0              | server worker processes (0 = auto: one single-thread worker per CPU for a small model, fewer where memory or the model's measured latency says so) |
| TOOLCHAIN_BATCHING            | true           | merge requests queued while the model is busy into shared model calls, where that merges work: a batch-invariant variant (a per-text one, dynamic int8, is never batched); no batching wait either way |
| TOOLCHAIN_MAX_BATCH_SIZE      | 32             | most texts in one model call, and in one round of merged requests |
| TOOLCHAIN_MAX_BATCH_TOKENS    | 4096           | most padded tokens (texts x longest text) in one model call of a batch-invariant variant: the token budget |
| TOOLCHAIN_MAX_QUEUE_S         | 3              | seconds of model work a worker may have queued; a request arriving over it gets a fast 503 with Retry-After |
| TOOLCHAIN_MAX_LATENCY_MS      | (none)         | former bound of the batching queue; when set and TOOLCHAIN_MAX_QUEUE_S is not, the model queue's bound in ms |
| TOOLCHAIN_TEXT_COST_MS        | 0              | model ms per text for the queue's accounting (0: the export's measured figures in report.json, else timed at warm-up) |
| TOOLCHAIN_MAX_BATCH_ITEMS     | 64             | most texts in one request (more: 422) |
| TOOLCHAIN_MAX_TEXT_CHARS      | 5000           | most characters in one text (more: 422); within it, long texts are truncated to the model's max length |
| TOOLCHAIN_MAX_BODY_BYTES      | 1048576        | request body cap (more: 413) |
| TOOLCHAIN_MAX_CONCURRENCY     | 128            | requests in flight per worker; more get a fast 503 |
| TOOLCHAIN_EXPLAIN_CONCURRENCY | 1              | POST /explain requests in flight per worker; more get a fast 503 (other routes unaffected) |
| TOOLCHAIN_TIMEOUT_S           | 30             | whole-request timeout (504) |
| TOOLCHAIN_SOURCES             | (empty)        | comma-separated allow-list of the request's ``source`` (metric label); others count as ``other`` |
| TOOLCHAIN_TOPICS              | (empty)        | former name of TOOLCHAIN_SOURCES, still read (a deprecation log line) |
| TOOLCHAIN_AUTH                | true           | API-key auth on inference routes; false logs a warning |
| TOOLCHAIN_METRICS_AUTH        | false          | require an API key on /metrics too |
| TOOLCHAIN_ACCESS_LOG          | false          | BentoML's access log line for /classify and /ner requests (every response is counted in toolchain_requests_total either way) |
| TOOLCHAIN_TRACING             | false          | BentoML's OpenTelemetry middleware on /classify and /ner (spans are only exported where BentoML's tracing is configured) |
| TOOLCHAIN_MASK_PII            | true           | mask e-mail addresses, phone, card, IBAN and account numbers in logs and error messages (toolchain.core.privacy); the model sees texts as sent |
| TOOLCHAIN_API_KEYS_FILE       | (none)         | file with one key, or one ``sha256:<hex>`` hash, per line (a mounted Secret) |
| TOOLCHAIN_API_KEYS            | (none)         | the same, comma-separated, in the environment |

The two key variables are secrets and are read by :mod:`toolchain.serve.auth`, not kept here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields

from toolchain.core.config import ConfigError, from_dict, opt
from toolchain.core.hardware import available_cpus

ENV_PREFIX = "TOOLCHAIN_"
DEFAULT_QUEUE_S = 3.0   # the model queue's bound (seconds of model work per worker) unless set
RENAMED_SETTINGS = {"topics": "sources"}   # former setting -> setting: still read, with a deprecation log line
_warned: set[str] = set()


@dataclass(frozen=True)
class ServeSettings:
    export_dir: str | None = opt(None, "export dir to serve (overrides the model packed in the Bento)")
    variant: str | None = opt(None, "ONNX variant to load; default: the Bento's, else the manifest's serve_variant")
    model_version: str | None = opt(None, "version label of toolchain_model_info; default: the Bento model's tag "
                                          "version, else the export's run config hash (8 characters)")
    topic_export_dir: str | None = opt(None, "export dir of a single-task topic model served beside the main one "
                                             "(overrides the topic model packed in the Bento)")
    topic_variant: str | None = opt(None, "ONNX variant of the topic model; default: the Bento's, else its manifest's "
                                          "serve_variant")
    topic_calls: str = opt("auto", "with a topic model, how the two models run per batch: auto (concurrently when "
                                   "the worker layout leaves a CPU for it), concurrent or sequential",
                           choices=("auto", "concurrent", "sequential"))
    provider: str = opt("auto", "ONNX Runtime execution provider", choices=("auto", "cpu", "cuda"))
    threads: int = opt(0, "ONNX Runtime intra-op threads per worker (0 = auto from the export's measured "
                          "thread scaling)", min=0, max=256)
    spin: bool = opt(False, "let idle ONNX Runtime threads spin (dedicated cores only; burns CPU otherwise)")
    model_calls: str = opt("auto", "how a batch runs: auto (per-text for dynamic int8, else length-grouped), "
                                   "per-text or batched", choices=("auto", "per-text", "batched"))
    workers: int = opt(0, "server worker processes (0 = auto from the CPUs, memory and model)", min=0, max=256)
    batching: bool = opt(True, "merge requests queued while the model is busy into shared model calls, where that "
                               "merges work (a batch-invariant variant; a per-text variant is never batched)")
    max_batch_size: int = opt(32, "most texts in one model call, and in one round of merged requests", min=2, max=4096)
    max_batch_tokens: int = opt(4096, "most padded tokens (texts x longest text) in one model call of a "
                                      "batch-invariant variant", min=16, max=1 << 24)
    max_queue_s: float | None = opt(None, f"seconds of model work a worker may have queued before new requests get "
                                          f"a fast 503 (default {DEFAULT_QUEUE_S:g}; TOOLCHAIN_MAX_LATENCY_MS when "
                                          "only that is set)", min=0.001, max=3600)
    max_latency_ms: int | None = opt(None, "former bound of the batching queue: when set and TOOLCHAIN_MAX_QUEUE_S "
                                           "is not, the model queue's bound in milliseconds", min=1, max=600_000)
    text_cost_ms: float = opt(0.0, "model milliseconds per text for the model queue's accounting (0: the export's "
                                   "measured figures, else timed at warm-up)", min=0, max=600_000)
    max_batch_items: int = opt(64, "most texts in one request", min=1, max=100_000)
    max_text_chars: int = opt(5000, "most characters in one text", min=1, max=10_000_000)
    max_body_bytes: int = opt(1_048_576, "request body cap in bytes", min=256, max=1 << 30)
    max_concurrency: int = opt(128, "requests in flight per worker before fast 503s", min=1, max=100_000)
    explain_concurrency: int = opt(1, "POST /explain requests in flight per worker before fast 503s (one model row "
                                      "per word of each text; other routes keep their own limit)", min=1, max=10_000)
    timeout_s: float = opt(30.0, "whole-request timeout in seconds", min=0.1, max=3600)
    sources: str = opt("", "comma-separated allow-list of the request's `source` for the metric label")
    topics: str = opt("", "deprecated former name of TOOLCHAIN_SOURCES (still read, with a log line; both lists "
                          "count)")
    access_log: bool = opt(False, "BentoML's access log line for /classify and /ner requests")
    tracing: bool = opt(False, "BentoML's OpenTelemetry middleware on /classify and /ner")
    auth: bool = opt(True, "API-key auth on inference routes")
    metrics_auth: bool = opt(False, "require an API key on /metrics")
    mask_pii: bool = opt(True, "mask e-mail addresses, phone, card, IBAN and account numbers in logs and error "
                               "messages (the model sees texts as sent)")

    @property
    def queue_bound_s(self) -> float:
        """The model queue's bound: TOOLCHAIN_MAX_QUEUE_S, else the former TOOLCHAIN_MAX_LATENCY_MS, else 3 s."""
        if self.max_queue_s is not None:
            return self.max_queue_s
        if self.max_latency_ms is not None:
            return self.max_latency_ms / 1000.0
        return DEFAULT_QUEUE_S

    @property
    def source_allow_list(self) -> frozenset[str]:
        return frozenset(t.strip() for t in f"{self.sources},{self.topics}".split(",") if t.strip())

    def layout(self, model_bytes: int = 0, measured: dict | None = None, gpu: bool = False, models: int = 1):
        """Workers x threads for this machine (toolchain.serve.layout), these settings overriding; ``models`` is
        2 with a topic model (``model_bytes`` then the two models' bytes together)."""
        from toolchain.serve.layout import choose_layout, memory_limit_bytes

        return choose_layout(available_cpus(), memory_limit_bytes(), model_bytes, measured, self.workers,
                             self.threads, gpu, models, self.topic_calls)


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def load_settings(environ: dict[str, str] | None = None) -> ServeSettings:
    """Defaults overridden by ``TOOLCHAIN_*`` variables; a bad value names its variable."""
    environ = os.environ if environ is None else environ
    raw = {f.name: environ[env_name(f.name)] for f in fields(ServeSettings) if env_name(f.name) in environ}
    for old, new in RENAMED_SETTINGS.items():
        if old in raw and old not in _warned:
            _warned.add(old)
            logging.getLogger("toolchain.serve").warning("%s is deprecated and goes in the next release; use %s",
                                                         env_name(old), env_name(new))
    try:
        return from_dict(ServeSettings, raw)
    except ConfigError as exc:
        raise ConfigError(f"service settings: {exc} (environment variable {_variable_in(str(exc))})") from None


def _variable_in(message: str) -> str:
    key = message.split(":", 1)[0].strip()
    return env_name(key) if key in {f.name for f in fields(ServeSettings)} else "TOOLCHAIN_*"


def settings_table() -> list[tuple[str, object, str]]:
    """(variable, default, help) for every setting: printed by `toolchain serve --settings`."""
    default = ServeSettings()
    return [(env_name(f.name), getattr(default, f.name), f.metadata["help"]) for f in fields(ServeSettings)]
