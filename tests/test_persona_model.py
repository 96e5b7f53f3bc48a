"""The persona model: thresholds, features, the epsilon interval, out-of-fold features and the
numpy scorer, on small frames with answers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import Window
from pyspark.sql import functions as F

from persona_lib import persona_model
from persona_lib.graph import build_graph, edges_from_pairs
from persona_lib.persona_scoring import (
    ScoringTables,
    customer_features,
    score_basket,
    score_customers,
    walk_feature_bounds,
)

sigmoid = lambda z: 1.0 / (1.0 + math.exp(-z))


def test_threshold_maximises_f1_within_the_prevalence_gap(spark):
    # Persona A: 3 positives of 5 (share 0.6). At 0.9: F1 .5 gap .4; 0.8: F1 .8 gap .2;
    # 0.7: F1 .667 gap 0; 0.6: F1 .857 gap .2; 0.2: F1 .75 gap .4.
    # Persona B: no positive: no threshold is within the gap, the smallest gap (0.9: .5) wins.
    rows = [("A", 0.9, 1.0), ("A", 0.8, 1.0), ("A", 0.7, 0.0), ("A", 0.6, 1.0), ("A", 0.2, 0.0),
            ("B", 0.9, 0.0), ("B", 0.1, 0.0)]
    scored = spark.createDataFrame(rows, "persona string, probability double, label double")
    assert persona_model.choose_thresholds(scored, 0.03) == {"A": 0.7, "B": 0.9}
    assert persona_model.choose_thresholds(scored, 0.25)["A"] == 0.6
    assert persona_model.choose_thresholds(scored, 0.19)["A"] == 0.7


def window_thresholds(scored, max_gap, population=None):
    """choose_thresholds as Spark windows over (persona, probability) groups: the definition,
    written the slow way."""
    rows = scored.select("persona", "probability", "label", F.lit(1.0).alias("_oof"), F.lit(0.0).alias("_pop"),
                         F.lit(0.0).alias("_p"))
    if population is not None:
        rows = rows.unionByName(population.select("persona", "probability", F.lit(0.0).alias("label"),
                                                  F.lit(0.0).alias("_oof"), F.lit(1.0).alias("_pop"),
                                                  F.col("probability").alias("_p")))
    grouped = rows.groupBy("persona", "probability").agg(*[F.sum(c).alias(c) for c in ("_oof", "label", "_pop", "_p")])
    persona = Window.partitionBy("persona")
    running = persona.orderBy(F.desc("probability")).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    predicted, hits, positives = F.sum("_oof").over(running), F.sum("label").over(running), F.sum("label").over(persona)
    if population is not None:
        gap = F.abs(F.sum("_pop").over(running) - F.sum("_p").over(persona)) / F.sum("_pop").over(persona)
    else:
        gap = F.abs(predicted - positives) / F.sum("_oof").over(persona)
    curve = grouped.select("persona", "probability", gap.alias("gap"), F.when(
        predicted + positives > 0, 2.0 * hits / (predicted + positives)).otherwise(0.0).alias("f1"))
    feasible = F.col("gap") <= F.lit(max_gap + 1e-12)
    best = Window.partitionBy("persona").orderBy(F.desc(feasible.cast("int")), F.desc(F.when(feasible, F.col("f1"))),
                                                 F.asc("gap"), F.desc("probability"))
    chosen = curve.withColumn("_n", F.row_number().over(best)).where("_n = 1")
    return {r["persona"]: r["probability"] for r in chosen.collect()}


@pytest.mark.parametrize("max_gap", [0.0, 0.02, 0.1, 1.0])
def test_thresholds_are_those_a_window_over_the_probabilities_would_choose(spark, max_gap):
    # Tied probabilities, a persona without positives, one labelled everywhere, and a population
    # of other customers; probabilities on a coarse grid, so that ties are common.
    rng = np.random.default_rng(5)
    personas = [("A", 0.3), ("B", 0.0), ("C", 1.0), ("D", 0.05)]
    scored = pd.DataFrame([(p, float(rng.integers(0, 40)) / 40, float(rng.random() < rate))
                           for p, rate in personas for _ in range(150)], columns=["persona", "probability", "label"])
    population = pd.DataFrame([(p, float(rng.integers(0, 40)) / 40) for p, _ in personas for _ in range(400)],
                              columns=["persona", "probability"])
    scored = spark.createDataFrame(scored, "persona string, probability double, label double")
    population = spark.createDataFrame(population, "persona string, probability double")

    assert persona_model.choose_thresholds(scored, max_gap) == window_thresholds(scored, max_gap)
    assert persona_model.choose_thresholds(scored, max_gap, population) == \
        window_thresholds(scored, max_gap, population)


def test_walk_features_and_their_epsilon_intervals():
    # RevAff never overestimates: exact scores lie in [s, s + .05]. A: share .75, lowest
    # .3 / (.3 + .1 + .05), highest .35 / (.35 + .1). B's rank 2 is certain (.3 > .1 + .05).
    bounds = walk_feature_bounds(np.array([[0.3, 0.1]]), 0.05)
    assert np.allclose(np.vstack(bounds["walk_share"])[:, 0], [0.75, 0.30 / 0.45, 0.35 / 0.45])
    assert np.allclose(np.vstack(bounds["walk_share"])[:, 1], [0.25, 0.10 / 0.45, 0.15 / 0.45])
    assert np.allclose(np.vstack(bounds["walk_reciprocal_rank"]), [[1.0, 0.5]] * 3)
    assert np.allclose(bounds["walk_log_score"][1], np.log1p([[0.3, 0.1]]))


def test_probability_interval_takes_the_end_each_slope_favours():
    # walk_share of A (.75) lies in [.3/.45, .35/.45] and of B (.25) in [.1/.45, .15/.45].
    # A's slope +2 takes its low end for the low probability; B's slope -1 takes its high end.
    tables = _tables(["A", "B"], features=("walk_share",), intercepts=[-1.0, -1.0], slopes=[[2.0], [-1.0]])
    scored = score_customers(tables, 1, np.zeros(0, dtype=int), np.zeros(0, dtype=object),
                             np.array([[0.3, 0.1]]), 0.05)
    assert scored["probability"][0] == pytest.approx([sigmoid(-1 + 1.5), sigmoid(-1 - 0.25)])
    assert scored["probability_low"][0] == pytest.approx([sigmoid(-1 + 2 * 0.30 / 0.45), sigmoid(-1 - 0.15 / 0.45)])
    assert scored["probability_high"][0] == pytest.approx([sigmoid(-1 + 2 * 0.35 / 0.45), sigmoid(-1 - 0.10 / 0.45)])


def _tables(personas, features, intercepts, slopes, products=("p",)):
    k, p = len(personas), len(products)
    return ScoringTables(
        personas=np.asarray(personas, dtype=object), features=tuple(features), products=pd.Index(products),
        idf=np.ones(p), labelled=np.zeros(p, dtype=bool), frac=np.zeros((p, k)), weight=np.zeros((p, k)),
        item=None, profile_intercepts=np.zeros(k), intercepts=np.asarray(intercepts, dtype=float),
        slopes=np.asarray(slopes, dtype=float), thresholds=np.full(k, 0.5), unit=1.0)


def test_idf_weighted_vote_reads_only_other_folds_labels(spark):
    # p1 bought by u1, u2, u3; p2 by u1, u4. Labelled: u2 (fold 0, A), u3 (fold 1, B), u4 (fold 1, A).
    edges = spark.createDataFrame([("u1", "p1"), ("u2", "p1"), ("u3", "p1"), ("u1", "p2"), ("u4", "p2")],
                                  "customer_id string, product_id string")
    labels = spark.createDataFrame([("u2", ["A"]), ("u3", ["B"]), ("u4", ["A"])],
                                   "customer_id string, personas array<string>")
    folds = spark.createDataFrame([("u2", 0), ("u3", 1), ("u4", 1)], "customer_id string, fold int")
    positives = labels.select("customer_id", F.explode("personas").alias("persona"))
    buyers, labelled_with = persona_model.fold_vote_counts(edges.join(folds, "customer_id"), positives)
    no_profile = spark.createDataFrame([], persona_model.PROFILE_SCHEMA)
    tables = persona_model.out_of_fold_tables(
        ["A", "B"], ["vote_mean"], persona_model.product_idf(edges, 4, labels), buyers, labelled_with,
        no_profile, no_profile.select("model_fold", "persona", F.col("weight").alias("intercept")), None, 2)

    def vote_mean(fold: int, products: list[str]) -> list[float]:
        values, _ = customer_features(tables[fold], 1, np.zeros(len(products), dtype=int),
                                      np.asarray(products, dtype=object), np.zeros((1, 2)), 0.0)
        return list(values["vote_mean"][0][0])

    # u2 (fold 0) sees only u3's B on p1: its own A never counts.
    assert vote_mean(0, ["p1"]) == pytest.approx([0.0, 1.0])
    # u3, u4 (fold 1) see only u2's A on p1; p2 has no labelled buyer outside fold 1.
    assert vote_mean(1, ["p1"]) == pytest.approx([1.0, 0.0])
    assert vote_mean(1, ["p2"]) == pytest.approx([0.0, 0.0])
    assert not tables[1].labelled[tables[1].products.get_loc("p2")]


@pytest.fixture
def tiny_graph(spark):
    """Twelve customers over six products; customers c0..c9 labelled, two of them 'none'."""
    pairs = []
    for i in range(12):
        for p in (f"p{i % 3}", f"p{3 + i % 3}", "p_common"):
            pairs.append((f"c{i}", p))
    edges = spark.createDataFrame(pairs, "customer_id string, product_id string")
    return edges, build_graph(edges_from_pairs(edges))


def _labels(spark, override: dict):
    personas = {f"c{i}": (["A"] if i % 3 == 0 else ["B"] if i % 3 == 1 else []) for i in range(10)}
    personas.update(override)
    return spark.createDataFrame(list(personas.items()), "customer_id string, personas array<string>")


def _inputs(spark, edges, graph, labels):
    empty = spark.createDataFrame([], "customer_id string, persona string, score double")
    return persona_model.ModelInputs(graph=graph, edges=edges, labels=labels, customer_affinity=empty,
                                     product_affinity=spark.createDataFrame([], "product_id string, persona string, score double"),
                                     epsilon=0.0)


def test_no_labelled_customer_own_label_reaches_its_features(spark, config, tiny_graph):
    """Flip one customer's label: its own feature rows must not move (the others' may)."""
    edges, graph = tiny_graph
    config = config.replace("model", cv_folds=3, max_iter=20)
    before, _ = persona_model.out_of_fold_features(spark, config, _inputs(spark, edges, graph, _labels(spark, {})))
    after, _ = persona_model.out_of_fold_features(
        spark, config, _inputs(spark, edges, graph, _labels(spark, {"c0": ["B"]})))
    features = list(persona_model.BASE_FEATURES)
    own_before = before.where("customer_id = 'c0'").select("persona", *features)
    own_after = after.where("customer_id = 'c0'").select("persona", *features)
    assert own_before.count() == 2
    assert_approx_df_equality(own_before, own_after, 1e-9, ignore_row_order=True, ignore_nullable=True)
    # The flip is visible: c0's label changed, and it reaches customers of other folds.
    assert before.where("customer_id = 'c0' and persona = 'A'").first()["label"] == 1.0
    assert after.where("customer_id = 'c0' and persona = 'A'").first()["label"] == 0.0
    moved = before.alias("b").join(after.alias("a"), ["customer_id", "persona"]) \
        .where(F.abs(F.col("b.vote_mean") - F.col("a.vote_mean")) > 1e-9).count()
    assert moved > 0


def test_numpy_scorer_matches_the_spark_scores_of_a_customer(spark, config, tiny_graph):
    """A shopper with c10's products gets c10's probability: one scale for tables and cold start."""
    from persona_lib.propagation import propagate

    edges, graph = tiny_graph
    config = config.replace("model", cv_folds=3, max_iter=30)
    labels = _labels(spark, {})
    result = propagate(spark, graph, labels.select("customer_id", F.explode("personas").alias("persona")),
                       config.propagation, method="exact")
    inputs = persona_model.ModelInputs(graph=graph, edges=edges, labels=labels,
                                       customer_affinity=result.customer_affinity,
                                       product_affinity=result.product_affinity, epsilon=0.0)
    model, scores = persona_model.fit_and_score(spark, config, inputs)
    spark_rows = {r["persona"]: r for r in scores.where("customer_id = 'c10'").collect()}
    basket = [r["product_id"] for r in edges.where("customer_id = 'c10'").collect()]
    numpy_rows = {r["persona"]: r for r in score_basket(model.artifact(), basket)}
    assert set(numpy_rows) == set(spark_rows) == {"A", "B"}
    for persona, row in spark_rows.items():
        assert numpy_rows[persona]["probability"] == pytest.approx(row["probability"], abs=1e-9)
        assert numpy_rows[persona]["score"] == pytest.approx(row["score"], abs=1e-12)
    # Thresholds were chosen within [0, 1] on the labelled customers.
    assert all(0.0 <= t <= 1.0 for t in model.thresholds.values())
    # A walk certified within epsilon gives each probability an interval around it.
    bounded = persona_model.score(spark, model, edges, result.customer_affinity, 0.05).where("customer_id = 'c10'")
    assert bounded.count() == 2
    assert bounded.where("probability_low <= probability and probability <= probability_high").count() == 2
    assert bounded.where("probability_low < probability_high").count() == 2


def test_with_a_population_the_gap_is_to_its_expected_share(spark):
    # OOF rows of persona A as above; the population's expected count is .95+.75+.65+.3 = 2.65
    # of 4. Population counts at or above .65 and .6: 3 (gap .0875); others >= .1625.
    scored = spark.createDataFrame([("A", 0.9, 1.0), ("A", 0.8, 1.0), ("A", 0.7, 0.0), ("A", 0.6, 1.0),
                                    ("A", 0.2, 0.0)], "persona string, probability double, label double")
    population = spark.createDataFrame([("A", p) for p in (0.95, 0.75, 0.65, 0.3)], "persona string, probability double")
    # Within .1: .65 (OOF F1 4/6) and .6 (6/7): the better F1 wins.
    assert persona_model.choose_thresholds(scored, 0.1, population) == {"A": 0.6}
    # Within .05 none: the smallest gap, the higher threshold on a tie.
    assert persona_model.choose_thresholds(scored, 0.05, population) == {"A": 0.65}


def test_rank_bounds_count_the_personas_surely_and_possibly_above_each_one():
    # Ties, a gap of exactly epsilon (0.25 + 0.25 = 0.5: not surely above), unreached personas.
    eps = 0.25
    scores = np.array([[0.5, 0.25, 0.25, 0.0, 1.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    _, low, high = walk_feature_bounds(scores, eps)["walk_reciprocal_rank"]
    for c, row in enumerate(scores):
        for m, mine in enumerate(row):
            others = [s for n, s in enumerate(row) if n != m]
            assert low[c, m] == 1.0 / (1 + sum(s + eps >= mine for s in others))
            assert high[c, m] == 1.0 / (1 + sum(s > mine + eps for s in others))


def test_each_model_fold_of_the_profile_fit_gets_a_partition_of_its_own(spark):
    folds = [persona_model.FULL, 0, 1, 2, 3, 4]
    entries = spark.createDataFrame([(f"u{i}", folds[i % 6]) for i in range(600)], "customer_id string, model_fold int")
    split = persona_model.one_partition_per_fold(entries, len(folds))
    per_partition = split.groupBy(F.spark_partition_id().alias("part")).agg(F.countDistinct("model_fold").alias("folds"))
    assert sorted(r["folds"] for r in per_partition.collect()) == [1] * 6
