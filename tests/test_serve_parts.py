"""The service's parts without a server: settings, API keys, request validation, ONNX loading."""
from __future__ import annotations

import ast
import json
import os
import shutil

import numpy as np
import pytest

from test_serve_support import REPO, built  # noqa: F401  (session fixture)
from toolchain.core.artifacts import ArtifactError, load_export
from toolchain.core.config import ConfigError
from toolchain.serve import auth
from toolchain.serve.classify import parse_request, predictions
from toolchain.serve.metrics import source_label
from toolchain.inference.runtime import CPU, CUDA, OnnxModel, choose_providers, plan_calls
from toolchain.core.hardware import available_cpus
from toolchain.serve.settings import ServeSettings, load_settings, settings_table
from toolchain.serve.validation import Limits, RequestRejected

LIMITS = Limits(max_items=4, max_chars=50)


# --------------------------------------------------------------------------- settings

def test_settings_come_from_environment_variables():
    settings = load_settings({"TOOLCHAIN_MAX_BATCH_ITEMS": "7", "TOOLCHAIN_AUTH": "false",
                              "TOOLCHAIN_SOURCES": "AAPL, MSFT,", "TOOLCHAIN_TOPICS": "TSLA", "TOOLCHAIN_WORKERS": "2",
                              "OTHER": "x"})
    assert settings.max_batch_items == 7 and settings.auth is False and settings.workers == 2
    assert settings.source_allow_list == frozenset({"AAPL", "MSFT", "TSLA"})  # TOOLCHAIN_TOPICS: the former name
    assert 1 <= available_cpus() <= os.cpu_count()
    assert load_settings({}) == ServeSettings()


def test_the_former_setting_name_logs_a_deprecation_line_once(caplog, monkeypatch):
    import logging

    from toolchain.serve import settings as settings_module

    monkeypatch.setattr(settings_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="toolchain.serve"):
        for _ in range(2):
            assert load_settings({"TOOLCHAIN_TOPICS": "TSLA"}).source_allow_list == frozenset({"TSLA"})
    lines = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert lines == ["TOOLCHAIN_TOPICS is deprecated and goes in the next release; use TOOLCHAIN_SOURCES"]


@pytest.mark.parametrize("variable, value", [("TOOLCHAIN_MAX_BATCH_ITEMS", "many"), ("TOOLCHAIN_MAX_BATCH_SIZE", "1"),
                                             ("TOOLCHAIN_PROVIDER", "tpu"), ("TOOLCHAIN_AUTH", "maybe")])
def test_bad_setting_names_its_variable_and_value(variable, value):
    with pytest.raises(ConfigError, match=variable) as error:
        load_settings({variable: value})
    assert repr(value) in str(error.value) or value in str(error.value)


def test_settings_docstring_documents_every_variable():
    from toolchain.serve import settings

    for variable, _, _ in settings_table():
        assert variable in settings.__doc__, variable


# --------------------------------------------------------------------------- API keys

def test_keys_from_file_and_environment_are_kept_as_digests(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# comment\n\nalpha\n{auth.hash_key('beta')}\n")
    ring = auth.load_keys({auth.KEYS_FILE_ENV: str(keys_file), auth.KEYS_ENV: "gamma, sha256:" + "ab" * 32})
    assert len(ring) == 4
    assert all(isinstance(d, bytes) and len(d) == 32 for d in ring._digests)
    assert b"alpha" not in b"".join(ring._digests)
    assert ring.check("alpha") and ring.check("beta") and ring.check("gamma")
    assert not ring.check("alphA") and not ring.check("") and not ring.check(None)
    assert not ring.check(auth.hash_key("beta"))  # the stored hash is not itself a key


def test_bad_key_configuration_is_refused(tmp_path):
    with pytest.raises(auth.AuthConfigError, match="sha256:<64 hex digits>"):
        auth.load_keys({auth.KEYS_ENV: "sha256:xyz"})
    with pytest.raises(auth.AuthConfigError, match="no such file"):
        auth.load_keys({auth.KEYS_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(auth.AuthConfigError, match="TOOLCHAIN_AUTH=false"):
        auth.check_configuration(True, {})
    assert len(auth.check_configuration(False, {})) == 0


@pytest.mark.parametrize("headers, key", [({b"authorization": b"Bearer k1"}, "k1"), ({b"authorization": b"bearer  k1 "}, "k1"),
                                          ({b"x-api-key": b"k2"}, "k2"), ({b"authorization": b"Basic k1"}, None),
                                          ({b"authorization": b"Bearer "}, None), ({}, None)])
def test_presented_key_from_either_header(headers, key):
    assert auth.presented_key(headers) == key


# --------------------------------------------------------------------------- requests

@pytest.mark.parametrize("body, status, field", [
    (b'{"texts": []}', 422, "texts"),
    (b'{"texts": ["ok", "  \\n "]}', 422, "texts[1]"),
    (b'{"texts": ["ok", ""]}', 422, "texts[1]"),
    (b'{"texts": "just a string"}', 422, "texts"),
    (b'{"texts": ["ok", 5]}', 422, "texts[1]"),
    (b'{"texts": [["nested"]]}', 422, "texts[0]"),
    (b'{"texts": ["ok"], "topic": 7}', 422, "topic"),
    (b'{"text": ["ok"]}', 422, "text"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', 422, "texts"),
    (b'{"texts": ["' + b"x" * 51 + b'"]}', 422, "texts[0]"),
    (b'{"texts": ["\\ud800"]}', 422, "texts[0]"),
    (b'["ok"]', 422, None),
    (b'{"texts": ["\xff\xfe"]}', 400, None),
    (b'{"texts": [', 400, None),
    (b"", 400, None),
])
def test_bad_request_is_a_clear_4xx(body, status, field):
    with pytest.raises(RequestRejected) as error:
        parse_request(body, LIMITS)
    rejected = error.value
    assert rejected.status == status and rejected.reason == "validation" and rejected.field == field
    payload = rejected.body()
    assert payload["error"] and len(payload["message"]) > 15
    if field:
        assert field.split("[")[0] in payload["message"]


def test_good_request_and_source():
    request = parse_request(json.dumps({"texts": ["a", "bé"], "source": "AAPL"}).encode(), LIMITS)
    assert request.texts == ["a", "bé"] and request.source == "AAPL"
    assert parse_request(b'{"texts": ["a"], "topic": "MSFT"}', LIMITS).source == "MSFT"  # the former field name
    assert parse_request(b'{"texts": ["a"]}', LIMITS).source is None
    with pytest.raises(RequestRejected, match="'source' only"):
        parse_request(b'{"texts": ["a"], "source": "x", "topic": "y"}', LIMITS)
    allowed = frozenset({"AAPL"})
    assert [source_label(t, allowed) for t in ("AAPL", "aapl", None, "x" * 100)] == ["AAPL", "other", "other", "other"]


def test_predictions_keep_order_and_give_every_class_score():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    result = predictions(logits, ["negative", "neutral", "positive"], [False, True])
    assert [p.label for p in result] == ["negative", "positive"] and [p.truncated for p in result] == [False, True]
    for p in result:
        assert abs(sum(p.scores.values()) - 1) < 1e-9 and p.score == max(p.scores.values())


# --------------------------------------------------------------------------- model loading

def test_provider_choice():
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ArtifactError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_tokenizer_matches_transformers_including_truncation(built):
    from transformers import AutoTokenizer

    model = OnnxModel(load_export(built.export_dir), "int8")
    reference = AutoTokenizer.from_pretrained(model.export.tokenizer_dir)
    texts = ["Profit rose 5 %.", "ÉTÉ naïve café ümlaut", "word " * 100, "x"]
    encodings = model.encoder.tokenize(texts)
    inputs = model.encoder.pad(encodings)
    output = model.infer(texts)
    for row, text in enumerate(texts):
        ids = reference(text, truncation=True, max_length=model.export.max_length)["input_ids"]
        assert inputs["input_ids"][row, :len(ids)].tolist() == ids and encodings[row].ids == ids
        assert output.tokens[row] == len(ids) and int(inputs["attention_mask"][row].sum()) == len(ids)
    assert output.truncated == [False, False, True, False] and max(output.tokens) == model.export.max_length


BATCH_TEXTS = ["profit rose", "the board met in helsinki on monday to discuss the report", "sales fell",
               "word " * 60, "shares jumped after record earnings were reported for the quarter"]


def test_fp32_logits_do_not_depend_on_padding_or_batching(built):
    """With the attention mask, padding to the longest text of a call leaves fp32 logits bit-identical."""
    model = OnnxModel(load_export(built.export_dir), "fp32")
    assert not model.per_text
    alone = np.concatenate([model.run(model.encoder.pad(model.encoder.tokenize([t])))[0] for t in BATCH_TEXTS])
    padded_together = model.run(model.encoder.pad(model.encoder.tokenize(BATCH_TEXTS)))[0]
    assert np.array_equal(alone, padded_together)
    assert np.array_equal(alone, np.stack(model.infer(BATCH_TEXTS).logits))


def test_dynamic_int8_is_run_one_text_per_call_so_batching_cannot_move_scores(built):
    """Dynamic int8 measures activation ranges over the whole call: padded together, scores move."""
    model = OnnxModel(load_export(built.export_dir), "int8")
    assert model.per_text
    alone = np.stack([model.infer([t]).logits[0] for t in BATCH_TEXTS])
    assert np.array_equal(alone, np.stack(model.infer(BATCH_TEXTS).logits))
    padded_together = model.run(model.encoder.pad(model.encoder.tokenize(BATCH_TEXTS)))[0]
    assert not np.array_equal(alone, padded_together)  # what grouping the texts would have done


def test_model_calls_group_texts_by_length_or_run_them_one_by_one():
    lengths = [5, 40, 12, 33, 16, 17]
    assert plan_calls(lengths, per_text=True) == [[0], [1], [2], [3], [4], [5]]
    assert plan_calls(lengths, per_text=False) == [[0, 2, 4], [5], [1, 3]]
    # a call holds at most max_texts texts: a whole test set of one length never becomes one giant call
    calls = plan_calls([10] * 70 + [40] * 5, per_text=False, max_texts=32)
    assert [len(c) for c in calls] == [32, 32, 6, 5] and sorted(i for c in calls for i in c) == list(range(75))


def test_tampered_or_unlisted_model_file_is_refused(built, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(built.export_dir, copy)
    model_file = load_export(copy).variant_file("int8")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model_quantized\.onnx: sha256 .* does not match"):
        OnnxModel(load_export(copy), "int8")
    with pytest.raises(ArtifactError, match="no variant 'int4'"):
        OnnxModel(load_export(copy), "int4")


def test_every_api_route_is_behind_admission_control():
    from toolchain.serve.service import ROUTES, ToolchainService

    assert {api.route for api in ToolchainService.apis.values()} <= set(ROUTES)


def test_no_pickle_in_the_serving_code():
    """Nothing in the request path or model loading can unpickle (DESIGN.md section 5.6)."""
    banned_modules = {"pickle", "cloudpickle", "dill", "joblib", "torch", "shelve"}
    files = [*sorted((REPO / "toolchain" / "serve").glob("*.py")), REPO / "toolchain" / "core" / "artifacts.py",
             REPO / "toolchain" / "inference" / "runtime.py"]   # model loading lives in core and inference now
    assert len(files) >= 9
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & banned_modules, f"{path.name} imports {names}"
