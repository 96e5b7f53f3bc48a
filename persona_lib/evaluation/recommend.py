"""Recommendation lift on the authors' split: an ALS baseline, and the same with persona
conditioning (the paper's Table 3 setting: 80/20 split of each customer's products, every
product ranked, training items masked, NDCG@K and F1@K).

Baseline: MLlib ALS with implicit feedback on split_train. Persona conditioning re-ranks
each customer's list by blending, per customer, the standardised ALS score with a
standardised persona score

    persona(u, i) = sum_m q_u(m) * pop_m(i),   pop_m(i) = share of persona-m customers who bought i

q_u: the customer's personas from the pipeline on the train graph (LLM answers for the
labelled, the published persona model for the rest), as a uniform distribution over its personas.
The blend weight is chosen on a validation split carved from TRAIN (never from test): the
weight with the best NDCG@10 when ALS is fitted on the rest of train.

Scoring runs in ``mapInPandas`` per customer batch against broadcast item matrices (items x
rank factors, personas x items popularity: small), so no per-customer data reaches the
driver; top-K lists and metrics stay in Spark.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib.config import AppConfig
from persona_lib.evaluation import accuracy, data, metrics

log = logging.getLogger("personas.evaluation")

VALIDATION_K = 10
# The paper's Table 3 (OnlineRetail, same split), for the side-by-side print.
PAPER_TABLE3 = {
    "ndcg": {
        "MF": (.2391, .2143, .2104, .2221, .2612, .3011),
        "LightGCN": (.2801, .2497, .2443, .2575, .2942, .3337),
        "LGCN": (.2686, .2356, .2274, .2383, .2772, .3167),
        "LGCN3 (personas)": (.2933, .2602, .2503, .2577, .2940, .3325),
    },
    "f1": {
        "MF": (.0859, .1123, .1225, .1239, .1081, .0886),
        "LightGCN": (.1080, .1333, .1416, .1398, .1181, .0955),
        "LGCN": (.0955, .1207, .1352, .1341, .1159, .0934),
        "LGCN3 (personas)": (.1052, .1332, .1431, .1406, .1201, .0967),
    },
}
PAPER_KS = (2, 5, 10, 20, 50, 100)
RECOMMENDATIONS_SCHEMA = "customer_id string, item int, rank int, weight double"


def index_items(pairs: DataFrame) -> DataFrame:
    """(product_id, item): a dense int id per product (ALS needs ints). One window over the
    distinct products: a few thousand rows, fine on one partition."""
    return pairs.select("product_id").distinct().withColumn(
        "item", (F.row_number().over(Window.orderBy("product_id")) - 1).cast("int"))


def index_customers(pairs: DataFrame) -> DataFrame:
    return pairs.select("customer_id").distinct().withColumn(
        "user", (F.row_number().over(Window.orderBy("customer_id")) - 1).cast("int"))


def split_train(pairs: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """(fit, validation): ``fraction`` of each customer's pairs (by a seeded hash) held out;
    customers with one pair keep it in fit."""
    order = Window.partitionBy("customer_id").orderBy(F.xxhash64(F.lit(seed), "customer_id", "product_id"))
    ranked = pairs.withColumn("position", F.row_number().over(order)) \
        .withColumn("size", F.count(F.lit(1)).over(Window.partitionBy("customer_id")))
    held = (F.col("position") <= F.floor(F.col("size") * fraction)) & (F.col("size") > 1)
    return ranked.where(~held).drop("position", "size"), ranked.where(held).drop("position", "size")


def persona_popularity(pairs: DataFrame, customer_personas: DataFrame) -> DataFrame:
    """(product_id, persona, share): share of the customers with the persona who bought it."""
    persona_sizes = customer_personas.groupBy("persona").agg(F.countDistinct("customer_id").alias("n"))
    bought = pairs.join(customer_personas, "customer_id").groupBy("product_id", "persona") \
        .agg(F.countDistinct("customer_id").alias("buyers"))
    return bought.join(persona_sizes, "persona").select(
        "product_id", "persona", (F.col("buyers") / F.col("n")).alias("share"))


def recommend(spark: SparkSession, config: AppConfig, fit_pairs: DataFrame, items: DataFrame,
              customer_personas: DataFrame, weights: list[float], k: int) -> DataFrame:
    """(customer_id, product_id, rank, weight): each customer's top ``k`` unbought products
    for every blend weight (0 = the ALS baseline), ALS fitted on ``fit_pairs``."""
    cfg = config.evaluation
    users = index_customers(fit_pairs)
    ratings = fit_pairs.join(items, "product_id").join(users, "customer_id") \
        .select("user", "item", F.lit(1.0).alias("rating"))
    als = ALS(rank=cfg.als_rank, maxIter=cfg.als_iterations, regParam=cfg.als_reg, alpha=cfg.als_alpha,
              implicitPrefs=True, userCol="user", itemCol="item", ratingCol="rating", seed=7,
              coldStartStrategy="drop", nonnegative=False)
    model = als.fit(ratings)
    item_count = items.count()
    # Items x rank and personas x items: a few MB at most, broadcast with the function.
    item_factors = np.zeros((item_count, cfg.als_rank))
    for row in model.itemFactors.collect():
        item_factors[row["id"]] = row["features"]
    personas = sorted(r["persona"] for r in customer_personas.select("persona").distinct().collect())
    persona_index = {p: i for i, p in enumerate(personas)}
    popularity = np.zeros((len(personas), item_count))
    for row in persona_popularity(fit_pairs, customer_personas).join(items, "product_id").collect():
        popularity[persona_index[row["persona"]], row["item"]] = row["share"]
    persona_vector = F.array(*[F.max(F.when(F.col("persona") == p, 1.0).otherwise(0.0)) for p in personas])
    vectors = customer_personas.groupBy("customer_id").agg(persona_vector.alias("personas"))
    bought = fit_pairs.join(items, "product_id").groupBy("customer_id").agg(F.collect_list("item").alias("bought"))
    users_in = (
        model.userFactors.join(users, F.col("id") == F.col("user")).select("customer_id", "features")
        .join(bought, "customer_id").join(vectors, "customer_id", "left")
    )

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for customer, factors, owned, vector in zip(batch["customer_id"], batch["features"],
                                                        batch["bought"], batch["personas"]):
                base = _standardised(item_factors @ np.asarray(factors))
                if vector is not None and np.sum(vector) > 0:
                    persona = _standardised(np.asarray(vector) @ popularity / np.sum(vector))
                else:
                    persona = np.zeros(item_count)
                mask = np.zeros(item_count, dtype=bool)
                mask[np.asarray(owned, dtype=int)] = True
                lists = []
                for weight in weights:
                    blended = (1 - weight) * base + weight * persona
                    blended[mask] = -np.inf
                    lists.append(np.argsort(-blended, kind="stable")[:min(k, item_count - int(mask.sum()))])
                # One small frame per customer: Arrow turns one large output batch into chunked
                # arrays that mapInPandas cannot take back.
                yield pd.DataFrame({
                    "customer_id": [customer] * sum(len(top) for top in lists),
                    "item": np.concatenate(lists).astype("int32"),
                    "rank": np.concatenate([np.arange(1, len(top) + 1) for top in lists]).astype("int32"),
                    "weight": np.concatenate([np.full(len(top), w) for w, top in zip(weights, lists)]),
                })

    ranked = users_in.mapInPandas(score, RECOMMENDATIONS_SCHEMA)
    return ranked.join(F.broadcast(items), "item").select("customer_id", "product_id", "rank", "weight")


PERSONA_SOURCES = ("pipeline", "recorded")


def evaluate_recommend(spark: SparkSession, config: AppConfig, persona_source: str = "pipeline") -> dict:
    """The baseline and the persona-conditioned recommender on split_test, NDCG@K and F1@K.

    ``persona_source``: "pipeline" conditions on GPLR's personas at ``recommend_budget``
    (LLM answers for the labelled, the published persona model for the rest); "recorded" on the
    recorded GPT-4 label of EVERY customer, the ceiling of what these personas can add.
    """
    if persona_source not in PERSONA_SOURCES:
        raise ValueError(f"persona_source must be one of {PERSONA_SOURCES}, got {persona_source!r}")
    started = time.monotonic()
    cfg = config.evaluation
    ks = sorted(int(k) for k in cfg.ks)
    weights = sorted({0.0, *[float(w) for w in cfg.blend_weights]})
    context = accuracy.prepare(spark, config)
    if persona_source == "recorded":
        customer_personas = context.answers.select("customer_id", "persona")
    else:
        run = accuracy.run_gplr(spark, context.graph, context.answers, config, cfg.recommend_budget, "du", 0)
        # The published table holds every customer: the labelled with their answers, the rest decided.
        published = accuracy.production_predictions(spark, context, run, config, with_product_labels=True)
        customer_personas = published.customer_personas.select(
            "customer_id", F.explode("personas").alias("persona")).localCheckpoint(eager=True)
    train = context.pairs
    test = data.test_pairs(spark, config)
    items = index_items(train).localCheckpoint(eager=True)

    fit_part, validation = split_train(train, cfg.validation_fraction, seed=1)
    validation_lists = recommend(spark, config, fit_part, items, customer_personas, weights, VALIDATION_K) \
        .localCheckpoint(eager=True)
    by_weight = {w: metrics.ranking_metrics(validation_lists.where(F.col("weight") == w), validation,
                                            [VALIDATION_K])["ndcg"][VALIDATION_K] for w in weights}
    best_weight = max(weights, key=lambda w: (by_weight[w], -w))
    log.info("validation NDCG@%d by blend weight: %s -> %.2f", VALIDATION_K, by_weight, best_weight)

    test_lists = recommend(spark, config, train, items, customer_personas, sorted({0.0, best_weight}), max(ks)) \
        .localCheckpoint(eager=True)
    baseline = metrics.ranking_metrics(test_lists.where(F.col("weight") == 0.0), test, ks)
    persona = metrics.ranking_metrics(test_lists.where(F.col("weight") == best_weight), test, ks)
    return {
        "ndcg": {"baseline": baseline["ndcg"], "persona": persona["ndcg"]},
        "f1": {"baseline": baseline["f1"], "persona": persona["f1"]},
        "persona_source": persona_source, "blend_weight": best_weight, "validation_ndcg_at_10": by_weight,
        "ndcg_at_10_lift": persona["ndcg"][10] / baseline["ndcg"][10] - 1 if 10 in ks else None,
        "seconds": round(time.monotonic() - started, 1),
    }


def format_table(result: dict) -> str:
    """Ours (ALS, ALS + personas) beside the paper's Table 3, NDCG then F1."""
    lines = []
    for metric in ("ndcg", "f1"):
        ks = list(result[metric]["baseline"])
        lines.append(f"{metric.upper():<22}" + "".join(f"{'@' + str(k):>8}" for k in ks))
        for name, values in PAPER_TABLE3[metric].items():
            by_k = dict(zip(PAPER_KS, values))
            lines.append(f"{'paper ' + name:<22}" + "".join(f"{by_k.get(int(k), float('nan')):>8.4f}" for k in ks))
        for name, key in (("ours ALS", "baseline"), ("ours ALS + personas", "persona")):
            lines.append(f"{name:<22}" + "".join(f"{result[metric][key][k]:>8.4f}" for k in ks))
        lines.append("")
    lines.append(f"personas: {result.get('persona_source', 'pipeline')}; "
                 f"blend weight {result['blend_weight']} (validation on train); NDCG@10 lift "
                 f"{(result['ndcg_at_10_lift'] or 0) * 100:+.1f}%")
    return "\n".join(lines)


def _standardised(scores: np.ndarray) -> np.ndarray:
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else scores - scores.mean()
