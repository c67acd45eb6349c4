"""Data readers: formats, splits, label maps, and errors that name file, line and value."""
import json

import pytest

from toolchain.core.config import DataConfig
from toolchain.data.dataset import check_labels, label_list, load_splits, stratified_split
from toolchain.data.readers import DataError, read_examples


def test_jsonl_csv_and_phrasebank_agree(tmp_path):
    rows = [("Profit rose .", "positive"), ("Sales fell .", "negative")]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"sentence": t, "y": l}) + "\n" for t, l in rows))
    (tmp_path / "a.csv").write_text("sentence,y\n" + "".join(f'"{t}",{l}\n' for t, l in rows))
    (tmp_path / "a.txt").write_bytes("".join(f"{t}@{l}\n" for t, l in rows).encode("latin-1"))
    for name in ("a.jsonl", "a.csv"):
        got = read_examples(tmp_path / name, text_column="sentence", label_column="y")
        assert [(e.text, e.label) for e in got] == rows
    assert [(e.text, e.label) for e in read_examples(tmp_path / "a.txt")] == rows


def test_phrasebank_is_latin1_and_splits_on_last_at(tmp_path):
    (tmp_path / "p.txt").write_bytes("Caf\xe9 sales @ Helsinki grew .@positive\n".encode("latin-1"))
    [example] = read_examples(tmp_path / "p.txt", "phrasebank")
    assert example.text == "Café sales @ Helsinki grew ." and example.label == "positive"


@pytest.mark.parametrize("content, fmt, message", [
    ('{"text": "ok", "label": "positive"}\n{"text": "  ", "label": "negative"}\n', "jsonl", r"x\.jsonl:2: empty text"),
    ('{"text": "ok", "label": "positive"}\n{"txt": "a", "label": "negative"}\n', "jsonl", r"x\.jsonl:2: missing key 'text'"),
    ('{"text": "ok", "label": "positive"}\nnot json\n', "jsonl", r"x\.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n', "jsonl", r"x\.jsonl:1: missing key 'label'"),
    ("text,label\nok,positive\n,negative\n", "csv", r"x\.csv:3: empty text"),
    ("sentence,label\nok,positive\n", "csv", r"x\.csv:1: missing column 'text'"),
    ("no label here\n", "phrasebank", r"x\.txt:1: expected 'sentence@label'"),
])
def test_bad_records_name_file_and_line(tmp_path, content, fmt, message):
    path = tmp_path / {"jsonl": "x.jsonl", "csv": "x.csv", "phrasebank": "x.txt"}[fmt]
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_examples(path, fmt)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_examples(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "\xff\xfe", "label": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl: not valid utf-8"):
        read_examples(tmp_path / "bad.jsonl")


def test_unknown_label_in_test_data_is_named(tmp_path):
    train = [e for e in read_examples(_write(tmp_path / "t.jsonl", [("a", "positive"), ("b", "negative")]))]
    test = read_examples(_write(tmp_path / "s.jsonl", [("c", "positive"), ("d", "bullish")]))
    with pytest.raises(DataError, match=r"s\.jsonl:2: unknown label 'bullish' in the test data"):
        check_labels(test, label_list(train), "test")


def test_stratified_split_is_seeded_and_keeps_class_shares(tmp_path):
    rows = [(f"s{i}", "a" if i % 4 else "b") for i in range(200)]
    examples = read_examples(_write(tmp_path / "d.jsonl", rows))
    rest, held = stratified_split(examples, 0.2, seed=7)
    again, held2 = stratified_split(examples, 0.2, seed=7)
    assert [e.text for e in held] == [e.text for e in held2]
    assert len(held) == 40 and sum(e.label == "b" for e in held) == 10
    assert not {e.text for e in rest} & {e.text for e in held}


def test_single_file_gets_dev_and_test_splits_with_hashes(tmp_path):
    path = _write(tmp_path / "all.jsonl", [(f"s{i}", ["a", "b", "c"][i % 3]) for i in range(90)])
    splits = load_splits(DataConfig(train=str(path)))
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (72, 9, 9)
    assert len(splits.files["train"]["sha256"]) == 64 and "stratified" in splits.files["test"]["split"]


def _write(path, rows):
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
    return path


def test_csv_and_jsonl_with_a_utf8_byte_order_mark_are_read(tmp_path):
    """Spreadsheets save "CSV UTF-8" with a byte-order mark; the first column is 'text', not '\\ufefftext'."""
    (tmp_path / "bom.csv").write_bytes("text,label\nProfit rose .,positive\nSales fell .,negative\n"
                                       .encode("utf-8-sig"))
    got = read_examples(tmp_path / "bom.csv")
    assert [(e.text, e.label) for e in got] == [("Profit rose .", "positive"), ("Sales fell .", "negative")]
    (tmp_path / "bom.jsonl").write_bytes('{"text": "Profit rose .", "label": "positive"}\n'.encode("utf-8-sig"))
    assert [(e.text, e.label) for e in read_examples(tmp_path / "bom.jsonl")] == [("Profit rose .", "positive")]
