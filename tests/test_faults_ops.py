"""Operations faults (concurrency, forget, --no-recompute, verify), each through the
``personas`` command on a small landing folder: three days of the bundled data and a planted
customer whose id, 9007199254740993 (2**53 + 1), a float would turn into ...992.

One work dir is shared by the module, in this order: two concurrent first runs, a run killed
mid-way, forget, forget --no-recompute, verify. Each test states what it needs from the
earlier steps through the fixtures."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.labelling.validation import REPAIRED, validate_answer
from persona_lib.taxonomy import load_taxonomy
from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas
from tests.console import assert_quiet
from tests.landing_files import copy_landing_slice, write_landing_file

PERSONAS = Path(sys.executable).with_name("personas")
PLANTED_ID = "9007199254740993"
DEMO_KEY = load_config(TEST_CONF).forget.demo_key.encode()
PLANTED_LINES = [
    f"999001,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,{PLANTED_ID}.0,United Kingdom",
    f"999001,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,{PLANTED_ID}.0,United Kingdom",
    f"999001,84406B,CREAM CUPID HEARTS COAT HANGER,8,2010-12-01 08:26:00,2.75,{PLANTED_ID}.0,United Kingdom",
    # Seven fields: quarantined as malformed_line, the id only in the raw line.
    f"999002,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,{PLANTED_ID}.0,United Kingdom",
]


def environment(**changes: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PERSONAS_TOMBSTONE_KEY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(changes)
    return env


def personas(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(PERSONAS), *args], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=timeout, env=env or environment())


def personas_here(*args: str) -> subprocess.CompletedProcess:
    """The command in this process, on the shared session (tests/cli_runner.py), with the
    environment the processes get: for steps whose point is not the process itself."""
    return run_personas(*args, cwd=REPO_ROOT, env={"PERSONAS_TOMBSTONE_KEY": None})


def start(*args: str) -> subprocess.Popen:
    # Its own process group, so a kill reaches the Spark JVM it starts too.
    return subprocess.Popen([str(PERSONAS), *args], cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment(), start_new_session=True)


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(conf file, work dir, config) of the module's work dir."""
    root = tmp_path_factory.mktemp("faults-ops")
    landing = copy_landing_slice(root / "landing", days=3)
    write_landing_file(landing, "planted.csv", PLANTED_LINES)
    conf = root / "ops.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "ingest": {"landing": str(landing)},
                                    "sampling": {"budget": 0.3, "rounds": 1}}))
    workdir = root / "work"
    return conf, workdir, load_config(conf, workdir=str(workdir))


def common(site) -> list[str]:
    conf, workdir, _ = site
    return ["--conf", str(conf), "--workdir", str(workdir)]


@pytest.fixture(scope="module")
def concurrent_first_runs(site):
    """Two `personas run` on a fresh work dir: the second starts while the first holds the lock."""
    _, workdir, _ = site
    first = start("run", *common(site))
    deadline = time.monotonic() + 120
    while not (workdir / "personas.lock").exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    started = time.monotonic()
    second = personas("run", *common(site))
    second_seconds = time.monotonic() - started
    first_out, first_err = first.communicate(timeout=900)
    return first.returncode, first_err, second, second_seconds


def test_a_second_writer_exits_5_at_once_and_the_first_completes(concurrent_first_runs):
    first_code, first_err, second, second_seconds = concurrent_first_runs
    assert second.returncode == 5, second.stderr[-2000:]
    assert "another job writes this work dir" in second.stderr and "--wait" in second.stderr
    assert second_seconds < 30, "the loser must not start Spark or MLflow before giving up"
    assert first_code == 0, first_err[-3000:]


def test_a_first_run_logs_each_stage_and_a_summary_with_few_foreign_lines(concurrent_first_runs):
    first_code, first_err, second, _ = concurrent_first_runs
    assert first_code == 0, first_err[-3000:]
    # A fresh work dir: the MLflow store is created, the model registered for the first time.
    assert_quiet(first_err)
    assert_quiet(second.stderr)
    for stage in ("ingest took", "graph took", "round 1/1 labelling took", "round 1/1 propagation took",
                  "persona model fit took", "publishing took", "MLflow tracking took"):
        assert stage in first_err, stage
    assert "look: personas sql" in first_err and "ambiguous" in first_err


def test_wait_makes_a_second_writer_wait_for_the_holder(site, concurrent_first_runs):
    conf, workdir, _ = site
    hold_seconds = 6
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from persona_lib.config import load_config\n"
         "from persona_lib.lock import writer_lock\n"
         f"config = load_config({str(conf)!r}, workdir={str(workdir)!r})\n"
         "with writer_lock(config, 'test-holder'):\n"
         "    print('held', flush=True)\n"
         f"    time.sleep({hold_seconds})\n"],
        cwd=str(REPO_ROOT), stdout=subprocess.PIPE, text=True, env=environment())
    assert holder.stdout.readline().strip() == "held"
    held_since = time.monotonic()
    refused = personas("ingest", *common(site))
    waited = personas("ingest", "--wait", *common(site))
    assert holder.wait(timeout=60) == 0
    assert refused.returncode == 5 and "test-holder" in refused.stderr
    assert waited.returncode == 0, waited.stderr[-2000:]
    assert_quiet(waited.stderr)
    assert time.monotonic() - held_since >= hold_seconds
    assert "waiting for the writer lock" in waited.stderr


@pytest.fixture(scope="module")
def planted_elsewhere(spark, site, concurrent_first_runs):
    """The planted customer also in an override and in the evaluation table, as a user would put it."""
    from persona_lib.labelling import add_overrides

    _, _, config = site
    add_overrides(spark, config, [{"customer_id": PLANTED_ID, "personas": ["Gardening Lover"],
                                   "author": "tests", "reason": "planted"}])
    row = spark.createDataFrame([(PLANTED_ID, ["Gardening Lover"], "llm", 0.2, "du", 1)], contracts.EVALUATION_PERSONAS)
    storage.overwrite(row, storage.resolve_tables(config).evaluation_personas, contracts.EVALUATION_PERSONAS)
    return config


@pytest.fixture(scope="module")
def killed_run(site, planted_elsewhere):
    """A `personas run` killed (SIGKILL, JVM included) once it has recorded itself as running."""
    run = start("run", *common(site))
    seen = []
    for line in run.stderr:
        seen.append(line)
        if "round 1/" in line:
            break
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert any("round 1/" in line for line in seen), "".join(seen)[-3000:]
    return run.returncode


@pytest.fixture(scope="module")
def forgotten(site, killed_run):
    # Without recompute: a new run adds nothing to what this proves (tests/test_pipeline.py forgets with one).
    result = personas("forget", "--no-recompute", "--customer", f"{PLANTED_ID}.0", *common(site))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result.stderr)
    return last_json(result.stdout)


def test_the_next_job_marks_a_killed_run_abandoned(spark, site, killed_run, forgotten):
    _, _, config = site
    statuses = {r["status"] for r in storage.resolve_tables(config).runs.read(spark).select("status").collect()}
    assert "running" not in statuses
    assert "abandoned" in statuses


def test_forget_leaves_no_trace_of_the_customer_in_any_file(spark, site, forgotten):
    _, workdir, config = site
    assert forgotten["removed"]["purchase_events"] == 3
    assert forgotten["removed"]["quarantine"] == 1  # the malformed line, matched by its raw text
    assert forgotten["removed"]["evaluation_personas"] == 1 and forgotten["removed"]["persona_overrides"] == 1
    hits = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file() and _mentions(p, PLANTED_ID)]
    assert hits == []


def test_the_tombstone_is_a_keyed_hash(spark, site, forgotten):
    _, _, config = site
    hashes = {r["customer_hash"] for r in storage.resolve_tables(config).tombstones.read(spark).collect()}
    assert hashes == {hmac.new(DEMO_KEY, PLANTED_ID.encode(), hashlib.sha256).hexdigest()}
    assert hashlib.sha256(PLANTED_ID.encode()).hexdigest() not in hashes


def test_forget_without_a_key_is_exit_3_naming_the_variable(tmp_path):
    conf = tmp_path / "nokey.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "forget": {"demo_key": ""}}))
    result = personas("forget", "--customer", "17850", "--conf", str(conf), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "PERSONAS_TOMBSTONE_KEY" in result.stderr


@pytest.fixture(scope="module")
def forgotten_without_recompute(spark, site, forgotten):
    _, _, config = site
    current = storage.resolve_tables(config).customer_personas.read(spark).where(F.col("source") == "llm") \
        .orderBy("customer_id").limit(2).collect()
    gone, kept = current[0]["customer_id"], current[1]["customer_id"]
    result = personas_here("forget", "--no-recompute", "--customer", gone, *common(site))
    assert result.returncode == 0, result.stderr[-3000:]
    return gone, kept, last_json(result.stdout)


def test_forget_without_recompute_keeps_the_published_run_readable(site, forgotten_without_recompute):
    gone, kept, summary = forgotten_without_recompute
    assert summary["republished_run"] and summary["recomputed"] is False
    still_there = personas("query", "--customer", kept, "--format", "table", *common(site))
    assert still_there.returncode == 0, still_there.stderr[-3000:]
    answer = last_json(still_there.stdout)
    assert answer["found"] and answer["answered_by"] == "customer" and answer["rows"], \
        "the kept customer's personas are served"
    assert still_there.stdout.splitlines()[0].split() == ["$p", "persona", "why"]
    assert_quiet(still_there.stderr)


def test_query_answers_found_false_for_an_unknown_customer_and_products(site, forgotten_without_recompute):
    unknown = personas_here("query", "--customer", "1", "--products", "NO-SUCH-PRODUCT", "--format", "table",
                            *common(site))
    assert unknown.returncode == 0, unknown.stderr[-3000:]
    assert last_json(unknown.stdout) == {
        "found": False, "answered_by": None, "customer_id": "1", "customer_found": False,
        "unknown_products": ["NO-SUCH-PRODUCT"], "rows": []}
    assert unknown.stdout.splitlines()[0].startswith("not found: customer 1 and products NO-SUCH-PRODUCT")
    assert_quiet(unknown.stderr)


def test_verify_passes_on_a_clean_work_dir(site, forgotten_without_recompute):
    result = personas("verify", *common(site))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_quiet(result.stderr)
    report = last_json(result.stdout)
    assert report["ok"] and report["violations"] == []
    assert set(report["checks"]) == {"manifest_balance", "kept_and_quarantined", "runs_readable",
                                     "no_tombstoned_customer"}


def test_verify_lists_a_planted_violation(spark, site, forgotten_without_recompute):
    _, _, config = site
    event = storage.resolve_tables(config).purchase_events.read(spark).orderBy("event_id").first()
    planted = spark.createDataFrame(
        [(event["source_file"], event["line_number"], event["content_sha256"], "duplicate_line", "planted by the test", "x",
          None, None, None, None, None, None, None, None, event["ingested_at"])], contracts.QUARANTINE)
    storage.append(planted, storage.resolve_tables(config).quarantine, contracts.QUARANTINE)
    result = personas_here("verify", *common(site))
    assert result.returncode == 1
    report = last_json(result.stdout)
    assert report["checks"]["kept_and_quarantined"] == "1 violation(s)"
    # verify matches records by content hash and line and names them by file and line, as users find them.
    assert any(f"{event['source_file']}:{event['line_number']}" in v for v in report["violations"])


def test_an_answer_with_extra_keys_is_repaired_with_a_detail():
    taxonomy = load_taxonomy(REPO_ROOT / "conf" / "personas" / "online_retail.yaml")
    persona = taxonomy.names[0]
    raw = json.dumps({"personas": [persona], "note": "<script>alert(1)</script>"})
    personas_, status, detail = validate_answer(raw, taxonomy)
    assert (personas_, status) == ([persona], REPAIRED)
    assert "note" in detail


def _mentions(path: Path, customer_id: str) -> bool:
    """The id in the file's bytes, or in a string of a parquet file (which may be compressed)."""
    if customer_id.encode() in path.read_bytes():
        return True
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return any(customer_id in str(v) for column in table.columns for v in column.to_pylist())
    return False
