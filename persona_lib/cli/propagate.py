"""``personas propagate``: labels -> customer_affinity, product_affinity, propagation_runs (Delta)."""

from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path

from persona_lib.cli import add_common_options, load_app_config, with_options
from persona_lib.config import EDGE_WEIGHTINGS, PROPAGATION_METHODS
from persona_lib.errors import InputError

log = logging.getLogger("personas.propagate")

EVENT_TABLES = ("purchase_events", "paper_purchase_events", "synth_purchase_events")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "propagate", help="propagate persona labels over the purchase graph (RevAff, error-bounded)",
        description="Build the customer-product graph, seed it with the persona labels and write "
                    "every customer's and product's persona affinity, within epsilon of exact.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--events", choices=EVENT_TABLES, default="purchase_events",
                        help="the purchase events table the graph is built from")
    parser.add_argument("--pairs", default=None, metavar="TABLE_OR_CSV",
                        help="build the graph from a pairs table instead: a Delta table (name or path) "
                             "with customer_id, product_id, or a CSV like the paper's split_train.csv.gz "
                             "(CustomerID, Description)")
    parser.add_argument("--labels-from", choices=("persona_labels", "replay-all"), default="persona_labels",
                        help="persona_labels: the label store (status ok/repaired, overrides win); "
                             "replay-all: the recorded answers file (labelling.replay_answers), "
                             "for a standalone run before any labelling")
    parser.add_argument("--seed-fraction", type=float, default=1.0,
                        help="with --labels-from replay-all: the share of customers seeded (hash-sampled)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default sampling.seed)")
    parser.add_argument("--method", choices=PROPAGATION_METHODS, default=None)
    parser.add_argument("--epsilon", type=float, default=None,
                        help="absolute error bound (default: propagation.epsilon, else the scale rule)")
    parser.add_argument("--lhat", type=int, default=None, help="walk length (default propagation.lhat)")
    parser.add_argument("--weighting", choices=EDGE_WEIGHTINGS, default=None,
                        help="edge weights (default graph.edge_weighting)")
    parser.add_argument("--propagation-id", default=None, help="id recorded in propagation_runs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.pipeline import per_product_affinity, walk_graph
    from persona_lib.propagation import propagate, write_propagation
    from persona_lib.spark import get_spark
    from persona_lib.storage import resolve_tables

    config = with_options(load_app_config(args), args,
                          {"lhat": ("propagation", "lhat"), "weighting": ("graph", "edge_weighting")})
    if not 0.0 < args.seed_fraction <= 1.0:
        raise InputError(f"--seed-fraction must be in (0, 1], got {args.seed_fraction}")
    spark = get_spark(config)
    tables = resolve_tables(config)
    # graph.product_key as in `personas run`: group vertices walk, every product gets its group's rows.
    graph, graph_keys = walk_graph(spark, config, tables, _edges(spark, tables, config.graph, args))
    log.info("graph: %d customers, %d products, %d edges",
             graph.customer_count, graph.product_count, graph.edge_count)
    labels = _labels(spark, config, tables, args)

    def progress(step: int, messages: int, max_residual: float) -> None:
        log.info("superstep %d: %d messages, largest residual left %.3g", step, messages, max_residual)

    result = per_product_affinity(propagate(spark, graph, labels, config.propagation, method=args.method,
                                            epsilon=args.epsilon, on_superstep=progress), graph_keys)
    propagation_id = args.propagation_id or f"propagate-{uuid.uuid4().hex[:12]}"
    written = write_propagation(spark, tables, result, propagation_id)
    graph.unpersist()
    stats = result.stats
    log.info("propagation %s: %s, epsilon %.3g, %d seeds, %d supersteps, converged %s",
             propagation_id, stats["method"], stats["epsilon"], stats["seeds"], stats["supersteps"],
             stats["converged"])
    return {"propagation_id": propagation_id, **stats, "customers": graph.customer_count,
            "products": graph.product_count, "tables": written}


def _edges(spark, tables, graph_settings, args):
    from persona_lib.graph import edges_from_events, edges_from_pairs

    if args.pairs:
        return edges_from_pairs(_read_pairs(spark, tables, args.pairs))
    ref = tables.get(args.events)
    if not ref.exists(spark):
        raise InputError(f"{args.events}: no Delta table at {ref.location}; run `personas ingest` "
                         f"(or `personas synth`) first, or pass --pairs")
    return edges_from_events(ref.read(spark), graph_settings.edge_weighting, graph_settings.half_life_days)


def _read_pairs(spark, tables, location: str):
    from pyspark.sql import functions as F

    if location.endswith((".csv", ".csv.gz")):
        # A command-line path: relative to the current directory, not to the config.
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"--pairs: file not found: {path}")
        frame = spark.read.option("header", True).csv(str(path))
        renames = {"CustomerID": "customer_id", "Description": "product_id"}
        for old, new in renames.items():
            if old in frame.columns and new not in frame.columns:
                frame = frame.withColumnRenamed(old, new)
    else:
        ref = tables.named("pairs", location)
        if not ref.exists(spark):
            raise InputError(f"--pairs: no Delta table at {ref.location}")
        frame = ref.read(spark)
    missing = [c for c in ("customer_id", "product_id") if c not in frame.columns]
    if missing:
        raise InputError(f"--pairs {location}: missing column(s) {missing}")
    return frame.select(F.trim("customer_id").alias("customer_id"), F.trim("product_id").alias("product_id"))


def _labels(spark, config, tables, args):
    if args.labels_from == "persona_labels":
        from persona_lib.labelling.store import labels_for_propagation

        return labels_for_propagation(spark, tables, config.forget)
    return replay_labels(spark, config, args.seed_fraction,
                         config.sampling.seed if args.seed is None else args.seed)


def replay_labels(spark, config, fraction: float, seed: int):
    """(customer_id, persona) from the recorded answers file, a hash-sampled share of customers
    ("Unrepresentable" customers dropped, as the paper does).

    The sample is a hash of (seed, customer_id), so it does not depend on partitioning.
    """
    from pyspark.sql import functions as F

    from persona_lib.labelling.answers import read_recorded_answers, recorded_labels

    recorded = read_recorded_answers(spark, config.resolve_path(config.labelling.replay_answers))
    draw = F.xxhash64(F.lit(seed), F.col("customer_id")).bitwiseAND(F.lit(0x7FFFFFFFFFFFFFFF)) / F.lit(float(2 ** 63))
    return recorded_labels(recorded.where(draw < F.lit(fraction)) if fraction < 1.0 else recorded)
