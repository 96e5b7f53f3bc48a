"""Labels without an LLM, through the installed command: ``personas label --from-file`` and
``personas override add|remove`` on a two-day ingested slice (one ingest for the module).

Every behaviour runs ``.venv/bin/personas`` as a subprocess; the tables are read back with the
test session's Spark. Each command that writes starts its own Spark, so there are few of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib import storage
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.ingest import ingest
from tests.cli_runner import run_personas
from tests.conftest import TEST_CONF
from tests.console import assert_quiet
from tests.landing_files import copy_landing_slice

PERSONAS = Path(sys.executable).with_name("personas")
GARDEN, PARTY, TEA = "Gardening Lover", "Party and Event Planners", "Tea and Coffee Lover"


def personas(*args: str) -> subprocess.CompletedProcess:
    """A ``personas`` process: for what only a process shows (no Spark start, the JVM's stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([str(PERSONAS), *args], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=600, env=env)


def personas_here(*args: str) -> subprocess.CompletedProcess:
    """The command in this process, on the shared session (tests/cli_runner.py)."""
    return run_personas(*args, cwd=REPO_ROOT)


def last_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(spark, tmp_path_factory):
    """(common options, config, five ingested customer ids) of a two-day slice.

    Set up and read back in-process (the test session's Spark); what is proven runs through
    the command, one Spark per call.
    """
    root = tmp_path_factory.mktemp("labels-cli")
    landing = copy_landing_slice(root / "landing", days=2)
    conf = root / "labels.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF), "ingest": {"landing": str(landing)}}))
    workdir = root / "work"
    config = load_config(conf, workdir=str(workdir))
    ingest(spark, config)
    customers = [r["customer_id"] for r in storage.resolve_tables(config).purchase_events.read(spark)
                 .select("customer_id").distinct().orderBy("customer_id").limit(5).collect()]
    return ["--conf", str(conf), "--workdir", str(workdir), "--quiet"], config, customers


def table(spark, site, key: str):
    return storage.resolve_tables(site[1]).get(key).read(spark)


def write_labels(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["customer_id,personas", *rows]) + "\n")
    return path


def test_a_bad_labels_file_is_exit_3_naming_file_line_and_field_before_spark_starts(spark, site, tmp_path):
    common, config, (a, b, c, d, _) = site
    labels = write_labels(tmp_path / "bad_labels.csv", [
        f"{a},{GARDEN}",
        f"{b},Gardning Lover",              # line 3: a misspelling, not mapped
        "12x45,",                            # line 4: not a customer id
        f"{c},{TEA}",                        # line 5 and 6: two answers for one customer
        f"{c}.0,{PARTY}",
        f'{d},"{GARDEN}|Unrepresentable"',   # line 7: none of these next to a persona
    ])
    started = time.monotonic()
    result = personas("label", "--from-file", str(labels), *common)
    assert result.returncode == 3, result.stderr[-3000:]
    assert time.monotonic() - started < 20, "a bad file must fail before Spark starts"
    error = result.stderr
    assert "4 problem(s)" in error and "nothing was written" in error
    for line, field, text in [(3, "personas", "did you mean 'Gardening Lover'"), (4, "customer_id", "'12x45'"),
                              (5, "customer_id", "different personas on lines 5, 6"),
                              (7, "personas", "cannot stand next to personas")]:
        assert f"labels file {labels} line {line}, field {field}: " in error, error
        assert text in error
    assert not storage.resolve_tables(config).persona_labels.exists(spark)


@pytest.fixture(scope="module")
def loaded(site, tmp_path_factory):
    """A file with "none of these" rows loaded, then an LLM labelling round over everyone."""
    common, _, (a, b, c, _, _) = site
    labels = write_labels(tmp_path_factory.mktemp("labels") / "team_labels.csv", [
        f"{a},{GARDEN}|{TEA}",
        f"{b},",                     # empty: none of these
        f"{c}.0,unrepresentable",    # the id as the landing files write it; none of these
        f"{a},{TEA}|{GARDEN}",       # the same answer again is not a conflict
    ])
    from_file = personas("label", "--from-file", str(labels), *common)
    # Every ingested customer goes to the replay labeller: the file's three must not.
    from_llm = personas_here("label", "--labeller", "replay", "--budget", "100000", *common)
    assert_quiet(from_file.stderr)  # a process: the JVM's and libraries' lines count too
    assert_quiet(from_llm.stderr)
    return last_json(from_file), last_json(from_llm)


def test_file_labels_land_with_source_file_and_none_of_these_as_unrepresentable(spark, site, loaded):
    _, _, (a, b, c, _, _) = site
    summary, _ = loaded
    assert (summary["labels"], summary["none_of_these"], summary["written"]) == (3, 2, 3)
    assert summary["source"] == "file:team_labels.csv"
    assert GARDEN not in summary["personas_without_seed"] and PARTY in summary["personas_without_seed"]
    expected = spark.createDataFrame([
        (a, [GARDEN, TEA], "ok", "file:team_labels.csv"),
        (b, [], "unrepresentable", "file:team_labels.csv"),
        (c, [], "unrepresentable", "file:team_labels.csv"),
    ], "customer_id string, personas array<string>, status string, source string")
    stored = table(spark, site, "persona_labels").where(F.col("customer_id").isin(a, b, c))
    assert_df_equality(stored.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True)


def test_a_labelling_round_never_asks_about_nor_overwrites_file_labels(spark, site, loaded):
    _, _, (a, b, c, _, _) = site
    summary, llm = loaded
    # The file's customers count against the budget like any labelled customer, so the round
    # draws everyone else and never re-sends them.
    assert llm["requested"] == llm["llm_calls"] == llm["customers"] - 3
    labels = table(spark, site, "persona_labels")
    assert labels.where(F.col("customer_id").isin(a, b, c)).where(F.col("run_id") != summary["run_id"]).count() == 0
    assert labels.where(F.col("run_id") == llm["run_id"]).count() == llm["customers"] - 3


def test_override_add_and_remove_round_trip_with_author_and_reason(spark, site):
    common, config, (_, _, _, d, _) = site
    added = last_json(personas_here("override", "add", "--customer", f"{d}.0", "--personas", f"{PARTY}|gardening lovers",
                               "--author", "ana", "--reason", "store visit", *common))
    assert (added["customer_id"], added["personas"]) == (d, [PARTY, GARDEN])
    overrides = table(spark, site, "persona_overrides").select("customer_id", "personas", "author", "reason")
    assert [r.asDict() for r in overrides.collect()] == [
        {"customer_id": d, "personas": [PARTY, GARDEN], "author": "ana", "reason": "store visit"}]

    removed = last_json(personas_here("override", "remove", "--customer", d, "--author", "bo",
                                 "--reason", "wrong customer", *common))
    assert removed["removed"] == 1
    assert table(spark, site, "persona_overrides").count() == 0
    notes = [json.loads(r["userMetadata"]) for r in
             storage.resolve_tables(config).persona_overrides.delta(spark).history()
             .where(F.col("userMetadata").isNotNull()).orderBy("version").collect()]
    assert notes == [{"action": "override add", "authors": ["ana"], "reasons": ["store visit"]},
                     {"action": "override remove", "authors": ["bo"], "reasons": ["wrong customer"]}]


def test_an_override_naming_no_persona_of_the_taxonomy_is_exit_3_before_spark(site):
    common, _, (_, _, _, d, _) = site
    started = time.monotonic()
    result = personas("override", "add", "--customer", d, "--personas", "Hacker", "--author", "ana",
                      "--reason", "x", *common)
    assert result.returncode == 3
    assert time.monotonic() - started < 20
    assert "--personas: 'Hacker' is not a persona of taxonomy 'online_retail'" in result.stderr
