"""``personas forget``: delete customers from every table and purge them from storage."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import add_common_options, load_app_config

log = logging.getLogger("personas.forget")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "forget", help="delete customers everywhere (tables, labels, affinities, files) and tombstone them",
        description="Remove the customers from events, quarantine, labels, overrides, recorded answers, "
                    "affinities and published tables; recompute what they influenced; purge the files "
                    "(REORG PURGE + VACUUM at the configured retention); record tombstones (HMAC-SHA256 "
                    "under the key in $PERSONAS_TOMBSTONE_KEY, see forget.tombstone_key_env) so ingestion and "
                    "labelling never bring them back. Every earlier run is marked purged.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--customer", nargs="+", required=True, metavar="ID", help="customer id(s) to forget")
    parser.add_argument("--no-recompute", action="store_true",
                        help="skip re-propagating (faster): a run is still published, pointing at the outputs "
                             "without the customers, whose other rows keep stale aggregates")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.forget import forget_customers
    from persona_lib.spark import get_spark
    from persona_lib.tombstones import clean_customer_id, tombstone_key

    config = load_app_config(args)
    # Bad ids and a missing key are exit 3 before Spark starts.
    for raw in args.customer:
        clean_customer_id(raw)
    tombstone_key(config.forget)
    spark = get_spark(config)
    result = forget_customers(spark, config, args.customer, recompute=not args.no_recompute)
    log.info("forgot %d customer(s); rows removed: %s", result["forgotten"], result["removed"])
    return result
