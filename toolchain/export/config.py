"""Typed export options (`toolchain export`): one field per option, with its default, help and checks.

Export presets live next to the training presets in ``toolchain/configs/`` as ``export-*.yaml``; they
carry ``kind: export`` at the top level so a loader can tell them from run configs. Load one with
:func:`load_export_config` (``toolchain.export.config.load_export_config("export-default", ["prune.amount=0.3"])``).

The section ``accuracy_gate`` was called ``gate``: ``gate.*`` keys (in YAML files, as ``key=value`` overrides and
as ``export.gate.*`` in ``toolchain build``) are still read for one release, with a deprecation warning
(``ExportConfig.RENAMED_KEYS``, applied by :mod:`toolchain.core.config`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolchain.core.config import CONFIG_VERSION, ConfigError, apply_overrides, from_dict, opt, read_preset

VARIANTS = ("fp32", "optimized", "int8", "int8-static", "pruned", "pruned-int8")
ISAS = ("auto", "arm64", "avx2", "avx512", "avx512_vnni")
PRUNED_VARIANTS = ("pruned", "pruned-int8")


@dataclass
class OptimizeConfig:
    level: str = opt("O2", "ORTOptimizer level for the 'optimized' variant (O4 = fp16, GPU only)",
                     choices=("O1", "O2", "O3", "O4"))


@dataclass
class QuantizeConfig:
    isa: str = opt("auto", "quantization preset: auto = detected from this CPU (arm64/avx2/avx512/avx512_vnni)",
                   choices=ISAS)
    per_channel: bool = opt(True, "quantize weights per output channel (per-row) instead of per tensor")
    reduce_range: bool | None = opt(None, "7-bit weights; None = on where signed weights meet x86 without VNNI "
                                     "(the avx512 preset there; avx2 uses uint8 weights and needs none)")
    static_samples: int = opt(256, "training examples used to calibrate static int8", min=1)
    static_method: str = opt("minmax", "calibration method of static int8",
                             choices=("minmax", "percentile", "entropy"))
    static_operators: str = opt("MatMul,Gather", "operators static int8 quantizes (comma list; Optimum's default "
                                "list also quantizes LayerNormalization, Reshape, ... and costs accuracy)")
    static_percentile: float = opt(99.999, "percentile kept by the percentile calibration", min=90.0, max=100.0)


@dataclass
class PruneConfig:
    amount: float | None = opt(None, "fraction of attention heads and FFN neurons removed per layer, in (0, 1); "
                                     "None = no pruning")
    heads: bool = opt(True, "prune attention heads (at least one head per layer is kept)")
    ffn: bool = opt(True, "prune FFN intermediate neurons")
    importance_samples: int = opt(0, "dev examples used to score importance (0 = all)", min=0)
    recovery: str = opt("distill", "after pruning: none, finetune (task loss) or distill (from the unpruned model)",
                        choices=("none", "finetune", "distill"))
    recovery_epochs: float = opt(1.0, "epochs of the recovery training on the training data", min=0.0)
    learning_rate: float = opt(5e-5, "recovery learning rate", min=0.0)
    temperature: float = opt(2.0, "distillation temperature", min=0.1)
    alpha: float = opt(0.5, "weight of the distillation loss (the rest is the task loss)", min=0.0, max=1.0)
    batch_size: int = opt(16, "recovery batch size", min=1)
    seed: int = opt(42, "recovery seed")


@dataclass
class AccuracyGateConfig:
    metric: str = opt("auto", "task metric of the accuracy gate (auto = the task's headline metric, e.g. accuracy)")
    max_drop: float = opt(1.0, "largest allowed test-metric drop of a serving variant vs fp32 PyTorch, in points",
                          min=0.0)
    alpha: float = opt(0.05, "a variant significantly worse than fp32 PyTorch at this level fails (paired test: "
                             "exact McNemar for accuracy, bootstrap otherwise); 0 = off", min=0.0, max=0.5)
    bootstrap_resamples: int = opt(2000, "resamples of the paired bootstrap", min=100, max=100_000)
    min_agreement: float = opt(0.0, "smallest label agreement with fp32 PyTorch on test (0 = not required; "
                                    "agreement is reported either way)", min=0.0, max=1.0)
    merge_atol: float = opt(1e-4, "largest max-abs logit difference between merged and unmerged PEFT model", min=0.0)
    parity_atol: float = opt(1e-4, "largest max-abs logit difference between fp32 ONNX and PyTorch", min=0.0)


@dataclass
class LatencyConfig:
    batch_sizes: str = opt("1,32", "comma-separated batch sizes measured")
    rounds: int = opt(30, "interleaved timing rounds per batch size, at most (time_budget may stop earlier)", min=1)
    time_budget: float = opt(60.0, "seconds the timing rounds may take after the warm-up (0 = no limit): a large "
                                   "model gets fewer rounds, never fewer than min_rounds", min=0.0)
    min_rounds: int = opt(5, "timing rounds run whatever the time budget", min=1)
    warmup: int = opt(3, "untimed warm-up calls per variant and batch size", min=0)
    threads: int = opt(0, "intra-op threads for PyTorch and ONNX Runtime (0 = all cores)", min=0)
    pytorch: bool = opt(True, "also time the fp32 PyTorch model (the reference for speed-ups)")


@dataclass
class ExportConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"gate": "accuracy_gate"}   # former name -> name; one release

    version: int = opt(CONFIG_VERSION, "config schema version")
    kind: str = opt("export", "marks an export config (presets in toolchain/configs/export-*.yaml)",
                    choices=("export",))
    output_dir: str | None = opt(None, "export dir (default: exports/<run dir name>)")
    variants: str = opt("fp32,optimized,int8,int8-static", "comma-separated variants to build; 'pruned' and "
                        "'pruned-int8' are added when prune.amount is set")
    serve_variant: str = opt("auto", "variant the service uses: auto = of the variants that pass the accuracy "
                             "gate, the one with the highest served throughput on this machine; or a variant name "
                             "(pinned: it must pass the accuracy gate)", choices=("auto", *VARIANTS))
    serve_threads: int = opt(1, "ONNX Runtime threads per call when the accuracy gate scores and ranks variants (the "
                                "service's per-worker threads; 1 for small encoders)", min=1, max=256)
    rank_rounds: int = opt(3, "timing rounds of the served-throughput ranking (median)", min=1, max=50)
    rank_texts: int = opt(96, "test texts (a seeded sample) timed by the served-throughput ranking and the layout "
                              "measurement (0 = all); the accuracy gate always scores the whole test split", min=0)
    eval_batch_size: int = opt(64, "batch size for scoring variants on dev/test", min=1)
    calibrate: bool = opt(True, "fit a softmax temperature per head on dev for every variant (temperature "
                          "scaling), report test ECE before/after, and have the service return calibrated "
                          "scores (sequence classification)")
    calibrate_objective: str = opt("ece", "what the temperature minimises on dev: ece (expected calibration error, "
                                   "grid search; measured lower served test ECE on PhraseBank, 6 of 6 exports) or "
                                   "nll (negative log-likelihood, Guo et al. 2017)", choices=("ece", "nll"))
    opset: int | None = opt(None, "ONNX opset (None = Optimum's default for the architecture)", min=11)
    optimize: OptimizeConfig = opt(None, "graph optimization", factory=OptimizeConfig)
    quantize: QuantizeConfig = opt(None, "int8 quantization", factory=QuantizeConfig)
    prune: PruneConfig = opt(None, "structured pruning", factory=PruneConfig)
    accuracy_gate: AccuracyGateConfig = opt(None, "the accuracy gate: logit parity and the test-metric drop of each "
                                            "variant (former name: gate)", factory=AccuracyGateConfig)
    latency: LatencyConfig = opt(None, "latency measurement", factory=LatencyConfig)

    def __post_init__(self) -> None:
        self.variant_list()  # validate names early
        amount = self.prune.amount
        if amount is not None and not 0.0 < amount < 1.0:
            raise ConfigError(f"prune.amount: {amount!r} is outside (0, 1); e.g. prune.amount=0.4 removes 40% "
                              "of heads and FFN neurons, prune.amount=null turns pruning off")
        if self.serve_variant != "auto" and self.serve_variant not in self.variant_list():
            raise ConfigError(f"serve_variant: {self.serve_variant!r} is not built by this config (variants: "
                              f"{', '.join(self.variant_list())}); add it to variants or set prune.amount")
        self.latency_batch_sizes()

    def variant_list(self) -> list[str]:
        """Variants to build, in build order; 'fp32' is always built (it is the parity reference)."""
        names = [n.strip() for n in self.variants.split(",") if n.strip()]
        for name in names:
            if name not in VARIANTS:
                raise ConfigError(f"variants: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        if self.prune.amount is not None:
            names += [n for n in PRUNED_VARIANTS if n not in names]
        elif any(n in PRUNED_VARIANTS for n in names):
            raise ConfigError(f"variants: {self.variants!r} asks for a pruned variant but prune.amount is not set; "
                              "set e.g. prune.amount=0.4")
        return [n for n in VARIANTS if n in names or n == "fp32"]

    def latency_batch_sizes(self) -> list[int]:
        try:
            sizes = [int(s) for s in self.latency.batch_sizes.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"latency.batch_sizes: {self.latency.batch_sizes!r} is not a comma list of "
                              "integers, e.g. 1,32") from None
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"latency.batch_sizes: {self.latency.batch_sizes!r} needs positive batch sizes")
        return sizes


def load_export_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> ExportConfig:
    """An export preset (name in toolchain/configs or a YAML path) with ``key=value`` overrides applied."""
    raw = read_preset(name_or_path, renamed=ExportConfig.RENAMED_KEYS) if name_or_path else {}
    if name_or_path and raw.get("kind") != "export":
        raise ConfigError(f"config {name_or_path!r} is not an export config (no 'kind: export'); "
                          "export presets are named export-*.yaml, e.g. --config export-default")
    return from_dict(ExportConfig, apply_overrides(raw, list(overrides or []), ExportConfig.RENAMED_KEYS))
