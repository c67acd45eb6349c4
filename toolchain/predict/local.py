"""``--engine local``: one worker process per usable core, each with the model on one ONNX Runtime thread.

Several single-thread workers beat one multi-thread worker for the small encoders served here (see
docs/SERVING.md, the worker layout), and a worker's texts go through the runtime exactly as a service
worker's do: length-grouped model calls where the variant is batch-invariant, one text per call where it
quantizes at run time. Each worker loads the model once and then takes whole shards; it reports its
progress (texts scored) on a queue that the parent's progress bar reads.

Workers are started with ``spawn`` (no state of the parent is copied) and, on Linux, die with the parent
(``PR_SET_PDEATHSIG``): a killed run leaves no orphan writing shards behind the next one. One worker
runs in the parent's own process.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from toolchain.predict.inputs import Shard
from toolchain.predict.scoring import ScoringContext, ShardResult, ShardScorer

_WORKER: dict = {}
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a SIGKILLed run takes its workers with it)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def start_worker(context: ScoringContext, queue, parent: int | None = None) -> None:
    die_with_parent()
    if parent is not None and os.getppid() != parent:   # the parent died before the line above: no signal comes
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C goes to the parent, which stops the pool
    _WORKER["scorer"], _WORKER["queue"] = ShardScorer(context), queue


def score_in_worker(shard: Shard) -> ShardResult:
    queue = _WORKER["queue"]
    return _WORKER["scorer"](shard, queue.put)


def run_local(shards: list[Shard], context: ScoringContext, workers: int,
              progress: Callable[[int], None]) -> Iterator[ShardResult]:
    """Score ``shards`` with ``workers`` processes; yields each shard's result as it is written."""
    if workers <= 1 or len(shards) <= 1:
        scorer = ShardScorer(context)
        for shard in shards:
            yield scorer(shard, progress)
        return
    yield from run_pool(shards, context, min(workers, len(shards)), progress)


def run_pool(shards: list[Shard], context: ScoringContext, workers: int,
             progress: Callable[[int], None]) -> Iterator[ShardResult]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    spawn = multiprocessing.get_context("spawn")
    queue = spawn.SimpleQueue()
    reader = threading.Thread(target=forward_progress, args=(queue, progress), daemon=True)
    reader.start()
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=start_worker,
                               initargs=(context, queue, os.getpid()))
    try:
        pending = {pool.submit(score_in_worker, shard) for shard in shards}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BaseException:   # an error, Ctrl-C, or the consumer stopped: no new shard starts, none is waited for
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        queue.put(None)
        reader.join(timeout=5)


def forward_progress(queue, progress: Callable[[int], None]) -> None:
    while (count := queue.get()) is not None:
        progress(count)
