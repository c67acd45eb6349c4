"""Export stage on tiny models: a complete export dir, checksums, the int8 graph under ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

FAST = ["latency.rounds=3", "latency.warmup=1", "latency.batch_sizes=1,4"]


def tiny_run(tmp_path_factory, tiny_bert, tiny_data, method: str):
    from toolchain.config import load_config
    from toolchain.train.runner import train

    out = tmp_path_factory.mktemp(f"run-{method}") / "run"
    overrides = [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
                 f"data.test={tiny_data['test']}", f"output_dir={out}", "train.epochs=3", "train.batch_size=8",
                 "train.eval_steps=15", "train.learning_rate=3e-3", "data.max_length=32",
                 "train.early_stopping_patience=0", f"method.name={method}"]
    return train(load_config("sentiment-full", overrides))


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tiny_bert, tiny_data):
    return tiny_run(tmp_path_factory, tiny_bert, tiny_data, "full")


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_bert, tiny_data):
    return tiny_run(tmp_path_factory, tiny_bert, tiny_data, "lora")


@pytest.fixture(scope="session")
def basic_export(full_run, tmp_path_factory):
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    cfg = load_export_config(None, ["variants=fp32,int8", *FAST])
    return export(full_run, tmp_path_factory.mktemp("exports") / "basic", cfg)


def test_export_dir_is_complete_and_verifies(basic_export):
    from toolchain.artifacts import load_export

    info = load_export(basic_export)
    info.verify()
    assert info.serve_variant == "int8"
    assert set(info.variant_names()) == {"fp32", "int8"}
    assert info.variant_file().name == "model_quantized.onnx"
    for rel in ("tokenizer/tokenizer.json", "merged/model.safetensors", "merged/config.json", "report.json",
                "onnx/fp32/model.onnx", "onnx/fp32/config.json", "latency_vs_metric.png"):
        assert (basic_export / rel).is_file(), rel
    assert "onnx/int8/model_quantized.onnx" in info.manifest["files"]
    assert not list(basic_export.parent.glob(".basic.tmp-*"))


def test_int8_variant_runs_in_onnxruntime_with_integer_ops(basic_export):
    import onnx
    import onnxruntime
    from transformers import AutoTokenizer

    from toolchain.artifacts import load_export

    info = load_export(basic_export)
    ops = {node.op_type for node in onnx.load(str(info.variant_file())).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "DynamicQuantizeLinear"}
    tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    session = onnxruntime.InferenceSession(str(info.variant_file()), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for batch in (["profit rose this quarter ."], ["sales fell .", "the board met in helsinki on monday ."]):
        encoded = tokenizer(batch, padding=True, return_tensors="np")
        (logits,) = session.run(None, {k: v.astype(np.int64) for k, v in encoded.items() if k in names})
        assert logits.shape == (len(batch), len(info.labels))
        assert np.isfinite(logits).all()


def test_report_has_parity_and_gate(basic_export):
    import json

    report = json.loads((basic_export / "report.json").read_text())
    assert report["parity"]["fp32_vs_pytorch"] < 1e-4
    assert report["gate"]["passed"] and report["gate"]["variant"] == "int8"
    assert report["cpu"]["preset"] in ("arm64", "avx2", "avx512", "avx512_vnni")
    for name in ("pytorch", "fp32", "int8"):
        assert report["variants"][name]["bytes"] > 0
        assert set(report["latency"][name]) == {"1", "4"}
    assert report["variants"]["int8"]["bytes"] < 0.5 * report["variants"]["fp32"]["bytes"]
