"""The persona pipeline (GPLR, Algorithm 1), as one job: ingest if needed, then T rounds of
sample -> label -> propagate, then publish, all recorded in one MLflow run.

Budget semantics: the budget is the size the label store should reach (a fraction of the
customers below 1, or a whole count), split over the rounds; labels loaded from a file and
overrides count towards it. Budget 0 means no LLM sampling: one round propagates the file
labels and overrides alone. Every answer already in the store counts, so
a run that crashed resumes where it stopped, and a second run with the same config calls the
LLM for nobody: labels are never paid twice. Round 1 also re-sends the customers whose
purchase history changed since they were labelled; the label store's cache decides which of
them really go to the LLM (history, prompt and taxonomy unchanged -> no call).

The run commits through the ``runs`` table, written last: a reader pins the versions of the
latest complete run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Optional

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import publishing, storage, tracking
from persona_lib import rounds as rounds_lib
from persona_lib.config import AppConfig
from persona_lib.errors import ConfigError, InputError
from persona_lib.labelling.answers import LABEL_STATUSES

log = logging.getLogger("personas.pipeline")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StageTimer:
    """Seconds per stage, logged as metrics (time_<stage>_s); a stage given a ``label`` also
    says how long it took, one line when it ends (``say``), so a slow stage shows in the log."""

    def __init__(self, say: Optional[Callable[[str], None]] = None) -> None:
        self.seconds: dict[str, float] = {}
        self.say = say

    def record(self, stage: str, started: float, label: Optional[str] = None) -> None:
        """A stage that began at ``started`` (time.perf_counter()) and ends now."""
        elapsed = time.perf_counter() - started
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        if label and self.say:
            self.say(f"{label} took {elapsed:.1f} s")

    def __call__(self, stage: str, label: Optional[str] = None):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, exc_type, *exc):
                timer.record(stage, self.start, label if exc_type is None else None)

        return _Span()


def run_pipeline(spark: SparkSession, config: AppConfig,
                 progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the whole pipeline; returns the summary the CLI prints."""
    from persona_lib import graph as graph_lib
    from persona_lib import labelling, propagation
    from persona_lib.ingest import ingest

    say = progress or log.info
    timer = StageTimer(say)
    started_at = _now()
    tables = storage.resolve_tables(config)
    events_ref = tables.purchase_events
    ingest_summary = None
    if not events_ref.exists(spark):
        source = config.ingest.source
        if not source.format:
            # Never the bundled demo data unless the config names it (format: uci_landing).
            raise ConfigError(f"tables.purchase_events: {events_ref.location} not found and ingest.source is not "
                              "set, so there is nothing to ingest; check the table name or set ingest.source")
        say(f"purchase_events not found: ingesting ingest.source ({source.format}) first")
        with timer("ingest", "ingest"):
            ingest_summary = ingest(spark, config)

    if config.sampling.budget == 0:
        _require_labels_without_llm(spark, tables, config.forget)
    # The caller holds the writer lock (the CLI takes it), so a 'running' row is a killed job.
    setup_started = time.perf_counter()
    publishing.abandon_stale_runs(spark, tables.runs, config)
    with tracking.run(config, run_name=tracking.run_name(config, started_at=started_at),
                      tags=tracking.environment_tags()) as active:
        run_id = active.info.run_id
        publishing.record_run(spark, tables.runs, run_id, "running", started_at, None, {})
        try:
            summary = _run_rounds_and_publish(spark, config, tables, run_id, started_at, timer, say,
                                              graph_lib, labelling, propagation, setup_started)
        except BaseException:
            publishing.record_run(spark, tables.runs, run_id, "failed", started_at, _now(), {})
            raise
        if ingest_summary is not None:
            summary["ingest"] = {k: ingest_summary[k] for k in ("rows_in", "rows_kept", "quarantined")}
        return summary


def _run_rounds_and_publish(spark, config, tables, run_id, started_at, timer, say,
                            graph_lib, labelling, propagation, setup_started) -> dict:
    events_ref = tables.purchase_events
    events_version = events_ref.version(spark)
    events = events_ref.read(spark, version=events_version)
    tracking.log_params(_params(config))
    tracking.log_delta_input(spark, events_ref, context="purchase_events")
    # The MLflow store (created on a fresh work dir), the runs row, the run's params and input.
    timer.record("setup", setup_started, f"run {run_id} set-up (MLflow run, runs row)")

    with timer("graph", "graph"):
        edges, graph, graph_keys = purchase_graph(spark, config, tables, events)
        # The graph's customer vertices (materialised with it) are the events' customers: a
        # distinct of its own was one more scan and shuffle of every event.
        customers = graph.customers().select(F.col("key").alias("customer_id"))
        n_customers = graph.customer_count
    say(f"graph: {n_customers} customers, {graph.product_count} product vertices"
        f"{' (product groups)' if graph_keys is not None else ''}, {graph.edge_count} edges")

    # labelling.products (off by default): product titles are labelled once, before the rounds.
    with timer("label_products"):
        product_summary = labelling.label_products(
            spark, config, tables, tables.products.read(spark), run_id)
    if product_summary["enabled"]:
        say(f"product labels: {product_summary['requested']} products, cache hits "
            f"{product_summary['cache_hits']}, LLM calls {product_summary['llm_calls']}, "
            f"statuses {product_summary['statuses']}")

    no_llm = config.sampling.budget == 0
    # Budget 0: no LLM sampling, so one round propagates the file labels and overrides (more
    # rounds would repeat it exactly).
    plan = rounds_lib.RoundPlan.from_budget(n_customers, config.sampling.budget,
                                            1 if no_llm else config.sampling.rounds, config.sampling.seed)
    store_labels = rounds_lib.StoreLabels(spark, config, tables, customers, events, run_id, asks_llm=not no_llm)
    n_rounds = len(plan.targets)
    round_figures = []
    convergence = []  # per round: residual and messages per superstep, against theta and epsilon
    supersteps: list[tuple[int, int, float]] = []  # this round's (superstep, messages, largest residual)
    propagation_tables: dict = {}

    def on_superstep(step: int, messages: int, residual: float) -> None:
        supersteps.append((step, messages, residual))
        say(f"  superstep {step}: {messages} messages, largest residual {residual:.3g}")

    def walk(seeds: DataFrame, round_index: int):
        supersteps.clear()
        result = per_product_affinity(propagation.propagate(spark, graph, seeds, config.propagation,
                                                    on_superstep=on_superstep), graph_keys)
        propagation_tables.update(propagation.write_propagation(
            spark, tables, result, propagation_id=f"{run_id}-r{round_index + 1}"))
        return result

    def on_sampled(round_index: int, sampled: int, rechecks: int, sampler: str) -> None:
        target = plan.targets[round_index]
        say(f"round {round_index + 1}/{n_rounds}: labelling {sampled} sampled "
            f"(+{rechecks} to re-check for changed histories), label store target {target}")
        tracking.log_params({"round": round_index + 1, "rounds": n_rounds, "label_store_target": target,
                             "sampled": sampled, "rechecks": rechecks, "sampler": sampler,
                             "labeller": config.labelling.labeller})
        if no_llm:
            say("sampling.budget is 0: no customer is sent to the LLM; propagating the file labels "
                "and overrides")

    def on_round(record: rounds_lib.RoundRecord) -> None:
        if not no_llm:
            summary = record.label_summary
            say(f"round {record.index + 1}: label statuses {summary.get('statuses')}, "
                f"cache hits {summary.get('cache_hits')}, LLM calls {summary.get('llm_calls')}")
        stats = record.result.stats
        figures = _round_figures(record.label_summary, stats)
        _log_round(stats, figures, list(supersteps), record.index)
        round_figures.append(figures)
        convergence.append({"residuals": [r for _, _, r in supersteps], "messages": [m for _, m, _ in supersteps],
                            "epsilon": stats["epsilon"], "theta": stats["theta"]})

    hooks = rounds_lib.RoundHooks(
        round_scope=lambda i: tracking.run(config, run_name=f"round-{i + 1}", nested=True),
        stage=timer, on_sampled=on_sampled, on_round=on_round)
    # With the DU sampler every round walks: the next round's DU score reads its affinities,
    # and each round's walk is published as a version of the propagation tables.
    records = rounds_lib.run_rounds(customers, plan, store_labels, walk, hooks)
    result = records[-1].result
    spend = _llm_spend(round_figures, product_summary)
    without_seed = _personas_without_seed(spark, config, tables)
    tracking.log_metrics(spend)

    say("fitting the persona model")
    with timer("model", "persona model fit"):
        model, persona_scores = _fit_persona_model(spark, config, tables, graph, edges,
                                                   float(result.stats["epsilon"]))
    say(f"persona model: {model.figures}")
    tracking.log_metrics({f"model_{k}": v for k, v in model.figures.items()})
    tracking.log_metrics({f"time_model_{phase}_s": seconds for phase, seconds in model.seconds.items()})
    say("publishing persona tables")
    with timer("publish", "publishing"):
        inputs = publishing.PublishInputs(
            run_id=run_id,
            customers=customers,
            edges=edges.select("customer_id", "product_id"),
            customer_affinity=tables.customer_affinity.read(spark),
            product_affinity=tables.product_affinity.read(spark),
            llm_labels=_llm_labels(spark, tables.persona_labels),
            overrides=_current_overrides(spark, tables.persona_overrides),
            products=tables.products.read(spark).select("product_id", "title"),
            epsilon=float(result.stats["epsilon"]),
            persona_scores=persona_scores,
        )
        computed_at = _now()
        outputs = _publish(spark, config, tables, inputs, computed_at)
    labels_ref = tables.persona_labels
    output_tables = {**outputs, "persona_labels": labels_ref.summary(spark), **propagation_tables}

    published = _published_figures(spark, tables.customer_personas, outputs)
    with timer("track", "MLflow tracking"):
        _log_run_artifacts(spark, config, tables, run_id, published, convergence, outputs, model)
    metrics = {
        "customers": n_customers,
        "labelled": published["labelled"],
        "overridden": published["overridden"],
        "propagated": published["propagated"],
        "coverage": published["covered"] / max(n_customers, 1),
        "ambiguous_share": published["ambiguous_share"],
        "supersteps": result.stats["supersteps"],
        "max_residual": result.stats["max_residual"] or 0.0,
        "epsilon": result.stats["epsilon"],
        **_label_totals(round_figures),
        **{f"time_{stage}_s": seconds for stage, seconds in timer.seconds.items()},
    }
    tracking.log_metrics(metrics)
    tracking.set_tags({f"output.{name}.version": t["version"] for name, t in output_tables.items()})
    tracking.set_tags({f"output.{name}.location": t["location"] for name, t in output_tables.items()})

    summary = {
        "run_id": run_id,
        "customers": n_customers,
        "labelled": published["labelled"] + published["overridden"],
        "llm_labelled": published["labelled"],
        "overridden": published["overridden"],
        "propagated": published["propagated"],
        "ambiguous_share": round(published["ambiguous_share"], 4),
        "top_personas": published["top_personas"],
        "personas_without_seed": without_seed,
        "epsilon": result.stats["epsilon"],
        "supersteps": result.stats["supersteps"],
        "max_residual": result.stats["max_residual"],
        "rounds": round_figures,
        "llm_spend": spend, "product_labels": product_summary,
        "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
        "model_seconds": model.seconds,
        "mlflow": {"run_id": run_id, "tracking_uri": tracking.tracking_uri(config)},
        "tables": output_tables,
    }
    # The commit point: readers trust only runs marked complete, with these versions.
    publishing.record_run(spark, tables.runs, run_id, "complete", started_at, _now(),
                          {name: t["version"] for name, t in outputs.items()}, summary)
    summary["tables"]["runs"] = tables.runs.summary(spark)
    _refresh_catalog_views(spark, tables)
    graph.unpersist()
    edges.unpersist()
    return summary


def _publish(spark, config, tables, inputs, computed_at) -> dict:
    return publishing.publish(spark, tables, inputs, computed_at, config.model.min_products, config.publishing)


def _refresh_catalog_views(spark, tables) -> None:
    """SQL-only users read the persistent current_* views of a catalog: repoint them at the run
    just committed. Locally the views live in the session and are made by whoever reads."""
    if tables.runs.is_catalog:
        publishing.register_tables(spark, tables)


def _require_labels_without_llm(spark, tables: storage.Tables, forget) -> None:
    """Budget 0 asks no LLM: without a file label or an override there is nothing to spread,
    which is a mistake to say before a run starts, not an empty publication."""
    from persona_lib import labelling
    from persona_lib.errors import InputError

    if not labelling.labels_for_propagation(spark, tables, forget).limit(1).count():
        raise InputError("sampling.budget is 0 (no LLM sampling) and no customer has a label to propagate: "
                         "load labels with `personas label --from-file`, add overrides with "
                         "`personas override add`, or set a budget")


def _personas_without_seed(spark, config, tables: storage.Tables) -> list[str]:
    """The taxonomy's personas no labelled customer has: a warning, since propagation has
    nothing to spread for them (the summary lists them too)."""
    from persona_lib import labelling
    from persona_lib.labelling.file_labels import personas_without_seed
    from persona_lib.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    missing = personas_without_seed(taxonomy, labelling.label_distribution(spark, tables, config.forget))
    if missing:
        log.warning("%d persona(s) of taxonomy %r have no seed (no labelled customer has them), so "
                    "propagation gives them to nobody: %s", len(missing), taxonomy.name, ", ".join(missing))
    return missing


def purchase_graph(spark, config, tables: storage.Tables, events: DataFrame):
    """(edges per product, the walk's graph, graph_keys): the graph's product vertices are
    products, or their catalogue groups under graph.product_key group (graph_keys then maps
    product_id -> vertex; None otherwise). The persona model and the evidence keep the
    per-product edges: only the walk runs on the coarser vertices."""
    from persona_lib import graph as graph_lib

    # Persisted: the graph build and the persona model read the pairs many times, and each
    # read would otherwise scan purchase_events and shuffle it again. Unpersisted with the graph.
    edges = graph_lib.edges_from_events(events, config.graph.edge_weighting,
                                        config.graph.half_life_days).persist(StorageLevel.MEMORY_AND_DISK)
    return (edges, *walk_graph(spark, config, tables, edges))


def walk_graph(spark, config, tables: storage.Tables, edges: DataFrame):
    """(the walk's graph, graph_keys) over ``edges`` (customer_id, product_id, weight), keyed
    by graph.product_key: graph_keys maps product_id -> vertex under "group", None otherwise."""
    from persona_lib import graph as graph_lib

    if config.graph.product_key == "product":  # the paper's graph: no products table to read
        return graph_lib.build_graph(edges), None
    if not tables.products.exists(spark):
        raise InputError(f"graph.product_key {config.graph.product_key}: no products table at "
                         f"{tables.products.location}; run `personas ingest` first (with ingest.products.columns.group)")
    # One row per product: small, and read by every round's walk.
    graph_keys = graph_lib.product_graph_keys(tables.products.read(spark), config.graph.product_key).localCheckpoint()
    return graph_lib.build_graph(graph_lib.edges_by_key(edges, graph_keys, config.graph.edge_weighting)), graph_keys


def per_product_affinity(result, graph_keys: Optional[DataFrame]):
    """The walk's result with product_affinity per product (its vertex's rows)."""
    if graph_keys is None:
        return result
    from persona_lib import graph as graph_lib

    return dataclasses.replace(result, product_affinity=graph_lib.affinity_by_product(result.product_affinity,
                                                                                      graph_keys))


def _product_labels(spark, config, tables: storage.Tables) -> Optional[DataFrame]:
    """(product_id, persona) of the product-labelling stage, None while it is switched off
    (labelling.products.enabled), so the model then has no product-label feature at all."""
    if not config.labelling.products.enabled:
        return None
    from persona_lib import labelling

    return labelling.product_labels_for_model(spark, config, tables)


def _fit_persona_model(spark, config, tables, graph, edges, epsilon: float):
    """The run's persona model (fitted on the label store) and its scores of every customer."""
    from persona_lib import persona_model

    inputs = persona_model.ModelInputs(
        graph=graph, edges=edges.select("customer_id", "product_id").distinct(),
        labels=persona_model.training_labels(spark, tables, config.forget),
        customer_affinity=tables.customer_affinity.read(spark),
        product_affinity=tables.product_affinity.read(spark),
        epsilon=epsilon, product_labels=_product_labels(spark, config, tables))
    return persona_model.fit_and_score(spark, config, inputs)


def _llm_labels(spark, persona_labels) -> DataFrame:
    return persona_labels.read(spark).where(F.col("status").isin(*LABEL_STATUSES)).select(
        "customer_id", "personas", "raw_response")


def _current_overrides(spark, persona_overrides) -> DataFrame:
    if not persona_overrides.exists(spark):
        return spark.createDataFrame([], "customer_id string, personas array<string>")
    from pyspark.sql.window import Window

    newest = Window.partitionBy("customer_id").orderBy(F.desc("created_at"))
    return (persona_overrides.read(spark).withColumn("_n", F.row_number().over(newest)).where("_n = 1")
            .select("customer_id", "personas"))


def _round_figures(label_summary: dict, stats: dict) -> dict:
    statuses = label_summary.get("statuses", {}) or {}
    requested = label_summary.get("requested", 0) or 0
    figures = {
        "requested": requested,
        "llm_calls": label_summary.get("llm_calls", 0),
        "prompt_chars": label_summary.get("prompt_chars", 0),
        "cache_hits": label_summary.get("cache_hits", 0),
        "cache_hit_rate": (label_summary.get("cache_hits", 0) / requested) if requested else 0.0,
        "supersteps": stats["supersteps"],
        "max_residual": stats["max_residual"] or 0.0,
        "seeds": stats["seeds"],
    }
    figures.update({f"status_{k}": v for k, v in statuses.items()})
    figures["messages_total"] = sum(stats.get("messages", []) or [])
    figures["messages"] = list(stats.get("messages", []) or [])
    return figures


def _label_totals(round_figures: list[dict]) -> dict:
    """The run's labelling figures over all rounds (the rounds' own are on the nested runs)."""
    totals: dict[str, float] = {}
    for figures in round_figures:
        for key in ("requested", "llm_calls", "prompt_chars", "cache_hits"):
            totals[key] = totals.get(key, 0) + figures.get(key, 0)
        for key, value in figures.items():
            if key.startswith("status_"):
                totals[key] = totals.get(key, 0) + value
    totals["cache_hit_rate"] = totals["cache_hits"] / totals["requested"] if totals.get("requested") else 0.0
    return totals


def _llm_spend(round_figures: list[dict], product_summary: dict) -> dict:
    """LLM calls and prompt characters of the run, customers and products apart."""
    return {
        "llm_calls_customers": sum(f.get("llm_calls", 0) for f in round_figures),
        "prompt_chars_customers": sum(f.get("prompt_chars", 0) for f in round_figures),
        "llm_calls_products": product_summary.get("llm_calls", 0),
        "prompt_chars_products": product_summary.get("prompt_chars", 0),
    }


def _published_figures(spark, customer_personas, outputs) -> dict:
    personas = customer_personas.read(
        spark, version=outputs["customer_personas"]["version"])
    sources = {"labelled": "llm", "overridden": "override", "propagated": "propagated"}
    # One pass over the table for every count of the summary.
    counts = personas.agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum(F.col("is_ambiguous").cast("int")).alias("ambiguous"),
        F.sum((F.size("personas") > 0).cast("int")).alias("covered"),
        *[F.sum((F.col("source") == source).cast("int")).alias(name) for name, source in sources.items()],
    ).first()
    top = (personas.select(F.explode("personas").alias("persona")).groupBy("persona").count()
           .orderBy(F.desc("count"), "persona").limit(10).collect())
    return {
        **{name: counts[name] or 0 for name in sources},
        "covered": counts["covered"] or 0,
        "ambiguous_share": (counts["ambiguous"] or 0) / max(counts["customers"], 1),
        "top_personas": {r["persona"]: r["count"] for r in top},
    }


def _log_round(stats: dict, figures: dict, supersteps: list, round_index: int) -> None:
    """A round's nested run: its propagation settings as params, its figures once at the
    round's step, and the residual and messages of every superstep at that superstep."""
    tracking.log_params({key: stats[key] for key in ("method", "epsilon", "theta", "lhat", "beta")})
    tracking.log_metrics(figures, step=round_index + 1)
    for step, messages, residual in supersteps:
        tracking.log_metrics({"superstep_messages": messages, "superstep_residual": residual}, step=step)


def _persona_counts(spark, config, customer_personas, outputs) -> dict:
    """Customers per persona for every persona of the taxonomy (zero included), largest first."""
    personas = customer_personas.read(
        spark, version=outputs["customer_personas"]["version"])
    # Taxonomy-sized: one row per persona reaches the driver.
    counts = {r["persona"]: r["count"] for r in
              personas.select(F.explode("personas").alias("persona")).groupBy("persona").count().collect()}
    try:
        from persona_lib.taxonomy import load_taxonomy

        for persona in load_taxonomy(config.resolve_path(config.labelling.taxonomy)).personas:
            counts.setdefault(persona.name, 0)
    except Exception as exc:  # noqa: BLE001 - the chart still shows the personas that occur
        log.warning("could not read the taxonomy for the persona chart: %s", exc)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _log_run_artifacts(spark, config, tables, run_id, published, convergence, outputs, model) -> None:
    from persona_lib import cold_start
    from persona_lib.query import run_alias

    taxonomy_path = config.resolve_path(config.labelling.taxonomy)
    if taxonomy_path.is_file():
        tracking.log_file_artifact(taxonomy_path, artifact_path="taxonomy")
    _log_prompt_template(config)
    persona_counts = _persona_counts(spark, config, tables.customer_personas, outputs)
    tracking.log_bar_chart(persona_counts, f"Customers per persona (all {len(persona_counts)} personas)",
                           "customers", "charts/persona_distribution.png")
    tracking.log_json_artifact(persona_counts, "charts/persona_distribution.json")
    tracking.log_convergence_chart(convergence, "charts/convergence.png")
    personas = tables.customer_personas.read(spark, version=outputs["customer_personas"]["version"])
    # Why records without the customer id: a sample for judging explanations, not a trace of anyone.
    sample = [row.asDict(recursive=True) for row in
              personas.where(F.size("personas") > 0).orderBy(F.rand(config.sampling.seed))
              .select("personas", "source", "confidence", "is_ambiguous", "why").limit(20).collect()]
    tracking.log_json_artifact(sample, "samples/why_records.json")
    product_personas = tables.product_personas.read(spark, version=outputs["product_personas"]["version"])
    cold_start.log_and_register(product_personas, tracking.registered_model_name(config), run_alias(run_id),
                                persona_model=model.artifact())
    commit = tracking.git_commit()
    tracking.describe_model(config, run_alias(run_id), (
        f"Run {run_id} of config {config.name}" + (f" at commit {commit[:12]}" if commit else "")
        + f": product_personas version {outputs['product_personas']['version']}, "
        f"{len(persona_counts)} personas."))


def _log_prompt_template(config) -> None:
    try:
        from persona_lib import prompts
        from persona_lib.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
        template = prompts.prompt_template(taxonomy, config.labelling.prompt_token_budget)
        tracking.log_json_artifact(
            {"version": getattr(template, "version", None), "messages": template.messages("<purchases>")},
            "prompt/template.json")
    except Exception as exc:  # noqa: BLE001 - an artifact is not worth failing a finished run
        log.warning("could not log the prompt template: %s", exc)


def _params(config: AppConfig) -> dict:
    params = {
        "budget": config.sampling.budget,
        "rounds": config.sampling.rounds,
        "seed": config.sampling.seed,
        "epsilon": config.propagation.epsilon,
        "epsilon_relative": config.propagation.epsilon_relative,
        "lhat": config.propagation.lhat,
        "beta": config.propagation.beta,
        "method": config.propagation.method,
        "edge_weighting": config.graph.edge_weighting,
        "top_k": config.publishing.top_k,
        "labeller": config.labelling.labeller,
        "taxonomy": config.labelling.taxonomy,
        "product_labels": config.labelling.products.enabled,
        "product_selection": config.labelling.products.selection,
        "product_budget": config.labelling.products.budget,
    }
    params["model"] = {
        "replay": f"replay:{config.labelling.replay_model}",
        "vllm": f"vllm:{config.labelling.vllm.model_path}",
        "openai": f"openai:{config.labelling.openai.model}",
    }.get(config.labelling.labeller, config.labelling.labeller)
    try:
        from persona_lib import prompts
        from persona_lib.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
        params["taxonomy_version"] = taxonomy.version
        params["prompt_version"] = getattr(prompts.prompt_template(taxonomy, config.labelling.prompt_token_budget),
                                           "version", None)
    except Exception as exc:  # noqa: BLE001 - the versions are also on every label row
        log.warning("could not read taxonomy/prompt versions: %s", exc)
    return params


def republish(spark: SparkSession, config: AppConfig, reason: str,
              progress: Optional[Callable[[str], None]] = None) -> dict:
    """Propagate the labels in the store again and publish, without labelling anyone.

    Used after a deletion (``personas forget``): the products and neighbours a forgotten
    customer influenced are recomputed from the remaining labels. Recorded as a run of its
    own (tag ``personas.reason``), committed through the runs table like any other.
    """
    from persona_lib import cold_start, labelling, propagation
    from persona_lib.query import run_alias

    say = progress or log.info
    started_at = _now()
    tables = storage.resolve_tables(config)
    events = tables.purchase_events.read(spark)
    publishing.abandon_stale_runs(spark, tables.runs, config)
    with tracking.run(config, run_name=tracking.run_name(config, reason, started_at),
                      tags={**tracking.environment_tags(), "personas.reason": reason}) as active:
        run_id = active.info.run_id
        publishing.record_run(spark, tables.runs, run_id, "running", started_at, None, {})
        customers = events.select("customer_id").distinct()
        edges, graph, graph_keys = purchase_graph(spark, config, tables, events)
        seeds = labelling.labels_for_propagation(spark, tables, config.forget)
        result = per_product_affinity(propagation.propagate(spark, graph, seeds, config.propagation), graph_keys)
        propagation.write_propagation(spark, tables, result, propagation_id=f"{run_id}-{reason}")
        say(f"{reason}: re-propagated in {result.stats['supersteps']} supersteps")
        model, persona_scores = _fit_persona_model(spark, config, tables, graph, edges,
                                                   float(result.stats["epsilon"]))
        inputs = publishing.PublishInputs(
            run_id=run_id, customers=customers, edges=edges.select("customer_id", "product_id"),
            customer_affinity=tables.customer_affinity.read(spark),
            product_affinity=tables.product_affinity.read(spark),
            llm_labels=_llm_labels(spark, tables.persona_labels),
            overrides=_current_overrides(spark, tables.persona_overrides),
            products=tables.products.read(spark).select("product_id", "title"),
            epsilon=float(result.stats["epsilon"]), persona_scores=persona_scores,
        )
        outputs = _publish(spark, config, tables, inputs, _now())
        product_personas = tables.product_personas.read(spark, version=outputs["product_personas"]["version"])
        cold_start.log_and_register(product_personas, tracking.registered_model_name(config), run_alias(run_id),
                                    persona_model=model.artifact())
        publishing.record_run(spark, tables.runs, run_id, "complete", started_at, _now(),
                              {name: t["version"] for name, t in outputs.items()}, {"reason": reason})
        _refresh_catalog_views(spark, tables)
        graph.unpersist()
        edges.unpersist()
        return {"run_id": run_id, "tables": outputs}
