"""The model queue: one thread per worker runs the model for every request, in arrival order, with a bound
on the work waiting for it expressed in seconds of model time.

Admission control (:mod:`toolchain.serve.admission`) hands each admitted ``/classify`` or ``/ner`` request here as
a job (its texts) and awaits the answer; the event loop never runs the model, so probes, ``/metrics`` and
refusals are answered while the model works.

**Batching only where it merges work.** A job starts as soon as the model is free: there is no batching wait.
For a batch-invariant variant (fp32, optimized, static int8: texts of similar length share a padded model call
and get bit-identical logits) the requests that queued while the model was busy are taken together, up to
``max_batch_size`` texts, and the runtime groups their texts into length-bucketed calls of at most
``max_batch_size`` texts and ``max_batch_tokens`` padded tokens (the token budget). A per-text variant (dynamic
int8: one model call per text, since its scores depend on the other rows of a call) gains nothing from
company, so its requests are never merged: each runs alone, in order.

**Bounded by queued work, not by requests.** Each job is costed in seconds of model time from the served
variant's measured speed (:class:`TextCost`: the export's ``report.json``, batch-1 latency and 32-text rate on
the worker's thread count, or ``TOOLCHAIN_TEXT_COST_MS``). A request is queued while the work already queued in
this worker (waiting jobs plus what is left of the running one) is under the bound ``TOOLCHAIN_MAX_QUEUE_S``,
whatever its size up to the item limit, so a bulk caller is served; above it the request is refused at once
(503 with ``Retry-After`` the seconds until the queue is back under the bound). A job whose client went away or
whose deadline passed before the model took it is dropped from the queue and its cost with it.

A job that fails in a merged round is run again alone, so one bad request fails only itself.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.serve.validation import RequestRejected

log = logging.getLogger("toolchain.serve")


# --------------------------------------------------------------------------- what a job costs

@dataclass(frozen=True)
class TextCost:
    """Seconds of model time for a request of ``n`` texts on this worker's model(s).

    ``b1_s``: one text alone (a per-text variant pays it for every text); ``batched_text_s``: one text of a full
    length-grouped call (a batch-invariant variant's cost per text in bulk), ``None`` for a per-text variant.
    """
    b1_s: float
    batched_text_s: float | None
    source: str

    def seconds(self, texts: int) -> float:
        if self.batched_text_s is None or texts <= 1:
            return texts * self.b1_s
        return max(self.b1_s, texts * self.batched_text_s)

    def plus(self, other: "TextCost") -> "TextCost":
        """Two models run on every text (a topic model beside the main one): their costs add up."""
        batched = (None if self.batched_text_s is None or other.batched_text_s is None
                   else self.batched_text_s + other.batched_text_s)
        return TextCost(self.b1_s + other.b1_s, batched, f"{self.source}; topic model: {other.source}")


def measured_cost(report: dict, variant: str, threads: int, per_text: bool) -> TextCost | None:
    """The served variant's cost from an export's ``report.json``: the thread-scaling figures (``layout``, on
    this worker's thread count or the nearest below) for the serve variant, else the variant's one-thread
    figures of the ranking (``selection.served``); None when the export measured neither."""
    layout = report.get("layout") or {}
    by_threads = layout.get("by_threads") or {} if layout.get("variant") == variant else {}
    counts = sorted(int(t) for t in by_threads if str(t).isdigit() and int(t) <= max(threads, 1))
    if counts:
        figures = by_threads[str(counts[-1])]
        b1_ms, rate = figures.get("b1_ms"), figures.get("b32_texts_per_s")
        where = f"report.json layout, {counts[-1]} thread(s)"
    else:
        served = ((report.get("selection") or {}).get("served") or {}).get(variant) or {}
        b1_ms = (served.get("1") or {}).get("median_ms_per_request")
        rate = (served.get("32") or {}).get("texts_per_s")
        where = "report.json selection, 1 thread"
    if not b1_ms or b1_ms <= 0:
        return None
    batched = None if per_text or not rate or rate <= 0 else 1.0 / rate
    described = f"{b1_ms:.2f} ms per text alone" + ("" if batched is None else f", {1000 * batched:.2f} ms in "
                                                        "32-text calls") + f" ({where})"
    return TextCost(b1_ms / 1000.0, batched, described)


def model_cost(model, threads: int, configured_ms: float = 0.0) -> TextCost | None:
    """A loaded runtime's cost: ``configured_ms`` (TOOLCHAIN_TEXT_COST_MS) when set, else what its export measured
    (None: not measured, the service then times its warm-up)."""
    per_text = bool(getattr(model, "per_text", True))
    if configured_ms > 0:
        return TextCost(configured_ms / 1000.0, None, f"{configured_ms:g} ms per text (TOOLCHAIN_TEXT_COST_MS)")
    export = getattr(model, "export", None)
    report_file = Path(export.path) / "report.json" if export is not None else None
    if report_file is None or not report_file.is_file():
        return None
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return measured_cost(report, model.variant, threads, per_text)


# --------------------------------------------------------------------------- the queue

class ClientGone(Exception):
    """The client disconnected while its job waited: nobody to answer."""


class ModelError(Exception):
    """The model (or the answer's post-processing) raised ``cause`` for a job."""

    def __init__(self, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


def queue_full(queued_s: float, bound_s: float, retry_after_s: int) -> RequestRejected:
    return RequestRejected(503, "overloaded", f"the model queue of this worker holds {queued_s:.1f} s of work, "
                           f"at or over its bound of {bound_s:g} s (TOOLCHAIN_MAX_QUEUE_S); retry in {retry_after_s} s",
                           reason="overload", retry_after=retry_after_s)


@dataclass(eq=False)
class Job:
    texts: list[str]
    cost_s: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    started: bool = False
    dropped: bool = False

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """On the event loop: hand the outcome to the waiting request, unless it stopped waiting."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class ModelQueue:
    """Jobs in arrival order for one model thread; ``run`` maps a round's jobs' texts to one outcome per job.

    ``run(list of text lists) -> list of results`` runs on the model thread. ``merge``: take the jobs that queued
    meanwhile together (up to ``round_texts`` texts), for a batch-invariant variant; otherwise one job per round.
    ``on_start(wait_s, texts)`` is called on the model thread for every job the model takes.
    """

    def __init__(self, run: Callable[[list[list[str]]], list], cost: TextCost, bound_s: float, merge: bool,
                 round_texts: int = 32, on_start: Callable[[float, int], None] | None = None,
                 name: str = "model-queue", clock: Callable[[], float] = time.perf_counter):
        self.run, self.cost, self.bound_s, self.merge = run, cost, bound_s, merge
        self.round_texts, self.on_start, self.clock = max(1, round_texts), on_start, clock
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.pending_s = 0.0        # cost of the jobs waiting (dropped ones excluded)
        self.running_s = 0.0        # cost of the round on the model now
        self.running_since = 0.0
        self.waiting = 0            # jobs waiting (dropped ones excluded)
        self.thread = threading.Thread(target=self.work, name=name, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the event loop's side

    def queued_s(self) -> float:
        """Seconds of model work ahead of a new job: the waiting jobs and what is left of the running round."""
        with self.lock:
            left = max(0.0, self.running_s - (self.clock() - self.running_since)) if self.running_s else 0.0
            return self.pending_s + left

    def busy(self) -> bool:
        """Whether a new job would wait for another (the model is running or jobs are waiting)."""
        return self.running_s > 0 or self.waiting > 0

    def refusal(self) -> RequestRejected | None:
        """A 503 when the queued work is at or over the bound (Retry-After: until it is back under), else None."""
        queued = self.queued_s()
        if queued < self.bound_s:
            return None
        return queue_full(queued, self.bound_s, max(1, math.ceil(queued - self.bound_s + 1e-9)))

    def submit(self, texts: list[str]) -> Job:
        """Queue a request's texts (refused with a 503 when the queue is over its bound); await ``job.future``."""
        rejected = self.refusal()
        if rejected is not None:
            raise rejected
        loop = asyncio.get_running_loop()
        job = Job(texts, self.cost.seconds(len(texts)), loop, loop.create_future())
        with self.lock:
            self.pending_s += job.cost_s
            self.waiting += 1
        self.jobs.put(job)
        return job

    def drop(self, job: Job) -> None:
        """The request stopped waiting (deadline, client gone): the model will skip the job if it has not begun."""
        with self.lock:
            if job.started or job.dropped:
                return
            job.dropped = True
            self.pending_s = max(0.0, self.pending_s - job.cost_s)
            self.waiting -= 1

    # ------------------------------------------------------------------ the model thread's side

    def take(self) -> list[Job]:
        """The next round: the oldest job, and with ``merge`` the ones queued behind it up to ``round_texts``."""
        jobs = [self.jobs.get()]
        texts = len(jobs[0].texts)
        while self.merge and texts < self.round_texts:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            texts += len(job.texts)
        now = self.clock()
        with self.lock:
            live = [job for job in jobs if not job.dropped]
            for job in live:
                job.started = True
                self.pending_s -= job.cost_s
                self.waiting -= 1
            if not self.waiting:
                self.pending_s = 0.0   # no drift from float sums: an empty queue holds no work
            self.running_s = sum(job.cost_s for job in live)
            self.running_since = now
        if self.on_start is not None:
            for job in live:
                self.on_start(now - job.queued_at, len(job.texts))
        return live

    def work(self) -> None:
        while True:
            jobs = self.take()
            try:
                if jobs:
                    self.answer(jobs)
            except BaseException:   # never lose the thread: every job is answered in answer()
                log.exception("the model queue failed")
            finally:
                self.finished()

    def finished(self) -> None:
        """The round is off the model: its estimate no longer counts as queued work. Called before its answers are
        posted, so that a client that got its answer and asks again at once never meets its own finished round."""
        with self.lock:
            self.running_s = 0.0

    def answer(self, jobs: list[Job]) -> None:
        try:
            results = self.run([job.texts for job in jobs])
        except Exception as exc:
            self.finished()
            if len(jobs) == 1:
                post(jobs[0], None, ModelError(exc))
                return
            for job in jobs:   # a failure in a merged round: each job alone, so only the bad one fails
                self.answer([job])
            return
        self.finished()
        for job, result in zip(jobs, results):
            post(job, result, None)


def post(job: Job, result: Any, error: BaseException | None) -> None:
    """Hand the outcome to the job's event loop (from the model thread); a loop that has closed has nobody waiting."""
    try:
        job.loop.call_soon_threadsafe(job.deliver, result, error)
    except RuntimeError:
        pass


async def within(awaitable, seconds: float):
    """``await awaitable`` with a time limit (asyncio.TimeoutError), without the task ``asyncio.wait_for`` creates
    for a coroutine where ``asyncio.timeout`` exists (Python 3.11)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(max(0.0, seconds)):
            return await awaitable
    return await asyncio.wait_for(awaitable, max(0.0, seconds))


async def wait_for_job(model_queue: ModelQueue, job: Job, receive, deadline_s: float) -> Any:
    """The job's result within ``deadline_s`` seconds (asyncio.TimeoutError after), dropping the job from the queue
    if the wait ends first. While it waits behind other work, a disconnect of the client (ASGI
    ``http.disconnect``) drops it too and raises ClientGone."""
    watcher = None
    if model_queue.busy():   # only a job that waits watches its client: an idle worker answers at once
        watcher = asyncio.ensure_future(receive())

        def gone(task: asyncio.Future) -> None:
            if not task.cancelled() and task.exception() is None and task.result().get("type") == "http.disconnect":
                model_queue.drop(job)
                if not job.future.done():
                    job.future.set_exception(ClientGone())

        watcher.add_done_callback(gone)
    try:
        return await within(job.future, deadline_s)
    except BaseException:
        model_queue.drop(job)
        raise
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
