"""`toolchain predict` on a tiny export with a topic head: formats, carried columns, masking, bad rows, exactly once
across SIGKILLs, the same answers as a real server's /classify, the backfill trend, and the Ray engine."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from test_serve_support import PLAIN_KEY, Server, toolchain_env

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parent.parent
FAST = ["latency.rounds=3", "latency.warmup=1", "latency.batch_sizes=1,4", "rank_rounds=1"]
PHRASES = ["profit rose", "sales fell", "crude oil", "inflation data", "quarterly earnings", "the board met",
           "loss widened", "record earnings", "opec output", "jobs report"]


@pytest.fixture(scope="session")
def export_dir(tiny_bert, tiny_data, tiny_topic_data, tmp_path_factory) -> Path:
    """A tiny sentiment model with a topic head, exported fp32 + int8, serving fp32 (length-grouped calls)."""
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    root = tmp_path_factory.mktemp("predict-model")
    overrides = [f"model.base={tiny_bert}", f"output_dir={root / 'run'}", "train.epochs=4", "train.batch_size=16",
                 "train.eval_steps=40", "train.learning_rate=5e-3", "data.max_length=32",
                 "train.early_stopping_patience=0", "topic.main_repeat=2", "train.precision=fp32",
                 *(f"data.{s}={p}" for s, p in tiny_data.items()), *(f"topic.{s}={p}" for s, p in tiny_topic_data.items())]
    run = train(load_config("sentiment-full", overrides))
    return export(run, root / "export", load_export_config(None, ["variants=fp32,int8", "serve_variant=fp32", *FAST]))


def news(n: int, seed: int = 0) -> list[dict]:
    """Texts of varied lengths (some over the model's 32 tokens), a date over 12 days, a source and an id."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(PHRASES) for _ in range(1 + (i % 7) * (3 if i % 11 == 0 else 1)))
        rows.append({"id": f"n{i}", "text": f"{words} .", "date": f"2024-05-{1 + i % 12:02d}T09:30:00Z",
                     "source": rng.choice(["wire", "desk"])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def predict(*args, expect: int = 0) -> None:
    from toolchain import cli

    assert cli.main(["predict", *map(str, args), "--no-progress"]) == expect


def predict_process(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "toolchain.cli", "predict", *map(str, args), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def output_rows(output: Path) -> list[dict]:
    """Every output row, ordered by (file, row)."""
    table = pq.ParquetDataset(output / "shards").read()
    return sorted(table.to_pylist(), key=lambda r: (r["file"], r["row"]))


def bad_rows(output: Path) -> list[dict]:
    text = (output / "bad-rows.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------- formats, columns, masking


def test_jsonl_csv_with_bom_and_parquet_give_the_same_rows(export_dir, tmp_path):
    rows = news(40)
    rows[3]["text"] = 'quoted, "comma" and a\nsecond line of profit rose .'    # a CSV record over two lines
    write_jsonl(tmp_path / "news.jsonl", rows)
    with open(tmp_path / "news.csv", "w", encoding="utf-8-sig", newline="") as handle:   # BOM, as spreadsheets write
        writer = csv.DictWriter(handle, fieldnames=["id", "headline", "date", "source"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "headline": r["text"], "date": r["date"], "source": r["source"]} for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "news.parquet", row_group_size=9)
    results = {}
    for name, extra in (("news.jsonl", []), ("news.csv", ["--text-column", "headline"]), ("news.parquet", [])):
        out = tmp_path / f"out-{name}"
        predict(export_dir, "--input", tmp_path / name, "-o", out, "--keep", "date,source", "--shard-rows", 7,
                "--batch-size", 5, "--workers", 1, *extra)
        results[name] = output_rows(out)
        assert [r["row"] for r in results[name]] == list(range(40)) and not bad_rows(out)
        assert len(list((out / "shards").glob("*.parquet"))) == 6   # 40 rows in shards of 7
    reference = results["news.jsonl"]
    for name, got in results.items():
        assert [r["id"] for r in got] == [r["id"] for r in rows], name
        assert [(r["date"], r["source"]) for r in got] == [(r["date"], r["source"]) for r in rows], name
        assert [r["text"] for r in got] == [r["text"] for r in rows], name
        for a, b in zip(got, reference):
            assert (a["label"], a["topic"], a["truncated"]) == (b["label"], b["topic"], b["truncated"]), name
            assert a["score"] == pytest.approx(b["score"], abs=1e-6), name
    assert any(r["truncated"] for r in reference) and {r["topic"] for r in reference} <= {"Earnings", "Energy | Oil",
                                                                                          "Macro"}
    first = reference[0]
    assert set(first) == {"file", "row", "id", "text", "label", "score", "score_negative", "score_neutral",
                          "score_positive", "truncated", "topic", "topic_score", "date", "source"}
    assert first["score"] == first[f"score_{first['label']}"]
    assert sum(first[f"score_{c}"] for c in ("negative", "neutral", "positive")) == pytest.approx(1, abs=1e-6)


def test_texts_are_masked_unless_asked_and_carried_columns_stay_as_they_are(export_dir, tmp_path):
    rows = [{"id": "4111111111111111", "text": "profit rose, write to jane.doe@example.com or call +1 415 555 0123 .",
             "desk": "jane.doe@example.com", "n": 3, "flag": True, "nested": {"a": 1}}]
    write_jsonl(tmp_path / "pii.jsonl", rows)
    predict(export_dir, "--input", tmp_path / "pii.jsonl", "-o", tmp_path / "masked", "--keep", "desk,n,flag,nested,gone",
            "--workers", 1)
    masked = output_rows(tmp_path / "masked")[0]
    assert masked["text"] == "profit rose, write to [EMAIL] or call [PHONE] ."
    assert masked["id"] == "4111111111111111" and masked["desk"] == "jane.doe@example.com"   # keys and --keep: as is
    assert (masked["n"], masked["flag"], masked["nested"], masked["gone"]) == ("3", "true", '{"a": 1}', None)
    predict(export_dir, "--input", tmp_path / "pii.jsonl", "-o", tmp_path / "plain", "--no-mask", "--workers", 1)
    plain = output_rows(tmp_path / "plain")[0]
    assert plain["text"] == rows[0]["text"] and plain["label"] == masked["label"]   # scored on the text as it is
    predict(export_dir, "--input", tmp_path / "pii.jsonl", "-o", tmp_path / "none", "--no-text", "--workers", 1)
    assert "text" not in output_rows(tmp_path / "none")[0]


def test_bad_rows_are_reported_with_location_and_reason_and_the_run_goes_on(export_dir, tmp_path):
    good = news(6)
    lines = [json.dumps(good[0]).encode(), b"not json", b"[1, 2]", json.dumps({"id": "a"}).encode(),
             json.dumps({"text": 5}).encode(), json.dumps({"text": "  "}).encode(), b"",
             b'{"text": "caf\xff bytes"}', b'{"text": "lone \\ud800 surrogate"}', json.dumps(good[1]).encode(),
             b'{"text": "write to bob@example.com", "broken": }']
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out"
    predict(export_dir, "--input", tmp_path / "mixed.jsonl", "-o", output, "--shard-rows", 4, "--workers", 1)
    bad = bad_rows(output)
    assert [b["line"] for b in bad] == [2, 3, 4, 5, 6, 8, 9, 11]   # line 7 is blank: not a row
    assert [b["row"] for b in bad] == [1, 2, 3, 4, 5, 6, 7, 9]
    reasons = [b["reason"] for b in bad]
    for fragment, reason in zip(["not valid JSON", "expected a JSON object, got list", "no text", "must be a string, "
                                 "got int 5", "empty or whitespace only", "not valid UTF-8", "not valid Unicode",
                                 "not valid JSON"], reasons):
        assert fragment in reason, reasons
    assert bad[0]["location"] == f"{tmp_path / 'mixed.jsonl'}:2"
    assert [r["row"] for r in output_rows(output)] == [0, 8]
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["rows"], summary["scored"], summary["bad_rows"]) == (10, 2, 8)


def test_a_rerun_into_the_output_of_another_run_is_refused(export_dir, tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", news(5))
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "out", "--workers", 1)
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "out", "--workers", 1)   # resumes: all done
    assert "resuming" in capsys.readouterr().out
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "out", "--keep", "date", expect=2)
    assert "holds the predictions of another run (it differs in columns" in capsys.readouterr().err
    with open(tmp_path / "a.jsonl", "a", encoding="utf-8") as handle:   # an input that grew: its shards would move
        handle.write(json.dumps(news(1)[0]) + "\n")
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "out", expect=2)
    assert "it differs in inputs" in capsys.readouterr().err
    predict(export_dir, "--input", tmp_path / "none-*.jsonl", "-o", tmp_path / "x", expect=2)
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "y", "--keep", "label", expect=2)
    assert "--keep label" in capsys.readouterr().err


# --------------------------------------------------------------------------- exactly once


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def shard_count(output: Path) -> int:
    return len(list((output / "shards").glob("*.parquet")))


def test_every_row_exactly_once_after_sigkills_at_random_moments(export_dir, tmp_path):
    rows = news(8000, seed=1)
    rows[17]["text"] = ""                       # two bad rows, which must be reported once each too
    rows[5222]["text"] = None
    write_jsonl(tmp_path / "part-1.jsonl", rows[:4800])
    write_jsonl(tmp_path / "part-2.jsonl", rows[4800:])
    output, rng = tmp_path / "out", random.Random(7)
    args = [export_dir, "--input", str(tmp_path / "part-*.jsonl"), "-o", output, "--shard-rows", 100,
            "--batch-size", 50, "--workers", 2]
    for _ in range(3):   # each kill once the run wrote a shard of its own, at a random moment after that
        before = shard_count(output)
        process = predict_process(*args)
        deadline = time.time() + 120
        while shard_count(output) == before and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.05))   # a fast machine writes the 80 small shards within half a second
        workers = children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.time() + 10   # the workers die with it (PR_SET_PDEATHSIG): no orphan writes shards
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
    finished_before = shard_count(output)
    print(f"3 SIGKILLs; {finished_before} of 80 shards written before the final run")
    final = predict_process(*args)
    log = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, log
    assert 0 < finished_before < 80 and "resuming" in log, (finished_before, log)
    keys = Counter((Path(r["file"]).name, r["row"]) for r in output_rows(output))
    keys.update((Path(b["file"]).name, b["row"]) for b in bad_rows(output))
    expected = Counter([("part-1.jsonl", i) for i in range(4800)] + [("part-2.jsonl", i) for i in range(3200)])
    assert keys == expected   # every row once: scored or reported bad
    assert sorted(b["row"] for b in bad_rows(output)) == [17, 422]
    assert not [p for p in output.rglob(".*") if p.is_file()]   # no temporary file left
    summary = json.loads((output / "summary.json").read_text())
    assert summary["scored"] == 7998 and summary["bad_rows"] == 2
    assert summary["this_run"]["skipped_shards"] == finished_before


# --------------------------------------------------------------------------- the same answers as /classify


@pytest.mark.server
def test_rows_equal_a_real_servers_classify_answers(export_dir, tmp_path):
    import httpx

    rows = news(60, seed=3)
    write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out"
    predict(export_dir, "--input", tmp_path / "in.jsonl", "-o", output, "--shard-rows", 25, "--workers", 1,
            "--no-mask")
    env = toolchain_env(tmp_path / "bentoml", TOOLCHAIN_EXPORT_DIR=str(export_dir), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_API_KEYS=PLAIN_KEY)
    server = Server("toolchain.serve.service:ToolchainService", env, tmp_path / "server.log").wait_ready()
    try:
        answers = []
        for start in range(0, len(rows), 16):
            response = httpx.post(server.url + "/classify", json={"texts": [r["text"] for r in rows[start:start + 16]]},
                                  headers={"Authorization": f"Bearer {PLAIN_KEY}"}, timeout=30)
            assert response.status_code == 200, response.text
            answers += response.json()
    finally:
        server.stop()
    assert len(output_rows(output)) == len(answers) == len(rows)
    for row, answer in zip(output_rows(output), answers):
        assert (row["label"], row["truncated"], row["topic"]) == (answer["label"], answer["truncated"],
                                                                  answer["topic"]["label"]), row["text"]
        assert row["score"] == pytest.approx(answer["score"], abs=1e-6)
        assert row["topic_score"] == pytest.approx(answer["topic"]["score"], abs=1e-6)
        for label, score in answer["scores"].items():
            assert row[f"score_{label}"] == pytest.approx(score, abs=1e-6)


def tiny_export(preset: str, data: dict, tiny_bert: Path, root: Path) -> Path:
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    overrides = [f"model.base={tiny_bert}", f"output_dir={root / 'run'}", "train.epochs=3", "train.batch_size=16",
                 "train.eval_steps=40", "train.learning_rate=5e-3", "data.max_length=32", "train.precision=fp32",
                 "train.early_stopping_patience=0", *(f"data.{s}={p}" for s, p in data.items())]
    return export(train(load_config(preset, overrides)), root / "export", load_export_config(None, ["variants=fp32",
                                                                                                    *FAST]))


@pytest.fixture(scope="session")
def pair_exports(tiny_bert, tiny_data, tiny_topic_data, tmp_path_factory) -> tuple[Path, Path]:
    """Single-task sentiment and topic exports: the two models of a two-model Bento."""
    return (tiny_export("sentiment-full", tiny_data, tiny_bert, tmp_path_factory.mktemp("pair-sentiment")),
            tiny_export("topic-full", tiny_topic_data, tiny_bert, tmp_path_factory.mktemp("pair-topic")))


BENTO_SCRIPT = """
import sys
from pathlib import Path
import toolchain.build as build

main, variant = build.register_model(Path(sys.argv[1]), None, allow_unpromotable=True)
topic = build.register_model(Path(sys.argv[2]), None, allow_unpromotable=True)
print("bento:", build.build_bento(main, variant, topic=topic).tag)
"""


def test_a_two_model_bento_scores_sentiment_and_topic_as_the_service_does(pair_exports, tmp_path):
    """BENTO_TAG resolves through the BentoML store to both models; its rows equal the export dirs' with
    --topic-export-dir and the service's own answer (toolchain.serve.classify on a TopicPair)."""
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import OnnxModel, TopicPair
    from toolchain.serve import classify as route

    sentiment, topic = pair_exports
    env = toolchain_env(tmp_path / "bentoml")
    built = subprocess.run([sys.executable, "-c", BENTO_SCRIPT, str(sentiment), str(topic)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.split("bento:")[-1].strip()
    rows = news(50, seed=6)
    write_jsonl(tmp_path / "in.jsonl", rows)
    scored = subprocess.run([sys.executable, "-m", "toolchain.cli", "predict", tag, "--input", str(tmp_path / "in.jsonl"),
                             "-o", str(tmp_path / "bento"), "--no-progress", "--workers", "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr[-3000:]
    predict(sentiment, "--topic-export-dir", topic, "--input", tmp_path / "in.jsonl", "-o", tmp_path / "dirs",
            "--workers", 1)
    pair = TopicPair(OnnxModel(load_export(sentiment), "fp32", provider="cpu"),
                     OnnxModel(load_export(topic), "fp32", provider="cpu"))
    texts = [r["text"] for r in rows]
    output = route.infer(pair, texts)
    answers = route.results(texts, output.logits, output.encodings, pair.labels, output.truncated)
    from_bento, from_dirs = output_rows(tmp_path / "bento"), output_rows(tmp_path / "dirs")
    assert len(from_bento) == len(from_dirs) == len(answers) == 50
    for a, b, answer in zip(from_bento, from_dirs, answers):
        assert (a["label"], a["topic"]) == (b["label"], b["topic"]) == (answer.label, answer.topic.label)
        assert a["score"] == pytest.approx(answer.score, abs=1e-6) and b["score"] == pytest.approx(answer.score, abs=1e-6)
        assert a["topic_score"] == pytest.approx(answer.topic.score, abs=1e-6)
    model = json.loads((tmp_path / "bento" / "predict.json").read_text())["model"]
    assert set(model) == {"main", "topic"} and model["topic"]["variant"] == "fp32"


def test_scores_give_the_teachers_tempered_probabilities(export_dir, tmp_path):
    """A distillation teacher's softmax(z / T) from the output alone: softmax(log(score) * T_cal / T), with the
    calibration temperature T_cal that predict.json records."""
    from toolchain.core.artifacts import load_export
    from toolchain.core.probability import softmax
    from toolchain.inference.runtime import OnnxModel
    from toolchain.tasks.joint import heads_of

    rows = news(12, seed=5)
    write_jsonl(tmp_path / "in.jsonl", rows)
    predict(export_dir, "--input", tmp_path / "in.jsonl", "-o", tmp_path / "out", "--workers", 1)
    recorded = json.loads((tmp_path / "out" / "predict.json").read_text())["model"]["main"]
    t_cal, classes = recorded["calibration"]["main"], ["negative", "neutral", "positive"]
    model = OnnxModel(load_export(export_dir), "fp32", provider="cpu")
    model.scale = None   # the raw logits
    raw = heads_of(model.labels)[0].columns(np.stack(model.infer([r["text"] for r in rows]).logits))
    scores = np.array([[r[f"score_{c}"] for c in classes] for r in output_rows(tmp_path / "out")])
    for temperature in (1.0, 2.0):
        assert np.allclose(softmax(np.log(scores) * t_cal, temperature), softmax(raw, temperature), atol=1e-5)


# --------------------------------------------------------------------------- the backfill trend


def test_surge_days_follow_the_alert_rule_on_daily_counts():
    from datetime import date

    from toolchain.predict.trend import OVERALL, SurgeRule, trend_rows

    days = [date(2024, 5, d) for d in range(1, 11)]
    counts = {(OVERALL, d): [40, 4] for d in days}
    counts.update({("Macro", d): [20, 2] for d in days})
    counts[("Macro", days[8])] = [20, 14]      # 70% on day 9: over max(baseline x 2, 0.3)
    counts[("Macro", days[5])] = [5, 5]        # 100% but under the minimum of items
    rules = {"overall": SurgeRule(2.0, 0.3, 30, 12), "topic": SurgeRule(2.0, 0.3, 20, 6)}
    rows = {(r["scope"], r["day"]): r for r in trend_rows(counts, rules)}
    assert [key for key, r in rows.items() if r["surge"]] == [("Macro", "2024-05-09")]
    day9 = rows[("Macro", "2024-05-09")]
    baseline = (2 * 2 + 5 + 2 + 2 + 14) / (20 * 4 + 5 + 20)   # days 4-9: six days, day 9 included
    assert day9["baseline_share"] == pytest.approx(baseline) and day9["threshold"] == pytest.approx(max(2 * baseline,
                                                                                                       0.3))
    assert not rows[("Macro", "2024-05-06")]["surge"] and rows[("Macro", "2024-05-06")]["negative_share"] == 1.0


def test_a_sparse_archives_baseline_is_its_latest_days_with_items():
    """Meetings six weeks apart: a meeting is compared with the meetings before it, not with the empty days."""
    from datetime import date, timedelta

    from toolchain.predict.trend import OVERALL, SurgeRule, trend_rows

    meetings = [date(2008, 1, 1) + timedelta(days=45 * k) for k in range(8)]
    counts = {(OVERALL, d): [100, 10] for d in meetings}
    counts[(OVERALL, meetings[6])] = [100, 40]        # 40% against about 14% over the 6 meetings before
    rules = {"overall": SurgeRule(2.0, 0.3, 30, 12), "topic": SurgeRule(2.0, 0.3, 20, 6)}
    rows = {r["day"]: r for r in trend_rows(counts, rules)}
    assert [day for day, r in rows.items() if r["surge"]] == [meetings[6].isoformat()]
    assert rows[meetings[6].isoformat()]["baseline_share"] == pytest.approx((6 * 10 + 40) / 700)
    empty = rows[(meetings[6] + timedelta(days=1)).isoformat()]
    assert empty["items"] == 0 and empty["baseline_share"] == pytest.approx((6 * 10 + 40) / 700)


def test_trend_writes_the_daily_negative_share_per_topic(export_dir, tmp_path, capsys):
    rows = news(240, seed=2)
    rows[5]["date"] = "not a date"
    rows[6]["date"] = str(1714608000)          # Unix seconds: 2024-05-02
    write_jsonl(tmp_path / "dated.jsonl", rows)
    output = tmp_path / "out"
    predict(export_dir, "--input", tmp_path / "dated.jsonl", "-o", output, "--trend", "date", "--workers", 1,
            "--shard-rows", 100)
    assert "trend: 12 day(s) of 'date', 1 row(s) without a readable date" in capsys.readouterr().out
    with open(output / "trend.csv", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert (output / "trend.png").stat().st_size > 10_000
    scored = [r for r in output_rows(output) if r["date"] != "not a date"]
    for scope in ["(all)", *sorted({r["topic"] for r in scored})]:
        mine = [r for r in scored if scope == "(all)" or r["topic"] == scope]
        day = "2024-05-02"
        items = [r for r in mine if r["date"].startswith(day) or r["date"] == "1714608000"]
        got = next(t for t in table if t["scope"] == scope and t["day"] == day)
        assert int(got["items"]) == len(items)
        assert int(got["negative"]) == sum(r["label"] == "negative" for r in items)
    assert {t["day"] for t in table} == {f"2024-05-{d:02d}" for d in range(1, 13)}


# --------------------------------------------------------------------------- the Ray engine


def test_ray_engine_without_ray_says_what_to_install(export_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    write_jsonl(tmp_path / "a.jsonl", news(3))
    predict(export_dir, "--input", tmp_path / "a.jsonl", "-o", tmp_path / "out", "--engine", "ray", expect=2)
    err = capsys.readouterr().err
    assert "pip install" in err and "ray" in err and not (tmp_path / "out").exists()


def test_ray_engine_writes_the_same_rows_as_local(export_dir, tmp_path):
    pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'toolchain[ray]')")
    rows = news(300, seed=4)
    rows[10]["text"] = 7
    write_jsonl(tmp_path / "a.jsonl", rows)
    common = [export_dir, "--input", tmp_path / "a.jsonl", "--shard-rows", 60, "--keep", "date"]
    predict(*common, "-o", tmp_path / "local", "--workers", 1)
    process = predict_process(*common, "-o", tmp_path / "ray", "--engine", "ray", "--workers", 2)
    log = process.communicate(timeout=400)[0].decode()
    assert process.returncode == 0, log[-3000:]
    local, ray = output_rows(tmp_path / "local"), output_rows(tmp_path / "ray")
    assert len(ray) == len(local) == 299 and bad_rows(tmp_path / "ray") == bad_rows(tmp_path / "local")
    for a, b in zip(ray, local):
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
            {k: v for k, v in b.items() if not isinstance(v, float)}
        assert [v for v in a.values() if isinstance(v, float)] == \
            pytest.approx([v for v in b.values() if isinstance(v, float)], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "ray" / "shards").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "shards").iterdir())
