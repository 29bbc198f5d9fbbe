#!/usr/bin/env python3
"""Compare two bench runs row by row: `bench/compare.py BEFORE.json AFTER.json`.

Prints, for every row both runs have, the p50 and p99 (or the value) of each run and the
change. The host's speed moves between runs (earlier runs on this VM were 10-50 % apart
on rows nothing had changed), so the floors of each run are printed first: a change
that only matches the floors' change is the host, not silo.
"""

import json
import sys
from pathlib import Path

# Rows that measure the host, not silo.
FLOORS = ("raw `runsc run`", "host process spawn")


def load(path):
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: {err}") from None
    return {row["name"]: row for row in rows}


def figures(row):
    """(p50 or value, p99 or None, unit) of a row."""
    if "value" in row:
        return row["value"], None, row["unit"]
    return row["p50_ms"], row["p99_ms"], "ms"


def change(before, after):
    if before in (None, 0) or after is None:
        return ""
    return f"{(after - before) / before * 100:+.0f} %"


def cell(value, unit):
    return "" if value is None else f"{value:g} {unit}"


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[0])
    before, after = load(argv[1]), load(argv[2])
    names = [name for name in before if name in after]
    if not names:
        raise SystemExit("the two runs have no row in common")
    floors = [n for n in names if n.startswith(FLOORS)]
    print("| what | before p50 | after p50 | change | before p99 | after p99 | change |")
    print("|---|---|---|---|---|---|---|")
    for name in floors + [n for n in names if n not in floors]:
        b50, b99, unit = figures(before[name])
        a50, a99, _ = figures(after[name])
        label = f"{name} (floor)" if name in floors and "floor" not in name else name
        print(f"| {label} | {cell(b50, unit)} | {cell(a50, unit)} | {change(b50, a50)} "
              f"| {cell(b99, unit)} | {cell(a99, unit)} | {change(b99, a99)} |")
    only = sorted(set(before) ^ set(after))
    if only:
        print(f"\nIn one run only: {', '.join(only)}")


if __name__ == "__main__":
    main(sys.argv)
