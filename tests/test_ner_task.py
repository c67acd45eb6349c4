"""Token classification without training: reading CoNLL, tag schemes, alignment, windows, metrics, decoding."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA_ROOT, make_ner_sentences, write_conll
from toolchain.data.readers import DataError, Example, read_conll
from toolchain.data.tags import io_to_iob2
from toolchain.tasks.token_classification import (IGNORE, TokenClassification, decode_entities, entity_metrics,
                                                  entity_spans, offset_words, plan_windows, word_tags)

LABELS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
ID = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from toolchain.inference.modeling import packaged_model_dir
    return AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))


# --------------------------------------------------------------------------- reading and tag schemes

def test_io_tags_become_iob2():
    assert io_to_iob2(["I-ORG", "I-ORG", "O", "I-PER", "I-LOC", "I-LOC"]) == \
        ["B-ORG", "I-ORG", "O", "B-PER", "B-LOC", "I-LOC"]


def test_read_conll_io_file(tmp_path):
    path = tmp_path / "io.txt"
    path.write_text("-DOCSTART- -X- O O\n\nLoan NN - O\nto NN - O\nSILICON NNP - I-ORG\nVALLEY NNP - I-ORG\n"
                    "BANK NNP - I-ORG\n\nJohn NNP - I-PER\nin IN - O\nBoston NNP - I-LOC\n\n"
                    "-DOCSTART- -X- O O\n\nParis NNP - I-LOC\n")
    examples = read_conll(path)
    assert [ex.text for ex in examples] == [["Loan", "to", "SILICON", "VALLEY", "BANK"], ["John", "in", "Boston"],
                                           ["Paris"]]
    assert examples[0].label == ["O", "O", "B-ORG", "I-ORG", "I-ORG"]
    assert examples[1].label == ["B-PER", "O", "B-LOC"]
    assert examples[2].label == ["B-LOC"]
    assert examples[1].location.endswith("io.txt:9")


def test_read_conll_errors_name_file_and_line(tmp_path):
    one_column = tmp_path / "bad.txt"
    one_column.write_text("John B-PER\nsmiles\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'token \.\.\. TAG'.*'smiles'"):
        read_conll(one_column)
    bad_tag = tmp_path / "tag.txt"
    bad_tag.write_text("\nJohn NN PERSON\n")
    with pytest.raises(DataError, match=r"tag.txt:2: token 1 has tag 'PERSON'"):
        read_conll(bad_tag)
    with pytest.raises(DataError, match=r"tag.txt:2: no column 5"):
        read_conll(bad_tag, tag_column=5)


def test_strict_iob2_refuses_entity_starting_with_i(tmp_path):
    path = write_conll(tmp_path / "iob1.txt", [[("in", "O"), ("Paris", "I-LOC")]])
    with pytest.raises(DataError, match=r"'I-LOC' after 'O'"):
        read_conll(path, scheme="iob2")
    assert read_conll(path, scheme="auto")[0].label == ["O", "B-LOC"]


# --------------------------------------------------------------------------- alignment and windows

def test_first_subtoken_is_labelled_and_others_ignored(tokenizer):
    words = ["Hennessey", "visited", "Kuala", "Lumpur", "."]
    pieces = [tokenizer.tokenize(w) for w in words]
    assert len(pieces[0]) > 1  # a multi-piece word, so alignment is really tested
    example = Example(words, ["B-PER", "O", "B-LOC", "I-LOC", "O"], "x:1")
    feature = TokenClassification().encode([example], tokenizer, ID, 64).features[0]
    expected = [IGNORE]
    for piece_list, tag in zip(pieces, example.label):
        expected += [ID[tag]] + [IGNORE] * (len(piece_list) - 1)
    assert feature["labels"] == expected + [IGNORE]
    assert tokenizer.convert_ids_to_tokens(feature["input_ids"])[1:-1] == [p for ps in pieces for p in ps]
    assert feature["input_ids"][0] == tokenizer.cls_token_id and feature["input_ids"][-1] == tokenizer.sep_token_id


def test_all_subtokens_mode_labels_continuations_while_training_only(tokenizer):
    task = TokenClassification(subtoken_labels="all")
    example = Example(["Hennessey", "left"], ["B-PER", "O"], "x:1")
    n_pieces = len(tokenizer.tokenize("Hennessey"))
    trained = task.encode_for_training([example], tokenizer, ID, 64).features[0]["labels"]
    scored = task.encode([example], tokenizer, ID, 64).features[0]["labels"]
    assert trained[1:1 + n_pieces] == [ID["B-PER"]] + [ID["I-PER"]] * (n_pieces - 1)
    assert scored[1:1 + n_pieces] == [ID["B-PER"]] + [IGNORE] * (n_pieces - 1)


def test_windows_keep_every_word_once_and_never_split_an_entity():
    lengths = [1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1]
    tags = ["O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC",
            "O", "O"]
    windows = plan_windows(lengths, tags, budget=8)
    assert len(windows) > 1
    owned = [i for w in windows for i in range(w.start, w.end)]
    assert owned == list(range(len(lengths)))
    for w in windows:
        assert sum(lengths[w.left:w.right]) <= 8 and w.left <= w.start < w.end <= w.right
        assert w.end == len(tags) or not tags[w.end].startswith("I-")


def test_long_sentence_is_windowed_without_dropping_words(tokenizer, capsys):
    sentence = make_ner_sentences(1, 0, long_every=1)[0]
    example = Example([w for w, _ in sentence], [t for _, t in sentence], "x:1")
    dataset = TokenClassification().encode([example], tokenizer, ID, 24)
    assert len(dataset) > 1
    assert all(len(f["input_ids"]) <= 24 for f in dataset.features)
    labelled = [label for f in dataset.features for label in f["labels"] if label != IGNORE]
    assert [LABELS[i] for i in labelled] == example.label
    assert "split into windows" in capsys.readouterr().err


# --------------------------------------------------------------------------- metrics

def _rows(sequences: list[list[str]], width: int = 8) -> np.ndarray:
    """Label ids with -100 at a leading special position and in the padding."""
    rows = np.full((len(sequences), width), IGNORE)
    for r, tags in enumerate(sequences):
        rows[r, 1:1 + len(tags)] = [ID[t] for t in tags]
    return rows


def _logits(sequences: list[list[str]], width: int = 8) -> np.ndarray:
    logits = np.zeros((len(sequences), width, len(LABELS)))
    logits[:, :, ID["O"]] = 1.0
    for r, tags in enumerate(sequences):
        for i, tag in enumerate(tags):
            logits[r, 1 + i, ID[tag]] = 5.0
    return logits


def test_seqeval_strict_metrics_on_known_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-PER", "O"]]
    m = TokenClassification().metrics(_logits(pred), _rows(gold), LABELS)
    # gold: PER, LOC, ORG, PER; predicted: PER, ORG, ORG, PER(truncated); correct: PER, ORG
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5)
    assert m["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["ORG"]["precision"] == 0.5 and m["per_type"]["ORG"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.0 + 2 / 3) / 3)
    assert m["entities"] == 4 and m["sentences"] == 2
    assert TokenClassification().summary(m) == {"f1": m["f1"], "precision": 0.5, "recall": 0.5}


def test_entity_starting_with_i_is_read_as_an_entity():
    m = entity_metrics([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])
    assert m["f1"] == 1.0 and m["raw_f1"] == 0.0  # strict IOB2 alone drops the I- start


def test_entity_spans():
    assert entity_spans(["B-ORG", "I-ORG", "O", "I-PER", "B-PER", "I-LOC"]) == \
        [("ORG", 0, 1), ("PER", 3, 3), ("PER", 4, 4), ("LOC", 5, 5)]


# --------------------------------------------------------------------------- decoding to character offsets

TEXT = "Apple Inc. hired Tim Hennessey in New York, U.S. on Monday."
WORD_TAGS = {"apple": "B-ORG", "inc": "I-ORG", "tim": "B-PER", "new": "B-LOC", "york": "I-LOC", "u": "B-LOC"}


def _logits_for(text: str, tokenizer, tag_of_word) -> tuple[list, np.ndarray]:
    encoding = tokenizer(text, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    logits = np.zeros((len(offsets), len(LABELS)))
    logits[:, ID["O"]] = 2.0
    for position, (word, (start, end)) in enumerate(zip(offset_words(text, offsets), offsets)):
        if word is not None:
            logits[position, ID[tag_of_word(word, text[start:end])]] = 6.0
    return offsets, logits


def test_decode_entities_character_offsets(tokenizer):
    words = [text for text in ["Apple", "Inc", ".", "hired", "Tim", "Hennessey", "in", "New", "York", ",", "U", ".",
                               "S", ".", "on", "Monday", "."]]
    continuing = {2: "I-ORG", 5: "I-PER", 11: "I-LOC", 12: "I-LOC", 13: "I-LOC"}  # by word index

    def tag(word, piece):
        return continuing.get(word) or WORD_TAGS.get(piece.lower(), "O")

    offsets, logits = _logits_for(TEXT, tokenizer, tag)
    assert max(w for w in offset_words(TEXT, offsets) if w is not None) == len(words) - 1
    entities = decode_entities(TEXT, offsets, logits, LABELS)
    assert [(e["type"], e["text"]) for e in entities] == \
        [("ORG", "Apple Inc."), ("PER", "Tim Hennessey"), ("LOC", "New York"), ("LOC", "U.S.")]
    for e in entities:
        assert TEXT[e["start"]:e["end"]] == e["text"] and 0.5 < e["score"] <= 1.0
    assert entities[2]["start"] == TEXT.index("New York")


def test_decode_uses_first_subtoken_of_each_word(tokenizer):
    text = "Hennessey spoke"
    encoding = tokenizer(text, return_offsets_mapping=True)
    logits = np.zeros((len(encoding["input_ids"]), len(LABELS)))
    logits[:, ID["O"]] = 1.0
    logits[1, ID["B-PER"]] = 5.0  # first piece of "Hennessey"; later pieces say O and must not matter
    entities = decode_entities(text, encoding["offset_mapping"], logits, LABELS, word_ids=encoding.word_ids())
    assert entities == [{"type": "PER", "text": "Hennessey", "start": 0, "end": 9, "score": pytest.approx(
        np.exp(5) / (np.exp(5) + np.exp(1) + 5), rel=1e-6)}]


def test_word_tags_for_pretokenized_input(tokenizer):
    encoding = tokenizer(["Hennessey", "in", "Oslo"], is_split_into_words=True)
    logits = np.zeros((len(encoding["input_ids"]), len(LABELS)))
    logits[:, ID["O"]] = 1.0
    logits[1, ID["B-PER"]] = 5.0
    logits[encoding.word_ids().index(2), ID["B-LOC"]] = 5.0
    assert word_tags(logits, encoding.word_ids(), LABELS) == ["B-PER", "O", "B-LOC"]


# --------------------------------------------------------------------------- real data (read only)

CONLL = DATA_ROOT / "conll2003"
SEC = DATA_ROOT / "sec_filings_ner"


@pytest.mark.integration
@pytest.mark.skipif(not CONLL.is_dir() or not SEC.is_dir(), reason=f"real NER data not found under {DATA_ROOT}")
def test_real_files_read_with_published_counts(tokenizer):
    conll_test = read_conll(CONLL / "test.txt", scheme="iob2")
    fin3 = read_conll(SEC / "FIN3.txt")
    assert len(conll_test) == 3453 and len(fin3) == 303
    assert sum(len(entity_spans(ex.label)) for ex in conll_test) == 5648
    assert sum(len(entity_spans(ex.label)) for ex in fin3) == 318  # maximal same-type I- runs (SOURCE.md)
    dataset = TokenClassification().encode(fin3, tokenizer, {l: i for i, l in enumerate(
        sorted({t for ex in fin3 for t in ex.label}))}, 128)
    labelled = sum(1 for f in dataset.features for label in f["labels"] if label != IGNORE)
    assert labelled == sum(len(ex.text) for ex in fin3) == 13246  # every word kept despite 28 long sentences
