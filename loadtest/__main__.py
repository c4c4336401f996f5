"""``python -m loadtest [NAME ...]``: run the benchmarks (every module here with a
``main()``, or the ones named), one after the other, with their default settings."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import loadtest


def main(names: list[str]) -> int:
    available = sorted(
        module.name for module in pkgutil.iter_modules(loadtest.__path__) if module.name[0] != "_"
    )
    unknown = [name for name in names if name not in available]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; have {', '.join(available)}")
        return 2
    for name in names or available:
        benchmark = importlib.import_module(f"loadtest.{name}")
        if hasattr(benchmark, "main"):
            print(f"\n=== loadtest.{name} ===", flush=True)
            benchmark.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
