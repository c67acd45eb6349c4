"""Everything (offline, serve, train), then RESULTS.md and the plots: `toolchain bench all`.

    python benchmarks/run_all.py [options]      # the same options as `toolchain bench all --help`
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolchain.commands.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["all", *sys.argv[1:]]))
