"""Load one ONNX variant of an export dir for serving: checksums, ONNX Runtime session, tokenizer.

Only ONNX (protobuf), JSON and YAML are read: no pickle. The variant's model file and the tokenizer
files are checked against the export manifest's sha256 before anything is loaded, so an altered or
truncated file stops start-up with an error naming it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.artifacts import ArtifactError, ExportInfo, load_export

log = logging.getLogger("toolchain.serve")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_LABELS = {CUDA: "cuda", CPU: "cpu"}


@dataclass
class Encoded:
    """A tokenized batch: model inputs padded to the longest text, plus per-text bookkeeping."""
    inputs: dict[str, np.ndarray]
    tokens: list[int]          # tokens per text after truncation (special tokens included)
    truncated: list[bool]      # text was cut to the model's max length
    encodings: list            # tokenizers.Encoding per text (offsets for token-level tasks)


class Encoder:
    """The export's fast tokenizer (tokenizer.json), truncating to the model's max length."""

    def __init__(self, tokenizer_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        file = tokenizer_dir / "tokenizer.json"
        if not file.is_file():
            raise ArtifactError(f"{file}: missing; the export dir needs a fast tokenizer (tokenizer.json)")
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.pad_id = pad_token_id(tokenizer_dir, self.tokenizer)
        self.max_length = max_length

    def encode(self, texts: list[str]) -> Encoded:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return Encoded(inputs, [len(e.ids) for e in encodings], [bool(e.overflowing) for e in encodings], encodings)


def pad_token_id(tokenizer_dir: Path, tokenizer) -> int:
    """The pad token's id as transformers would use it (tokenizer_config.json, else [PAD], else 0)."""
    config_file = tokenizer_dir / "tokenizer_config.json"
    token = "[PAD]"
    if config_file.is_file():
        value = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token", token)
        token = value.get("content", token) if isinstance(value, dict) else value or token
    found = tokenizer.token_to_id(token)
    return 0 if found is None else found


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """CUDA first when asked for (or on auto) and this onnxruntime build has it; CPU always as fallback."""
    if requested == "cuda" and CUDA not in available:
        raise ArtifactError("TOOLCHAIN_PROVIDER=cuda but this onnxruntime has no CUDA provider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu or use auto/cpu")
    if requested in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def create_session(model_file: Path, providers: list[str], threads: int):
    import onnxruntime as ort

    if CUDA in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from pip wheels (onnxruntime-gpu[cuda,cudnn])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)


class OnnxModel:
    """One verified ONNX variant with its tokenizer; ``run`` maps a tokenized batch to logits."""

    def __init__(self, export: ExportInfo, variant: str, provider: str = "auto", threads: int = 1):
        import onnxruntime as ort

        self.export, self.variant = export, variant
        model_file = export.variant_file(variant)
        verify_variant(export, variant)
        self.session = create_session(model_file, choose_providers(provider, ort.get_available_providers()), threads)
        self.provider = PROVIDER_LABELS.get(self.session.get_providers()[0], self.session.get_providers()[0])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.encoder = Encoder(export.tokenizer_dir, export.max_length)
        log.info("loaded %s variant %s (%s) with ONNX Runtime provider %s, %d intra-op threads",
                 export.path, variant, model_file.name, self.provider, threads)

    @property
    def labels(self) -> list[str]:
        return self.export.labels

    def run(self, batch: Encoded) -> tuple[np.ndarray, float]:
        """Logits of a tokenized batch and the seconds the model call took."""
        feed = {name: batch.inputs[name] for name in self.input_names}
        started = time.perf_counter()
        (logits,) = self.session.run([self.output_name], feed)
        return logits, time.perf_counter() - started


def verify_variant(export: ExportInfo, variant: str) -> None:
    """Check the variant's files and the tokenizer against the manifest; refuse files it does not list."""
    entry = export.manifest["variants"][variant]
    model_rel = f"{entry['dir']}/{entry['file']}"
    if model_rel not in export.manifest.get("files", {}):
        raise ArtifactError(f"{export.path}: {model_rel} has no sha256 in the manifest's files; "
                            "re-export to get a checksum manifest")
    export.verify(only=[entry["dir"].rstrip("/") + "/", "tokenizer/"])


def load_model(export_dir: str | Path, variant: str | None, provider: str, threads: int) -> OnnxModel:
    export = load_export(export_dir)
    return OnnxModel(export, variant or export.serve_variant, provider, threads)
