"""Sequence classification (finance sentiment)."""
from __future__ import annotations

import numpy as np

from toolchain.data.readers import Example
from toolchain.tasks.base import FeatureDataset, Task


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)),
        "weighted_f1": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "examples": int(len(y_true)),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
    }


class SequenceClassification(Task):
    name = "sequence-classification"
    peft_task_type = "SEQ_CLS"
    default_metric = "macro_f1"
    ort_task = "text-classification"

    def auto_model_class(self):
        from transformers import AutoModelForSequenceClassification
        return AutoModelForSequenceClassification

    def encode(self, examples: list[Example], tokenizer, label2id, max_length: int) -> FeatureDataset:
        encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length)
        features = []
        for i, ex in enumerate(examples):
            item = {key: encoded[key][i] for key in encoded.keys()}
            if label2id is not None and ex.label is not None:
                item["labels"] = label2id[ex.label]
            features.append(item)
        return FeatureDataset(features)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding
        return DataCollatorWithPadding(tokenizer)

    def metrics(self, logits, label_ids, labels):
        return classification_metrics(np.asarray(label_ids), self.predictions(logits), labels)

    def summary(self, metrics):
        return {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
