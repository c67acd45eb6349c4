"""Shared fixtures: a tiny 2-layer BERT built from a config (trains in seconds) and tiny labelled data."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("TOOLCHAIN_DATA_DIR", REPO.parent / "shared" / "data"))
PHRASEBANK = DATA_ROOT / "financial_phrasebank" / "splits"

POSITIVE = ["profit rose", "sales increased", "record earnings", "strong growth", "beat forecasts", "shares jumped"]
NEGATIVE = ["loss widened", "sales fell", "profit warning", "weak demand", "missed forecasts", "shares plunged"]
NEUTRAL = ["the meeting is", "the company said", "the report covers", "the office is", "the board met", "it was held"]
FILLER = ["in helsinki", "this quarter", "on monday", "for the group", "in the period", "according to the ceo"]


def make_sentences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, phrases = [("positive", POSITIVE), ("negative", NEGATIVE), ("neutral", NEUTRAL)][i % 3]
        rows.append({"text": f"{rng.choice(phrases)} {rng.choice(FILLER)} .", "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with the packaged model's tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from toolchain.modeling import packaged_model_dir

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return {split: write_jsonl(root / f"{split}.jsonl", make_sentences(n, seed))
            for split, n, seed in (("train", 120, 1), ("dev", 30, 2), ("test", 30, 3))}


@pytest.fixture
def tiny_overrides(tiny_bert, tiny_data, tmp_path) -> list[str]:
    """Overrides that turn any sentiment preset into a seconds-long tiny run."""
    return [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
            f"data.test={tiny_data['test']}", f"output_dir={tmp_path / 'run'}", "train.epochs=3",
            "train.batch_size=8", "train.eval_steps=15", "train.learning_rate=3e-3", "data.max_length=32",
            "train.early_stopping_patience=0", "train.logging_steps=5"]


def requires_phrasebank():
    return pytest.mark.skipif(not PHRASEBANK.is_dir(), reason=f"real data not found at {PHRASEBANK} "
                              "(set TOOLCHAIN_DATA_DIR to the folder holding financial_phrasebank/)")
