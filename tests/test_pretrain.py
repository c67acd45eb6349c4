"""`toolchain pretrain`: corpus blocks, masked-LM training, the new base model, resume, presets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import NEGATIVE, NEUTRAL, POSITIVE
from toolchain.core.artifacts import ArtifactError
from toolchain.core.config import PRESET_DIR, ConfigError, RunConfig, load_config
from toolchain.data.readers import DataError
from toolchain.pretrain import PretrainConfig, load_preset_config, load_pretrain_config, resume_config
from toolchain.pretrain.corpus import chunk_blocks, read_corpus, split_documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Twelve 'documents' of finance phrases, one a line (with blank lines to skip)."""
    phrases = POSITIVE + NEGATIVE + NEUTRAL
    lines = [" ".join(phrases[(i + j) % len(phrases)] + " ." for j in range(30)) for i in range(12)]
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def tiny_pretrain_config(tiny_bert: Path, corpus: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_pretrain_config("pretrain-fomc", [
        f"base={tiny_bert}", f"data.train={corpus}", f"output_dir={out}", "data.max_length=32",
        "data.dev_fraction=0.2", "train.max_steps=6", "train.batch_size=8", "train.eval_steps=3",
        "train.logging_steps=1", "train.learning_rate=1e-3", "train.warmup_ratio=0", *extra])


# --------------------------------------------------------------------------- corpus

def test_read_corpus_skips_blank_lines_and_names_bad_files(corpus, tmp_path):
    assert len(read_corpus(corpus)) == 12 and len(read_corpus(corpus, max_documents=5)) == 5
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_corpus(tmp_path / "missing.txt")
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"fine line\nna\xefve\n")
    with pytest.raises(DataError, match=r"latin.txt:2: not valid utf-8"):
        read_corpus(bad)


def test_documents_split_and_chunk_into_blocks(tiny_bert, corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    documents = read_corpus(corpus)
    train, dev = split_documents(documents, 0.2, seed=13)
    assert len(dev) == 2 and sorted(train + dev) == sorted(documents)
    blocks = chunk_blocks(tokenizer, documents[:1], max_length=32, min_block=4)
    n_tokens = len(tokenizer(documents[0], add_special_tokens=False)["input_ids"])
    assert all(len(b["input_ids"]) <= 32 for b in blocks)
    assert sum(len(b["input_ids"]) - 2 for b in blocks) == n_tokens  # every token kept (tail >= 4 tokens)
    assert all(b["input_ids"][0] == tokenizer.cls_token_id and b["input_ids"][-1] == tokenizer.sep_token_id
               for b in blocks)


# --------------------------------------------------------------------------- training, base model, resume

@pytest.fixture(scope="module")
def pretrained(tiny_bert, corpus, tmp_path_factory) -> Path:
    from toolchain.pretrain.trainer import pretrain

    out = tmp_path_factory.mktemp("pretrain") / "out"
    return pretrain(tiny_pretrain_config(tiny_bert, corpus, out, "masking.whole_word=true"))


def test_pretrain_writes_a_complete_base_model(pretrained):
    manifest = yaml.safe_load((pretrained / "toolchain.yaml").read_text())
    assert manifest["stage"] == "pretrain" and manifest["status"] == "complete"
    assert not (pretrained / "INCOMPLETE").exists()
    model_dir = pretrained / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in model_dir.iterdir()}
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 6 and metrics["masking"]["whole_word"] is True
    before, after = metrics["dev"]["before"]["loss"], metrics["dev"]["after"]["loss"]
    assert after < before, metrics["dev"]  # the held-out masked-LM loss went down


def test_train_accepts_the_pretrained_base(pretrained, tiny_ner_overrides):
    from toolchain.train.runner import train

    cfg = load_config("ner-conll-full", tiny_ner_overrides + [f"model.base={pretrained / 'model'}",
                                                              "train.max_steps=4"])
    run_dir = train(cfg, overwrite=True)
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["base_model"] == str((pretrained / "model").resolve())
    assert manifest["label_source"] == "train data"


def test_interrupted_pretraining_resumes_from_its_checkpoint(tiny_bert, corpus, tmp_path, monkeypatch):
    from toolchain.pretrain import trainer as module

    out = tmp_path / "out"
    original = module.MaskedLMTrainer.training_step

    def interrupt_during_step_5(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(module.MaskedLMTrainer, "training_step", interrupt_during_step_5)
    with pytest.raises(KeyboardInterrupt):
        module.pretrain(tiny_pretrain_config(tiny_bert, corpus, out))
    monkeypatch.setattr(module.MaskedLMTrainer, "training_step", original)
    assert (out / "INCOMPLETE").exists() and (out / "checkpoints" / "checkpoint-3").is_dir()
    assert not (out / "model").exists()
    module.pretrain(resume_config(out), resume=True)
    history = json.loads((out / "history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-3 from the checkpoint, 4-6 after resuming
    assert yaml.safe_load((out / "toolchain.yaml").read_text())["status"] == "complete"
    with pytest.raises(ArtifactError, match="already complete"):
        resume_config(out)


# --------------------------------------------------------------------------- presets and CLI

def test_presets_load_with_the_class_their_kind_names():
    presets = sorted(PRESET_DIR.glob("ner-*.yaml")) + sorted(PRESET_DIR.glob("pretrain-*.yaml"))
    assert presets
    for path in presets:
        first = path.read_text().splitlines()[0]
        cfg = load_preset_config(path.stem)
        if path.stem.startswith("pretrain-"):
            assert isinstance(cfg, PretrainConfig) and first.startswith(f"# toolchain pretrain --config {path.stem}")
        else:
            assert isinstance(cfg, RunConfig) and cfg.model.task == "token-classification"
            assert first.startswith(f"# toolchain train --config {path.stem}") and cfg.train.metric == "f1"


def test_pretrain_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="masking.whole_word: expected true/false"):
        load_pretrain_config("pretrain-fomc", ["masking.whole_word=maybe"])
    with pytest.raises(ConfigError, match="unknown config key 'kind'"):
        load_config("pretrain-fomc")  # a RunConfig loader refuses a pretrain preset, naming the key
    with pytest.raises(ConfigError, match="kind 'export'"):
        load_preset_config("export-default")


def test_cli_pretrain_requires_a_config(capsys):
    from toolchain.cli import main

    assert main(["pretrain"]) == 2
    assert "give --config PRESET" in capsys.readouterr().err


def test_corpus_from_several_files_without_the_excluded_test_sentences(tmp_path):
    from toolchain.pretrain.corpus import drop_excluded, read_corpora

    tweets = tmp_path / "tweets.jsonl"
    tweets.write_text('{"text": "Stocks rally as yields fall", "label": "Markets"}\n\n{"text": "Fed holds rates"}\n')
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Operating profit rose to EUR 13.1 mn .\nThe board met on Monday .\n")
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "operating profit rose  to EUR 13.1 mn .", "label": "positive"}\n')
    documents = read_corpora(f"{tweets},{sentences}")
    assert documents == ["Stocks rally as yields fall", "Fed holds rates", "Operating profit rose to EUR 13.1 mn .",
                         "The board met on Monday ."]
    kept, dropped = drop_excluded(documents, str(test))
    assert dropped == 1 and "Operating profit rose to EUR 13.1 mn ." not in kept and len(kept) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: a record needs a string field 'text'"):
        read_corpora(str(bad))


def test_finance_news_preset_excludes_every_phrasebank_test_sentence():
    from toolchain.pretrain import load_pretrain_config

    cfg = load_pretrain_config("pretrain-finance-news")
    for level in ("allagree", "50agree", "66agree", "75agree"):
        assert f"financial_phrasebank/splits/{level}/test.jsonl" in cfg.data.exclude
    assert "sentfin" not in cfg.data.train and "test" not in cfg.data.train
