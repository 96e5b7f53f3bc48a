"""Labels without an LLM, in process: the checks that need the ingested customers, reloads,
tables as a source, and "none of these" as a label the model reads as negative everywhere.
(tests/test_labels_cli.py proves the command line on an ingested slice.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.errors import InputError
from persona_lib.labelling import add_overrides
from persona_lib.labelling.file_labels import load_labels_file, load_labels_table, personas_without_seed
from persona_lib.persona_model import label_grid, training_labels
from persona_lib.taxonomy import load_taxonomy

GARDEN, TEA = "Gardening Lover", "Tea and Coffee Lover"
CUSTOMERS = ("12346", "12347", "12350")


@pytest.fixture
def ingested(spark, config):
    """The config, with purchase_events holding one event of each of CUSTOMERS."""
    at = dt.datetime(2011, 1, 18)
    rows = [(f"e{c}", c, "23166", "JAR", "536365", 1.0, 1.0, at, "United Kingdom", "f.csv", i + 2, None, at)
            for i, c in enumerate(CUSTOMERS)]
    events = spark.createDataFrame(rows, contracts.PURCHASE_EVENTS)
    storage.overwrite(events, storage.resolve_tables(config).purchase_events, contracts.PURCHASE_EVENTS)
    return config


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["customer_id,personas", *rows]) + "\n")
    return path


def stored(spark, config):
    labels = storage.resolve_tables(config).persona_labels
    return labels.read(spark).select("customer_id", "personas", "status", "source")


def test_a_customer_not_in_purchase_events_is_an_error_naming_the_line_and_nothing_is_written(
        spark, ingested, tables, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", [f"12346,{GARDEN}", "77777,"])
    with pytest.raises(InputError, match=r"labels\.csv line 3, field customer_id: customer 77777 is not in "
                                         r"purchase_events"):
        load_labels_file(spark, ingested, tables, labels, run_id="f1")
    assert not tables.persona_labels.exists(spark)


def test_reloading_a_file_writes_nothing_and_a_changed_answer_replaces_only_its_customer(
        spark, ingested, tables, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", [f"12346,{GARDEN}", "12347,"])
    first = load_labels_file(spark, ingested, tables, labels, run_id="f1")
    again = load_labels_file(spark, ingested, tables, labels, run_id="f2")
    assert (again["written"], again["unchanged"]) == (0, 2)
    assert again["tables"]["persona_labels"]["version"] == first["tables"]["persona_labels"]["version"]

    write_csv(labels, [f"12346,{GARDEN}|{TEA}", "12347,"])
    changed = load_labels_file(spark, ingested, tables, labels, run_id="f3")
    assert (changed["written"], changed["unchanged"]) == (1, 1)
    expected = spark.createDataFrame([
        ("12346", [GARDEN, TEA], "ok", "file:labels.csv"),
        ("12347", [], "unrepresentable", "file:labels.csv"),
    ], "customer_id string, personas array<string>, status string, source string")
    assert_df_equality(stored(spark, ingested), expected, ignore_row_order=True, ignore_nullable=True)


def test_a_table_of_labels_loads_like_a_file_and_its_problems_name_the_customer(spark, ingested, tables, tmp_path):
    good = spark.createDataFrame([("12346", [GARDEN]), ("12350", [])], "customer_id string, personas array<string>")
    good.write.format("delta").save(str(tmp_path / "good"))
    summary = load_labels_table(spark, ingested, tables, str(tmp_path / "good"), run_id="t1")
    assert (summary["labels"], summary["none_of_these"]) == (2, 1)
    assert {r["source"] for r in stored(spark, ingested).collect()} == {f"file:{tmp_path / 'good'}"}

    bad = spark.createDataFrame([("12347", "Hacker")], "customer_id string, personas string")
    bad.write.format("delta").save(str(tmp_path / "bad"))
    with pytest.raises(InputError, match=r"customer_id '12347', field personas: 'Hacker' is not a persona"):
        load_labels_table(spark, ingested, tables, str(tmp_path / "bad"), run_id="t2")


def test_none_of_these_overrides_and_file_labels_are_negative_for_every_persona_in_the_model(
        spark, ingested, tables, tmp_path):
    add_overrides(spark, ingested, [
        {"customer_id": "12346", "personas": [], "author": "ana", "reason": "fits none"},
        {"customer_id": "12347", "personas": ["Unrepresentable"], "author": "ana"},
    ])
    load_labels_file(spark, ingested, tables, write_csv(tmp_path / "labels.csv", ["12350,"]), run_id="f1")
    labels = training_labels(spark, tables, ingested.forget)
    assert sorted((r["customer_id"], r["personas"]) for r in labels.collect()) == [
        ("12346", []), ("12347", []), ("12350", [])]
    grid = label_grid(labels, [GARDEN, TEA])
    assert grid.count() == 6 and grid.where(F.col("label") != 0.0).count() == 0


def test_personas_no_label_has_are_listed_in_taxonomy_order(config):
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    missing = personas_without_seed(taxonomy, {GARDEN: 3, TEA: 0})
    assert missing == [name for name in taxonomy.names if name != GARDEN]


def test_a_run_with_budget_zero_and_no_label_is_an_input_error_before_it_starts(spark, ingested, tables):
    from persona_lib.pipeline import run_pipeline

    with pytest.raises(InputError, match="sampling.budget is 0 .* no customer has a label"):
        run_pipeline(spark, ingested.replace("sampling", budget=0))
    assert not tables.runs.exists(spark)
