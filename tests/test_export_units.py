"""Export building blocks on a tiny BERT: config checks, CPU detection, pruning + reload, latency, accuracy gate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.core.config import PRESET_DIR, ConfigError

CPUINFO_AVX2 = "processor : 0\nflags : fpu sse sse2 avx avx2 fma\n"
CPUINFO_VNNI = "processor : 0\nflags : fpu avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("export-*.yaml")))
def test_every_export_preset_loads_and_names_its_command(preset):
    from toolchain.export.config import load_export_config

    cfg = load_export_config(preset)
    assert cfg.kind == "export" and cfg.serve_variant in ("auto", *cfg.variant_list())
    first = (PRESET_DIR / f"{preset}.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# toolchain export --config {preset} ")


@pytest.mark.parametrize("override, named", [
    ("prune.amount=1.5", "1.5"), ("prune.amount=0", "prune.amount"), ("prune.amount=-0.2", "-0.2"),
    ("variants=fp32,int4", "int4"), ("serve_variant=fp16", "fp16"), ("quantize.isa=sse4", "sse4"),
    ("latency.batch_sizes=1,x", "1,x"), ("prune.amuont=0.3", "prune.amount"),
])
def test_bad_export_options_fail_naming_the_value(override, named):
    from toolchain.export.config import load_export_config

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_export_config(None, [override])


def test_pruned_serve_variant_needs_pruning():
    from toolchain.export.config import load_export_config

    with pytest.raises(ConfigError, match="pruned-int8"):
        load_export_config(None, ["serve_variant=pruned-int8"])
    cfg = load_export_config(None, ["serve_variant=pruned-int8", "prune.amount=0.4"])
    assert cfg.variant_list()[-2:] == ["pruned", "pruned-int8"]


def test_run_config_preset_is_refused_as_export_config():
    from toolchain.export.config import load_export_config

    with pytest.raises(ConfigError, match="not an export config"):
        load_export_config("sentiment-full")


def test_cpu_detection_and_preset_choice(tmp_path):
    from toolchain.export.cpu import choose_preset, detect_cpu

    (tmp_path / "avx2").write_text(CPUINFO_AVX2)
    (tmp_path / "vnni").write_text(CPUINFO_VNNI)
    avx2 = detect_cpu(str(tmp_path / "avx2"), machine="x86_64")
    vnni = detect_cpu(str(tmp_path / "vnni"), machine="x86_64")
    arm = detect_cpu(str(tmp_path / "missing"), machine="aarch64")
    assert (avx2.isa, avx2.has_vnni, vnni.isa, vnni.has_vnni, arm.isa) == ("avx2", False, "avx512_vnni", True, "arm64")
    assert choose_preset("auto", avx2) == "avx2" and choose_preset("avx2", vnni) == "avx2"
    with pytest.raises(ConfigError, match="avx512_vnni.*cannot run"):
        choose_preset("avx512_vnni", avx2)
    with pytest.raises(ConfigError, match="avx2"):
        choose_preset("avx2", arm)


def test_reduce_range_only_where_signed_weights_meet_no_vnni(tmp_path):
    from toolchain.export.config import QuantizeConfig
    from toolchain.export.cpu import detect_cpu
    from toolchain.export.quantize import quantization_config

    (tmp_path / "avx512").write_text("processor : 0\nflags : fpu avx2 avx512f avx512bw\n")
    (tmp_path / "vnni").write_text(CPUINFO_VNNI)
    plain, vnni = (detect_cpu(str(tmp_path / name), machine="x86_64") for name in ("avx512", "vnni"))
    assert plain.isa == "avx512" and not plain.has_vnni
    assert quantization_config(QuantizeConfig(), "avx2", False, plain).reduce_range is False  # uint8 weights
    assert quantization_config(QuantizeConfig(), "avx512", False, plain).reduce_range is True
    assert quantization_config(QuantizeConfig(), "avx512", False, vnni).reduce_range is False
    assert quantization_config(QuantizeConfig(reduce_range=True), "avx2", False, plain).reduce_range is True


def classification_pair(n: int, ref_wrong: list[int], cand_wrong: list[int], classes: int = 3):
    """Gold labels for n items, and reference/candidate predictions wrong exactly at the given items."""
    from toolchain.export.accuracy_gate import PairedUnits

    gold = np.arange(n) % classes
    ref, cand = gold.copy(), gold.copy()
    ref[ref_wrong] = (gold[ref_wrong] + 1) % classes
    cand[cand_wrong] = (gold[cand_wrong] + 1) % classes
    return PairedUnits("classification", gold, ref, cand, classes)


def verdict(units, metric="accuracy", agreement=1.0, **kw):
    from toolchain.export.accuracy_gate import AccuracyGateCriteria, judge

    criteria = AccuracyGateCriteria(metric, kw.get("max_drop", 1.0), kw.get("alpha", 0.05),
                                    kw.get("min_agreement", 0.0), resamples=500)
    return judge("int8", units, agreement, criteria)


def test_accuracy_gate_passes_a_variant_as_accurate_that_changes_3_of_240_labels():
    """The case that stopped the main job: int8 changed 3 of 240 test labels (98.75% agreement), 2 for the
    better; the old 99% agreement rule failed it although it was more accurate than fp32."""
    fp32_wrong = list(range(10))                       # fp32: 230/240 right
    int8_wrong = fp32_wrong[2:] + [200]                # int8 fixes 2 of them, breaks 1 other: 231/240
    units = classification_pair(240, fp32_wrong, int8_wrong)
    result = verdict(units, agreement=237 / 240)
    assert result["passed"], result["problems"]
    assert result["drop_points"] == pytest.approx(-100 / 240)
    assert (result["reference_only_right"], result["candidate_only_right"]) == (1, 2)
    # equally accurate, 4 labels swapped each way: still passes, for macro-F1 (bootstrap) too
    swapped = classification_pair(240, list(range(4)), list(range(100, 104)))
    assert verdict(swapped)["passed"] and verdict(swapped, "macro_f1")["passed"]


def test_accuracy_gate_fails_a_two_point_drop_whatever_the_agreement_says():
    units = classification_pair(240, list(range(10)), list(range(15)))    # 5 more wrong: -2.08 points
    result = verdict(units, agreement=235 / 240)
    assert not result["passed"] and result["drop_points"] == pytest.approx(500 / 240)
    assert "a drop of 2.08 points" in result["problems"][0]
    assert not verdict(units, "macro_f1")["passed"]


def test_accuracy_gate_fails_a_small_but_significant_drop_on_a_large_test_set():
    """0.5 points on 20,000 items is within max_drop but far beyond chance: 100 discordant items, all against."""
    units = classification_pair(20_000, [], list(range(100)))
    result = verdict(units)
    assert result["drop_points"] == pytest.approx(0.5) and result["p_value"] < 1e-20
    assert not result["passed"] and "significantly worse" in result["problems"][0]
    assert verdict(units, alpha=0)["passed"]          # the significance test can be turned off


def test_accuracy_gate_agreement_floor_still_available():
    units = classification_pair(240, [], [])
    assert "label agreement" in verdict(units, agreement=0.95, min_agreement=0.99)["problems"][0]


def test_entity_counts_give_seqeval_scores():
    from toolchain.export.accuracy_gate import entity_metric
    from toolchain.tasks.token_classification import entity_counts
    from toolchain.tasks.token_classification import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"], ["O", "B-PER", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "O"], ["O", "I-PER", "B-LOC"]]
    counts = entity_counts(gold, pred, ["LOC", "ORG", "PER"])
    expected = entity_metrics(gold, pred)
    for name in ("f1", "precision", "recall", "macro_f1"):
        assert entity_metric(name, counts) == pytest.approx(expected[name]), name


def test_interleaved_latency_reports_every_variant_and_batch():
    import time

    from toolchain.core.measure import measure_interleaved

    calls = []
    runners = {"fast": lambda b: calls.append("fast"), "slow": lambda b: (time.sleep(0.002), calls.append("slow"))}
    result = measure_interleaved(runners, {1: [{}], 8: [{}, {}]}, rounds=5, warmup=1)
    assert set(result) == {"fast", "slow"} and set(result["fast"]) == {1, 8}
    assert result["slow"][1]["median_ms"] > result["fast"][1]["median_ms"]
    assert result["fast"][8]["calls"] == 5 and result["slow"][1]["p95_ms"] >= result["slow"][1]["median_ms"]
    assert calls.count("fast") == calls.count("slow") == 2 * 1 + 2 * 5  # (warm-up + rounds) per batch size


@pytest.fixture(scope="module")
def tiny_classifier(tiny_bert, tiny_data):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolchain.core.config import DataConfig
    from toolchain.data.dataset import read_file

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    dev = read_file(DataConfig(), str(tiny_data["dev"]))
    return model, tokenizer, dev


def pruned_copy(tiny_classifier, amount=0.5):
    import copy

    from toolchain.export.prune import importance_scores, prune_model
    from toolchain.export.recovery import labelled_batches
    from toolchain.tasks import get_task

    model, tokenizer, dev = tiny_classifier
    task = get_task("sequence-classification")
    batches = labelled_batches(task, tokenizer, dev, ["negative", "neutral", "positive"], 32, 8)
    student = copy.deepcopy(model)
    heads, ffn = importance_scores(student, batches)
    assert heads.shape == (2, 4) and [f.shape[0] for f in ffn] == [64, 64] and (heads > 0).any()
    return student, prune_model(student, heads, ffn, amount), task


SILENT_HEADS = {0: [1, 3], 1: [0, 2]}                                  # of 4 heads a layer
SILENT_NEURONS = {0: list(range(0, 64, 2)), 1: list(range(16, 48))}    # of 64 FFN neurons a layer


def silenced_copy(tiny_classifier):
    """A copy of the classifier in which some heads and FFN neurons contribute nothing: their columns of the
    output projection are zero, so removing them cannot change the logits and their Taylor importance is 0."""
    import copy

    import torch

    model = copy.deepcopy(tiny_classifier[0])
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            for head in SILENT_HEADS[i]:
                layer.attention.output.dense.weight[:, head * 8:(head + 1) * 8] = 0
            layer.output.dense.weight[:, SILENT_NEURONS[i]] = 0
    return model


def importance_of(model, tiny_classifier):
    from toolchain.export.prune import importance_scores
    from toolchain.export.recovery import labelled_batches
    from toolchain.tasks import get_task

    _, tokenizer, dev = tiny_classifier
    batches = labelled_batches(get_task("sequence-classification"), tokenizer, dev,
                               ["negative", "neutral", "positive"], 32, 8)
    return importance_scores(model, batches)


def test_taylor_importance_is_zero_exactly_for_units_that_contribute_nothing(tiny_classifier):
    heads, ffn = importance_of(silenced_copy(tiny_classifier), tiny_classifier)
    for i in (0, 1):
        silent = np.isin(np.arange(4), SILENT_HEADS[i])
        assert (heads[i].numpy()[silent] == 0).all() and (heads[i].numpy()[~silent] > 0).all(), heads[i]
        silent = np.isin(np.arange(64), SILENT_NEURONS[i])
        assert (ffn[i].numpy()[silent] == 0).all() and (ffn[i].numpy()[~silent] > 0).all()


def test_pruning_removes_exactly_the_lowest_scored_heads_and_neurons(tiny_classifier):
    """On a model whose least important units are known (they contribute nothing), pruning half of each layer
    removes exactly those: the kept rows and columns are the others', and the encoder's output does not move
    (pruning as many of the highest-scored units moves it)."""
    import copy

    import torch

    from toolchain.export.prune import prune_model

    _, tokenizer, dev = tiny_classifier
    silenced = silenced_copy(tiny_classifier)
    heads, ffn = importance_of(silenced, tiny_classifier)
    student = copy.deepcopy(silenced)
    plan = prune_model(student, heads, ffn, 0.5)
    assert plan["pruned_heads"] == {str(i): v for i, v in SILENT_HEADS.items()} and plan["heads_after"] == 4
    assert plan["intermediate_sizes"] == [32, 32]
    for i, (before, after) in enumerate(zip(silenced.bert.encoder.layer, student.bert.encoder.layer)):
        kept_dims = [d for h in range(4) if h not in SILENT_HEADS[i] for d in range(h * 8, (h + 1) * 8)]
        for name in ("query", "key", "value"):
            kept_rows = getattr(before.attention.self, name).weight[kept_dims]
            assert torch.equal(getattr(after.attention.self, name).weight, kept_rows), (i, name)
        assert torch.equal(after.attention.output.dense.weight, before.attention.output.dense.weight[:, kept_dims])
        kept = [n for n in range(64) if n not in SILENT_NEURONS[i]]
        assert torch.equal(after.intermediate.dense.weight, before.intermediate.dense.weight[kept])
        assert torch.equal(after.output.dense.weight, before.output.dense.weight[:, kept])
    batch = tokenizer([ex.text for ex in dev[:8]], padding=True, return_tensors="pt")
    wrong = copy.deepcopy(silenced)  # the same amount, but the highest-scored units
    prune_model(wrong, -heads, [-scores for scores in ffn], 0.5)
    with torch.no_grad():
        reference = silenced.bert(**batch).last_hidden_state
        moved = (student.bert(**batch).last_hidden_state - reference).abs().max().item()
        moved_wrong = (wrong.bert(**batch).last_hidden_state - reference).abs().max().item()
    assert moved < 1e-6 and moved_wrong > 1e-3, (moved, moved_wrong)


def test_pruning_keeps_one_head_per_layer(tiny_classifier):
    student, plan, _ = pruned_copy(tiny_classifier, 0.95)
    assert all(len(v) == 3 for v in plan["pruned_heads"].values()) and plan["heads_after"] == 2
    assert plan["intermediate_sizes"] == [3, 3]


def test_pruned_model_reloads_and_exports_with_parity(tiny_classifier, tmp_path):
    import onnx
    import torch

    from toolchain.export.onnx_export import export_onnx, load_ort_model
    from toolchain.export.prune import load_pruned, save_pruned

    student, plan, task = pruned_copy(tiny_classifier, 0.5)
    _, tokenizer, dev = tiny_classifier
    save_pruned(student, plan, tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "pruning.json").read_text())["intermediate_sizes"] == [32, 32]
    reloaded = load_pruned(tmp_path / "pruned", task)
    batch = tokenizer([ex.text for ex in dev[:6]], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = student(**batch).logits.numpy()
        assert np.abs(reloaded(**batch).logits.numpy() - expected).max() < 1e-6
    path = export_onnx(reloaded, tmp_path / "onnx", task, None)
    shapes = {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
    assert (32, 32) in shapes and (32, 64) not in shapes and (64, 32) not in shapes
    onnx_logits = load_ort_model(tmp_path / "onnx", path.name, task)(**batch).logits.numpy()
    assert np.abs(onnx_logits - expected).max() < 1e-4
