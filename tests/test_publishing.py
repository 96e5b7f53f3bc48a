"""Published persona tables: their invariants, the ambiguity rule, the why, and atomic runs."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import contracts, publishing
from persona_lib.config import PublishingConfig
from persona_lib.publishing import PublishInputs

NOW = datetime(2026, 1, 1)
EPSILON = 0.01


SCORES = "customer_id string, persona string, score double, probability double, probability_low double, " \
         "probability_high double, threshold double, products long"


@pytest.fixture
def inputs(spark):
    """c1 certain, c2 a threshold inside its epsilon interval, c3 LLM-labelled, c4 overridden,
    c5 no purchases, c6 one product only (thin evidence)."""
    affinity = spark.createDataFrame(
        [("c1", "Gardener", 0.30), ("c1", "Baker", 0.10), ("c2", "Gardener", 0.200), ("c2", "Baker", 0.195),
         ("c3", "Gardener", 0.05), ("c3", "Baker", 0.20), ("c4", "Baker", 0.40)],
        contracts.CUSTOMER_AFFINITY)
    products = spark.createDataFrame([("p1", 0.5), ("p2", 0.1)], "product_id string, score double") \
        .withColumn("persona", F.lit("Gardener")).select("product_id", "persona", "score")
    edges = spark.createDataFrame([("c1", "p1"), ("c1", "p2"), ("c2", "p1"), ("c2", "p2"), ("c3", "p2"),
                                   ("c4", "p1"), ("c4", "p2"), ("c6", "p1")],
                                  "customer_id string, product_id string")
    scores = spark.createDataFrame(
        [("c1", "Gardener", 0.30, 0.80, 0.70, 0.90, 0.5, 2), ("c1", "Baker", 0.10, 0.30, 0.20, 0.35, 0.4, 2),
         ("c2", "Gardener", 0.20, 0.60, 0.45, 0.70, 0.5, 2), ("c2", "Baker", 0.195, 0.55, 0.50, 0.60, 0.4, 2),
         ("c6", "Gardener", 0.0, 0.30, 0.25, 0.35, 0.5, 1), ("c6", "Baker", 0.0, 0.20, 0.10, 0.30, 0.4, 1),
         ("c3", "Gardener", 0.05, 0.9, 0.9, 0.9, 0.5, 1), ("c4", "Baker", 0.4, 0.9, 0.9, 0.9, 0.4, 2)],
        SCORES)
    return PublishInputs(
        run_id="run-1",
        customers=spark.createDataFrame([(c,) for c in ("c1", "c2", "c3", "c4", "c5", "c6")], "customer_id string"),
        edges=edges,
        customer_affinity=affinity,
        product_affinity=products,
        llm_labels=spark.createDataFrame([("c3", ["Gardener", "Baker"], '{"c3": ["Gardener", "Baker"]}'),
                                          ("c4", ["Gardener"], "{}")],
                                         "customer_id string, personas array<string>, raw_response string"),
        overrides=spark.createDataFrame([("c4", ["Baker"])], "customer_id string, personas array<string>"),
        products=spark.createDataFrame([("p1", "Rake"), ("p2", "Seeds")], "product_id string, title string"),
        epsilon=EPSILON,
        persona_scores=scores,
    )


def publish(spark, tables, inputs, min_products=2):
    return publishing.publish(spark, tables, inputs, NOW, min_products=min_products, settings=PublishingConfig())


def published(spark, tables, inputs):
    versions = publish(spark, tables, inputs)
    return {k: tables.get(k).read(spark, version=v["version"]) for k, v in versions.items()}


def test_propagated_rows_carry_the_model_probability_and_the_raw_score_ranked_by_probability(spark, tables, inputs):
    affinity = published(spark, tables, inputs)["persona_affinity"]
    actual = affinity.where("source = 'propagated' and customer_id in ('c1', 'c2')") \
        .select("customer_id", "persona", "probability", "score", "rank")
    expected = spark.createDataFrame(
        [("c1", "Gardener", 0.80, 0.30, 1), ("c1", "Baker", 0.30, 0.10, 2),
         ("c2", "Gardener", 0.60, 0.20, 1), ("c2", "Baker", 0.55, 0.195, 2)],
        "customer_id string, persona string, probability double, score double, rank int")
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_labelled_customers_keep_their_labels_and_overrides_win(spark, tables, inputs):
    tables = published(spark, tables, inputs)
    summary = tables["customer_personas"]
    actual = summary.where("source != 'propagated'").select("customer_id", "personas", "source", "is_ambiguous")
    expected = spark.createDataFrame(
        [("c3", ["Gardener", "Baker"], "llm", False), ("c4", ["Baker"], "override", False)],
        "customer_id string, personas array<string>, source string, is_ambiguous boolean")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    labelled = tables["persona_affinity"].where("source != 'propagated'").select("customer_id", "persona", "probability")
    assert sorted(tuple(r) for r in labelled.collect()) == [("c3", "Baker", 1.0), ("c3", "Gardener", 1.0),
                                                            ("c4", "Baker", 1.0)]


def test_personas_are_those_at_or_above_threshold_and_never_empty_with_evidence(spark, tables, inputs):
    summary = published(spark, tables, inputs)["customer_personas"]
    actual = summary.where("source = 'propagated'").select("customer_id", "personas", "confidence")
    expected = spark.createDataFrame(
        [("c1", ["Gardener"], 0.80), ("c2", ["Gardener", "Baker"], 0.575), ("c5", [], None), ("c6", ["Gardener"], 0.30)],
        "customer_id string, personas array<string>, confidence double")
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_ambiguous_exactly_when_the_certificate_or_the_evidence_rule_says_so(spark, tables, inputs):
    # c1: every interval clear of its threshold, 2 labelled co-buyers, 2 products: certain.
    # c2: Gardener's [0.45, 0.70] holds its threshold 0.5: the certificate cannot decide.
    # c5: nothing bought, nobody labelled reached. c6: one product < min_products 2.
    summary = published(spark, tables, inputs)["customer_personas"]
    actual = summary.where("source = 'propagated'").select("customer_id", "is_ambiguous")
    expected = spark.createDataFrame([("c1", False), ("c2", True), ("c5", True), ("c6", True)],
                                     "customer_id string, is_ambiguous boolean")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize("broadcast_mib", [64, 0], ids=["sketches broadcast", "sketches joined by product"])
def test_labelled_neighbours_are_exact_when_few_and_within_the_sketch_error_when_many(spark, broadcast_mib):
    # "small" shares one product with 3 labelled buyers; "big" shares products with 3,000.
    pairs = [("small", "p0")] + [(f"l{i}", "p0") for i in range(3)]
    pairs += [("big", f"q{i % 10}") for i in range(10)] + [(f"m{i}", f"q{i % 10}") for i in range(3000)]
    edges = spark.createDataFrame(pairs, "customer_id string, product_id string").distinct()
    labels = spark.createDataFrame([(f"l{i}",) for i in range(3)] + [(f"m{i}",) for i in range(3000)] + [("big",)],
                                   "customer_id string")
    counts = {r["customer_id"]: r["labelled_neighbours"]
              for r in publishing.labelled_neighbours(edges, labels, 8, broadcast_mib).where("customer_id IN ('small', 'big')").collect()}
    assert counts["small"] == 3
    # lgConfigK 8: relative standard error 1.04 / 16 = 6.5%; 4 of them is far outside chance.
    assert abs(counts["big"] - 3000) <= 0.26 * 3000


def test_labelled_neighbours_are_the_same_whether_the_sketches_are_broadcast_or_joined(spark):
    rng = random.Random(11)
    pairs = sorted({(f"c{u}", f"p{int(rng.random() ** 2 * 60)}") for u in range(400) for _ in range(rng.randrange(1, 9))})
    edges = spark.createDataFrame(pairs, "customer_id string, product_id string")
    labels = spark.createDataFrame([(f"c{u}",) for u in range(0, 400, 5)], "customer_id string")

    broadcast = publishing.labelled_neighbours(edges, labels, 10, broadcast_mib=64)
    joined = publishing.labelled_neighbours(edges, labels, 10, broadcast_mib=0)
    assert broadcast.count() == 400 and broadcast.where("labelled_neighbours > 0").count() > 300
    assert_df_equality(broadcast, joined, ignore_row_order=True)


def test_why_weights_are_shares_of_the_top_persona_and_co_buyers_are_distinct(spark, tables, inputs):
    summary = published(spark, tables, inputs)["customer_personas"]
    why = summary.where("customer_id = 'c1'").select(F.explode("why.products").alias("p")).select("p.*")
    expected = spark.createDataFrame([("p1", "Rake", 0.5 / 0.6), ("p2", "Seeds", 0.1 / 0.6)],
                                     "product_id string, title string, weight double")
    assert_approx_df_equality(why, expected, 1e-12, ignore_nullable=True)
    # c1's products reach c4 (p1, p2) and c3 (p2): two customers, not three product visits.
    neighbours = {r["customer_id"]: r["n"] for r in
                  summary.select("customer_id", F.col("why.labelled_neighbours").alias("n")).collect()}
    assert (neighbours["c1"], neighbours["c6"], neighbours["c5"], neighbours["c3"]) == (2, 1, 0, 1)
    evidence = {r["customer_id"]: r["e"] for r in summary.select("customer_id", F.col("why.llm_evidence").alias("e")).collect()}
    # The validated personas of labelled customers, never the raw answer text.
    assert evidence["c3"] == "Gardener, Baker" and evidence["c4"] == "Baker" and evidence["c1"] is None


def window_why(edges, top_persona, product_affinity, products, limit):
    """The why products as one SQL window over every edge: the definition, written the slow way."""
    contributions = (edges.join(top_persona, "customer_id").join(product_affinity, ["product_id", "persona"])
                     .where("score > 0").select("customer_id", "product_id", "score"))
    per_customer = Window.partitionBy("customer_id")
    best = per_customer.orderBy(F.desc("score"), F.asc("product_id"))
    top = (contributions.select("*", (F.col("score") / F.sum("score").over(per_customer)).alias("weight"),
                                F.row_number().over(best).alias("rank"))
           .where(F.col("rank") <= limit).join(products, "product_id", "left"))
    return top.select("customer_id", "rank", "product_id", "title", "weight")


def test_why_products_rank_every_customers_edges_as_a_window_over_them_would(spark, inputs):
    # Ties on score (the smaller product_id first), products with no title, products and
    # personas the affinities do not know, zero scores, more contributing products than the limit.
    rng = random.Random(7)
    personas = ["Gardener", "Baker", "Angler"]
    affinity = [(f"p{v:02d}", m, rng.choice([0.0, 0.1, 0.2, 0.25, rng.random()]))
                for v in range(40) for m in personas[:2]]
    edges = sorted({(f"c{u}", f"p{rng.randrange(45):02d}") for u in range(60) for _ in range(rng.randrange(1, 12))})
    top = [(f"c{u}", rng.choice(personas)) for u in range(58)]
    titles = [(f"p{v:02d}", None if v % 7 == 0 else f"title {v}") for v in range(45)]
    frames = dict(
        edges=spark.createDataFrame(edges, "customer_id string, product_id string"),
        product_affinity=spark.createDataFrame(affinity, "product_id string, persona string, score double"),
        products=spark.createDataFrame(titles, "product_id string, title string"))
    top_persona = spark.createDataFrame(top, "customer_id string, persona string")

    why = publishing.why_products(replace(inputs, **frames), top_persona, limit=3)
    actual = why.select("customer_id", F.posexplode("products").alias("position", "p")).select(
        "customer_id", (F.col("position") + 1).alias("rank"), "p.product_id", "p.title", "p.weight")
    expected = window_why(frames["edges"], top_persona, frames["product_affinity"], frames["products"], 3)
    assert expected.count() > 50 and expected.where("rank = 3").count() > 10  # the limit cuts some customers
    assert_approx_df_equality(actual, expected, 1e-12, ignore_row_order=True, ignore_nullable=True,
                              ignore_column_order=True)


def test_why_products_take_titles_from_a_delta_table_of_exactly_the_scored_products(spark, inputs, tmp_path):
    # The titles as a run reads them: a Delta table, through Arrow, holding exactly the scored
    # products, one title missing. (The quick evaluation once failed there on a read-only array.)
    frames = dict(
        edges=spark.createDataFrame([("c1", "p1"), ("c1", "p2"), ("c2", "p2")], "customer_id string, product_id string"),
        product_affinity=spark.createDataFrame([("p1", "Gardener", 0.5), ("p2", "Gardener", 0.1)],
                                               "product_id string, persona string, score double"))
    spark.createDataFrame([("p1", "Rake"), ("p2", None)], "product_id string, title string") \
        .write.format("delta").save(str(tmp_path / "products"))
    frames["products"] = spark.read.format("delta").load(str(tmp_path / "products"))
    top_persona = spark.createDataFrame([("c1", "Gardener"), ("c2", "Gardener")], "customer_id string, persona string")

    why = publishing.why_products(replace(inputs, **frames), top_persona, limit=3)
    expected = spark.createDataFrame(
        [("c1", [("p1", "Rake", 0.5 / 0.6), ("p2", None, 0.1 / 0.6)]), ("c2", [("p2", None, 1.0)])],
        publishing.WHY_SCHEMA)
    assert_approx_df_equality(why.orderBy("customer_id"), expected, 1e-12, ignore_nullable=True)


def test_readers_see_the_latest_complete_run_only(spark, config, tables, inputs):
    versions = publish(spark, tables, inputs)
    publishing.record_run(spark, tables.runs, "run-1", "complete", NOW, NOW,
                          {k: v["version"] for k, v in versions.items()})
    # A second run that writes its tables but crashes before its runs row says complete.
    crashed = PublishInputs(**{**inputs.__dict__, "run_id": "run-2"})
    publish(spark, tables, crashed)
    publishing.record_run(spark, tables.runs, "run-2", "running", NOW, None, {})

    current = publishing.read_current(spark, tables, "customer_personas")
    assert {r.run_id for r in current.select("run_id").distinct().collect()} == {"run-1"}
    views = publishing.register_views(spark, config)
    assert "personas.current_customer_personas" in views
    assert spark.sql("SELECT DISTINCT run_id FROM current_persona_affinity").first()[0] == "run-1"


def test_a_run_left_running_by_a_killed_job_is_abandoned_and_a_finished_one_kept(spark, config, tables):
    publishing.record_run(spark, tables.runs, "killed", "running", NOW, None, {})
    publishing.record_run(spark, tables.runs, "done", "complete", NOW, NOW, {})
    assert publishing.abandon_stale_runs(spark, tables.runs, config) == ["killed"]
    statuses = {r["run_id"]: r["status"] for r in tables.runs.read(spark).collect()}
    assert statuses == {"killed": "abandoned", "done": "complete"}
