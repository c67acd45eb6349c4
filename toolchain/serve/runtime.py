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
BUCKET_TOKENS = 16
MAX_CALL_TEXTS = 32   # most texts in one model call (the adaptive batcher's default max_batch_size)


@dataclass
class BatchOutput:
    """The model's output for a list of texts, in input order, with per-text bookkeeping."""
    logits: list[np.ndarray]   # one array per text (its row of the model call it ran in)
    tokens: list[int]          # tokens per text after truncation (special tokens included)
    truncated: list[bool]      # text was cut to the model's max length
    encodings: list            # tokenizers.Encoding per text (offsets for token-level tasks)
    seconds: float             # time spent in model calls


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

    def tokenize(self, texts: list[str]) -> list:
        return self.tokenizer.encode_batch(texts)

    def pad(self, encodings: list) -> dict[str, np.ndarray]:
        """Model inputs: ids padded to the longest encoding, with its attention mask."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def plan_calls(lengths: list[int], per_text: bool, max_texts: int = MAX_CALL_TEXTS) -> list[list[int]]:
    """Text indices per model call: one text each, or texts of similar length together, at most
    ``max_texts`` per call.

    Grouping by length (in steps of BUCKET_TOKENS) keeps padding small: padding a short text to a
    long one costs compute (attention is quadratic) without changing a batch-invariant model's output.
    The cap bounds a call's activations: ONNX Runtime's arena keeps the memory of its largest call, so
    one call over a whole test set (thousands of texts) would hold gigabytes for the session's life.
    """
    if per_text:
        return [[i] for i in range(len(lengths))]
    buckets: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        buckets.setdefault(-(-length // BUCKET_TOKENS), []).append(index)
    return [buckets[key][start:start + max_texts] for key in sorted(buckets)
            for start in range(0, len(buckets[key]), max_texts)]


def quantizes_at_run_time(model_file: Path) -> bool:
    """True for dynamically quantized graphs (DynamicQuantizeLinear / DynamicQuantizeMatMul nodes).

    Their activation ranges are measured over the whole model call, so a text's scores would move
    with the other texts (and the padding) of its call: such a model is called one text at a time.
    """
    with open(model_file, "rb") as handle:
        return any(b"DynamicQuantize" in chunk for chunk in iter(lambda: handle.read(1 << 22), b""))


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


def create_session(model_file: Path, providers: list[str], threads: int, spin: bool = False):
    """An ONNX Runtime session; with ``spin`` off, idle intra-op threads sleep instead of burning CPU."""
    import onnxruntime as ort

    if CUDA in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from pip wheels (onnxruntime-gpu[cuda,cudnn])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)


class OnnxModel:
    """One ONNX variant with its tokenizer; ``run`` maps a tokenized batch to logits, ``infer`` texts to logits.

    ``OnnxModel(export, variant)`` is what the service loads (checksums verified first);
    :meth:`from_files` builds the same runtime on files not yet in a finished export dir (the export's
    accuracy gate and throughput ranking score a variant exactly as the service will run it).
    """

    def __init__(self, export: ExportInfo, variant: str, provider: str = "auto", threads: int = 1,
                 spin: bool = False, calls: str = "auto"):
        verify_variant(export, variant)
        self.export = export
        self._setup(export.variant_file(variant), export.tokenizer_dir, export.max_length, export.labels, variant,
                    provider, threads, spin, calls)
        log.info("loaded %s variant %s (%s) with ONNX Runtime provider %s, %d intra-op threads, %s model calls",
                 export.path, variant, self.model_file.name, self.provider, threads, self.call_pattern)

    @classmethod
    def from_files(cls, model_file: Path, tokenizer_dir: Path, max_length: int, labels: list[str],
                   variant: str, provider: str = "cpu", threads: int = 1, calls: str = "auto") -> "OnnxModel":
        model = cls.__new__(cls)
        model.export = None
        model._setup(Path(model_file), Path(tokenizer_dir), max_length, labels, variant, provider, threads, False,
                     calls)
        return model

    def _setup(self, model_file: Path, tokenizer_dir: Path, max_length: int, labels: list[str], variant: str,
               provider: str, threads: int, spin: bool, calls: str) -> None:
        import onnxruntime as ort

        self.variant, self.model_file, self._labels, self.threads = variant, model_file, list(labels), threads
        providers = choose_providers(provider, ort.get_available_providers())
        self.session = create_session(model_file, providers, threads, spin)
        self.provider = PROVIDER_LABELS.get(self.session.get_providers()[0], self.session.get_providers()[0])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.encoder = Encoder(tokenizer_dir, max_length)
        self.per_text = calls == "per-text" or (calls == "auto" and quantizes_at_run_time(model_file))

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def call_pattern(self) -> str:
        return "per-text" if self.per_text else "length-grouped"

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """Logits of one padded model call and the seconds it took."""
        feed = {name: inputs[name] for name in self.input_names}
        started = time.perf_counter()
        (logits,) = self.session.run([self.output_name], feed)
        return logits, time.perf_counter() - started

    def run_encoded(self, encodings: list) -> tuple[list[np.ndarray], float]:
        """Logits per encoding (rows of its call, unpadded for token tasks), grouped into calls as the
        service groups them; and the seconds spent in model calls."""
        logits: list = [None] * len(encodings)
        seconds = 0.0
        for group in plan_calls([len(e.ids) for e in encodings], self.per_text):
            output, took = self.run(self.encoder.pad([encodings[i] for i in group]))
            seconds += took
            for row, index in enumerate(group):
                logits[index] = output[row] if output.ndim == 2 else output[row, :len(encodings[index].ids)]
        return logits, seconds

    def infer(self, texts: list[str]) -> BatchOutput:
        """Logits per text; how texts are grouped into model calls never changes a text's result."""
        encodings = self.encoder.tokenize(texts)
        logits, seconds = self.run_encoded(encodings)
        return BatchOutput(logits, [len(e.ids) for e in encodings], [bool(e.overflowing) for e in encodings],
                           encodings, seconds)


class Features:
    """Pre-tokenized model inputs (a task's encoded features) in the shape ``run_encoded`` takes."""

    def __init__(self, feature: dict):
        self.ids = list(feature["input_ids"])
        self.attention_mask = list(feature.get("attention_mask", [1] * len(self.ids)))
        self.type_ids = list(feature.get("token_type_ids", [0] * len(self.ids)))


def verify_variant(export: ExportInfo, variant: str) -> None:
    """Check the variant's files and the tokenizer against the manifest; refuse files it does not list."""
    export.variant_file(variant)  # an unknown variant: the error names the ones there are
    entry = export.manifest["variants"][variant]
    model_rel = f"{entry['dir']}/{entry['file']}"
    if model_rel not in export.manifest.get("files", {}):
        raise ArtifactError(f"{export.path}: {model_rel} has no sha256 in the manifest's files; "
                            "re-export to get a checksum manifest")
    export.verify(only=[entry["dir"].rstrip("/") + "/", "tokenizer/"])


def load_model(export_dir: str | Path, variant: str | None, settings, threads: int = 1) -> OnnxModel:
    """The variant (default: the manifest's serve_variant) with the provider of ``settings`` on ``threads``
    intra-op threads (the worker layout's, see toolchain.serve.layout)."""
    export = load_export(export_dir)
    return OnnxModel(export, variant or export.serve_variant, settings.provider, threads, settings.spin,
                     settings.model_calls)


def wants_gpu(provider: str) -> bool:
    """The provider setting will put the model on a CUDA GPU (without importing onnxruntime's CUDA libs)."""
    if provider == "cpu":
        return False
    try:
        import onnxruntime
        return CUDA in onnxruntime.get_available_providers()
    except ImportError:
        return False
