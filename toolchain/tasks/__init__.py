"""Tasks: what differs between sequence classification, token classification (and masked-LM).

A task knows its model class, how to turn examples into features, how to collate them and how to
score predictions. Training, evaluation, export and serving ask the task instead of branching.
"""
from __future__ import annotations

from toolchain.tasks.base import Task


def get_task(name: str, labels: list[str] | None = None) -> Task:
    """The task by name; with the run's labels, a sequence classifier with a topic head is the joint task."""
    if name == "sequence-classification":
        from toolchain.tasks.joint import JointClassification, has_topic_head
        if labels is not None and has_topic_head(labels):
            return JointClassification(labels)
        from toolchain.tasks.classification import SequenceClassification
        return SequenceClassification()
    if name == "token-classification":
        from toolchain.tasks.token_classification import TokenClassification
        return TokenClassification()
    raise ValueError(f"unknown task {name!r}; known: sequence-classification, token-classification")


__all__ = ["Task", "get_task"]
