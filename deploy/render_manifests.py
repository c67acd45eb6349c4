#!/usr/bin/env python3
"""Render a kustomize overlay of this folder without kubectl (for CI machines that lack it).

Covers exactly the kustomize features these overlays use: `resources` (files and folders),
`namespace`, `nameSuffix`, `images` and `patches` given by `path` (strategic merge, matched by kind
and the name before the suffix, as kustomize applies patches first). Anything else in a
kustomization.yaml is refused rather than silently ignored, and so is a suffix that kustomize would
also have to rewrite references to (a renamed ConfigMap that a Deployment of the same kustomization names). When kubectl is
present, tests check that this renderer and `kubectl kustomize` produce the same objects.

    python deploy/render_manifests.py deploy/overlays/cpu > cpu.yaml
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "nameSuffix", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
# Strategic-merge keys of the lists these patches touch (the Kubernetes API's patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


class KustomizeError(ValueError):
    """A kustomization uses a feature this renderer does not cover, or points at a missing file."""


def render(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"no kustomization.yaml in {folder}")
    spec = yaml.safe_load(path.read_text()) or {}
    unsupported = sorted(set(spec) - SUPPORTED_KEYS)
    if unsupported:
        raise KustomizeError(f"{path}: unsupported kustomization keys {unsupported}")
    objects = []
    for entry in spec.get("resources", []):
        objects.extend(_load_resource(folder / entry))
    for patch in spec.get("patches", []):
        _apply_patch(objects, patch, folder)
    if "nameSuffix" in spec:
        _add_name_suffix(objects, spec["nameSuffix"], path)
    for image in spec.get("images", []):
        _set_image(objects, image)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _load_resource(target: Path) -> list[dict]:
    if target.is_dir():
        return render(target)
    if not target.is_file():
        raise KustomizeError(f"resource {target} does not exist")
    return [doc for doc in yaml.safe_load_all(target.read_text()) if doc]


def _apply_patch(objects: list[dict], patch: dict, folder: Path) -> None:
    if set(patch) != {"path"}:
        raise KustomizeError(f"{folder}: only `patches: - path: FILE` is supported, got {patch}")
    for doc in _load_resource(folder / patch["path"]):
        name = doc.get("metadata", {}).get("name")
        matches = [o for o in objects if o["kind"] == doc["kind"] and o["metadata"]["name"] == name]
        if len(matches) != 1:
            raise KustomizeError(f"patch {folder / patch['path']}: no single {doc['kind']} named {name!r}")
        merged = strategic_merge(matches[0], doc)
        matches[0].clear()
        matches[0].update(merged)


def _add_name_suffix(objects: list[dict], suffix: str, path: Path) -> None:
    renamed = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        for ref in _name_references(obj):
            if ref in renamed:
                raise KustomizeError(f"{path}: nameSuffix renames {ref[0]} {ref[1]!r}, which {obj['kind']} "
                                     f"{obj['metadata']['name']!r} refers to; reference rewriting is not covered")
    for obj in objects:
        obj["metadata"]["name"] += suffix


def _name_references(obj: dict):
    """(kind, name) of the objects that ``obj`` names: those kustomize would rename along with a suffix."""
    spec = obj.get("spec", {})
    if "scaleTargetRef" in spec:
        yield spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]
    pod = spec.get("template", {}).get("spec", {})
    if "serviceAccountName" in pod:
        yield "ServiceAccount", pod["serviceAccountName"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"]
    for ctr in pod.get("containers", []) + pod.get("initContainers", []):
        for source in ctr.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    yield kind, source[key]["name"]


def strategic_merge(base, patch, key: str | None = None):
    """Maps merge recursively; lists with a merge key merge item by item; other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out = copy.deepcopy(base)
        for item in patch:
            found = next((i for i, b in enumerate(out) if b.get(merge_key) == item.get(merge_key)), None)
            if found is None:
                out.append(copy.deepcopy(item))
            else:
                out[found] = strategic_merge(out[found], item)
        return out
    return copy.deepcopy(patch)


def _set_image(objects: list[dict], image: dict) -> None:
    for container in _containers(objects):
        name, tag = _split_image(container["image"])
        if name == image["name"]:
            new_name = image.get("newName", name)
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _containers(objects: list[dict]):
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        yield from pod.get("containers", [])
        yield from pod.get("initContainers", [])


def _split_image(image: str) -> tuple[str, str | None]:
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: {Path(__file__).name} OVERLAY_DIR", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(render(argv[0]), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
