"""The latency regression gate (what CI runs): `toolchain bench gate`.

    python benchmarks/latency_gate.py [options]      # the same options as `toolchain bench gate --help`
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolchain.commands.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["gate", *sys.argv[1:]]))
