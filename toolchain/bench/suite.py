"""The full benchmarks (`toolchain bench all|offline|serve|train|report`): measure, write JSON under
benchmarks/results/, then re-render benchmarks/RESULTS.md and the plots."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pick_export_dir(repo: Path) -> Path:
    """The complete export dir under exports/ with the most variants (a pruned export has them all)."""
    from toolchain.core.artifacts import ArtifactError, load_export

    candidates = []
    for path in sorted((repo / "exports").glob("*")):
        if path.is_dir() and (path / "toolchain.yaml").exists():
            try:
                candidates.append((len(load_export(path).variant_names()), path.stat().st_mtime, path))
            except ArtifactError:
                continue
    if not candidates:
        raise FileNotFoundError(f"no complete export dir under {repo / 'exports'}; build one with `toolchain export "
                                "RUN_DIR` or pass --export-dir")
    return max(candidates)[2]


def offline(args, repo: Path) -> int:
    from toolchain.core.artifacts import write_json
    from toolchain.bench.offline import run_offline
    from toolchain.core.config import data_root

    export_dir = args.export_dir or pick_export_dir(repo)
    print(f"offline benchmark of {export_dir}", flush=True)
    results = run_offline(export_dir, data_root(), scale=args.scale, threads=args.threads)
    results["command"] = "toolchain bench offline" + (f" --threads {args.threads}" if args.threads else "") + \
        (f" --scale {args.scale:g}" if args.scale != 1 else "")
    write_json(args.results / "offline.json", results)
    return 0


def serve(args, repo: Path) -> int:
    from toolchain.bench.serving import run_serve_benchmark

    export_dir = args.export_dir or pick_export_dir(repo)
    out = (args.results / "serve").resolve()
    return run_serve_benchmark(export_dir, out.relative_to(repo) if out.is_relative_to(repo) else out, args.seconds)


def train(args, repo: Path) -> int:
    """benchmarks/train_throughput.py as is; ``--threads`` sets its OpenMP/MKL thread count."""
    import json
    import os

    out = args.results / "train_throughput.json"
    command = [sys.executable, str(repo / "benchmarks" / "train_throughput.py"), "--steps", str(args.steps),
               "--out", str(out)]
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print("$ " + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=repo, env=env).returncode
    if code == 0:   # note how it was run next to its figures
        results = json.loads(out.read_text())
        results["threads"] = args.threads or "library default (all cores)"
        out.write_text(json.dumps(results, indent=2) + "\n")
    return code


def run_suite(args, repo: Path) -> int:
    from toolchain.bench.summary import render_results

    args.results.mkdir(parents=True, exist_ok=True)
    steps = {"offline": [offline], "serve": [serve], "train": [train], "report": [],
             "all": [offline, serve, train]}[args.bench_command]
    failed = [step.__name__ for step in steps if step(args, repo) != 0]
    path = render_results(repo, args.results)
    print(f"wrote {path}")
    if failed:
        print(f"toolchain bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
