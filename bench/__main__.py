"""``make bench``: run every benchmark module in bench/ and write bench/results/<name>.json."""

from __future__ import annotations

import importlib
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path

import bench

RESULTS = Path(__file__).parent / "results"


USAGE = """usage: python -m bench [NAME ...]   (make bench: all of them)

Runs the named benchmarks (default: every one) and writes bench/results/NAME.json; what each
measures, its environment variables and its last numbers: bench/README.md. Benchmarks:
"""


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):  # never a run: some take many minutes
        print(USAGE, end="")
        for module in pkgutil.iter_modules(bench.__path__):
            if not module.name.startswith("_"):
                print(f"  {module.name}")
        return 0
    wanted = set(sys.argv[1:])
    for module in pkgutil.iter_modules(bench.__path__):
        if module.name.startswith("_") or (wanted and module.name not in wanted):
            continue
        mod = importlib.import_module(f"bench.{module.name}")
        print(f"bench {module.name}: {mod.__doc__.strip().splitlines()[0]}", flush=True)
        result = mod.run()
        result["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
        result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{module.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["summary"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
