"""Training on a tiny BERT: every method, adversarial steps, artifacts, PEFT reload, evaluation."""
import json
import shutil

import numpy as np
import pytest
import yaml

from toolchain.core.artifacts import ArtifactError, load_run
from toolchain.core.config import load_config
from toolchain.evaluate import compare_runs, evaluate_file
from toolchain.inference.run_model import load_run_model, predict_logits
from toolchain.data.readers import read_examples
from toolchain.tasks import get_task
from toolchain.train.runner import train

RUN_FILES = {"toolchain.yaml", "metrics.json", "history.json", "labels.json", "curves.png", "confusion_test.png",
             "model", "tensorboard", "checkpoints"}


def run_tiny(overrides, *extra):
    return train(load_config("sentiment-full", overrides + list(extra)))


def run_watching_weights(monkeypatch, overrides, *extra):
    """Train; also return the parameters as built (before the first step), as trained, and which were trainable."""
    import torch

    from toolchain.train import runner

    seen, build_model = {}, runner.build_model

    def watched(*args, **kwargs):
        model = build_model(*args, **kwargs)
        seen["model"] = model
        seen["initial"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        seen["trainable"] = {name for name, p in model.named_parameters() if p.requires_grad}
        return model

    monkeypatch.setattr(runner, "build_model", watched)
    run_dir = run_tiny(overrides, *extra)
    final = {name: p.detach().clone() for name, p in seen["model"].named_parameters()}
    changed = {name for name, value in final.items() if not torch.equal(value, seen["initial"][name])}
    return run_dir, seen["initial"], final, changed, seen["trainable"]


def test_full_run_learns_and_writes_the_run_dir(tiny_overrides, monkeypatch):
    run_dir, initial, _, changed, trainable = run_watching_weights(monkeypatch, tiny_overrides, "train.epochs=8")
    assert trainable == set(initial) and changed == set(initial)  # full fine-tuning moves every tensor
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


# The parameters each method trains besides the task head (model: 2 layers, method.top_k=1).
OWN_PARAMETERS = {"head": lambda name: False, "top-k": lambda name: ".layer.1." in name,
                  "lora": lambda name: ".lora_" in name, "adalora": lambda name: ".lora_" in name,
                  "ia3": lambda name: ".ia3_l." in name}


def is_trained_head(name: str, peft: bool) -> bool:
    """The tiny BERT's task head: classifier and pooler; PEFT methods train the classifier's modules_to_save copy
    only (the pooler sits in the base model, where LoRA adapts it)."""
    return "modules_to_save" in name if peft else name.startswith(("classifier.", "bert.pooler."))


def adalora_budget(step: int, initial: int, target: int, total: int, tinit: int, tfinal: int) -> int:
    """AdaLoRA's total rank after its masking at (0-based) optimizer step ``step``: the cubic schedule of
    Zhang et al. (2023) from the initial to the target budget between tinit and total - tfinal."""
    if step <= tinit:
        return initial
    if step >= total - tfinal:
        return target
    return int((initial - target) * (1 - (step - tinit) / (total - tfinal - tinit)) ** 3 + target)


@pytest.mark.parametrize("method, trainable_max", [("head", 0.01), ("top-k", 0.1), ("lora", 0.1),
                                                   ("adalora", 0.1), ("ia3", 0.01)])
def test_method_trains_only_its_parameters(tiny_overrides, monkeypatch, method, trainable_max):
    """Exactly the method's parameters move (the top layer, the adapters, the IA3 vectors) with the head; every
    other tensor stays bit-identical to the base model. AdaLoRA's rank budget follows its schedule."""
    run_dir, initial, _, changed, trainable = run_watching_weights(
        monkeypatch, tiny_overrides, f"method.name={method}", "method.top_k=1", "method.lora_r=4",
        "method.adalora_init_r=6", "train.epochs=2")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fraction = metrics["parameters"]["trainable_fraction"]
    assert 0 < fraction < trainable_max, (method, metrics["parameters"])
    peft = method in ("lora", "adalora", "ia3")
    own = {name for name in initial if OWN_PARAMETERS[method](name)}
    head = {name for name in initial if is_trained_head(name, peft)}
    assert head and (own or method == "head")
    assert trainable == own | head, sorted(trainable ^ (own | head))
    assert changed == own | head, sorted(changed ^ (own | head))
    if method == "adalora":
        adalora = metrics["adalora"]
        assert adalora["update_and_allocate_calls"] == metrics["train"]["global_step"] == 30
        initial_budget, target = adalora["initial_rank_total"], adalora["initial_rank_total"] * 4 // 6
        assert adalora["final_rank_total"] == target < initial_budget  # lora_r=4 of adalora_init_r=6 per matrix
        ranks = {entry["step"]: entry["ranks"] for entry in adalora["rank_history"]}
        # budget masks fall on every adalora_delta_t=10th step, then every step of the last 20% (tfinal=6)
        for step in (10, 20, 25):
            expected = adalora_budget(step, initial_budget, target, total=30, tinit=3, tfinal=6)
            assert ranks[step] == expected, (step, ranks)
        assert target < ranks[10] < initial_budget


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


@pytest.mark.parametrize("method", ["full", "lora"])
def test_adversarial_training_changes_the_weights(tiny_overrides, tmp_path, monkeypatch, method):
    """Same seed, same data, three optimizer steps: FGM and PGD end with other weights than plain training (the
    adversarial loss's gradient enters every step), with trainable embeddings (full) and frozen ones (LoRA)."""
    base = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    weights = {}
    for kind in ("none", "fgm", "pgd"):
        run_dir, _, weights[kind], _, _ = run_watching_weights(
            monkeypatch, base, f"output_dir={tmp_path / kind}", f"adversarial.kind={kind}", f"method.name={method}",
            "train.max_steps=3")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["adversarial"] == kind and np.isfinite(metrics["train"]["train_loss"])
    for kind in ("fgm", "pgd"):
        moved = max(float((weights[kind][name] - value).abs().max()) for name, value in weights["none"].items())
        assert moved > 1e-5, f"{kind} left the weights where plain training put them (max difference {moved:g})"


def unit(grad):
    """Per-example L2-normalised (batch, seq, hidden) tensor."""
    return grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1)


def into_ball(delta, epsilon):
    """Projection onto the per-example L2 ball of radius epsilon."""
    return delta * (epsilon / delta.flatten(1).norm(dim=1)).clamp(max=1.0).view(-1, 1, 1)


@pytest.fixture
def still_classifier(tiny_bert):
    """The tiny BERT with a 3-class head and no dropout (training-mode forwards are deterministic), a batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer(["profit rose .", "sales fell in the period .", "the board met"], return_tensors="pt",
                      padding=True)
    return model, {**batch, "labels": torch.tensor([2, 0, 1])}


def adversarial_trainer(model, tmp_path, **adversarial):
    from transformers import TrainingArguments

    from toolchain.core.config import AdversarialConfig
    from toolchain.train.adversarial import AdversarialTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to=[])
    trainer = AdversarialTrainer(model=model, args=args, adversarial=AdversarialConfig(**adversarial))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop; training_step divides by it
    return trainer


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversarial_training_step_adds_the_perturbed_loss_gradient(still_classifier, tmp_path, kind):
    """One training step's parameter gradient is the clean loss's plus the loss's at the perturbed word
    embeddings: FGM's epsilon * g/|g| (g: the clean loss's gradient there), PGD's projected K-step ascent."""
    import copy

    import torch

    from toolchain.train.adversarial import EmbeddingPerturbation

    model, inputs = still_classifier
    epsilon, alpha, steps = 0.5, 0.2, 3
    reference = copy.deepcopy(model).train()
    hook = EmbeddingPerturbation(reference)
    hook.capture = True
    reference(**inputs).loss.backward()
    hook.capture = False
    clean = {name: p.grad.clone() for name, p in reference.named_parameters()}
    delta = epsilon * unit(hook.delta.grad) if kind == "fgm" else into_ball(alpha * unit(hook.delta.grad), epsilon)
    for _ in range(steps - 1 if kind == "pgd" else 0):
        hook.delta = delta.detach().requires_grad_(True)
        step_grad, = torch.autograd.grad(reference(**inputs).loss, hook.delta)
        delta = into_ball(hook.delta.detach() + alpha * unit(step_grad), epsilon)
    hook.delta = delta.detach()
    reference(**inputs).loss.backward()
    expected = {name: p.grad for name, p in reference.named_parameters()}

    trainer = adversarial_trainer(model, tmp_path, kind=kind, epsilon=epsilon, alpha=alpha, steps=steps)
    trainer.training_step(model, dict(inputs))
    got = {name: p.grad for name, p in model.named_parameters()}
    assert max(float((expected[n] - clean[n]).abs().max()) for n in clean) > 1e-4  # the perturbed loss matters
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-7), name


def test_project_scales_only_the_examples_outside_the_ball():
    import torch

    from toolchain.train.adversarial import _project

    direction = unit(torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)))
    delta = direction * torch.tensor([0.5, 2.0, 4.0]).view(-1, 1, 1)
    projected = _project(delta, 1.0)
    assert torch.allclose(projected.flatten(1).norm(dim=1), torch.tensor([0.5, 1.0, 1.0]))
    assert torch.allclose(unit(projected), direction, atol=1e-6)  # scaled, not turned


def test_pgd_ascent_stays_in_the_epsilon_ball_and_raises_the_loss(still_classifier, tmp_path):
    """Each further PGD step raises the loss at the perturbed embeddings; the perturbation's norm grows by at
    most alpha a step and never leaves the epsilon ball; the ascent leaves no parameter gradients behind."""
    import torch

    model, inputs = still_classifier
    epsilon, losses = 0.1, []
    for steps in range(1, 7):
        trainer = adversarial_trainer(model.eval(), tmp_path, kind="pgd", epsilon=epsilon, alpha=0.03, steps=steps)
        hook = trainer._perturber(model)
        hook.capture = True
        clean = model(**inputs).loss
        grad, = torch.autograd.grad(clean, hook.delta)
        hook.capture = False
        delta = trainer._pgd_delta(model, inputs, grad)
        hook.delta = delta
        with torch.no_grad():
            losses.append(float(model(**inputs).loss))
        hook.remove()
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= epsilon * (1 + 1e-5)).all() and (norms <= 0.03 * steps + 1e-6).all(), (steps, norms)
        assert all(p.grad is None for p in model.parameters())
    assert torch.allclose(norms, torch.full_like(norms, epsilon))  # 6 steps of 0.03 reach the ball's surface
    assert clean.item() < losses[0] and all(a < b for a, b in zip(losses, losses[1:])), losses


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
    """evaluate scores a file against its own labels: on a file where 18 of 30 labels are the model's own
    predictions and 12 another class, accuracy is 18/30 and the confusion matrix is known. compare's rows
    are the runs' metrics.json test figures (made distinct from the dev ones for one run)."""
    import re

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import write_jsonl

    base = [o for o in tiny_overrides if not o.startswith("output_dir")]
    head = run_tiny(base, f"output_dir={tmp_path / 'head'}", "method.name=head", "train.epochs=1")
    full = run_tiny(base, f"output_dir={tmp_path / 'full'}", "train.epochs=4")
    model = AutoModelForSequenceClassification.from_pretrained(full / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(full / "model")
    labels = json.loads((full / "labels.json").read_text())["labels"]
    texts = [json.loads(line)["text"] for line in tiny_data["dev"].read_text().splitlines()]
    with torch.no_grad():  # one text per call, straight from the saved model: no batching, no padding
        predicted = [int(model(**tokenizer(text, return_tensors="pt")).logits.argmax()) for text in texts]
    assert len(set(predicted)) >= 2, predicted  # the model tells classes apart: its predictions matter below
    gold = [p if i < 18 else (p + 1) % 3 for i, p in enumerate(predicted)]
    crafted = write_jsonl(tmp_path / "crafted.jsonl", [{"text": t, "label": labels[g]} for t, g in zip(texts, gold)])
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (gold, predicted), 1)

    scored = evaluate_file(str(full), str(crafted))
    assert scored["examples"] == 30 and scored["accuracy"] == pytest.approx(18 / 30)
    assert scored["confusion_matrix"] == confusion.tolist()

    def rows(table):
        header, _, *lines = table.splitlines()
        columns = re.split(r"\s{2,}", header.strip())
        return columns, [dict(zip(columns, re.split(r"\s{2,}", line.strip()))) for line in lines]

    # this tiny data gives the same dev and test figures: give the head run distinct test figures to tell them apart
    stored = json.loads((head / "metrics.json").read_text())
    stored["test"].update(accuracy=0.1234, macro_f1=0.2345)
    for value, name in zip((0.3456, 0.4567, 0.5678), labels):
        stored["test"]["per_class"][name]["f1"] = value
    (head / "metrics.json").write_text(json.dumps(stored))
    columns, stored_rows = rows(compare_runs([str(head), str(full)]))
    assert columns == ["run", "method", "base", "trainable", "accuracy", "macro_f1", "f1:negative", "f1:neutral",
                       "f1:positive", "train time"]
    assert [(r["run"], r["method"], r["base"]) for r in stored_rows] == [("head", "head", tiny_bert_name(full)),
                                                                        ("full", "full", tiny_bert_name(full))]
    for row, run_dir in zip(stored_rows, (head, full)):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["trainable"] == f"{metrics['parameters']['trainable']:,}"
        test = metrics["test"]
        figures = {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                   **{f"f1:{c}": test["per_class"][c]["f1"] for c in labels}}
        assert {k: row[k] for k in figures} == {k: f"{v:.4f}" for k, v in figures.items()}
        assert row["train time"] == f"{metrics['train']['wall_seconds']:.0f}s"
    assert int(stored_rows[0]["trainable"].replace(",", "")) < int(stored_rows[1]["trainable"].replace(",", ""))
    _, on_file = rows(compare_runs([str(head), str(full)], data=str(crafted)))
    assert on_file[1]["accuracy"] == f"{18 / 30:.4f}"


def tiny_bert_name(run_dir):
    from pathlib import Path

    return Path(yaml.safe_load((run_dir / "toolchain.yaml").read_text())["base_model"]).name


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


def test_early_stopping_stops_on_a_dev_plateau(tiny_overrides):
    """learning_rate=0 makes the dev metric a plateau: with patience 2 the run stops after the third
    evaluation (step 15 of 45), not at the end of its 3 epochs."""
    run_dir = run_tiny(tiny_overrides, "train.learning_rate=0", "train.early_stopping_patience=2", "train.eval_steps=5")
    history = json.loads((run_dir / "history.json").read_text())
    evaluations = [h["eval_macro_f1"] for h in history if "eval_macro_f1" in h]
    assert len(evaluations) == 3 and len(set(evaluations)) == 1, evaluations
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["global_step"] == 15


def test_gradient_accumulation_takes_one_optimizer_step_per_n_batches(tiny_overrides):
    """120 examples in batches of 8 are 15 batches an epoch; accumulating 3 of them makes 5 optimizer steps."""
    run_dir = run_tiny(tiny_overrides, "train.epochs=1", "train.gradient_accumulation=3", "train.eval_steps=100")
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["global_step"] == 5


def test_warmup_ramps_the_learning_rate_up_to_its_peak(tiny_overrides):
    """warmup_ratio=0.3 of 10 steps: the learning rate of steps 1-4 climbs 0, 1/3, 2/3 of the peak, the peak;
    then the linear schedule decays it."""
    run_dir = run_tiny(tiny_overrides, "train.max_steps=10", "train.warmup_ratio=0.3", "train.logging_steps=1",
                       "train.eval_steps=100", "train.learning_rate=1e-3")
    rates = {h["step"]: h["learning_rate"] for h in json.loads((run_dir / "history.json").read_text())
             if "learning_rate" in h}
    assert [rates[step] for step in (1, 2, 3, 4)] == pytest.approx([0, 1e-3 / 3, 2e-3 / 3, 1e-3])
    assert max(rates.values()) == pytest.approx(1e-3) and rates[10] < rates[5] < rates[4]


# --------------------------------------------------------------------------- --overwrite only replaces run dirs

def overwrite_cfg(output_dir):
    return load_config("sentiment-full", [f"output_dir={output_dir}"])


def test_overwrite_refuses_a_folder_that_is_not_a_run_dir(tmp_path, monkeypatch):
    """`output_dir=. --overwrite` must not wipe the current folder (or any folder that is no run dir)."""
    from toolchain.core.run_dirs import prepare_run_dir

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
    from toolchain.core.run_dirs import prepare_run_dir

    (tmp_path / "toolchain.yaml").write_text("artifact_version: 1\nstage: train\nstatus: complete\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="current directory"):
        prepare_run_dir(overwrite_cfg("."), resume=False, overwrite=True)
    assert (tmp_path / "toolchain.yaml").exists()


@pytest.mark.parametrize("marker", ["manifest", "incomplete", "checkpoint"])
def test_overwrite_replaces_a_run_dir_an_empty_or_a_missing_one(tmp_path, marker):
    from toolchain.core.run_dirs import prepare_run_dir

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


def fake_run(root, name, task, labels, test_metrics):
    """A complete run dir with stored metrics only (compare reads toolchain.yaml and metrics.json)."""
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "toolchain.yaml").write_text(yaml.safe_dump({
        "artifact_version": 1, "stage": "train", "status": "complete", "task": task, "labels": labels,
        "base_model": "tiny-bert", "config": {"method": {"name": "full"}}}))
    (run / "metrics.json").write_text(json.dumps({"test": test_metrics, "parameters": {"trainable": 10},
                                                  "train": {"wall_seconds": 1}}))
    return str(run)


def test_compare_refuses_runs_of_different_task_types(tmp_path):
    """The headline column is accuracy for classification and entity F1 for NER: a table mixing them would label
    one run's figure with the other's metric, so compare refuses, naming each run's task."""
    classes = fake_run(tmp_path, "sentiment", "sequence-classification", ["negative", "positive"],
                       {"accuracy": 0.9, "macro_f1": 0.8,
                        "per_class": {"negative": {"f1": 0.7}, "positive": {"f1": 0.9}}})
    entities = fake_run(tmp_path, "ner", "token-classification", ["O", "B-PER", "I-PER"],
                        {"f1": 0.5, "macro_f1": 0.4, "per_type": {"PER": {"f1": 0.5}}})
    for order in ([classes, entities], [entities, classes]):
        with pytest.raises(ArtifactError, match=r"sentiment.*sequence-classification.*ner.*token-classification"
                                                r"|ner.*token-classification.*sentiment.*sequence-classification"):
            compare_runs(order)
    header = compare_runs([classes, classes]).splitlines()[0].split()
    assert header[4] == "accuracy"
    header = compare_runs([entities, entities]).splitlines()[0].split()
    assert header[4] == "f1"
