"""How fast a model runs: the one measuring module that export, bench and the latency check share.

Latency of several model variants measured fairly: same inputs, same process, interleaved rounds.

Each round times one call of every variant on the same batch, in a shuffled order, so drift of a
shared machine (other jobs, thermal state) hits every variant alike. :func:`measure_interleaved`
returns, per variant and batch size, :func:`summarize`'s ``median_ms``, ``p95_ms``, ``p99_ms`` and
``mean_ms`` (milliseconds per call) and ``calls``. :func:`served_rates` measures serving-runtime models
through their own ``infer`` and returns, per model and request size, ``texts_per_s``,
``median_ms_per_request``, ``requests`` and ``rounds``.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np

Runner = Callable[[dict], Any]


def text_batches(tokenizer, texts: list, batch_size: int, count: int, max_length: int) -> list[dict]:
    """``count`` batches of ``batch_size`` texts (cycled), tokenized and padded to the longest, as int64 numpy.

    ``texts`` are sentences, or token lists (token classification).
    """
    split = bool(texts) and isinstance(texts[0], list)
    batches = []
    for i in range(count):
        chunk = [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
        encoded = tokenizer(chunk, truncation=True, max_length=max_length, padding=True,
                            is_split_into_words=split, return_tensors="np")
        batches.append({k: v.astype(np.int64) for k, v in encoded.items()})
    return batches


def onnx_runner(session) -> Runner:
    """A runner for an onnxruntime.InferenceSession: feeds only the inputs the graph declares."""
    names = [i.name for i in session.get_inputs()]

    def run(batch: dict) -> Any:
        return session.run(None, {n: batch[n] for n in names if n in batch})
    return run


def onnx_session(path, threads: int = 0):
    """A CPU InferenceSession for timing; idle threads do not busy-wait (they would steal the cores of the
    other variants timed in the same interleaved rounds)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_runner(model) -> Runner:
    """A runner for a PyTorch model in eval mode (inference mode, zero-copy numpy -> tensor)."""
    import torch

    def run(batch: dict) -> Any:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    return run


def summarize(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "calls": int(ms.size)}


def measure_interleaved(runners: dict[str, Runner], inputs: dict[int, list[dict]], rounds: int,
                        warmup: int = 3, seed: int = 0, progress: bool = False, time_budget: float = 0.0,
                        min_rounds: int = 1) -> dict[str, dict[int, dict]]:
    """{variant: {batch_size: {median_ms, p95_ms, p99_ms, mean_ms, calls}}}; ``inputs`` maps batch size -> batches.

    At most ``rounds`` rounds; with a ``time_budget`` (seconds, after the warm-up) the rounds stop once it is
    spent and ``min_rounds`` are done, so a large model's timing takes bounded time (``calls`` says how many)."""
    for batches in inputs.values():
        for run in runners.values():
            for i in range(warmup):
                run(batches[i % len(batches)])
    rng = random.Random(seed)
    times: dict[str, dict[int, list[float]]] = {name: {bs: [] for bs in inputs} for name in runners}
    steps = range(rounds)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="latency rounds", unit="round")
    deadline = time.perf_counter() + time_budget if time_budget else None
    for r in steps:
        if deadline is not None and r >= min_rounds and time.perf_counter() > deadline:
            break
        for bs, batches in inputs.items():
            batch = batches[r % len(batches)]
            order = list(runners)
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                runners[name](batch)
                times[name][bs].append(time.perf_counter() - start)
    return {name: {bs: summarize(ts) for bs, ts in per_bs.items()} for name, per_bs in times.items()}


def served_rates(models: dict, texts: list[str], batch_sizes: tuple[int, ...] = (1, 32), rounds: int = 3,
                 seed: int = 0) -> dict[str, dict[int, dict]]:
    """Texts per second of each serving-runtime model (:class:`toolchain.inference.runtime.OnnxModel`) through
    its own ``infer``: the service's tokenizer, truncation and call pattern (one text per call for
    batch-dependent variants, length-grouped calls otherwise).

    ``batch_sizes`` are request shapes: 1 = one text per call (a lone client), 32 = the 32 texts the
    adaptive batcher merges under load. Each round runs every model over all ``texts`` in chunks of the
    batch size, models in a shuffled order, so drift of a shared machine hits them alike; the rate is
    the median over rounds. Returns ``{name: {batch_size: {texts_per_s, median_ms_per_request, requests,
    rounds}}}``: ``requests`` calls of ``infer`` per round, ``median_ms_per_request`` the median round's time
    divided by them.
    """
    rng = random.Random(seed)
    for model in models.values():  # warm-up: first-call allocations are not part of serving
        model.infer(texts[:2])
    seconds: dict = {name: {bs: [] for bs in batch_sizes} for name in models}
    for _ in range(rounds):
        for bs in batch_sizes:
            chunks = [texts[i:i + bs] for i in range(0, len(texts), bs)]
            order = list(models)
            rng.shuffle(order)
            for name in order:
                started = time.perf_counter()
                for chunk in chunks:
                    models[name].infer(chunk)
                seconds[name][bs].append(time.perf_counter() - started)
    out: dict = {}
    for name, per_bs in seconds.items():
        for bs, runs in per_bs.items():
            median = float(np.median(runs))
            calls = -(-len(texts) // bs)
            out.setdefault(name, {})[bs] = {"texts_per_s": len(texts) / median, "median_ms_per_request":
                                            1000 * median / calls, "requests": calls, "rounds": rounds}
    return out
