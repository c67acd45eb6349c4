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
        assert "SUCCESS: 17 rules found" in result.stdout


@needs_promtool
def test_alert_unit_tests_pass():
    """Each alert fires when it should; silent on normal traffic, low volume and a steadily negative topic."""
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_unit_tests_catch_a_broken_threshold(tmp_path):
    """The promtool tests are sensitive: with the volume minimum removed, the low-volume test fails."""
    settings = rr.load_settings(overrides={"surge_min_items": 0, "topic_min_items": 0})
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "toolchain.rules.yml").write_text(rr.plain_rule_file(settings))
    (tmp_path / "tests").mkdir()
    shutil.copy(PROM / "tests" / "alerts_test.yml", tmp_path / "tests")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "low volume cannot fire" in result.stdout + result.stderr


def test_surge_expression_uses_the_settings():
    settings = rr.AlertSettings(short_window="30s", baseline_window="10m", surge_factor=3.0, surge_floor=0.4,
                                surge_min_items=12, surge_for="15s", evaluation_interval="1s")
    groups = rr.rule_groups(settings)
    surge = [r for g in groups for r in g["rules"] if r.get("alert") == "NegativeSentimentSurge"]
    overall = next(r for r in surge if r["labels"]["scope"] == "overall")
    assert "job:toolchain_negative_share:ratio_rate30s" in overall["expr"]
    assert "clamp_min(job:toolchain_negative_share:ratio_rate10m * 3.0, 0.4)" in overall["expr"]
    assert "job:toolchain_predictions:rate30s * 30 >= 12" in overall["expr"]
    assert overall["for"] == "15s"
    assert all(g["interval"] == "1s" for g in groups)


@pytest.mark.parametrize("overrides, message", [
    ({"short_window": "5 minutes"}, "short_window must be a Prometheus duration"),
    ({"short_window": "2h"}, "must be shorter than baseline_window"),
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
