"""Kubernetes manifests: the overlays render, validate against Kubernetes schemas and pass the policy.

Rendering uses deploy/render_manifests.py (no kubectl needed); where kubectl is installed, its
`kubectl kustomize` output must be the same objects.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.29.0", "1.33.0")
POD_LABELS = {"app.kubernetes.io/name": "toolchain", "app.kubernetes.io/component": "sentiment-service"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


renderer = _load("render_manifests", DEPLOY / "render_manifests.py")


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in renderer.render(DEPLOY / "overlays" / overlay)}


def pod_spec(objects) -> dict:
    return objects[("Deployment", "toolchain")]["spec"]["template"]["spec"]


def container(objects) -> dict:
    (only,) = pod_spec(objects)["containers"]
    return only


@pytest.fixture(params=OVERLAYS)
def overlay(request):
    return request.param, rendered(request.param)


def test_overlays_hold_the_expected_objects(overlay):
    name, objects = overlay
    assert set(objects) == {("ServiceAccount", "toolchain"), ("ConfigMap", "toolchain-config"),
                            ("Deployment", "toolchain"), ("Service", "toolchain"), ("Ingress", "toolchain"),
                            ("HorizontalPodAutoscaler", "toolchain"), ("PodDisruptionBudget", "toolchain"),
                            ("NetworkPolicy", "toolchain")}
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"toolchain"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: only the Python renderer is used")
@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu", "prometheus/operator"])
def test_python_renderer_matches_kubectl_kustomize(folder):
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out.stdout)}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in renderer.render(DEPLOY / folder)}
    assert ours == theirs


def test_renderer_refuses_what_it_does_not_cover(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(renderer.KustomizeError, match="unsupported kustomization keys \\['commonLabels'\\]"):
        renderer.render(tmp_path)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(overlay, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate "
                                              "(in the project's test extra)")
    for obj in overlay[1].values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_catches_a_typo():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = rendered("cpu")
    container(objects)["readinesProbe"] = container(objects).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(objects[("Deployment", "toolchain")], K8S_VERSIONS[0], strict=True)


def test_container_security_settings(overlay):
    objects = overlay[1]
    pod, ctr = pod_spec(objects), container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    writable = {m["mountPath"] for m in ctr["volumeMounts"] if not m.get("readOnly")}
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert writable == {"/tmp"} and env["BENTOML_HOME"].startswith("/tmp/") and env["HOME"] == "/tmp"


def test_probes_resources_and_draining(overlay):
    objects = overlay[1]
    pod, ctr = pod_spec(objects), container(objects)
    port_names = {p["name"] for p in ctr["ports"]}
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["startupProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ctr[probe]["httpGet"]["port"] in port_names
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(ctr["resources"][kind])
    config = objects[("ConfigMap", "toolchain-config")]["data"]
    pause = int(ctr["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= float(config["TOOLCHAIN_TIMEOUT_S"]) + pause
    assert "replicas" not in objects[("Deployment", "toolchain")]["spec"]    # the HPA owns the count


def test_image_is_pinned(overlay):
    image = container(overlay[1])["image"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image


def test_api_key_secret_is_referenced_never_committed(overlay):
    objects = overlay[1]
    assert not any(kind == "Secret" for kind, _ in objects)
    secret_volumes = [v for v in pod_spec(objects)["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in secret_volumes] == ["toolchain-api-keys"]
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == secret_volumes[0]["name"])
    assert env["TOOLCHAIN_API_KEYS_FILE"].startswith(mount["mountPath"] + "/") and mount["readOnly"]
    assert "TOOLCHAIN_API_KEYS" not in objects[("ConfigMap", "toolchain-config")]["data"]
    committed = [p for p in DEPLOY.rglob("*.y*ml") if re.search(r"^kind:\s*Secret\b", p.read_text(), re.M)]
    assert not committed


def test_configmap_holds_valid_service_settings(overlay):
    settings = pytest.importorskip("toolchain.serve.settings")
    data = overlay[1][("ConfigMap", "toolchain-config")]["data"]
    known = {name for name, _, _ in settings.settings_table()}
    assert set(data) <= known, f"unknown settings {sorted(set(data) - known)}"
    loaded = settings.load_settings(dict(data))
    assert loaded.auth is True
    assert loaded.threads == int(float(container(overlay[1])["resources"]["limits"]["cpu"]))


def test_selectors_and_ports_line_up(overlay):
    objects = overlay[1]
    deployment = objects[("Deployment", "toolchain")]
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert POD_LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = objects[("Service", "toolchain")]
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(objects)["ports"]}
    assert objects[("PodDisruptionBudget", "toolchain")]["spec"]["selector"]["matchLabels"] == POD_LABELS
    hpa = objects[("HorizontalPodAutoscaler", "toolchain")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "toolchain"}
    assert objects[("PodDisruptionBudget", "toolchain")]["spec"]["minAvailable"] < hpa["minReplicas"]
    backend = objects[("Ingress", "toolchain")]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "toolchain", "port": {"name": "http"}}


def test_network_policy_admits_only_ingress_and_prometheus(overlay):
    policy = overlay[1][("NetworkPolicy", "toolchain")]["spec"]
    assert policy["podSelector"]["matchLabels"] == POD_LABELS
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    (rule,) = policy["ingress"]
    peers = {(p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
              p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]) for p in rule["from"]}
    assert peers == {("ingress-nginx", "ingress-nginx"), ("monitoring", "prometheus")}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_gpu_overlay_requests_a_gpu_and_the_gpu_runtime():
    gpu, cpu = rendered("gpu"), rendered("cpu")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(container(cpu)["resources"])
    assert gpu[("ConfigMap", "toolchain-config")]["data"]["TOOLCHAIN_PROVIDER"] == "cuda"
    assert cpu[("ConfigMap", "toolchain-config")]["data"]["TOOLCHAIN_PROVIDER"] == "cpu"
    assert container(gpu)["image"].endswith("-gpu") and not container(cpu)["image"].endswith("-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(gpu)["tolerations"])


def test_service_monitor_scrapes_the_service():
    objects = {(o["kind"], o["metadata"]["name"]): o for o in renderer.render(DEPLOY / "prometheus" / "operator")}
    monitor = objects[("ServiceMonitor", "toolchain")]
    service = rendered("cpu")[("Service", "toolchain")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    # The operator names the job after the Service: the rules select that job.
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alert-settings.yaml").read_text())
    assert rules["job"] == service["metadata"]["name"]
    assert objects[("PrometheusRule", "toolchain")]["metadata"]["labels"]["release"] == \
        monitor["metadata"]["labels"]["release"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_plain_prometheus_config_is_valid(tmp_path):
    """promtool checks the config and its rule file. Debian's promtool is built without Kubernetes
    discovery, so the check runs on a copy whose discovery block is a static target."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == yaml.safe_load((DEPLOY / "prometheus" / "alert-settings.yaml").read_text())["job"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["toolchain"]
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["127.0.0.1:3000"]}]
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 22 rules found" in out.stdout


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "toolchain-sentiment.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_dashboard_covers_sentiment_volume_latency_batching_and_rejections():
    board = json.loads((DEPLOY / "grafana" / "toolchain-sentiment.json").read_text())
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in ("negative share by topic", "per second by topic", "negative share by source", "per second by source",
                  "latency", "batch size", "rejected"):
        assert topic in titles, topic
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "topic", "source"}
    repeated = [p for p in board["panels"] if p.get("repeat")]
    assert [p["repeat"] for p in repeated] == ["topic"] and "$topic" in repeated[0]["title"]
    assert all('topic=~"$topic"' in t["expr"] for t in repeated[0]["targets"])
    by_topic = next(p for p in board["panels"] if p["title"] == "Negative share by topic")
    assert all('topic!="none"' in t["expr"] for t in by_topic["targets"])   # models without a topic head
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    quantiles = {float(q) for e in dashboard_exprs() for q in re.findall(r"histogram_quantile\(([0-9.]+)", e)
                 if "toolchain_request_seconds" in e}
    assert quantiles == {0.5, 0.95, 0.99}


def test_dashboard_reads_only_contract_metrics_and_shipped_rules():
    contract = set(re.findall(r"^\| `(toolchain_[a-z_]+)`", (REPO / "docs" / "ARTIFACTS.md").read_text(), re.M))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "toolchain.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for expr in dashboard_exprs():
        for name in re.findall(r"(?<![:\w])(toolchain_[a-z_]+)\b", expr):
            assert name in contract or re.sub(r"_(bucket|sum|count)$", "", name) in contract, name
        for name in re.findall(r"\b(job(?:_topic|_source)?:[a-z_:0-9]+)", expr):
            assert name in recorded, name
