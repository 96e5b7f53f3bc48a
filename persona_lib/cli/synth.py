"""``personas synth``: synthetic purchase events with planted personas (known truth)."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from persona_lib.cli import add_common_options, load_app_config

log = logging.getLogger("personas.synth")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate synthetic purchase events with planted personas",
        description="Generate purchase events in Spark (Zipf product popularity, planted personas, "
                    "deterministic by seed) into the synth_* Delta tables, same contract as ingest.",
    )
    add_common_options(parser)
    for name, kind in (("customers", int), ("products", int), ("events", int), ("personas", int),
                       ("personas-per-customer-max", int), ("zipf-exponent", float), ("noise", float),
                       ("seed", int)):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"override synth.{name.replace('-', '_')} from the config")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.spark import get_spark
    from persona_lib.synth import write_synth

    config = load_app_config(args)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config.synth)
                 if getattr(args, f.name, None) is not None}
    params = dataclasses.replace(config.synth, **overrides)
    spark = get_spark(config)
    log.info("generating %d events for %d customers, %d products, %d personas (seed %d)",
             params.events, params.customers, params.products, params.personas, params.seed)
    return write_synth(spark, config, params)
