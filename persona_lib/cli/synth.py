"""``personas synth``: synthetic purchase events with planted personas (known truth).

Two layouts: ``synth`` (the default) writes the synth_* Delta tables in our own contract;
``grocery`` writes a grocery retailer's export as plain files under ``--out`` (a parquet
transactions folder, a catalogue CSV, the truth, a labelled subset, a taxonomy and a ready
config), the worked example of README "Run on your data"."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.config import DEFAULT_CONFIG_PATH
from persona_lib.errors import UsageError

log = logging.getLogger("personas.synth")

LAYOUTS = ("synth", "grocery")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate synthetic purchase events with planted personas",
        description="Generate purchase events in Spark (Zipf product popularity, planted personas, "
                    "deterministic by seed). --layout synth (default): into the synth_* Delta tables, "
                    "same contract as ingest. --layout grocery --out DIR: a grocery retailer's files "
                    "(DIR/transactions.parquet, catalogue.csv, truth.csv, labels.csv, taxonomy.yaml "
                    "and the config grocery.yaml that maps them), to try `personas ingest --conf "
                    "DIR/grocery.yaml` on a differently shaped source.",
    )
    add_common_options(parser)
    parser.add_argument("--layout", choices=LAYOUTS, default="synth",
                        help="synth: our Delta tables (default); grocery: a retailer's files under --out")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="--layout grocery: the folder to write the files into (replaced files)")
    parser.add_argument("--households", type=int, default=None,
                        help="--layout grocery: households (default 2000)")
    parser.add_argument("--labelled-share", type=float, default=None, metavar="F",
                        help="--layout grocery: share of households in labels.csv (default 0.15)")
    for name, kind in (("customers", int), ("products", int), ("events", int), ("personas", int),
                       ("personas-per-customer-max", int), ("zipf-exponent", float), ("noise", float),
                       ("seed", int)):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"override synth.{name.replace('-', '_')} from the config")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    if args.layout == "grocery":
        return _grocery(args)
    if args.out or args.households is not None or args.labelled_share is not None:
        raise UsageError("--out, --households and --labelled-share apply to --layout grocery only")
    from persona_lib.spark import get_spark
    from persona_lib.storage import resolve_tables
    from persona_lib.synth import write_synth

    config = load_app_config(args)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config.synth)
                 if getattr(args, f.name, None) is not None}
    params = dataclasses.replace(config.synth, **overrides)
    spark = get_spark(config)
    log.info("generating %d events for %d customers, %d products, %d personas (seed %d)",
             params.events, params.customers, params.products, params.personas, params.seed)
    return write_synth(spark, resolve_tables(config), params)


def _grocery(args: argparse.Namespace) -> dict:
    from persona_lib.synth_grocery import GroceryParams, validate, write_grocery

    if not args.out:
        raise UsageError("--layout grocery needs --out DIR (the folder for the files)")
    ignored = [f"--{name}" for name in ("customers", "products", "events", "personas",
                                        "personas-per-customer-max", "zipf-exponent", "noise")
               if getattr(args, name.replace("-", "_")) is not None]
    if ignored:
        raise UsageError(f"{', '.join(ignored)} apply to --layout synth only")
    overrides = {"households": args.households, "seed": args.seed, "labelled_share": args.labelled_share}
    params = dataclasses.replace(GroceryParams(), **{k: v for k, v in overrides.items() if v is not None})
    validate(params)  # before the JVM starts
    config = load_app_config(args)
    from persona_lib.spark import get_spark

    out = Path(args.out).resolve()
    log.info("writing a grocery export for %d households (seed %d) to %s", params.households, params.seed, out)
    base = Path(args.conf).resolve() if args.conf else DEFAULT_CONFIG_PATH
    return write_grocery(get_spark(config), params, out, base)
