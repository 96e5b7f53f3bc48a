"""The persona model: per (customer, persona) a calibrated probability that the LLM would name
the persona, per-persona decision thresholds, and the epsilon interval of that probability.

Features of a customer u and persona m (``FEATURES``):
- walk: share of u's walk affinity on m, reciprocal rank of m within u, and
  log1p(score / unit) with unit the mean affinity of a (customer, persona) of the propagation
  (its seed mass / (customers x personas)), so scores of propagations with different seed
  sets are on one scale;
- log_products: log1p(u's distinct products) (the LLM names more personas for big baskets);
- the IDF-weighted co-purchase vote: over u's products v with labelled buyers,
  idf(v) = log(N / buyers(v)) and frac(v, m) = share of v's labelled buyers labelled m;
  vote_mean = sum idf x frac / sum idf and vote_log_sum = log1p(sum idf x frac);
- profile_logit: a sparse logistic over u's own products (binary TF x IDF, L2-normalised
  per customer), one per persona (fitted as ONE MLlib logistic over persona-blocked
  features: the loss separates by persona, so the blocks are independent per-persona fits);
- item_share (only with product labels): share of u's products labelled m.

A stacking logistic with a per-persona intercept and per-persona slopes turns them into the
probability. It is fitted on the labelled customers with cross-fitted features: the labelled
customers are split in ``cv_folds`` folds and a customer's features come from the labels of
the OTHER folds only (walk, vote and profile alike), so no customer's own label reaches its
features. The folds' walks are ONE multi-channel propagation: RevAff is linear in its seeds,
so the channel (fold f, persona m), seeded by the labels of customers outside fold f, is
exactly fold f's own propagation for persona m (up to a per-fold constant factor of the
debiasing, which the share, rank and unit-scaled score features cancel). A labelled customer
is a negative for every persona it was not given; "none of these" is all negative.

Thresholds: each persona's threshold maximises its F1 on the out-of-fold probabilities of
the labelled customers subject to |share at or above it - labelled share| <= the configured
gap (the gap-minimising threshold when none meets it). Published = the personas at or above
their thresholds, at least the most probable one for a customer with evidence.

Certificate: the walk scores are certified within epsilon (propagation's bound), and RevAff
never overestimates, so each exact score lies in [s, s + eps]. Every walk feature is
monotone in the scores, so that box gives an interval for each walk feature, and the linear stacker gives [probability_low,
probability_high] by taking each feature's end that its slope favours. A decision is
uncertain when its threshold lies inside that interval.

The fitted model is also a small set of per-product x persona tables plus coefficients
(``PersonaModel.artifact``), which ``score_basket`` evaluates with numpy: cold start serves
it without Spark.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.linalg import SparseVector, VectorUDT
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib.config import AppConfig, ForgetConfig, ModelConfig
from persona_lib.graph import PurchaseGraph
from persona_lib.labelling.answers import LABEL_STATUSES, UNREPRESENTABLE, UNREPRESENTABLE_STATUS
from persona_lib.labelling.backends import read_or_empty
from persona_lib.labelling.store import without_forgotten
from persona_lib.propagation import default_epsilon, propagate, seeds_from_labels
from persona_lib.storage import Tables

log = logging.getLogger("personas.model")

WALK_FEATURES = ("walk_share", "walk_reciprocal_rank", "walk_log_score")
BASE_FEATURES = WALK_FEATURES + ("log_products", "vote_mean", "vote_log_sum", "profile_logit")
ITEM_FEATURES = ("item_share",)
CHANNEL_SEPARATOR = "\u241f"  # fold and persona in one persona-column value of the channel
FULL = -1  # the "fold" of the features and coefficients computed from every label


@dataclass
class PersonaModel:
    """A fitted persona model: coefficients and the tables its features read."""

    personas: list[str]
    features: list[str]
    intercepts: dict[str, float]           # persona -> stacker intercept
    slopes: dict[str, dict[str, float]]    # persona -> feature -> slope
    thresholds: dict[str, float]           # persona -> decision threshold
    unit: float                            # walk score unit of the full propagation
    customers: int                         # N of the idf
    profile_intercepts: dict[str, float]   # persona -> intercept of the profile logistic
    product_tables: DataFrame              # product_id, persona, affinity, frac, weight, item
    product_idf: DataFrame                 # product_id, idf, labelled_buyers
    figures: dict

    def artifact(self) -> dict:
        """JSON-able: everything ``score_basket`` needs. Grows with products x personas only."""
        tables: dict[str, dict] = {}
        for row in self.product_idf.toLocalIterator():
            tables[row["product_id"]] = {"idf": float(row["idf"]), "labelled": int(row["labelled_buyers"]),
                                         "affinity": {}, "frac": {}, "weight": {}, "item": {}}
        for row in self.product_tables.toLocalIterator():
            entry = tables.get(row["product_id"])
            if entry is None:
                continue
            for key in ("affinity", "frac", "weight", "item"):
                if row[key]:
                    entry[key][row["persona"]] = float(row[key])
        return {"format": "persona_model/1", "personas": self.personas, "features": self.features,
                "intercepts": self.intercepts, "slopes": self.slopes, "thresholds": self.thresholds,
                "unit": self.unit, "customers": self.customers,
                "profile_intercepts": self.profile_intercepts, "products": tables}


# --------------------------------------------------------------------------- labels and folds


def label_grid(labels: DataFrame, personas: list[str]) -> DataFrame:
    """(customer_id, persona, label) for every labelled customer x persona: 1.0 when given."""
    spark = labels.sparkSession
    persona_frame = F.broadcast(spark.createDataFrame([(p,) for p in personas], "persona string"))
    positives = labels.select("customer_id", F.explode("personas").alias("persona")).distinct() \
        .withColumn("label", F.lit(1.0))
    return (labels.select("customer_id").distinct().crossJoin(persona_frame)
            .join(positives, ["customer_id", "persona"], "left").fillna(0.0, ["label"]))


def assign_folds(labels: DataFrame, folds: int, seed: int) -> DataFrame:
    """(customer_id, fold) of the labelled customers, by a hash of the id (stable across runs)."""
    return labels.select("customer_id").distinct().withColumn(
        "fold", F.pmod(F.xxhash64(F.lit(seed), F.lit("fold"), F.col("customer_id")), F.lit(folds)).cast("int"))


def channel_labels(positives: DataFrame, folds: DataFrame, fold_count: int) -> DataFrame:
    """(customer_id, persona = "f<SEP>m") : channel (f, m) holds the labels of customers outside f."""
    spark = positives.sparkSession
    every_fold = spark.createDataFrame([(f,) for f in range(fold_count)], "channel_fold int")
    return (positives.join(folds, "customer_id").crossJoin(F.broadcast(every_fold))
            .where(F.col("channel_fold") != F.col("fold"))
            .select("customer_id", F.concat_ws(CHANNEL_SEPARATOR, F.col("channel_fold").cast("string"),
                                               "persona").alias("persona")))


def seed_unit(labels: DataFrame, beta: float, customers: int, personas: int) -> float:
    """The mean affinity of a (customer, persona): seed mass / (customers x personas)."""
    mass = seeds_from_labels(labels, beta).agg(F.sum("mass")).first()[0] or 0.0
    return default_epsilon(float(mass), customers, personas, 1.0) or 1.0


# --------------------------------------------------------------------------- features


def walk_features(grid: DataFrame, affinity: DataFrame, unit: float, epsilon: float,
                  personas: int) -> DataFrame:
    """grid (customer_id, persona, ...) + the walk features and their epsilon intervals.

    ``affinity``: (customer_id, persona, score); a missing row is score 0. Interval ends
    (suffix _low/_high) bound each feature over every exact score the certificate allows.
    RevAff's estimate never exceeds the exact affinity (all values are non-negative and the
    entries below theta are dropped, never added), so the exact score lies in [s, s + eps].
    """
    eps = float(epsilon)
    scored = grid.join(affinity.select("customer_id", "persona", "score"), ["customer_id", "persona"], "left") \
        .withColumn("score", F.coalesce(F.col("score"), F.lit(0.0)))
    customer = Window.partitionBy("customer_id")
    by_score = Window.partitionBy("customer_id").orderBy(F.desc("score"), F.asc("persona"))
    low = F.col("score")
    high = F.col("score") + eps
    total = F.sum("score").over(customer)
    total_low = total
    frame = scored.select(
        "*", total.alias("_total"), total_low.alias("_total_low"),
        F.row_number().over(by_score).alias("_rank"),
    )
    others = F.col("_total") - F.col("score")
    others_low = F.col("_total_low") - low
    share = F.when(F.col("_total") > 0, F.col("score") / F.col("_total")).otherwise(0.0)
    share_low_den = low + others + F.lit((personas - 1) * eps)
    share_high_den = high + others_low
    frame = frame.select(
        "*",
        share.alias("walk_share"),
        F.when(share_low_den > 0, low / share_low_den).otherwise(0.0).alias("walk_share_low"),
        F.when(share_high_den > 0, high / share_high_den).otherwise(0.0).alias("walk_share_high"),
        F.log1p(F.col("score") / F.lit(unit)).alias("walk_log_score"),
        F.log1p(low / F.lit(unit)).alias("walk_log_score_low"),
        F.log1p(high / F.lit(unit)).alias("walk_log_score_high"),
        (1.0 / F.col("_rank")).alias("walk_reciprocal_rank"),
    )
    if eps > 0:
        # Rank bounds: personas surely above m (s_n > s_m + eps) and possibly above it.
        pairs = frame.select("customer_id", F.col("persona").alias("_other"), F.col("score").alias("_s"))
        bounds = (frame.select("customer_id", "persona", "score").join(pairs, "customer_id")
                  .where(F.col("_other") != F.col("persona"))
                  .groupBy("customer_id", "persona").agg(
                      F.sum((F.col("_s") > F.col("score") + eps).cast("int")).alias("_surely"),
                      F.sum((F.col("_s") + eps >= F.col("score")).cast("int")).alias("_possibly")))
        frame = frame.join(bounds, ["customer_id", "persona"], "left").select(
            "*", (1.0 / (1 + F.coalesce(F.col("_possibly"), F.lit(0)))).alias("walk_reciprocal_rank_low"),
            (1.0 / (1 + F.coalesce(F.col("_surely"), F.lit(0)))).alias("walk_reciprocal_rank_high"),
        ).drop("_surely", "_possibly")
    else:
        frame = frame.select("*", F.col("walk_reciprocal_rank").alias("walk_reciprocal_rank_low"),
                             F.col("walk_reciprocal_rank").alias("walk_reciprocal_rank_high"))
    return frame.drop("_total", "_total_low", "_rank")


def product_idf(edges: DataFrame, customers: int, labelled: DataFrame) -> DataFrame:
    """(product_id, idf, buyers, labelled_buyers): idf = log(N / buyers)."""
    buyers = edges.groupBy("product_id").agg(F.count(F.lit(1)).alias("buyers"))
    labelled_buyers = edges.join(labelled.select("customer_id"), "customer_id", "left_semi") \
        .groupBy("product_id").agg(F.count(F.lit(1)).alias("labelled_buyers"))
    return buyers.join(labelled_buyers, "product_id", "left").select(
        "product_id", F.log(F.lit(float(customers)) / F.col("buyers")).alias("idf"), "buyers",
        F.coalesce(F.col("labelled_buyers"), F.lit(0)).cast("long").alias("labelled_buyers"))


def vote_tables(edges: DataFrame, grid: DataFrame, folds: DataFrame, fold_count: int) -> tuple[DataFrame, DataFrame]:
    """Per (fold, product) the labelled buyers outside the fold, per (fold, product, persona)
    those labelled with the persona; fold FULL counts every labelled buyer.

    Complements (total - the fold's own) keep it one aggregation for all folds.
    """
    spark = edges.sparkSession
    labelled_edges = edges.join(folds, "customer_id")
    per_fold = labelled_edges.groupBy("product_id", "fold").agg(F.count(F.lit(1)).alias("n"))
    positive_edges = labelled_edges.join(grid.where(F.col("label") > 0).select("customer_id", "persona"),
                                         "customer_id")
    per_fold_pos = positive_edges.groupBy("product_id", "persona", "fold").agg(F.count(F.lit(1)).alias("pos"))
    all_folds = F.broadcast(spark.createDataFrame([(f,) for f in [FULL] + list(range(fold_count))], "vfold int"))

    def complement(counts: DataFrame, keys: list[str], value: str) -> DataFrame:
        totals = counts.groupBy(*keys).agg(F.sum(value).alias("_total"))
        own = counts.withColumnRenamed("fold", "vfold").withColumnRenamed(value, "_own")
        return (totals.crossJoin(all_folds).join(own, keys + ["vfold"], "left")
                .select(*keys, F.col("vfold").alias("fold"),
                        (F.col("_total") - F.coalesce(F.col("_own"), F.lit(0))).alias(value))
                .where(F.col(value) > 0))

    buyers = complement(per_fold, ["product_id"], "n")
    positives = complement(per_fold_pos, ["product_id", "persona"], "pos")
    return buyers, positives


def vote_features(customer_edges: DataFrame, idf: DataFrame, buyers: DataFrame, positives: DataFrame) -> DataFrame:
    """(customer_id, persona, vote_mean, vote_log_sum) from (customer_id, product_id, fold) rows:
    each customer's products read the fold's complement counts (FULL for unlabelled)."""
    reached = customer_edges.join(buyers, ["product_id", "fold"]).join(idf.select("product_id", "idf"), "product_id")
    denominators = reached.groupBy("customer_id").agg(F.sum("idf").alias("_idf_total"))
    votes = (reached.join(positives, ["product_id", "fold"])
             .groupBy("customer_id", "persona")
             .agg(F.sum(F.col("idf") * F.col("pos") / F.col("n")).alias("_vote")))
    return votes.join(denominators, "customer_id").select(
        "customer_id", "persona",
        F.when(F.col("_idf_total") > 0, F.col("_vote") / F.col("_idf_total")).otherwise(0.0).alias("vote_mean"),
        F.log1p(F.col("_vote")).alias("vote_log_sum"))


def tfidf(edges: DataFrame, idf: DataFrame) -> DataFrame:
    """(customer_id, product_id, x): binary TF x IDF, L2-normalised per customer."""
    weighted = edges.join(idf.select("product_id", "idf"), "product_id") \
        .select("customer_id", "product_id", F.greatest(F.col("idf"), F.lit(1e-6)).alias("x"))
    norm = F.sqrt(F.sum(F.col("x") * F.col("x")).over(Window.partitionBy("customer_id")))
    return weighted.select("customer_id", "product_id", (F.col("x") / norm).alias("x"))


def fit_profile(spark: SparkSession, x: DataFrame, grid: DataFrame, personas: list[str],
                product_index: DataFrame, cfg: ModelConfig) -> tuple[DataFrame, dict[str, float]]:
    """Per-persona sparse logistics over the customers' TF-IDF vectors, as one MLlib fit.

    Row (u, m) has u's vector in block m and a 1 in m's intercept column; the loss and the L2
    penalty separate by block, so this is exactly one logistic per persona with a shared C.
    Returns ((product_id, persona, weight) with non-zero weights, {persona: intercept}).
    """
    products = product_index.count()
    width = products * len(personas) + len(personas)
    persona_index = {p: i for i, p in enumerate(personas)}
    index_of = F.create_map(*[v for p, i in persona_index.items() for v in (F.lit(p), F.lit(i))])
    entries = x.join(product_index, "product_id").join(grid, "customer_id")
    entries = entries.select("customer_id", "persona", "label",
                             (index_of[F.col("persona")] * products + F.col("index")).alias("i"), "x")
    rows = entries.groupBy("customer_id", "persona", "label").agg(
        F.collect_list(F.struct("i", "x")).alias("entries"))
    # Customers whose products are all unknown still train the intercept.
    rows = grid.join(rows.drop("label"), ["customer_id", "persona"], "left")

    def to_vector(persona: str, items) -> SparseVector:
        pairs = {int(e["i"]): float(e["x"]) for e in (items or [])}
        pairs[products * len(personas) + persona_index[persona]] = 1.0
        keys = sorted(pairs)
        return SparseVector(width, keys, [pairs[k] for k in keys])

    # useArrow stated: left unset, PySpark tries to read an eval type from the type hints and
    # warns that it cannot (they are not pandas types); this is a plain row-at-a-time UDF.
    vectorise = F.udf(to_vector, VectorUDT(), useArrow=False)
    design = rows.select("label", vectorise("persona", "entries").alias("features")).cache()
    n = design.count()
    # sklearn's C on the summed loss = MLlib's regParam = 1 / (C x rows) on the mean loss.
    lr = LogisticRegression(featuresCol="features", labelCol="label", regParam=1.0 / (cfg.profile_c * max(n, 1)),
                            elasticNetParam=0.0, standardization=False, fitIntercept=True,
                            maxIter=cfg.max_iter, tol=1e-6)
    fitted = lr.fit(design)
    design.unpersist()
    coefficients = fitted.coefficients.toArray()
    intercepts = {p: float(fitted.intercept + coefficients[products * len(personas) + i])
                  for p, i in persona_index.items()}
    blocks = coefficients[: products * len(personas)].reshape(len(personas), products)
    nonzero = np.nonzero(np.abs(blocks) > 1e-12)
    # products x personas floats: the model's size, never the customers'.
    weights = spark.createDataFrame(
        [(int(v), personas[int(m)], float(blocks[m, v])) for m, v in zip(*nonzero)],
        "index long, persona string, weight double")
    return weights.join(product_index, "index").select("product_id", "persona", "weight"), intercepts


def profile_logits(x: DataFrame, customers: DataFrame, personas: list[str], weights: DataFrame,
                   intercepts: dict[str, float]) -> DataFrame:
    """(customer_id, persona, profile_logit) for ``customers`` x personas."""
    spark = x.sparkSession
    base = F.broadcast(spark.createDataFrame([(p, intercepts[p]) for p in personas], "persona string, b double"))
    sums = (x.join(customers.select("customer_id"), "customer_id", "left_semi")
            .join(F.broadcast(weights), "product_id")
            .groupBy("customer_id", "persona").agg(F.sum(F.col("x") * F.col("weight")).alias("_dot")))
    return (customers.select("customer_id").crossJoin(base).join(sums, ["customer_id", "persona"], "left")
            .select("customer_id", "persona", (F.col("b") + F.coalesce(F.col("_dot"), F.lit(0.0))).alias("profile_logit")))


def item_shares(edges: DataFrame, product_labels: DataFrame) -> DataFrame:
    """(customer_id, persona, item_share): share of the customer's products labelled m."""
    sizes = edges.groupBy("customer_id").agg(F.count(F.lit(1)).alias("_n"))
    counts = edges.join(product_labels.select("product_id", "persona").distinct(), "product_id") \
        .groupBy("customer_id", "persona").agg(F.count(F.lit(1)).alias("_k"))
    return counts.join(sizes, "customer_id").select("customer_id", "persona",
                                                    (F.col("_k") / F.col("_n")).alias("item_share"))


# --------------------------------------------------------------------------- the stacker


def logit_interval(frame: DataFrame, model_intercepts: dict, slopes: dict, features: list[str]) -> DataFrame:
    """frame + logit, logit_low, logit_high, probability, probability_low, probability_high.

    Features without _low/_high columns are exact. The linear logit is bounded by taking,
    per feature, the interval end its (per-persona) slope favours.
    """
    persona_col = F.col("persona")

    def per_persona(values: dict) -> F.Column:
        return F.create_map(*[v for p, x in values.items() for v in (F.lit(p), F.lit(float(x)))])[persona_col]

    logit = per_persona(model_intercepts)
    low = per_persona(model_intercepts)
    high = per_persona(model_intercepts)
    columns = set(frame.columns)
    for name in features:
        slope = per_persona({p: slopes[p][name] for p in slopes})
        value = F.col(name)
        lo = F.col(f"{name}_low") if f"{name}_low" in columns else value
        hi = F.col(f"{name}_high") if f"{name}_high" in columns else value
        logit = logit + slope * value
        low = low + F.least(slope * lo, slope * hi)
        high = high + F.greatest(slope * lo, slope * hi)
    sigmoid = lambda c: 1.0 / (1.0 + F.exp(-c))
    return frame.select("*", sigmoid(logit).alias("probability"), sigmoid(low).alias("probability_low"),
                        sigmoid(high).alias("probability_high"))


def fit_stacker(training: DataFrame, personas: list[str], features: list[str], cfg: ModelConfig
                ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Logistic of ``label`` with per-persona intercepts and per-persona slopes (one MLlib fit)."""
    from pyspark.ml.feature import VectorAssembler

    columns, expressions = [], []
    for i, persona in enumerate(personas):
        is_persona = (F.col("persona") == persona).cast("double")
        expressions.append(is_persona.alias(f"_b{i}"))
        columns.append(f"_b{i}")
        for name in features:
            expressions.append((is_persona * F.col(name)).alias(f"_s{i}_{name}"))
            columns.append(f"_s{i}_{name}")
    design = training.select("label", *expressions)
    assembled = VectorAssembler(inputCols=columns, outputCol="features").transform(design) \
        .select("label", "features")
    fitted = LogisticRegression(featuresCol="features", labelCol="label", regParam=cfg.stack_reg,
                                standardization=True, maxIter=2 * cfg.max_iter,  # per-persona slopes: more to fit
                                fitIntercept=True).fit(assembled)
    w = dict(zip(columns, fitted.coefficients.toArray().tolist()))
    intercepts = {p: float(fitted.intercept + w[f"_b{i}"]) for i, p in enumerate(personas)}
    slopes = {p: {name: float(w[f"_s{i}_{name}"]) for name in features} for i, p in enumerate(personas)}
    return intercepts, slopes


def choose_thresholds(scored: DataFrame, max_gap: float, population: Optional[DataFrame] = None) -> dict[str, float]:
    """persona -> threshold maximising F1 on ``scored`` (persona, probability, label) rows, the
    out-of-fold labelled customers, subject to a prevalence gap <= ``max_gap``.

    The gap: without ``population``, |share of ``scored`` at or above t - labelled share|.
    With ``population`` (persona, probability: the customers the thresholds will publish
    for), |share of the population at or above t - its expected share (mean calibrated
    probability)|: the labelled customers are not a random sample (the DU sampler picks
    them), so their share is not the population's; the calibrated probabilities estimate it.
    Candidates are the probabilities that occur; at candidate t the counts are the rows at
    or above t (ties grouped). The gap-minimising threshold when none meets ``max_gap``.
    """
    rows = scored.select("persona", "probability", F.col("label").cast("double").alias("label"),
                         F.lit(1.0).alias("_oof"), F.lit(0.0).alias("_pop"), F.lit(0.0).alias("_p"))
    if population is not None:
        rows = rows.unionByName(population.select(
            "persona", "probability", F.lit(0.0).alias("label"), F.lit(0.0).alias("_oof"),
            F.lit(1.0).alias("_pop"), F.col("probability").alias("_p")))
    grouped = rows.groupBy("persona", "probability").agg(
        F.sum("_oof").alias("_k"), F.sum("label").alias("_pos"), F.sum("_pop").alias("_kp"), F.sum("_p").alias("_sp"))
    per_persona = Window.partitionBy("persona")
    running = Window.partitionBy("persona").orderBy(F.desc("probability")).rowsBetween(
        Window.unboundedPreceding, Window.currentRow)
    curve = grouped.select(
        "persona", "probability",
        F.sum("_k").over(running).alias("predicted"), F.sum("_pos").over(running).alias("hits"),
        F.sum("_k").over(per_persona).alias("rows"), F.sum("_pos").over(per_persona).alias("positives"),
        F.sum("_kp").over(running).alias("pop_predicted"), F.sum("_kp").over(per_persona).alias("pop_rows"),
        F.sum("_sp").over(per_persona).alias("pop_expected"))
    if population is not None:
        gap = F.abs(F.col("pop_predicted") - F.col("pop_expected")) / F.col("pop_rows")
    else:
        gap = F.abs(F.col("predicted") - F.col("positives")) / F.col("rows")
    curve = curve.select(
        "persona", "probability",
        F.when(F.col("predicted") + F.col("positives") > 0,
               2.0 * F.col("hits") / (F.col("predicted") + F.col("positives"))).otherwise(0.0).alias("f1"),
        gap.alias("gap"))
    feasible = F.col("gap") <= F.lit(max_gap + 1e-12)
    best = Window.partitionBy("persona").orderBy(
        F.desc(feasible.cast("int")), F.desc(F.when(feasible, F.col("f1"))), F.asc("gap"), F.desc("probability"))
    chosen = curve.withColumn("_n", F.row_number().over(best)).where("_n = 1").select("persona", "probability")
    return {r["persona"]: float(r["probability"]) for r in chosen.collect()}


# --------------------------------------------------------------------------- fit and score


@dataclass
class ModelInputs:
    """What the model is fitted from and scores."""

    graph: PurchaseGraph
    edges: DataFrame               # customer_id, product_id (distinct pairs)
    labels: DataFrame              # customer_id, personas (array; empty = none of these)
    customer_affinity: DataFrame   # customer_id, persona, score: the run's propagation
    product_affinity: DataFrame    # product_id, persona, score
    epsilon: float
    product_labels: Optional[DataFrame] = None  # product_id, persona


def out_of_fold_features(spark: SparkSession, config: AppConfig, inputs: ModelInputs) -> tuple[DataFrame, dict]:
    """(training rows, context): per labelled customer x persona its label and features, each
    computed from the labels of the other folds only; context holds the frames fit() reuses."""
    cfg = config.model
    fold_count = max(2, int(cfg.cv_folds))
    labels = inputs.labels.join(inputs.graph.customers().select(F.col("key").alias("customer_id")),
                                "customer_id", "left_semi").cache()
    personas = sorted(r["persona"] for r in labels.select(F.explode("personas").alias("persona"))
                      .distinct().collect())
    if not personas:
        raise ValueError("the persona model needs at least one labelled persona")
    n_customers = inputs.graph.customer_count
    grid = label_grid(labels, personas).cache()
    folds = assign_folds(labels, fold_count, config.sampling.seed).cache()
    positives = grid.where(F.col("label") > 0).select("customer_id", "persona")
    features = list(BASE_FEATURES) + (list(ITEM_FEATURES) if inputs.product_labels is not None else [])

    # Walk, out of fold: one propagation with a channel per (fold, persona).
    channels = channel_labels(positives, folds, fold_count).cache()
    propagation_config = dataclasses.replace(config.propagation, epsilon=None)
    channel_result = propagate(spark, inputs.graph, channels, propagation_config)
    log.info("persona model: out-of-fold walk, %d channels in one propagation (%s supersteps)",
             channel_result.stats["personas"], channel_result.stats["supersteps"])
    split = F.split(F.col("persona"), CHANNEL_SEPARATOR)
    oof_affinity = (channel_result.customer_affinity
                    .select("customer_id", split.getItem(0).cast("int").alias("channel_fold"),
                            split.getItem(1).alias("persona"), "score")
                    .join(folds, "customer_id").where(F.col("channel_fold") == F.col("fold"))
                    .select("customer_id", "persona", "score"))
    # Each fold's channels in units of that fold's mean affinity (its seed mass / (N x P)).
    fold_mass = (seeds_from_labels(channels, config.propagation.beta)
                 .groupBy(F.split("persona", CHANNEL_SEPARATOR).getItem(0).cast("int").alias("fold"))
                 .agg(F.sum("mass").alias("mass")).collect())
    fold_units = {r["fold"]: default_epsilon(float(r["mass"]), n_customers, len(personas), 1.0) or 1.0
                  for r in fold_mass}
    unit_of = F.create_map(*[v for f, u in fold_units.items() for v in (F.lit(f), F.lit(u))])
    oof_scaled = oof_affinity.join(folds, "customer_id").select(
        "customer_id", "persona", (F.col("score") / unit_of[F.col("fold")]).alias("score"))
    training = walk_features(grid, oof_scaled, 1.0, 0.0, len(personas))

    # Vote and profile, out of fold.
    idf = product_idf(inputs.edges, n_customers, labels).cache()
    buyers, fold_positives = vote_tables(inputs.edges, grid, folds, fold_count)
    buyers, fold_positives = buyers.cache(), fold_positives.cache()
    labelled_edges = inputs.edges.join(folds, "customer_id")
    training = _join_features(training, vote_features(labelled_edges, idf, buyers, fold_positives),
                              ("vote_mean", "vote_log_sum"))
    x = tfidf(inputs.edges, idf).cache()
    product_index = idf.select("product_id").withColumn(
        "index", (F.row_number().over(Window.orderBy("product_id")) - 1).cast("long")).cache()
    profile_parts = []
    for fold in range(fold_count):
        train_grid = grid.join(folds.where(F.col("fold") != fold), "customer_id", "left_semi")
        weights, intercepts = fit_profile(spark, x, train_grid, personas, product_index, cfg)
        log.info("persona model: profile of fold %d/%d fitted", fold + 1, fold_count)
        held_out = folds.where(F.col("fold") == fold)
        profile_parts.append(profile_logits(x, held_out, personas, weights, intercepts).localCheckpoint(eager=True))
    oof_profile = profile_parts[0]
    for part in profile_parts[1:]:
        oof_profile = oof_profile.unionByName(part)
    training = _join_features(training, oof_profile, ("profile_logit",))
    sizes = _sizes(inputs.edges)
    training = training.join(sizes, "customer_id", "left").fillna(0.0, ["log_products"])
    if inputs.product_labels is not None:
        # Product labels carry no customer label: the same feature in and out of fold.
        training = _join_features(training, item_shares(inputs.edges, inputs.product_labels), ("item_share",))
    training = training.localCheckpoint(eager=True)
    context = dict(personas=personas, features=features, grid=grid, folds=folds, positives=positives,
                   channels=channels, idf=idf, buyers=buyers, fold_positives=fold_positives, x=x,
                   product_index=product_index, labels=labels, n_customers=n_customers)
    return training, context


def fit(spark: SparkSession, config: AppConfig, inputs: ModelInputs) -> PersonaModel:
    """Fit the persona model on the labelled customers (cross-fitted features)."""
    cfg = config.model
    training, c = out_of_fold_features(spark, config, inputs)
    personas, features, n_customers = c["personas"], c["features"], c["n_customers"]
    grid, folds, positives, channels = c["grid"], c["folds"], c["positives"], c["channels"]
    idf, buyers, fold_positives, x = c["idf"], c["buyers"], c["fold_positives"], c["x"]
    product_index, labels = c["product_index"], c["labels"]
    intercepts, slopes = fit_stacker(training, personas, features, cfg)
    oof = logit_interval(training, intercepts, slopes, features).select("customer_id", "persona", "probability",
                                                                        "label").cache()
    # Provisional (labelled-share gap); fit_and_score re-chooses them against the population.
    thresholds = choose_thresholds(oof, cfg.max_prevalence_gap)
    figures = _oof_figures(oof, thresholds)
    log.info("persona model: out-of-fold %s", figures)

    # The full model: profile on every label, product tables for scoring and serving.
    full_weights, full_intercepts = fit_profile(spark, x, grid, personas, product_index, cfg)
    full_labels = positives
    unit = seed_unit(full_labels, config.propagation.beta, n_customers, len(personas))
    full_buyers = buyers.where(F.col("fold") == FULL).drop("fold")
    frac = (fold_positives.where(F.col("fold") == FULL).join(full_buyers, "product_id")
            .select("product_id", "persona", (F.col("pos") / F.col("n")).alias("frac")))
    product_affinity = inputs.product_affinity.select("product_id", "persona", F.col("score").alias("affinity"))
    persona_set = F.col("persona").isin(*personas)
    item = (inputs.product_labels.select("product_id", "persona").distinct().withColumn("item", F.lit(1.0))
            if inputs.product_labels is not None else
            spark.createDataFrame([], "product_id string, persona string, item double"))
    keys = ["product_id", "persona"]
    product_tables = (product_affinity.where(persona_set)
                      .join(frac, keys, "full").join(full_weights, keys, "full").join(item.where(persona_set), keys, "full")
                      .select("product_id", "persona", *[F.coalesce(F.col(c), F.lit(0.0)).alias(c)
                                                         for c in ("affinity", "frac", "weight", "item")])
                      ).localCheckpoint(eager=True)
    model = PersonaModel(
        personas=personas, features=features, intercepts=intercepts, slopes=slopes, thresholds=thresholds,
        unit=unit, customers=n_customers, profile_intercepts=full_intercepts, product_tables=product_tables,
        product_idf=idf.select("product_id", "idf", "labelled_buyers").localCheckpoint(eager=True),
        figures=figures)
    model._oof = oof.localCheckpoint(eager=True)  # noqa: SLF001 - read by fit_and_score
    for frame in (grid, folds, channels, oof, buyers, fold_positives, labels, product_index, x, idf):
        frame.unpersist()
    return model


def score(spark: SparkSession, model: PersonaModel, edges: DataFrame, customer_affinity: DataFrame,
          epsilon: float, customers: Optional[DataFrame] = None) -> DataFrame:
    """(customer_id, persona, score, probability, probability_low, probability_high, threshold,
    products) for every customer of ``edges`` (or ``customers``) x the model's personas.

    ``score`` is the raw walk affinity; the features read the model's full-label tables.
    """
    personas = model.personas
    who = (customers if customers is not None else edges).select("customer_id").distinct()
    persona_frame = F.broadcast(spark.createDataFrame([(p,) for p in personas], "persona string"))
    grid = who.crossJoin(persona_frame)
    scaled = customer_affinity.select("customer_id", "persona", (F.col("score") / model.unit).alias("score"))
    frame = walk_features(grid, scaled, 1.0, epsilon / model.unit, len(personas))
    tables = model.product_tables
    idf = model.product_idf
    chosen_edges = edges.join(who, "customer_id", "left_semi")
    full_buyers = idf.where(F.col("labelled_buyers") > 0).select(
        "product_id", F.lit(FULL).alias("fold"), F.col("labelled_buyers").cast("double").alias("n"))
    full_positives = tables.where(F.col("frac") > 0).select(
        "product_id", "persona", F.lit(FULL).alias("fold"), (F.col("frac")).alias("pos"))
    full_buyers_unit = full_buyers.withColumn("n", F.lit(1.0))  # frac is already pos / n
    votes = vote_features(chosen_edges.withColumn("fold", F.lit(FULL)), idf, full_buyers_unit, full_positives)
    frame = _join_features(frame, votes, ("vote_mean", "vote_log_sum"))
    x = tfidf(chosen_edges, idf)
    weights = tables.where(F.col("weight") != 0).select("product_id", "persona", "weight")
    frame = _join_features(frame, profile_logits(x, who, personas, weights, model.profile_intercepts),
                           ("profile_logit",))
    frame = frame.join(_sizes(chosen_edges), "customer_id", "left").fillna(0.0, ["log_products"])
    if "item_share" in model.features:
        labels = tables.where(F.col("item") > 0).select("product_id", "persona")
        frame = _join_features(frame, item_shares(chosen_edges, labels), ("item_share",))
    thresholds = F.create_map(*[v for p, t in model.thresholds.items() for v in (F.lit(p), F.lit(t))])
    scored = logit_interval(frame, model.intercepts, model.slopes, model.features)
    return scored.select(
        "customer_id", "persona", (F.col("score") * model.unit).alias("score"), "probability",
        "probability_low", "probability_high", thresholds[F.col("persona")].alias("threshold"),
        F.round(F.expm1("log_products")).cast("long").alias("products"))


def decide(scored: DataFrame) -> DataFrame:
    """(customer_id, personas, confidence, uncertain, evidence) from ``score``'s rows.

    personas: those at or above their threshold, best first; at least the most probable one
    when the customer has evidence (any product bought by a labelled customer, or a walk
    score). confidence: the mean probability of the published personas (their expected
    precision). uncertain: some persona's threshold lies within its epsilon interval.
    """
    best = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    ranked = scored.withColumn("_rank", F.row_number().over(best))
    chosen = (F.col("probability") >= F.col("threshold")) | (F.col("_rank") == 1)
    uncertain_row = (F.col("probability_low") < F.col("threshold")) & (F.col("probability_high") >= F.col("threshold"))
    return ranked.groupBy("customer_id").agg(
        F.transform(F.array_sort(F.collect_list(F.when(chosen, F.struct("_rank", "persona")))),
                    lambda s: s["persona"]).alias("personas"),
        F.avg(F.when(chosen, F.col("probability"))).alias("confidence"),
        F.max(uncertain_row.cast("int")).cast("boolean").alias("uncertain"),
    )


def _sizes(edges: DataFrame) -> DataFrame:
    return edges.groupBy("customer_id").agg(F.log1p(F.count(F.lit(1)).cast("double")).alias("log_products"))


def _join_features(frame: DataFrame, extra: DataFrame, names) -> DataFrame:
    return frame.join(extra, ["customer_id", "persona"], "left").fillna(0.0, list(names))


def _oof_figures(oof: DataFrame, thresholds: dict[str, float], prefix: str = "") -> dict:
    """Out-of-fold set-F1 and prevalence gap of the decisions on the labelled customers."""
    th = F.create_map(*[v for p, t in thresholds.items() for v in (F.lit(p), F.lit(t))])
    best = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    chosen = (F.col("probability") >= th[F.col("persona")]) | (F.row_number().over(best) == 1)
    rows = oof.select("customer_id", "persona", "label", chosen.cast("double").alias("p"))
    per_customer = rows.groupBy("customer_id").agg(F.sum(F.col("p") * F.col("label")).alias("h"),
                                                   F.sum("p").alias("n"), F.sum("label").alias("t"))
    f1 = per_customer.agg(F.avg(F.when(F.col("t") > 0, 2 * F.col("h") / (F.col("n") + F.col("t"))))).first()[0]
    gap = rows.groupBy("persona").agg(F.abs(F.avg("p") - F.avg("label")).alias("g")).agg(F.avg("g")).first()[0]
    return {f"{prefix}oof_f1": float(f1 or 0.0), f"{prefix}oof_prevalence_gap": float(gap or 0.0)}


# --------------------------------------------------------------------------- the run's model


def training_labels(spark: SparkSession, tables: Tables, forget: ForgetConfig) -> DataFrame:
    """(customer_id, personas) of every labelled customer the model learns from.

    LLM answers of status ok, repaired or unrepresentable ("none of these": an empty list,
    negative for every persona), overrides winning; forgotten customers left out.
    """
    overrides = read_or_empty(spark, tables.persona_overrides).select("customer_id", "personas")
    llm = (read_or_empty(spark, tables.persona_labels)
           .where(F.col("status").isin(*LABEL_STATUSES, UNREPRESENTABLE_STATUS))
           .select("customer_id", F.array_remove(F.coalesce(F.col("personas"), F.array().cast("array<string>")),
                                                 UNREPRESENTABLE).alias("personas"))
           .join(overrides.select("customer_id"), "customer_id", "left_anti"))
    return without_forgotten(spark, tables, forget, llm.unionByName(overrides))


def fit_and_score(spark: SparkSession, config: AppConfig, inputs: ModelInputs) -> tuple[PersonaModel, DataFrame]:
    """The run's model and its scores of every customer of ``inputs.edges``."""
    model = fit(spark, config, inputs)
    scores = score(spark, model, inputs.edges, inputs.customer_affinity, inputs.epsilon).localCheckpoint(eager=True)
    unlabelled = scores.join(inputs.labels.select("customer_id"), "customer_id", "left_anti")
    model.thresholds = choose_thresholds(model._oof, config.model.max_prevalence_gap,  # noqa: SLF001
                                         population=unlabelled.select("persona", "probability"))
    model.figures = {**model.figures, **_oof_figures(model._oof, model.thresholds, "final_")}  # noqa: SLF001
    log.info("persona model: thresholds %s, figures %s", model.thresholds, model.figures)
    thresholds = F.create_map(*[v for p, t in model.thresholds.items() for v in (F.lit(p), F.lit(t))])
    return model, scores.withColumn("threshold", thresholds[F.col("persona")])
