"""``personas run``: the whole pipeline (ingest if needed, T rounds, publish, MLflow)."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.config import LABELLERS

log = logging.getLogger("personas.run")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline: ingest, sample -> label -> propagate rounds, publish",
        description="Ingest if needed, then T rounds of sample -> label -> propagate, then publish the "
                    "persona tables; one MLflow run records it. Resumable: labels already in the "
                    "store are never requested again.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--budget", type=float, default=None,
                        help="labelling budget: 0 (no LLM: file labels and overrides only), a fraction of "
                             "customers (< 1) or a whole count (>= 1); default from config")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds T (default from config)")
    parser.add_argument("--labeller", choices=LABELLERS, default=None,
                        help="labelling backend (default from config)")
    parser.add_argument("--epsilon", type=float, default=None, help="absolute error bound (default: derived)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.config import validate_for_labelling
    from persona_lib.pipeline import run_pipeline
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    if args.budget is not None:
        config = config.replace("sampling", budget=args.budget)
    if args.rounds is not None:
        config = config.replace("sampling", rounds=args.rounds)
    if args.labeller is not None:
        config = config.replace("labelling", labeller=args.labeller)
    if args.epsilon is not None:
        config = config.replace("propagation", epsilon=args.epsilon)
    # Taxonomy, labeller and budget are checked before the JVM starts: exit 3 in a second.
    validate_for_labelling(config)
    spark = get_spark(config)
    summary = run_pipeline(spark, config, progress=log.info)
    log.info("run %s: %d customers, %d labelled, %d propagated, ambiguous share %.3f",
             summary["run_id"], summary["customers"], summary["labelled"], summary["propagated"],
             summary["ambiguous_share"])
    log.info("top personas: %s", summary["top_personas"])
    return summary
