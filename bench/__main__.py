"""Run every benchmark module and print one table. `python -m bench [name ...]` runs only those named."""

from __future__ import annotations

import importlib
import sys

from bench.table import Row, render

# Each module exposes `run() -> list[Row]` and starts whatever real servers it needs itself.
MODULES = ("gateway", "api", "persister", "simulator", "live", "burst", "notifier", "cluster")


def main(argv: list[str]) -> int:
    selected = argv or list(MODULES)
    rows: list[Row] = []
    for name in selected:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            rows.append(Row(name, "(not written yet)", "-"))
            continue
        rows.extend(module.run())
    sys.stdout.write(render(rows) + "\n")
    return 0  # a missed goal is reported in the table, not as a failed command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
