"""The headline quality figures against committed thresholds: CI's guard on what users get.

    personas evaluate accuracy --quick ... | tail -1 | python bench/quality_gate.py

Reads the JSON line of `personas evaluate accuracy` (the production persona model, scored as
its published tables) on stdin, compares each figure named in bench/quality_gate.json with its
bound ("min" or "max") and exits 1 naming every figure out of bounds. The thresholds sit a
little inside the figures measured when they were committed: a change that makes the
published personas worse fails CI instead of changing a number nobody reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

THRESHOLDS = Path(__file__).with_name("quality_gate.json")


def violations(result: dict, thresholds: dict) -> list[str]:
    found = []
    for figure, bound in thresholds["figures"].items():
        value = result.get(figure)
        if value is None:
            found.append(f"{figure}: missing from the evaluation's output")
        elif "min" in bound and value < bound["min"]:
            found.append(f"{figure} = {value} is below its floor {bound['min']}")
        elif "max" in bound and value > bound["max"]:
            found.append(f"{figure} = {value} is above its ceiling {bound['max']}")
    return found


def main() -> int:
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not lines:
        print("quality gate: no evaluation output on stdin", file=sys.stderr)
        return 1
    result = json.loads(lines[-1])
    thresholds = json.loads(THRESHOLDS.read_text())
    found = violations(result, thresholds)
    for line in found:
        print(f"quality gate: {line}", file=sys.stderr)
    shown = {k: result.get(k) for k in thresholds["figures"]}
    print(json.dumps({"quality_gate": "failed" if found else "passed", **shown}))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
