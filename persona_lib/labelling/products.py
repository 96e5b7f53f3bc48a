"""Product labelling (``labelling.products``): the customer labellers asked about product titles.

An optional, budgeted stage that runs before the rounds of ``personas run``:

1. selection: ``popular`` takes the budget's products with the most distinct buyers (a
   fraction of the titled products, or a count); ``all`` takes every titled product. A
   product without a title is never asked: its StockCode alone says nothing about who buys it;
2. prompt: ``prompts.product_prompt_template`` -- the persona list, then the title, with a
   version hash of its own; answers hold 1 to ``max_personas`` personas;
3. the label store product_labels reuses an answer while the title (title_hash), the product
   prompt and the taxonomy are unchanged and it did not fail (``store.cached_labels``, the
   rule of persona_labels), so a product is never paid for twice;
4. the same backends: vllm and openai unchanged (their structured-output schema is the
   taxonomy with the product k); replay serves the GPLR authors' recorded GPT-4 product
   labels (``labelling.products.replay_answers``) matched by normalised title (trimmed,
   whitespace collapsed, lower case), because the default cut keys products by StockCode
   and the recording by title; manual has no product assignments, so every product is
   no_answer;
5. validation (``validation.validate_answers``) gives each answer the customer statuses.

``product_labels_for_model`` is the persona model's view: (product_id, persona), one row per
validated persona of each labelled product, only while the stage is enabled.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from persona_lib import contracts, storage
from persona_lib.config import AppConfig, ProductLabellingConfig
from persona_lib.errors import ConfigError, InputError
from persona_lib.labelling.answers import FAILED, LABEL_STATUSES, NO_ANSWER, STATUSES, Labeler, no_model_columns
from persona_lib.labelling.backends import make_labeler, read_or_empty
from persona_lib.labelling.figures import answer_figures, generate_calls, raise_if_failing, suffix_lengths
from persona_lib.labelling.store import cached_labels, status_counts
from persona_lib.labelling.validation import validate_answers
from persona_lib.prompts import PromptTemplate, build_product_prompts, product_prompt_template
from persona_lib.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger("personas.labelling.products")

SELECTIONS = ("popular", "all")
# The backends key their answers (answers.ANSWERS) by a column named customer_id; a product's
# id travels in it, so vllm and openai serve products without a change.
BACKEND_KEY = "customer_id"
MODEL_SCHEMA = StructType([StructField("product_id", StringType(), False),
                           StructField("persona", StringType(), False)])


def product_labels_ref(spark: SparkSession, tables: storage.Tables) -> storage.TableRef:
    ref = tables.product_labels
    storage.ensure_table(spark, ref, contracts.PRODUCT_LABELS)
    return ref


def title_key(title) -> F.Column:
    """A title's matching key: trimmed, runs of whitespace as one space, lower case."""
    column = F.col(title) if isinstance(title, str) else title
    return F.lower(F.trim(F.regexp_replace(column, r"\s+", " ")))


def product_taxonomy(taxonomy: Taxonomy, products: ProductLabellingConfig) -> Taxonomy:
    """The taxonomy with the product answers' k (the version stays the list's)."""
    if not 1 <= products.max_personas <= len(taxonomy.personas):
        raise ConfigError(f"labelling.products.max_personas must be between 1 and the "
                          f"{len(taxonomy.personas)} personas of {taxonomy.name!r}, got "
                          f"{products.max_personas}")
    return dataclasses.replace(taxonomy, max_personas=products.max_personas)


def products_to_ask(total: int, products: ProductLabellingConfig) -> int:
    """How many products the selection takes out of ``total`` titled ones."""
    if products.selection not in SELECTIONS:
        raise ConfigError(f"labelling.products.selection: {products.selection!r} is not one of "
                          f"{', '.join(SELECTIONS)}")
    if products.selection == "all":
        return total
    budget = products.budget
    if budget <= 0:
        raise ConfigError(f"labelling.products.budget must be positive (a fraction <= 1 or a "
                          f"count), got {budget}")
    if budget > 1 and float(budget) != int(budget):
        raise ConfigError(f"labelling.products.budget above 1 is a count of products and must "
                          f"be whole, got {budget}")
    wanted = int(round(budget * total)) if budget <= 1 else int(budget)
    return min(wanted, total)


def select_products(products: DataFrame, wanted: int) -> DataFrame:
    """The ``wanted`` titled products with the most distinct buyers (then events, then id)."""
    return (titled(products)
            .orderBy(F.desc("customers"), F.desc("events"), F.asc("product_id"))
            .limit(wanted))


def titled(products: DataFrame) -> DataFrame:
    return products.where(F.col("title").isNotNull() & (F.trim("title") != ""))


class ProductReplayLabeler:
    """Recorded GPT-4 product labels matched by normalised title; no match is no_answer."""

    name = "replay"

    def __init__(self, config: AppConfig):
        self.config = config
        self.source = f"replay:{config.labelling.replay_model}"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        recorded = recorded_product_answers(spark, self.config)
        joined = (prompts.select(BACKEND_KEY, title_key("title").alias("title_key"))
                  .join(recorded, "title_key", "left")
                  .select(BACKEND_KEY, F.col("response").alias("raw_response")))
        return no_model_columns(joined.withColumn("error", F.lit(None).cast("string")))


def recorded_product_answers(spark: SparkSession, config: AppConfig) -> DataFrame:
    """title_key, response: the recorded product labels as the JSON answer a model gives.

    The file (CSV, header) holds Description and personas joined by "|". Titles that differ
    only in case or spacing keep the file's first answer. A row without personas is no
    record at all (the product then gets no_answer, as a customer without one does).
    """
    path = config.resolve_path(config.labelling.products.replay_answers)
    if not path.is_file():
        raise InputError(f"labelling.products.replay_answers: recorded product answers file "
                         f"not found: {path}")
    raw = spark.read.option("header", True).csv(str(path))
    missing = {"Description", "personas"} - set(raw.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)} (expected Description, personas)")
    personas = F.trim("personas")
    return (
        raw.select(
            title_key("Description").alias("title_key"),
            F.to_json(F.struct(F.split(personas, r"\s*\|\s*").alias("personas"))).alias("response"),
            F.monotonically_increasing_id().alias("position"))
        .where((F.col("title_key") != "") & personas.isNotNull() & (personas != ""))
        .groupBy("title_key").agg(F.min_by("response", "position").alias("response"))
    )


class NoProductAssignments:
    """The manual labeller for products: the team assigns customers, not products."""

    name = "manual"
    source = "manual"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        none = prompts.select(BACKEND_KEY, F.lit(None).cast("string").alias("raw_response"),
                              F.lit(None).cast("string").alias("error"))
        return no_model_columns(none)


def make_product_labeler(name: str, config: AppConfig, tables: storage.Tables, taxonomy: Taxonomy,
                         template: PromptTemplate) -> Labeler:
    if name == "replay":
        return ProductReplayLabeler(config)
    if name == "manual":
        return NoProductAssignments()
    return make_labeler(name, config, tables, taxonomy, template)


def label_products(spark: SparkSession, config: AppConfig, tables: storage.Tables, products: DataFrame,
                   run_id: str, labeller: Optional[str] = None) -> dict:
    """Label the selected ``products`` (the products table: product_id, title, events,
    customers) into product_labels; the stage's summary.

    Disabled (the default): nothing is read or asked, and the summary says so with zero
    spend. Enabled: requested (selected titled products), untitled (never asked),
    cache_hits, llm_calls, prompt_chars, tokens, statuses (of the requested products' labels
    now stored), new_statuses, answered_share (requested products whose stored answer is not
    no_answer: the replay match rate), failure_rate, versions and the table. Fails like the
    customer labelling, after storing the good answers, when more than
    ``labelling.max_failure_rate`` of the answers failed.
    """
    settings = config.labelling.products
    if not settings.enabled:
        return {"enabled": False, "llm_calls": 0, "prompt_chars": 0, "cache_hits": 0}
    name = labeller or config.labelling.labeller
    taxonomy = product_taxonomy(load_taxonomy(config.resolve_path(config.labelling.taxonomy)), settings)
    template = product_prompt_template(taxonomy, taxonomy.max_personas)
    backend = make_product_labeler(name, config, tables, taxonomy, template)

    counts = products.agg(F.count(F.lit(1)).alias("products"),
                          F.count(F.when(F.col("title").isNotNull() & (F.trim("title") != ""), True))
                          .alias("titled")).first()
    wanted = products_to_ask(int(counts["titled"]), settings)
    # Materialised: the selection is read by the count, the prompts and the store's summary.
    selected = select_products(products, wanted).select("product_id", "title").localCheckpoint()
    prompts = build_product_prompts(selected, taxonomy, taxonomy.max_personas).localCheckpoint()
    # Materialised now: read after the write below, it would count this run's own labels.
    hits = cached_labels(read_or_empty(spark, tables.product_labels), prompts, taxonomy.version,
                         backend.source, key="product_id", input_hash="title_hash").localCheckpoint()
    to_ask = prompts.join(hits, "product_id", "left_anti")
    # Reliable checkpoint: otherwise every action on the answers would ask the LLM again.
    answers = (validate_answers(backend.answers(spark, to_ask.withColumnRenamed("product_id", BACKEND_KEY)),
                                taxonomy)
               .withColumnRenamed(BACKEND_KEY, "product_id").checkpoint(eager=True))

    spent = answer_figures(answers, suffix_lengths(to_ask, "product_id"), "product_id", template.fixed_chars)
    new_statuses = spent["new_statuses"]
    if new_statuses:  # a run served wholly from the store writes nothing
        labels = answers.join(to_ask.select("product_id", "title", "title_hash", "prompt_version"),
                              "product_id").select(
            "product_id", "title", "personas", "status", "detail",
            F.lit(backend.source).alias("source"), "prompt_version",
            F.lit(taxonomy.version).alias("taxonomy_version"), "title_hash", "raw_response",
            F.current_timestamp().alias("labelled_at"), F.lit(run_id).alias("run_id"))
        storage.merge_upsert(spark, labels, product_labels_ref(spark, tables), contracts.PRODUCT_LABELS,
                             keys=("product_id",))
    store = product_labels_ref(spark, tables)
    stored_statuses = status_counts(store.read(spark).join(selected, "product_id", "left_semi"))
    requested = selected.count()
    failure_rate = new_statuses.get(FAILED, 0) / spent["llm_calls"] if spent["llm_calls"] else 0.0
    summary = {
        "enabled": True,
        "labeller": name,
        "source": backend.source,
        "run_id": run_id,
        "selection": settings.selection,
        "budget": settings.budget,
        "products": int(counts["products"]),
        "untitled": int(counts["products"]) - int(counts["titled"]),
        "requested": requested,
        "cache_hits": hits.count(),
        "llm_calls": spent["llm_calls"],
        "prompt_chars": spent["prompt_chars"],
        "tokens": spent["tokens"],
        "statuses": {s: stored_statuses.get(s, 0) for s in STATUSES},
        "new_statuses": {s: new_statuses.get(s, 0) for s in STATUSES},
        "answered_share": round(1 - stored_statuses.get(NO_ANSWER, 0) / requested, 4) if requested else 0.0,
        "failure_rate": round(failure_rate, 4),
        "taxonomy_version": taxonomy.version,
        "prompt_version": template.version,
        "tables": {"product_labels": store.summary(spark)},
        "labelled_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if name == "vllm":
        summary["generate_calls"] = generate_calls(answers)
    log.info("labelled %d products with %s (%d cache hits, %d prompt characters); statuses %s",
             spent["llm_calls"], backend.source, summary["cache_hits"], spent["prompt_chars"],
             summary["new_statuses"])
    raise_if_failing(answers, "product_id", "product labelling", f"{spent['llm_calls']} products", failure_rate,
                     config.labelling.max_failure_rate)
    return summary


def product_labels_for_model(spark: SparkSession, config: AppConfig, tables: storage.Tables) -> DataFrame:
    """product_id, persona: one row per validated persona (status ok or repaired) of each
    product labelled against the current taxonomy.

    Empty while ``labelling.products.enabled`` is false, so turning the stage off turns its
    labels off too, even where an earlier run stored some.
    """
    if not config.labelling.products.enabled:
        return spark.createDataFrame([], MODEL_SCHEMA)
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    labels = read_or_empty(spark, tables.product_labels).where(
        F.col("status").isin(*LABEL_STATUSES) & (F.col("taxonomy_version") == taxonomy.version))
    return (labels.select("product_id", F.explode("personas").alias("persona")).distinct()
            .select(F.col("product_id").cast("string"), F.col("persona").cast("string")))
