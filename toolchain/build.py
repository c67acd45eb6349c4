"""`toolchain build [--config PRESET] [key=value ...]`: the main job, from a fresh clone to a Bento.

Runs only the stages that are missing or out of date, detected by config hash (and data file sha256):

1. train  -> ``<output_dir>-<run hash>``            (reused when complete with the same config hash and
                                                    its data files unchanged (the sha256 its toolchain.yaml
                                                    records); an interrupted run is resumed from its checkpoint)
2. export -> ``<run dir>-export-<export hash>``     (reused when built from this run with this config)
3. model  -> BentoML model ``<name>:<run hash>-<export hash>-<variant>``: the chosen ONNX variant,
             the tokenizer and the export manifest (checksums verified after the copy)
4. Bento  -> built from ``bentofile.yaml``, labelled with the model's test metrics and config hashes;
             the Bento arguments ``model_tag`` and ``variant`` tell the service what to load.

Overrides starting with ``export.`` go to the export config (``export.variants=fp32,int8``); the
others to the run config (``train.epochs=3``). ``--export-dir DIR`` skips training and export.

With ``--topic-config PRESET`` (or ``--topic-export-dir DIR``) a single-task topic model goes into the
same Bento: its train and export stages run as the main model's (hash-cached), with the ``export.``
overrides applied to both exports and ``--topic-override KEY=VALUE`` to its own configs only; it is
registered as a second BentoML model, the Bento arguments gain ``topic_model_tag`` and
``topic_variant``, and its labels ``topic_model`` and the topic model's ``topic_``-prefixed labels
(``topic_test_accuracy``, ...). The pair is refused (before any training where the configs say so)
when the main model has a topic head, the topic model is itself joint, or either is an NER model.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.core.run_dirs import export_state, run_staleness
from toolchain.core.config import ConfigError, config_hash, data_root, expand_data_path

log = logging.getLogger("toolchain.build")
REPO_ROOT = Path(__file__).resolve().parent.parent
BENTOFILE = REPO_ROOT / "bentofile.yaml"
EXPORT_PREFIX = "export."


@dataclass
class Stages:
    """Where each stage's artifact lives, its hash, and whether it has to run."""
    run_cfg: object
    export_cfg: object
    run_dir: Path
    run_hash: str
    export_dir: Path
    export_hash: str
    run_state: str          # "up to date" | "resume" | "train"
    export_state: str       # "up to date" | "export"


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    run = [o for o in overrides if not o.startswith(EXPORT_PREFIX)]
    export = [o[len(EXPORT_PREFIX):] for o in overrides if o.startswith(EXPORT_PREFIX)]
    return run, export


def plan(preset: str, overrides: list[str], export_preset: str | None = None) -> Stages:
    """Resolve both configs and decide which stages must run: by config hash, and for the run also by the sha256
    of its data files (a file edited in place at the same path makes the run, and so its export, stale)."""
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config

    run_overrides, export_overrides = split_overrides(overrides)
    cfg = load_config(preset, run_overrides)
    run_hash = config_hash(replace(cfg, output_dir=""))
    cfg = replace(cfg, output_dir=f"{cfg.output_dir.rstrip('/')}-{run_hash}")
    export_cfg = replace(load_export_config(export_preset, export_overrides), output_dir=None)
    export_hash = config_hash(export_cfg)
    run_dir = Path(cfg.output_dir)
    export_dir = run_dir.with_name(f"{run_dir.name}-export-{export_hash}")
    state, why = run_staleness(run_dir, config_hash(cfg))
    if state == "train" and run_dir.exists():   # say what makes the existing run stale (e.g. which file changed)
        print(f"train: {why}", flush=True)
    # an export of a run about to be trained again is stale too, whatever its hashes say
    exported = export_state(export_dir, config_hash(cfg), export_hash) if state == "up to date" else "export"
    return Stages(cfg, export_cfg, run_dir, run_hash, export_dir, export_hash, state, exported)


def check_data(cfg, option: str = "") -> None:
    """Fail before a long job when a data file is missing, saying which path or setting to give (``option``:
    the flag that passes the override, for the topic model ``--topic-override``)."""
    for role in ("train", "dev", "test"):
        value = getattr(cfg.data, role)
        path = expand_data_path(value)
        if path and not Path(path).exists():
            raise ConfigError(
                f"data.{role}: {path} not found. Set TOOLCHAIN_DATA_DIR to the folder holding "
                f"financial_phrasebank/ (now {data_root() or 'not found'}), or pass {option}data.{role}=PATH")


def plan_topic(preset: str, overrides: list[str], topic_overrides: list[str],
               export_preset: str | None = None) -> Stages:
    """The topic model's stages: its preset, the main overrides' ``export.`` part (shared by both exports),
    then ``topic_overrides`` (its own run config, or with ``export.`` its own export config)."""
    shared = [o for o in overrides if o.startswith(EXPORT_PREFIX)]
    return plan(preset, shared + list(topic_overrides), export_preset)


def check_topic_configs(main_cfg, topic_cfg) -> None:
    """Refuse, before anything trains, a pair that the configs already show cannot be served together
    (``main_cfg`` None: the main model is a given export dir, checked once both exports exist)."""
    if main_cfg is None:
        pass
    elif main_cfg.model.task != "sequence-classification":
        raise ConfigError(f"--topic-config: the main model is a {main_cfg.model.task} (NER) model; a topic model "
                          "goes with a sequence-classification main model (e.g. --config sentiment-full)")
    elif main_cfg.topic.train:
        raise ConfigError(f"--topic-config: the main model already has a topic head (topic.train="
                          f"{main_cfg.topic.train}); build it alone, or drop topic.train to pair a single-task "
                          "main model with the topic model")
    if topic_cfg.model.task != "sequence-classification":
        raise ConfigError(f"--topic-config: the topic model is a {topic_cfg.model.task} (NER) model; give a "
                          "sequence-classification topic preset (topic-full)")
    if topic_cfg.topic.train:
        raise ConfigError(f"--topic-config: the topic model would be a joint model itself (topic.train="
                          f"{topic_cfg.topic.train}); give a single-task topic preset (topic-full)")


def check_topic_exports(export_dir: Path, topic_export_dir: Path) -> None:
    """The two exports can be served together (toolchain.inference.runtime.check_topic_pair); raises ArtifactError."""
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import check_topic_pair

    check_topic_pair(load_export(export_dir), load_export(topic_export_dir))


def ensure_run(stages: Stages) -> None:
    if stages.run_state == "up to date":
        return
    check_data(stages.run_cfg)
    from toolchain.train.runner import train

    resume = stages.run_state == "resume"
    print(f"train: {'resuming' if resume else 'training'} {stages.run_dir}", flush=True)
    train(stages.run_cfg, resume=resume, overwrite=not resume)


def ensure_export(stages: Stages) -> None:
    from toolchain.export.pipeline import export

    if stages.export_state == "up to date":
        return
    print(f"export: {stages.run_dir} -> {stages.export_dir}", flush=True)
    export(stages.run_dir, stages.export_dir, stages.export_cfg)


def model_name(export_dir: Path) -> str:
    """A BentoML model name from the run's name: lower case, [a-z0-9._-], at most 40 characters."""
    stem = re.sub(r"-export-[0-9a-f]+$", "", export_dir.name)
    stem = re.sub(r"-[0-9a-f]{16}$", "", stem)
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:40].strip("-._")
    return name or "toolchain-model"


def variant_metrics(export, variant: str) -> dict[str, float]:
    """Test metrics of the packed variant, from the export's report.json (empty when absent)."""
    report_file = export.path / "report.json"
    if not report_file.is_file():
        return {}
    report = json.loads(report_file.read_text(encoding="utf-8"))
    test = report.get("variants", {}).get(variant, {}).get("test", {})
    return {k: float(v) for k, v in test.items() if k in ("accuracy", "macro_f1", "f1")}


def model_labels(export, variant: str) -> dict[str, str]:
    manifest = export.manifest
    labels = {"task": export.task, "variant": variant,
              "config_hash": str(manifest.get("run_config_hash")),
              "export_config_hash": str(manifest.get("export_config_hash"))}
    labels.update({f"test_{k}": f"{v:.4f}" for k, v in variant_metrics(export, variant).items()})
    labels.update(lineage_labels(manifest))
    return labels


def lineage_labels(manifest: dict) -> dict[str, str]:
    """The model's ancestry (``toolchain update``): generation (0 = trained from a base model), the parent's
    config hash, the chain of ancestors' config hashes (nearest first, 8 characters each) and promotable."""
    lineage = manifest.get("lineage") or []
    labels = {"generation": str(len(lineage)),
              "parent_config_hash": str(lineage[0].get("config_hash")) if lineage else "none",
              "lineage": ">".join(str(a.get("config_hash"))[:8] for a in lineage[:6]) or "none"}
    if "promotable" in manifest:
        labels["promotable"] = str(bool(manifest["promotable"])).lower()
    return labels


def check_promotable(export) -> None:
    """An update that forgot more than its limit (``update.max_forgetting``) is not built into a Bento."""
    from toolchain.core.artifacts import ArtifactError

    if export.manifest.get("promotable", True) is False:
        raise ArtifactError(f"{export.path}: its run is not promotable (it forgot more of its parent's test set than "
                            f"update.max_forgetting allows: see {export.manifest.get('run_dir')}/metrics.json, "
                            f"'update'); pass --allow-unpromotable to build it anyway")


def topic_labels(topic_model) -> dict[str, str]:
    """The Bento labels of the topic model: its tag and its own labels prefixed ``topic_`` (topic_variant,
    topic_config_hash, topic_test_accuracy, ...)."""
    own = {k: str(v) for k, v in topic_model.info.labels.items() if k != "task"}
    return {"topic_model": str(topic_model.tag), **{f"topic_{k}": v for k, v in own.items()}}


def register_model(export_dir: Path, variant: str | None, allow_unpromotable: bool = False):
    """The export's variant as a BentoML model (reused when the tag exists); returns (model, variant)."""
    import bentoml
    from bentoml.exceptions import NotFound

    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import verify_variant

    export = load_export(export_dir)
    if not allow_unpromotable:
        check_promotable(export)
    variant = variant or export.serve_variant
    export.variant_file(variant)  # names the variants on a typo
    manifest = export.manifest
    version = f"{str(manifest.get('run_config_hash'))[:8]}-{str(manifest.get('export_config_hash'))[:8]}-{variant}"
    tag = f"{model_name(export_dir)}:{version}"
    try:
        return bentoml.models.get(tag), variant
    except NotFound:
        pass
    verify_variant(export, variant)
    entry = manifest["variants"][variant]
    with bentoml.models.create(tag, labels=model_labels(export, variant),
                               metadata={"labels": export.labels, "max_length": export.max_length}) as model:
        for rel in ("toolchain.yaml", "report.json", "tokenizer", entry["dir"]):
            copy_into(export_dir / rel, Path(model.path) / rel)
        verify_variant(load_export(model.path), variant)
    return model, variant


def copy_into(source: Path, target: Path) -> None:
    """Copy a file or folder of the export into the model store, world-readable (files 0644, folders 0755):
    the Bento's container may run under a non-root UID other than the builder's, and an export's files
    can be 0600 (temporary files renamed into place)."""
    if not source.exists():
        return
    created = [folder for folder in [target.parent, *target.parent.parents] if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    for folder in created:
        os.chmod(folder, 0o755)
    if source.is_dir():
        shutil.copytree(source, target)
        for folder, _, files in os.walk(target):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
    else:
        shutil.copy2(source, target)
        os.chmod(target, 0o644)


def build_bento(model, variant: str, topic: tuple | None = None):
    """``bentoml build`` of bentofile.yaml with the model's labels and the Bento arguments; ``topic`` is
    (topic model, its variant) to serve beside it."""
    import bentoml

    if not BENTOFILE.is_file():
        raise ConfigError(f"{BENTOFILE} not found: `toolchain build` runs from a source checkout of toolchain")
    labels = {**{k: str(v) for k, v in model.info.labels.items()}, "model": str(model.tag)}
    args = {"model_tag": str(model.tag), "variant": variant}
    if topic is not None:
        labels.update(topic_labels(topic[0]))
        args.update(topic_model_tag=str(topic[0].tag), topic_variant=topic[1])
    copy = context_copy(REPO_ROOT, BENTOFILE)
    context, previous = copy or REPO_ROOT, os.getcwd()
    os.chdir(context)  # bentoml resolves the bentofile's paths against the working directory
    try:
        return bentoml.bentos.build_bentofile(str(context / BENTOFILE.name), build_ctx=str(context), labels=labels,
                                              reload=True, args=args)
    finally:
        os.chdir(previous)
        if copy:
            shutil.rmtree(copy, ignore_errors=True)


def hidden_parts(path: Path) -> list[str]:
    """Folders of ``path`` whose name starts with '.': BentoML refuses to build from under any of them."""
    return [part for part in Path(path).resolve().parts if part.startswith(".")]


def bentofile_entries(root: Path, bentofile: Path) -> list[Path]:
    """The top-level entries of ``root`` that the bentofile can reach: its include patterns and the files it
    names (requirements, Dockerfile template, setup script, conda environment)."""
    import fnmatch

    import yaml

    spec = yaml.safe_load(bentofile.read_text(encoding="utf-8")) or {}
    named = [(spec.get(section) or {}).get(key) for section, key in (
        ("python", "requirements_txt"), ("docker", "dockerfile_template"), ("docker", "setup_script"),
        ("conda", "environment_yml"))]
    heads = {str(p).lstrip("/").split("/")[0] for p in [*(spec.get("include") or ["*"]), *filter(None, named)]}
    return sorted({entry for entry in root.iterdir() if not entry.name.startswith(".")
                   and any(fnmatch.fnmatch(entry.name, head) or head.startswith("**") for head in heads)})


def context_copy(root: Path, bentofile: Path) -> Path | None:
    """None when BentoML can build from the checkout itself; else, as the checkout's path has a folder starting
    with '.' (BentoML: "Accessing hidden files is not allowed"), a temporary copy of what the bentofile
    reaches, at a path without one (the caller removes it)."""
    import tempfile

    hidden = hidden_parts(root)
    if not hidden:
        return None
    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path.home()]
    base = next((d for d in candidates if d.is_dir() and os.access(d, os.W_OK) and not hidden_parts(d)), None)
    if base is None:
        raise ConfigError(f"{root}: BentoML will not build from a path with a folder starting with '.' "
                          f"({', '.join(hidden)}), and no writable temporary folder without one was found; set "
                          f"TMPDIR to such a folder or move the checkout")
    copy = Path(tempfile.mkdtemp(prefix="toolchain-build-", dir=base))
    log.info("build: %s has a hidden folder in its path (%s); building from a copy in %s", root,
             ", ".join(hidden), copy)
    try:
        shutil.copy2(bentofile, copy / bentofile.name)
        for entry in bentofile_entries(root, bentofile):
            if entry.is_dir():
                shutil.copytree(entry, copy / entry.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif entry.resolve() != bentofile.resolve():
                shutil.copy2(entry, copy / entry.name)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy


def packed_variant_line(export_dir: Path, variant: str, pinned: bool, what: str = "variant",
                        flag: str = "--variant") -> str:
    """Which variant the Bento serves and why: the export's accuracy gate and throughput ranking, or a pin."""
    report_file = export_dir / "report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
    selection = report.get("selection") or {}
    if pinned or selection.get("variant") != variant:
        return f"{what} {variant} (given by {flag})"
    cpu = report.get("cpu") or {}
    where = f"{cpu.get('machine')}, {', '.join(cpu.get('features') or []) or 'no vector extensions detected'}"
    return f"{what} {variant} ({selection.get('mode')}, measured on {where}): {selection.get('why')}"


def print_summary(bento, model, topic_model=None) -> None:
    tag = str(bento.tag)
    topic = [] if topic_model is None else [
        f"topic   {topic_model.tag}   (BentoML model store; POST /classify adds its topic per text)"]
    print("\n".join([
        f"model   {model.tag}   (BentoML model store)",
        *topic,
        f"bento   {tag}",
        "",
        "Serve it (API keys: a file with one key or sha256:<hex> per line):",
        f"  TOOLCHAIN_API_KEYS_FILE=keys.txt toolchain serve {tag}      (or: bentoml serve {tag})",
        "Containerize it (needs a Docker engine):",
        f"  bentoml containerize {tag}                                          # CPU image",
        f"  bentoml containerize {tag} --opt build-arg=TOOLCHAIN_RUNTIME=gpu    # GPU image",
        f"bento: {tag}",
    ]), flush=True)
