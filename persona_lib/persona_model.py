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
- profile_logit: a sparse L2 logistic over u's own products (binary TF x IDF, L2-normalised
  per customer), one per persona; every fold's and the full model's are fitted in one grouped
  Spark stage (``fit_profiles``), a fold per group;
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

The fitted model is also a small set of per-product x persona tables plus coefficients.
Scoring every customer (``score``) broadcasts them as dense arrays (``scoring_tables``) and
evaluates the features, the stacker and the intervals per Arrow batch of customers with numpy
(``persona_scoring.score_customers``). The out-of-fold features of the labelled customers go
through the same per-customer pass (``out_of_fold_rows``), each customer reading its own
fold's tables (``out_of_fold_tables``). ``PersonaModel.artifact`` is the same tables as JSON,
which ``score_basket`` evaluates for one shopper: cold start serves it without Spark.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib.config import AppConfig, ForgetConfig, ModelConfig
from persona_lib.graph import PurchaseGraph
from persona_lib.labelling.answers import LABEL_STATUSES, UNREPRESENTABLE, UNREPRESENTABLE_STATUS
from persona_lib.labelling.backends import read_or_empty
from persona_lib.labelling.store import without_forgotten
from persona_lib.persona_scoring import SCORE_COLUMNS, ScoringTables, customer_features, ratio, score_customers
from persona_lib.propagation import default_epsilon, propagate, seeds_from_labels
from persona_lib.spark import map_arrow_batches
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
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds of the fit and scoring

    def scoring_tables(self) -> ScoringTables:
        """The model as dense products x personas arrays, for ``score_customers``."""
        # Arrow batches: products x personas rows reach the driver (the broadcast's size).
        idf = self.product_idf.select("product_id", "idf", "labelled_buyers").toPandas()
        entries = self.product_tables.toPandas()
        products = pd.Index(idf["product_id"])
        personas = np.asarray(self.personas, dtype=object)

        def matrix(column: str) -> np.ndarray:
            return dense_table(products, self.personas, entries, column)

        def per_persona(values: dict) -> np.ndarray:
            return np.array([float(values[p]) for p in self.personas])

        return ScoringTables(
            personas=personas, features=tuple(self.features), products=products,
            idf=idf["idf"].to_numpy(dtype=float), labelled=idf["labelled_buyers"].to_numpy() > 0,
            frac=matrix("frac"), weight=matrix("weight"),
            item=matrix("item") if "item_share" in self.features else None,
            profile_intercepts=per_persona(self.profile_intercepts), intercepts=per_persona(self.intercepts),
            slopes=np.array([[float(self.slopes[p][f]) for f in self.features] for p in self.personas]),
            thresholds=per_persona(self.thresholds), unit=float(self.unit))

    def artifact(self) -> dict:
        """JSON-able: everything ``score_basket`` needs. Grows with products x personas only."""
        # Arrow batches, not Row objects: products x personas rows reach the driver here.
        idf = self.product_idf.select("product_id", "idf", "labelled_buyers").toPandas()
        tables: dict[str, dict] = {
            product: {"idf": float(value), "labelled": int(labelled),
                      "affinity": {}, "frac": {}, "weight": {}, "item": {}}
            for product, value, labelled in zip(idf["product_id"], idf["idf"], idf["labelled_buyers"])}
        entries = self.product_tables.toPandas()
        entries = entries[entries["product_id"].isin(tables.keys())]
        for key in ("affinity", "frac", "weight", "item"):
            given = entries[entries[key].notna() & (entries[key] != 0)]
            for product, persona, value in zip(given["product_id"], given["persona"], given[key].astype(float)):
                tables[product][key][persona] = value
        return {"format": "persona_model/1", "personas": self.personas, "features": self.features,
                "intercepts": self.intercepts, "slopes": self.slopes, "thresholds": self.thresholds,
                "unit": self.unit, "customers": self.customers,
                "profile_intercepts": self.profile_intercepts, "products": tables}


class PhaseClock:
    """Wall seconds per phase of the fit and scoring (``PersonaModel.seconds``), so a run's
    MLflow metrics say where the model's time went. Spark is lazy: a phase ends where its
    results are materialised (a checkpoint, a collect), and is charged for what that runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._since, 1)
        self._since = now


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


def product_idf(edges: DataFrame, customers: int, labelled: DataFrame) -> DataFrame:
    """(product_id, idf, buyers, labelled_buyers): idf = log(N / buyers)."""
    buyers = edges.groupBy("product_id").agg(F.count(F.lit(1)).alias("buyers"))
    labelled_buyers = edges.join(labelled.select("customer_id"), "customer_id", "left_semi") \
        .groupBy("product_id").agg(F.count(F.lit(1)).alias("labelled_buyers"))
    return buyers.join(labelled_buyers, "product_id", "left").select(
        "product_id", F.log(F.lit(float(customers)) / F.col("buyers")).alias("idf"), "buyers",
        F.coalesce(F.col("labelled_buyers"), F.lit(0)).cast("long").alias("labelled_buyers"))


def fold_vote_counts(labelled_edges: DataFrame, positives: DataFrame) -> tuple[DataFrame, DataFrame]:
    """((product_id, fold, n): a product's labelled buyers in the fold, (product_id, persona, fold,
    pos): those labelled with the persona), from ``labelled_edges`` (customer_id, product_id,
    fold) and ``positives`` (customer_id, persona). Fold f's vote reads the other folds' counts:
    the totals less its own (``out_of_fold_tables``)."""
    buyers = labelled_edges.groupBy("product_id", "fold").agg(F.count(F.lit(1)).alias("n"))
    labelled_with = labelled_edges.join(positives, "customer_id") \
        .groupBy("product_id", "persona", "fold").agg(F.count(F.lit(1)).alias("pos"))
    return buyers, labelled_with


def out_of_fold_tables(personas: list[str], features: list[str], idf: DataFrame, buyer_counts: DataFrame,
                       positive_counts: DataFrame, profile_weights: DataFrame, profile_intercepts: DataFrame,
                       product_labels: Optional[DataFrame], fold_count: int) -> dict[int, ScoringTables]:
    """fold -> the tables its labelled customers' features read: the vote shares of the labelled
    buyers outside the fold (total counts less the fold's own) and the profile fitted without it.

    Products x personas x folds numbers reach the driver (Arrow batches): the broadcast's size,
    bounded by the catalogue and the taxonomy, never by the customers.
    """
    idf_rows = idf.select("product_id", "idf").toPandas()
    products = pd.Index(idf_rows["product_id"])
    persona_index = pd.Index(personas)
    shape = (len(products), len(personas))
    buyers = buyer_counts.toPandas()
    n = np.zeros((fold_count, len(products)))
    n[buyers["fold"].to_numpy(), products.get_indexer(buyers["product_id"])] = buyers["n"].to_numpy(dtype=float)
    labelled_with = positive_counts.toPandas()
    pos = np.zeros((fold_count, *shape))
    pos[labelled_with["fold"].to_numpy(), products.get_indexer(labelled_with["product_id"]),
        persona_index.get_indexer(labelled_with["persona"])] = labelled_with["pos"].to_numpy(dtype=float)
    weights = profile_weights.where(F.col("model_fold") != FULL).toPandas()
    intercepts = profile_intercepts.where(F.col("model_fold") != FULL).toPandas()
    item = None
    if "item_share" in features and product_labels is not None:
        item = dense_table(products, personas, product_labels.select("product_id", "persona").distinct()
                           .withColumn("item", F.lit(1.0)).toPandas(), "item")
    n_total, pos_total = n.sum(axis=0), pos.sum(axis=0)
    tables = {}
    for fold in range(fold_count):
        others = n_total - n[fold]
        weight = dense_table(products, personas, weights[weights["model_fold"] == fold], "weight")
        fold_intercepts = intercepts[intercepts["model_fold"] == fold].set_index("persona")["intercept"]
        tables[fold] = ScoringTables(
            personas=np.asarray(personas, dtype=object), features=tuple(features), products=products,
            idf=idf_rows["idf"].to_numpy(dtype=float), labelled=others > 0,
            frac=ratio(pos_total - pos[fold], others[:, None]), weight=weight, item=item,
            profile_intercepts=fold_intercepts.reindex(personas).fillna(0.0).to_numpy(dtype=float),
            # The stacker is fitted on these rows: they need features, not probabilities.
            intercepts=np.zeros(len(personas)), slopes=np.zeros((len(personas), len(features))),
            thresholds=np.zeros(len(personas)), unit=1.0)
    return tables


def dense_table(products: pd.Index, personas: list[str], entries: pd.DataFrame, column: str) -> np.ndarray:
    """products x personas array of ``entries[column]`` (rows product_id, persona, column); 0 where
    absent, and rows of other products or personas left out."""
    at = products.get_indexer(entries["product_id"])
    persona_at = pd.Index(personas).get_indexer(entries["persona"])
    keep = (at >= 0) & (persona_at >= 0)
    dense = np.zeros((len(products), len(personas)))
    dense[at[keep], persona_at[keep]] = entries[column].to_numpy(dtype=float)[keep]
    return dense


def out_of_fold_rows(fold_tables: dict[int, ScoringTables], folds: DataFrame, labels: DataFrame,
                     edges: DataFrame, walk_units: DataFrame) -> DataFrame:
    """(customer_id, persona, label, features...) of every labelled customer x persona, each
    customer's features read from its own fold's tables (``out_of_fold_tables``) and its
    out-of-fold walk scores (``walk_units``: customer_id, persona, score, in its fold's units),
    in one pass per Arrow batch of customers (``persona_scoring.customer_features``);
    materialised (a local checkpoint)."""
    features = next(iter(fold_tables.values())).features
    baskets = (edges.join(folds, "customer_id", "left_semi").groupBy("customer_id")
               .agg(F.collect_list("product_id").alias("products")))
    walks = walk_units.groupBy("customer_id").agg(F.collect_list(F.struct("persona", "score")).alias("walk"))
    given = labels.groupBy("customer_id").agg(F.array_distinct(F.flatten(F.collect_list(
        F.coalesce(F.col("personas"), F.array().cast("array<string>"))))).alias("personas"))
    rows = (folds.join(given, "customer_id").join(baskets, "customer_id", "left").join(walks, "customer_id", "left")
            .select("customer_id", "fold", "personas", "products", "walk"))
    schema = "customer_id string, persona string, label double, " + ", ".join(f"{name} double" for name in features)
    return map_arrow_batches(rows, fold_tables, _fold_training_batches, schema)


def _fold_training_batches(fold_tables: dict, batch):
    """One Arrow batch of customers of several folds -> one training batch per fold, each
    against its own fold's tables."""
    fold = batch.column(1).to_numpy(zero_copy_only=False)
    for each in np.unique(fold):
        yield _training_batch(fold_tables[int(each)], batch.take(pa_indices(np.flatnonzero(fold == each))))


def tfidf(edges: DataFrame, idf: DataFrame) -> DataFrame:
    """(customer_id, product_id, x): binary TF x IDF, L2-normalised per customer."""
    weighted = edges.join(idf.select("product_id", "idf"), "product_id") \
        .select("customer_id", "product_id", F.greatest(F.col("idf"), F.lit(1e-6)).alias("x"))
    norm = F.sqrt(F.sum(F.col("x") * F.col("x")).over(Window.partitionBy("customer_id")))
    return weighted.select("customer_id", "product_id", (F.col("x") / norm).alias("x"))


PROFILE_SCHEMA = "model_fold int, product_id string, persona string, weight double"


def fit_profiles(x: DataFrame, labels: DataFrame, folds: DataFrame, personas: list[str], fold_count: int,
                 cfg: ModelConfig) -> tuple[DataFrame, DataFrame]:
    """The purchase-profile logistics of every model fold in one grouped fit.

    Model fold f < ``fold_count`` is trained on the labelled customers outside fold f, model fold
    FULL on all of them. Returns ((model_fold, product_id, persona, weight) with non-zero
    weights, (model_fold, persona, intercept)).

    Each group (one model fold) holds its training customers' TF-IDF rows: it grows with the
    labelled customers (the LLM budget), never with all customers, and the folds fit in
    parallel on the executors. MLlib's logistic over persona-blocked features did the same
    maths with a products x personas dense gradient tree-aggregated every iteration; that was
    the pipeline's largest cost (bench/pipeline_scale.py).
    """
    spark = x.sparkSession
    model_folds = F.broadcast(spark.createDataFrame([(f,) for f in [FULL, *range(fold_count)]], "model_fold int"))
    members = (folds.crossJoin(model_folds).where(F.col("model_fold") != F.col("fold"))
               .select("customer_id", "model_fold"))
    given = F.coalesce(F.col("personas"), F.array().cast("array<string>"))
    persona_list = F.array(*[F.lit(m) for m in personas])
    # A customer's labels as the indices of its personas in ``personas``, comma-separated.
    positives = labels.select("customer_id", F.array_join(F.transform(
        F.filter(given, lambda m: m.isin(*personas)),
        lambda m: (F.array_position(persona_list, m) - 1).cast("string")), ",").alias("positives"))
    # Per customer one row of its labels (no product: a customer whose products are all unknown
    # still trains the intercepts), then its TF-IDF rows without them, so the labels are not
    # copied onto every purchase that the shuffle moves. A string, not an array: Arrow's
    # conversion for pandas took minutes over the purchase rows' null arrays.
    label_rows = members.join(positives, "customer_id").select(
        "model_fold", "customer_id", F.lit(None).cast("string").alias("product_id"),
        F.lit(None).cast("double").alias("x"), "positives")
    product_rows = members.join(x, "customer_id").select(
        "model_fold", "customer_id", "product_id", "x", F.lit(None).cast("string").alias("positives"))
    entries = label_rows.unionByName(product_rows)

    def fit_group(rows: pd.DataFrame) -> pd.DataFrame:
        return _fit_profile_group(rows, personas, cfg.profile_c, cfg.max_iter)

    # Checkpointed: the fit is the model's costliest step, and a cache could be evicted and re-run.
    fitted = (one_partition_per_fold(entries, fold_count + 1).groupBy("model_fold")
              .applyInPandas(fit_group, schema=PROFILE_SCHEMA).localCheckpoint(eager=True))
    weights = fitted.where(F.col("product_id").isNotNull())
    intercepts = fitted.where(F.col("product_id").isNull()).select(
        "model_fold", "persona", F.col("weight").alias("intercept"))
    return weights, intercepts


def one_partition_per_fold(entries: DataFrame, model_folds: int) -> DataFrame:
    """``entries`` with each ``model_fold`` in a partition of its own, so each fold's fit is a
    task of its own. Hashed into spark.sql.shuffle.partitions (and coalesced by AQE) the folds
    shared tasks and were fitted one after another: at 13.3M pairs, 3 tasks of 1 to 3 fits on 2
    cores. A range split on the fold number is not coalesced, and satisfies the grouping by
    fold without another shuffle."""
    return entries.repartitionByRange(model_folds, "model_fold")


def _fit_profile_group(rows: pd.DataFrame, personas: list[str], c: float, max_iter: int) -> pd.DataFrame:
    """One model fold: per persona m, minimise C x sum_u logloss(y_um, x_u . w_m + b_m) + |w_m|^2 / 2
    (sklearn's form of the L2 logistic; the intercepts are not penalised), all personas in one
    L-BFGS: the objective is a sum of per-persona terms, so its minimum is theirs.

    ``rows`` (model_fold, customer_id, product_id, x, positives): per customer one labels row
    (no product; positives: the indices in ``personas`` of its personas, as "3,17", "" for none)
    and a row per product (x its TF-IDF weight, no positives)."""
    from scipy import optimize, sparse  # executor-side: the workers need scipy, not the driver

    model_fold = int(rows["model_fold"].iloc[0])
    # L-BFGS stops at max_iter, so its result follows the order of the sums: sorted, the same rows
    # give the same model whatever order Spark's shuffle delivers them in. A customer's labels
    # row (no product) comes first, then its products.
    rows = rows.sort_values(["customer_id", "product_id"], kind="stable", na_position="first", ignore_index=True)
    customer_codes, _ = pd.factorize(rows["customer_id"])
    known = rows["product_id"].notna().to_numpy()
    product_codes, product_ids = pd.factorize(rows["product_id"][known])
    n, p, k = int(customer_codes.max()) + 1, len(product_ids), len(personas)
    matrix = sparse.csr_matrix((rows["x"].to_numpy()[known], (customer_codes[known], product_codes)), shape=(n, p))
    targets = np.zeros((n, k))
    for code, given in zip(customer_codes[~known], rows["positives"].to_numpy()[~known]):
        if given:  # "3,17": the indices of the customer's personas; "" for none of these
            targets[code, [int(i) for i in given.split(",")]] = 1.0

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[: p * k].reshape(p, k), theta[p * k:]
        logits = matrix @ weights + bias
        loss = c * float(np.sum(np.logaddexp(0.0, logits) - targets * logits)) + 0.5 * float(np.sum(weights * weights))
        residual = c * (1.0 / (1.0 + np.exp(-logits)) - targets)
        return loss, np.concatenate([(matrix.T @ residual + weights).ravel(), residual.sum(axis=0)])

    solution = optimize.minimize(loss_and_gradient, np.zeros(p * k + k), jac=True, method="L-BFGS-B",
                                 options={"maxiter": max_iter, "gtol": 1e-6})
    weights, bias = solution.x[: p * k].reshape(p, k), solution.x[p * k:]
    product_rows, persona_cols = np.nonzero(np.abs(weights) > 1e-12)
    persona_names = np.asarray(personas, dtype=object)
    return pd.DataFrame({
        "model_fold": model_fold,
        "product_id": np.concatenate([np.asarray(product_ids, dtype=object)[product_rows], np.full(k, None, dtype=object)]),
        "persona": np.concatenate([persona_names[persona_cols], persona_names]),
        "weight": np.concatenate([weights[product_rows, persona_cols], bias]),
    })


# --------------------------------------------------------------------------- the stacker


def stacked_probability(frame: DataFrame, model_intercepts: dict, slopes: dict, features: list[str]) -> DataFrame:
    """frame + probability: the stacker's per-persona logistic of the feature columns."""
    persona_col = F.col("persona")

    def per_persona(values: dict) -> F.Column:
        return F.create_map(*[v for p, x in values.items() for v in (F.lit(p), F.lit(float(x)))])[persona_col]

    logit = per_persona(model_intercepts)
    for name in features:
        logit = logit + per_persona({p: slopes[p][name] for p in slopes}) * F.col(name)
    return frame.select("*", (1.0 / (1.0 + F.exp(-logit))).alias("probability"))


def fit_stacker(training: DataFrame, personas: list[str], features: list[str], cfg: ModelConfig
                ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Logistic of ``label`` with per-persona intercepts and per-persona slopes.

    The objective is MLlib's logistic regression with ``standardization``: mean log-loss plus
    ``stack_reg`` / 2 x the squared coefficients measured in units of their column's standard
    deviation, over the design of a shared intercept, one indicator column per persona and
    one (indicator x feature) column per persona and feature. It is minimised by scipy's
    L-BFGS in one grouped task: the rows are the labelled customers x personas (the LLM
    budget), and MLlib spent a Spark job on each of its iterations.
    """
    columns = ["persona", F.col("label").cast("double").alias("label"),
               *[F.col(name).cast("double").alias(name) for name in features]]
    schema = "name string, value double"

    def fit_group(rows: pd.DataFrame) -> pd.DataFrame:
        return _fit_stacker_rows(rows, personas, features, cfg.stack_reg, 2 * cfg.max_iter)

    # One group: the fit is one optimisation (its rows are shipped to one task, not the driver).
    fitted = (training.select(F.lit(0).alias("_all"), *columns).groupBy("_all")
              .applyInPandas(fit_group, schema=schema).collect())
    value = {r["name"]: float(r["value"]) for r in fitted}  # 1 + personas x (1 + features) numbers
    intercepts = {p: value["intercept"] + value[f"b:{p}"] for p in personas}
    slopes = {p: {name: value[f"s:{p}:{name}"] for name in features} for p in personas}
    return intercepts, slopes


def _fit_stacker_rows(rows: pd.DataFrame, personas: list[str], features: list[str], reg: float,
                      max_iter: int) -> pd.DataFrame:
    from scipy import optimize  # executor-side

    k, f = len(personas), len(features)
    # Sorted: the fit stops at max_iter, so its coefficients follow the order of the sums (shuffled
    # rows moved them by up to 1e-3); the same rows now give the same model in any order.
    rows = rows.sort_values(["persona", "label", *features], kind="stable", ignore_index=True)
    persona_of = pd.Categorical(rows["persona"], categories=personas).codes.astype(np.int64)
    values = rows[features].to_numpy(dtype=float)
    label = rows["label"].to_numpy(dtype=float)
    n = len(label)
    # Column standard deviations of the design (sample std, as MLlib's summariser).
    share = np.bincount(persona_of, minlength=k) / n
    indicator_var = share * (1 - share) * n / max(n - 1, 1)

    def per_persona_sums(weights: np.ndarray) -> np.ndarray:
        """(k, f): column sums of ``weights`` (n, f) per persona. A bincount per column: np.add.at
        over rows cost most of each of the fit's ~200 evaluations."""
        return np.stack([np.bincount(persona_of, weights[:, j], minlength=k) for j in range(f)], axis=1)

    sums = per_persona_sums(values)
    squares = per_persona_sums(values * values)
    slope_var = (squares / n - (sums / n) ** 2) * n / max(n - 1, 1)
    penalty = np.concatenate([[0.0], indicator_var, slope_var.ravel()])  # the intercept is not penalised

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        bias, offsets, slopes = theta[0], theta[1:1 + k], theta[1 + k:].reshape(k, f)
        logit = bias + offsets[persona_of] + np.einsum("ij,ij->i", values, slopes[persona_of])
        loss = float(np.mean(np.logaddexp(0.0, logit) - label * logit)) + 0.5 * reg * float(penalty @ (theta * theta))
        residual = (1.0 / (1.0 + np.exp(-logit)) - label) / n
        gradient = np.concatenate([[residual.sum()], np.bincount(persona_of, residual, minlength=k),
                                   per_persona_sums(values * residual[:, None]).ravel()]) + reg * penalty * theta
        return loss, gradient

    solution = optimize.minimize(loss_and_gradient, np.zeros(1 + k + k * f), jac=True, method="L-BFGS-B",
                                 options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-12})
    theta = solution.x
    names = (["intercept"] + [f"b:{p}" for p in personas]
             + [f"s:{p}:{name}" for p in personas for name in features])
    return pd.DataFrame({"name": names, "value": theta})


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

    Each persona's rows go to one pandas group (``applyInPandas``), where the curve is one sort
    and running sums in numpy: a window over Spark's (persona, probability) groups sorted and
    summed the same rows in about 45 s at 13.3M pairs. A group holds one persona's customers
    (16M customers: about 0.6 GB).
    """
    rows = scored.select("persona", "probability", F.col("label").cast("double").alias("label"),
                         F.lit(1.0).alias("_oof"), F.lit(0.0).alias("_pop"), F.lit(0.0).alias("_p"))
    if population is not None:
        rows = rows.unionByName(population.select(
            "persona", "probability", F.lit(0.0).alias("label"), F.lit(0.0).alias("_oof"),
            F.lit(1.0).alias("_pop"), F.col("probability").alias("_p")))
    with_population = population is not None

    def chosen_threshold(persona_rows: pd.DataFrame) -> pd.DataFrame:
        return persona_threshold(persona_rows, max_gap, with_population)

    chosen = rows.groupBy("persona").applyInPandas(chosen_threshold, "persona string, probability double")
    return {r["persona"]: float(r["probability"]) for r in chosen.collect()}


def persona_threshold(rows: pd.DataFrame, max_gap: float, with_population: bool) -> pd.DataFrame:
    """One persona's (persona, probability, label, _oof, _pop, _p) rows -> its chosen threshold
    (``choose_thresholds``): the best F1 among the candidates within the gap (then the smaller
    gap, then the higher threshold), else the smallest gap (then the higher threshold). A gap
    that divides by zero rows is never within ``max_gap``."""
    curve = rows.groupby("probability", sort=True)[["_oof", "label", "_pop", "_p"]].sum().iloc[::-1]
    probability = curve.index.to_numpy(dtype=float)
    scored, positive, population, expected = (curve[c].to_numpy(dtype=float) for c in ("_oof", "label", "_pop", "_p"))
    predicted, hits = np.cumsum(scored), np.cumsum(positive)
    with np.errstate(divide="ignore", invalid="ignore"):
        if with_population:
            gap = np.abs(np.cumsum(population) - expected.sum()) / population.sum()
        else:
            gap = np.abs(predicted - positive.sum()) / scored.sum()
    gap = np.where(np.isnan(gap), np.inf, gap)
    both = predicted + positive.sum()
    f1 = np.divide(2.0 * hits, both, out=np.zeros_like(hits), where=both > 0)
    feasible = gap <= max_gap + 1e-12
    if feasible.any():
        at = np.flatnonzero(feasible)
        best = at[np.lexsort((-probability[at], gap[at], -f1[at]))[0]]
    else:
        best = np.lexsort((-probability, gap))[0]
    return pd.DataFrame({"persona": [rows["persona"].iloc[0]], "probability": [probability[best]]})


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


def out_of_fold_features(spark: SparkSession, config: AppConfig, inputs: ModelInputs,
                         clock: Optional[PhaseClock] = None) -> tuple[DataFrame, dict]:
    """(training rows, context): per labelled customer x persona its label and features, each
    computed from the labels of the other folds only; context holds the frames fit() reuses."""
    cfg = config.model
    clock = clock or PhaseClock()
    fold_count = max(2, int(cfg.cv_folds))
    labels = inputs.labels.join(inputs.graph.customers().select(F.col("key").alias("customer_id")),
                                "customer_id", "left_semi").cache()
    personas = sorted(r["persona"] for r in labels.select(F.explode("personas").alias("persona"))
                      .distinct().collect())
    if not personas:
        raise ValueError("the persona model needs at least one labelled persona")
    n_customers = inputs.graph.customer_count
    folds = assign_folds(labels, fold_count, config.sampling.seed).cache()
    grid = label_grid(labels, personas).cache()
    positives = grid.where(F.col("label") > 0).select("customer_id", "persona")
    features = list(BASE_FEATURES) + (list(ITEM_FEATURES) if inputs.product_labels is not None else [])

    # Walk, out of fold: one propagation with a channel per (fold, persona).
    channels = channel_labels(positives, folds, fold_count).cache()
    propagation_config = dataclasses.replace(config.propagation, epsilon=None)
    # Only the labelled customers' out-of-fold scores are read: the last hop goes to them alone.
    channel_result = propagate(spark, inputs.graph, channels, propagation_config,
                               targets=labels.select("customer_id"))
    log.info("persona model: out-of-fold walk, %d channels in one propagation (%s supersteps)",
             channel_result.stats["personas"], channel_result.stats["supersteps"])
    clock.lap("oof_walk")
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

    # Vote counts and profiles of every fold; then each labelled customer's features in one pass.
    idf = product_idf(inputs.edges, n_customers, labels).cache()
    buyer_counts, positive_counts = fold_vote_counts(inputs.edges.join(folds, "customer_id"), positives)
    buyer_counts, positive_counts = buyer_counts.cache(), positive_counts.cache()  # read in fit() too
    # The profiles read the labelled customers' rows only (each normalised over its own products).
    x = tfidf(inputs.edges.join(labels.select("customer_id"), "customer_id", "left_semi"), idf)
    profile_weights, profile_intercepts = fit_profiles(x, labels, folds, personas, fold_count, cfg)
    log.info("persona model: profiles of %d folds and the full model fitted", fold_count)
    clock.lap("profiles")
    fold_tables = out_of_fold_tables(personas, features, idf, buyer_counts, positive_counts, profile_weights,
                                     profile_intercepts, inputs.product_labels, fold_count)
    clock.lap("oof_tables")  # the vote counts are computed here, at their first read
    training = out_of_fold_rows(fold_tables, folds, labels, inputs.edges, oof_scaled)
    clock.lap("oof_features")
    context = dict(personas=personas, features=features, grid=grid, folds=folds, positives=positives,
                   channels=channels, idf=idf, buyer_counts=buyer_counts, positive_counts=positive_counts,
                   profile_weights=profile_weights, profile_intercepts=profile_intercepts, labels=labels,
                   n_customers=n_customers)
    return training, context


def fit(spark: SparkSession, config: AppConfig, inputs: ModelInputs, clock: Optional[PhaseClock] = None
        ) -> PersonaModel:
    """Fit the persona model on the labelled customers (cross-fitted features)."""
    cfg = config.model
    clock = clock or PhaseClock()
    training, c = out_of_fold_features(spark, config, inputs, clock)
    personas, features, n_customers = c["personas"], c["features"], c["n_customers"]
    grid, folds, positives, channels = c["grid"], c["folds"], c["positives"], c["channels"]
    idf, buyer_counts, positive_counts = c["idf"], c["buyer_counts"], c["positive_counts"]
    profile_weights, profile_intercepts, labels = c["profile_weights"], c["profile_intercepts"], c["labels"]
    intercepts, slopes = fit_stacker(training, personas, features, cfg)
    clock.lap("stacker")
    oof = stacked_probability(training, intercepts, slopes, features).select("customer_id", "persona", "probability",
                                                                        "label").cache()
    # Provisional (labelled-share gap); fit_and_score re-chooses them against the population.
    thresholds = choose_thresholds(oof, cfg.max_prevalence_gap)
    figures = _oof_figures(oof, thresholds)
    log.info("persona model: out-of-fold %s", figures)
    clock.lap("oof_figures")

    # The full model: profile on every label, product tables for scoring and serving.
    full_weights = profile_weights.where(F.col("model_fold") == FULL).select("product_id", "persona", "weight")
    full_intercepts = {r["persona"]: float(r["intercept"])
                       for r in profile_intercepts.where(F.col("model_fold") == FULL).collect()}
    full_labels = positives
    unit = seed_unit(full_labels, config.propagation.beta, n_customers, len(personas))
    full_buyers = buyer_counts.groupBy("product_id").agg(F.sum("n").alias("n"))
    frac = (positive_counts.groupBy("product_id", "persona").agg(F.sum("pos").alias("pos"))
            .join(full_buyers, "product_id").select("product_id", "persona", (F.col("pos") / F.col("n")).alias("frac")))
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
    for frame in (grid, folds, channels, oof, buyer_counts, positive_counts, labels, idf):
        frame.unpersist()
    clock.lap("product_tables")
    model.seconds = clock.seconds
    return model


SCORES_SCHEMA = ("customer_id string, persona string, score double, probability double, probability_low double, "
                 "probability_high double, threshold double, products long")


def score(spark: SparkSession, model: PersonaModel, edges: DataFrame, customer_affinity: DataFrame,
          epsilon: float, customers: Optional[DataFrame] = None) -> DataFrame:
    """(customer_id, persona, score, probability, probability_low, probability_high, threshold,
    products) for every customer of ``edges`` (or ``customers``) x the model's personas;
    materialised (a local checkpoint).

    ``score`` is the raw walk affinity; the features read the model's full-label tables. Each
    customer's products and walk scores are gathered into one row, and every Arrow batch of
    those rows is scored with numpy (``persona_scoring.score_customers``) against the model's
    tables, broadcast once: one shuffle of the edges and one of the walk scores, where a join
    per feature shuffled customers x personas rows four times.
    """
    personas = model.personas
    who = (customers if customers is not None else edges).select("customer_id").distinct()
    baskets = (edges.join(who, "customer_id", "left_semi").groupBy("customer_id")
               .agg(F.collect_list("product_id").alias("products")))
    walks = (customer_affinity.where(F.col("persona").isin(*personas)).join(who, "customer_id", "left_semi")
             .groupBy("customer_id").agg(F.collect_list(F.struct("persona", "score")).alias("walk")))
    rows = who.join(baskets, "customer_id", "left").join(walks, "customer_id", "left")
    eps = float(epsilon)
    return map_arrow_batches(rows, model.scoring_tables(), lambda tables, batch: [_scored_batch(tables, batch, eps)],
                             SCORES_SCHEMA)


def _scored_batch(tables: ScoringTables, batch, epsilon: float):
    """One Arrow batch of (customer_id, products, walk) rows -> its customers x personas rows."""
    import pyarrow as pa

    ids = batch.column(0)
    customers, k = len(ids), len(tables.personas)
    edge_customer, edge_product, walk = _baskets_and_walks(tables, batch.column(1), batch.column(2), customers)
    scored = score_customers(tables, customers, edge_customer, edge_product, walk, epsilon)
    columns = [*_customer_persona_columns(ids, tables.personas),
               *[pa.array(scored[name].ravel()) for name in SCORE_COLUMNS],
               pa.array(np.repeat(scored["products"].astype(np.int64), k))]
    return pa.RecordBatch.from_arrays(columns, names=["customer_id", "persona", *SCORE_COLUMNS, "products"])


def _training_batch(tables: ScoringTables, batch):
    """One Arrow batch of (customer_id, fold, personas, products, walk) rows of one fold -> its
    customers x personas rows of label and features (walk scores already in units, exact)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids, given = batch.column(0), batch.column(2)
    customers, k = len(ids), len(tables.personas)
    edge_customer, edge_product, walk = _baskets_and_walks(tables, batch.column(3), batch.column(4), customers)
    values, _ = customer_features(tables, customers, edge_customer, edge_product, walk, 0.0)
    label = np.zeros((customers, k))
    persona_at = pd.Index(tables.personas).get_indexer(pc.list_flatten(given).to_numpy(zero_copy_only=False))
    owner = pc.list_parent_indices(given).to_numpy()
    label[owner[persona_at >= 0], persona_at[persona_at >= 0]] = 1.0
    columns = [*_customer_persona_columns(ids, tables.personas), pa.array(label.ravel()),
               *[pa.array(values[name][0].ravel()) for name in tables.features]]
    return pa.RecordBatch.from_arrays(columns, names=["customer_id", "persona", "label", *tables.features])


def _baskets_and_walks(tables: ScoringTables, products, walk_entries, customers: int):
    """(edge customer rows, edge product ids, customers x K walk scores) of a batch's list columns
    ``products`` (product ids) and ``walk_entries`` (persona, score structs); null lists are empty."""
    import pyarrow.compute as pc

    entries = pc.list_flatten(walk_entries)
    walk = np.zeros((customers, len(tables.personas)))
    walk[pc.list_parent_indices(walk_entries).to_numpy(),
         pd.Index(tables.personas).get_indexer(entries.field("persona").to_numpy(zero_copy_only=False))] = \
        entries.field("score").to_numpy(zero_copy_only=False)
    return (pc.list_parent_indices(products).to_numpy(),
            pc.list_flatten(products).to_numpy(zero_copy_only=False), walk)


def _customer_persona_columns(ids, personas: np.ndarray) -> list:
    """customer_id and persona of a batch's customers x personas rows, row-major: customer i's
    personas are rows i*K .. i*K + K-1."""
    import pyarrow as pa

    return [ids.take(pa_indices(np.repeat(np.arange(len(ids)), len(personas)))),
            pa.array(np.tile(personas, len(ids)), type=ids.type)]


def pa_indices(positions: np.ndarray):
    """Row positions as an Arrow array, for ``take``."""
    import pyarrow as pa

    return pa.array(positions, type=pa.int64())


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


def _oof_figures(oof: DataFrame, thresholds: dict[str, float], prefix: str = "") -> dict:
    """Out-of-fold set-F1 and prevalence gap of the decisions on the labelled customers."""
    th = F.create_map(*[v for p, t in thresholds.items() for v in (F.lit(p), F.lit(t))])
    best = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    chosen = (F.col("probability") >= th[F.col("persona")]) | (F.row_number().over(best) == 1)
    # Materialised: both figures read it, and the window sorts every row once instead of twice.
    rows = oof.select("customer_id", "persona", "label", chosen.cast("double").alias("p")).localCheckpoint(eager=True)
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
    clock = PhaseClock()
    model = fit(spark, config, inputs, clock)
    scores = score(spark, model, inputs.edges, inputs.customer_affinity, inputs.epsilon)
    clock.lap("score")
    unlabelled = scores.join(inputs.labels.select("customer_id"), "customer_id", "left_anti")
    model.thresholds = choose_thresholds(model._oof, config.model.max_prevalence_gap,  # noqa: SLF001
                                         population=unlabelled.select("persona", "probability"))
    model.figures = {**model.figures, **_oof_figures(model._oof, model.thresholds, "final_")}  # noqa: SLF001
    clock.lap("thresholds")
    model.seconds = clock.seconds
    log.info("persona model: thresholds %s, figures %s, seconds %s", model.thresholds, model.figures, model.seconds)
    thresholds = F.create_map(*[v for p, t in model.thresholds.items() for v in (F.lit(p), F.lit(t))])
    return model, scores.withColumn("threshold", thresholds[F.col("persona")])
