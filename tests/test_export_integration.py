"""Export on the real packaged base model and the PhraseBank splits (short training, then every check)."""
from __future__ import annotations

import json

import pytest

from conftest import PHRASEBANK, requires_phrasebank

pytestmark = [pytest.mark.integration, requires_phrasebank()]


@pytest.fixture(scope="module")
def packaged_run(tmp_path_factory):
    """A run of the packaged MiniLM on slices of the allagree splits (a few steps: the export is under test)."""
    from toolchain.core.config import load_config
    from toolchain.train.runner import train

    root = tmp_path_factory.mktemp("pb")
    files = {}
    for split, per_label in (("train", 48), ("dev", 22), ("test", 22)):
        rows = [json.loads(line) for line in (PHRASEBANK / "allagree" / f"{split}.jsonl").read_text().splitlines()]
        picked = []
        for label in ("negative", "neutral", "positive"):
            picked += [r for r in rows if r["label"] == label][:per_label]
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    overrides = [f"data.{split}={path}" for split, path in files.items()] + [
        f"output_dir={root / 'run'}", "train.max_steps=8", "train.eval_steps=8", "data.max_length=64",
        "train.learning_rate=1e-4", "train.early_stopping_patience=0"]
    return train(load_config("sentiment-full", overrides))


def test_packaged_model_exports_with_parity_and_small_int8(packaged_run, tmp_path):
    import onnx

    from toolchain.core.artifacts import load_export
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    cfg = load_export_config("export-default", ["variants=fp32,int8", "latency.rounds=5", "latency.batch_sizes=1",
                                                "accuracy_gate.min_agreement=0.9", "accuracy_gate.max_drop=5"])
    info = load_export(export(packaged_run, tmp_path / "export", cfg))
    info.verify()
    report = json.loads((info.path / "report.json").read_text())
    assert report["parity"]["fp32_vs_pytorch"] < 1e-4
    assert report["summary"]["int8"]["size_vs_fp32_onnx"] <= 0.30
    assert report["variants"]["int8"]["test"]["agreement"] >= 0.9
    graph = onnx.load(str(info.variant_file("int8"))).graph
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 6 * 6  # q, k, v, out, ffn in, ffn out
    assert report["variants"]["pytorch"]["test"]["examples"] == 66
