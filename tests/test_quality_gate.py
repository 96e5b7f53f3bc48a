"""bench/quality_gate.py: CI's check of the headline figures against committed bounds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from persona_lib.config import REPO_ROOT

GATE = REPO_ROOT / "bench" / "quality_gate.py"


def load_gate():
    spec = importlib.util.spec_from_file_location("quality_gate", GATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_figure_past_its_bound_or_missing_is_named():
    gate = load_gate()
    bounds = {"figures": {"f1": {"min": 0.7}, "ece": {"max": 0.05}, "macro_f1": {"min": 0.5}}}
    found = gate.violations({"f1": 0.69, "ece": 0.01}, bounds)
    assert found == ["f1 = 0.69 is below its floor 0.7", "macro_f1: missing from the evaluation's output"]
    assert gate.violations({"f1": 0.7, "ece": 0.05, "macro_f1": 0.5}, bounds) == []


def test_the_committed_bounds_cover_the_issue_figures_and_the_gate_exits_1_below_them():
    bounds = json.loads(GATE.with_name("quality_gate.json").read_text())["figures"]
    assert {"f1", "macro_f1", "prevalence_gap", "ece", "ambiguous_share"} <= set(bounds)
    worse = {name: (bound["min"] - 0.1 if "min" in bound else bound["max"] + 0.1) for name, bound in bounds.items()}
    result = subprocess.run([sys.executable, str(GATE)], input=json.dumps(worse) + "\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["quality_gate"] == "failed"
    assert all(name in result.stderr for name in bounds)
