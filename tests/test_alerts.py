"""Alerting rules: generated from one settings file, valid for promtool, and unit-tested with promtool."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                    "prometheus; CI's .ci/run installs it)")


def load_render_rules():
    spec = importlib.util.spec_from_file_location("render_rules", PROM / "render_rules.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_rules"] = module
    spec.loader.exec_module(module)
    return module


rr = load_render_rules()
# Recording: items and negative share over two windows for three scopes (overall, predicted topic,
# source) = 12, plus p95 latency and error ratio; alerts: the surge per scope (3) and 5 service alerts.
# The canary group (tests/test_deploy.py tests it): per track requests, 5xx share, p95, items and negative share,
# and its 3 alerts.
CANARY_RULE_COUNT = 5 + 3
# The drift group: predictions, label shares, their reference, label distance, mean confidence, low-confidence
# and unseen-token shares over drift_window, and one alert per signal (4).
DRIFT_RULE_COUNT = 7 + 4
RULE_COUNT = 12 + 2 + 3 + 5 + CANARY_RULE_COUNT + DRIFT_RULE_COUNT


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_committed_rule_files_match_the_settings():
    result = subprocess.run([sys.executable, str(PROM / "render_rules.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plain_rule_file_and_prometheus_rule_hold_the_same_groups():
    plain = yaml.safe_load((PROM / "rules" / "toolchain.rules.yml").read_text())
    operator = yaml.safe_load((PROM / "operator" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == plain["groups"]
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"] if "alert" in r}
    assert {"NegativeSentimentSurge", "SentimentServiceHighLatency", "SentimentServiceErrors",
            "SentimentModelNotReady", "SentimentServiceTargetDown"} <= alerts


@needs_promtool
def test_promtool_accepts_both_rule_files(tmp_path):
    spec = yaml.safe_load((PROM / "operator" / "prometheusrule.yaml").read_text())["spec"]
    extracted = tmp_path / "from-operator.yml"
    extracted.write_text(yaml.safe_dump(spec))
    for path in (PROM / "rules" / "toolchain.rules.yml", extracted):
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {RULE_COUNT} rules found" in result.stdout


@needs_promtool
def test_alert_unit_tests_pass():
    """Each alert fires when it should (overall, per source, per predicted topic: an Earnings burst fires
    Earnings only); silent on ordinary mixed news, low volume and a steadily negative topic."""
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def promtool_tests_with(tmp_path: Path, overrides: dict) -> str:
    """The shipped promtool tests run against rules rendered with ``overrides``: their output."""
    settings = rr.load_settings(overrides=overrides)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "toolchain.rules.yml").write_text(rr.plain_rule_file(settings))
    (tmp_path / "tests").mkdir()
    shutil.copy(PROM / "tests" / "alerts_test.yml", tmp_path / "tests")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert result.returncode != 0, f"the promtool tests pass with {overrides}: they do not test it"
    return result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("overrides, failing", [
    ({"surge_min_items": 0, "source_min_items": 0}, "low volume cannot fire"),
    ({"topic_min_items": 0}, "topic below the volume minimum cannot fire"),
    ({"surge_floor": 0.1, "surge_factor": 1.2}, "ordinary mixed news fires nothing"),
])
def test_unit_tests_catch_a_broken_threshold(tmp_path, overrides, failing):
    """The promtool tests are sensitive: with a volume minimum removed, or a bar that ordinary news
    crosses, the test guarding it fails."""
    assert failing in promtool_tests_with(tmp_path, overrides)


def test_topic_rules_skip_models_without_a_topic_head_and_source_rules_are_by_caller_field():
    groups = rr.rule_groups(rr.load_settings())
    records = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    topic = [e for name, e in records.items() if name.startswith("job_topic:")]
    source = [e for name, e in records.items() if name.startswith("job_source:")]
    assert len(topic) == len(source) == 4
    assert all('topic!="none"' in e and "sum by (job, topic)" in e for e in topic)
    assert all("sum by (job, source)" in e and "topic" not in e for e in source)
    assert {"job_topic:toolchain_negative_share:ratio_rate10m", "job_topic:toolchain_negative_share:ratio_rate1h",
            "job_source:toolchain_negative_share:ratio_rate5m"} <= set(records)
    surge = {r["labels"]["scope"]: r for g in groups for r in g["rules"] if r.get("alert") == "NegativeSentimentSurge"}
    assert set(surge) == {"overall", "topic", "source"}
    assert '"{{ $labels.topic }}"' in surge["topic"]["annotations"]["summary"]
    assert '"{{ $labels.source }}"' in surge["source"]["annotations"]["summary"]
    assert "job_topic:toolchain_predictions:rate10m * 600 >= 20" in surge["topic"]["expr"]
    assert "and on (job, topic)" in surge["topic"]["expr"]
    assert "job_source:toolchain_predictions:rate5m * 300 >= 20" in surge["source"]["expr"]


def test_surge_expression_uses_the_settings():
    settings = rr.AlertSettings(short_window="30s", baseline_window="10m", topic_window="2m", surge_factor=3.0,
                                surge_floor=0.4, surge_min_items=12, topic_min_items=7, source_min_items=5,
                                surge_for="15s", evaluation_interval="1s")
    groups = rr.rule_groups(settings)
    surge = [r for g in groups for r in g["rules"] if r.get("alert") == "NegativeSentimentSurge"]
    overall = next(r for r in surge if r["labels"]["scope"] == "overall")
    assert "job:toolchain_negative_share:ratio_rate30s" in overall["expr"]
    assert "clamp_min(job:toolchain_negative_share:ratio_rate10m * 3.0, 0.4)" in overall["expr"]
    assert "job:toolchain_predictions:rate30s * 30 >= 12" in overall["expr"]
    assert overall["for"] == "15s"
    topic = next(r for r in surge if r["labels"]["scope"] == "topic")
    assert topic["expr"].startswith("job_topic:toolchain_negative_share:ratio_rate2m\n"
                                    "  > clamp_min(job_topic:toolchain_negative_share:ratio_rate10m * 3.0, 0.4)")
    assert "job_topic:toolchain_predictions:rate2m * 120 >= 7" in topic["expr"] and topic["for"] == "15s"
    source = next(r for r in surge if r["labels"]["scope"] == "source")
    assert "job_source:toolchain_predictions:rate30s * 30 >= 5" in source["expr"]
    assert all(g["interval"] == "1s" for g in groups)


@pytest.mark.parametrize("overrides, message", [
    ({"short_window": "5 minutes"}, "short_window must be a Prometheus duration"),
    ({"short_window": "2h"}, "must be shorter than baseline_window"),
    ({"topic_window": "2h"}, "topic_window '2h' must be shorter than baseline_window '1h'"),
    ({"topic_window": 10}, "topic_window must be a Prometheus duration"),
    ({"topic_min_items": -1}, "topic_min_items must be a number of items >= 0, got -1"),
    ({"source_min_items": "many"}, "source_min_items must be a number of items >= 0, got 'many'"),
    ({"surge_floor": 1.5}, "surge_floor must be a share"),
    ({"surge_factor": 0}, "surge_factor must be > 0"),
    ({"surge_facter": 2}, "unknown alert setting(s) ['surge_facter']"),
])
def test_bad_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError) as info:
        rr.load_settings(overrides=overrides)
    assert message in str(info.value)


def test_every_setting_is_in_the_settings_file_and_documented():
    names = [f.name for f in dataclasses.fields(rr.AlertSettings)]
    in_file = yaml.safe_load(rr.SETTINGS_FILE.read_text())
    assert set(in_file) == set(names)
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    undocumented = [n for n in names if f"`{n}`" not in guide]
    assert not undocumented, f"docs/DEPLOY.md does not describe {undocumented}"


def contract_metrics() -> set[str]:
    return set(re.findall(r"^\| `(toolchain_[a-z_]+)`", (REPO / "docs" / "ARTIFACTS.md").read_text(), re.M))


def unknown_metrics(text: str, contract: set[str]) -> set[str]:
    """Service metric names in ``text`` that the contract lacks (histogram suffixes allowed)."""
    used = set(re.findall(r"(?<![:\w])(toolchain_[a-z_]+)\b", text))   # not recording-rule names
    return {m for m in used if m not in contract and re.sub(r"_(bucket|sum|count)$", "", m) not in contract}


def test_rules_use_only_contract_metrics():
    """Every service metric the rules read is in docs/ARTIFACTS.md's metric table."""
    contract = contract_metrics()
    assert {"toolchain_predictions_total", "toolchain_request_seconds", "toolchain_model_ready"} <= contract
    text = (PROM / "rules" / "toolchain.rules.yml").read_text()
    assert not unknown_metrics(text, contract)
    assert unknown_metrics("toolchain_prediction_total", contract) == {"toolchain_prediction_total"}


def test_dashboard_surge_bars_use_the_shipped_settings():
    """The dashboard draws the bars the alerts use: same windows, factor, floor and topic volume minimum."""
    import json

    settings = rr.load_settings()
    board = json.loads((REPO / "deploy" / "grafana" / "toolchain-sentiment.json").read_text())
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"] if p.get("targets")}
    bar = f"* {settings.surge_factor:g}, {settings.surge_floor:g})"
    overall = " ".join(exprs["Negative share vs the surge bar (all news)"])
    assert f"job:toolchain_negative_share:ratio_rate{settings.short_window}" in overall
    assert f"clamp_min(job:toolchain_negative_share:ratio_rate{settings.baseline_window}" in overall and bar in overall
    topic = " ".join(exprs["Negative share vs the surge bar: $topic"])
    assert f"job_topic:toolchain_negative_share:ratio_rate{settings.topic_window}" in topic
    assert f"clamp_min(job_topic:toolchain_negative_share:ratio_rate{settings.baseline_window}" in topic and bar in topic
    assert f"job_topic:toolchain_predictions:rate{settings.topic_window}" in topic
    assert f"* {rr.seconds(settings.topic_window):g}" in topic


# --------------------------------------------------------------------------- drift (toolchain.inference.drift)

@needs_promtool
def test_drift_unit_tests_pass():
    """Sustained drift of each signal fires its own SentimentModelDrift; in-domain traffic, a short burst, a
    drift held under drift_for, low volume and a model without a reference fire nothing."""
    result = promtool("test", "rules", "drift_test.yml", cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def drift_tests_with(tmp_path: Path, overrides: dict) -> str:
    """The shipped drift promtool tests run against rules rendered with ``overrides``: their output."""
    settings = rr.load_settings(overrides=overrides)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "toolchain.rules.yml").write_text(rr.plain_rule_file(settings))
    (tmp_path / "tests").mkdir()
    shutil.copy(PROM / "tests" / "drift_test.yml", tmp_path / "tests")
    result = promtool("test", "rules", "drift_test.yml", cwd=tmp_path / "tests")
    assert result.returncode != 0, f"the drift promtool tests pass with {overrides}: they do not test it"
    return result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("overrides, failing", [
    ({"drift_label_distance": 0.01}, "in-domain traffic fires nothing"),
    ({"drift_confidence_drop": 0.01}, "in-domain traffic fires nothing"),
    ({"drift_low_confidence_margin": 0.01}, "in-domain traffic fires nothing"),
    ({"drift_unseen_token_margin": 0.001}, "in-domain traffic fires nothing"),
    ({"drift_unseen_token_margin": 0.3}, "inputs from a new domain fire unseen_tokens"),
    ({"drift_min_items": 0}, "low volume cannot fire"),
    ({"drift_for": "15m"}, "a drift held under drift_for cannot fire"),
    ({"drift_window": "10m", "drift_for": "5m"}, "a short burst of foreign text cannot fire"),
])
def test_drift_unit_tests_catch_a_broken_threshold(tmp_path, overrides, failing):
    """Each drift setting is guarded: a margin that in-domain traffic passes, one a new domain never reaches,
    no volume minimum, a shorter hold or window each make the promtool test guarding it fail."""
    assert failing in drift_tests_with(tmp_path, overrides)


def test_drift_rules_compare_live_signals_with_the_reference():
    settings = rr.AlertSettings(drift_window="2h", drift_for="45m", drift_min_items=50, drift_label_distance=0.3,
                                drift_confidence_drop=0.2, drift_low_confidence_margin=0.1,
                                drift_unseen_token_margin=0.07)
    groups = {g["name"]: g["rules"] for g in rr.rule_groups(settings)}
    records = {r["record"]: r["expr"] for r in groups["toolchain.drift"] if "record" in r}
    assert "toolchain_drift_tokens_total" in records["job:toolchain_unseen_tokens:ratio_rate2h"]
    assert "or 0 * job_label:toolchain_reference_label_share:max" in records["job:toolchain_label_drift:distance_rate2h"]
    alerts = {r["labels"]["signal"]: r for r in groups["toolchain.drift"] if r.get("alert") == "SentimentModelDrift"}
    assert set(alerts) == {"label_distribution", "mean_confidence", "low_confidence", "unseen_tokens"}
    assert all(a["for"] == "45m" and "job:toolchain_drift_predictions:rate2h * 7200 >= 50" in a["expr"]
               for a in alerts.values())
    assert "distance_rate2h > 0.3" in alerts["label_distribution"]["expr"]
    assert "toolchain_reference_confidence_mean" in alerts["mean_confidence"]["expr"] and \
        ") - 0.2)" in alerts["mean_confidence"]["expr"] and "< on (job)" in alerts["mean_confidence"]["expr"]
    assert ") + 0.1)" in alerts["low_confidence"]["expr"]
    assert "toolchain_reference_unseen_token_share" in alerts["unseen_tokens"]["expr"] and \
        ") + 0.07)" in alerts["unseen_tokens"]["expr"]


@pytest.mark.parametrize("overrides, message", [
    ({"drift_window": "an hour"}, "drift_window must be a Prometheus duration"),
    ({"drift_label_distance": 0}, "drift_label_distance must be a distance in (0, 1], got 0"),
    ({"drift_unseen_token_margin": 1.5}, "drift_unseen_token_margin must be a share in [0, 1), got 1.5"),
    ({"drift_min_items": True}, "drift_min_items must be a number of items >= 0, got True"),
])
def test_bad_drift_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError) as info:
        rr.load_settings(overrides=overrides)
    assert message in str(info.value)
