"""Published persona tables: their invariants, the ambiguity rule, the why, and atomic runs."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from persona_lib import contracts, publishing, storage
from persona_lib.publishing import PublishInputs

NOW = datetime(2026, 1, 1)
EPSILON = 0.01


@pytest.fixture
def inputs(spark):
    """Four customers: c1 clear winner, c2 a near tie, c3 LLM-labelled, c4 overridden, c5 unreached."""
    affinity = spark.createDataFrame(
        [("c1", "Gardener", 0.30), ("c1", "Baker", 0.10), ("c2", "Gardener", 0.200), ("c2", "Baker", 0.195),
         ("c3", "Gardener", 0.05), ("c3", "Baker", 0.20), ("c4", "Baker", 0.40)],
        contracts.CUSTOMER_AFFINITY)
    products = spark.createDataFrame([("p1", 0.5), ("p2", 0.1)], "product_id string, score double") \
        .withColumn("persona", F.lit("Gardener")).select("product_id", "persona", "score")
    edges = spark.createDataFrame([("c1", "p1"), ("c1", "p2"), ("c2", "p1"), ("c3", "p2"), ("c4", "p2")],
                                  "customer_id string, product_id string")
    return PublishInputs(
        run_id="run-1",
        customers=spark.createDataFrame([(c,) for c in ("c1", "c2", "c3", "c4", "c5")], "customer_id string"),
        edges=edges,
        customer_affinity=affinity,
        product_affinity=products,
        llm_labels=spark.createDataFrame([("c3", ["Gardener", "Baker"], '{"c3": ["Gardener", "Baker"]}'),
                                          ("c4", ["Gardener"], "{}")],
                                         "customer_id string, personas array<string>, raw_response string"),
        overrides=spark.createDataFrame([("c4", ["Baker"])], "customer_id string, personas array<string>"),
        products=spark.createDataFrame([("p1", "Rake"), ("p2", "Seeds")], "product_id string, title string"),
        epsilon=EPSILON,
    )


def published(spark, config, inputs):
    versions = publishing.publish(spark, config, inputs, NOW)
    return {k: storage.table_ref(config, k).read(spark, version=v["version"]) for k, v in versions.items()}


def test_propagated_probabilities_sum_to_one_and_ranks_count_from_one(spark, config, inputs):
    affinity = published(spark, config, inputs)["persona_affinity"]
    actual = affinity.where("source = 'propagated'").select("customer_id", "persona", "probability", "rank")
    expected = spark.createDataFrame(
        [("c1", "Gardener", 0.75, 1), ("c1", "Baker", 0.25, 2),
         ("c2", "Gardener", 0.200 / 0.395, 1), ("c2", "Baker", 0.195 / 0.395, 2)],
        "customer_id string, persona string, probability double, rank int")
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_labelled_customers_keep_their_labels_and_overrides_win(spark, config, inputs):
    summary = published(spark, config, inputs)["customer_personas"]
    actual = summary.where("source != 'propagated'").select("customer_id", "personas", "source", "is_ambiguous")
    expected = spark.createDataFrame(
        [("c3", ["Gardener", "Baker"], "llm", False), ("c4", ["Baker"], "override", False)],
        "customer_id string, personas array<string>, source string, is_ambiguous boolean")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_margin_within_two_epsilon_is_ambiguous(spark, config, inputs):
    summary = published(spark, config, inputs)["customer_personas"]
    actual = summary.where("source = 'propagated'").select("customer_id", "personas", "is_ambiguous")
    expected = spark.createDataFrame(
        [("c1", ["Gardener", "Baker"], False), ("c2", ["Gardener", "Baker"], True), ("c5", [], True)],
        "customer_id string, personas array<string>, is_ambiguous boolean")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_why_lists_the_products_that_drive_the_top_persona(spark, config, inputs):
    summary = published(spark, config, inputs)["customer_personas"]
    why = summary.where("customer_id = 'c1'").select(F.explode("why.products").alias("p")).select("p.*")
    expected = spark.createDataFrame([("p1", "Rake", 0.25), ("p2", "Seeds", 0.05)],
                                     "product_id string, title string, weight double")
    assert_approx_df_equality(why, expected, 1e-12, ignore_nullable=True)
    evidence = summary.where("customer_id = 'c3'").select("why.llm_evidence").first()[0]
    assert "Gardener" in evidence


def test_readers_see_the_latest_complete_run_only(spark, config, inputs):
    versions = publishing.publish(spark, config, inputs, NOW)
    publishing.record_run(spark, config, "run-1", "complete", NOW, NOW,
                          {k: v["version"] for k, v in versions.items()})
    # A second run that writes its tables but crashes before its runs row says complete.
    crashed = PublishInputs(**{**inputs.__dict__, "run_id": "run-2"})
    publishing.publish(spark, config, crashed, NOW)
    publishing.record_run(spark, config, "run-2", "running", NOW, None, {})

    current = publishing.read_current(spark, config, "customer_personas")
    assert {r.run_id for r in current.select("run_id").distinct().collect()} == {"run-1"}
    views = publishing.register_views(spark, config)
    assert "personas.current_customer_personas" in views
    assert spark.sql("SELECT DISTINCT run_id FROM current_persona_affinity").first()[0] == "run-1"
