"""Training on a tiny BERT: every method, adversarial steps, artifacts, PEFT reload, evaluation."""
import json
import shutil

import numpy as np
import pytest
import yaml

from toolchain.artifacts import ArtifactError, load_run
from toolchain.config import load_config
from toolchain.evaluate import compare_runs, evaluate_file, load_run_model, predict_logits
from toolchain.data.readers import read_examples
from toolchain.tasks import get_task
from toolchain.train.runner import train

RUN_FILES = {"toolchain.yaml", "metrics.json", "history.json", "labels.json", "curves.png", "confusion_test.png",
             "model", "tensorboard", "checkpoints"}


def run_tiny(overrides, *extra):
    return train(load_config("sentiment-full", overrides + list(extra)))


def test_full_run_learns_and_writes_the_run_dir(tiny_overrides):
    run_dir = run_tiny(tiny_overrides, "train.epochs=8")
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert not (run_dir / "INCOMPLETE").exists()
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["labels"] == ["negative", "neutral", "positive"]
    assert len(manifest["data_files"]["train"]["sha256"]) == 64
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.6, metrics["test"]  # well above chance (0.33): it learned
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 30
    assert set(metrics["test"]["per_class"]) == {"negative", "neutral", "positive"}
    assert any("eval_macro_f1" in h for h in json.loads((run_dir / "history.json").read_text()))
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method, trainable_max", [("head", 0.01), ("top-k", 0.1), ("lora", 0.1),
                                                   ("adalora", 0.1), ("ia3", 0.01)])
def test_method_trains_only_its_parameters(tiny_overrides, method, trainable_max):
    run_dir = run_tiny(tiny_overrides, f"method.name={method}", "method.top_k=1", "method.lora_r=4",
                       "method.adalora_init_r=6", "train.epochs=2")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fraction = metrics["parameters"]["trainable_fraction"]
    assert 0 < fraction < trainable_max, (method, metrics["parameters"])
    if method == "adalora":
        assert metrics["adalora"]["update_and_allocate_calls"] == metrics["train"]["global_step"]
        assert 0 < metrics["adalora"]["final_rank_total"] < metrics["adalora"]["initial_rank_total"]


@pytest.mark.parametrize("method", ["lora", "adalora", "ia3"])
def test_peft_adapter_with_head_reloads_to_the_same_predictions(tiny_overrides, method):
    run_dir = run_tiny(tiny_overrides, f"method.name={method}", "method.lora_r=4", "method.adalora_init_r=6",
                       "train.epochs=2")
    run = load_run(run_dir)
    assert (run_dir / "model" / "adapter_model.safetensors").exists() and run.is_peft
    from safetensors import safe_open
    with safe_open(run_dir / "model" / "adapter_model.safetensors", "pt") as f:
        assert any("classifier" in key for key in f.keys()), "the head must be saved with the adapter"
    examples = read_examples(run.manifest["data_files"]["test"]["path"])
    task = get_task(run.task)
    reloaded = predict_logits(*load_run_model(run), task, examples, run.max_length)
    merged = predict_logits(*load_run_model(run, merge=True), task, examples, run.max_length)
    stored = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert np.abs(reloaded - merged).max() < 1e-4
    acc = float((reloaded.argmax(-1) == [run.labels.index(e.label) for e in examples]).mean())
    assert acc == pytest.approx(stored["accuracy"])


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_adversarial_training_runs_with_methods(tiny_overrides, kind, method):
    run_dir = run_tiny(tiny_overrides, f"adversarial.kind={kind}", f"method.name={method}", "train.epochs=1")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["adversarial"] == kind and np.isfinite(metrics["train"]["train_loss"])


def test_adversarial_perturbation_changes_the_loss(tiny_bert):
    """FGM's perturbation points up the loss gradient: the perturbed loss exceeds the clean one."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from toolchain.train.adversarial import EmbeddingPerturbation, _normalized

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok(["profit rose .", "sales fell ."], return_tensors="pt", padding=True)
    labels = torch.tensor([2, 0])
    hook = EmbeddingPerturbation(model)
    hook.capture = True
    clean = model(**batch, labels=labels).loss
    clean.backward()
    hook.capture = False
    hook.delta = (1.0 * _normalized(hook.delta.grad)).detach()
    with torch.no_grad():
        perturbed = model(**batch, labels=labels).loss
    hook.remove()
    assert perturbed > clean


def test_evaluate_and_compare(tiny_overrides, tiny_data, tmp_path):
    head = run_tiny([o for o in tiny_overrides if not o.startswith("output_dir")], f"output_dir={tmp_path / 'head'}",
                    "method.name=head", "train.epochs=1")
    full = run_tiny([o for o in tiny_overrides if not o.startswith("output_dir")], f"output_dir={tmp_path / 'full'}",
                    "train.epochs=6")
    scored = evaluate_file(str(full), str(tiny_data["dev"]))
    assert scored["examples"] == 30 and 0 <= scored["accuracy"] <= 1
    table = compare_runs([str(head), str(full)])
    assert "head" in table and "full" in table and "macro_f1" in table


def test_existing_run_dir_is_not_overwritten(tiny_overrides):
    run_tiny(tiny_overrides, "train.max_steps=2")
    with pytest.raises(ArtifactError, match="already exists; pass --overwrite"):
        run_tiny(tiny_overrides, "train.max_steps=2")


def test_incomplete_run_is_refused(tiny_overrides, tmp_path):
    run_dir = run_tiny(tiny_overrides, "train.max_steps=2")
    (run_dir / "INCOMPLETE").write_text("interrupted")
    with pytest.raises(ArtifactError, match="incomplete"):
        load_run(run_dir)


def test_resume_before_the_first_checkpoint_is_a_clear_error(tiny_overrides, tmp_path):
    """A run killed before its first checkpoint has an empty checkpoints/: resuming names the way out."""
    run_dir = run_tiny(tiny_overrides, "train.max_steps=2")
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "INCOMPLETE").write_text("interrupted")
    with pytest.raises(ArtifactError, match="before its first checkpoint.*--overwrite"):
        train(load_config("sentiment-full", tiny_overrides), resume=True)
    assert (run_dir / "INCOMPLETE").exists() and (run_dir / "model").exists()  # nothing touched


def test_fused_adamw_is_selectable_and_recorded(tiny_overrides):
    run_dir = run_tiny(tiny_overrides, "train.optimizer=adamw_torch_fused", "train.max_steps=3")
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["config"]["train"]["optimizer"] == "adamw_torch_fused"
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["global_step"] == 3


# --------------------------------------------------------------------------- --overwrite only replaces run dirs

def overwrite_cfg(output_dir):
    return load_config("sentiment-full", [f"output_dir={output_dir}"])


def test_overwrite_refuses_a_folder_that_is_not_a_run_dir(tmp_path, monkeypatch):
    """`output_dir=. --overwrite` must not wipe the current folder (or any folder that is no run dir)."""
    from toolchain.train.runner import prepare_run_dir

    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "src").mkdir()
    with pytest.raises(ArtifactError, match=f"{tmp_path}.*not a run dir"):
        prepare_run_dir(overwrite_cfg(tmp_path), resume=False, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="not a run dir"):
        prepare_run_dir(overwrite_cfg("."), resume=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me" and (tmp_path / "src").is_dir()
    export_dir = tmp_path / "export"  # an export dir's toolchain.yaml is not a training run's
    export_dir.mkdir()
    (export_dir / "toolchain.yaml").write_text("artifact_version: 1\nstage: export\nstatus: complete\n")
    with pytest.raises(ArtifactError, match="stage 'export'"):
        prepare_run_dir(overwrite_cfg(export_dir), resume=False, overwrite=True)
    assert (export_dir / "toolchain.yaml").exists()


def test_overwrite_refuses_the_current_folder_even_if_it_is_a_run_dir(tmp_path, monkeypatch):
    from toolchain.train.runner import prepare_run_dir

    (tmp_path / "toolchain.yaml").write_text("artifact_version: 1\nstage: train\nstatus: complete\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="current directory"):
        prepare_run_dir(overwrite_cfg("."), resume=False, overwrite=True)
    assert (tmp_path / "toolchain.yaml").exists()


@pytest.mark.parametrize("marker", ["manifest", "incomplete", "checkpoint"])
def test_overwrite_replaces_a_run_dir_an_empty_or_a_missing_one(tmp_path, marker):
    from toolchain.train.runner import prepare_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if marker == "manifest":
        (run_dir / "toolchain.yaml").write_text("artifact_version: 1\nstage: train\nstatus: complete\n")
    elif marker == "incomplete":
        (run_dir / "INCOMPLETE").write_text("interrupted\n")
    else:
        (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")
    assert prepare_run_dir(overwrite_cfg(run_dir), resume=False, overwrite=True) == run_dir
    assert not (run_dir / "metrics.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_dir(overwrite_cfg(empty), resume=False, overwrite=True) == empty
    assert prepare_run_dir(overwrite_cfg(tmp_path / "new"), resume=False, overwrite=True) == tmp_path / "new"
