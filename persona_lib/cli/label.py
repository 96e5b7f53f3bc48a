"""``personas label``: label a budgeted sample of the ingested customers into persona_labels,
or load the team's labels from a file or table (``--from-file``/``--from-table``)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import uuid

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.config import LABELLERS
from persona_lib.errors import UsageError

log = logging.getLogger("personas.label")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label", help="label a sample of customers with an LLM (or recorded answers), or load "
                      "the team's labels from a file, into persona_labels",
        description="Draw a uniform random sample of the ingested customers (the budget: 0 for "
                    "none, a fraction below 1 or a whole count), ask the chosen labeller for "
                    "their personas, validate every answer against the taxonomy and MERGE it "
                    "into persona_labels. Customers whose history, prompt and taxonomy are "
                    "unchanged since their stored label are not asked again. With --from-file "
                    "or --from-table no LLM is asked: the labels (columns customer_id,personas; "
                    "personas pipe-separated taxonomy names, empty for none of these) are "
                    "checked and stored with source file:<name>, never re-sent to an LLM.",
    )
    add_common_options(parser, writer=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-file", default=None, metavar="CSV",
                        help="load labels from a CSV with the columns customer_id,personas instead of "
                             "asking an LLM; any bad row fails the load (exit 3), nothing written")
    source.add_argument("--from-table", default=None, metavar="TABLE",
                        help="the same from a Delta path or catalog table with those columns")
    parser.add_argument("--labeller", choices=LABELLERS, default=None,
                        help="backend (default: labelling.labeller from the config)")
    parser.add_argument("--budget", type=float, default=None, metavar="B",
                        help="0 (no LLM labelling), a fraction of the customers (< 1) or a whole "
                             "count (>= 1); default: sampling.budget from the config")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: sampling.seed)")
    parser.add_argument("--run-id", default=None, help="run id written with the labels (default: generated)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from persona_lib.config import validate_for_labelling

    config = load_app_config(args)
    run_id = args.run_id or f"label-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    if args.from_file or args.from_table:
        if args.labeller or args.budget is not None or args.seed is not None:
            raise UsageError("--from-file/--from-table load labels without an LLM: "
                             "--labeller, --budget and --seed do not apply")
        return _load(args, config, run_id)
    labeller = args.labeller or config.labelling.labeller
    budget = args.budget if args.budget is not None else config.sampling.budget
    seed = args.seed if args.seed is not None else config.sampling.seed
    # Taxonomy, labeller and budget are checked before the JVM starts: exit 3 in a second.
    validate_for_labelling(config.replace("labelling", labeller=labeller).replace("sampling", budget=budget))

    from persona_lib import storage
    from persona_lib.errors import InputError
    from persona_lib.rounds import RoundPlan, StoreLabels, run_rounds
    from persona_lib.spark import get_spark

    spark = get_spark(config)
    tables = storage.resolve_tables(config)
    events_ref = tables.purchase_events
    if not events_ref.exists(spark):
        raise InputError(f"purchase_events not found at {events_ref.location}: run "
                         f"`personas ingest` (with the same --workdir/--conf) first")
    events = events_ref.read(spark)
    customers = events.select("customer_id").distinct()
    total = customers.count()
    # Algorithm 1's first round for the whole budget: DU rounds need affinities, which
    # `personas run` computes between rounds. The draw is deterministic and re-sends the
    # customers labelled before, so a re-run asks for the same customers and is served from
    # the label store.
    plan = RoundPlan.from_budget(total, budget, 1, seed, sampler="random")
    if plan.targets[0] == 0:
        log.info("budget %s: no customer is sent to the LLM", budget)
        return {"customers": total, "budget": budget, "labeller": labeller, "run_id": run_id,
                "requested": 0, "llm_calls": 0}
    log.info("labelling %d of %d customers with %s (run %s)", plan.targets[0], total, labeller, run_id)
    store_labels = StoreLabels(spark, config, tables, customers, events, run_id, labeller=labeller)
    summary = run_rounds(customers, plan, store_labels, propagate=None)[0].label_summary
    return {"customers": total, "budget": budget, **summary}


def _load(args: argparse.Namespace, config, run_id: str) -> dict:
    from pathlib import Path

    from persona_lib.config import existing_path
    from persona_lib.labelling import file_labels
    from persona_lib.spark import get_spark
    from persona_lib.storage import resolve_tables
    from persona_lib.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(existing_path(config, "labelling.taxonomy"))
    tables = resolve_tables(config)
    if args.from_file:
        # Every check but the one against purchase_events runs before the JVM starts.
        path = Path(args.from_file).expanduser().resolve()
        rows = file_labels.read_labels_csv(path)
        file_labels.check_file_rows(rows, path, taxonomy)
        summary = file_labels.load_labels_file(get_spark(config), config, tables, path, run_id, rows=rows)
    else:
        summary = file_labels.load_labels_table(get_spark(config), config, tables, args.from_table, run_id)
    log.info("loaded %d labels (%d none of these) from %s: %d written, %d unchanged",
             summary["labels"], summary["none_of_these"], summary["source"], summary["written"],
             summary["unchanged"])
    if summary["personas_without_seed"]:
        log.warning("no labelled customer has these personas, so propagation cannot spread them: %s",
                    ", ".join(summary["personas_without_seed"]))
    return summary
