"""Distillation into the single student that is exported and served.

The teacher (``distill.teacher``) is one run dir, a comma list of run dirs or a seed group: an ensemble
whose probabilities are the mean of its members' (:mod:`toolchain.ensemble`), of any method or base model
(a larger model is brought as a run dir trained with ``model.base=...``). For token classification (NER) the
teachers must share the student's vocabulary: they read the student's own encoded windows, and the soft loss
is the mean per-token KL over the tokens that carry a label (``data.subtoken_labels=all``: every word piece);
unlabeled text is for sequence classification only. Its tempered probabilities,
``mean_m softmax(z_m / T)``, are computed once before training on the training split and on the unlabeled
texts (``distill.unlabeled``) and carried with each example as ``teacher_probs``. The loss, a small
Trainer mixin that overrides ``compute_loss`` as the head loss does, is

    alpha * T^2 * mean_i KL(teacher_T,i || student_T,i)  +  (1 - alpha) * CE(labelled items)

the KL over every example of the batch, the cross-entropy (the head loss when class weights are set) over
the labelled ones only, so an unlabeled text (label -100) gets the soft loss only. Batches without teacher
probabilities (dev, test) get the plain hard loss. The run records its teachers (paths, config hashes,
test metrics) and how close the student came to them on the test split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toolchain.core.artifacts import RunInfo
from toolchain.core.config import ConfigError, RunConfig, expand_data_path
from toolchain.data.readers import DataError, Example

IGNORE = -100
TEACHER_KEY = "teacher_probs"


class DistillLoss:
    """``alpha * T^2 * KL(teacher_T || student_T)`` (batch mean) ``+ (1 - alpha) * CE`` on the labelled items."""

    def __init__(self, alpha: float, temperature: float):
        self.alpha, self.temperature = alpha, temperature

    def soft(self, logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Per example (per scored token for token logits): KL(teacher || softmax(logits / T)) * T^2 (teacher_probs
        are already tempered; a token's all-zero teacher row, padding or a token without a label, is left out)."""
        teacher = teacher_probs.float()
        log_student = F.log_softmax(logits.float() / self.temperature, dim=-1)
        kl = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(-1) * self.temperature ** 2
        return kl[teacher.sum(-1) > 0] if kl.dim() > 1 else kl

    @staticmethod
    def hard(logits: torch.Tensor, labels: torch.Tensor | None, head_loss=None) -> torch.Tensor:
        """Cross-entropy (or ``head_loss``) over the items with a label; 0 when the batch has none."""
        labelled = labels != IGNORE if labels is not None else None
        if labelled is None or not bool(labelled.any()):
            return logits.float().sum() * 0.0
        if head_loss is not None:
            return head_loss(logits[labelled], labels[labelled])
        return F.cross_entropy(logits[labelled].float(), labels[labelled])

    def __call__(self, logits, labels, teacher_probs=None, head_loss=None) -> torch.Tensor:
        hard = self.hard(logits, labels, head_loss)
        if teacher_probs is None:
            return hard
        soft = self.soft(logits, teacher_probs)
        soft = soft.mean() if soft.numel() else logits.float().sum() * 0.0
        return self.alpha * soft + (1 - self.alpha) * hard


class TeacherCollator:
    """The task's collator, with the examples' teacher probabilities stacked beside the batch."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features: list[dict]) -> dict:
        teacher = [f.get(TEACHER_KEY) for f in features]
        batch = self.collate([{k: v for k, v in f.items() if k != TEACHER_KEY} for f in features])
        if all(t is not None for t in teacher):
            if isinstance(teacher[0][0], list):   # per-token rows: zero rows up to the batch's padded length
                width, classes = batch["input_ids"].shape[1], len(teacher[0][0])
                teacher = [t + [[0.0] * classes] * (width - len(t)) for t in teacher]
            batch[TEACHER_KEY] = torch.tensor(teacher, dtype=torch.float32)
        return batch


class DistillMixin:
    """Trainer mixin: the loss is ``distill_loss`` (composes with the head loss, the adversarial trainer, whose
    extra passes call ``compute_loss`` too, and the update penalty mixin, which wraps it)."""

    def __init__(self, *args, distill_loss: DistillLoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill_loss = distill_loss
        self.data_collator = TeacherCollator(self.data_collator)
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: let the Trainer scale accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{key: value for key, value in inputs.items() if key not in ("labels", TEACHER_KEY)})
        loss = self.distill_loss(outputs.logits, inputs.get("labels"), inputs.get(TEACHER_KEY),
                                 getattr(self, "head_loss", None))
        return (loss, outputs) if return_outputs else loss


def with_distillation(trainer_cls: type) -> type:
    return type(f"Distill{trainer_cls.__name__}", (DistillMixin, trainer_cls), {})


# --------------------------------------------------------------------------- teachers and data

def teacher_dirs(spec: str) -> list[str]:
    dirs = [part.strip() for part in spec.split(",") if part.strip()]
    if not dirs:
        raise ConfigError(f"distill.teacher: {spec!r} names no run dir")
    return dirs


def load_teachers(cfg: RunConfig, labels: list[str]) -> list[RunInfo]:
    """The teacher runs (a seed group expanded), checked against the task and the student's labels."""
    from toolchain.inference.members import check_members, expand_members

    try:
        runs = expand_members(teacher_dirs(cfg.distill.teacher))
        check_members(runs, task=cfg.model.task)
    except ValueError as exc:
        raise ConfigError(f"distill.teacher: {exc}") from None
    if set(runs[0].labels) != set(labels):
        raise ConfigError(f"distill.teacher: {runs[0].path} has labels {runs[0].labels}; this run has labels "
                          f"{labels}: the teacher must be trained for the same labels")
    return runs


def read_unlabeled(path: str, limit: int = 0) -> list[Example]:
    """Texts of a jsonl file (its ``text`` key) or of a text file (one a line), without labels."""
    from toolchain.data.readers import read_examples

    resolved = Path(expand_data_path(path))
    if not resolved.is_file():
        raise DataError(f"distill.unlabeled: {resolved}: file not found (write one with `python "
                        f"benchmarks/unlabeled_text.py --output {resolved}`)")
    if resolved.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        examples = read_examples(resolved, "jsonl", "text", labelled=False)
    else:
        try:
            lines = resolved.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"distill.unlabeled: {resolved}: not valid utf-8 text (byte {exc.start})") from None
        examples = [Example(line.strip(), None, f"{resolved}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
        if not examples:
            raise DataError(f"distill.unlabeled: {resolved}: holds no text")
    return examples[:limit] if limit else examples


def normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_no_overlap(unlabeled: list[Example], held_out: dict[str, list[Example]]) -> None:
    """An unlabeled text that is also a dev or test text would leak the evaluation into training."""
    for role, examples in held_out.items():
        seen = {normalized(ex.text) for ex in examples}
        clash = [ex for ex in unlabeled if normalized(ex.text) in seen]
        if clash:
            raise DataError(f"distill.unlabeled: {len(clash)} texts are also in the {role} split, e.g. "
                            f"{clash[0].location}: {clash[0].text[:80]!r}; remove them (benchmarks/unlabeled_text.py "
                            f"--exclude FILE)")


def teacher_logits(runs: list[RunInfo], examples: list[Example], labels: list[str]) -> list[np.ndarray]:
    """Every teacher's logits on ``examples`` (each teacher loaded once), columns in the order of ``labels``."""
    from toolchain.inference.members import member_logits

    return [member_logits(run, examples, labels) for run in runs]


def tempered_mean(logits: list[np.ndarray], temperature: float) -> np.ndarray:
    """The ensemble teacher: the mean of its members' softmax(z / T)."""
    from toolchain.core.probability import softmax

    return np.mean([softmax(z, temperature) for z in logits], axis=0)


def teacher_entry(run: RunInfo) -> dict:
    import json

    metrics_file = run.path / "metrics.json"
    test = json.loads(metrics_file.read_text(encoding="utf-8")).get("test", {}) if metrics_file.is_file() else {}
    return {"run": str(run.path), "config_hash": run.manifest.get("config_hash"),
            "method": run.config["method"]["name"],
            "base_model": run.base_model, "test": {k: test[k] for k in ("accuracy", "macro_f1") if k in test}}


def note_other_test_sets(runs: list[RunInfo], test_sha256: str | None) -> None:
    for run in runs:
        theirs = ((run.manifest.get("data_files") or {}).get("test") or {}).get("sha256")
        if test_sha256 and theirs and theirs != test_sha256:
            print(f"distill: teacher {run.path} was tested on another test file than this run: make sure its "
                  f"training data holds none of this run's test texts", flush=True)


# --------------------------------------------------------------------------- the run hook

class Distillation:
    """The run's distillation: checked before the run dir is written (``check``), the teacher's probabilities
    attached to the training examples once they are encoded (``attach``), the figures after training (``report``)."""

    def __init__(self, cfg: RunConfig, labels: list[str], teachers: list[RunInfo], unlabeled: list[Example]):
        self.cfg, self.labels, self.teachers, self.unlabeled = cfg, labels, teachers, unlabeled
        self.loss = DistillLoss(cfg.distill.alpha, cfg.distill.temperature)
        self.record: dict = {}           # written to toolchain.yaml and metrics.json as ``distill``
        self.test_probs = None           # the teacher on the test split (T = 1)

    @classmethod
    def check(cls, cfg: RunConfig, labels: list[str], splits) -> "Distillation":
        """The teachers (task, labels) and the unlabeled texts (readable, none a dev/test text)."""
        teachers = load_teachers(cfg, labels)
        note_other_test_sets(teachers, splits.files.get("test", {}).get("sha256"))
        d = cfg.distill
        unlabeled = read_unlabeled(d.unlabeled, d.max_unlabeled) if d.unlabeled else []
        if unlabeled:
            check_no_overlap(unlabeled, {"dev": splits.dev, "test": splits.test})
        return cls(cfg, labels, teachers, unlabeled)

    def attach(self, task, splits, datasets: dict, tokenizer) -> None:
        """Teacher probabilities on the training split (and the unlabeled texts), carried with each example."""
        from toolchain.tasks.base import FeatureDataset

        d, train, unlabeled = self.cfg.distill, datasets["train"], self.unlabeled
        if self.cfg.model.task == "token-classification":
            return self.attach_tokens(task, datasets, tokenizer)
        if len(train.features) != len(splits.train):
            raise ConfigError(f"distill.teacher: {len(train.features)} training features for {len(splits.train)} "
                              f"examples; distillation needs one feature per example")
        print(f"distill: teacher probabilities (T={d.temperature:g}) of {len(splits.train)} training and "
              f"{len(unlabeled)} unlabeled texts from {len(self.teachers)} teacher run(s)", flush=True)
        logits = teacher_logits(self.teachers, splits.train + unlabeled + splits.test, self.labels)
        n_train, n_seen = len(splits.train), len(splits.train) + len(unlabeled)
        tempered = tempered_mean([z[:n_seen] for z in logits], d.temperature)
        features = [{**feature, TEACHER_KEY: p.tolist()} for feature, p in zip(train.features, tempered[:n_train])]
        if unlabeled:
            features += unlabeled_features(self.cfg, task, tokenizer, unlabeled, tempered[n_train:])
        datasets["train"] = FeatureDataset(features)
        self.test_probs = tempered_mean([z[n_seen:] for z in logits], 1.0)
        self.record = self.base_record(n_train, len(unlabeled))

    def attach_tokens(self, task, datasets: dict, tokenizer) -> None:
        """Token classification: each teacher reads the student's own windows (same vocabulary, checked); a
        token's teacher row is kept where the token carries a label and zeroed elsewhere (left out of the loss)."""
        from toolchain.tasks.base import FeatureDataset

        check_same_vocabulary(self.teachers, tokenizer)
        train, test = datasets["train"].features, datasets["test"].features
        print(f"distill: teacher probabilities (T={self.cfg.distill.temperature:g}) of {len(train)} training windows "
              f"from {len(self.teachers)} teacher run(s)", flush=True)
        logits = [window_logits(run, task, tokenizer, train + test, self.labels) for run in self.teachers]
        tempered = tempered_mean([z[:len(train)] for z in logits], self.cfg.distill.temperature)
        features = []
        for feature, probs in zip(train, tempered):
            rows = probs[:len(feature["input_ids"])] * (np.asarray(feature["labels"]) != IGNORE)[:, None]
            features.append({**feature, TEACHER_KEY: rows.tolist()})
        datasets["train"] = FeatureDataset(features)
        self.test_probs = tempered_mean([z[len(train):] for z in logits], 1.0)
        self.record = self.base_record(len(train), 0)

    def base_record(self, n_train: int, n_unlabeled: int) -> dict:
        d = self.cfg.distill
        return {"teachers": [teacher_entry(run) for run in self.teachers], "alpha": d.alpha,
                "temperature": d.temperature, "train_examples": n_train, "unlabeled": unlabeled_record(d, n_unlabeled)}

    def trainer_class(self, trainer_cls: type) -> type:
        return with_distillation(trainer_cls)

    def report(self, student_logits: np.ndarray, gold: np.ndarray, labels: list[str], task) -> dict:
        """The record plus the teacher's test metrics on this run's test split and the student's closeness
        (token classification: over the tokens that carry a gold label)."""
        from toolchain.core.probability import softmax

        student, teacher = softmax(student_logits), self.test_probs
        scored = np.ones(len(student), dtype=bool)
        if student.ndim == 3:   # align the teacher's padded width with the student's, then keep gold tokens
            width = student.shape[1]
            teacher = np.pad(teacher[:, :width], ((0, 0), (0, max(0, width - teacher.shape[1])), (0, 0)))
            scored = np.asarray(gold) != IGNORE
        kl = (np.where(teacher > 0, teacher * np.log(np.clip(teacher, 1e-12, None)), 0.0)
              - teacher * np.log(np.clip(student, 1e-12, None))).sum(-1)
        return {**self.record, "teacher_test": task.summary(task.metrics(teacher, gold, labels)),
                "student_test_agreement": float(np.mean((student.argmax(-1) == teacher.argmax(-1))[scored])),
                "student_test_kl": float(kl[scored].mean())}


def check_same_vocabulary(teachers: list[RunInfo], tokenizer) -> None:
    """A token-classification teacher reads the student's word pieces: it needs the same vocabulary."""
    from toolchain.inference.modeling import load_tokenizer

    vocabulary = tokenizer.get_vocab()
    for run in teachers:
        if load_tokenizer(str(run.model_dir)).get_vocab() != vocabulary:
            raise ConfigError(f"distill.teacher: {run.path} has another vocabulary than this run's base model: a "
                              f"token-classification teacher must share the student's tokenizer")


def window_logits(run: RunInfo, task, tokenizer, features: list[dict], labels: list[str]) -> np.ndarray:
    """A teacher's token logits on encoded windows (padded), columns in the order of ``labels``."""
    from toolchain.inference.members import in_label_order
    from toolchain.inference.run_model import feature_logits, load_run_model

    model, _ = load_run_model(run)
    inputs = [{k: v for k, v in f.items() if k not in ("labels", TEACHER_KEY)} for f in features]
    return in_label_order(run, feature_logits(model, task.collator(tokenizer), inputs), labels)


def unlabeled_features(cfg: RunConfig, task, tokenizer, unlabeled: list[Example], probs: np.ndarray) -> list[dict]:
    encoded = task.encode(unlabeled, tokenizer, None, cfg.data.max_length)
    return [{**feature, "labels": IGNORE, TEACHER_KEY: p.tolist()} for feature, p in zip(encoded.features, probs)]


def unlabeled_record(d, count: int) -> dict | None:
    if not d.unlabeled:
        return None
    from toolchain.core.artifacts import sha256_file

    path = Path(expand_data_path(d.unlabeled))
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "examples": count}
