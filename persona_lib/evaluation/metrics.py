"""Metrics computed in Spark: set-F1 of persona sets, NDCG@K and F1@K of top-K lists.

Only per-metric aggregates reach the driver; per-customer rows stay in DataFrames.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def set_scores(predicted: DataFrame, truth: DataFrame, customers: Optional[DataFrame] = None) -> DataFrame:
    """(customer_id, precision, recall, f1) of predicted persona sets against true ones.

    ``predicted`` and ``truth``: (customer_id, persona) rows. Scored customers: ``customers``
    (customer_id) when given, else every customer with a true label. A customer with no
    prediction scores 0 (precision of an empty set is taken as 0); F1 = 2|P n T| / (|P| + |T|).
    """
    truth = truth.select("customer_id", "persona").distinct()
    predicted = predicted.select("customer_id", "persona").distinct()
    scored = customers.select("customer_id").distinct() if customers is not None \
        else truth.select("customer_id").distinct()
    truth_sizes = truth.groupBy("customer_id").agg(F.count(F.lit(1)).alias("true_n"))
    predicted_sizes = predicted.groupBy("customer_id").agg(F.count(F.lit(1)).alias("predicted_n"))
    hits = predicted.join(truth, ["customer_id", "persona"]).groupBy("customer_id") \
        .agg(F.count(F.lit(1)).alias("hits"))
    counts = (
        scored.join(truth_sizes, "customer_id", "left")
        .join(predicted_sizes, "customer_id", "left")
        .join(hits, "customer_id", "left")
        .select("customer_id", *[F.coalesce(c, F.lit(0)).alias(c) for c in ("true_n", "predicted_n", "hits")])
    )
    return counts.select(
        "customer_id",
        _ratio("hits", "predicted_n").alias("precision"),
        _ratio("hits", "true_n").alias("recall"),
        _ratio(F.col("hits") * 2, F.col("predicted_n") + F.col("true_n")).alias("f1"),
    )


def mean_scores(scores: DataFrame) -> dict:
    """{"f1", "precision", "recall", "customers"}: means over the scored customers."""
    row = scores.agg(F.avg("f1").alias("f1"), F.avg("precision").alias("precision"),
                     F.avg("recall").alias("recall"), F.count(F.lit(1)).alias("customers")).first()
    return {k: (float(row[k]) if row[k] is not None else None) for k in ("f1", "precision", "recall")} | {
        "customers": int(row["customers"])}


def ranking_metrics(recommended: DataFrame, relevant: DataFrame, ks: Iterable[int]) -> dict:
    """{"ndcg": {K: v}, "f1": {K: v}}: means over the customers with a relevant item.

    ``recommended``: (customer_id, product_id, rank) with rank 1 the best; ``relevant``:
    (customer_id, product_id), the held-out items. NDCG@K = DCG@K / IDCG@K with binary gains
    and log2(rank + 1) discounts, IDCG over min(K, |relevant|) hits; F1@K from precision
    hits/K and recall hits/|relevant|. A customer with no recommendation scores 0.
    """
    ks = sorted(set(int(k) for k in ks))
    relevant = relevant.select("customer_id", "product_id").distinct()
    sizes = relevant.groupBy("customer_id").agg(F.count(F.lit(1)).alias("relevant_n"))
    hits = recommended.where(F.col("rank") <= max(ks)).join(relevant, ["customer_id", "product_id"])
    per_customer = hits.groupBy("customer_id").agg(*[
        agg for k in ks for agg in (
            F.sum(F.when(F.col("rank") <= k, 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0)).alias(f"dcg_{k}"),
            F.sum(F.when(F.col("rank") <= k, 1.0).otherwise(0.0)).alias(f"hits_{k}"),
        )
    ])
    scored = sizes.join(per_customer, "customer_id", "left").fillna(0.0)
    # IDCG@K = sum_{i=1..min(K, n)} 1/log2(i + 1): a cumulative table indexed by min(K, n).
    ideal = F.array(*[F.lit(sum(1.0 / math.log2(i + 1) for i in range(1, n + 1))) for n in range(0, max(ks) + 1)])
    aggregates = []
    for k in ks:
        idcg = F.element_at(ideal, F.least(F.col("relevant_n"), F.lit(k)).cast("int") + 1)
        ndcg = F.col(f"dcg_{k}") / idcg
        precision = F.col(f"hits_{k}") / F.lit(float(k))
        recall = F.col(f"hits_{k}") / F.col("relevant_n")
        f1 = F.when(F.col(f"hits_{k}") > 0, 2 * precision * recall / (precision + recall)).otherwise(0.0)
        aggregates += [F.avg(ndcg).alias(f"ndcg_{k}"), F.avg(f1).alias(f"f1_{k}")]
    row = scored.agg(*aggregates).first()
    return {"ndcg": {k: float(row[f"ndcg_{k}"]) for k in ks}, "f1": {k: float(row[f"f1_{k}"]) for k in ks}}


def top_k(scores: DataFrame, k: int, key: str, item: str, score: str = "score") -> DataFrame:
    """(key, item, score, rank) of each key's ``k`` best items, ties broken by the item name."""
    window = Window.partitionBy(key).orderBy(F.desc(score), F.asc(item))
    return scores.withColumn("rank", F.row_number().over(window)).where(F.col("rank") <= k)


def _ratio(numerator, denominator):
    numerator = F.col(numerator) if isinstance(numerator, str) else numerator
    denominator = F.col(denominator) if isinstance(denominator, str) else denominator
    return F.when(denominator > 0, numerator.cast("double") / denominator).otherwise(F.lit(0.0))
