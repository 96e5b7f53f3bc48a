"""``personas ingest``: landing CSV files -> purchase_events, products, quarantine (Delta)."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import add_common_options, load_app_config

log = logging.getLogger("personas.ingest")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="read landing CSVs into Delta, quarantining bad lines with a reason",
        description="Read the landing CSV files, validate every line, MERGE the kept ones into "
                    "purchase_events (idempotent on event_id) and the rest into quarantine.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--cut", choices=("default", "paper"), default="default",
                        help="'paper' reproduces the GPLR paper's OnlineRetail cut into its own tables")
    parser.add_argument("--landing", default=None, metavar="DIR",
                        help="landing folder (default: ingest.landing from the config)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.ingest import ingest
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    spark = get_spark(config)
    log.info("ingesting %s cut from %s", args.cut, args.landing or config.ingest.landing)
    summary = ingest(spark, config, cut=args.cut, landing=args.landing)
    log.info("kept %d of %d lines; quarantined %s", summary["rows_kept"], summary["rows_in"], summary["quarantined"])
    return summary
