"""The latency check (what CI runs): `toolchain bench latency-check`.

    python benchmarks/latency_check.py [options]     # the same options as `toolchain bench latency-check --help`
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolchain.commands.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["latency-check", *sys.argv[1:]]))
