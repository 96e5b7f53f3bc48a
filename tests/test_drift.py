"""Drift: with recency-weighted edges, a customer's personas follow its recent purchases."""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import functions as F

from persona_lib.graph import build_graph, edges_from_events
from persona_lib.propagation import propagate

NOW = datetime(2011, 12, 1)


def events(spark, rows):
    return spark.createDataFrame(
        [(c, p, NOW - timedelta(days=age)) for c, p, age in rows],
        "customer_id string, product_id string, event_ts timestamp")


def top_persona(spark, config, purchase_rows, weighting):
    labels = spark.createDataFrame([("gardener", "Gardening Lover"), ("baker", "Baking and Confectionery Fans")],
                                   "customer_id string, persona string")
    edges = edges_from_events(events(spark, purchase_rows), weighting=weighting, half_life_days=30.0, as_of=NOW)
    result = propagate(spark, build_graph(edges), labels, config.propagation,
                       method="exact")
    scores = result.customer_affinity.where(F.col("customer_id") == "shopper").orderBy(F.desc("score")).collect()
    return scores[0]["persona"]


SEEDS = [("gardener", "rake", 10), ("gardener", "seeds", 10), ("baker", "whisk", 10), ("baker", "flour", 10)]


def test_recent_purchases_move_a_customers_top_persona(spark, config):
    long_ago_garden_recently_baking = SEEDS + [("shopper", "rake", 360), ("shopper", "seeds", 360),
                                                ("shopper", "whisk", 1)]
    assert top_persona(spark, config, long_ago_garden_recently_baking, "none") == "Gardening Lover"
    assert top_persona(spark, config, long_ago_garden_recently_baking, "recency") == "Baking and Confectionery Fans"

    back_to_the_garden = long_ago_garden_recently_baking + [("shopper", "rake", 0), ("shopper", "seeds", 0)]
    assert top_persona(spark, config, back_to_the_garden, "recency") == "Gardening Lover"
