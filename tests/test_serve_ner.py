"""`POST /ner`: entities with character offsets in the text as sent, from the post-processing alone
(fixed per-token predictions through the real tokenizer) and from a real `bentoml serve` of a tiny NER export."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from test_serve_support import PLAIN_KEY, Server, metric_total, toolchain_env, write_keys

LABELS = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    from toolchain.inference.modeling import packaged_model_dir

    tok = Tokenizer.from_file(str(packaged_model_dir("all-MiniLM-L6-v2") / "tokenizer.json"))
    tok.no_padding()
    return tok


def words_of(text: str) -> list[str]:
    from toolchain.data.words import word_spans

    return [text[start:end] for start, end in word_spans(text)]


def test_words_split_like_conll_tokens():
    text = "J.P. Morgan's AT&T deal (U.S.), worth $3.5bn, closed; Rolls-Royce Inc. rose 1,200 pts. Mr. Co"
    assert words_of(text) == ["J.P.", "Morgan", "'s", "AT&T", "deal", "(", "U.S.", ")", ",", "worth", "$", "3.5bn",
                              ",", "closed", ";", "Rolls-Royce", "Inc.", "rose", "1,200", "pts", ".", "Mr.", "Co"]


def tagged_logits(text: str, encoding, word_tags: dict[str, str]) -> np.ndarray:
    """Logits that give each word of ``text`` its tag from ``word_tags`` (default O) on its first
    sub-token and a wrong tag on the others (they must be ignored)."""
    from toolchain.data.words import token_words

    words = words_of(text)
    logits = np.zeros((len(encoding.offsets), len(LABELS)))
    seen = set()
    for position, word in enumerate(token_words(text, encoding.offsets)):
        if word is None:
            logits[position, LABELS.index("B-LOC")] = 9  # special tokens: ignored
            continue
        tag = word_tags.get(words[word], "O") if word not in seen else "B-PER"
        seen.add(word)
        logits[position, LABELS.index(tag)] = 5
    return logits


def test_entities_have_exact_character_offsets(tokenizer):
    from toolchain.serve.ner import results

    text = "  Goldman Sachs Group Inc. (GS) hired Anne-Marie O'Neill, of J.P. Morgan's  São Paulo desk."
    tags = {"Goldman": "B-ORG", "Sachs": "I-ORG", "Group": "I-ORG", "Inc.": "I-ORG", "GS": "B-ORG",
            "Anne-Marie": "B-PER", "O'Neill": "I-PER", "J.P.": "B-ORG", "Morgan": "I-ORG",
            "São": "B-LOC", "Paulo": "I-LOC"}
    encoding = tokenizer.encode(text)
    assert encoding.tokens.count("[UNK]") == 0 and len(encoding.tokens) > len(words_of(text)) + 2  # word pieces
    (result,) = results([text], [tagged_logits(text, encoding, tags)], [encoding], LABELS, [False])
    found = [(e.type, e.text, e.start, e.end) for e in result.entities]
    assert found == [("ORG", "Goldman Sachs Group Inc.", 2, 26), ("ORG", "GS", 28, 30),
                     ("PER", "Anne-Marie O'Neill", 38, 56), ("ORG", "J.P. Morgan", 61, 72),
                     ("LOC", "São Paulo", 76, 85)]
    for entity in result.entities:
        assert text[entity.start:entity.end] == entity.text and 0.5 < entity.score <= 1.0
    assert result.truncated is False


def test_i_tag_after_o_starts_an_entity_and_types_do_not_merge(tokenizer):
    from toolchain.serve.ner import results

    text = "Nokia Oyj Helsinki and Espoo"
    encoding = tokenizer.encode(text)
    tags = {"Nokia": "I-ORG", "Oyj": "I-ORG", "Helsinki": "I-LOC", "Espoo": "B-LOC"}
    (result,) = results([text], [tagged_logits(text, encoding, tags)], [encoding], LABELS, [False])
    assert [(e.type, e.text) for e in result.entities] == [("ORG", "Nokia Oyj"), ("LOC", "Helsinki"),
                                                           ("LOC", "Espoo")]


# --------------------------------------------------------------------------- a real server on a tiny NER export
SENTENCES = {
    "Maria Garcia joined Silicon Valley Bank in Hong Kong.": [
        ("PER", "Maria Garcia"), ("ORG", "Silicon Valley Bank"), ("LOC", "Hong Kong")],
    "Wei Zhang, who left Acme Corp (Reuters) in New York, joined Nokia in Paris!": [
        ("PER", "Wei Zhang"), ("ORG", "Acme Corp"), ("ORG", "Reuters"), ("LOC", "New York"), ("ORG", "Nokia"),
        ("LOC", "Paris")],
}


def punctuated_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """The fixture's template sentences with commas, parentheses, a relative clause and varied endings,
    so a tiny model learns that punctuation is O."""
    import random

    from conftest import ORGS, PEOPLE, PLACES, VERBS, _entity

    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = _entity(rng.choice(PEOPLE), "PER")
        if rng.random() < 0.5:
            words += [(",", "O"), ("who", "O")]
        words += [(w, "O") for w in rng.choice(VERBS)] + _entity(rng.choice(ORGS), "ORG")
        if rng.random() < 0.4:
            words += [("(", "O")] + _entity(rng.choice(ORGS), "ORG") + [(")", "O")]
        words += [("in", "O")] + _entity(rng.choice(PLACES), "LOC")
        if rng.random() < 0.5:
            words += [(",", "O")] + [(w, "O") for w in rng.choice(VERBS)] + _entity(rng.choice(ORGS), "ORG")
            words += [("in", "O")] + _entity(rng.choice(PLACES), "LOC")
        sentences.append(words + [(rng.choice([".", "!", ";"]), "O")])
    return sentences


@pytest.fixture(scope="module")
def ner_export(tiny_bert, tmp_path_factory):
    from conftest import write_conll

    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    root = tmp_path_factory.mktemp("ner-run")
    files = {split: write_conll(root / f"{split}.txt", punctuated_sentences(n, seed))
             for split, n, seed in (("train", 160, 11), ("dev", 20, 12), ("test", 20, 13))}
    overrides = [f"model.base={tiny_bert}", f"data.train={files['train']}", f"data.dev={files['dev']}",
                 f"data.test={files['test']}", f"output_dir={root / 'run'}", "train.epochs=6",
                 "train.batch_size=8", "train.eval_batch_size=32", "train.eval_steps=60",
                 "train.learning_rate=5e-3", "data.max_length=48", "train.early_stopping_patience=0",
                 "train.logging_steps=20"]
    run = train(load_config("ner-conll-full", overrides))
    cfg = load_export_config(None, ["variants=fp32,int8", "latency.rounds=2", "latency.warmup=1",
                                    "latency.pytorch=false", "latency.batch_sizes=1,4"])
    return export(run, root / "export", cfg)


@pytest.fixture(scope="module")
def ner_server(ner_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner-server")
    env = toolchain_env(root / "bentoml", TOOLCHAIN_EXPORT_DIR=str(ner_export), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_TOPICS="AAPL",
                        TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")))
    running = Server("toolchain.serve.service:ToolchainService", env, root / "server.log").wait_ready()
    yield running
    running.stop()


@pytest.mark.server
def test_served_ner_returns_entities_with_character_offsets(ner_server, ner_export):
    report = json.loads((ner_export / "report.json").read_text())
    assert report["metric"] == "f1"
    texts = list(SENTENCES)
    response = httpx.post(ner_server.url + "/ner", json={"texts": texts, "topic": "AAPL"},
                          headers={"Authorization": f"Bearer {PLAIN_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body) == len(texts)
    for text, result in zip(texts, body):
        assert result["truncated"] is False
        for entity in result["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"]
            assert set(entity) == {"type", "text", "start", "end", "score"} and 0 < entity["score"] <= 1
        assert [(e["type"], e["text"]) for e in result["entities"]] == SENTENCES[text]
    comma = texts[1].index(",")
    assert body[1]["entities"][0]["end"] == comma  # "Wei Zhang" stops before the comma


@pytest.mark.server
def test_served_ner_auth_wrong_route_and_metrics(ner_server):
    url = ner_server.url
    assert httpx.post(url + "/ner", json={"texts": ["Nokia"]}, timeout=10).status_code == 401
    wrong = httpx.post(url + "/classify", json={"texts": ["Nokia"]}, timeout=10,
                       headers={"X-API-Key": PLAIN_KEY})
    assert wrong.status_code == 404 and wrong.json()["error"] == "wrong_task" and "/ner" in wrong.json()["message"]
    bad = httpx.post(url + "/ner", json={"texts": ["  "]}, timeout=10, headers={"X-API-Key": PLAIN_KEY})
    assert bad.status_code == 422 and bad.json()["field"] == "texts[0]"
    ok = httpx.post(url + "/ner", json={"texts": ["Olga joined Nordea in London ."], "topic": "AAPL"},
                    timeout=30, headers={"X-API-Key": PLAIN_KEY})
    assert ok.status_code == 200
    metrics = httpx.get(url + "/metrics", timeout=10).text
    assert metric_total(metrics, "toolchain_predictions_total", task="token-classification", source="AAPL", topic="none") >= 3
    assert metric_total(metrics, "toolchain_inference_seconds_count", task="token-classification") >= 1
    assert metric_total(metrics, "toolchain_rejected_requests_total", reason="auth") >= 1


# --------------------------------------------------------------------------- long texts: the training windows
LONG_TEXT = " ".join([
    "Maria Garcia joined Silicon Valley Bank in Hong Kong.",
    "Wei Zhang, who left Acme Corp (Reuters) in New York, joined Nokia in Paris!",
    "John Smith works for Nordea in London.",
    "Peter Jones visited the office of Kone Oyj in Tokyo, joined Reuters in Helsinki;",
    "Olga left Nokia in Paris.",
    "Anna joined Acme Corp in New York.",
    "Wei Zhang works for Silicon Valley Bank in London.",
    "Maria Garcia, who joined Nordea in Tokyo, left Kone Oyj in Hong Kong.",
    "John Smith left Reuters in Helsinki.",
    "Peter Jones joined Nokia in New York.",
    "Anna, who visited the office of Nordea in Helsinki, left Silicon Valley Bank in Tokyo.",
    "Wei Zhang joined Kone Oyj (Reuters) in Paris.",
    "John Smith, who works for Nokia in Hong Kong, joined Acme Corp in London.",
    "Maria Garcia left Reuters in New York.",
    "Peter Jones works for Kone Oyj in Helsinki.",
    "Olga, who works for Acme Corp (Nordea) in Paris, visited the office of Reuters in London.",
])
LAST_SENTENCE = "Olga, who works for Acme Corp (Nordea) in Paris, visited the office of Reuters in London."


def training_window_entities(export_dir, variant: str, text: str) -> tuple[list[tuple[str, int, int]], int]:
    """The entities training/evaluation would find: the words of ``text`` encoded by the task's own
    windows (TokenClassification.encode), each window one model call, each word's tag from the window
    that owns it. Returns (type, start, end) per entity and the number of windows."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from toolchain.core.artifacts import load_export
    from toolchain.data.readers import Example
    from toolchain.data.words import word_spans
    from toolchain.tasks.token_classification import IGNORE, TokenClassification, entity_spans

    export = load_export(export_dir)
    labels = export.labels
    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    spans = word_spans(text)
    words = [text[start:end] for start, end in spans]
    dataset = TokenClassification().encode([Example(words, ["O"] * len(words), "long")], tokenizer,
                                           {label: i for i, label in enumerate(labels)}, export.max_length)
    session = ort.InferenceSession(str(export.variant_file(variant)), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tags = []
    for feature in dataset.features:
        logits = session.run(None, {n: np.array([feature[n]], dtype=np.int64) for n in names})[0][0]
        tags += [labels[int(logits[i].argmax())] for i, gold in enumerate(feature["labels"]) if gold != IGNORE]
    assert len(tags) == len(words)
    return [(kind, spans[first][0], spans[last][1]) for kind, first, last in entity_spans(tags)], len(dataset.features)


def test_long_text_is_served_in_the_training_windows(ner_export):
    """Windows as in training: every word scored once, by the window that owns it; offsets into the text."""
    from toolchain.core.artifacts import load_export
    from toolchain.serve import ner
    from toolchain.inference.runtime import OnnxModel

    export = load_export(ner_export)
    model = OnnxModel(export, "fp32")
    short = list(SENTENCES)
    output = ner.infer(model, [LONG_TEXT] + short)
    assert len(output.encodings[0].ids) > max(200, 4 * export.max_length) and output.truncated == [False] * 3
    (long_result, *short_results) = ner.results([LONG_TEXT] + short, output.logits, output.encodings,
                                                model.labels, output.truncated)
    expected, windows = training_window_entities(ner_export, "fp32", LONG_TEXT)
    assert windows >= 6
    assert [(e.type, e.start, e.end) for e in long_result.entities] == expected
    for entity in long_result.entities:
        assert LONG_TEXT[entity.start:entity.end] == entity.text and 0 < entity.score <= 1
    # a text that fits is one window: exactly what the model gives it alone, as before
    plain = model.infer(short)
    before = ner.results(short, plain.logits, plain.encodings, model.labels, plain.truncated)
    assert [r.model_dump() for r in short_results] == [r.model_dump() for r in before]


def test_windows_cover_every_word_once_and_clip_a_giant_word(ner_export):
    from toolchain.core.artifacts import load_export
    from toolchain.serve import ner
    from toolchain.inference.runtime import OnnxModel

    model = OnnxModel(load_export(ner_export), "int8")
    giant = "Nokia " + "x" * 3000 + " joined Reuters in Paris. " * 3
    output = ner.infer(model, [giant])
    (result,) = ner.results([giant], output.logits, output.encodings, model.labels, output.truncated)
    assert output.truncated == [False]
    for entity in result.entities:
        assert giant[entity.start:entity.end] == entity.text


@pytest.mark.server
def test_served_ner_finds_entities_after_the_models_max_length(ner_server, ner_export):
    from toolchain.core.artifacts import load_export

    export = load_export(ner_export)
    response = httpx.post(ner_server.url + "/ner", json={"texts": [LONG_TEXT, "Olga joined Nordea in London."]},
                          headers={"Authorization": f"Bearer {PLAIN_KEY}"}, timeout=60)
    assert response.status_code == 200, response.text
    long_result, short_result = response.json()
    assert long_result["truncated"] is False and short_result["truncated"] is False
    expected, _ = training_window_entities(ner_export, export.serve_variant, LONG_TEXT)
    assert [(e["type"], e["start"], e["end"]) for e in long_result["entities"]] == expected
    for entity in long_result["entities"]:
        assert LONG_TEXT[entity["start"]:entity["end"]] == entity["text"]
    tail = LONG_TEXT.index(LAST_SENTENCE)   # far past 128 tokens
    assert tail > 400
    found_in_tail = [(e["type"], e["text"]) for e in long_result["entities"] if e["start"] >= tail]
    assert ("PER", "Olga") in found_in_tail and ("LOC", "London") in found_in_tail, found_in_tail
