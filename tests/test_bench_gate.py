"""The benchmarks end to end on a real (tiny) export: the offline benchmark and its report, and the
latency check (`toolchain bench latency-check`), which passes on the unmodified build and fails on an injected slowdown.

The quick model is built by the latency check's own builder (train one step -> `toolchain export` fp32 + int8)
from the tiny BERT instead of the packaged MiniLM, so that it takes seconds; its baseline is recorded
here with `update-baseline`, as a maintainer would, because the committed one belongs to MiniLM.
"""
from __future__ import annotations

import json
import math

import pytest

from toolchain.bench.baseline import read_baseline
from toolchain.commands.bench import main


@pytest.fixture(scope="module")
def quick_export(tiny_bert, tmp_path_factory):
    from toolchain.bench.quick_model import build_quick_export

    return build_quick_export(tmp_path_factory.mktemp("bench-quick"), base=str(tiny_bert))


def run_bench(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr().out
    print(out)  # shown with -s, and by pytest when the test fails
    return code, out


def test_quick_export_has_the_latency_check_variants(quick_export):
    from toolchain.core.artifacts import load_export

    export = load_export(quick_export)
    assert export.variant_names() == ["fp32", "int8"]
    assert export.variant_file("int8").stat().st_size < export.variant_file("fp32").stat().st_size
    assert (quick_export / "merged" / "model.safetensors").exists()


def test_latency_check_passes_unmodified_and_fails_on_an_injected_slowdown(quick_export, tmp_path, capsys, monkeypatch):
    baseline = tmp_path / "baseline.json"
    common = ["--export-dir", str(quick_export), "--baseline", str(baseline), "--parts", "offline", "--repeats", "3"]
    code, out = run_bench(["update-baseline", *common, "--tolerance", "1.0"], capsys)
    assert code == 0 and "baseline written" in out
    recorded = read_baseline(baseline)
    assert set(recorded["ratios"]) == {"int8_vs_pytorch_b1", "int8_vs_pytorch_b32", "int8_vs_fp32_b32"}
    assert recorded["machine"]["flags"] and recorded["settings"]["threads"] == 1

    code, out = run_bench(["latency-check", *common], capsys)
    assert code == 0, out
    assert "latency check: passed" in out and "REGRESSION" not in out

    monkeypatch.setenv("TOOLCHAIN_BENCH_INJECT_DELAY_MS", "int8=40")
    code, out = run_bench(["latency-check", *common, "--json", str(tmp_path / "verdict.json")], capsys)
    assert code == 1, out
    assert "REGRESSION int8_vs_pytorch_b1" in out and "latency check: FAILED" in out
    verdict = {row["ratio"]: row for row in json.loads((tmp_path / "verdict.json").read_text())["verdict"]}
    assert verdict["int8_vs_pytorch_b1"]["result"] == "REGRESSION"
    assert verdict["int8_vs_pytorch_b1"]["measured"] > 2 * verdict["int8_vs_pytorch_b1"]["baseline"]


@pytest.mark.server
def test_served_ratios_come_from_two_real_servers(quick_export, tmp_path, capsys):
    baseline = tmp_path / "serve-baseline.json"
    code, out = run_bench(["update-baseline", "--export-dir", str(quick_export), "--baseline", str(baseline),
                           "--parts", "serve", "--serve-repeats", "1", "--seconds", "1.5"], capsys)
    assert code == 0, out
    ratios = read_baseline(baseline)["ratios"]
    assert set(ratios) == {"served_vs_offline_b1", "served_vs_offline_cpu_b1", "batched_vs_unbatched_c64"}
    cpu, batched = ratios["served_vs_offline_cpu_b1"], ratios["batched_vs_unbatched_c64"]
    assert cpu["value"] > 1, "serving a request over HTTP cannot take less CPU than the same model call in process"
    assert cpu["figures"]["served_cpu_ms"] > cpu["figures"]["offline_cpu_ms"] > 0
    assert ratios["served_vs_offline_b1"]["figures"]["served_p50_ms"] > 0
    assert batched["figures"]["batched_rps"] > 0 and batched["figures"]["unbatched_rps"] > 0
    assert math.isfinite(batched["value"])


def test_offline_benchmark_and_results_page(quick_export, tmp_path, monkeypatch):
    """A short offline run on the quick export with a stand-in test split, then RESULTS.md and PNGs."""
    from toolchain.bench.offline import run_offline
    from toolchain.bench.summary import render_results
    from toolchain.bench.workloads import LATENCY_CHECK_SENTENCES, REAL_TEST

    data = tmp_path / "data"
    (data / REAL_TEST).parent.mkdir(parents=True)
    rows = [json.dumps({"text": text, "label": label}) for text, label in LATENCY_CHECK_SENTENCES]
    (data / REAL_TEST).write_text("\n".join(rows) + "\n")
    results = run_offline(quick_export, data, batch_sizes=(1, 8, 32), scale=0.05, threads=1, progress=False)
    real = results["latency"]["phrasebank-test"]
    assert set(real) == {"pytorch", "fp32", "int8"} and set(results["latency"]) >= {"fixed-32", "fixed-128"}
    for name, per_bs in real.items():
        assert set(per_bs) == {"1", "8", "32"}
        assert per_bs["32"]["sentences_per_s"] > 0 and 0 < per_bs["1"]["peak_fraction"] < 1, name
    assert results["variants"]["int8"]["precision"] == "int8" and results["variants"]["int8"]["bytes"] > 0

    out = tmp_path / "repo" / "benchmarks" / "results"
    out.mkdir(parents=True)
    (out / "offline.json").write_text(json.dumps(results))
    page = render_results(tmp_path / "repo", out).read_text()
    for heading in ("## Inference, offline", "### Efficiency against the physical limit", "## Serving",
                    "## Training", "## Export", "## Latency check"):
        assert heading in page
    assert "## Accuracy levers\n\n_Not measured yet: run `python benchmarks/ablation.py" in page
    (out / "ablation.md").write_text("# Accuracy levers\n\n| lever | seeds |\n|---|---|\n| dapt | 3 |\n")
    page = render_results(tmp_path / "repo", out).read_text()
    assert "## Accuracy levers\n\n| lever | seeds |" in page and page.index("## Accuracy levers") < page.index("## Export")
    assert "| **pytorch** |" in page and "GFLOP/s fp32" in page
    for png in ("latency_vs_batch.png", "latency_vs_accuracy.png"):
        assert 5_000 < (out / png).stat().st_size < 200_000
