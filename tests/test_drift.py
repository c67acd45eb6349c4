"""Drift references written by the export and read by the service (without a server).

The export under test is the session's tiny ``toolchain build`` (fp32 + int8): every variant's folder holds
``drift_reference.json``, listed in the checksum manifest, whose figures are recomputed here independently
(the train file's labels, the serving runtime's scores on dev, the tokenizer's tokens as plain sets).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_serve_support import built  # noqa: F401  (session fixture)
from toolchain.core.artifacts import ArtifactError, load_export
from toolchain.inference.drift import (REFERENCE_FILE, DriftMonitor, count_tokens, drift_monitor, load_reference,
                                   serving_tokenizer)
from toolchain.serve.metrics import model_version, service_metrics


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference_of(export_dir: Path, variant: str) -> dict:
    entry = load_export(export_dir).manifest["variants"][variant]
    return json.loads((export_dir / entry["dir"] / REFERENCE_FILE).read_text())


def word_tokens(tokenizer_file: Path, texts: list[str]) -> list[list[int]]:
    """Token ids per text without [CLS]/[SEP], straight from the tokenizer (independent of drift.py)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    specials = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    return [[i for i in enc.ids if i not in specials] for enc in tokenizer.encode_batch(texts)]


def test_every_variant_has_a_reference_in_the_checksum_manifest(built):
    export = load_export(built.export_dir)
    export.verify()
    for variant, entry in export.manifest["variants"].items():
        rel = f"{entry['dir']}/{REFERENCE_FILE}"
        assert rel in export.manifest["files"], rel
        assert reference_of(built.export_dir, variant)["variant"] == variant
    assert "drift reference: train labels" in built.output   # the export's summary line


def test_label_shares_are_the_train_split_labels(built, tiny_data):
    counts = Counter(row["label"] for row in read_jsonl(tiny_data["train"]))
    reference = reference_of(built.export_dir, load_export(built.export_dir).serve_variant)
    assert reference["labels"] == pytest.approx({k: v / sum(counts.values()) for k, v in counts.items()})
    assert reference["label_source"] == {"split": "train", "examples": sum(counts.values())}


def test_confidence_is_the_served_variant_scoring_dev(built, tiny_data):
    from toolchain.serve.classify import results
    from toolchain.inference.runtime import OnnxModel

    export = load_export(built.export_dir)
    texts = [row["text"] for row in read_jsonl(tiny_data["dev"])]
    for variant in export.variant_names():
        model = OnnxModel(export, variant)
        output = model.infer(texts)
        scores = np.array([p.score for p in results(texts, output.logits, output.encodings, model.labels,
                                                    output.truncated)])
        confidence = reference_of(built.export_dir, variant)["confidence"]
        assert confidence["examples"] == len(texts)
        assert confidence["mean"] == pytest.approx(scores.mean(), abs=1e-6)
        assert confidence["low_share"] == pytest.approx(np.mean(scores < confidence["low_below"]))


def test_token_vocabulary_is_the_training_texts_tokens(built, tiny_data):
    tokenizer_file = built.export_dir / "tokenizer" / "tokenizer.json"
    train = word_tokens(tokenizer_file, [row["text"] for row in read_jsonl(tiny_data["train"])])
    dev = [t for ids in word_tokens(tokenizer_file, [row["text"] for row in read_jsonl(tiny_data["dev"])]) for t in ids]
    seen = {t for ids in train for t in ids}
    tokens = reference_of(built.export_dir, "fp32")["tokens"]
    assert set(tokens["seen_ids"]) == seen
    assert tokens["counted"] == len(dev)
    assert tokens["unseen_share"] == pytest.approx(sum(t not in seen for t in dev) / len(dev))
    report = json.loads((built.export_dir / "report.json").read_text())
    assert report["drift_reference"]["unseen_token_share"] == tokens["unseen_share"]


def test_count_tokens_skips_special_tokens_and_counts_unseen_ones(built):
    from tokenizers import Tokenizer

    export = load_export(built.export_dir)
    tokenizer = Tokenizer.from_file(str(export.tokenizer_dir / "tokenizer.json"))
    reference = load_reference(export, "fp32", serving_tokenizer(export))
    encodings = tokenizer.encode_batch(["profit rose in helsinki .", "the striker scored twice in madrid"])
    seen, unseen = count_tokens(encodings, reference.codes)
    in_domain = len(encodings[0].ids) - 2
    assert (seen, unseen) == (in_domain + 2, len(encodings[1].ids) - 2 - 2)   # "the" and "in" are training words


def copy_export(built, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(built.export_dir, copy)
    return copy


def reference_path(export_dir: Path, variant: str = "fp32") -> Path:
    return export_dir / load_export(export_dir).manifest["variants"][variant]["dir"] / REFERENCE_FILE


def remove_reference(export_dir: Path, variant: str) -> None:
    """Make ``export_dir`` look like an export from before drift references: no file, no manifest entry."""
    path = reference_path(export_dir, variant)
    path.unlink(missing_ok=True)
    manifest = yaml.safe_load((export_dir / "toolchain.yaml").read_text())
    del manifest["files"][str(path.relative_to(export_dir))]
    (export_dir / "toolchain.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def test_an_altered_or_unlisted_reference_stops_start_up(built, tmp_path):
    copy = copy_export(built, tmp_path)
    path = reference_path(copy)
    data = json.loads(path.read_text())
    data["tokens"]["unseen_share"] = 0.5
    path.write_text(json.dumps(data))
    export = load_export(copy)
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_reference(export, "fp32", serving_tokenizer(export))
    manifest = yaml.safe_load((copy / "toolchain.yaml").read_text())
    del manifest["files"][str(path.relative_to(copy))]
    (copy / "toolchain.yaml").write_text(yaml.safe_dump(manifest))
    export = load_export(copy)
    with pytest.raises(ArtifactError, match="not in the export's checksum manifest"):
        load_reference(export, "fp32", serving_tokenizer(export))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(reference_version=7), "reference_version 7 is not supported"),
    (lambda d: d["labels"].pop("neutral"), "labels ['negative', 'positive'] differ from the model's"),
    (lambda d: d["confidence"].update(mean=1.5), "confidence: mean must be a share in [0, 1], got 1.5"),
    (lambda d: d["tokens"]["seen_ids"].append(10 ** 9), "tokens.seen_ids must be token ids"),
    (lambda d: d.pop("tokens"), "missing section 'tokens'"),
])
def test_a_malformed_reference_is_refused_naming_the_field(built, tmp_path, change, message):
    from toolchain.core.artifacts import sha256_file

    copy = copy_export(built, tmp_path)
    path = reference_path(copy)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    manifest = yaml.safe_load((copy / "toolchain.yaml").read_text())
    manifest["files"][str(path.relative_to(copy))] = sha256_file(path)   # a consistent but wrong file
    (copy / "toolchain.yaml").write_text(yaml.safe_dump(manifest))
    export = load_export(copy)
    with pytest.raises(ArtifactError) as info:
        load_reference(export, "fp32", serving_tokenizer(export))
    assert message in str(info.value) and str(path) in str(info.value)


def test_an_export_without_a_reference_has_no_drift_signals(built, tmp_path):
    from prometheus_client import REGISTRY

    from toolchain.inference.runtime import OnnxModel

    copy = copy_export(built, tmp_path)
    reference_path(copy, "int8").unlink()
    with pytest.raises(ArtifactError, match="drift_reference.json: listed in the checksum manifest but missing"):
        OnnxModel(load_export(copy), "int8")          # a listed file that is gone is a broken export
    remove_reference(copy, "int8")                    # an export from before drift references
    model = OnnxModel(load_export(copy), "int8")
    monitor = drift_monitor(service_metrics(), model)
    assert monitor.reference is None
    assert REGISTRY.get_sample_value("toolchain_drift_reference", {"task": "sequence-classification"}) == 0
    before = REGISTRY.get_sample_value("toolchain_drift_tokens_total",
                                       {"task": "sequence-classification", "vocabulary": "unseen"})
    monitor.observe([0.1], model.infer(["the striker scored"]).encodings)
    assert REGISTRY.get_sample_value("toolchain_drift_tokens_total",
                                     {"task": "sequence-classification", "vocabulary": "unseen"}) == before


def test_the_monitor_counts_low_confidence_and_unseen_tokens(built):
    from prometheus_client import REGISTRY

    from toolchain.inference.runtime import OnnxModel

    model = OnnxModel(load_export(built.export_dir), "fp32")
    metrics = service_metrics()
    monitor = DriftMonitor(metrics, "test-task", load_reference(model.export, "fp32", serving_tokenizer(model.export)))
    value = lambda name, **labels: REGISTRY.get_sample_value(name, {"task": "test-task", **labels})  # noqa: E731
    assert value("toolchain_drift_reference") == 1 and value("toolchain_low_confidence_predictions_total") == 0
    assert value("toolchain_reference_label_share", label="neutral") == pytest.approx(1 / 3)
    encodings = model.infer(["profit rose in helsinki .", "the striker scored twice in madrid"]).encodings
    seen, unseen = count_tokens(encodings, monitor.reference.codes)
    monitor.observe([0.55, 0.95], encodings)
    assert value("toolchain_low_confidence_predictions_total") == 1       # 0.55 < 0.6
    assert value("toolchain_drift_tokens_total", vocabulary="seen") == seen
    assert value("toolchain_drift_tokens_total", vocabulary="unseen") == unseen > 0


class _Tag:
    version = "abc123-def456-int8"


class _BentoModel:
    tag = _Tag()


def test_model_version_prefers_the_setting_then_the_bento_tag_then_the_config_hash():
    assert model_version("2024.06-rc1", _BentoModel(), "0123456789abcdef") == "2024.06-rc1"
    assert model_version(None, _BentoModel(), "0123456789abcdef") == "abc123-def456-int8"
    assert model_version("", None, "0123456789abcdef") == "01234567"
