"""The Task interface shared by every stage."""
from __future__ import annotations

from typing import Any

import numpy as np

from toolchain.data.readers import Example


class FeatureDataset:
    """A list of tokenized feature dicts, usable as a torch map-style dataset."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]


class Task:
    name: str = ""
    peft_task_type: str = ""
    default_metric: str = ""
    ort_task: str = ""          # Optimum task name for ONNX export

    def auto_model_class(self) -> Any:
        raise NotImplementedError

    def encode(self, examples: list[Example], tokenizer, label2id: dict[str, int] | None,
               max_length: int) -> FeatureDataset:
        raise NotImplementedError

    def collator(self, tokenizer) -> Any:
        raise NotImplementedError

    def metrics(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> dict:
        """Task metrics from logits and gold ids (as the Trainer's predict returns them)."""
        raise NotImplementedError

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits).argmax(axis=-1)

    def summary(self, metrics: dict) -> dict:
        """The few headline figures shown in tables."""
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
