"""The drift reference of a model with a topic head: label shares and confidence of its main head."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_drift import read_jsonl, reference_of, word_tokens
from test_joint import joint_export, joint_run  # noqa: F401  (module fixtures)
from toolchain.core.artifacts import load_export


def test_a_joint_models_reference_covers_its_main_head(joint_export, tiny_data, tiny_topic_data):
    from toolchain.serve.classify import results
    from toolchain.inference.runtime import OnnxModel

    export = load_export(joint_export)
    reference = reference_of(joint_export, export.serve_variant)
    main_train = [row["label"] for row in read_jsonl(tiny_data["train"])]
    assert reference["labels"] == pytest.approx({label: main_train.count(label) / len(main_train)
                                                 for label in set(main_train)})   # no topic class, repeats alike
    texts = [row["text"] for row in read_jsonl(tiny_data["dev"])]
    model = OnnxModel(export, export.serve_variant)
    output = model.infer(texts)
    scores = [p.score for p in results(texts, output.logits, output.encodings, model.labels, output.truncated)]
    assert reference["confidence"]["examples"] == len(texts)     # the main head's dev examples only
    assert reference["confidence"]["mean"] == pytest.approx(np.mean(scores), abs=1e-6)
    tokenizer_file = joint_export / "tokenizer" / "tokenizer.json"
    topic_tokens = {t for ids in word_tokens(tokenizer_file, [r["text"] for r in read_jsonl(tiny_topic_data["train"])])
                    for t in ids}
    assert topic_tokens <= set(reference["tokens"]["seen_ids"])   # every training text, the topic set's too
    report = json.loads((joint_export / "report.json").read_text())
    assert set(report["drift_reference"]["confidence"]) == set(export.variant_names())
