"""benchmarks/ablation.py keeps every round's figures: a lever trained again on another machine gets a new row and
its earlier row stays beside it, named by the machine it was measured on; the targets table judges each round's row;
collecting the same runs twice changes nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ablation  # noqa: E402

INTEL = "Intel(R) Xeon(R) Processor (2 cores; avx512f,avx512_vnni,avx512_bf16,amx_int8,amx_bf16,avx2)"


def write_run(runs: Path, lever: str, seed: int, accuracy: float) -> None:
    run = runs / lever / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "test": {"accuracy": accuracy, "macro_f1": accuracy - 0.01}, "train": {"wall_seconds": 60.0 * seed}}))


@pytest.fixture
def bench(tmp_path, monkeypatch):
    runs, results = tmp_path / "runs", tmp_path / "results"
    runs.mkdir()
    results.mkdir()
    monkeypatch.setattr(ablation, "RUNS", runs)
    monkeypatch.setattr(ablation, "EXPORTS", tmp_path / "exports")
    monkeypatch.setattr(ablation, "RESULTS", results)
    monkeypatch.setattr(ablation, "machine_name", lambda: "AMD EPYC (2 cores; avx512f,avx512_bf16,avx2)")
    monkeypatch.setattr(ablation, "versus_baseline", lambda lever: None)
    earlier = {"levers": {
        "distill-mpnet": {"kind": "sentiment", "machine": INTEL, "seeds": [42, 43, 44], "acc": [0.96, 0.965, 0.97],
                          "f1": [0.95, 0.96, 0.965], "served": {}, "overrides": []},
        "eda": {"kind": "sentiment", "machine": "AMD EPYC (2 cores)", "earlier_round": True, "seeds": [42],
                "acc": [0.95], "f1": [0.94], "served": {}, "overrides": []}},
        "ensembles": {}}
    (results / "ablation.json").write_text(json.dumps(earlier))
    return runs, results


def test_a_lever_trained_again_keeps_its_earlier_row_beside_the_new_one(bench):
    runs, results = bench
    write_run(runs, "distill-mpnet", 42, 0.98)
    result = ablation.collect()
    rows = result["levers"]
    assert rows["distill-mpnet"]["acc"] == [0.98] and not rows["distill-mpnet"].get("earlier_round")
    archived = rows["distill-mpnet@Intel Xeon, AMX"]
    assert archived["earlier_round"] and archived["lever"] == "distill-mpnet" and archived["seeds"] == [42, 43, 44]
    assert rows["eda"]["earlier_round"]          # not trained here: kept as recorded
    table = ablation.table(result)
    assert "| distill-mpnet (earlier round, Intel Xeon, AMX) | 3 | 96.50 ± 0.50 |" in table
    assert "| distill-mpnet | 1 | 98.00 |" in table
    assert table.index("distill-mpnet (earlier round") < table.index("| distill-mpnet | 1")
    targets = ablation.targets(result)
    assert "| sentiment student allagree accuracy | 0.975 | 0.9800 (PyTorch, 1 seed(s)) | met by 0.0050 |" in targets
    assert ("| sentiment student allagree accuracy [earlier round, Intel Xeon, AMX] | 0.975 | 0.9650 (PyTorch, "
            "3 seed(s)) | not met by 0.0100 |") in targets

    # collected again (another step of the same round, one more seed): the same runs are not archived twice
    (results / "ablation.json").write_text(json.dumps(result))
    write_run(runs, "distill-mpnet", 43, 0.99)
    again = ablation.collect()["levers"]
    assert again["distill-mpnet"]["acc"] == [0.98, 0.99]
    assert [k for k in again if k.startswith("distill-mpnet@")] == ["distill-mpnet@Intel Xeon, AMX"]


def test_short_machine_names_the_best_instruction_set():
    assert ablation.short_machine(INTEL) == "Intel Xeon, AMX"
    assert ablation.short_machine("AMD EPYC (2 cores; avx512f,avx512_bf16,avx2)") == "AMD EPYC, AVX-512 BF16"
    assert ablation.short_machine("AMD EPYC (2 cores; avx2,fma)") == "AMD EPYC, AVX2"
    assert ablation.short_machine("AMD EPYC (2 cores)") == "AMD EPYC"
