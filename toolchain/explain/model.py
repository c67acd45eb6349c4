"""The PyTorch model an offline explanation differentiates: a run dir's, or an export dir's merged fp32 one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from toolchain.core.artifacts import MANIFEST, ArtifactError, load_export, load_run


@dataclass
class ExplainedModel:
    model: object        # a transformers model in eval mode (PEFT adapters merged)
    tokenizer: object    # its fast tokenizer
    labels: list[str]
    task: str
    max_length: int
    description: str     # what was loaded, for the report ("PATH (run dir)", ...)

    def probabilities(self, texts: list[str], batch_size: int = 64):
        """Main-head class probabilities of ``texts`` (truncated to the max length), as an (n, classes) array."""
        import numpy as np
        import torch

        from toolchain.core.probability import softmax
        from toolchain.explain.result import class_heads

        classes, start = class_heads(self.labels)[0]
        rows = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt")
            with torch.no_grad():
                rows.append(self.model(**batch).logits[:, start:start + len(classes)].float().numpy())
        return softmax(np.concatenate(rows))

    @property
    def embeddings(self):
        """The word-embedding layer the model declares (``get_input_embeddings``), whose output integrated
        gradients interpolates."""
        module = self.model.get_input_embeddings()
        if module is None:
            raise ArtifactError(f"{self.description}: {type(self.model).__name__} declares no input embeddings; "
                                "integrated gradients needs them (--method occlusion explains an export without)")
        return module


def artifact_stage(path: Path) -> str:
    """'train' or 'export', from the directory's toolchain.yaml (a clear error for anything else)."""
    manifest = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such directory; give a run dir (toolchain train) or an export dir")
    if not manifest.is_file():
        raise ArtifactError(f"{path}: neither a run dir nor an export dir (no {MANIFEST})")
    stage = (yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}).get("stage")
    if stage not in ("train", "export"):
        raise ArtifactError(f"{path}: {MANIFEST} is from stage {stage!r}; explain takes a run dir or an export dir")
    return stage


def load_explained_model(path: str | Path) -> ExplainedModel:
    """A run dir's model (PEFT merged into the base weights) or an export dir's ``merged/`` fp32 model."""
    from toolchain.inference.run_model import load_run_model

    path = Path(path)
    if artifact_stage(path) == "train":
        run = load_run(path)
        model, tokenizer = load_run_model(run, merge=True)
        return ExplainedModel(model, tokenizer, run.labels, run.task, run.max_length, f"{path} (run dir)")
    export = load_export(path)
    merged = export.path / "merged"
    if not (merged / "config.json").is_file():
        raise ArtifactError(f"{merged}: missing; the export dir holds no merged PyTorch model to explain "
                            "(use --method occlusion to explain an ONNX variant)")
    return ExplainedModel(merged_model(export.task, merged), load_tokenizer_of(merged, export.tokenizer_dir),
                          export.labels, export.task, export.max_length, f"{merged} (export dir, merged fp32)")


def merged_model(task_name: str, merged: Path):
    from toolchain.inference.modeling import load_pretrained
    from toolchain.tasks import get_task

    return load_pretrained(get_task(task_name).auto_model_class(), str(merged)).eval()


def load_tokenizer_of(merged: Path, tokenizer_dir: Path):
    from toolchain.inference.modeling import load_tokenizer

    return load_tokenizer(str(tokenizer_dir if (tokenizer_dir / "tokenizer.json").is_file() else merged))
