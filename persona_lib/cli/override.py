"""``personas override add|remove``: the team's overrides (persona_overrides) from the command line."""

from __future__ import annotations

import argparse
import logging

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.errors import InputError

log = logging.getLogger("personas.override")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "override", help="add or remove a customer's override (the team's personas, winning over any label)",
        description="An override wins over the LLM's or a file's label in the outputs, counts as a "
                    "label for propagation and the model, and its customer is never sent to an LLM. "
                    "Who and why are recorded in the Delta commit (DESCRIBE HISTORY persona_overrides).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    add = actions.add_parser("add", help="set a customer's personas (replacing an earlier override)")
    add_common_options(add, writer=True)
    _who(add)
    add.add_argument("--personas", required=True, metavar="'A|B'",
                     help="pipe-separated taxonomy names; '' or 'Unrepresentable' for none of these "
                          "(negative for every persona)")
    add.set_defaults(handler=run_add)

    remove = actions.add_parser("remove", help="delete a customer's override (its label counts again)")
    add_common_options(remove, writer=True)
    _who(remove)
    remove.set_defaults(handler=run_remove)


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customer", required=True, metavar="ID", help="the customer id")
    parser.add_argument("--author", required=True, help="who decides (recorded with the change)")
    parser.add_argument("--reason", required=True, help="why (recorded with the change)")


def _checked(args: argparse.Namespace):
    """(config, canonical customer id, taxonomy) -- every argument checked before Spark starts."""
    from persona_lib.config import existing_path
    from persona_lib.ingest_files import parse_customer_id
    from persona_lib.taxonomy import load_taxonomy

    config = load_app_config(args)
    customer_id = parse_customer_id(args.customer)
    if customer_id is None:
        raise InputError(f"--customer {args.customer!r} is not a customer id (digits, optionally .0)")
    for option in ("author", "reason"):
        if not getattr(args, option).strip():
            raise InputError(f"--{option} must not be empty")
    return config, customer_id, load_taxonomy(existing_path(config, "labelling.taxonomy"))


def _require_customer(spark, events, customer_id: str) -> None:
    """``events``: the purchase_events table, which must hold the customer."""
    from pyspark.sql import functions as F

    if not events.exists(spark):
        raise InputError(f"purchase_events not found at {events.location}: run `personas ingest` first")
    if events.read(spark).where(F.col("customer_id") == customer_id).limit(1).count() == 0:
        raise InputError(f"--customer {customer_id} is not in purchase_events (not an ingested customer)")


def run_add(args: argparse.Namespace) -> dict:
    from persona_lib.labelling.store import persona_names, upsert_overrides
    from persona_lib.spark import get_spark
    from persona_lib.storage import resolve_tables

    config, customer_id, taxonomy = _checked(args)
    names, problem = persona_names(args.personas, taxonomy)
    if problem:
        raise InputError(f"--personas: {problem}")
    spark = get_spark(config)
    tables = resolve_tables(config)
    _require_customer(spark, tables.purchase_events, customer_id)
    result = upsert_overrides(spark, tables, taxonomy, [{"customer_id": customer_id, "personas": names,
                                                         "author": args.author.strip(),
                                                         "reason": args.reason.strip()}])
    log.info("override of customer %s: %s", customer_id, names or "none of these")
    return {"action": "add", "customer_id": customer_id, "personas": names, "author": args.author.strip(),
            "reason": args.reason.strip(), "table": result["table"]}


def run_remove(args: argparse.Namespace) -> dict:
    from persona_lib.labelling.store import remove_override
    from persona_lib.spark import get_spark
    from persona_lib.storage import resolve_tables

    config, customer_id, _ = _checked(args)
    result = remove_override(get_spark(config), resolve_tables(config), customer_id, args.author.strip(),
                             args.reason.strip())
    log.info("removed the override of customer %s", customer_id)
    return {"action": "remove", "author": args.author.strip(), "reason": args.reason.strip(), **result}
