"""Evaluation: metrics on hand-made frames, the authors' F1 reproduced from the vendored
files, and the fold-based fit that never sees a held-out customer's own label."""

from __future__ import annotations

import math

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from persona_lib.errors import InputError
from persona_lib.evaluation import accuracy, data, metrics

SCORES_SCHEMA = "customer_id string, precision double, recall double, f1 double"


def test_set_scores_match_hand_computed_precision_recall_and_f1(spark):
    truth = spark.createDataFrame([("a", "X"), ("a", "Y"), ("b", "X"), ("c", "Z")], "customer_id string, persona string")
    predicted = spark.createDataFrame([("a", "X"), ("a", "Z"), ("a", "Z"), ("b", "X"), ("b", "Y"), ("b", "W")],
                                      "customer_id string, persona string")
    scores = metrics.set_scores(predicted, truth).orderBy("customer_id")
    expected = spark.createDataFrame([
        ("a", 1 / 2, 1 / 2, 2 * 1 / (2 + 2)),   # duplicate prediction counts once
        ("b", 1 / 3, 1.0, 2 * 1 / (3 + 1)),
        ("c", 0.0, 0.0, 0.0),                   # nothing predicted: scores 0
    ], SCORES_SCHEMA)
    assert_approx_df_equality(scores, expected, 1e-12, ignore_nullable=True)


def test_set_scores_only_score_the_given_customers(spark):
    truth = spark.createDataFrame([("a", "X"), ("b", "X")], "customer_id string, persona string")
    predicted = spark.createDataFrame([("a", "X"), ("b", "Y")], "customer_id string, persona string")
    evaluated = spark.createDataFrame([("b",)], "customer_id string")
    assert metrics.mean_scores(metrics.set_scores(predicted, truth, evaluated)) == {
        "f1": 0.0, "precision": 0.0, "recall": 0.0, "customers": 1}


def test_ranking_metrics_match_hand_computed_ndcg_and_f1(spark):
    recommended = spark.createDataFrame(
        [("a", "i1", 1), ("a", "i2", 2), ("a", "i3", 3), ("b", "i9", 1), ("b", "i4", 2)],
        "customer_id string, product_id string, rank int")
    relevant = spark.createDataFrame([("a", "i2"), ("a", "i3"), ("b", "i4"), ("c", "i1")],
                                     "customer_id string, product_id string")
    result = metrics.ranking_metrics(recommended, relevant, [2])
    ndcg_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))   # hit at rank 2 of 2 relevant
    ndcg_b = (1 / math.log2(3)) / 1.0                       # hit at rank 2 of 1 relevant
    f1_a = 2 * 0.5 * 0.5 / 1.0
    f1_b = 2 * 0.5 * 1.0 / 1.5
    assert result["ndcg"][2] == pytest.approx((ndcg_a + ndcg_b + 0.0) / 3)  # c: no list, 0
    assert result["f1"][2] == pytest.approx((f1_a + f1_b + 0.0) / 3)


def test_user_labels_drop_unrepresentable_customers_and_split_personas(spark, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("CustomerID,personas,author_uidx\n1,A|B,0\n2,Unrepresentable,1\n3, C ,2\n")
    labels = data.read_user_labels(spark, path).orderBy("customer_id", "persona")
    expected = spark.createDataFrame([("1", "A"), ("1", "B"), ("3", "C")], "customer_id string, persona string")
    assert_df_equality(labels, expected, ignore_nullable=True)


def test_a_label_file_with_an_empty_customer_id_is_an_input_error_naming_file_and_field(spark, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("CustomerID,personas,author_uidx\n1,A,0\n,B,1\n")
    with pytest.raises(InputError, match=r"labels\.csv.*CustomerID"):
        data.read_user_labels(spark, path)


def test_the_authors_20_percent_output_scores_its_published_f1(spark, config):
    truth = data.user_labels(spark, config)
    scores = accuracy.authors_accuracy(spark, config, 0.2, truth)
    assert round(scores["f1"], 3) == 0.660
    assert scores["labelled"] == 850


def test_the_authors_random_sampler_output_at_20_percent_scores_its_published_f1(spark, config):
    scores = accuracy.authors_accuracy(spark, config, 0.2, data.user_labels(spark, config), sampler="random")
    assert round(scores["f1"], 3) == 0.630


def test_there_is_no_authors_output_at_an_unpublished_budget_or_sampler(config):
    assert data.authors_output_path(config, 0.15) is None
    assert data.authors_output_path(config, 0.05, sampler="random") is None
    assert data.authors_output_path(config, 0.05).name == "dataset_MBA_5%_tri_graph_uidx2pidx_approach.csv.gz"


def test_recommendations_never_repeat_a_bought_item_and_personas_reorder_them(spark, config):
    from persona_lib.evaluation import recommend

    # Two taste groups: x-buyers (persona X) and y-buyers (persona Y), each over 4 items.
    rows = [(f"x{c}", f"xi{i}") for c in range(6) for i in range(4) if (c + i) % 4 != 0] + \
           [(f"y{c}", f"yi{i}") for c in range(6) for i in range(4) if (c + i) % 4 != 0] + [("x0", "yi0")]
    pairs = spark.createDataFrame(rows, "customer_id string, product_id string")
    personas = spark.createDataFrame([(f"x{c}", "X") for c in range(6)] + [(f"y{c}", "Y") for c in range(6)],
                                     "customer_id string, persona string")
    small = config.replace("evaluation", als_rank=2, als_iterations=3)
    items = recommend.index_items(pairs)
    lists = recommend.recommend(spark, small, pairs, items, personas, [0.0, 1.0], k=3)
    assert lists.join(pairs, ["customer_id", "product_id"]).count() == 0
    # With all weight on personas, x0's first pick is the x-item it has not bought (xi0).
    top = lists.where((F.col("customer_id") == "x0") & (F.col("weight") == 1.0) & (F.col("rank") == 1))
    assert [r["product_id"] for r in top.collect()] == ["xi0"]


def test_stability_keeps_customers_above_the_invoice_floor_and_their_sorted_dominant_three(spark):
    from persona_lib.evaluation import stability

    events = spark.createDataFrame([("a", "i1"), ("a", "i2"), ("a", "i3"), ("b", "i4"), ("b", "i4")],
                                   "customer_id string, invoice_no string")
    assert_df_equality(stability.active_customers(events, 2), spark.createDataFrame([("a",)], "customer_id string"),
                       ignore_nullable=True)
    affinity = spark.createDataFrame([("a", "W", 0.1), ("a", "Z", 0.9), ("a", "X", 0.5), ("a", "Y", 0.7)],
                                     "customer_id string, persona string, score double")
    customers = spark.createDataFrame([("a",), ("c",)], "customer_id string")
    expected = spark.createDataFrame([("a", ["X", "Y", "Z"]), ("c", [])], "customer_id string, dominant array<string>")
    assert_df_equality(stability.dominant(affinity, customers).orderBy("customer_id"), expected,
                       ignore_nullable=True)


def test_lift_ranks_a_customers_distinctive_persona_above_the_one_everybody_has(spark):
    from persona_lib.evaluation import stability

    # Everybody's products mostly name "Common"; only b names "Rare" (2 of its 4).
    counts = spark.createDataFrame([("a", "Common", 4.0), ("b", "Common", 2.0), ("b", "Rare", 2.0)],
                                   "customer_id string, persona string, score double")
    lifted = stability.lift(counts).orderBy("customer_id", "persona")
    # Overall shares: Common 6/8, Rare 2/8. b: Common 0.5 / 0.75, Rare 0.5 / 0.25.
    expected = spark.createDataFrame([("a", "Common", 1.0 / 0.75), ("b", "Common", 0.5 / 0.75), ("b", "Rare", 2.0)],
                                     "customer_id string, persona string, score double")
    assert_approx_df_equality(lifted, expected, 1e-12, ignore_nullable=True)


def test_set_diversity_counts_distinct_sets_and_the_largest_share(spark):
    from persona_lib.evaluation import stability

    sets = spark.createDataFrame([("a", ["X", "Y"]), ("b", ["X", "Y"]), ("c", ["Z"]), ("d", [])],
                                 "customer_id string, dominant array<string>")
    assert stability.set_diversity(sets) == {"distinct_sets": 3, "most_common_set_share": 0.5}


def test_prompt_chars_of_a_customer_are_the_characters_of_the_messages_its_prompt_sends(spark, config):
    from persona_lib.prompts import build_prompts, prompt_template
    from persona_lib.taxonomy import load_taxonomy

    pairs = spark.createDataFrame([("1", "RED RETROSPOT MUG"), ("1", "PAPER CHAIN KIT"), ("2", "TEA SET")],
                                  "customer_id string, product_id string")
    chars = {r["customer_id"]: r["prompt_chars"]
             for r in accuracy.prompt_chars_of_customers(pairs, config).collect()}
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    template = prompt_template(taxonomy, config.labelling.prompt_token_budget)
    events = pairs.select("customer_id", "product_id", F.lit(1.0).alias("quantity"),
                          F.lit(None).cast("timestamp").alias("event_ts"), F.col("product_id").alias("product_title"))
    suffixes = {r["customer_id"]: r["prompt_suffix"] for r in build_prompts(
        events, pairs.select("customer_id").distinct(), taxonomy, config.labelling.prompt_token_budget).collect()}
    sent = {c: sum(len(m["content"]) for m in template.messages(s)) for c, s in suffixes.items()}
    assert chars == sent
    assert "PAPER CHAIN KIT, 1 time" in suffixes["1"]
    assert chars["1"] > chars["2"]  # two purchases listed cost more than one
