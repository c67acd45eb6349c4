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

    from toolchain.inference.modeling import packaged_model_dir

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


# --------------------------------------------------------------------------- token classification (NER)
PEOPLE = [["John", "Smith"], ["Maria", "Garcia"], ["Wei", "Zhang"], ["Anna"], ["Peter", "Jones"], ["Olga"]]
ORGS = [["Acme", "Corp"], ["Nordea"], ["Silicon", "Valley", "Bank"], ["Reuters"], ["Nokia"], ["Kone", "Oyj"]]
PLACES = [["Helsinki"], ["New", "York"], ["London"], ["Paris"], ["Hong", "Kong"], ["Tokyo"]]
VERBS = [["works", "for"], ["joined"], ["left"], ["visited", "the", "office", "of"]]


def _entity(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def make_ner_sentences(n: int, seed: int, long_every: int = 0) -> list[list[tuple[str, str]]]:
    """Template sentences '<PER> <verb> <ORG> in <LOC> .'; every ``long_every``-th one is padded with
    many filler words (longer than a small max_length, to exercise windows)."""
    rng = random.Random(seed)
    sentences = []
    for i in range(n):
        words = (_entity(rng.choice(PEOPLE), "PER") + [(w, "O") for w in rng.choice(VERBS)]
                 + _entity(rng.choice(ORGS), "ORG") + [("in", "O")] + _entity(rng.choice(PLACES), "LOC"))
        if long_every and i % long_every == 0:
            words += [(w, "O") for w in "according to the quarterly report released on monday".split() * 4]
            words += [("near", "O")] + _entity(rng.choice(PLACES), "LOC")
        sentences.append(words + [(".", "O")])
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], io_tags: bool = False) -> Path:
    """CoNLL-2003 layout: -DOCSTART-, 'token POS chunk TAG' lines, blank lines between sentences."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        for word, tag in sentence:
            tag = "I-" + tag[2:] if io_tags and tag.startswith("B-") else tag
            lines.append(f"{word} NN - {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_conll(tmp_path_factory) -> dict[str, Path]:
    """Tiny CoNLL train/dev/test files (IOB2); some test sentences exceed 32 sub-tokens."""
    root = tmp_path_factory.mktemp("tiny-conll")
    return {split: write_conll(root / f"{split}.txt", make_ner_sentences(n, seed, long_every))
            for split, n, seed, long_every in (("train", 80, 1, 0), ("dev", 16, 2, 0), ("test", 20, 3, 5))}


@pytest.fixture
def tiny_ner_overrides(tiny_bert, tiny_conll, tmp_path) -> list[str]:
    """Overrides that turn any ner-* preset into a seconds-long tiny run."""
    return [f"model.base={tiny_bert}", f"data.train={tiny_conll['train']}", f"data.dev={tiny_conll['dev']}",
            f"data.test={tiny_conll['test']}", f"output_dir={tmp_path / 'run'}", "train.epochs=4",
            "train.batch_size=8", "train.eval_batch_size=32", "train.eval_steps=20", "train.learning_rate=5e-3",
            "data.max_length=32", "train.early_stopping_patience=0", "train.logging_steps=10"]


TOPIC_WORDS = {"Earnings": ["quarterly earnings", "eps guidance", "revenue report"],
               "Energy | Oil": ["crude oil", "opec output", "brent futures"],
               "Macro": ["inflation data", "gdp figures", "jobs report"]}


def make_topic_sentences(n: int, seed: int) -> list[dict]:
    """Headlines whose topic is decided by a keyword phrase (and whose sentiment words are random)."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_WORDS)
    rows = [{"text": f"{rng.choice(TOPIC_WORDS[topics[i % 3]])} {rng.choice(POSITIVE + NEGATIVE + NEUTRAL)} .",
             "label": topics[i % 3]} for i in range(n)]
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="session")
def tiny_topic_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-topic-data")
    return {split: write_jsonl(root / f"{split}.jsonl", make_topic_sentences(n, seed))
            for split, n, seed in (("train", 150, 4), ("dev", 30, 5), ("test", 30, 6))}


@pytest.fixture
def tiny_joint_overrides(tiny_overrides, tiny_topic_data) -> list[str]:
    """A tiny run with a topic head beside the sentiment head."""
    return tiny_overrides + [f"topic.{split}={path}" for split, path in tiny_topic_data.items()]
