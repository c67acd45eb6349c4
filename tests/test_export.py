"""Export stage on tiny models: a complete export dir, checksums, the int8 graph under ONNX Runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.core.config import ConfigError

FAST = ["latency.rounds=3", "latency.warmup=1", "latency.batch_sizes=1,4", "rank_rounds=1"]


def tiny_run(tmp_path_factory, tiny_bert, tiny_data, method: str):
    from toolchain.core.config import load_config
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

    cfg = load_export_config(None, ["variants=fp32,int8", "serve_variant=int8", *FAST])
    return export(full_run, tmp_path_factory.mktemp("exports") / "basic", cfg)


def test_export_dir_is_complete_and_verifies(basic_export):
    from toolchain.core.artifacts import load_export

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

    from toolchain.core.artifacts import load_export

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


def test_report_has_parity_and_accuracy_gate(basic_export):
    import json

    report = json.loads((basic_export / "report.json").read_text())
    assert report["parity"]["fp32_vs_pytorch"] < 1e-4
    assert report["gate"]["passed"] and report["gate"]["variant"] == "int8"
    assert report["cpu"]["preset"] in ("arm64", "avx2", "avx512", "avx512_vnni")
    for name in ("pytorch", "fp32", "int8"):
        assert report["variants"][name]["bytes"] > 0
        assert set(report["latency"][name]) == {"1", "4"}
    assert report["variants"]["int8"]["bytes"] < 0.5 * report["variants"]["fp32"]["bytes"]


@pytest.fixture(scope="session")
def full_export(lora_run, tmp_path_factory):
    """Every variant from a LoRA run, pruning with a short distillation recovery."""
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    cfg = load_export_config("export-default", ["prune.amount=0.5", "prune.recovery_epochs=0.2",
                                                "quantize.static_samples=32", *FAST])
    return export(lora_run, tmp_path_factory.mktemp("exports") / "lora", cfg)


def test_lora_merge_matches_unmerged_and_all_variants_are_built(full_export):
    from toolchain.core.artifacts import load_export

    info = load_export(full_export)
    info.verify()
    report = json.loads((full_export / "report.json").read_text())
    assert report["merge"]["peft"] is True and report["merge"]["max_abs_diff"] < 1e-4
    assert info.variant_names() == ["fp32", "optimized", "int8", "int8-static", "pruned", "pruned-int8"]
    assert report["parity"]["fp32_vs_pytorch"] < 1e-4 and report["parity"]["pruned_vs_pruned_pytorch"] < 1e-4
    assert report["pruning"]["recovery"]["method"] == "distill" and report["pruning"]["recovery"]["steps"] >= 1
    assert set(report["summary"]["pruned-int8"]) >= {"b1_speedup_vs_int8", "test_metric_delta_vs_int8"}
    for name in info.variant_names():
        assert 0.0 <= report["variants"][name]["test"]["agreement"] <= 1.0


def test_lora_merge_folds_the_adapter_into_the_base_weights(lora_run):
    """The merged model is a plain transformers model (no LoRA module left) whose adapted matrices are the base
    weights plus scaling * B @ A, untouched elsewhere, with the unmerged model's dev logits."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from toolchain.core.artifacts import load_run
    from toolchain.export.merge import merge_run
    from toolchain.export.scoring import load_run_splits, run_task

    run = load_run(lora_run)
    merged = merge_run(run, run_task(run), load_run_splits(run).dev, atol=1e-4)
    assert merged.max_abs_diff is not None and merged.max_abs_diff < 1e-4
    assert type(merged.model).__name__ == "BertForSequenceClassification"
    assert not [name for name, _ in merged.model.named_modules() if "lora" in name]
    base = load_file(Path(run.base_model) / "model.safetensors")
    adapter = load_file(run.model_dir / "adapter_model.safetensors")
    weights = merged.model.state_dict()
    method = run.config["method"]
    scaling = method["lora_alpha"] / method["lora_r"]
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense"):
        a, b = (adapter[f"base_model.model.bert.{name}.lora_{x}.weight"] for x in "AB")
        delta = weights[f"bert.{name}.weight"] - base[f"{name}.weight"]
        assert delta.abs().max() > 1e-4 and torch.allclose(delta, scaling * b @ a, atol=1e-6), name
    assert torch.equal(weights["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])


def test_optimized_graph_has_fused_nodes_and_fp32_parity(full_export):
    """ORTOptimizer's graph fuses attention, skip + LayerNorm and GELU subgraphs: fewer nodes, ops that the
    exported fp32 graph does not have, and the same logits."""
    import onnx

    from toolchain.core.artifacts import load_export

    info = load_export(full_export)
    fp32, optimized = (onnx.load(str(info.variant_file(name))).graph.node for name in ("fp32", "optimized"))
    fp32_ops, fused_ops = {n.op_type for n in fp32}, {n.op_type for n in optimized}
    assert fused_ops & {"Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
                        "BiasGelu", "FastGelu"} - fp32_ops, fused_ops
    assert len(optimized) < 0.7 * len(fp32), (len(optimized), len(fp32))
    assert json.loads((full_export / "report.json").read_text())["parity"]["optimized_vs_pytorch"] < 1e-4


def test_static_int8_graph_holds_quantized_activations(full_export):
    import onnx

    from toolchain.core.artifacts import load_export

    ops = {n.op_type for n in onnx.load(str(load_export(full_export).variant_file("int8-static"))).graph.node}
    assert ops & {"QuantizeLinear", "QLinearMatMul", "QAttention", "QGemm"}
    assert "DynamicQuantizeLinear" not in ops
    sizes = {name: v["bytes"] for name, v in json.loads((full_export / "report.json").read_text())["variants"].items()}
    assert sizes["int8-static"] < 0.5 * sizes["fp32"], sizes


def test_pruned_export_reloads_and_matches_its_onnx(full_export):
    import torch
    from transformers import AutoTokenizer

    from toolchain.core.artifacts import load_export
    from toolchain.export.onnx_export import load_ort_model
    from toolchain.export.prune import load_pruned
    from toolchain.tasks import get_task

    info = load_export(full_export)
    task = get_task(info.task)
    assert info.manifest["pruned"]["intermediate_sizes"] == [32, 32]
    model = load_pruned(full_export / info.manifest["pruned"]["dir"], task)
    assert model.bert.encoder.layer[1].intermediate.dense.weight.shape == (32, 32)
    tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    batch = tokenizer(["profit rose in helsinki .", "the office is on monday ."], padding=True, return_tensors="pt")
    onnx_model = load_ort_model(full_export / "onnx" / "pruned", "model.onnx", task)
    with torch.no_grad():
        diff = (model(**batch).logits - onnx_model(**batch).logits).abs().max().item()
    assert diff < 1e-4


def scramble_int8(job):
    """A deliberately bad 'int8' variant: the classifier's class rows rotated, so every label moves."""
    import copy

    import torch

    from toolchain.export.onnx_export import export_onnx

    bad = copy.deepcopy(job.model)
    with torch.no_grad():
        bad.classifier.weight.copy_(bad.classifier.weight.roll(1, dims=0))
        bad.classifier.bias.copy_(bad.classifier.bias.roll(1, dims=0))
    path = export_onnx(bad, job.onnx_dir("int8"), job.task, None)
    job.variants["int8"] = ("onnx/int8", path.name)


def test_accuracy_gate_trips_on_a_bad_pinned_serve_variant(full_run, tmp_path, monkeypatch):
    from toolchain.core.artifacts import ArtifactError, load_export
    from toolchain.export import pipeline
    from toolchain.export.accuracy_gate import AccuracyGateError
    from toolchain.export.config import load_export_config

    monkeypatch.setitem(pipeline.VARIANT_BUILDERS, "int8", scramble_int8)
    cfg = load_export_config(None, ["variants=fp32,int8", "serve_variant=int8", "latency.rounds=1",
                                    "latency.batch_sizes=1"])
    with pytest.raises(AccuracyGateError, match=r"serve variant 'int8' failed the accuracy gate: .*a drop of"):
        pipeline.export(full_run, tmp_path / "bad", cfg)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    failed = tmp_path / "bad.failed"
    assert (failed / "INCOMPLETE").exists() and "gate failed" in (failed / "INCOMPLETE").read_text()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_export(failed)
    report = json.loads((failed / "report.json").read_text())
    assert report["variants"]["int8"]["test"]["agreement"] < 0.99
    assert report["gates"]["int8"]["passed"] is False and report["gates"]["fp32"]["passed"] is True


def test_auto_falls_back_to_the_next_passing_variant(full_run, tmp_path, monkeypatch):
    """A broken int8 fails the accuracy gate; auto serves a variant that passed, and the report says why."""
    from toolchain.core.artifacts import load_export
    from toolchain.export import pipeline
    from toolchain.export.config import load_export_config

    monkeypatch.setitem(pipeline.VARIANT_BUILDERS, "int8", scramble_int8)
    cfg = load_export_config(None, ["variants=fp32,optimized,int8", "rank_rounds=1", *FAST])
    info = load_export(pipeline.export(full_run, tmp_path / "auto", cfg))
    report = json.loads((info.path / "report.json").read_text())
    selection = report["selection"]
    assert selection["mode"] == "auto" and "int8" in selection["failed"]
    assert info.serve_variant == selection["variant"] == selection["ranked"][0]
    assert set(selection["ranked"]) == {"fp32", "optimized"} and report["gate"]["passed"]
    assert "failed the accuracy gate: int8" in selection["why"]
    rates = {name: selection["served"][name]["32"]["texts_per_s"] for name in selection["ranked"]}
    assert rates[selection["variant"]] == max(rates.values())


def test_auto_fails_only_when_no_variant_passes_and_names_the_closest(full_run, tmp_path, monkeypatch):
    from toolchain.export import pipeline, selection
    from toolchain.export.accuracy_gate import AccuracyGateError
    from toolchain.export.config import load_export_config

    monkeypatch.setitem(pipeline.VARIANT_BUILDERS, "int8", scramble_int8)
    cfg = load_export_config(None, ["variants=fp32,int8", *FAST])
    real_gates = selection.accuracy_gate_verdicts
    monkeypatch.setattr(selection, "accuracy_gate_verdicts", lambda job, rows, metric, gold: {
        name: {**verdict, "passed": False, "problems": [f"forced failure of {name}"]}
        for name, verdict in real_gates(job, rows, metric, gold).items()})
    with pytest.raises(AccuracyGateError,
                       match=r"no variant passed the accuracy gate; the closest is 'fp32'.*export.accuracy_gate"):
        pipeline.export(full_run, tmp_path / "none", cfg)
    assert (tmp_path / "none.failed").is_dir() and not (tmp_path / "none").exists()


def test_cli_exports_and_reports_bad_values(full_run, tmp_path, capsys):
    from toolchain.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(full_run), "--config", "export-default", "--output", str(out), "variants=fp32,int8",
                 "latency.rounds=1", "latency.batch_sizes=1"]) == 0
    assert "int8" in capsys.readouterr().out and (out / "toolchain.yaml").exists()
    assert main(["export", str(full_run), "--output", str(tmp_path / "x"), "variants=fp32,int9"]) == 2
    assert "int9" in capsys.readouterr().err
    assert main(["export", str(full_run), "--output", str(tmp_path / "x"), "prune.amount=1.0"]) == 2
    assert "prune.amount: 1.0 is outside (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_run_dirs_and_unrunnable_presets_leave_nothing(full_run, tmp_path):
    import shutil

    import yaml

    from toolchain.core.artifacts import ArtifactError
    from toolchain.export.config import load_export_config
    from toolchain.export.cpu import detect_cpu
    from toolchain.export.pipeline import export

    incomplete = shutil.copytree(full_run, tmp_path / "incomplete")
    (incomplete / "INCOMPLETE").write_text("killed at step 40\n")
    with pytest.raises(ArtifactError, match="incomplete"):
        export(incomplete, tmp_path / "out")
    future = shutil.copytree(full_run, tmp_path / "future")
    manifest = yaml.safe_load((future / "toolchain.yaml").read_text())
    (future / "toolchain.yaml").write_text(yaml.safe_dump({**manifest, "artifact_version": 99}))
    with pytest.raises(ArtifactError, match="artifact_version 99"):
        export(future, tmp_path / "out")
    missing = next(isa for isa in ("arm64", "avx2", "avx512", "avx512_vnni") if isa not in detect_cpu().runnable())
    with pytest.raises(ConfigError, match=f"quantize.isa={missing!r}"):
        export(full_run, tmp_path / "out", load_export_config(None, [f"quantize.isa={missing}"]))
    with pytest.raises(ConfigError, match="O4"):
        export(full_run, tmp_path / "out", load_export_config(None, ["optimize.level=O4"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future", "incomplete"]


def test_token_classification_run_exports_through_its_task(request, tmp_path):
    """The export is task-generic: a tiny NER run gets ORTModelForTokenClassification variants and f1."""
    from toolchain.core.artifacts import load_export
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    try:
        overrides = request.getfixturevalue("tiny_ner_overrides")
    except pytest.FixtureLookupError:
        pytest.skip("no tiny token-classification fixture in conftest")
    run = train(load_config("ner-conll-full", [*overrides, "train.epochs=2"]))
    cfg = load_export_config(None, ["variants=fp32,int8", "accuracy_gate.max_drop=100", "accuracy_gate.min_agreement=0", *FAST])
    info = load_export(export(run, tmp_path / "ner", cfg))
    report = json.loads((info.path / "report.json").read_text())
    assert info.task == "token-classification" and report["metric"] == "f1"
    assert report["parity"]["fp32_vs_pytorch"] < 1e-4
    assert json.loads((info.variant_dir("int8") / "config.json").read_text())["architectures"] == [
        "BertForTokenClassification"]


def test_the_export_stores_a_temperature_per_variant_and_reports_ece(basic_export):
    import json

    from toolchain.core.artifacts import load_export

    manifest = load_export(basic_export).manifest
    report = json.loads((basic_export / "report.json").read_text())
    assert set(manifest["calibration"]) == {"pytorch", "fp32", "int8"}
    for variant, heads in report["calibration"].items():
        assert heads["main"]["temperature"] == manifest["calibration"][variant]["main"]
        assert heads["main"]["test_ece_before"] >= 0 and heads["main"]["test_ece_after"] >= 0
        assert heads["main"]["dev_items"] == 30 and heads["main"]["test_items"] == 30


def test_the_service_runtime_returns_calibrated_scores(basic_export):
    """OnnxModel divides the logits by the variant's temperature: calibrated probabilities, same labels."""
    import numpy as np

    from toolchain.core.artifacts import load_export
    from toolchain.core.probability import softmax
    from toolchain.inference.runtime import OnnxModel

    info = load_export(basic_export)
    variant = info.serve_variant
    temperature = info.manifest["calibration"][variant]["main"]
    served = OnnxModel(info, variant)
    raw = OnnxModel.from_files(info.variant_file(variant), info.tokenizer_dir, info.max_length, info.labels, variant)
    texts = ["profit rose in helsinki .", "the board met on monday .", "sales fell this quarter ."]
    calibrated, plain = np.stack(served.infer(texts).logits), np.stack(raw.infer(texts).logits)
    assert temperature != 1.0
    np.testing.assert_allclose(calibrated, plain / temperature, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(softmax(calibrated), softmax(plain, temperature), rtol=1e-5, atol=1e-6)
    assert (calibrated.argmax(-1) == plain.argmax(-1)).all()


def test_export_refuses_a_target_it_did_not_write_before_any_work(full_run, tmp_path, monkeypatch):
    """`--output` naming the run itself, `.`, a parent of the current folder or a folder with user files is refused
    before anything is built (export would move it aside and delete it); an export dir, an empty folder or a new
    path is built into."""
    import shutil

    from toolchain.core.artifacts import ArtifactError
    from toolchain.export import pipeline

    class Built(Exception):
        """Raised where the export would start building: the target passed the check."""

    def no_build(job):
        raise Built(str(job.out))

    monkeypatch.setattr(pipeline, "build", no_build)
    run = shutil.copytree(full_run, tmp_path / "runs" / "run")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    failed_user = tmp_path / "out"
    (tmp_path / "out.failed").mkdir()
    (tmp_path / "out.failed" / "notes.txt").write_text("keep me too")
    monkeypatch.chdir(run)
    for target, why in ((run, "the run dir being exported"), (".", "the run dir being exported"),
                        (tmp_path / "runs", "holds the run dir being exported"),
                        (user, "not an export dir"), (failed_user, "out.failed.*not an export dir")):
        with pytest.raises(ArtifactError, match=why):
            pipeline.export(run, target)
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for target in (".", "..", tmp_path / "work"):
        with pytest.raises(ArtifactError, match="current directory"):
            pipeline.export(run, target)
    assert (user / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "out.failed" / "notes.txt").read_text() == "keep me too"
    assert (run / "toolchain.yaml").is_file() and (run / "model").is_dir()
    assert not list(tmp_path.rglob(".*.tmp-*"))                # refused before the temporary build dir
    export_dir = tmp_path / "exports" / "old"
    export_dir.mkdir(parents=True)
    (export_dir / "toolchain.yaml").write_text("artifact_version: 1\nstage: export\nstatus: complete\n")
    empty = tmp_path / "exports" / "empty"
    empty.mkdir()
    for target in (export_dir, empty, tmp_path / "exports" / "new"):
        with pytest.raises(Built):
            pipeline.export(run, target)


def test_a_variant_that_cannot_be_built_is_skipped_and_the_rest_ship(full_run, tmp_path, monkeypatch, capsys):
    """Optimum refuses static int8 of a graph with subgraphs (DeBERTa): that variant is skipped with the
    library's message in the report and the table, and the others are built, gated and ranked."""
    from toolchain.core.artifacts import load_export
    from toolchain.export import pipeline
    from toolchain.export.config import load_export_config

    def refuse(job):
        raise NotImplementedError("Static quantization is currently not supported for models with subgraphs.")

    monkeypatch.setitem(pipeline.VARIANT_BUILDERS, "int8-static", refuse)
    cfg = load_export_config(None, ["variants=fp32,int8,int8-static", "rank_rounds=1", *FAST])
    info = load_export(pipeline.export(full_run, tmp_path / "skip", cfg))
    report = json.loads((info.path / "report.json").read_text())
    assert report["skipped"] == {"int8-static": "NotImplementedError: Static quantization is currently not "
                                                "supported for models with subgraphs."}
    assert set(report["gates"]) == {"fp32", "int8"} and info.serve_variant in ("fp32", "int8")
    assert "int8-static" not in info.manifest["variants"] and not (info.path / "onnx" / "int8-static").exists()
    assert "int8-static skipped: NotImplementedError: Static quantization" in capsys.readouterr().out


def test_pruning_an_unsupported_layout_is_refused_before_any_work(tmp_path):
    """ALBERT shares its layers across blocks: the export refuses 'pruned' before building anything, naming the
    architecture and the layouts it supports."""
    from types import SimpleNamespace

    from transformers import AlbertConfig

    from toolchain.core.errors import ConfigError
    from toolchain.export.prune import check_prunable

    AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64).save_pretrained(tmp_path)
    run = SimpleNamespace(is_peft=False, model_dir=tmp_path, base_model=str(tmp_path), task="sequence-classification")
    with pytest.raises(ConfigError, match="pruning does not support AlbertForSequenceClassification.*supports the "
                                          "block layouts of BERT, RoBERTa.*DistilBERT, MPNet, DeBERTa-v2"):
        check_prunable(run)
