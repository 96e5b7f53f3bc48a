"""``personas verify``: check a work dir's invariants; exit 1 listing the violations."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import Outcome, add_common_options, load_app_config

log = logging.getLogger("personas.verify")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="check the work dir's invariants (exit 1 listing violations, 0 when all hold)",
        description="Checks: every ingest_log row balances (rows_in = kept + quarantined + forgotten); no "
                    "record is both kept and quarantined; every complete run in `runs` is readable at its "
                    "table versions; no tombstoned customer is left in any table or any file under the "
                    "work dir (Delta logs, MLflow store and artifacts, logs). Read-only.",
    )
    add_common_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> Outcome:
    from persona_lib.spark import get_spark
    from persona_lib.verify import verify_workdir

    config = load_app_config(args)
    spark = get_spark(config)
    report = verify_workdir(spark, config)
    for violation in report["violations"]:
        log.error("violation: %s", violation)
    log.info("verify %s: %s", config.workdir_path, "all invariants hold" if report["ok"] else
             f"{len(report['violations'])} violation(s)")
    return Outcome(report, 0 if report["ok"] else 1)
