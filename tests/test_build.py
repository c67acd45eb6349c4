"""`toolchain build`: stages run only when missing or stale, and the Bento holds what serving and
`bentoml containerize` need (no Docker engine runs here, so the Bento's contents are checked)."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from toolchain.core.artifacts import load_export

from test_serve_support import REPO, built, toolchain_env  # noqa: F401  (session fixture)


def bento_dir(pipeline) -> Path:
    name, version = pipeline.tag.split(":")
    return pipeline.home / "bentos" / name / version


def bento_info(pipeline) -> dict:
    return yaml.safe_load((bento_dir(pipeline) / "bento.yaml").read_text())


def test_build_runs_the_missing_stages_and_prints_how_to_serve(built):
    out = built.output
    packed = load_export(built.export_dir).serve_variant
    assert f"variant {packed} (auto, measured on " in out and "passed the accuracy gate and serves the most" in out
    assert f"train   train         {built.run_dir}" in out
    assert f"export  export        {built.export_dir}" in out
    assert built.run_dir.name.startswith("tiny-") and built.export_dir.name.startswith(built.run_dir.name + "-export-")
    assert f"toolchain serve {built.tag}" in out and f"bentoml containerize {built.tag}" in out
    assert "TOOLCHAIN_RUNTIME=gpu" in out


def test_second_plan_reuses_both_stages_and_a_changed_config_retrains(built):
    from toolchain.build import plan

    same = plan("sentiment-full", built.overrides)
    assert (same.run_state, same.export_state) == ("up to date", "up to date")
    assert (same.run_dir, same.export_dir) == (built.run_dir, built.export_dir)
    changed = plan("sentiment-full", built.overrides + ["train.epochs=4"])
    assert changed.run_dir != built.run_dir and (changed.run_state, changed.export_state) == ("train", "export")
    export_changed = plan("sentiment-full", built.overrides + ["export.latency.rounds=3"])
    assert (export_changed.run_state, export_changed.export_state) == ("up to date", "export")


def test_bento_is_labelled_with_metrics_and_config_hash(built):
    from toolchain.core.artifacts import load_export

    info = bento_info(built)
    manifest = load_export(built.export_dir).manifest
    labels = info["labels"]
    assert labels["config_hash"] == manifest["run_config_hash"]
    assert labels["export_config_hash"] == manifest["export_config_hash"]
    packed = manifest["serve_variant"]      # chosen by the export's accuracy gate and throughput ranking
    assert labels["task"] == "sequence-classification" and labels["variant"] == packed
    assert 0.0 <= float(labels["test_accuracy"]) <= 1.0 and 0.0 <= float(labels["test_macro_f1"]) <= 1.0
    assert info["args"] == {"model_tag": labels["model"], "variant": packed}
    assert info["services"][0]["models"][0]["tag"] == labels["model"]
    # a run trained from a base model: generation 0, no parent
    assert (labels["generation"], labels["parent_config_hash"], labels["lineage"]) == ("0", "none", "none")


def test_model_in_store_holds_the_variant_tokenizer_and_manifest(built):
    info = bento_info(built)
    name, version = info["args"]["model_tag"].split(":")
    model = built.home / "models" / name / version
    export = load_export(built.export_dir)
    packed = export.variant_file().relative_to(export.path).as_posix()
    for rel in ("toolchain.yaml", "tokenizer/tokenizer.json", packed):
        assert (model / rel).is_file(), rel
    others = [name for name in export.variant_names() if name != export.serve_variant]
    assert others and not any((model / "onnx" / name).exists() for name in others)   # only the packed variant
    assert not (model / "merged").exists()


def test_bento_has_dockerfile_with_cpu_and_gpu_runtimes(built):
    root = bento_dir(built)
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    assert "ARG TOOLCHAIN_RUNTIME=cpu" in dockerfile
    assert "./src/toolchain/serve/requirements/gpu.txt" in dockerfile
    assert "ENTRYPOINT" in dockerfile and "EXPOSE 3000" in dockerfile
    assert "onnxruntime-gpu[cuda,cudnn]" in (root / "src/toolchain/serve/requirements/gpu.txt").read_text()
    locked = (root / "env" / "python" / "requirements.lock.txt").read_text()
    for package in ("bentoml==", "onnxruntime==", "tokenizers==", "prometheus-client=="):
        assert package in locked, package
    assert "torch==" not in locked  # the serving image carries no training stack


def test_bento_source_is_code_only(built):
    src = bento_dir(built) / "src"
    assert (src / "toolchain" / "serve" / "service.py").is_file()
    files = [p for p in src.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".onnx", ".safetensors", ".pkl", ".bin", ".pt")]
    assert sum(p.stat().st_size for p in files) < 2_000_000


def test_exported_bento_archive_contains_the_model(built, tmp_path):
    """`bentoml export` (and containerize) pack the referenced model next to the code."""
    env = toolchain_env(built.home)
    archive = tmp_path / "service.bento"
    subprocess.run([sys.executable, "-m", "bentoml", "export", built.tag, str(archive)], env=env, check=True,
                   capture_output=True, timeout=120)
    with tarfile.open(archive) as tar:
        names = [n.removeprefix("./") for n in tar.getnames()]
    export = load_export(built.export_dir)
    packed = export.variant_file().relative_to(export.path).as_posix()
    assert any(n.endswith(packed) and n.startswith("models/") for n in names)
    assert "env/docker/Dockerfile" in names


def test_missing_data_says_which_path_or_setting_to_give(tmp_path):
    env = toolchain_env(tmp_path / "bentoml", TOOLCHAIN_DATA_DIR=str(tmp_path / "no-data"))
    result = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", f"output_dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    message = result.stderr
    assert str(tmp_path / "no-data" / "financial_phrasebank" / "splits" / "allagree" / "train.jsonl") in message
    assert "TOOLCHAIN_DATA_DIR" in message and "data.train=PATH" in message
    assert not (tmp_path / "bentoml").exists() or not any((tmp_path / "bentoml").rglob("bento.yaml"))


def test_serve_lists_its_settings():
    result = subprocess.run([sys.executable, "-m", "toolchain.cli", "serve", "--settings"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    for name in ("TOOLCHAIN_MAX_BATCH_ITEMS", "TOOLCHAIN_MAX_BODY_BYTES", "TOOLCHAIN_API_KEYS_FILE", "TOOLCHAIN_AUTH"):
        assert name in result.stdout


def test_a_data_file_edited_in_place_makes_the_run_stale(tiny_overrides, tiny_data, tmp_path, capsys):
    """The config hash does not see a data file edited at the same path: the run's recorded sha256 does. A run
    whose data changed (or is gone) is trained again, and so is its export; the changed file is named."""
    import shutil

    from toolchain.build import plan
    from toolchain.train.runner import train

    data = {split: shutil.copy(path, tmp_path / f"{split}.jsonl") for split, path in tiny_data.items()}
    overrides = [o for o in tiny_overrides if not o.startswith("data.")] + \
        [f"data.{split}={path}" for split, path in data.items()] + ["train.max_steps=2"]
    first = plan("sentiment-full", overrides)
    assert first.run_state == "train"
    train(first.run_cfg)
    assert plan("sentiment-full", overrides).run_state == "up to date"
    capsys.readouterr()
    with open(data["train"], "a") as handle:          # the same path, one more example
        handle.write('{"text": "profit rose again .", "label": "positive"}\n')
    stale = plan("sentiment-full", overrides)
    assert stale.run_dir == first.run_dir and (stale.run_state, stale.export_state) == ("train", "export")
    out = capsys.readouterr().out
    assert str(Path(data["train"]).resolve()) in out and "changed" in out
    Path(data["test"]).unlink()
    assert plan("sentiment-full", overrides).run_state == "train"
    assert "test.jsonl" in capsys.readouterr().out
