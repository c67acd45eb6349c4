"""Offline augmentation: EDA operations, masked-LM replacement, determinism under a seed, the run hook."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import yaml

from toolchain.cli import main
from toolchain.core.config import AugmentConfig, ConfigError, load_config
from toolchain.data.augment import augment_examples, eda_delete, eda_insert, eda_swap
from toolchain.data.readers import Example

SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period".split()


def test_swap_keeps_the_words_and_changes_their_order():
    out = eda_swap(SENTENCE, random.Random(3), 0.2)
    assert Counter(out) == Counter(SENTENCE) and out != SENTENCE


def test_delete_removes_words_and_never_empties_a_sentence():
    out = eda_delete(SENTENCE, random.Random(1), 0.3)
    assert 0 < len(out) < len(SENTENCE) and all(w in SENTENCE for w in out)
    assert eda_delete(["profit"], random.Random(1), 0.9) == ["profit"]
    assert len(eda_delete(["a", "b"], random.Random(0), 0.99)) >= 1


def test_insert_adds_copies_of_the_sentences_own_words():
    out = eda_insert(SENTENCE, random.Random(2), 0.2)
    assert len(out) == len(SENTENCE) + round(0.2 * len(SENTENCE)) and set(out) == set(SENTENCE)


def examples(n=20):
    return [Example(f"sales rose {i} percent in the quarter said the company", "positive", f"f:{i}") for i in range(n)]


def test_eda_is_deterministic_under_a_seed_and_varies_with_it():
    cfg = AugmentConfig(method="eda", copies=2, p=0.2)
    first, again, other = (augment_examples(examples(), cfg, seed) for seed in (7, 7, 8))
    assert [e.text for e in first] == [e.text for e in again]
    assert [e.text for e in first] != [e.text for e in other]
    assert len(first) == 40 and all(e.label == "positive" for e in first)
    assert first[0].location == "f:0+eda1" and first[1].location == "f:0+eda2"
    assert sum(e.text != examples()[0].text for e in first) > 30


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 2-layer BERT with a masked-LM head (random weights) and the packaged tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from toolchain.inference.modeling import packaged_model_dir

    path = tmp_path_factory.mktemp("tiny-mlm")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_mlm_replaces_words_keeps_numbers_and_is_seeded(tiny_mlm):
    cfg = AugmentConfig(method="mlm", copies=1, p=0.3, mlm_model=str(tiny_mlm))
    first = augment_examples(examples(5), cfg, 11)
    assert [e.text for e in first] == [e.text for e in augment_examples(examples(5), cfg, 11)]
    for original, augmented in zip(examples(5), first):
        before, after = original.text.split(), augmented.text.split()
        assert len(before) == len(after)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert changed, augmented.text
        assert before[2] == after[2]   # the number is never replaced
        assert all(after[i].isalpha() for i in changed)


def test_mlm_needs_a_masked_lm_head(tiny_bert):
    cfg = AugmentConfig(method="mlm", copies=1, p=0.3, mlm_model=str(tiny_bert))
    with pytest.raises(ConfigError, match="no masked-LM head"):
        augment_examples(examples(2), cfg, 1)


@pytest.mark.parametrize("overrides,message", [
    (["augment.method=mlm"], "augment.mlm_model"),
    (["augment.method=eda", "model.task=token-classification"], "augment.method"),
    (["augment.method=backtranslate"], "augment.method"),
])
def test_bad_augment_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sentiment-full", overrides)


def test_a_run_trains_on_the_augmented_copies(tiny_overrides, tmp_path):
    assert main(["train", "--config", "sentiment-full", *tiny_overrides, "augment.method=eda", "augment.copies=2",
                 "train.epochs=1"]) == 0
    run = tmp_path / "run"
    files = yaml.safe_load((run / "toolchain.yaml").read_text())["data_files"]
    assert files["augment"]["examples"] == 2 * files["train"]["examples"] == 240
    steps = json.loads((run / "metrics.json").read_text())["train"]["global_step"]
    assert steps == 360 // 8   # 120 originals + 240 copies, batch 8, one epoch
