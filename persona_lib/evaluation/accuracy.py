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
- ``model``: the tables `personas run` publishes with the default config: the production
  persona model (persona_lib.persona_model: cross-fitted walk, co-purchase vote, purchase
  profile, per-persona thresholds) fitted on the run's labels and published by
  persona_lib.publishing's builders; ``model_with_product_labels`` is the same with the
  vendored product labels as its item feature (labelling.products, 3,846 more LLM answers).
  No model lives here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from persona_lib import persona_model, publishing
from persona_lib.config import AppConfig
from persona_lib.evaluation import data, metrics
from persona_lib.evaluation.published import published_scores
from persona_lib.graph import PurchaseGraph, build_graph, edges_from_pairs
from persona_lib.prompts import build_product_prompts, build_prompts, product_prompt_template, prompt_template
from persona_lib.propagation import PropagationResult, propagate
from persona_lib.rounds import RoundPlan, run_rounds
from persona_lib.taxonomy import load_taxonomy

log = logging.getLogger("personas.evaluation")


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


class ReplayLabels:
    """The recorded answers as the LLM (rounds.RoundLabels): labelling a sample is a join of
    the sample with the answers, kept in memory instead of a label store."""

    def __init__(self, spark: SparkSession, answers: DataFrame) -> None:
        self._answers = answers
        self.labelled = spark.createDataFrame([], "customer_id string")
        self.seed_labels = spark.createDataFrame([], "customer_id string, persona string")

    def spent(self) -> DataFrame:
        return self.labelled

    def rechecks(self, round_index: int) -> DataFrame:
        return self.labelled.limit(0)  # recorded answers never go stale

    def label(self, sample: DataFrame, round_index: int) -> dict:
        # Materialised: the DU sample depends on the affinities, which the next walk replaces.
        self.labelled = self.labelled.unionByName(sample.select("customer_id")).localCheckpoint(eager=True)
        self.seed_labels = replay(self.labelled, self._answers).localCheckpoint(eager=True)
        return {"requested": self.labelled.count()}

    def seeds(self) -> DataFrame:
        return self.seed_labels

    def distribution(self) -> dict[str, int]:
        return _persona_counts(self.seed_labels)


def run_gplr(spark: SparkSession, graph: PurchaseGraph, answers: DataFrame, config: AppConfig,
             budget: float, sampler: str, seed: int) -> GplrRun:
    """Sample ``budget`` of the customers over ``config.sampling.rounds`` rounds, label them by
    replay, and propagate: Algorithm 1 as `personas run` runs it (persona_lib.rounds), with
    the recorded answers as the LLM. ``sampler`` "random" draws every round at random."""
    started = time.monotonic()
    plan = RoundPlan.from_budget(graph.customer_count, budget, config.sampling.rounds, seed, sampler)
    labels = ReplayLabels(spark, answers)
    records = run_rounds(customers_of(graph), plan, labels,
                         lambda seeds, round_index: propagate(spark, graph, seeds, config.propagation))
    personas = sorted(labels.distribution())
    return GplrRun(labels.labelled, labels.seed_labels, records[-1].result, personas,
                   time.monotonic() - started)


def predict_top_k(affinity: DataFrame, k: int) -> DataFrame:
    """(customer_id, persona): each customer's ``k`` highest affinities (the paper's output)."""
    positive = affinity.where(F.col("score") > 0)
    return metrics.top_k(positive, k, "customer_id", "persona").select("customer_id", "persona")


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


@dataclass
class PublishedPrediction:
    """What `personas run` would publish for a simulated run: its two persona tables."""

    customer_personas: DataFrame  # the customer_personas builder's rows (contracts.CUSTOMER_PERSONAS)
    persona_affinity: DataFrame   # the persona_affinity builder's rows (contracts.PERSONA_AFFINITY)
    fit: dict                     # the persona model's out-of-fold figures


def production_predictions(spark: SparkSession, context: "AccuracyContext", run: GplrRun, config: AppConfig,
                           with_product_labels: bool) -> PublishedPrediction:
    """The persona tables `personas run` would publish after this run's rounds: the run's
    labels fitted by persona_lib.persona_model and published by persona_lib.publishing's
    builders (the production code, nothing re-implemented here), with the vendored product
    labels as the model's item feature when asked."""
    labels = run.seed_labels.groupBy("customer_id").agg(F.array_sort(F.collect_set("persona")).alias("personas"))
    model_inputs = persona_model.ModelInputs(
        graph=context.graph, edges=context.pairs, labels=labels,
        customer_affinity=run.result.customer_affinity, product_affinity=run.result.product_affinity,
        epsilon=float(run.result.stats["epsilon"]),
        product_labels=context.product_labels if with_product_labels else None)
    model, scores = persona_model.fit_and_score(spark, config, model_inputs)
    no_overrides = spark.createDataFrame([], "customer_id string, personas array<string>")
    inputs = publishing.PublishInputs(
        run_id="evaluation", customers=customers_of(context.graph), edges=context.pairs,
        customer_affinity=run.result.customer_affinity, product_affinity=run.result.product_affinity,
        llm_labels=labels, overrides=no_overrides,
        products=spark.createDataFrame([], "product_id string, title string"),
        epsilon=float(run.result.stats["epsilon"]), persona_scores=scores)
    label_rows = publishing.label_rows(labels, no_overrides)
    computed_at = datetime.now(timezone.utc)
    customer_personas = publishing.build_customer_personas(
        spark, inputs, label_rows, config.model.min_products, config.publishing, computed_at) \
        .localCheckpoint(eager=True)
    persona_affinity = publishing.build_persona_affinity(inputs, label_rows, computed_at).localCheckpoint(eager=True)
    return PublishedPrediction(customer_personas, persona_affinity,
                               {f"model_{k}": round(float(v), 4) for k, v in model.figures.items()})


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
    product_labels: DataFrame  # product_id, persona: the vendored LLM labels of product names
    product_answers: int  # LLM answers spent on product labels (the item_labels rows)
    customer_prompt_chars: DataFrame  # customer_id, prompt_chars: what asking about each would send
    product_prompt_chars: int  # characters of the product prompts of the labelled products


def prompt_chars_of_customers(pairs: DataFrame, config: AppConfig) -> DataFrame:
    """(customer_id, prompt_chars): the characters of the production customer prompt
    (persona_lib.prompts, the labelling config's taxonomy and token budget) of every customer
    of ``pairs``. The split files hold distinct (customer, product) pairs, so every purchase
    is written as bought once and the product name is its title: a replayed evaluation
    spends what the same prompts would have sent."""
    labelling = config.labelling
    taxonomy = load_taxonomy(config.resolve_path(labelling.taxonomy))
    events = pairs.select("customer_id", "product_id", F.lit(1.0).alias("quantity"),
                          F.lit(None).cast("timestamp").alias("event_ts"),
                          F.col("product_id").alias("product_title"))
    fixed = prompt_template(taxonomy, labelling.prompt_token_budget).fixed_chars
    prompts = build_prompts(events, pairs.select("customer_id").distinct(), taxonomy,
                            labelling.prompt_token_budget)
    return prompts.select("customer_id", (F.length("prompt_suffix") + fixed).alias("prompt_chars"))


def prompt_chars_of_products(product_labels: DataFrame, config: AppConfig) -> int:
    """Characters of the production product prompts (labelling.products' k) of the labelled
    products: the spend behind the vendored product labels."""
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    k = config.labelling.products.max_personas
    products = product_labels.select("product_id").distinct().select("product_id", F.col("product_id").alias("title"))
    fixed = product_prompt_template(taxonomy, k).fixed_chars
    suffixes = build_product_prompts(products, taxonomy, k).agg(
        F.count("*").alias("prompts"), F.sum(F.length("prompt_suffix")).alias("chars")).first()
    return int(suffixes["prompts"]) * fixed + int(suffixes["chars"] or 0)


def prepare(spark: SparkSession, config: AppConfig) -> AccuracyContext:
    pairs = data.train_pairs(spark, config).localCheckpoint(eager=True)
    graph = build_graph(edges_from_pairs(pairs))
    answers = data.user_labels(spark, config).localCheckpoint(eager=True)
    product_labels = data.item_labels(spark, config).localCheckpoint(eager=True)
    product_answers = data.item_label_answers(spark, config)
    customer_prompt_chars = prompt_chars_of_customers(pairs, config).localCheckpoint(eager=True)
    return AccuracyContext(graph, answers, pairs, product_labels, product_answers, customer_prompt_chars,
                           prompt_chars_of_products(product_labels, config))


def evaluate_run(spark: SparkSession, context: AccuracyContext, config: AppConfig, budget: float,
                 sampler: str, seed: int, with_product_labels: bool = True) -> tuple[dict, DataFrame]:
    """Figures of one (budget, sampler, seed) run and its predictions (customer_id, personas,
    source) for every customer: LLM answers for the labelled, the published model for the rest."""
    started = time.monotonic()
    run = run_gplr(spark, context.graph, context.answers, config, budget, sampler, seed)
    evaluated = context.answers.select("customer_id").distinct().join(run.labelled, "customer_id", "left_anti")
    score = lambda predicted: metrics.mean_scores(metrics.set_scores(predicted, context.answers, evaluated))
    top5 = score(predict_top_k(run.result.customer_affinity, config.publishing.top_k))
    published = lambda p: published_scores(p.customer_personas, p.persona_affinity, context.answers) | p.fit
    default = production_predictions(spark, context, run, config, with_product_labels=False)
    figures = {
        "budget": budget, "sampler": sampler, "seed": seed,
        "labelled": run.labelled.count(), "evaluated": top5["customers"],
        "prompt_chars": int(context.customer_prompt_chars.join(run.labelled, "customer_id", "left_semi")
                            .agg(F.sum("prompt_chars")).first()[0] or 0),
        "top5": top5, "model": published(default),
    }
    if with_product_labels:
        figures["model_with_product_labels"] = published(
            production_predictions(spark, context, run, config, with_product_labels=True))
    figures["seconds"] = round(time.monotonic() - started, 1)
    predictions = default.customer_personas.select(
        "customer_id", "personas", F.when(F.col("source") == "llm", "llm").otherwise("model").alias("source"))
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


def evaluate_accuracy(spark: SparkSession, config: AppConfig, budgets: Iterable[float],
                      samplers: Iterable[str], seeds: int,
                      on_run: Optional[Callable[[dict], None]] = None, with_product_labels: bool = True) -> dict:
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
                figures, last_predictions = evaluate_run(spark, context, config, budget, sampler, seed,
                                                        with_product_labels)
                last_predictions = last_predictions.select(
                    "*", F.lit(budget).alias("budget"), F.lit(sampler).alias("sampler"), F.lit(seed).alias("seed"))
                runs.append(figures)
                log.info("run %s", json.dumps(figures))
                if on_run is not None:
                    on_run(figures)
    table = storage.resolve_tables(config).evaluation_personas
    storage.overwrite(last_predictions, table, contracts.EVALUATION_PERSONAS)
    rows = [_mean_row(budget, sampler, [r for r in runs if r["budget"] == budget and r["sampler"] == sampler],
                      authors[(budget, sampler)], context.product_answers, context.product_prompt_chars)
            for budget in budgets for sampler in samplers]
    context.graph.unpersist()
    return {"rows": rows, "runs": runs, "customer_personas": table.location,
            "product_label_answers": context.product_answers}


# The published model's figures averaged per (budget, sampler): issue targets are on these.
MODEL_FIGURES = ("f1", "macro_f1", "prevalence_gap", "ece", "ambiguous_share", "f1_ambiguous", "f1_certain")


def _mean_row(budget: float, sampler: str, runs: list[dict], authors: Optional[dict],
              product_label_answers: int, product_prompt_chars: int) -> dict:
    def mean(method: str, key: str) -> Optional[float]:
        values = [r[method][key] for r in runs if method in r and r[method].get(key) is not None]
        return round(sum(values) / len(values), 4) if values else None

    labelled = sum(r["labelled"] for r in runs) / len(runs)
    prompt_chars = round(sum(r.get("prompt_chars", 0) for r in runs) / len(runs))
    # Tiny figures (F1 over thousands of characters): kept to 3 significant digits, not 4 decimals.
    per_1k = lambda f1_value, chars: float(f"{1000 * f1_value / chars:.3g}") if f1_value and chars else None
    f1, f1_items = mean("model", "f1"), mean("model_with_product_labels", "f1")
    return {
        "budget": budget, "sampler": sampler, "seeds": len(runs),
        **{key: mean("model", key) for key in MODEL_FIGURES},
        **{f"{key}_with_product_labels": mean("model_with_product_labels", key) for key in MODEL_FIGURES},
        "f1_top5": mean("top5", "f1"), "precision_top5": mean("top5", "precision"),
        "recall_top5": mean("top5", "recall"),
        "f1_min": min(r["model"]["f1"] for r in runs), "f1_max": max(r["model"]["f1"] for r in runs),
        "f1_top5_max": max(r["top5"]["f1"] for r in runs),
        "authors_f1": authors["f1"] if authors else None,
        "authors_labelled": authors["labelled"] if authors else None,
        "labelled": labelled,
        "evaluated": sum(r["evaluated"] for r in runs) / len(runs),
        # LLM spend: one call per labelled customer, plus one per labelled product title.
        "llm_calls": labelled,
        "llm_calls_with_product_labels": labelled + product_label_answers,
        "f1_per_1k_llm_calls": round(1000 * f1 / labelled, 4) if f1 and labelled else None,
        "f1_per_1k_llm_calls_with_product_labels": round(1000 * f1_items / (labelled + product_label_answers), 4)
        if f1_items else None,
        "prompt_chars": prompt_chars,
        "prompt_chars_with_product_labels": prompt_chars + product_prompt_chars,
        "f1_per_1k_prompt_chars": per_1k(f1, prompt_chars),
        "f1_per_1k_prompt_chars_with_product_labels": per_1k(f1_items, prompt_chars + product_prompt_chars),
    }


def format_table(rows: list[dict]) -> str:
    """The side-by-side table: the authors' released output, our top-5, the published model."""
    header = (f"{'budget':>6} {'sampler':>7} {'seeds':>5} | {'authors':>7} | {'top5 F1':>7} | "
              f"{'F1':>6} {'macroF1':>7} {'gap':>6} {'ECE':>6} {'ambig':>6} {'F1/1k chars':>11} | "
              f"{'F1, product labels':>18} {'F1/1k chars':>11}")
    lines = [header, "-" * len(header)]
    show = lambda v, width=6: f"{v:>{width}.4f}" if v is not None else f"{'-':>{width}}"
    tiny = lambda v: f"{v:>11.3g}" if v is not None else f"{'-':>11}"
    for r in rows:
        lines.append(
            f"{r['budget']:>6.2f} {r['sampler']:>7} {r['seeds']:>5} | {show(r['authors_f1'], 7)} | "
            f"{show(r['f1_top5'], 7)} | {show(r['f1'])} {show(r['macro_f1'], 7)} {show(r['prevalence_gap'])} "
            f"{show(r['ece'])} {show(r['ambiguous_share'])} {tiny(r['f1_per_1k_prompt_chars'])} | "
            f"{show(r['f1_with_product_labels'], 18)} {tiny(r['f1_per_1k_prompt_chars_with_product_labels'])}")
    return "\n".join(lines)
