"""The serving layout chosen from the machine and the export's measurements (no hard-coded core count)."""
from __future__ import annotations

import json

from toolchain.serve.layout import LATENCY_BUDGET_MS, choose_layout, export_layout_figures

GiB = 1 << 30
SMALL = {"variant": "int8", "by_threads": {"1": {"b1_ms": 2.1, "b32_texts_per_s": 480},
                                           "2": {"b1_ms": 2.9, "b32_texts_per_s": 610}}}
SLOW = {"variant": "fp32", "by_threads": {"1": {"b1_ms": 90.0}, "8": {"b1_ms": 16.0}}}


def test_small_model_gets_one_single_thread_worker_per_cpu_on_any_core_count():
    for cpus in (1, 2, 16, 24):
        layout = choose_layout(cpus, 64 * GiB, 23_000_000, SMALL)
        assert (layout.workers, layout.threads) == (cpus, 1), layout
    assert choose_layout(128, 512 * GiB, 23_000_000, SMALL).workers == 32     # capped


def test_a_model_slow_on_one_thread_gets_threads_per_worker():
    layout = choose_layout(16, 64 * GiB, 400_000_000, SLOW)
    assert layout.threads == 4 and layout.workers == 4 and f"{LATENCY_BUDGET_MS:g} ms" not in layout.why
    # threads that do not help latency are not given
    flat = {"variant": "fp32", "by_threads": {"1": {"b1_ms": 90.0}, "8": {"b1_ms": 85.0}}}
    assert choose_layout(16, 64 * GiB, 400_000_000, flat).threads == 1


def test_memory_limits_the_workers_and_settings_override():
    layout = choose_layout(64, 4 * GiB, 1_000_000_000, SMALL)
    assert layout.workers == 1 and "memory" in layout.why
    assert (choose_layout(8, 64 * GiB, 1, SMALL, workers=3).workers, choose_layout(8, 64 * GiB, 1, SMALL,
                                                                                    workers=3).threads) == (3, 2)
    assert choose_layout(8, 64 * GiB, 1, SMALL, threads=4).workers == 2
    assert (choose_layout(8, 64 * GiB, 1, SMALL, gpu=True).workers) == 1


def test_export_figures_apply_only_to_the_variant_they_measured(tmp_path):
    import yaml

    (tmp_path / "toolchain.yaml").write_text(yaml.safe_dump({
        "stage": "export", "status": "complete", "artifact_version": 1, "serve_variant": "int8", "task": "x",
        "labels": [], "max_length": 8, "variants": {"int8": {"dir": "onnx/int8", "file": "m.onnx", "bytes": 99},
                                                    "fp32": {"dir": "onnx/fp32", "file": "m.onnx", "bytes": 300}}}))
    (tmp_path / "report.json").write_text(json.dumps({"layout": SMALL}))
    assert export_layout_figures(tmp_path, None) == (99, SMALL)
    assert export_layout_figures(tmp_path, "fp32") == (300, None)
    assert export_layout_figures(None, None) == (0, None)
