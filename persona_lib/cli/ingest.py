"""``personas ingest``: ingest.source (the landing CSV files, or a mapped table, file or
query) -> purchase_events, products, quarantine (Delta)."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import add_common_options, emit, load_app_config
from persona_lib.config import CUTS
from persona_lib.errors import InputError

log = logging.getLogger("personas.ingest")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="read ingest.source into Delta, quarantining bad rows with a reason",
        description="Read ingest.source (format uci_landing: the landing CSV files; delta, parquet, "
                    "csv, table or query: any purchase table through ingest.source.columns), validate "
                    "every record, write the kept ones to purchase_events and the rest to quarantine, "
                    "and record each file or source in the ingest_log manifest. Landing content "
                    "already ingested under any name is skipped; a changed file under an ingested "
                    "name follows ingest.on_changed_file. A file that cannot be read is recorded with "
                    "its reason while the others are ingested; the command then exits 3 after "
                    "printing its summary. A mapped source is re-read whole: its events are merged "
                    "by key, so a re-run on the same data changes nothing.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--cut", choices=CUTS, default="default",
                        help="'paper' reproduces the GPLR paper's OnlineRetail cut into its own tables")
    parser.add_argument("--landing", default=None, metavar="DIR",
                        help="read this landing folder (format uci_landing) whatever ingest.source says")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.ingest import ingest
    from persona_lib.ingest_sources import check_local_paths
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    if args.landing is None:
        check_local_paths(config)
    spark = get_spark(config)
    source = config.ingest.source
    log.info("ingesting %s cut from %s", args.cut, args.landing or source.path or source.table
             or source.query or config.ingest.landing)
    summary = ingest(spark, config, cut=args.cut, landing=args.landing)
    log.info("%d file(s) ingested, %d skipped (content already ingested); kept %d of %d records; "
             "quarantined %s", summary["files_ingested"], summary["files_skipped"], summary["rows_kept"],
             summary["rows_in"], summary["quarantined"])
    if summary["files_failed"]:
        # The good files are committed; the summary still goes out, then exit code 3 says
        # that some input was not taken.
        emit(summary)
        names = "; ".join(f"{f['file']}: {f['status']}: {f['detail']}" for f in summary["files_failed"])
        raise InputError(f"{len(summary['files_failed'])} file(s) not ingested: {names}")
    return summary
