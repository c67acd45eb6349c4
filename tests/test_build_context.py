"""`toolchain build` packs the source checkout: it works from any path, and copied model files are readable.

A checkout under a folder whose name starts with '.' (``~/.cache/...``, ``/work/.ci/...``) used to end in
BentoML's raw ``ValueError: Accessing hidden files is not allowed``; the Bento is now built from a copy
of the build context at a path without hidden folders.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

BUILD_SCRIPT = """
import sys
from pathlib import Path
import bentoml
import toolchain.build as build

assert Path(build.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), build.__file__
with bentoml.models.create("tiny-model:v1", labels={"task": "sequence-classification"}) as model:
    Path(model.path, "toolchain.yaml").write_text("stage: export\\n")
bento = build.build_bento(bentoml.models.get("tiny-model:v1"), "int8")
print("bento:", bento.tag)
"""


STUB_SERVICE = """
import bentoml


@bentoml.service(name="stub-service")
class Stub:
    @bentoml.api
    def ping(self, text: str) -> str:
        return text
"""


def hidden_checkout(root: Path) -> Path:
    """A copy of this checkout's build context under a hidden folder. Its bentofile keeps every path
    (includes, requirements, Dockerfile template) but serves a stub (the test is about the paths, not the
    service) and locks no packages (no package index here)."""
    checkout = root / ".hidden" / "checkout"
    shutil.copytree(REPO / "toolchain", checkout / "toolchain", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (checkout / "toolchain" / "stub_service.py").write_text(STUB_SERVICE)
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    bentofile.update(service="toolchain.stub_service:Stub")
    bentofile["python"]["lock_packages"] = False
    (checkout / "bentofile.yaml").write_text(yaml.safe_dump(bentofile))
    return checkout


def test_build_from_a_checkout_under_a_hidden_folder(tmp_path):
    checkout = hidden_checkout(tmp_path)
    home = tmp_path / "bentoml-home"
    scratch = tmp_path / "scratch"  # TMPDIR: where the copy goes (tmp_path has no hidden folder)
    scratch.mkdir()
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(checkout),
           "TMPDIR": str(scratch)}
    result = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(checkout)], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bento:" in result.stdout
    bentos = list((home / "bentos").glob("*/*/src/toolchain/stub_service.py"))
    assert len(bentos) == 1, "the Bento holds the service code"
    bento = bentos[0].parents[2]
    assert (bento / "src" / "toolchain" / "serve" / "requirements").is_dir()
    assert not any(p.name == "checkout" or p.name.startswith(".hidden") for p in (bento / "src").rglob("*"))
    assert not list(scratch.glob("toolchain-build-*")), "the temporary copy is removed after the build"


def test_model_files_copied_into_the_bento_are_world_readable(tmp_path):
    """Export files may be 0600 (temporary files renamed into place); the Bento's container may run under a
    non-root UID that is not the builder's, so what copy_into writes is 0644 (folders 0755)."""
    from toolchain.build import copy_into

    source = tmp_path / "export"
    (source / "onnx" / "int8").mkdir(parents=True)
    for rel in ("toolchain.yaml", "onnx/int8/model.onnx", "onnx/int8/config.json"):
        (source / rel).write_text("x")
        os.chmod(source / rel, 0o600)
    os.chmod(source / "onnx" / "int8", 0o700)
    model = tmp_path / "store" / "model"
    model.mkdir(parents=True)
    copy_into(source / "toolchain.yaml", model / "toolchain.yaml")
    copy_into(source / "onnx" / "int8", model / "onnx" / "int8")
    modes = {str(p.relative_to(model)): oct(p.stat().st_mode & 0o777) for p in model.rglob("*")}
    assert modes == {"toolchain.yaml": "0o644", "onnx": "0o755", "onnx/int8": "0o755",
                     "onnx/int8/model.onnx": "0o644", "onnx/int8/config.json": "0o644"}
