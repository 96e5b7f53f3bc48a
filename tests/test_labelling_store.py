"""label_customers end to end with the replay backend and the real recorded GPT-4-Turbo
answers: statuses, the label store's cache, forgotten and overridden customers, the failure
rate, and the labels propagation reads."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.errors import InputError, PersonasError
from persona_lib.labelling import add_overrides, label_customers, labels_for_propagation
from persona_lib.tombstones import customer_hash, tombstone_key

EVENTS_SCHEMA = "customer_id string, product_id string, product_title string, quantity int, event_ts timestamp"
# Real Online Retail customers: 12346 and 12347 have recorded answers, 12350's is
# "Unrepresentable"; 99999 has none.
CUSTOMERS = ("12346", "12347", "12350", "99999")
LABEL_COLUMNS = "customer_id string, status string, personas array<string>"


def events(spark, extra=()):
    rows = [(c, "23166", "MEDIUM CERAMIC TOP STORAGE JAR", 74215, dt.datetime(2011, 1, 18))
            for c in CUSTOMERS] + list(extra)
    return spark.createDataFrame(rows, EVENTS_SCHEMA)


def sample(spark, ids=CUSTOMERS):
    return spark.createDataFrame([(c,) for c in ids], "customer_id string")


def stored_labels(spark, config):
    return storage.resolve_tables(config).persona_labels.read(spark).select("customer_id", "status", "personas")


def test_replay_labels_with_the_recorded_answers_and_reuses_them_until_history_changes(spark, config, tables):
    summary = label_customers(spark, config, tables, sample(spark), events(spark), run_id="r1")
    expected = spark.createDataFrame([
        ("12346", "ok", ["Collector of Unique and Novelty Items"]),
        ("12347", "ok", ["Vintage and Retro Enthusiast", "Crafting and DIY Hobbyist",
                         "Kitchen and Culinary Enthusiast", "Seasonal and Festive Decorator",
                         "Tea and Coffee Lover", "Collector of Unique and Novelty Items",
                         "Baking and Confectionery Fans"]),
        ("12350", "unrepresentable", []),
        ("99999", "no_answer", []),
    ], LABEL_COLUMNS)
    assert_df_equality(stored_labels(spark, config), expected, ignore_row_order=True, ignore_nullable=True)
    assert summary["source"] == "replay:gpt-4-turbo"
    assert (summary["requested"], summary["llm_calls"], summary["cache_hits"]) == (4, 4, 0)
    assert summary["statuses"] == {"ok": 2, "repaired": 0, "unrepresentable": 1, "no_answer": 1, "failed": 0}
    assert summary["tables"]["persona_labels"]["location"].endswith("persona_labels")

    # A second run asks nobody, unless the customer's history changed.
    again = label_customers(spark, config, tables, sample(spark), events(spark), run_id="r2")
    assert (again["llm_calls"], again["cache_hits"], again["cache_hit_rate"]) == (0, 4, 1.0)
    bought_more = events(spark, [("12346", "23167", "SMALL CERAMIC TOP STORAGE JAR", 1,
                                  dt.datetime(2011, 2, 1))])
    changed = label_customers(spark, config, tables, sample(spark), bought_more, run_id="r3")
    assert (changed["llm_calls"], changed["cache_hits"]) == (1, 3)
    runs = tables.persona_labels.read(spark).select("customer_id", "run_id")
    assert {r["customer_id"] for r in runs.where(F.col("run_id") == "r3").collect()} == {"12346"}


def test_forgotten_and_overridden_customers_are_never_asked(spark, config, tables):
    tombstone = customer_hash("12347", tombstone_key(config.forget))
    tombstones = spark.createDataFrame([(tombstone,)], "customer_hash string") \
        .withColumn("forgotten_at", F.current_timestamp())
    storage.overwrite(tombstones, tables.tombstones, contracts.TOMBSTONES)
    add_overrides(spark, config, [{"customer_id": "12346", "personas": ["gardening lover"],
                                   "author": "ana", "reason": "store visit"}])
    summary = label_customers(spark, config, tables, sample(spark), events(spark), run_id="r1")
    assert summary["excluded"] == {"forgotten": 1, "overridden": 1, "from_file": 0}
    assert summary["llm_calls"] == 2
    assert sorted(r["customer_id"] for r in stored_labels(spark, config).collect()) == ["12350", "99999"]


def test_propagation_reads_ok_labels_with_overrides_winning(spark, config, tables):
    label_customers(spark, config, tables, sample(spark), events(spark), run_id="r1")
    add_overrides(spark, config, [{"customer_id": "12347", "personas": ["Gardening Lover"], "author": "ana"}])
    expected = spark.createDataFrame([
        ("12346", "Collector of Unique and Novelty Items"), ("12347", "Gardening Lover"),
    ], "customer_id string, persona string")
    assert_df_equality(labels_for_propagation(spark, tables, config.forget), expected, ignore_row_order=True,
                       ignore_nullable=True)


def test_an_override_with_an_unknown_persona_is_rejected(spark, config):
    with pytest.raises(InputError, match="'Hacker' is not a persona"):
        add_overrides(spark, config, [{"customer_id": "1", "personas": ["Hacker"], "author": "ana"}])


def test_manual_labeller_serves_the_teams_assignments(spark, config, tables):
    add_overrides(spark, config, [{"customer_id": "12350", "personas": ["Gardening Lover"], "author": "ana"},
                                  {"customer_id": "12347", "personas": "", "author": "ana"}])
    summary = label_customers(spark, config, tables, sample(spark, ("12350", "12347", "99999")), events(spark),
                              run_id="m1", labeller="manual")
    expected = spark.createDataFrame([("12350", "ok", ["Gardening Lover"]), ("12347", "unrepresentable", []),
                                      ("99999", "no_answer", [])], LABEL_COLUMNS)
    assert_df_equality(stored_labels(spark, config), expected, ignore_row_order=True, ignore_nullable=True)
    assert summary["source"] == "manual"


def test_too_many_failed_answers_fail_the_run_after_storing_the_rest(spark, config, tables):
    recorded = spark.createDataFrame([
        ("12346", '{"personas": ["Gardening Lover"]}', "gpt-4-turbo"),
        ("12347", '{"personas": ["Gardening', "gpt-4-turbo"),
        ("12350", '{"personas": ["Hacker"]}', "gpt-4-turbo"),
    ], contracts.RECORDED_ANSWERS)
    storage.overwrite(recorded, tables.recorded_answers, contracts.RECORDED_ANSWERS)
    with pytest.raises(PersonasError) as error:
        label_customers(spark, config, tables, sample(spark, ("12346", "12347", "12350")), events(spark), run_id="f1")
    assert "failed for 66.7% of 3 customers" in str(error.value)
    assert "12347: bad JSON" in str(error.value)
    assert {r["customer_id"]: r["status"] for r in stored_labels(spark, config).collect()} == {
        "12346": "ok", "12347": "failed", "12350": "failed"}
    lenient = config.replace("labelling", max_failure_rate=1.0)
    retried = label_customers(spark, lenient, tables, sample(spark, ("12346", "12347", "12350")), events(spark),
                              run_id="f2")
    assert (retried["cache_hits"], retried["llm_calls"]) == (1, 2)
