"""Offline inference of every export variant vs the transformers pipeline: `toolchain bench offline`.

    python benchmarks/inference_offline.py [options]      # the same options as `toolchain bench offline --help`
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolchain.commands.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["offline", *sys.argv[1:]]))
