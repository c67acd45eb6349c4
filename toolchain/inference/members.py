"""Several runs read as one: their class probabilities on the same examples, columns aligned by label name.

An ensemble (:mod:`toolchain.ensemble`) scores the mean of its members' probabilities; a distillation teacher
(:mod:`toolchain.train.distill`) is the same mean, tempered. Each member reads the texts with its own tokenizer
and max length, so members of different bases can be mixed. For token classification the members must cut every
sentence into the same word pieces (the same tokenizer and max length): the per-token probabilities are then
averaged position by position.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.core.artifacts import ArtifactError, RunInfo, group_runs, is_group, load_run
from toolchain.core.probability import softmax
from toolchain.inference.modeling import load_tokenizer
from toolchain.inference.run_model import load_run_model, predict_logits
from toolchain.tasks import get_task
from toolchain.tasks.joint import has_topic_head


def expand_members(paths: list[str]) -> list[RunInfo]:
    """The member runs, in order: each run dir, and each seed group's runs in its place."""
    if not paths:
        raise ArtifactError("an ensemble needs at least one run dir or seed group")
    runs = []
    for path in paths:
        runs += [load_run(p) for p in group_runs(Path(path))] if is_group(path) else [load_run(path)]
    return runs


def check_members(runs: list[RunInfo], task: str | None = None) -> None:
    """Members must share the task and the label set (their order may differ); no topic heads."""
    first = runs[0]
    for run in runs:
        if task is not None and run.task != task:
            raise ArtifactError(f"{run.path} is a {run.task} run; expected {task}")
        if run.task != first.task:
            raise ArtifactError(f"{run.path} is a {run.task} run and {first.path} a {first.task} run: an ensemble "
                                f"needs runs of one task")
        if has_topic_head(run.labels):
            raise ArtifactError(f"{run.path} has a topic head; ensembles take single-task runs")
        if set(run.labels) != set(first.labels):
            raise ArtifactError(f"{run.path} has labels {run.labels} and {first.path} has labels {first.labels}: "
                                f"an ensemble needs runs trained for the same labels")


def in_label_order(run: RunInfo, logits: np.ndarray, labels: list[str]) -> np.ndarray:
    """A run's logits with their columns in the order of ``labels`` (members are aligned by label name)."""
    return logits[..., [run.labels.index(label) for label in labels]]


def member_logits(run: RunInfo, examples: list, labels: list[str]) -> np.ndarray:
    """One run's logits on ``examples``, columns in the order of ``labels``."""
    model, tokenizer = load_run_model(run)
    return in_label_order(run, predict_logits(model, tokenizer, get_task(run.task), examples, run.max_length), labels)


def member_probabilities(run: RunInfo, examples: list, labels: list[str], temperature: float = 1.0) -> np.ndarray:
    """One run's softmax(logits / temperature) on ``examples``, columns in the order of ``labels``."""
    return softmax(member_logits(run, examples, labels), temperature)


def word_pieces_of(run: RunInfo, examples: list) -> list[list[int]]:
    dataset = get_task(run.task).encode(examples, load_tokenizer(str(run.model_dir)), None, run.max_length)
    return [f["input_ids"] for f in dataset.features]


def check_same_pieces(runs: list[RunInfo], examples: list) -> None:
    """Token classification: per-token probabilities average only over the same word pieces."""
    reference = word_pieces_of(runs[0], examples)
    for run in runs[1:]:
        if word_pieces_of(run, examples) != reference:
            raise ArtifactError(f"{run.path} and {runs[0].path} cut the sentences into different word pieces (another "
                                f"tokenizer or data.max_length): a token-classification ensemble needs members with "
                                f"the same tokenizer and max length")


def ensemble_probabilities(runs: list[RunInfo], examples: list, labels: list[str],
                           temperature: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(mean of the members' probabilities, each member's), columns in the order of ``labels``."""
    if runs[0].task == "token-classification":
        check_same_pieces(runs, examples)
    members = [member_probabilities(run, examples, labels, temperature) for run in runs]
    return np.mean(members, axis=0), members
