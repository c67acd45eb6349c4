"""Kubernetes manifests: the overlays render, validate against Kubernetes schemas and pass the policy.

Rendering uses deploy/render_manifests.py (no kubectl needed); where kubectl is installed, its
`kubectl kustomize` output must be the same objects. Every policy check runs on every Deployment of
every overlay (the canary overlay has two: the stable track and the canary).
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
OVERLAYS = ("cpu", "gpu", "canary")
K8S_VERSIONS = ("1.29.0", "1.33.0")
# What the Service and the NetworkPolicy select (every track); each Deployment selects one track.
POD_LABELS = {"app.kubernetes.io/name": "toolchain", "app.kubernetes.io/component": "sentiment-service"}
STABLE_LABELS = {**POD_LABELS, "track": "stable"}
CANARY_LABELS = {**POD_LABELS, "track": "canary"}
VERSION = "app.kubernetes.io/version"
BASE_OBJECTS = {("ServiceAccount", "toolchain"), ("ConfigMap", "toolchain-config"), ("Deployment", "toolchain"),
                ("Service", "toolchain"), ("Ingress", "toolchain"), ("HorizontalPodAutoscaler", "toolchain"),
                ("PodDisruptionBudget", "toolchain"), ("NetworkPolicy", "toolchain")}
CANARY_OBJECTS = {("Deployment", "toolchain-canary"), ("PodDisruptionBudget", "toolchain-canary")}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


renderer = _load("render_manifests", DEPLOY / "render_manifests.py")
rule_renderer = _load("render_rules_of_deploy_tests", DEPLOY / "prometheus" / "render_rules.py")


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in renderer.render(DEPLOY / "overlays" / overlay)}


def pod_spec(objects, name: str = "toolchain") -> dict:
    return objects[("Deployment", name)]["spec"]["template"]["spec"]


def container(objects, name: str = "toolchain") -> dict:
    (only,) = pod_spec(objects, name)["containers"]
    return only


def deployments(objects) -> list[str]:
    return sorted(name for kind, name in objects if kind == "Deployment")


def pod_labels(objects, name: str) -> dict:
    return objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def image_tag(objects, name: str) -> str:
    return container(objects, name)["image"].rsplit(":", 1)[1]


# (overlay, Deployment) pairs: the stable Deployment of every overlay, and the canary's.
WORKLOADS = [(o, name) for o in OVERLAYS for name in deployments(rendered(o))]


@pytest.fixture(params=OVERLAYS)
def overlay(request):
    return request.param, rendered(request.param)


def test_overlays_hold_the_expected_objects(overlay):
    name, objects = overlay
    assert set(objects) == (BASE_OBJECTS | CANARY_OBJECTS if name == "canary" else BASE_OBJECTS)
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"toolchain"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: only the Python renderer is used")
@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu", "overlays/canary", "overlays/canary/track",
                                    "prometheus/operator"])
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


def test_renderer_suffixes_names_but_refuses_references_it_would_have_to_rewrite(tmp_path):
    """kustomize renames a suffixed ConfigMap in the Deployments that use it; this renderer does not, so
    it refuses that case instead of rendering a Deployment that names a ConfigMap that is not there."""
    base = yaml.safe_load((DEPLOY / "base" / "workload" / "deployment.yaml").read_text())
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "kustomization.yaml").write_text("resources: [deployment.yaml]\nnameSuffix: -x\n")
    (deployment,) = renderer.render(tmp_path)
    assert deployment["metadata"]["name"] == "toolchain-x"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "toolchain"   # not renamed here
    (tmp_path / "configmap.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                                             "metadata": {"name": "toolchain-config"}}))
    (tmp_path / "kustomization.yaml").write_text("resources: [deployment.yaml, configmap.yaml]\nnameSuffix: -x\n")
    with pytest.raises(renderer.KustomizeError, match="renames ConfigMap 'toolchain-config'"):
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


@pytest.mark.parametrize("overlay_name, deployment", WORKLOADS)
def test_container_security_settings(overlay_name, deployment):
    objects = rendered(overlay_name)
    pod, ctr = pod_spec(objects, deployment), container(objects, deployment)
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


@pytest.mark.parametrize("overlay_name, deployment", WORKLOADS)
def test_probes_resources_and_draining(overlay_name, deployment):
    objects = rendered(overlay_name)
    pod, ctr = pod_spec(objects, deployment), container(objects, deployment)
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
    for name in deployments(overlay[1]):
        image = container(overlay[1], name)["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image


def test_api_key_secret_is_referenced_never_committed(overlay):
    objects = overlay[1]
    assert not any(kind == "Secret" for kind, _ in objects)
    for name in deployments(objects):
        secret_volumes = [v for v in pod_spec(objects, name)["volumes"] if "secret" in v]
        assert [v["secret"]["secretName"] for v in secret_volumes] == ["toolchain-api-keys"]
        env = {e["name"]: e.get("value") for e in container(objects, name)["env"]}
        mount = next(m for m in container(objects, name)["volumeMounts"] if m["name"] == secret_volumes[0]["name"])
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
    for name in deployments(overlay[1]):     # every track reads the one ConfigMap
        assert loaded.threads == int(float(container(overlay[1], name)["resources"]["limits"]["cpu"]))


def test_selectors_and_ports_line_up(overlay):
    objects = overlay[1]
    deployment = objects[("Deployment", "toolchain")]
    assert deployment["spec"]["selector"]["matchLabels"] == STABLE_LABELS
    assert STABLE_LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = objects[("Service", "toolchain")]
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(objects)["ports"]}
    assert objects[("PodDisruptionBudget", "toolchain")]["spec"]["selector"]["matchLabels"] == STABLE_LABELS
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
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        rendered("canary")[("Service", "toolchain")]["metadata"]["labels"].items()


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
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "toolchain.rules.yml").read_text())
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules['groups'])} rules found" in out.stdout


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


# --- Canary rollout: deploy/overlays/canary, the scrape-time track labels and the canary rules ---------------

def test_canary_overlay_leaves_the_stable_track_exactly_as_the_cpu_overlay_deploys_it():
    """Applying the canary overlay over a running cpu deployment adds the canary and changes nothing else."""
    canary, cpu = rendered("canary"), rendered("cpu")
    assert set(canary) - set(cpu) == CANARY_OBJECTS
    for key, obj in cpu.items():
        assert canary[key] == obj, key


def test_one_service_selects_both_tracks_and_each_deployment_only_its_own():
    objects = rendered("canary")
    stable, canary = pod_labels(objects, "toolchain"), pod_labels(objects, "toolchain-canary")
    assert selects(STABLE_LABELS, stable) and selects(CANARY_LABELS, canary)
    assert stable["track"] != canary["track"] and stable[VERSION] != canary[VERSION]
    for name, own, other in (("toolchain", stable, canary), ("toolchain-canary", canary, stable)):
        selector = objects[("Deployment", name)]["spec"]["selector"]["matchLabels"]
        assert selects(selector, own) and not selects(selector, other), name
    assert selects(objects[("Service", "toolchain")]["spec"]["selector"], stable)
    assert selects(objects[("Service", "toolchain")]["spec"]["selector"], canary)
    policy = objects[("NetworkPolicy", "toolchain")]["spec"]["podSelector"]["matchLabels"]
    assert selects(policy, stable) and selects(policy, canary)


def test_canary_differs_from_stable_only_in_image_track_version_and_replicas():
    objects = rendered("canary")
    stable, canary = objects[("Deployment", "toolchain")], objects[("Deployment", "toolchain-canary")]
    assert canary["spec"]["replicas"] >= 1 and "replicas" not in stable["spec"]
    assert container(objects, "toolchain")["image"] != container(objects, "toolchain-canary")["image"]

    def comparable(deployment):
        out = json.loads(json.dumps(deployment))
        out["metadata"]["name"] = None
        out["spec"].pop("replicas", None)
        for labels in (out["metadata"]["labels"], out["spec"]["selector"]["matchLabels"],
                       out["spec"]["template"]["metadata"]["labels"]):
            labels.pop("track", None)
            labels.pop(VERSION, None)
        out["spec"]["template"]["spec"]["containers"][0]["image"] = None
        return out

    assert comparable(canary) == comparable(stable)    # same sizes, probes, security, volumes, settings


@pytest.mark.parametrize("overlay_name, deployment", WORKLOADS)
def test_model_version_label_is_the_image_tag(overlay_name, deployment):
    """`app.kubernetes.io/version` (scraped as `model_version`) names what the image serves."""
    objects = rendered(overlay_name)
    version = pod_labels(objects, deployment)[VERSION]
    assert image_tag(objects, deployment) in (version, f"{version}-gpu")


def test_disruption_budgets_and_autoscaler_fit_two_deployments():
    objects = rendered("canary")
    budgets = [o for (kind, _), o in objects.items() if kind == "PodDisruptionBudget"]
    for name in deployments(objects):
        # A pod matched by two budgets cannot be evicted at all (the eviction API refuses it).
        matching = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], pod_labels(objects, name))]
        assert len(matching) == 1, name
    hpa = objects[("HorizontalPodAutoscaler", "toolchain")]["spec"]
    assert objects[("PodDisruptionBudget", "toolchain")]["spec"]["minAvailable"] < hpa["minReplicas"]
    canary_budget = objects[("PodDisruptionBudget", "toolchain-canary")]["spec"]
    assert canary_budget.get("maxUnavailable", 0) >= 1     # a drain may always take a canary pod
    targets = [o["spec"]["scaleTargetRef"]["name"] for (kind, _), o in objects.items()
               if kind == "HorizontalPodAutoscaler"]
    assert targets == ["toolchain"]      # the canary keeps its fixed replicas


def test_canary_track_renders_alone_for_roll_back():
    """`kubectl delete -k deploy/overlays/canary/track` removes the canary and nothing of the stable track."""
    track = {(o["kind"], o["metadata"]["name"]): o for o in renderer.render(DEPLOY / "overlays" / "canary" / "track")}
    assert set(track) == CANARY_OBJECTS
    assert {o["metadata"]["namespace"] for o in track.values()} == {"toolchain"}
    assert track == {key: rendered("canary")[key] for key in CANARY_OBJECTS}


def _relabel(meta: dict, configs: list[dict]) -> dict | None:
    """Prometheus target relabelling (`keep` and `replace`), for the rules these configs use."""
    labels = dict(meta)
    for config in configs:
        config = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in config.items()}   # operator's camelCase
        value = config.get("separator", ";").join(labels.get(s, "") for s in config["source_labels"])
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        assert action in ("keep", "replace"), action
        if action == "keep" and not match:
            return None
        if action == "replace" and match:
            result = match.expand(config.get("replacement", "$1").replace("$", "\\"))
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _discovered(objects, deployment: str) -> dict:
    """The meta labels Kubernetes discovery gives an endpoint of the Service backed by one of its pods."""
    def sanitized(prefix, labels):
        return {prefix + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}
    service = objects[("Service", "toolchain")]
    return {"__meta_kubernetes_namespace": service["metadata"]["namespace"],
            "__meta_kubernetes_pod_name": f"{deployment}-7d9c-x2x4q",
            "__meta_kubernetes_endpoint_port_name": service["spec"]["ports"][0]["name"],
            **sanitized("__meta_kubernetes_service_label_", service["metadata"]["labels"]),
            **sanitized("__meta_kubernetes_pod_label_", pod_labels(objects, deployment))}


def test_scrape_configs_label_every_series_with_track_and_model_version():
    """Both scrape configs (ServiceMonitor, plain prometheus.yml) turn each pod's `track` and
    `app.kubernetes.io/version` labels into target labels, so every series of the pod carries them."""
    monitor = yaml.safe_load((DEPLOY / "prometheus" / "operator" / "servicemonitor.yaml").read_text())
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    objects = rendered("canary")
    for configs in (monitor["spec"]["endpoints"][0]["relabelings"], job["relabel_configs"]):
        for name in deployments(objects):
            target = _relabel(_discovered(objects, name), configs)
            labels = pod_labels(objects, name)
            assert target is not None, name
            assert target["track"] == labels["track"] and target["model_version"] == labels[VERSION], target
            assert target["pod"].startswith(name + "-")


def test_target_labels_do_not_collide_with_the_service_metric_labels():
    """A target label that a metric also carries would rename the metric's own (`exported_...`): the
    pod-label target labels of both scrape configs are none of docs/ARTIFACTS.md's metric labels."""
    table = re.findall(r"^\| `toolchain_[a-z_]+` \|[^|]*\|(.*)\|$", (REPO / "docs" / "ARTIFACTS.md").read_text(), re.M)
    metric_labels = {label for row in table for label in re.findall(r"`([a-z_]+)`", row)}
    assert {"label", "topic", "route", "status", "provider"} <= metric_labels
    monitor = yaml.safe_load((DEPLOY / "prometheus" / "operator" / "servicemonitor.yaml").read_text())
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    from_pods = {c["targetLabel"] for c in monitor["spec"]["endpoints"][0]["relabelings"]
                 if c["sourceLabels"][0].startswith("__meta_kubernetes_pod_label_")}
    assert from_pods == {c["target_label"] for c in job["relabel_configs"]
                         if c["source_labels"][0].startswith("__meta_kubernetes_pod_label_")}
    assert from_pods == {"track", "model_version"} and not from_pods & (metric_labels | {"version"})


def _canary_failures(output: str) -> dict[tuple[str, str], str]:
    """promtool's failed alert checks, (test name, alert) -> "fired" (none expected) or "silent" (one expected)."""
    found = {}
    for name, alert, expected, got in re.findall(
            r"name: (.+?),\s*alertname: (\w+), time: \S+,\s*exp:\[(.*?)\],\s*got:\[(.*?)\]", output, re.S):
        found[(name, alert)] = "fired" if not expected.strip() else "silent" if not got.strip() else "differs"
    return found


def _canary_promtool(tmp_path: Path, overrides: dict) -> subprocess.CompletedProcess:
    """canary_test.yml against the canary group rendered with ``overrides`` (the other groups left out)."""
    settings = rule_renderer.load_settings(overrides=overrides)
    groups = [g for g in rule_renderer.rule_groups(settings) if g["name"] == "toolchain.canary"]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "toolchain.rules.yml").write_text(rule_renderer.dump({"groups": groups}))
    (tmp_path / "tests").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "tests" / "canary_test.yml", tmp_path / "tests")
    return subprocess.run(["promtool", "test", "rules", "canary_test.yml"], capture_output=True, text=True,
                          cwd=tmp_path / "tests", timeout=120)


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian: apt-get install prometheus)")


@needs_promtool
def test_canary_alert_unit_tests_pass():
    """A canary like stable fires nothing; more 5xx, a slower p95, a more or less negative share each fire
    their alert alone; a quiet canary fires nothing however bad its few requests are."""
    out = subprocess.run(["promtool", "test", "rules", "canary_test.yml"], capture_output=True, text=True,
                         cwd=DEPLOY / "prometheus" / "tests", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


SAME, QUIET = "a canary that behaves like stable fires nothing", "low volume fires nothing"
ERRORS, LATENCY, NEGATIVE = "SentimentCanaryErrors", "SentimentCanaryHighLatency", "SentimentCanaryNegativeShareShift"


@needs_promtool
@pytest.mark.parametrize("overrides, expected", [
    ({"canary_min_requests": 0, "canary_min_items": 0}, {(QUIET, a): "fired" for a in (ERRORS, LATENCY, NEGATIVE)}),
    ({"canary_error_margin": 0}, {(SAME, ERRORS): "fired"}),
    ({"canary_latency_factor": 1, "canary_latency_margin_seconds": 0}, {(SAME, LATENCY): "fired"}),
    ({"canary_negative_margin": 0.01}, {(SAME, NEGATIVE): "fired"}),
    ({"canary_error_margin": 0.06}, {("a canary with a higher error rate fires its alert", ERRORS): "silent"}),
    ({"canary_latency_factor": 4}, {("a slower canary fires its alert", LATENCY): "silent"}),
    ({"canary_latency_margin_seconds": 0.6}, {("a slower canary fires its alert", LATENCY): "silent"}),
    ({"canary_negative_margin": 0.18}, {("a less negative canary fires its alert", NEGATIVE): "silent"}),
])
def test_canary_unit_tests_catch_a_broken_threshold(tmp_path, overrides, expected):
    """With a volume minimum removed or a margin at zero, the canary tests that expect silence see the
    alert fire; with a bar above what the bad canary reaches, the tests that expect it see silence."""
    out = _canary_promtool(tmp_path, overrides)
    assert out.returncode != 0, f"the canary tests pass with {overrides}: they do not test it"
    failures = _canary_failures(out.stdout + out.stderr)
    assert {key: failures.get(key) for key in expected} == expected, out.stdout + out.stderr


def test_canary_rules_compare_the_tracks_with_the_settings():
    settings = rule_renderer.AlertSettings(canary_window="30m", canary_for="20m", canary_min_requests=40,
                                           canary_min_items=90, canary_error_margin=0.03, canary_latency_factor=2.0,
                                           canary_latency_margin_seconds=0.2, canary_negative_margin=0.15,
                                           latency_route="/ner", evaluation_interval="30s")
    (group,) = [g for g in rule_renderer.rule_groups(settings) if g["name"] == "toolchain.canary"]
    assert group["interval"] == "30s"
    records = {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    assert set(records) == {"job_track:toolchain_requests:rate30m", "job_track:toolchain_request_errors:ratio_rate30m",
                            "job_track:toolchain_request_seconds:p95_rate30m",
                            "job_track:toolchain_predictions:rate30m", "job_track:toolchain_negative_share:ratio_rate30m"}
    assert all('track=~"stable|canary"' in e and "by (job, track" in e and "[30m]" in e for e in records.values())
    assert 'route=~"/ner"' in records["job_track:toolchain_request_seconds:p95_rate30m"]
    alerts = {r["alert"]: r for r in group["rules"] if "alert" in r}
    assert set(alerts) == {"SentimentCanaryErrors", "SentimentCanaryHighLatency", "SentimentCanaryNegativeShareShift"}
    assert all(a["for"] == "20m" and a["labels"]["scope"] == "canary" for a in alerts.values())
    assert all(a["expr"].startswith("job_track:") and '{track="canary"}\n' in a["expr"] and
               'on (job) job_track:' in a["expr"] for a in alerts.values())
    assert ") > 0.03\n" in alerts["SentimentCanaryErrors"]["expr"]
    assert "job_track:toolchain_requests:rate30m) * 1800 >= 40" in alerts["SentimentCanaryErrors"]["expr"]
    latency = alerts["SentimentCanaryHighLatency"]["expr"]
    assert "/ on (job) job_track:toolchain_request_seconds:p95_rate30m" in latency and ") > 2\n" in latency
    assert ") > 0.2\n" in latency and "* 1800 >= 40" in latency
    negative = alerts["SentimentCanaryNegativeShareShift"]["expr"]
    assert "abs(" in negative and ") > 0.15\n" in negative
    assert "job_track:toolchain_predictions:rate30m) * 1800 >= 90" in negative


@pytest.mark.parametrize("overrides, message", [
    ({"canary_window": "15 minutes"}, "canary_window must be a Prometheus duration"),
    ({"canary_for": 10}, "canary_for must be a Prometheus duration"),
    ({"canary_min_requests": -1}, "canary_min_requests must be a number of requests >= 0, got -1"),
    ({"canary_min_items": "many"}, "canary_min_items must be a number of items >= 0, got 'many'"),
    ({"canary_error_margin": 1.5}, "canary_error_margin must be a share in [0, 1)"),
    ({"canary_negative_margin": -0.1}, "canary_negative_margin must be a share in [0, 1)"),
    ({"canary_latency_factor": 0.5}, "canary_latency_factor must be a factor >= 1, got 0.5"),
    ({"canary_latency_margin_seconds": True}, "canary_latency_margin_seconds must be a number of seconds >= 0"),
])
def test_bad_canary_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError) as info:
        rule_renderer.load_settings(overrides=overrides)
    assert message in str(info.value)
