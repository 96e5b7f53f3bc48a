"""What a person at the terminal sees: stderr holds our own log lines and at most three
others (Spark, MLflow, the JVM), a run ends with a short summary, and ``personas query
--format table`` rounds. Pipeline commands are checked where a module already runs them
(test_faults_ops: run, ingest, forget, query, verify; test_sql_docs: sql after a run), so
that no test starts a pipeline or a Spark session for this alone."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import yaml

from persona_lib.cli.query import format_answer
from persona_lib.cli.run import human_summary, terminal_progress
from persona_lib.config import REPO_ROOT
from tests.conftest import TEST_CONF
from tests.console import foreign_lines

PERSONAS = Path(sys.executable).with_name("personas")

def personas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PERSONAS), *args], cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=300)


def test_foreign_lines_keeps_only_what_our_loggers_and_the_cli_did_not_write():
    stderr = "\n".join([
        "2026-11-30 15:17:11,730 INFO personas.lock: writer lock taken",
        "2026-11-30 15:17:11,730 WARNING personas: something of ours",
        "personas: error: bad input",
        "WARNING: Using incubator modules: jdk.incubator.vector",
        "2026/11/30 15:17:59 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "2026-11-30 15:17:11,730 INFO personasx.other: not ours",
    ])
    assert foreign_lines(stderr) == [
        "WARNING: Using incubator modules: jdk.incubator.vector",
        "2026/11/30 15:17:59 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "2026-11-30 15:17:11,730 INFO personasx.other: not ours",
    ]


def test_a_config_error_is_one_line_of_ours_and_nothing_else(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "sampling": {"budgett": 0.3}}))

    failed = personas("run", "--conf", str(conf), "--workdir", str(tmp_path / "work"))

    assert failed.returncode == 3
    assert foreign_lines(failed.stderr) == [] and "budgett" in failed.stderr


SUMMARY = {
    "run_id": "0123abcd", "customers": 200, "labelled": 50, "overridden": 2, "propagated": 150,
    "ambiguous_share": 0.25, "top_personas": {f"P{i}": 100 - i for i in range(8)},
    "seconds": {"ingest": 40.4, "graph": 3.2, "publish": 20.0},
    "mlflow": {"run_id": "0123abcd", "tracking_uri": "sqlite:////w/mlflow.db"},
}


def test_the_run_summary_says_what_came_out_and_where_to_look():
    lines = human_summary(SUMMARY, 123.4, "--workdir /w")
    text = "\n".join(lines)
    assert lines[0] == "run 0123abcd complete in 123 s"
    assert "customers 200: labelled 50 (25%, 2 by override), propagated 150 (75%), ambiguous 25.0%" in text
    assert "P0 (100), P1 (99), P2 (98), P3 (97), P4 (96)" in text and "P5" not in text
    assert "stages: ingest 40 s, graph 3 s, publish 20 s" in text
    assert 'personas sql "SELECT * FROM current_customer_personas LIMIT 10" --workdir /w' in text
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in text
    assert len(lines) <= 8


def test_the_run_summary_names_a_remote_tracking_server_instead_of_mlflow_ui():
    text = "\n".join(human_summary({**SUMMARY, "mlflow": {"run_id": "0123abcd", "tracking_uri": "databricks"}}, 1.0))
    assert "MLflow run 0123abcd at databricks" in text and "mlflow ui" not in text


def test_query_table_rounds_and_shows_the_first_evidence_titles():
    answer = {"found": True, "rows": [
        {"$p": 0.87654, "$why": {"products": [{"product_id": "1", "title": "RED MUG"},
                                              {"product_id": "2", "title": None},
                                              {"product_id": "3", "title": "THIRD"}]}, "persona": "Tea Lover"},
        {"$p": 0.1, "$why": {"products": []}, "persona": "Gardener"},
    ]}
    assert format_answer(answer).splitlines() == [
        "$p     persona    why",
        "-----  ---------  ----------",
        "0.877  Tea Lover  RED MUG; 2",
        "0.100  Gardener   -",
    ]


def test_query_table_says_what_was_not_found():
    answer = {"found": False, "customer_id": "42", "customer_found": False, "unknown_products": ["X", "Y"], "rows": []}
    assert format_answer(answer) == "not found: customer 42 and products X, Y (latest complete run)"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_live_line_shows_the_latest_step_and_the_elapsed_time(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="personas.run"):
        with terminal_progress(terminal) as say:
            say("graph took 4.2 s")
    assert "personas run: graph took 4.2 s [00:00]" in terminal.getvalue()
    assert "graph took 4.2 s" in caplog.text  # the log line still goes out


def test_off_a_terminal_or_with_quiet_there_is_no_live_line(caplog):
    for stream, enabled in ((io.StringIO(), True), (Terminal(), False)):
        with caplog.at_level(logging.INFO, logger="personas.run"):
            with terminal_progress(stream, enabled=enabled) as say:
                say("publishing took 27.4 s")
        assert stream.getvalue() == ""
    assert caplog.text.count("publishing took 27.4 s") == 2
