"""Persona accuracy against the recorded LLM labels, on the paper's OnlineRetail cut.

Protocol (data/gplr_online_retail/README.md): the graph is built from the authors'
train split only; the "LLM" is the replay of the recorded answers (labelling a sample is a
join of the sample with those answers); a run picks ``budget`` x customers over T rounds
(random, or GPLR's round 1 random then DU score), propagates their labels, and predicts
every other customer. Scores are the mean set-F1, precision and recall of the predictions
against the full labels over the customers the run did NOT label. The authors' released
outputs are scored the same way (a customer whose output equals its full label counts as
labelled), so both stand side by side.

Two ways to predict:
- ``top_k``: the paper's fixed top-k (k = 5) of the walk affinity Psi;
- ``learned``: a per-(customer, persona) logistic regression over walk features (share of
  the customer's affinity, reciprocal rank) and, optionally, the products' LLM labels (the
  share of the customer's train products labelled with the persona), with per-persona
  intercepts and slopes, plus a probability threshold; a customer gets every persona at or
  above it, at least its most probable one. It is fitted on the labelled customers only,
  and never on their own seed: the labelled customers are split in folds and a fold's walk
  features come from a propagation of the OTHER folds' labels (``out_of_fold_affinity``),
  so no customer's label flows back to it through its own products.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib.config import SAMPLERS, AppConfig, PropagationConfig
from persona_lib.errors import ConfigError
from persona_lib.evaluation import data, metrics
from persona_lib.graph import PurchaseGraph, build_graph, edges_from_pairs
from persona_lib.propagation import PropagationResult, propagate
from persona_lib.sampling import budget_per_round, sample_customers

log = logging.getLogger("personas.evaluation")

# log_products (log(1 + train products of the customer)) lets the model give big baskets
# more personas: the LLM's label count grows with the purchases it saw.
WALK_FEATURES = ("walk_share", "walk_reciprocal_rank", "log_products")
ITEM_FEATURES = ("item_share", "item_reciprocal_rank", "item_score")
# L2 strength of the logistic regression (on the mean loss): a light touch that keeps the
# per-persona slopes finite on a few hundred labelled customers (5% budget).
REG_PARAM = 1e-4


@dataclass
class GplrRun:
    """One simulated GPLR run: who was labelled, their answers and the final affinities."""

    labelled: DataFrame      # customer_id: every customer sent to the LLM (answered or not)
    seed_labels: DataFrame   # customer_id, persona: the answers of the labelled customers
    result: PropagationResult
    personas: list[str]      # the personas that occur in the answers, sorted
    seconds: float


def customers_of(graph: PurchaseGraph) -> DataFrame:
    return graph.customers().select(F.col("key").alias("customer_id"))


def replay(sample: DataFrame, answers: DataFrame) -> DataFrame:
    """The "LLM" answers of a sample: its rows of the recorded answers (customer_id, persona)."""
    return answers.join(sample.select("customer_id"), "customer_id", "left_semi")


def run_gplr(spark: SparkSession, graph: PurchaseGraph, answers: DataFrame, config: AppConfig,
             budget: float, sampler: str, seed: int) -> GplrRun:
    """Sample ``budget`` of the customers over ``config.sampling.rounds`` rounds, label them by
    replay, and propagate (Algorithm 1). ``sampler`` "random" draws every round at random."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"evaluation sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    started = time.monotonic()
    customers = customers_of(graph)
    rounds = budget_per_round(graph.customer_count, budget, config.sampling.rounds)
    labelled: Optional[DataFrame] = None
    result: Optional[PropagationResult] = None
    seed_labels = None
    for round_index, size in enumerate(rounds):
        use_du = sampler == "du" and round_index > 0
        distribution = _persona_counts(seed_labels) if use_du else None
        picked = sample_customers(customers, labelled, size, seed, round_index,
                                  affinities=result.customer_affinity if use_du else None,
                                  label_distribution=distribution)
        # Materialised: the DU order depends on the affinities, which are replaced next round.
        labelled = (picked if labelled is None else labelled.unionByName(picked)).localCheckpoint(eager=True)
        seed_labels = replay(labelled, answers).localCheckpoint(eager=True)
        if sampler == "du" or round_index == len(rounds) - 1:
            result = propagate(spark, graph, seed_labels, config.propagation)
    personas = sorted(_persona_counts(seed_labels))
    return GplrRun(labelled, seed_labels, result, personas, time.monotonic() - started)


def predict_top_k(affinity: DataFrame, k: int) -> DataFrame:
    """(customer_id, persona): each customer's ``k`` highest affinities (the paper's output)."""
    positive = affinity.where(F.col("score") > 0)
    return metrics.top_k(positive, k, "customer_id", "persona").select("customer_id", "persona")


def out_of_fold_affinity(spark: SparkSession, graph: PurchaseGraph, seed_labels: DataFrame,
                         propagation: PropagationConfig, folds: int, seed: int) -> DataFrame:
    """(customer_id, persona, score) for the labelled customers, each from a propagation of
    the labels of the other folds only: a customer's own label never reaches its features."""
    if folds < 2:
        raise ConfigError(f"evaluation.cv_folds must be at least 2, got {folds}")
    fold_of = F.pmod(F.xxhash64(F.lit(seed), F.lit("fold"), F.col("customer_id")), F.lit(folds))
    assigned = seed_labels.select("customer_id").distinct().withColumn("fold", fold_of)
    labelled = seed_labels.join(assigned, "customer_id")
    parts = []
    for fold in range(folds):
        held_out = assigned.where(F.col("fold") == fold).select("customer_id")
        others = labelled.where(F.col("fold") != fold).select("customer_id", "persona")
        affinity = propagate(spark, graph, others, propagation).customer_affinity
        parts.append(affinity.join(held_out, "customer_id", "left_semi"))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return union.localCheckpoint(eager=True)


def item_affinity(pairs: DataFrame, item_labels: DataFrame) -> DataFrame:
    """(customer_id, persona, score): share of the customer's products the LLM labelled with
    the persona (the products' answers, aggregated over the customer's train purchases)."""
    sizes = pairs.groupBy("customer_id").agg(F.count(F.lit(1)).alias("products"))
    counts = pairs.join(item_labels, "product_id").groupBy("customer_id", "persona") \
        .agg(F.count(F.lit(1)).alias("labelled_products"))
    return counts.join(sizes, "customer_id").select(
        "customer_id", "persona", (F.col("labelled_products") / F.col("products")).alias("score"))


def products_per_customer(graph: PurchaseGraph) -> DataFrame:
    """(customer_id, products): the customer's degree in the purchase graph."""
    return graph.customers().select(F.col("key").alias("customer_id"), F.col("degree").alias("products"))


def persona_features(customers: DataFrame, personas: list[str], products: DataFrame, walk: DataFrame,
                     items: Optional[DataFrame]) -> DataFrame:
    """One row per (customer, persona) of ``customers`` x ``personas`` with the walk features
    (and the item features when ``items`` is given): raw score, share of the customer's total
    and reciprocal rank within the customer (ties by persona name), and log_products."""
    spark = customers.sparkSession
    persona_frame = F.broadcast(spark.createDataFrame([(p,) for p in personas], "persona string"))
    sizes = products.select("customer_id", F.log1p(F.col("products").cast("double")).alias("log_products"))
    grid = customers.select("customer_id").distinct().join(sizes, "customer_id").crossJoin(persona_frame)
    features = _shares(grid, walk, "walk")
    if items is not None:
        features = _shares(features, items, "item")
    return features


def fit_persona_model(training: DataFrame, personas: list[str], feature_names: Iterable[str]):
    """A logistic regression of ``label`` over the features, with per-persona intercept and
    per-persona slopes on the features (one model, persona interactions as columns)."""
    feature_names = list(feature_names)
    assembler = VectorAssembler(inputCols=_design_columns(personas, feature_names), outputCol="features")
    model = Pipeline(stages=[assembler, LogisticRegression(
        featuresCol="features", labelCol="label", regParam=REG_PARAM, maxIter=200,
        standardization=True)])
    return model.fit(_design(training, personas, feature_names))


def persona_probabilities(model, features: DataFrame, personas: list[str],
                          feature_names: Iterable[str]) -> DataFrame:
    """(customer_id, persona, probability) from a fitted ``fit_persona_model``."""
    scored = model.transform(_design(features, personas, list(feature_names)))
    return scored.select("customer_id", "persona",
                         vector_to_array("probability").getItem(1).alias("probability"))


def choose_personas(probabilities: DataFrame, threshold: float) -> DataFrame:
    """(customer_id, persona): every persona at or above ``threshold``, at least the top one."""
    best_first = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    ranked = probabilities.withColumn("rank", F.row_number().over(best_first))
    return ranked.where((F.col("probability") >= threshold) | (F.col("rank") == 1)) \
        .select("customer_id", "persona")


def best_threshold(probabilities: DataFrame, truth: DataFrame, thresholds: Iterable[float]) -> tuple[float, float]:
    """(threshold, mean F1) of the threshold with the best mean set-F1 on ``truth``'s customers.

    One pass for all thresholds: per customer, the predicted count and hits of each threshold
    (a persona is in when at or above it, or when it is the customer's most probable one).
    """
    thresholds = sorted(float(t) for t in thresholds)
    best_first = Window.partitionBy("customer_id").orderBy(F.desc("probability"), F.asc("persona"))
    truth = truth.select("customer_id", "persona").distinct().withColumn("is_true", F.lit(1))
    rows = (
        probabilities.join(truth.select("customer_id").distinct(), "customer_id", "left_semi")
        .withColumn("rank", F.row_number().over(best_first))
        .join(truth, ["customer_id", "persona"], "left").fillna(0, ["is_true"])
    )
    chosen = lambda t: (F.col("probability") >= t) | (F.col("rank") == 1)
    per_customer = rows.groupBy("customer_id").agg(
        F.sum("is_true").alias("true_n"),
        *[agg for i, t in enumerate(thresholds) for agg in (
            F.sum(chosen(t).cast("int")).alias(f"n{i}"),
            F.sum((chosen(t) & (F.col("is_true") == 1)).cast("int")).alias(f"h{i}"))],
    )
    means = per_customer.agg(*[
        F.avg(2.0 * F.col(f"h{i}") / (F.col(f"n{i}") + F.col("true_n"))).alias(f"f{i}")
        for i in range(len(thresholds))]).first()
    f1, _, threshold = max((float(means[f"f{i}"]), -t, t) for i, t in enumerate(thresholds))
    return threshold, f1


def learned_predictions(spark: SparkSession, graph: PurchaseGraph, run: GplrRun, config: AppConfig,
                        seed: int, items: Optional[DataFrame],
                        oof_affinity: Optional[DataFrame] = None) -> tuple[DataFrame, dict]:
    """(customer_id, persona) of the unlabelled customers by the learned choice, and its fit
    figures. ``items``: the item affinity (``item_affinity``), None for walk features only."""
    feature_names = WALK_FEATURES + (ITEM_FEATURES if items is not None else ())
    if oof_affinity is None:
        oof_affinity = out_of_fold_affinity(spark, graph, run.seed_labels, config.propagation,
                                             config.evaluation.cv_folds, seed)
    answered = run.seed_labels.select("customer_id").distinct()
    truth = run.seed_labels.select("customer_id", "persona")
    training = persona_features(answered, run.personas, products_per_customer(graph), oof_affinity, items) \
        .join(truth.withColumn("label", F.lit(1.0)), ["customer_id", "persona"], "left") \
        .fillna(0.0, ["label"]).localCheckpoint(eager=True)
    model = fit_persona_model(training, run.personas, feature_names)
    training_probabilities = persona_probabilities(model, training, run.personas, feature_names)
    thresholds = [float(t) for t in config.evaluation.thresholds]
    threshold, training_f1 = best_threshold(training_probabilities, truth, thresholds)
    unlabelled = customers_of(graph).join(run.labelled, "customer_id", "left_anti")
    features = persona_features(unlabelled, run.personas, products_per_customer(graph),
                                run.result.customer_affinity, items)
    chosen = choose_personas(persona_probabilities(model, features, run.personas, feature_names), threshold)
    return chosen, {"threshold": threshold, "training_f1": training_f1}


def authors_accuracy(spark: SparkSession, config: AppConfig, budget: float,
                     truth: DataFrame, sampler: str = "du") -> Optional[dict]:
    """Scores of the authors' released output at ``budget`` (None where none exists): the
    customers whose output equals their full label (as a set) count as labelled."""
    path = data.authors_output_path(config, budget, sampler)
    if path is None:
        return None
    output = data.read_authors_output(spark, path)
    as_sets = lambda frame: frame.groupBy("customer_id").agg(F.array_sort(F.collect_set("persona")).alias("s"))
    compared = as_sets(output).join(as_sets(truth).withColumnRenamed("s", "t"), "customer_id")
    predicted_customers = compared.where(F.col("s") != F.col("t")).select("customer_id")
    scores = metrics.mean_scores(metrics.set_scores(output, truth, predicted_customers))
    labelled = compared.count() - scores["customers"]
    return scores | {"labelled": labelled, "file": path.name}


@dataclass
class AccuracyContext:
    """What every run of an evaluation shares: the train graph, answers and item features."""

    graph: PurchaseGraph
    answers: DataFrame
    pairs: DataFrame
    items: DataFrame
    product_answers: int  # LLM answers spent on product labels (the item_labels rows)


def prepare(spark: SparkSession, config: AppConfig) -> AccuracyContext:
    pairs = data.train_pairs(spark, config).localCheckpoint(eager=True)
    graph = build_graph(edges_from_pairs(pairs))
    answers = data.user_labels(spark, config).localCheckpoint(eager=True)
    product_labels = data.item_labels(spark, config)
    items = item_affinity(pairs, product_labels).localCheckpoint(eager=True)
    product_answers = data.item_label_answers(spark, config)
    return AccuracyContext(graph, answers, pairs, items, product_answers)


def evaluate_run(spark: SparkSession, context: AccuracyContext, config: AppConfig, budget: float,
                 sampler: str, seed: int) -> tuple[dict, DataFrame]:
    """Figures of one (budget, sampler, seed) run and its predictions (customer_id, persona,
    source) for every customer: LLM answers for the labelled, learned choice for the rest."""
    started = time.monotonic()
    run = run_gplr(spark, context.graph, context.answers, config, budget, sampler, seed)
    evaluated = context.answers.select("customer_id").distinct().join(run.labelled, "customer_id", "left_anti")
    score = lambda predicted: metrics.mean_scores(metrics.set_scores(predicted, context.answers, evaluated))
    top5 = score(predict_top_k(run.result.customer_affinity, config.publishing.top_k))
    oof = out_of_fold_affinity(spark, context.graph, run.seed_labels, config.propagation,
                               config.evaluation.cv_folds, seed)
    walk_only, walk_fit = learned_predictions(spark, context.graph, run, config, seed, None, oof)
    with_items, items_fit = learned_predictions(spark, context.graph, run, config, seed, context.items, oof)
    walk_scores, items_scores = score(walk_only), score(with_items)
    figures = {
        "budget": budget, "sampler": sampler, "seed": seed,
        "labelled": run.labelled.count(), "evaluated": top5["customers"],
        "top5": top5, "learned_walk": walk_scores | walk_fit, "learned_items": items_scores | items_fit,
        "seconds": round(time.monotonic() - started, 1),
    }
    predictions = (
        run.seed_labels.withColumn("source", F.lit("llm"))
        .unionByName(with_items.withColumn("source", F.lit("learned_items")))
        .groupBy("customer_id", "source").agg(F.array_sort(F.collect_list("persona")).alias("personas"))
    )
    return figures, predictions


def _persona_counts(labels: DataFrame) -> dict[str, int]:
    # One row per persona: small whatever the number of customers.
    return {r["persona"]: r["count"] for r in labels.groupBy("persona").count().collect()}


def _shares(grid: DataFrame, scores: DataFrame, prefix: str) -> DataFrame:
    joined = grid.join(scores.select("customer_id", "persona", F.col("score").alias(f"{prefix}_score")),
                       ["customer_id", "persona"], "left").fillna(0.0, [f"{prefix}_score"])
    per_customer = Window.partitionBy("customer_id")
    ranked = per_customer.orderBy(F.desc(f"{prefix}_score"), F.asc("persona"))
    total = F.sum(f"{prefix}_score").over(per_customer)
    return joined.select(
        *joined.columns,
        F.when(total > 0, F.col(f"{prefix}_score") / total).otherwise(0.0).alias(f"{prefix}_share"),
        # An unreached persona (score 0) gets reciprocal rank 0, not a rank among the zeros.
        F.when(F.col(f"{prefix}_score") > 0, 1.0 / F.row_number().over(ranked)).otherwise(0.0)
        .alias(f"{prefix}_reciprocal_rank"),
    )


def _design_columns(personas: list[str], feature_names: list[str]) -> list[str]:
    return feature_names + [f"p{i}" for i in range(len(personas))] + \
        [f"p{i}_{f}" for i in range(len(personas)) for f in feature_names]


def _design(frame: DataFrame, personas: list[str], feature_names: list[str]) -> DataFrame:
    """The features plus a persona one-hot and its products with each feature."""
    columns = []
    for i, persona in enumerate(personas):
        is_persona = (F.col("persona") == persona).cast("double")
        columns.append(is_persona.alias(f"p{i}"))
        columns += [(is_persona * F.col(f)).alias(f"p{i}_{f}") for f in feature_names]
    return frame.select("*", *columns)


def evaluate_accuracy(spark: SparkSession, config: AppConfig, budgets: Iterable[float],
                      samplers: Iterable[str], seeds: int,
                      on_run: Optional[Callable[[dict], None]] = None) -> dict:
    """Every (budget, sampler) over ``seeds`` seeds, with the authors' output at each budget.

    Returns {"rows": one dict per (budget, sampler) of means over the seeds, "runs": every
    run's figures, "customer_personas": the Delta table of the last run's predictions}.
    """
    from persona_lib import contracts, storage

    context = prepare(spark, config)
    truth = context.answers
    runs, last_predictions = [], None
    authors = {(budget, sampler): authors_accuracy(spark, config, budget, truth, sampler)
               for budget in budgets for sampler in samplers}
    # Seeds outermost: a long evaluation stopped early still has every budget and sampler.
    for seed in range(seeds):
        for budget in budgets:
            for sampler in samplers:
                figures, last_predictions = evaluate_run(spark, context, config, budget, sampler, seed)
                last_predictions = last_predictions.select(
                    "*", F.lit(budget).alias("budget"), F.lit(sampler).alias("sampler"), F.lit(seed).alias("seed"))
                runs.append(figures)
                log.info("run %s", json.dumps(figures))
                if on_run is not None:
                    on_run(figures)
    table = storage.table_ref(config, "evaluation_personas")
    storage.overwrite(last_predictions, table, contracts.EVALUATION_PERSONAS)
    rows = [_mean_row(budget, sampler, [r for r in runs if r["budget"] == budget and r["sampler"] == sampler],
                      authors[(budget, sampler)])
            for budget in budgets for sampler in samplers]
    context.graph.unpersist()
    return {"rows": rows, "runs": runs, "customer_personas": table.location,
            "product_label_answers": context.product_answers}


def _mean_row(budget: float, sampler: str, runs: list[dict], authors: Optional[dict]) -> dict:
    mean = lambda method, key: sum(r[method][key] for r in runs) / len(runs)
    return {
        "budget": budget, "sampler": sampler, "seeds": len(runs),
        "f1": mean("learned_items", "f1"), "precision": mean("learned_items", "precision"),
        "recall": mean("learned_items", "recall"),
        "f1_without_product_labels": mean("learned_walk", "f1"),
        "f1_top5": mean("top5", "f1"), "precision_top5": mean("top5", "precision"),
        "recall_top5": mean("top5", "recall"),
        "f1_min": min(r["learned_items"]["f1"] for r in runs), "f1_max": max(r["learned_items"]["f1"] for r in runs),
        "f1_top5_max": max(r["top5"]["f1"] for r in runs),
        "authors_f1": authors["f1"] if authors else None,
        "authors_labelled": authors["labelled"] if authors else None,
        "labelled": sum(r["labelled"] for r in runs) / len(runs),
        "evaluated": sum(r["evaluated"] for r in runs) / len(runs),
    }


def format_table(rows: list[dict]) -> str:
    """The side-by-side table: authors' released output, our top-5, our learned choice."""
    header = (f"{'budget':>6} {'sampler':>7} {'seeds':>5} | {'authors':>7} | {'top5 F1':>7} {'P':>6} {'R':>6} | "
              f"{'learned F1':>10} {'P':>6} {'R':>6} | {'no item labels':>14}")
    lines = [header, "-" * len(header)]
    show = lambda v: f"{v:.4f}" if v is not None else "   -  "
    for r in rows:
        lines.append(
            f"{r['budget']:>6.2f} {r['sampler']:>7} {r['seeds']:>5} | {show(r['authors_f1']):>7} | "
            f"{r['f1_top5']:>7.4f} {r['precision_top5']:>6.3f} {r['recall_top5']:>6.3f} | "
            f"{r['f1']:>10.4f} {r['precision']:>6.3f} {r['recall']:>6.3f} | {r['f1_without_product_labels']:>14.4f}")
    return "\n".join(lines)
