"""Every encoder family through every stage (DESIGN.md 3.11): tiny random BERT, RoBERTa, DistilBERT, MPNet and
DeBERTa-v2 models, each with its own tokenizer class (tests/families.py), trained by every method, pre-trained,
NER-trained, distilled, updated, explained, exported (default preset, LoRA merged, calibrated, drift reference;
and pruned) and served. A cell a family cannot do asserts its refusal message; nothing is skipped.

Each cell is recorded (family, stage, "pass" or the refusal) in the JSON file named by ``FAMILY_MATRIX_JSON``;
``python benchmarks/family_matrix.py`` runs this file and prints the matrix.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import FILLER, make_sentences, write_jsonl
from families import FAMILIES, NEW_NEGATIVE, NEW_NEUTRAL, NEW_POSITIVE, build_family
from test_serve_support import PLAIN_KEY, Server, toolchain_env

from toolchain.cli import main

METHODS = {"full": "sentiment-full", "head": "sentiment-head", "top-k": "sentiment-topk", "lora": "sentiment-lora",
           "adalora": "sentiment-adalora", "ia3": "sentiment-ia3", "fgm": "sentiment-fgm"}
SERVED = FAMILIES                   # a real server is ~4 s a family
LIGHT_EXPORT = ["latency.rounds=1", "latency.warmup=0", "latency.batch_sizes=1", "latency.pytorch=false",
                "latency.threads=1", "rank_rounds=1", "quantize.static_samples=32"]
FP32 = "train.precision=fp32"   # bf16 autocast (auto on CPUs with AMX) costs a tiny model twice the time
LONG_NER = "Maria Garcia joined Silicon Valley Bank in Hong Kong according to the quarterly report released on monday ."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models lose to thread synchronisation (4x slower on 2 threads than on 1 here, with the other core
    busy): every model of this module runs on one torch thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the matrix

@pytest.fixture(scope="session")
def matrix():
    cells: list[dict] = []
    yield cells
    target = os.environ.get("FAMILY_MATRIX_JSON")
    if target:
        Path(target).write_text(json.dumps(cells, indent=1))


class Cell:
    def __init__(self, cells: list[dict], family: str, stage: str):
        self.cells, self.family, self.stage = cells, family, stage

    def passed(self, note: str = "") -> None:
        self.cells.append({"family": self.family, "stage": self.stage, "outcome": "pass", "note": note})

    def refused(self, message: str) -> None:
        self.cells.append({"family": self.family, "stage": self.stage, "outcome": "refused", "note": message})


def cell(matrix, family: str, stage: str) -> Cell:
    return Cell(matrix, family, stage)


# --------------------------------------------------------------------------- the models and runs, built once

class Lab:
    """Base models and runs of every family, built on first use and reused by every test of the session."""

    def __init__(self, root: Path, data: dict, conll: dict):
        self.root, self.data, self.conll = root, data, conll
        self.made: dict[tuple, Path | BaseException] = {}

    def once(self, key: tuple, make) -> Path:
        if key not in self.made:
            try:
                self.made[key] = make()
            except BaseException as exc:   # remembered: a failed base fails its dependants once each, fast
                self.made[key] = exc
                raise
        found = self.made[key]
        if isinstance(found, BaseException):
            raise RuntimeError(f"{key} failed earlier: {found!r}") from found
        return found

    def base(self, family: str) -> Path:
        return self.once(("base", family), lambda: build_family(family, self.root / "bases" / family))

    def sentiment(self, family: str, output: Path, *extra: str) -> list[str]:
        data = [f"data.{split}={path}" for split, path in self.data.items()]
        return [f"model.base={self.base(family)}", *data, f"output_dir={output}", "train.batch_size=8",
                "train.eval_steps=100", "train.learning_rate=3e-3", "data.max_length=32",
                "train.early_stopping_patience=0", "train.logging_steps=5", FP32, *extra]

    def run(self, family: str, method: str) -> Path:
        """A run of ``method``: full and LoRA (reused as teacher, parent, explained, exported and served) for 60
        steps, enough for a tiny random model to tell some classes apart; the others for 6 (their mechanics, not
        their accuracy, are under test)."""
        def make() -> Path:
            output = self.root / "runs" / family / method
            length = [f"train.max_steps={60 if method in ('full', 'lora') else 6}"]
            extra = ["method.top_k=1"] if method == "top-k" else []
            assert main(["train", "--config", METHODS[method], *self.sentiment(family, output, *length, *extra)]) == 0
            return output
        return self.once(("run", family, method), make)

    def export(self, family: str) -> Path:
        """The LoRA run exported with the default preset (merge, calibration, drift reference), light timings."""
        def make() -> Path:
            output = self.root / "exports" / family
            assert main(["export", str(self.run(family, "lora")), "--config", "export-default", "--output",
                         str(output), *LIGHT_EXPORT]) == 0
            return output
        return self.once(("export", family), make)


@pytest.fixture(scope="session")
def lab(tmp_path_factory, tiny_data, tiny_conll) -> Lab:
    return Lab(tmp_path_factory.mktemp("families"), tiny_data, tiny_conll)


def manifest(path: Path) -> dict:
    return yaml.safe_load((path / "toolchain.yaml").read_text())


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


# --------------------------------------------------------------------------- the base models

@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_has_its_own_tokenizer_class(lab, family, matrix):
    from transformers import AutoConfig, AutoTokenizer

    expected = {"bert": "BertTokenizerFast", "roberta": "RobertaTokenizerFast", "distilbert": "DistilBertTokenizerFast",
                "mpnet": "MPNetTokenizerFast", "deberta-v2": "DebertaV2TokenizerFast"}[family]
    base = lab.base(family)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in base.iterdir()}
    tokenizer, config = AutoTokenizer.from_pretrained(base), AutoConfig.from_pretrained(base)
    assert type(tokenizer).__name__ == expected
    assert config.model_type == family and config.num_hidden_layers == 2
    assert ("token_type_ids" in tokenizer("profit rose")) == (family in ("bert", "deberta-v2"))
    if family == "deberta-v2":
        assert config.relative_attention and config.pos_att_type == ["p2c", "c2p"]
    cell(matrix, family, "base").passed(expected)


# --------------------------------------------------------------------------- training methods

def reloads_with_its_head(run_dir: Path) -> bool:
    """The run dir holds the whole model, head included (PEFT: in modules_to_save): two loads, with torch seeded
    differently so that a head missing from the artifact would be drawn anew at random, give the same logits."""
    import torch

    from toolchain.core.artifacts import load_run
    from toolchain.inference.run_model import load_run_model

    texts, logits = ["profit rose in helsinki .", "loss widened this quarter ."], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model, tokenizer = load_run_model(load_run(run_dir))
        with torch.no_grad():
            logits.append(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    return torch.equal(*logits)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_train(lab, family, method, matrix):
    run_dir = lab.run(family, method)
    m = manifest(run_dir)
    assert m["status"] == "complete" and m["config"]["method"]["name"] == ("full" if method == "fgm" else method)
    result = metrics(run_dir)
    params = result["parameters"]
    assert 0 < params["trainable"] <= params["total"]
    assert (params["trainable"] == params["total"]) == (method in ("full", "fgm")), params
    if method == "fgm":
        assert result["adversarial"] == "fgm", result["adversarial"]
    if method == "full":   # a model that learnt something, so that what is downstream of it is not vacuous
        assert result["test"]["accuracy"] > 0.5, result["test"]
    assert reloads_with_its_head(run_dir)
    cell(matrix, family, f"train:{method}").passed(f"trains {params['trainable_fraction']:.1%}, "
                                                   f"test accuracy {result['test']['accuracy']:.2f}")


# --------------------------------------------------------------------------- masked-LM pre-training

@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    rows = make_sentences(60, seed=7)
    lines = [" ".join(r["text"] for r in rows[i:i + 6]) for i in range(0, 60, 6)]
    path = tmp_path_factory.mktemp("family-corpus") / "docs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def masked_words_are_whole(tokenizer, text: str) -> bool:
    """Whole-word masking with the family's own tokenizer: every word is masked in all its pieces or in none."""
    from toolchain.pretrain.corpus import CONTINUATION_KEY, chunk_blocks, masking_collator

    blocks = chunk_blocks(tokenizer, [text] * 4, 32, 4, mark_words=True)
    labels = masking_collator(tokenizer, 0.3, whole_word=True, seed=1)(blocks)["labels"]
    for block, row in zip(blocks, labels.tolist()):
        continues = set(block[CONTINUATION_KEY])
        assert continues, "no word of several pieces: the check would be empty"
        if any((row[i] == -100) != (row[i - 1] == -100) for i in continues):
            return False
    return True


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrain(lab, family, corpus, matrix):
    from transformers import AutoTokenizer

    assert masked_words_are_whole(AutoTokenizer.from_pretrained(lab.base(family)),   # words the vocabulary cuts
                                  "quarterly dividends skyrocketed unexpectedly in helsinki . bankruptcy looms .")
    out = lab.root / "pretrain" / family
    assert main(["pretrain", "--config", "pretrain-fomc", f"base={lab.base(family)}", f"data.train={corpus}",
                 f"output_dir={out}", "data.max_length=32", "data.dev_fraction=0.2", "train.max_steps=4",
                 "train.batch_size=8", "train.eval_steps=4", "train.logging_steps=2", "train.learning_rate=1e-3",
                 "train.warmup_ratio=0", FP32]) == 0
    assert manifest(out)["status"] == "complete"
    result = metrics(out)
    assert result["train"]["global_step"] == 4 and result["masking"]["whole_word"] is True
    # the pre-trained model is a base of the same family, with its tokenizer, that a classifier loads
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = out / "model"
    assert type(AutoTokenizer.from_pretrained(model_dir)) is type(AutoTokenizer.from_pretrained(lab.base(family)))
    assert AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).config.model_type == family
    cell(matrix, family, "pretrain").passed(f"dev loss {result['dev']['before']['loss']:.2f} -> "
                                             f"{result['dev']['after']['loss']:.2f}")


# --------------------------------------------------------------------------- NER (windows)

def trained_pieces_are_served_pieces(tokenizer, words: list[str]) -> bool:
    """Training cuts each word into the pieces the service's tokenizer gives it in running text (a byte-level
    BPE's 'Ġjoined', a SentencePiece '▁' of its own), so a tag learnt on a word's first piece is read there."""
    from toolchain.data.words import token_words
    from toolchain.tasks.token_classification import word_pieces

    text = " ".join(words)
    encoding = tokenizer(text, return_offsets_mapping=True)
    served: dict[int, list[int]] = {}
    for token, word in zip(encoding["input_ids"], token_words(text, encoding["offset_mapping"])):
        if word is not None:
            served.setdefault(word, []).append(token)
    return [served.get(i) for i in range(len(words))] == word_pieces(tokenizer, [words])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_ner(lab, family, matrix):
    from transformers import AutoTokenizer

    assert trained_pieces_are_served_pieces(AutoTokenizer.from_pretrained(lab.base(family)), LONG_NER.split())
    out = lab.root / "ner" / family
    conll = [f"data.{split}={path}" for split, path in lab.conll.items()]
    assert main(["train", "--config", "ner-conll-full", f"model.base={lab.base(family)}", *conll,
                 f"output_dir={out}", "train.max_steps=8", "train.batch_size=8", "train.eval_batch_size=32",
                 "train.eval_steps=8", "train.learning_rate=5e-3", "data.max_length=16",
                 "train.early_stopping_patience=0", "train.logging_steps=4", FP32]) == 0
    test = metrics(out)["test"]
    assert "f1" in test and 0 <= test["f1"] <= 1
    # a sentence longer than max_length (16 pieces) is explained in windows, every entity word kept
    explained = lab.root / "ner" / f"{family}-explain.json"
    assert main(["explain", str(out), LONG_NER, "--json", str(explained)]) == 0
    for explanation in json.loads(explained.read_text())["texts"][0]["explanations"]:
        assert explanation["details"]["completeness"]["within_tolerance"], explanation["details"]
    cell(matrix, family, "ner").passed(f"test entity F1 {test['f1']:.2f}")


# --------------------------------------------------------------------------- distillation, update, explain

@pytest.mark.parametrize("family", FAMILIES)
def test_distill(lab, family, matrix):
    teacher = lab.run(family, "full")
    out = lab.root / "distill" / family
    assert main(["train", "--config", "sentiment-full", *lab.sentiment(family, out, "train.max_steps=6"),
                 f"distill.teacher={teacher}", "distill.alpha=0.9", "distill.temperature=2"]) == 0
    distill = metrics(out)["distill"]
    assert [t["run"] for t in distill["teachers"]] == [str(teacher)]
    assert 0 <= distill["student_test_agreement"] <= 1 and distill["student_test_kl"] >= 0
    cell(matrix, family, "distill").passed(f"student agrees with its teacher on {distill['student_test_agreement']:.0%}"
                                           " of test")


def new_data(folder: Path) -> dict:
    rng = random.Random(5)
    kinds = [("positive", NEW_POSITIVE), ("negative", NEW_NEGATIVE), ("neutral", NEW_NEUTRAL)]
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", 45), ("dev", 15), ("test", 15)):
        rows = [{"text": f"{rng.choice(kinds[i % 3][1])} {rng.choice(FILLER)} .", "label": kinds[i % 3][0]}
                for i in range(n)]
        files[split] = write_jsonl(folder / f"{split}.jsonl", rows)
    return files


@pytest.mark.parametrize("family", FAMILIES)
def test_update(lab, family, matrix):
    parent = lab.run(family, "full")
    data = new_data(lab.root / "update-data" / family)
    out = lab.root / "update" / family
    assert main(["update", str(parent), "--data", str(data["train"]), "--dev", str(data["dev"]), "--test",
                 str(data["test"]), "--output", str(out), "train.max_steps=6", "train.eval_steps=3",
                 "update.max_forgetting=100", FP32]) == 0
    assert manifest(out)["lineage"][0]["run"] == str(parent)
    update = metrics(out)["update"]
    assert set(update["parent_test"]) >= {"parent", "run", "drop_points"} and update["promotable"]
    cell(matrix, family, "update").passed(f"new test {update['new_test']['parent']:.2f} -> "
                                          f"{update['new_test']['run']:.2f}, parent test drop "
                                          f"{update['parent_test']['drop_points']:.1f} points")


@pytest.mark.parametrize("family", FAMILIES)
def test_explain(lab, family, matrix):
    out = lab.root / "explain" / f"{family}.json"
    texts = ["profit rose in helsinki .", "loss widened this quarter according to the ceo .", "the board met ."]
    gaps = []
    for run in (lab.run(family, "full"), lab.run(family, "lora")):
        assert main(["explain", str(run), *texts, "--json", str(out)]) == 0
        explained = json.loads(out.read_text())["texts"]
        assert [item["text"] for item in explained] == texts
        for item in explained:
            first = item["explanations"][0]
            completeness = first["details"]["completeness"]
            assert first["method"] == "integrated-gradients" and completeness["within_tolerance"], completeness
            assert [w["word"] for w in first["words"]] == item["text"].split()
            gaps.append(abs(completeness["logit_delta"]))
    assert max(gaps) > 0.05, gaps   # attributions of a real change of logit, not of a constant model
    cell(matrix, family, "explain").passed(f"largest logit change explained {max(gaps):.2f}")


# --------------------------------------------------------------------------- export

DEFAULT_VARIANTS = ("fp32", "optimized", "int8", "int8-static")
# variants a family cannot have, and the words of the library's refusal the export records
REFUSED = {("deberta-v2", "int8-static"): "not supported for models with subgraphs"}


@pytest.mark.parametrize("family", FAMILIES)
def test_export(lab, family, matrix):
    """The default preset on the LoRA run: merged, every variant built or skipped with the library's reason
    (only the refusals expected above), calibrated, each with a drift reference, one served."""
    export_dir = lab.export(family)
    report, m = json.loads((export_dir / "report.json").read_text()), manifest(export_dir)
    skipped, built = report.get("skipped", {}), set(m["variants"])
    assert set(skipped) == {v for f, v in REFUSED if f == family}, skipped
    assert built == set(DEFAULT_VARIANTS) - set(skipped) and m["serve_variant"] in built
    assert set(m["calibration"]) == built | {"pytorch"}
    assert (export_dir / "merged" / "config.json").is_file() and not (export_dir / "augmented_model.onnx").exists()
    assert report["merge"]["peft"] and report["merge"]["max_abs_diff"] < 1e-4, report["merge"]
    assert max(report["parity"].values()) < 1e-4, report["parity"]
    for variant in built:
        assert (export_dir / m["variants"][variant]["dir"] / "drift_reference.json").is_file(), variant
    for variant in DEFAULT_VARIANTS:
        if variant in skipped:
            assert REFUSED[family, variant] in skipped[variant], skipped[variant]
            cell(matrix, family, f"export:{variant}").refused(skipped[variant])
        else:
            cell(matrix, family, f"export:{variant}").passed()
    cell(matrix, family, "export").passed(f"LoRA merged, serves {m['serve_variant']}")


@pytest.mark.parametrize("family", FAMILIES)
def test_export_prune(lab, family, matrix):
    out = lab.root / "exports" / f"{family}-pruned"
    assert main(["export", str(lab.run(family, "full")), "--config", "export-prune", "--output", str(out),
                 "variants=fp32,int8", "prune.recovery_epochs=0.2", *LIGHT_EXPORT]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"pruned", "pruned-int8"} <= set(manifest(out)["variants"]), manifest(out)["variants"]
    pruning = report["pruning"]
    heads, ffn = (pruning["heads_before"], pruning["heads_after"]), (max(pruning["intermediate_before"]),
                                                                      max(pruning["intermediate_sizes"]))
    assert heads[1] < heads[0] and ffn[1] < ffn[0] and pruning["parameters_after"] < pruning["parameters_before"]
    assert report["parity"]["pruned_vs_pruned_pytorch"] < 1e-4, report["parity"]
    cell(matrix, family, "export-prune").passed(f"heads {heads[0]} -> {heads[1]}, FFN {ffn[0]} -> {ffn[1]}")


# --------------------------------------------------------------------------- serving

@pytest.mark.server
@pytest.mark.parametrize("family", SERVED)
def test_serve_classify(lab, family, matrix, tmp_path):
    export_dir = lab.export(family)
    env = toolchain_env(tmp_path / "bentoml", TOOLCHAIN_EXPORT_DIR=str(export_dir), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_API_KEYS=PLAIN_KEY)
    server = Server("toolchain.serve.service:ToolchainService", env, tmp_path / "server.log").wait_ready()
    try:
        texts = ["profit rose in helsinki .", "loss widened this quarter ."]
        response = httpx.post(server.url + "/classify", json={"texts": texts}, timeout=30,
                              headers={"Authorization": f"Bearer {PLAIN_KEY}"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body) == 2 and {r["label"] for r in body} <= {"negative", "neutral", "positive"}
    finally:
        server.stop()
    cell(matrix, family, "serve").passed(f"variant {manifest(export_dir)['serve_variant']}")
