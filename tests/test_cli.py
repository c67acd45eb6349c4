"""The CLI: one table of verbs, each handled by ``toolchain/commands/<verb>.py`` (``add_arguments`` and
``run``), imported lazily so that ``toolchain --help`` and a verb's ``--help`` import no heavy library."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.cli import VERBS

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "onnxruntime", "bentoml", "optimum", "peft", "httpx")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_verb_handler_is_a_commands_module(verb):
    module_name, help_line = VERBS[verb]
    assert module_name == f"toolchain.commands.{verb}", f"{verb}: handler in {module_name}"
    module = importlib.import_module(module_name)
    assert callable(module.add_arguments) and callable(module.run) and help_line


@pytest.mark.parametrize("verb", [None, *sorted(VERBS)])
def test_help_imports_no_heavy_library(verb):
    """`toolchain --help` and `toolchain VERB --help` (which declares the verb's arguments)."""
    code = (f"import sys; from toolchain.cli import parser; parser({verb!r}).format_help(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])
