"""Explanations on tiny models: integrated gradients (completeness, Captum agreement, words, entities),
occlusion on the served ONNX runtime (equal to what /classify answers), deletion faithfulness, the CLI
and its renderings. The real-model figures are in benchmarks/explain_faithfulness.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PHRASEBANK, requires_phrasebank
from test_serve_support import built  # noqa: F401  (the session's tiny run, export and Bento)

torch = pytest.importorskip("torch")

LABELS = ["negative", "neutral", "positive"]
NER_LABELS = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = ["loss widened this quarter according to the ceo .", "profit rose in helsinki .",
             "the board met on monday for the group ."]


def random_model(tiny_bert, task: str, labels: list[str], init: float = 0.5):
    """An untrained tiny BERT with large weights: far from linear, so completeness is a real test."""
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                              BertForTokenClassification)

    from toolchain.explain.model import ExplainedModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(labels),
                        initializer_range=init)
    cls = BertForTokenClassification if task == "token-classification" else BertForSequenceClassification
    return ExplainedModel(cls(config).eval(), AutoTokenizer.from_pretrained(tiny_bert), labels, task, 32, "test")


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    return random_model(tiny_bert, "sequence-classification", LABELS)


# --------------------------------------------------------------------------- integrated gradients

def test_completeness_holds_within_tolerance_and_is_a_real_check(classifier):
    """Scores sum to logit(input) - logit(baseline): within 2% + 0.01 at 50 steps, while a 2-point
    quadrature misses by far more (the check can fail)."""
    from toolchain.explain.gradients import Quadrature, explain_sequence

    for text in SENTENCES[:2]:
        figures = explain_sequence(classifier, text, "positive", Quadrature(steps=50)).details["completeness"]
        assert figures["steps"] == 50 and figures["within_tolerance"], figures
        assert figures["error"] <= 0.02 * abs(figures["logit_delta"]) + 0.01
        assert abs(figures["logit_delta"]) > 0.1   # a model far from its baseline: not a trivial sum
    coarse = explain_sequence(classifier, SENTENCES[0], "positive", Quadrature(steps=2, max_steps=2))
    fine = explain_sequence(classifier, SENTENCES[0], "positive", Quadrature(steps=50))
    assert coarse.details["completeness"]["error"] > 10 * fine.details["completeness"]["error"]


def test_steps_double_until_completeness_holds(classifier):
    from toolchain.explain.gradients import Quadrature, explain_sequence

    figures = explain_sequence(classifier, SENTENCES[0], "positive",
                               Quadrature(steps=2, max_steps=256, rtol=0.0, atol=1e-2)).details["completeness"]
    assert figures["steps"] > 2 and figures["within_tolerance"] and figures["error"] <= 1e-2


def test_matches_captum_layer_integrated_gradients(classifier):
    captum = pytest.importorskip("captum.attr")
    from toolchain.explain.gradients import Quadrature, encode, explain_sequence

    text = SENTENCES[0]
    mine = explain_sequence(classifier, text, "positive", Quadrature(steps=50, max_steps=50))
    inputs, baseline, _, _ = encode(classifier, text)
    model = classifier.model
    forward = lambda ids, types, mask: model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits  # noqa
    theirs = captum.LayerIntegratedGradients(forward, model.get_input_embeddings()).attribute(
        inputs["input_ids"], baselines=baseline, target=2, n_steps=50, method="gausslegendre",
        additional_forward_args=(inputs["token_type_ids"], inputs["attention_mask"]))
    assert np.allclose([t.attribution for t in mine.tokens], theirs.sum(-1)[0].detach().numpy(), atol=1e-5)


def test_words_carry_their_tokens_scores_and_special_tokens_none(classifier):
    from toolchain.explain.gradients import explain_sequence

    text = "Nokia's operating profit of EUR 13.1 mn beat forecasts ."
    e = explain_sequence(classifier, text)
    assert [w.word for w in e.words] == ["Nokia", "'s", "operating", "profit", "of", "EUR", "13.1", "mn", "beat",
                                        "forecasts", "."]
    assert all(text[w.start:w.end] == w.word for w in e.words)
    for index, word in enumerate(e.words):
        assert word.attribution == pytest.approx(sum(t.attribution for t in e.tokens if t.word == index), abs=1e-9)
    assert [t.attribution for t in e.tokens if t.word is None] == [0.0, 0.0]   # [CLS], [SEP]: kept in the baseline
    assert e.label == max(e.scores, key=e.scores.get) and e.target == e.label and e.unit == "logit"


def test_long_text_is_truncated_and_flagged(classifier):
    from toolchain.explain.gradients import explain_sequence

    e = explain_sequence(classifier, " ".join(["profit rose"] * 40))
    assert e.truncated and len(e.tokens) == 32 and len(e.words) == 30


def test_entities_each_get_an_explanation(tiny_bert):
    from toolchain.explain.gradients import Quadrature, explain, explain_entities

    tagger = random_model(tiny_bert, "token-classification", NER_LABELS, init=0.2)
    text = "John Smith joined Nordea in Helsinki ."
    quick = Quadrature(steps=16, max_steps=128)
    found = explain(tagger, text, quadrature=quick)
    assert found, "the random tagger finds no entity: pick another seed"
    for e in found:
        assert e.entity["text"] == text[e.entity["start"]:e.entity["end"]] and e.target == e.entity["type"]
        assert e.details["completeness"]["within_tolerance"], e.details
        assert len(e.details["tags"]) >= 1
    kind = found[0].entity["type"]
    assert {e.entity["type"] for e in explain_entities(tagger, text, kind, quick)} == {kind}
    with pytest.raises(ValueError, match="unknown entity type 'MONEY'.*LOC, ORG, PER"):
        explain_entities(tagger, text, "MONEY")


def test_bad_targets_and_texts_name_the_problem(classifier):
    from toolchain.explain.gradients import Quadrature, explain_sequence
    from toolchain.explain.result import ExplainError

    with pytest.raises(ExplainError, match="unknown target label 'bullish'.*negative, neutral, positive"):
        explain_sequence(classifier, "profit rose", "bullish")
    with pytest.raises(ExplainError, match="empty or whitespace"):
        explain_sequence(classifier, "   ")
    with pytest.raises(ExplainError, match="steps must be between 1 and max_steps"):
        Quadrature(steps=0)


def test_topic_head_of_a_joint_model_is_its_own_softmax():
    from toolchain.explain.result import choose

    labels = ["negative", "neutral", "positive", "topic:Earnings", "topic:Macro"]
    logits = np.array([0.1, 2.0, 0.3, -1.0, 1.0])
    main = choose(labels, None, logits)
    assert (main.labels, main.predicted, main.column) == (["negative", "neutral", "positive"], 1, 1)
    topic = choose(labels, "Earnings", logits)
    assert (topic.labels, topic.predicted, topic.target, topic.column) == (["Earnings", "Macro"], 1, 0, 3)
    assert topic.probabilities(logits).sum() == pytest.approx(1.0)
    assert choose(labels, "topic:Macro", logits).column == 4


# --------------------------------------------------------------------------- occlusion on the serving runtime

@pytest.fixture(scope="module")
def served(built):
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import OnnxModel

    export = load_export(built.export_dir)
    return {name: OnnxModel(export, name, "cpu", 1) for name in export.variant_names()}


def test_occlusion_is_the_served_models_own_arithmetic(served):
    """The prediction equals OnnxModel.infer's (what /classify answers), and a word's score equals the served
    probability of the text minus that of the text without the word, each run as the service runs it."""
    from toolchain.explain.occlusion import explain_text
    from toolchain.core.probability import softmax
    from toolchain.explain.result import without_words

    for model in served.values():
        for text in SENTENCES:
            e = explain_text(model, text)
            alone = softmax(np.stack(model.infer([text]).logits))[0]
            assert e.scores == dict(zip(model.labels, map(float, alone))), model.variant
            column = model.labels.index(e.target)
            for w in e.words:
                without = softmax(np.stack(model.infer([without_words(text, [(w.start, w.end)])]).logits))[0]
                assert w.attribution == pytest.approx(alone[column] - without[column], abs=1e-6), (model.variant, w)
            assert e.details["rows"] == len(e.words) + 1


def test_occlusion_refuses_unknown_targets(served):
    from toolchain.explain.occlusion import explain_text
    from toolchain.explain.result import ExplainError

    with pytest.raises(ExplainError, match="unknown target label 'up'"):
        explain_text(next(iter(served.values())), "profit rose", "up")


def test_top_words_matter_more_than_random_words(built):
    """Deleting each test sentence's top-1 / top-2 attributed words lowers the explained class's probability
    more, on average and for most sentences, than deleting as many random words (tiny trained model)."""
    from toolchain.explain.faithfulness import deletion_deltas
    from toolchain.explain.gradients import Quadrature, explain_sequence
    from toolchain.explain.model import load_explained_model

    model = load_explained_model(built.run_dir)
    test_file = next(o.split("=", 1)[1] for o in built.overrides if o.startswith("data.test="))
    texts = [json.loads(line)["text"] for line in open(test_file)]
    explanations = [explain_sequence(model, text, quadrature=Quadrature(steps=8, max_steps=8)) for text in texts]
    for k in (1, 2):
        summary = deletion_deltas(explanations, model.probabilities, k).summary()
        assert summary["top_k_mean_delta"] > summary["random_k_mean_delta"], summary
        assert summary["texts_top_k_above_random"] > summary["texts"] / 2, summary


# --------------------------------------------------------------------------- the CLI and its renderings

def test_cli_json_html_png_from_a_run_and_an_export(built, tmp_path, capsys):
    from toolchain.cli import main

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in SENTENCES[1:]))
    assert main(["explain", str(built.run_dir), SENTENCES[0], "--file", str(texts), "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [item["text"] for item in out["texts"]] == SENTENCES
    first = out["texts"][0]["explanations"][0]
    assert first["method"] == "integrated-gradients" and first["details"]["completeness"]["within_tolerance"]
    html, png = tmp_path / "x.html", tmp_path / "x.png"
    assert main(["explain", str(built.export_dir), "--method", "occlusion", "--target", "negative",
                 "--html", str(html), "--png", str(png), *SENTENCES]) == 0
    shown = capsys.readouterr().out
    assert "leave-one-word-out occlusion" in shown and "explaining negative" in shown and "\033[" not in shown
    assert html.read_text().count('<div class="x">') == 3 and "widened" in html.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--target", "bullish", "profit rose"], "unknown target label 'bullish'"),
    (["--method", "occlusion", "profit rose"], "occlusion runs on an ONNX variant; give an export dir"),
    (["--variant", "int8", "profit rose"], "--variant picks the ONNX variant for --method occlusion"),
    (["   "], "text 1 is empty or whitespace only"),
    ([], "nothing to explain"),
])
def test_cli_bad_input_names_the_problem(built, args, message, capsys):
    from toolchain.cli import main

    assert main(["explain", str(built.run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_texts_file_and_paths(tmp_path, capsys):
    from toolchain.cli import main

    from toolchain.explain.result import ExplainError
    from toolchain.explain.run import read_texts

    assert main(["explain", str(tmp_path), "profit rose"]) == 2
    assert "neither a run dir nor an export dir (no toolchain.yaml)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"sentence": "x"}\n')

    with pytest.raises(ExplainError, match=r"bad.jsonl:2: no \"text\" field \(fields: sentence\)"):
        read_texts(str(bad))
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ExplainError, match="bad.jsonl:2: not JSON"):
        read_texts(str(bad))


def test_terminal_view_marks_sign_and_strength():
    from toolchain.explain.render import terminal_view
    from toolchain.explain.result import Explanation, WordScore

    text = "Sales fell sharply in Finland"
    scores = [0.4, 2.0, 1.0, 0.01, -0.6]
    words, cursor = [], 0
    for word, score in zip(text.split(), scores):
        start = text.index(word, cursor)
        words.append(WordScore(word, start, start + len(word), score))
        cursor = start + len(word)
    e = Explanation(text=text, task="sequence-classification", method="occlusion", unit="probability",
                    label="negative", target="negative", probability=0.9, scores={"negative": 0.9}, words=words,
                    details={"variant": "int8"})
    plain = terminal_view(e, colour=False)
    assert "Sales[+] fell[+++] sharply[++] in Finland[-]" in plain
    assert "for negative: fell +2.000, sharply +1.000, Sales +0.400   against: Finland -0.600" in plain
    coloured = terminal_view(e, colour=True)
    assert "\033[48;5;28;97mfell\033[0m" in coloured and "[+++]" not in coloured


# --------------------------------------------------------------------------- the real architecture and data

@pytest.mark.integration
@requires_phrasebank()
def test_completeness_on_the_packaged_encoder_and_real_sentences():
    """The packaged MiniLM (a fresh, large classification head) on the two shortest PhraseBank test sentences."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolchain.explain.gradients import Quadrature, explain_sequence
    from toolchain.explain.model import ExplainedModel
    from toolchain.inference.modeling import packaged_model_dir

    base = packaged_model_dir("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3, use_safetensors=True).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    explained = ExplainedModel(model, AutoTokenizer.from_pretrained(base), LABELS, "sequence-classification", 128,
                               "packaged")
    lines = (PHRASEBANK / "allagree" / "test.jsonl").read_text().splitlines()
    for text in sorted((json.loads(line)["text"] for line in lines), key=len)[:2]:
        e = explain_sequence(explained, text, "negative", Quadrature(steps=16, max_steps=64))
        assert e.details["completeness"]["within_tolerance"], e.details
        assert len(e.words) == len(text.split())   # these sentences are pre-tokenized: one word per space
