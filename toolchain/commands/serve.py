"""`toolchain serve EXPORT_DIR | BENTO_TAG`: serve locally for development (``bentoml serve`` underneath).

An export dir is served straight from the source tree (``TOOLCHAIN_EXPORT_DIR``); a Bento tag is
served from the BentoML store with the model packed in it. Service settings come from
``TOOLCHAIN_*`` variables (``--settings`` lists them); the flags below only set the common ones.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

SERVICE = "toolchain.serve.service:ToolchainService"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="EXPORT_DIR|BENTO_TAG", help="export dir or Bento tag to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    p.add_argument("--workers", type=int, help="worker processes (TOOLCHAIN_WORKERS)")
    p.add_argument("--variant", help="ONNX variant of an export dir to load (TOOLCHAIN_VARIANT)")
    p.add_argument("--no-auth", action="store_true",
                   help="accept requests without an API key (TOOLCHAIN_AUTH=false; development only)")
    p.add_argument("--settings", action="store_true", help="list the TOOLCHAIN_* service settings and exit")


def print_settings() -> None:
    from toolchain.serve.settings import settings_table

    rows = settings_table()
    width = max(len(name) for name, _, _ in rows)
    for name, default, help_line in rows:
        print(f"{name:<{width}}  {str(default):<10}  {help_line}")
    print(f"{'TOOLCHAIN_API_KEYS_FILE':<{width}}  {'':<10}  file with one API key or sha256:<hex> per line")
    print(f"{'TOOLCHAIN_API_KEYS':<{width}}  {'':<10}  API keys or sha256:<hex> hashes, comma-separated")


def server_environment(args) -> dict[str, str]:
    env = dict(os.environ)
    if args.workers:
        env["TOOLCHAIN_WORKERS"] = str(args.workers)
    if args.variant:
        env["TOOLCHAIN_VARIANT"] = args.variant
    if args.no_auth:
        env["TOOLCHAIN_AUTH"] = "false"
    return env


def serve_target(target: str, env: dict[str, str]) -> tuple[str, str | None]:
    """(what `bentoml serve` gets, working dir): an export dir is checked here, then passed by environment."""
    from toolchain.core.artifacts import ArtifactError, load_export
    from toolchain.inference.runtime import verify_variant

    path = Path(target)
    if path.is_dir():
        export = load_export(path)
        verify_variant(export, env.get("TOOLCHAIN_VARIANT") or export.serve_variant)  # fail before starting
        env["TOOLCHAIN_EXPORT_DIR"] = str(export.path.resolve())
        return SERVICE, str(REPO_ROOT)
    if os.sep in target or target.startswith("."):
        raise ArtifactError(f"{target}: no such export dir")
    return target, None


def check_keys(env: dict[str, str]) -> None:
    """Fail here, before the server starts, on bad settings or auth without keys."""
    from toolchain.core.errors import ConfigError
    from toolchain.serve import auth
    from toolchain.serve.settings import load_settings

    try:
        auth.check_configuration(load_settings(env).auth, env)
    except auth.AuthConfigError as exc:
        raise ConfigError(f"{exc}; or pass --no-auth") from None


def run(args) -> int:
    if args.settings:
        print_settings()
        return 0
    if not args.target:
        from toolchain.core.errors import ConfigError

        raise ConfigError("give an export dir or a Bento tag (see --help)")
    env = server_environment(args)
    target, working_dir = serve_target(args.target, env)
    check_keys(env)
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", args.host, "--port", str(args.port)]
    if working_dir:
        command += ["--working-dir", working_dir]
    print(f"serving {args.target} on http://{args.host}:{args.port} (POST /classify or /ner by the model's task, GET /readyz, GET /metrics)",
          flush=True)
    server = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGINT)
        return server.wait()
