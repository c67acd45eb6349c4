"""How the service uses the machine: worker processes x ONNX Runtime threads, chosen at start-up.

A small encoder loses to thread synchronisation: one text on 2 threads ran slower than on 1 (measured
on the packaged MiniLM int8 export), while independent single-thread workers scale with the cores.
So the default is one single-thread worker per usable CPU, unless

- the export measured that the served variant is slow on one thread (batch-1 latency over
  ``LATENCY_BUDGET_MS``): then each worker gets enough threads to come back under it, as measured
  by the export's thread-scaling figures (``report.json`` ``layout``);
- memory cannot hold that many copies of the model (each worker loads its own);
- the model runs on a GPU: one worker drives it.

With a topic model beside the main one (two models per worker), each worker holds both (the memory
cap counts both files), each model gets the worker's threads, and the two run concurrently in a batch
(the topic model in a thread of its own) when the machine has a CPU beyond the worker's threads for it:
a lone request then waits for the slower model instead of both in turn, while under full load the
workers already share every CPU and the cost per text is the two models' either way.
``TOOLCHAIN_TOPIC_CALLS`` (concurrent, sequential) overrides that choice.

``TOOLCHAIN_WORKERS`` and ``TOOLCHAIN_THREADS`` override either choice; the reasons are logged.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

LATENCY_BUDGET_MS = 25.0        # one text on one thread slower than this: give each worker more threads
WORKER_OVERHEAD_BYTES = 400 << 20   # a BentoML worker's own memory (Python, libraries), measured ~300 MB
MEMORY_SHARE = 0.6              # of the memory this container may use, at most this much for workers
MAX_WORKERS = 32


@dataclass(frozen=True)
class Layout:
    workers: int
    threads: int
    why: str
    concurrent_models: bool = False   # with a topic model: the two models of a batch run at the same time


def memory_limit_bytes() -> int:
    """Memory this process may use: a cgroup v2 limit if set, else the machine's physical memory."""
    try:
        value = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if value != "max":
            return int(value)
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measured_threads(measured: dict | None, cpus: int) -> tuple[int, str]:
    """Threads per worker from the export's batch-1 latency by thread count (or 1 without figures)."""
    by_threads = (measured or {}).get("by_threads") or {}
    one = (by_threads.get("1") or {}).get("b1_ms")
    if one is None:
        return 1, "no thread-scaling figures in the export: 1 thread per worker"
    if one <= LATENCY_BUDGET_MS:
        return 1, f"one text takes {one:.1f} ms on 1 thread (within {LATENCY_BUDGET_MS:g} ms): 1 thread per worker"
    best = max((int(t) for t in by_threads), default=1)
    many = (by_threads.get(str(best)) or {}).get("b1_ms") or one
    if best <= 1 or many >= one * 0.8:
        return 1, f"one text takes {one:.1f} ms on 1 thread and {many:.1f} ms on {best}: threads do not pay"
    wanted = min(cpus, max(2, math.ceil(one / LATENCY_BUDGET_MS)))
    return wanted, f"one text takes {one:.1f} ms on 1 thread, {many:.1f} ms on {best}: {wanted} threads per worker"


def choose_layout(cpus: int, memory_bytes: int, model_bytes: int, measured: dict | None, workers: int = 0,
                  threads: int = 0, gpu: bool = False, models: int = 1, topic_calls: str = "auto") -> Layout:
    """Workers x threads for ``cpus`` usable CPUs; ``workers``/``threads`` > 0 are the user's settings.
    ``models`` is 2 with a topic model (``model_bytes`` is then both models' bytes), whose calls run
    concurrently per ``topic_calls`` (auto: when there is a CPU for it, see the module docstring)."""
    layout = worker_layout(cpus, memory_bytes, model_bytes, measured, workers, threads, gpu, models)
    if models < 2:
        return layout
    concurrent, why = two_model_calls(cpus, layout.threads, topic_calls)
    return Layout(layout.workers, layout.threads, f"{layout.why}; {why}", concurrent)


def two_model_calls(cpus: int, threads: int, topic_calls: str) -> tuple[bool, str]:
    """Whether a worker runs its two models concurrently, and why."""
    if topic_calls != "auto":
        return topic_calls == "concurrent", f"main and topic model {topic_calls} (TOOLCHAIN_TOPIC_CALLS)"
    if cpus >= 2 * threads:
        return True, (f"main and topic model concurrently ({cpus} CPUs: a lone batch waits for the slower model, "
                      "not both)")
    return False, f"main and topic model one after the other ({cpus} CPU(s): none left for a second model call)"


def worker_layout(cpus: int, memory_bytes: int, model_bytes: int, measured: dict | None, workers: int,
                  threads: int, gpu: bool, models: int) -> Layout:
    reasons = []
    if threads:
        reasons.append(f"{threads} threads per worker (TOOLCHAIN_THREADS)")
    elif gpu:
        threads = 1
        reasons.append("GPU: 1 thread feeds it")
    elif workers:
        threads = max(1, cpus // workers)
        reasons.append(f"{threads} threads per worker (the {cpus} CPUs shared by the workers)")
    else:
        threads, why = measured_threads(measured, cpus)
        reasons.append(why)
    if workers:
        reasons.append(f"{workers} workers (TOOLCHAIN_WORKERS)")
        return Layout(workers, threads, "; ".join(reasons))
    if gpu:
        return Layout(1, threads, "; ".join(reasons + ["1 worker drives the GPU"]))
    by_cpu = max(1, cpus // threads)
    per_worker = WORKER_OVERHEAD_BYTES + 3 * model_bytes
    by_memory = max(1, int(memory_bytes * MEMORY_SHARE) // per_worker)
    chosen = min(by_cpu, by_memory, MAX_WORKERS)
    limit = ("memory" if by_memory < by_cpu else "CPUs") if chosen < MAX_WORKERS or by_cpu <= MAX_WORKERS else "cap"
    held = " (both models)" if models > 1 else ""
    reasons.append(f"{chosen} workers ({cpus} CPUs / {threads} threads = {by_cpu}; memory for {by_memory} at "
                   f"{per_worker / 2**20:.0f} MB each{held}; limited by {limit})")
    return Layout(chosen, threads, "; ".join(reasons))


def slower_figures(first: dict | None, second: dict | None) -> dict | None:
    """Of two models' thread-scaling figures, those of the model slower on one thread (it sets the threads)."""
    def one_thread_ms(figures: dict | None) -> float:
        return float((((figures or {}).get("by_threads") or {}).get("1") or {}).get("b1_ms") or -1)
    return first if one_thread_ms(first) >= one_thread_ms(second) else second


def export_layout_figures(export_dir: str | Path | None, variant: str | None) -> tuple[int, dict | None]:
    """(bytes of the served model file, the export's thread-scaling figures for that variant, if measured)."""
    if not export_dir:
        return 0, None
    from toolchain.core.artifacts import ArtifactError, load_export

    try:
        export = load_export(export_dir)
    except ArtifactError:
        return 0, None
    variant = variant or export.serve_variant
    size = int((export.manifest.get("variants", {}).get(variant) or {}).get("bytes") or 0)
    report_file = Path(export_dir) / "report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
    layout = report.get("layout")
    return size, layout if layout and layout.get("variant") == variant else None
