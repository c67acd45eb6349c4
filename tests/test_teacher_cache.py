"""The teacher-logits cache: a second pass reads every text from disk; a changed text is computed again (and only
it); a teacher with other weights, labels or max length never reads another's entries; a broken shard is computed
again, not trusted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from toolchain.core.artifacts import RunInfo
from toolchain.train.teacher_cache import TeacherCache, cached_logits, cache_dir, teacher_fingerprint


def fake_run(root: Path, weights: bytes = b"weights-1", max_length: int = 32) -> RunInfo:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "model.safetensors").write_bytes(weights)
    (root / "model" / "config.json").write_text("{}")
    manifest = {"task": "sequence-classification", "labels": ["negative", "neutral", "positive"],
                "base_model": "base", "config": {"data": {"max_length": max_length}}}
    (root / "toolchain.yaml").write_text(yaml.safe_dump(manifest))
    return RunInfo(root, manifest)


class Counting:
    """A stand-in teacher: the logits of text i are [len(text), i-th call, 0]; counts the texts it computed."""

    def __init__(self, texts):
        self.texts, self.computed = texts, []

    def __call__(self, indices):
        self.computed += [self.texts[i] for i in indices]
        return np.array([[len(self.texts[i]), 1.0, 0.0] for i in indices])


TEXTS = ["profit rose", "sales fell", "the board met", "profit rose"]


def test_a_second_pass_reads_every_text_from_the_cache(tmp_path):
    run, cache = fake_run(tmp_path / "teacher"), TeacherCache(tmp_path / "cache")
    first = Counting(TEXTS)
    logits, stats = cached_logits(run, TEXTS, first, cache)
    assert first.computed == ["profit rose", "sales fell", "the board met"]   # a repeated text computed once
    assert (stats.texts, stats.hits, stats.computed) == (4, 0, 3)
    np.testing.assert_array_equal(logits[0], logits[3])
    again = Counting(TEXTS)
    cached, stats = cached_logits(run, TEXTS, again, cache)
    assert again.computed == [] and (stats.hits, stats.computed) == (4, 0)
    np.testing.assert_array_equal(cached, logits)


def test_a_changed_text_is_computed_again_and_only_it(tmp_path):
    run, cache = fake_run(tmp_path / "teacher"), TeacherCache(tmp_path / "cache")
    cached_logits(run, TEXTS, Counting(TEXTS), cache)
    changed = ["profit rose", "sales fell sharply", "the board met", "profit rose"]
    counting = Counting(changed)
    logits, stats = cached_logits(run, changed, counting, cache)
    assert counting.computed == ["sales fell sharply"]
    assert (stats.hits, stats.computed) == (3, 1)
    assert logits[1, 0] == len("sales fell sharply")


@pytest.mark.parametrize("change", ["weights", "max_length", "labels"])
def test_another_teacher_never_reads_the_entries(tmp_path, change):
    run, cache = fake_run(tmp_path / "teacher"), TeacherCache(tmp_path / "cache")
    cached_logits(run, TEXTS, Counting(TEXTS), cache)
    before = teacher_fingerprint(run)[0]
    if change == "weights":          # the same run dir, trained again
        other = fake_run(tmp_path / "teacher", weights=b"weights-2")
    elif change == "max_length":
        other = fake_run(tmp_path / "teacher", max_length=64)
    else:
        other = RunInfo(run.path, {**run.manifest, "labels": ["positive", "neutral", "negative"]})
    assert teacher_fingerprint(other)[0] != before
    counting = Counting(TEXTS)
    _, stats = cached_logits(other, TEXTS, counting, cache)
    assert stats.hits == 0 and len(counting.computed) == 3


def test_a_broken_shard_is_computed_again(tmp_path, capsys):
    run, cache = fake_run(tmp_path / "teacher"), TeacherCache(tmp_path / "cache")
    cached_logits(run, TEXTS, Counting(TEXTS), cache)
    shard, = (tmp_path / "cache").rglob("logits-*.npz")
    shard.write_bytes(b"not an npz")
    counting = Counting(TEXTS)
    _, stats = cached_logits(run, TEXTS, counting, cache)
    assert stats.computed == 3 and "unreadable" in capsys.readouterr().out


def test_no_cache_computes_every_distinct_text(tmp_path):
    run = fake_run(tmp_path / "teacher")
    for _ in range(2):
        counting = Counting(TEXTS)
        _, stats = cached_logits(run, TEXTS, counting, None)
        assert stats.computed == 3
    assert not list(tmp_path.rglob("*.npz"))


def test_cache_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path))
    assert cache_dir("auto") == tmp_path / "teacher-logits"
    assert cache_dir("off") is None
    assert cache_dir(str(tmp_path / "x")) == tmp_path / "x"


def test_an_fp32_pass_never_reads_bf16_logits_but_a_bf16_pass_reads_fp32_ones(tmp_path):
    run, cache = fake_run(tmp_path / "teacher"), TeacherCache(tmp_path / "cache")
    assert teacher_fingerprint(run, "bf16")[0] != teacher_fingerprint(run)[0]
    cached_logits(run, TEXTS[:2], Counting(TEXTS[:2]), cache, "bf16")
    counting = Counting(TEXTS)
    _, stats = cached_logits(run, TEXTS, counting, cache)            # fp32: the bf16 entries are not read
    assert stats.hits == 0 and stats.computed == 3
    more = TEXTS + ["rates held"]
    counting = Counting(more)
    _, stats = cached_logits(run, more, counting, cache, "bf16")     # bf16: fp32 entries serve it
    assert counting.computed == ["rates held"] and stats.hits == 4
