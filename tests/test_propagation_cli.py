"""``personas propagate``: the job's last stdout line is one JSON object with tables and figures."""

from __future__ import annotations

import json

from persona_lib.cli import main
from persona_lib.config import REPO_ROOT
from persona_lib.testing import TEST_CONF


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["propagate", "--conf", str(TEST_CONF), *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), captured.err


def test_standalone_run_from_the_paper_split_and_recorded_labels(spark, tmp_path, capsys):
    code, result, _ = run_cli(capsys, "--workdir", str(tmp_path / "work"),
                           "--pairs", str(REPO_ROOT / "data/gplr_online_retail/split_train.csv.gz"),
                           "--labels-from", "replay-all", "--seed-fraction", "0.2", "--epsilon", "0.005")
    assert code == 0
    assert set(result["tables"]) == {"customer_affinity", "product_affinity", "propagation_runs"}
    assert result["tables"]["propagation_runs"]["version"] == 0
    assert result["converged"] and 0.0 <= result["max_residual"] < 0.005 / 2
    assert result["epsilon"] == 0.005 and result["supersteps"] == 2 and result["seeds"] > 500
    scores = spark.read.format("delta").load(result["tables"]["customer_affinity"]["location"])
    assert scores.where("persona = 'Unrepresentable'").count() == 0
    assert scores.select("customer_id").distinct().count() > 3000


def test_missing_events_table_exits_with_an_input_error(spark, tmp_path, capsys):
    code, result, err = run_cli(capsys, "--workdir", str(tmp_path / "empty"), "--labels-from", "replay-all")
    assert code == 3 and result is None
    assert "purchase_events" in err and "personas ingest" in err
