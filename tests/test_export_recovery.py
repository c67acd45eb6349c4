"""Pruning recovery on an accelerator: teacher and student train on the same device, and the pruned model
comes back on the CPU for the CPU-side ONNX export and parity checks.

No GPU is needed: the Trainer is pointed at PyTorch's lazy device (TorchScript backend), a real second
device on a CPU-only machine, so a module left on the CPU meets inputs on another device exactly as on CUDA.
"""
import dataclasses
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
_LAZY_READY: list = []


@pytest.fixture
def second_device(monkeypatch):
    """Make every Trainer place its model and batches on the lazy device, as it would on CUDA."""
    try:
        import torch._lazy.ts_backend
        if not _LAZY_READY:  # the backend registers once per process
            torch._lazy.ts_backend.init()
            _LAZY_READY.append(True)
    except Exception as exc:  # a torch build without the lazy TorchScript backend
        pytest.skip(f"torch lazy device unavailable: {exc}")
    from accelerate import Accelerator
    from transformers import TrainingArguments

    from toolchain.export import recovery

    device = torch.device("lazy", 0)
    monkeypatch.setattr(TrainingArguments, "device", property(lambda self: (self._setup_devices, device)[1]))
    monkeypatch.setattr(Accelerator, "device", property(lambda self: device))  # it places the model in train()
    arguments = recovery.recovery_arguments  # lazy-device limits: no fused AdamW; clipping mixes dtypes
    monkeypatch.setattr(recovery, "recovery_arguments", lambda *a: dataclasses.replace(
        arguments(*a), optim="sgd", max_grad_norm=0.0))
    return device


def prune_job(tiny_bert, tiny_data, tmp_path, recovery: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolchain.core.config import DataConfig
    from toolchain.data.dataset import read_file
    from toolchain.export.config import load_export_config
    from toolchain.tasks import get_task

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3).eval()
    cfg = load_export_config(None, ["prune.amount=0.5", f"prune.recovery={recovery}", "prune.batch_size=16",
                                    "prune.importance_samples=16"])
    splits = SimpleNamespace(train=read_file(DataConfig(), str(tiny_data["train"]))[:16],
                             dev=read_file(DataConfig(), str(tiny_data["dev"])))
    run = SimpleNamespace(labels=["negative", "neutral", "positive"], max_length=32)
    return SimpleNamespace(cfg=cfg, run=run, task=get_task("sequence-classification"), splits=splits,
                           tokenizer=AutoTokenizer.from_pretrained(tiny_bert), out=tmp_path, model=model)


def devices(model) -> set:
    return {p.device for p in model.parameters()} | {b.device for b in model.buffers()}


class FirstStepSeen(Exception):
    """Ends the recovery after the first distillation loss (the lazy backend cannot run its backward)."""


def test_distillation_teacher_follows_the_student_and_goes_back_to_cpu(
        tiny_bert, tiny_data, tmp_path, second_device, monkeypatch):
    from toolchain.export import recovery
    from toolchain.export.prune import prune_and_recover

    seen = []
    compute_loss = recovery.DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)  # runs student and teacher on the batch
        seen.append({"student": devices(model), "teacher": devices(self.teacher),
                     "inputs": {v.device for v in inputs.values()}, "loss": loss.device})
        raise FirstStepSeen

    monkeypatch.setattr(recovery.DistillationTrainer, "compute_loss", spy)
    job = prune_job(tiny_bert, tiny_data, tmp_path, "distill")
    with pytest.raises(FirstStepSeen):
        prune_and_recover(job)
    (step,) = seen  # one device for student, teacher and batch, and it is the Trainer's
    assert step["student"] == step["teacher"] == step["inputs"] == {second_device} == {step["loss"]}, step
    assert devices(job.model) == {torch.device("cpu")}, "the teacher (the merged model) must go back to the CPU"


def test_finetune_recovery_returns_the_pruned_model_on_cpu(tiny_bert, tiny_data, tmp_path, second_device):
    from toolchain.inference.run_model import predict_logits
    from toolchain.export.prune import prune_and_recover

    job = prune_job(tiny_bert, tiny_data, tmp_path, "finetune")
    student, plan = prune_and_recover(job)
    assert devices(student) == {torch.device("cpu")} and plan["recovery"]["method"] == "finetune"
    logits = predict_logits(student, job.tokenizer, job.task, job.splits.dev, 32)  # as the parity check does
    assert logits.shape == (30, 3)


def test_distillation_recovery_on_cpu_trains_and_leaves_the_teacher_unchanged(tiny_bert, tiny_data, tmp_path):
    from toolchain.export.prune import prune_and_recover

    job = prune_job(tiny_bert, tiny_data, tmp_path, "distill")
    teacher_before = {k: v.clone() for k, v in job.model.state_dict().items()}
    student, plan = prune_and_recover(job)
    assert plan["recovery"]["steps"] == 1 and devices(student) == {torch.device("cpu")}
    assert all(torch.equal(v, teacher_before[k]) for k, v in job.model.state_dict().items())
