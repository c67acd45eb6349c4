"""Short recovery training of a pruned model: distillation from the unpruned model, or plain fine-tuning.

Uses the Hugging Face Trainer; distillation overrides one step (``compute_loss``): the loss is
``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * task loss``.
"""
from __future__ import annotations

import shutil
import time

import torch
from transformers import Trainer, TrainingArguments


def labelled_batches(task, tokenizer, examples, labels: list[str], max_length: int, batch_size: int) -> list[dict]:
    """Collated tensor batches with labels (for importance scoring)."""
    dataset = task.encode(examples, tokenizer, {l: i for i, l in enumerate(labels)}, max_length)
    collate = task.collator(tokenizer)
    return [collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
            for i in range(0, len(dataset), batch_size)]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Soft-target KL at temperature T (scaled by T^2); token tasks score only positions with a label."""
    if student.dim() == 3:
        mask = labels != -100
        student, teacher = student[mask], teacher[mask]
    soft_teacher = torch.softmax(teacher / temperature, dim=-1)
    log_student = torch.log_softmax(student / temperature, dim=-1)
    return torch.nn.functional.kl_div(log_student, soft_teacher, reduction="batchmean") * temperature ** 2


def module_device(model) -> torch.device:
    return next(model.parameters()).device


class DistillationTrainer(Trainer):
    """Trainer whose loss mixes the task loss with distillation from a frozen teacher.

    The Trainer places the student (and each batch) on its device, a GPU when there is one; the teacher
    follows the student there for the training and goes back where it was afterwards (the export
    pipeline runs it on the CPU next to the ONNX variants).
    """

    def __init__(self, *args, teacher, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher.eval(), temperature, alpha
        self.teacher_home = module_device(teacher)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self.teacher.to(self.teacher_home)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if module_device(self.teacher) != module_device(model):
            self.teacher.to(module_device(model))
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        kd = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], self.temperature)
        loss = self.alpha * kd + (1.0 - self.alpha) * outputs.loss
        return (loss, outputs) if return_outputs else loss


def recovery_arguments(cfg, work_dir) -> TrainingArguments:
    """The recovery's Trainer settings, in the precision training picks for this hardware (bf16 autocast on a CPU
    with native bf16 or a GPU; the weights stay fp32, so the exported graph is fp32 as before)."""
    from toolchain.core.hardware import precision_flags

    flags = precision_flags("auto")
    return TrainingArguments(
        output_dir=str(work_dir), num_train_epochs=cfg.recovery_epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, warmup_ratio=0.1, weight_decay=0.01, seed=cfg.seed,
        save_strategy="no", eval_strategy="no", logging_steps=20, report_to=[], use_cpu=not torch.cuda.is_available(),
        bf16=flags["bf16"], fp16=flags["fp16"])


def unwrap_forward(model) -> None:
    """Undo the mixed-precision wrapper Accelerate puts on ``forward`` (in place). A Trainer uses bf16 when an
    earlier one in the process did (TrainingArguments sets ACCELERATE_MIXED_PRECISION, as `toolchain build`'s
    training does on a bf16 CPU), and Optimum's ONNX export cannot trace the wrapped forward."""
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)


def recover(job, student) -> dict:
    """Train the pruned ``student`` on the run's training split; returns what was done, for the report."""
    cfg, run = job.cfg.prune, job.run
    if cfg.recovery == "none" or cfg.recovery_epochs == 0:
        return {"method": "none"}
    encode = getattr(job.task, "encode_for_training", job.task.encode)
    dataset = encode(job.splits.train, job.tokenizer, {l: i for i, l in enumerate(run.labels)},
                              run.max_length)
    work_dir = job.out / ".recovery"
    common = dict(model=student, args=recovery_arguments(cfg, work_dir), train_dataset=dataset,
                  data_collator=job.task.collator(job.tokenizer))
    if cfg.recovery == "distill":
        trainer = DistillationTrainer(**common, teacher=job.model, temperature=cfg.temperature, alpha=cfg.alpha)
    else:
        trainer = Trainer(**common)
    started = time.time()
    result = trainer.train()
    shutil.rmtree(work_dir, ignore_errors=True)
    unwrap_forward(student)
    student.eval()
    return {"method": cfg.recovery, "epochs": cfg.recovery_epochs, "steps": result.global_step,
            "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
            "train_loss": float(result.training_loss), "wall_seconds": round(time.time() - started, 1)}
