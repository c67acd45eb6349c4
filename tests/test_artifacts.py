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
