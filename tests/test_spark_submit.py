"""The pipeline through ``spark-submit`` from the virtual environment, on Spark's
pseudo-distributed master ``local-cluster[2,1,2048]``: a standalone master, two worker JVMs
with one core each, and their own Python workers. A job that only works when the driver
holds the data, or when state is shared inside one process, fails here.

It is the one test that starts its own Spark application (a separate process with its own
JVMs, not a second session in pytest's). Its JVMs get the suite's start-up flags (C1 only, the
serial collector, the class archive): 114 s against 142 s with the JVM defaults, and about half
the CPU time (133 s against 234 s), since the default JIT's compiler threads compete with the
tasks for the 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
import yaml

from persona_lib.config import REPO_ROOT, load_config
from persona_lib.jars import required_jars
from persona_lib.spark import start_up_flags
from tests.landing_files import copy_landing_slice

VENV_BIN = Path(sys.executable).parent
SPARK_SUBMIT = VENV_BIN / "spark-submit"
MASTER = "local-cluster[2,1,2048]"
OUTPUT_TABLES = ("persona_affinity", "customer_personas", "product_personas", "persona_labels")


def submit_command(job: str, jars: list[Path], master: str, *job_args: str,
                   extra_conf: tuple[str, ...] = ()) -> list[str]:
    """`spark-submit --jars <the fetched JARs> jobs/<job>.py ...`, as README documents it."""
    return [str(SPARK_SUBMIT), "--master", master, "--driver-memory", "1g",
            "--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.shuffle.partitions=4", *extra_conf,
            "--jars", ",".join(str(j) for j in jars), str(REPO_ROOT / "jobs" / job), *job_args]


@pytest.fixture(scope="module")
def submitted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark-submit")
    # Four days are enough to prove the job is distributed; the rest of the suite covers the figures.
    landing = copy_landing_slice(root / "landing", days=4)
    conf = root / "submit.yaml"
    conf.write_text(yaml.safe_dump({
        "base": str(REPO_ROOT / "conf" / "test.yaml"),
        "ingest": {"landing": str(landing)},
        # One round: a second adds no distributed step the first does not have.
        "sampling": {"budget": 0.3, "rounds": 1},
    }))
    workdir = root / "work"
    config = load_config(conf)
    jars = required_jars(config.resolve_path(config.spark.jars_dir))
    # The JVM flags the suite's own session starts with (conf/test.yaml's fast_jvm and the class
    # archive, quiet where it does not apply): on the command line, which owns them under spark-submit.
    jvm_flags = start_up_flags(config)
    env = {**os.environ, "PYSPARK_PYTHON": str(VENV_BIN / "python"),
           "PYSPARK_DRIVER_PYTHON": str(VENV_BIN / "python")}
    env.pop("SPARK_HOME", None)  # the venv's pyspark is the Spark home, as for a user
    # The event log records the master and every executor the application really had.
    events = root / "events"
    events.mkdir()
    command = submit_command("run_pipeline.py", jars, MASTER, "--conf", str(conf), "--workdir", str(workdir),
                             extra_conf=("--conf", "spark.eventLog.enabled=true",
                                         "--conf", f"spark.eventLog.dir={events.as_uri()}",
                                         # Plain JSON lines in one file, readable here.
                                         "--conf", "spark.eventLog.compress=false",
                                         "--conf", "spark.eventLog.rolling.enabled=false",
                                         "--driver-java-options", jvm_flags,
                                         "--conf", f"spark.executor.extraJavaOptions={jvm_flags}"))
    completed = subprocess.run(command, cwd=str(root), env=env, capture_output=True, text=True, timeout=900)
    log = [json.loads(line) for path in sorted(events.rglob("*")) if path.is_file()
           for line in path.read_text().splitlines() if line.strip()]
    yield completed, workdir, log
    # local-cluster workers keep each executor's stdout/stderr under <SPARK_HOME>/work/<app>.
    for event in log:
        if event["Event"] == "SparkListenerApplicationStart":
            shutil.rmtree(Path(pyspark.__file__).parent / "work" / event["App ID"], ignore_errors=True)
    with contextlib.suppress(OSError):  # the folder itself, when no other application uses it
        (Path(pyspark.__file__).parent / "work").rmdir()


def test_the_pipeline_job_exits_0_under_spark_submit(submitted_run):
    completed, _, _ = submitted_run
    assert completed.returncode == 0, completed.stderr[-4000:]


def test_its_last_line_is_the_run_summary(submitted_run):
    completed, workdir, _ = submitted_run
    last_line = completed.stdout.strip().splitlines()[-1]
    try:
        summary = json.loads(last_line)
    except json.JSONDecodeError:
        pytest.fail("the last stdout line is not the JSON summary; stdout ends with:\n"
                    + "\n".join(completed.stdout.strip().splitlines()[-5:]))
    assert summary["run_id"]
    assert summary["customers"] > 0 and summary["labelled"] > 0 and summary["propagated"] > 0
    assert set(OUTPUT_TABLES) <= set(summary["tables"])
    for name in OUTPUT_TABLES:
        location = Path(summary["tables"][name]["location"])
        assert location.is_relative_to(workdir) and (location / "_delta_log").is_dir()


def test_it_ran_on_two_executor_jvms_of_the_pseudo_distributed_master(submitted_run):
    """The session factory left master and JARs to spark-submit (it sets them only when not submitted)."""
    _, _, log = submitted_run
    environment = next(e for e in log if e["Event"] == "SparkListenerEnvironmentUpdate")
    assert environment["Spark Properties"]["spark.master"] == MASTER
    executors = {e["Executor ID"] for e in log if e["Event"] == "SparkListenerExecutorAdded"}
    assert len(executors - {"driver"}) >= 2
    tasks_by_executor = {e["Task Info"]["Executor ID"] for e in log if e["Event"] == "SparkListenerTaskEnd"}
    assert len(tasks_by_executor) >= 2, "every task ran on one executor"
