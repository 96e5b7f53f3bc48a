"""``personas label``: label a budgeted sample of the ingested customers into persona_labels."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import uuid

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.config import LABELLERS

log = logging.getLogger("personas.label")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label", help="label a sample of customers with an LLM (or recorded answers) into persona_labels",
        description="Draw a uniform random sample of the ingested customers (the budget: a "
                    "fraction <= 1 or a count), ask the chosen labeller for their personas, "
                    "validate every answer against the taxonomy and MERGE it into "
                    "persona_labels. Customers whose history, prompt and taxonomy are "
                    "unchanged since their stored label are not asked again.",
    )
    add_common_options(parser, writer=True)
    parser.add_argument("--labeller", choices=LABELLERS, default=None,
                        help="backend (default: labelling.labeller from the config)")
    parser.add_argument("--budget", type=float, default=None, metavar="F",
                        help="a fraction of the customers (<= 1) or a count (> 1); "
                             "default: sampling.budget from the config")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: sampling.seed)")
    parser.add_argument("--run-id", default=None, help="run id written with the labels (default: generated)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:

    from persona_lib import storage
    from persona_lib.config import validate_for_labelling
    from persona_lib.errors import InputError
    from persona_lib.labelling import label_customers
    from persona_lib.labelling.backends import read_or_empty
    from persona_lib.sampling import budget_per_round, sample_customers
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    labeller = args.labeller or config.labelling.labeller
    budget = args.budget if args.budget is not None else config.sampling.budget
    seed = args.seed if args.seed is not None else config.sampling.seed
    # Taxonomy, labeller and budget are checked before the JVM starts: exit 3 in a second.
    validate_for_labelling(config.replace("labelling", labeller=labeller).replace("sampling", budget=budget))
    spark = get_spark(config)
    events_ref = storage.table_ref(config, "purchase_events")
    if not events_ref.exists(spark):
        raise InputError(f"purchase_events not found at {events_ref.location}: run "
                         f"`personas ingest` (with the same --workdir/--conf) first")
    events = events_ref.read(spark)
    customers = events.select("customer_id").distinct()
    total = customers.count()
    # The whole budget in one uniform draw: DU rounds need affinities, which `personas run`
    # computes between rounds. The draw is deterministic, so a re-run asks for the same
    # customers and is served from the label store.
    n = budget_per_round(total, budget, 1)[0]
    excluded = None if labeller == "manual" else read_or_empty(spark, config, "persona_overrides").select("customer_id")
    sample = sample_customers(customers, excluded, n, seed, round_index=0)
    run_id = args.run_id or f"label-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    log.info("labelling %d of %d customers with %s (run %s)", n, total, labeller, run_id)
    summary = label_customers(spark, config, sample, events, run_id, labeller=labeller)
    return {"customers": total, "budget": budget, **summary}
