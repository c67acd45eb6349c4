"""The peer the serving benchmark compares against: a plain BentoML + Optimum service, library defaults.

What a team would write by hand: one ORTModelForSequenceClassification behind a transformers pipeline,
an adaptive-batching API, BentoML's default worker and traffic settings, no request gate.
The model comes from ``PEER_MODEL_DIR`` (an Optimum ONNX directory) and ``PEER_FILE_NAME``.
"""
from __future__ import annotations

import os

import bentoml


@bentoml.service(name="peer-plain-optimum")
class PeerService:
    def __init__(self) -> None:
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer, pipeline

        model_dir = os.environ["PEER_MODEL_DIR"]
        model = ORTModelForSequenceClassification.from_pretrained(model_dir, file_name=os.environ["PEER_FILE_NAME"])
        tokenizer = AutoTokenizer.from_pretrained(os.environ["PEER_TOKENIZER_DIR"])
        self.pipe = pipeline("text-classification", model=model, tokenizer=tokenizer)

    @bentoml.api(route="/classify", batchable=True, max_batch_size=32, max_latency_ms=2000)
    def classify(self, texts: list[str]) -> list[dict]:
        return [{"label": r["label"], "score": float(r["score"])} for r in self.pipe(texts, truncation=True)]
