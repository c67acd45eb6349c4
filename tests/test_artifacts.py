"""The artifact contract's file writes: atomic, and with the modes a plain write would give."""
import os
import stat

import pytest

from toolchain.core.artifacts import atomic_write_text, write_json, write_yaml


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)
    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"])
def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path, umask, mask, mode):
    """mkstemp makes 0600 files; a final artifact (toolchain.yaml, report.json) must not stay that way, or a
    container running under another UID cannot read what the Bento carries."""
    umask(mask)
    for name, write in (("a.txt", lambda p: atomic_write_text(p, "x\n")), ("b.json", lambda p: write_json(p, {})),
                        ("c.yaml", lambda p: write_yaml(p, {"a": 1}))):
        write(tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    atomic_write_text(tmp_path / "a.txt", "replaced\n")  # replacing keeps it so
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.yaml"]  # no temporary left


def test_one_rule_for_what_a_stage_may_replace(tmp_path, monkeypatch):
    """Only a dir the toolchain wrote for that stage may be replaced: a training run for train --overwrite, an
    export dir (decided from its toolchain.yaml) for export; never a user's folder, the current folder or a parent
    of it. A missing or empty folder is fine to fill."""
    from pathlib import Path

    from toolchain.core.artifacts import ArtifactError
    from toolchain.core.run_dirs import check_export_target, check_replaceable, run_dir_marker

    def folder(name, **files):
        path = tmp_path / name
        path.mkdir()
        for file, text in files.items():
            (path / file).write_text(text)
        return path

    export_dir = folder("export", **{"toolchain.yaml": "artifact_version: 1\nstage: export\nstatus: complete\n"})
    failed = folder("export2", **{"toolchain.yaml": "artifact_version: 1\nstage: export\nstatus: failed\n",
                                  "INCOMPLETE": "gate failed\n"})
    run_dir = folder("run", **{"toolchain.yaml": "artifact_version: 1\nstage: train\nstatus: complete\n"})
    killed = folder("killed", INCOMPLETE="interrupted\n")
    user = folder("user", **{"notes.txt": "keep me"})
    empty = folder("empty")
    (tmp_path / "file.txt").write_text("a file")

    assert run_dir_marker(export_dir, ("export",)) and run_dir_marker(failed, ("export",))
    assert run_dir_marker(run_dir) and run_dir_marker(killed) and not run_dir_marker(export_dir)
    for stage_dir in (run_dir, killed):
        check_replaceable(stage_dir)                      # training runs: --overwrite may replace them
    for ok in (export_dir, failed, empty, tmp_path / "missing"):
        check_export_target(ok)
    for refused, why in ((run_dir, "stage 'train'"), (killed, "not an export dir"), (user, "not an export dir"),
                         (tmp_path / "file.txt", "not a folder")):
        with pytest.raises(ArtifactError, match=why):
            check_export_target(refused)
    with pytest.raises(ArtifactError, match="stage 'export'"):
        check_replaceable(export_dir)                     # train --overwrite never deletes an export dir
    with pytest.raises(ArtifactError, match="the run dir being exported"):
        check_export_target(export_dir, run_dir=export_dir)
    with pytest.raises(ArtifactError, match="holds the run dir being exported"):
        check_export_target(tmp_path / "empty", run_dir=tmp_path / "empty" / "run")
    monkeypatch.chdir(export_dir)
    for refused in (Path("."), tmp_path):                 # the current folder, a parent of it
        with pytest.raises(ArtifactError, match="current directory"):
            check_export_target(refused)
    monkeypatch.chdir(empty)
    with pytest.raises(ArtifactError, match="current directory"):
        check_export_target(Path("."))                    # even empty: the export renames it away
    assert (user / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "export", "export2", "file.txt", "killed",
                                                          "run", "user"]
