"""LLM persona labelling: sample -> prompts -> backend -> validation -> the label store.

``label_customers`` labels a sample of customers with the configured backend (replay, vllm,
openai or manual; see ``backends``), reusing stored labels whose purchase history, prompt
and taxonomy are unchanged, and never asking about forgotten or overridden customers nor
those labelled from a file (``file_labels``: the team's labels without an LLM). Every
answer is validated (``validation``) and MERGEd into persona_labels (``store``). The run
fails only when more than ``labelling.max_failure_rate`` of the answers failed -- after the
good ones are stored, so nothing paid for is lost.

``label_products`` (``products``) is the optional product stage (``labelling.products``):
the same backends asked about product titles, into product_labels with the same cache and
statuses; ``product_labels_for_model`` is what the persona model reads of it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib.config import AppConfig
from persona_lib.labelling.answers import FAILED, LABELLERS, STATUSES, Labeler
from persona_lib.labelling.backends import make_labeler, read_or_empty
from persona_lib.labelling.figures import answer_figures, generate_calls, raise_if_failing, suffix_lengths
from persona_lib.labelling.products import label_products, product_labels_for_model
from persona_lib.labelling.store import (
    add_overrides,
    cached_labels,
    file_labelled,
    label_distribution,
    labels_for_propagation,
    labels_ref,
    remove_override,
    status_counts,
    upsert_overrides,
    without_forgotten,
    write_labels,
)
from persona_lib.labelling.validation import validate_answer, validate_answers
from persona_lib.prompts import build_prompts, prompt_template
from persona_lib.storage import Tables
from persona_lib.taxonomy import load_taxonomy

log = logging.getLogger("personas.labelling")

__all__ = ["LABELLERS", "Labeler", "add_overrides", "remove_override", "label_customers", "label_distribution",
           "label_products", "labels_for_propagation", "make_labeler", "product_labels_for_model",
           "upsert_overrides", "validate_answer", "STATUSES"]


def label_customers(spark: SparkSession, config: AppConfig, tables: Tables, sample: DataFrame,
                    events: DataFrame, run_id: str, labeller: Optional[str] = None) -> dict:
    """Label the customers of ``sample`` (customer_id) from their ``events`` (purchase_events).

    Returns the run's summary: requested, excluded (forgotten, overridden, from_file: customers
    with a file label, never asked), cache_hits,
    llm_calls (customers sent to the backend), prompt_chars (characters of their prompts,
    ``figures``), labelled (labels written), generate_calls
    (vllm), statuses (of the requested customers' labels now in the store), new_statuses
    (of this run's answers), failure_rate, tokens, tables.
    """
    labelling = config.labelling
    name = labeller or labelling.labeller
    taxonomy = load_taxonomy(config.resolve_path(labelling.taxonomy))
    template = prompt_template(taxonomy, labelling.prompt_token_budget)
    backend = make_labeler(name, config, tables, taxonomy, template)

    # Materialised: a sample computed from the label store would change under the write below.
    requested = sample.select("customer_id").distinct().localCheckpoint()
    remembered = without_forgotten(spark, tables, config.forget, requested)
    not_overridden = remembered
    if name != "manual":  # an override wins: nobody asks an LLM about that customer
        overrides = read_or_empty(spark, tables.persona_overrides).select("customer_id")
        not_overridden = remembered.join(overrides, "customer_id", "left_anti")
    # A label from a file is the team's answer: never re-sent, never overwritten.
    askable = not_overridden.join(file_labelled(spark, tables), "customer_id", "left_anti")
    # The sample is small next to the events: checkpoint it so each count below does not
    # redo the anti-joins, and the prompts are built once.
    askable = askable.localCheckpoint()
    prompts = build_prompts(events, askable, taxonomy, labelling.prompt_token_budget).localCheckpoint()

    # Materialised now: read after the write below, it would count this run's own labels.
    hits = cached_labels(read_or_empty(spark, tables.persona_labels), prompts, taxonomy.version,
                         backend.source).localCheckpoint()
    to_ask = prompts.join(hits, "customer_id", "left_anti")
    # Reliable checkpoint of the answers: Spark would otherwise re-run the backend (and pay
    # the LLM again) for every action on them -- the write and each count.
    answers = validate_answers(backend.answers(spark, to_ask), taxonomy).checkpoint(eager=True)

    # One pass over the answers for statuses, calls, prompt characters and tokens.
    spent = answer_figures(answers, suffix_lengths(to_ask, "customer_id"), "customer_id",
                           template.fixed_chars)
    new_statuses, tokens = spent["new_statuses"], spent["tokens"]
    labels = answers.join(to_ask.select("customer_id", "history_hash", "prompt_version"), "customer_id").select(
        "customer_id", "personas", "status", "detail",
        F.lit(backend.source).alias("source"), "prompt_version",
        F.lit(taxonomy.version).alias("taxonomy_version"), "history_hash", "raw_response",
        F.current_timestamp().alias("labelled_at"), F.lit(run_id).alias("run_id"),
    )
    if new_statuses:  # a run served wholly from the store writes nothing
        write_labels(spark, tables, labels)
    store = labels_ref(spark, tables)

    counts = _counts(requested, remembered, not_overridden, askable, hits)
    counts["llm_calls"] = counts["labelled"] = spent["llm_calls"]
    counts["prompt_chars"] = spent["prompt_chars"]
    failure_rate = new_statuses.get(FAILED, 0) / counts["llm_calls"] if counts["llm_calls"] else 0.0
    stored_statuses = status_counts(store.read(spark).join(requested, "customer_id", "left_semi"))
    summary = {
        "labeller": name,
        "source": backend.source,
        "run_id": run_id,
        "taxonomy": taxonomy.name,
        "taxonomy_version": taxonomy.version,
        "prompt_version": template.version,
        **counts,
        "cache_hit_rate": round(counts["cache_hits"] / counts["askable"], 4) if counts["askable"] else 0.0,
        "statuses": {s: stored_statuses.get(s, 0) for s in STATUSES},
        "new_statuses": {s: new_statuses.get(s, 0) for s in STATUSES},
        "failure_rate": round(failure_rate, 4),
        "tokens": tokens,
        "tables": {"persona_labels": store.summary(spark)},
        "labelled_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if name == "vllm":
        summary["generate_calls"] = generate_calls(answers)
    log.info("labelled %d customers with %s (%d cache hits); statuses %s",
             counts["labelled"], backend.source, counts["cache_hits"], summary["new_statuses"])
    raise_if_failing(answers, "customer_id", "labelling", f"{counts['llm_calls']} customers", failure_rate,
                     labelling.max_failure_rate)
    return summary


def _counts(requested: DataFrame, remembered: DataFrame, not_overridden: DataFrame, askable: DataFrame,
            hits: DataFrame) -> dict:
    n_requested, n_remembered = requested.count(), remembered.count()
    n_not_overridden, n_askable = not_overridden.count(), askable.count()
    return {
        "requested": n_requested,
        "excluded": {"forgotten": n_requested - n_remembered, "overridden": n_remembered - n_not_overridden,
                     "from_file": n_not_overridden - n_askable},
        "askable": n_askable,
        "cache_hits": hits.count(),
    }
