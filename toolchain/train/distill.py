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
from toolchain.tasks.joint import HEADLINE, TOPIC_PREFIX, has_topic_head, head_rows, heads_of

IGNORE = -100
TEACHER_KEY = "teacher_probs"


class DistillLoss:
    """``alpha * T^2 * KL(teacher_T || student_T)`` (batch mean) ``+ (1 - alpha) * CE`` on the labelled items."""

    def __init__(self, alpha: float, temperature: float, heads: list[slice] | None = None):
        self.alpha, self.temperature = alpha, temperature
        self.heads = heads    # a model with a topic head: each head's columns, a softmax of their own

    def kl(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        log_student = F.log_softmax(logits.float() / self.temperature, dim=-1)
        return (torch.xlogy(teacher, teacher) - teacher * log_student).sum(-1) * self.temperature ** 2

    def soft(self, logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Per example (per scored token for token logits): KL(teacher || softmax(logits / T)) * T^2 (teacher_probs
        are already tempered; a token's all-zero teacher row, padding or a token without a label, is left out).
        With heads: one KL per (example, head) whose teacher columns are set, each head a softmax of its own."""
        teacher = teacher_probs.float()
        if self.heads:
            parts = []
            for cols in self.heads:
                rows = teacher[:, cols].sum(-1) > 0
                if bool(rows.any()):
                    parts.append(self.kl(logits[rows][:, cols], teacher[rows][:, cols]))
            return torch.cat(parts) if parts else logits.float().new_zeros(0)
        kl = self.kl(logits, teacher)
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


def load_teachers(spec: str, task: str, labels: list[str], key: str = "distill.teacher") -> list[RunInfo]:
    """The teacher runs of ``spec`` (a seed group expanded), checked against the task and the labels they teach."""
    from toolchain.inference.members import check_members, expand_members

    try:
        runs = expand_members(teacher_dirs(spec))
        check_members(runs, task=task)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if set(runs[0].labels) != set(labels):
        head = " in its topic head" if key == "distill.topic_teacher" else ""
        raise ConfigError(f"{key}: {runs[0].path} has labels {runs[0].labels}; this run has labels {labels}{head}: "
                          f"the teacher must be trained for the same labels")
    return runs


def read_unlabeled(spec: str, limit: int = 0) -> list[Example]:
    """Texts of one or more files (a comma list, read in order): jsonl (its ``text`` key) or text (one a line),
    without labels."""
    examples = [ex for path in spec.split(",") if path.strip() for ex in read_unlabeled_file(path.strip())]
    return examples[:limit] if limit else examples


def read_unlabeled_file(path: str) -> list[Example]:
    from toolchain.data.readers import read_examples

    resolved = Path(expand_data_path(path))
    if not resolved.is_file():
        raise DataError(f"distill.unlabeled: {resolved}: file not found (write one with `python "
                        f"benchmarks/unlabeled_text.py --output {resolved}`)")
    if resolved.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return read_examples(resolved, "jsonl", "text", labelled=False)
    try:
        lines = resolved.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"distill.unlabeled: {resolved}: not valid utf-8 text (byte {exc.start})") from None
    examples = [Example(line.strip(), None, f"{resolved}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not examples:
        raise DataError(f"distill.unlabeled: {resolved}: holds no text")
    return examples


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


def teacher_precision(precision: str) -> str:
    """The teacher pass's precision: bf16 autocast where the run trains in bf16 on a CPU with native bf16
    (AMX-BF16, AVX512-BF16: the 110M teacher's forward passes are the pass's whole cost), fp32 elsewhere."""
    from toolchain.core.hardware import cpu_bf16_precision

    if torch.cuda.is_available() or precision not in ("auto", "bf16"):
        return "fp32"
    return cpu_bf16_precision()


def teacher_logits(runs: list[RunInfo], examples: list[Example], labels: list[str], cache=None,
                   passes: list | None = None, precision: str = "fp32") -> list[np.ndarray]:
    """Every teacher's logits on ``examples`` (each teacher loaded once, and only for texts the cache lacks),
    columns in the order of ``labels``; each pass's figures appended to ``passes``. ``precision="bf16"`` runs the
    teacher under bf16 autocast (its cache entries are kept apart from fp32 ones)."""
    from contextlib import nullcontext

    from toolchain.inference.members import in_label_order, member_logits
    from toolchain.train.teacher_cache import cached_logits

    out = []
    for run in runs:
        def compute(indices: list[int], run=run) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
                return member_logits(run, [examples[i] for i in indices], run.labels)

        logits, stats = cached_logits(run, [ex.text for ex in examples], compute, cache, precision)
        print(f"distill: teacher {run.path}: {stats.texts} texts, {stats.hits} from the cache, {stats.computed} "
              f"computed in {stats.seconds:.1f} s ({precision})", flush=True)
        if passes is not None:
            passes.append(stats.as_dict())
        out.append(in_label_order(run, logits, labels))
    return out


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
    attached to the training examples once they are encoded (``attach``), the figures after training (``report``).

    A run with a topic head has a teacher per head (``distill.teacher`` for the main head, ``distill.topic_teacher``
    for the topic head): each training example carries its own task's teacher's probabilities in its head's
    columns; with ``distill.cross_task`` it also carries the other head's teacher's (the sentiment teacher's view
    of a tweet, the topic teacher's of a sentence), and the unlabeled texts carry both. The soft loss is one KL
    per (example, head) with a teacher row, each head a softmax over its own columns."""

    def __init__(self, cfg: RunConfig, labels: list[str], teachers: list[RunInfo], unlabeled: list[Example],
                 topic_teachers: list[RunInfo] | None = None):
        self.cfg, self.labels, self.teachers, self.unlabeled = cfg, labels, teachers, unlabeled
        self.topic_teachers = topic_teachers or []
        self.heads = heads_of(labels) if has_topic_head(labels) else None
        self.loss = DistillLoss(cfg.distill.alpha, cfg.distill.temperature,
                                [slice(h.start, h.stop) for h in self.heads] if self.heads else None)
        self.record: dict = {}           # written to toolchain.yaml and metrics.json as ``distill``
        self.test_probs = None           # the teacher on the test split (T = 1)
        self.passes: list[dict] = []     # each teacher pass: texts, cache hits, computed, seconds
        self.cache = teacher_cache(cfg)
        self.precision = teacher_precision(cfg.train.precision)

    @classmethod
    def check(cls, cfg: RunConfig, labels: list[str], splits) -> "Distillation":
        """The teachers (task, labels) and the unlabeled texts (readable, none a dev/test text)."""
        d, task = cfg.distill, cfg.model.task
        if has_topic_head(labels):
            main, topic = heads_of(labels)
            teachers = load_teachers(d.teacher, task, list(main.labels)) if d.teacher else []
            topic_teachers = load_teachers(d.topic_teacher, task, list(topic.labels), "distill.topic_teacher")
        else:
            teachers, topic_teachers = load_teachers(d.teacher, task, labels), []
        note_other_test_sets(teachers, splits.files.get("test", {}).get("sha256"))
        unlabeled = read_unlabeled(d.unlabeled, d.max_unlabeled) if d.unlabeled else []
        if unlabeled:
            check_no_overlap(unlabeled, {"dev": splits.dev, "test": splits.test})
        return cls(cfg, labels, teachers, unlabeled, topic_teachers)

    def attach(self, task, splits, datasets: dict, tokenizer) -> None:
        """Teacher probabilities on the training split (and the unlabeled texts), carried with each example."""
        from toolchain.tasks.base import FeatureDataset

        d, train, unlabeled = self.cfg.distill, datasets["train"], self.unlabeled
        if self.cfg.model.task == "token-classification":
            return self.attach_tokens(task, datasets, tokenizer)
        if len(train.features) != len(splits.train):
            raise ConfigError(f"distill.teacher: {len(train.features)} training features for {len(splits.train)} "
                              f"examples; distillation needs one feature per example")
        n_teachers = len(self.teachers) + len(self.topic_teachers)
        print(f"distill: teacher probabilities (T={d.temperature:g}) of {len(splits.train)} training and "
              f"{len(unlabeled)} unlabeled texts from {n_teachers} teacher run(s)", flush=True)
        n_train = len(splits.train)
        if self.heads:
            tempered, self.test_probs = self.joint_probs(splits.train + unlabeled, n_train, splits.test)
        else:
            logits = teacher_logits(self.teachers, splits.train + unlabeled + splits.test, self.labels, self.cache,
                                    self.passes, self.precision)
            n_seen = n_train + len(unlabeled)
            tempered = tempered_mean([z[:n_seen] for z in logits], d.temperature)
            self.test_probs = tempered_mean([z[n_seen:] for z in logits], 1.0)
        features = [{**feature, TEACHER_KEY: p.tolist()} for feature, p in zip(train.features, tempered[:n_train])]
        if unlabeled:
            features += unlabeled_features(self.cfg, task, tokenizer, unlabeled, tempered[n_train:])
        datasets["train"] = FeatureDataset(features)
        self.record = self.base_record(n_train, len(unlabeled))

    def joint_probs(self, seen: list[Example], n_train: int, test: list[Example]) -> tuple[np.ndarray, np.ndarray]:
        """(tempered rows of the training + unlabeled texts, T=1 rows of the test texts), each ``len(labels)``
        wide: a head's columns hold its teacher's probabilities where the example gets them (its own task's
        head; the other head too with ``distill.cross_task``; both for unlabeled texts), zeros elsewhere."""
        d = self.cfg.distill
        rows, test_rows = np.zeros((len(seen), len(self.labels))), np.zeros((len(test), len(self.labels)))
        for head, teachers in zip(self.heads, (self.teachers, self.topic_teachers)):
            if not teachers:
                continue
            own = [i for i, ex in enumerate(seen) if i >= n_train or self.head_of(ex) == head.name or d.cross_task]
            own_test = [i for i, ex in enumerate(test) if self.head_of(ex) == head.name]
            logits = teacher_logits(teachers, [seen[i] for i in own] + [test[i] for i in own_test],
                                    list(head.labels), self.cache, self.passes, self.precision)
            rows[own, head.start:head.stop] = tempered_mean([z[:len(own)] for z in logits], d.temperature)
            test_rows[own_test, head.start:head.stop] = tempered_mean([z[len(own):] for z in logits], 1.0)
        return rows, test_rows

    def head_of(self, example: Example) -> str:
        return "topic" if str(example.label).startswith(TOPIC_PREFIX) else "main"

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
        record = {"teachers": [teacher_entry(run) for run in self.teachers], "alpha": d.alpha,
                  "temperature": d.temperature, "train_examples": n_train,
                  "unlabeled": unlabeled_record(d, n_unlabeled), "teacher_passes": self.passes,
                  "cache": str(self.cache.root) if self.cache else None, "teacher_precision": self.precision}
        if self.heads:
            record.update({"topic_teachers": [teacher_entry(run) for run in self.topic_teachers],
                           "cross_task": d.cross_task})
        return record

    def trainer_class(self, trainer_cls: type) -> type:
        return with_distillation(trainer_cls)

    def report(self, student_logits: np.ndarray, gold: np.ndarray, labels: list[str], task) -> dict:
        """The record plus the teacher's test metrics on this run's test split and the student's closeness
        (token classification: over the tokens that carry a gold label; a topic head: each test example in its
        own head, with a teacher for that head)."""
        from toolchain.core.probability import softmax

        if self.heads:
            return {**self.record, **self.joint_report(np.asarray(student_logits), np.asarray(gold))}
        student, teacher = softmax(student_logits), self.test_probs
        scored = np.ones(len(student), dtype=bool)
        if student.ndim == 3:   # align the teacher's padded width with the student's, then keep gold tokens
            width = student.shape[1]
            teacher = np.pad(teacher[:, :width], ((0, 0), (0, max(0, width - teacher.shape[1])), (0, 0)))
            scored = np.asarray(gold) != IGNORE
        kl = kl_rows(teacher, student)
        return {**self.record, "teacher_test": task.summary(task.metrics(teacher, gold, labels)),
                "student_test_agreement": float(np.mean((student.argmax(-1) == teacher.argmax(-1))[scored])),
                "student_test_kl": float(kl[scored].mean())}

    def joint_report(self, student_logits: np.ndarray, gold: np.ndarray) -> dict:
        from toolchain.core.probability import softmax
        from toolchain.tasks.classification import classification_metrics

        out: dict = {"teacher_test": {}, "student_test_agreement": {}, "student_test_kl": {}}
        for head in self.heads:
            rows = head_rows(gold, head) & (self.test_probs[:, head.start:head.stop].sum(-1) > 0)
            if not rows.any():
                continue
            teacher = self.test_probs[rows, head.start:head.stop]
            student = softmax(student_logits[rows, head.start:head.stop])
            metrics = classification_metrics(gold[rows] - head.start, teacher.argmax(-1), list(head.labels))
            out["teacher_test"].update({f"{head.name}_{k}": metrics[k] for k in HEADLINE})
            out["student_test_agreement"][head.name] = float(np.mean(student.argmax(-1) == teacher.argmax(-1)))
            out["student_test_kl"][head.name] = float(kl_rows(teacher, student).mean())
        return out


def kl_rows(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    return (np.where(teacher > 0, teacher * np.log(np.clip(teacher, 1e-12, None)), 0.0)
            - teacher * np.log(np.clip(student, 1e-12, None))).sum(-1)


def teacher_cache(cfg: RunConfig):
    from toolchain.train.teacher_cache import TeacherCache, cache_dir

    root = cache_dir(cfg.distill.cache)
    return TeacherCache(root) if root else None


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
