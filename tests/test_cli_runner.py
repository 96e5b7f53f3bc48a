"""tests/cli_runner.py gives what a ``personas`` process gives, and leaves the test process as it was."""

from __future__ import annotations

import logging
import os

import yaml

from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas


def test_an_in_process_command_gives_exit_code_stdout_and_stderr_as_a_process(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "sampling": {"budgett": 0.3}}))

    failed = run_personas("run", "--conf", str(conf), "--workdir", str(tmp_path / "work"))
    usage = run_personas("query", "--customer", "1", "--format", "csv")
    version = run_personas("--version")

    assert (failed.returncode, failed.stdout) == (3, "")
    assert failed.stderr.startswith("personas: error: ") and "budgett" in failed.stderr
    assert usage.returncode == 2 and "--format" in usage.stderr
    assert version.returncode == 0 and version.stdout.startswith("personas ")
    assert not (tmp_path / "work").exists()


def test_the_test_process_keeps_its_log_handlers_environment_and_directory(tmp_path):
    root = logging.getLogger()
    handlers, level, directory = root.handlers[:], root.level, os.getcwd()
    os.environ.pop("PERSONAS_RUNNER_PROBE", None)
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "sampling": {"budgett": 0.3}}))

    run_personas("run", "--conf", str(conf), env={"PERSONAS_RUNNER_PROBE": "1"}, cwd=tmp_path)

    assert root.handlers == handlers and root.level == level
    assert "PERSONAS_RUNNER_PROBE" not in os.environ and os.getcwd() == directory
