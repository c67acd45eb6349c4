"""The latency check's serving ratios, measured on two real servers (adaptive batching on and off).

Both ratios are measured in short alternating slices, repeated, so that the two sides of each ratio
see the same machine load:

- served vs offline, one client: the same sentence sent over HTTP to the server without batching,
  and run in this process (tokenizer + int8 ONNX session, as the service loads it); as latency
  (p50 / p50) and as CPU time (server CPU per request / CPU per offline call). CPU time does not
  count waiting for a core, so it is the steadier of the two on a shared machine; the latency ratio
  catches waits (a sleep, a lock, a queue) that cost no CPU.
- batched vs unbatched, 64 clients: answered requests per second of the two servers.

Single-client latency comes from the server without batching: BentoML's batching dispatcher adapts
its wait to the load it has seen, so right after a 64-client slice a lone request waits for
batch-mates that never come, which measures the dispatcher's history rather than the service.
"""
from __future__ import annotations

import statistics
import time


def timed_calls(call, seconds: float) -> tuple[list[float], float]:
    """Call ``call()`` for ``seconds``: wall seconds of each call and the CPU seconds of them all
    (this process's, every thread: nothing else runs in it meanwhile)."""
    walls, cpu_start = [], time.process_time()
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        call()
        walls.append(time.perf_counter() - started)
    return walls, time.process_time() - cpu_start


def offline_call(export, sentence: str, threads: int):
    from transformers import AutoTokenizer

    from toolchain.bench.runners import onnx_text_runner

    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    runner = onnx_text_runner(export.variant_file("int8"), tokenizer, threads)
    batch = {"texts": [sentence], "max_length": export.max_length}
    return lambda: runner(batch)


def single_client_repeat(pair, call, seconds: float, slices: int) -> dict:
    """Alternating slices: the unbatched server with one client, then the same sentence offline."""
    served, offline, server_cpu, offline_cpu, errors = [], [], 0.0, 0.0, 0
    for _ in range(slices):
        slice_ = pair.drive("off", 1, seconds / slices)
        served += slice_["latencies"]
        server_cpu, errors = server_cpu + slice_["cpu"], errors + slice_["errors"]
        walls, cpu = timed_calls(call, seconds / slices)
        offline, offline_cpu = offline + walls, offline_cpu + cpu
    return {"served_p50_ms": 1000 * statistics.median(served), "offline_p50_ms": 1000 * statistics.median(offline),
            "served_cpu_ms": 1000 * server_cpu / len(served), "offline_cpu_ms": 1000 * offline_cpu / len(offline),
            "errors": errors}


def loaded_repeat(pair, seconds: float, slices: int, first: str) -> dict:
    """Alternating slices of 64 clients on the batching and the non-batching server."""
    answered, wall, errors = {"on": 0, "off": 0}, {"on": 0.0, "off": 0.0}, 0
    order = (first, "off" if first == "on" else "on")
    for _ in range(slices):
        for mode in order:
            slice_ = pair.drive(mode, 64, seconds / slices)
            answered[mode] += len(slice_["latencies"])
            wall[mode] += slice_["wall"]
            errors += slice_["errors"]
    return {"batched_rps": answered["on"] / wall["on"], "unbatched_rps": answered["off"] / wall["off"],
            "errors": errors}


def warm_up(pair, call) -> None:
    for mode in ("on", "off"):
        pair.drive(mode, 64, 1.5)
        pair.drive(mode, 1, 0.5)
    timed_calls(call, 0.5)


def served_ratios(pair, export, repeats: int, seconds: float, threads: int, progress: bool = True) -> dict:
    """served/offline (latency and CPU) and batched/unbatched ratios, each the median over repeats."""
    call = offline_call(export, pair.bench.SENTENCE, threads)
    warm_up(pair, call)
    single, loaded = [], []
    for r in range(repeats):
        single.append(single_client_repeat(pair, call, seconds, slices=4))
        loaded.append(loaded_repeat(pair, 2 * seconds, slices=2, first="on" if r % 2 == 0 else "off"))
        if progress:
            s, l = single[-1], loaded[-1]
            print(f"latency check serve repeat {r + 1}/{repeats}: 1 client p50 served {s['served_p50_ms']:.1f} ms vs "
                  f"offline {s['offline_p50_ms']:.1f} ms, CPU {s['served_cpu_ms']:.1f} vs "
                  f"{s['offline_cpu_ms']:.1f} ms; 64 clients {l['batched_rps']:.1f} req/s batched vs "
                  f"{l['unbatched_rps']:.1f} unbatched", flush=True)
    return serve_entries(single, loaded)


def serve_entries(single: list[dict], loaded: list[dict]) -> dict:
    from toolchain.bench.latency_check import ratio_entry

    def entry(rows, num, den):
        figures = {k: statistics.median(r[k] for r in rows) for k in (num, den)}
        figures["server_errors"] = sum(r["errors"] for r in rows)
        return ratio_entry([r[num] / r[den] for r in rows], figures)
    return {"served_vs_offline_b1": entry(single, "served_p50_ms", "offline_p50_ms"),
            "served_vs_offline_cpu_b1": entry(single, "served_cpu_ms", "offline_cpu_ms"),
            "batched_vs_unbatched_c64": entry(loaded, "batched_rps", "unbatched_rps")}
