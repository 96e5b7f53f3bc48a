"""``personas taxonomy propose``: an LLM's persona set from sampled baskets, as a draft to edit
(the logic is in ``persona_lib.taxonomy_propose``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.errors import InputError, UsageError

log = logging.getLogger("personas.taxonomy")


def add_parser(subparsers) -> None:
    from persona_lib.taxonomy_propose import (
        DEFAULT_CHARS_PER_CUSTOMER,
        DEFAULT_CUSTOMERS,
        DEFAULT_MAX_TOKENS,
        MAX_PERSONAS,
        MIN_PERSONAS,
        PROPOSAL_BACKENDS,
    )

    parser = subparsers.add_parser("taxonomy", help="propose a persona taxonomy from sampled baskets (a draft to edit)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    propose = actions.add_parser(
        "propose", help="ask an LLM for a persona set from a sample of customers' baskets",
        description=f"Sample customers of purchase_events (seeded), show their most bought products "
                    f"to an LLM once, and write its persona set ({MIN_PERSONAS} to {MAX_PERSONAS} "
                    f"personas with definitions) as a draft taxonomy YAML for the team to edit. "
                    f"The exact prompt goes to OUT.prompt.txt; an invalid answer is exit 3 with the "
                    f"raw answer in OUT.answer.txt. Nothing is written to the tables.")
    add_common_options(propose)
    propose.add_argument("--out", required=True, metavar="PATH", help="where the draft taxonomy YAML goes")
    propose.add_argument("--labeller", choices=PROPOSAL_BACKENDS, default=None,
                         help="backend: replay (the recorded proposal of labelling.replay_proposal), "
                              "openai or vllm (default: labelling.labeller when it is one of these, else replay)")
    propose.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS, metavar="N",
                         help=f"customers to sample (default {DEFAULT_CUSTOMERS})")
    propose.add_argument("--chars-per-customer", type=int, default=DEFAULT_CHARS_PER_CUSTOMER, metavar="C",
                         help=f"characters of product lines per customer (default {DEFAULT_CHARS_PER_CUSTOMER}; "
                              "the most bought product is always listed)")
    propose.add_argument("--seed", type=int, default=None, help="sampling seed (default: sampling.seed)")
    propose.add_argument("--name", default=None, help="the taxonomy's name (default: the --out file's stem)")
    propose.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="T",
                         help=f"longest answer, in tokens (default {DEFAULT_MAX_TOKENS})")
    propose.add_argument("--force", action="store_true", help="overwrite an existing --out")
    propose.set_defaults(handler=run_propose)


def run_propose(args: argparse.Namespace) -> dict:
    from persona_lib import storage
    from persona_lib import taxonomy_propose as tp
    from persona_lib.spark import get_spark
    from persona_lib.taxonomy import load_taxonomy

    config = load_app_config(args)
    out = Path(args.out).resolve()
    if out.exists() and not args.force:
        raise UsageError(f"--out {out} exists: pass --force to overwrite it")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    for option in ("customers", "chars_per_customer", "max_tokens"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be positive")
    name = (args.name if args.name is not None else out.stem.split(".")[0]).strip()
    if not name:
        raise UsageError("--name must not be empty")
    labeller = args.labeller or (config.labelling.labeller if config.labelling.labeller in tp.PROPOSAL_BACKENDS
                                 else "replay")
    seed = args.seed if args.seed is not None else config.sampling.seed
    tp.check_backend(labeller, config)

    spark = get_spark(config)
    events = storage.resolve_tables(config).purchase_events
    if not events.exists(spark):
        raise InputError(f"purchase_events not found at {events.location}: run `personas ingest` first")
    baskets = tp.sample_baskets(events.read(spark), args.customers, seed, args.chars_per_customer)
    if not baskets:
        raise InputError(f"purchase_events at {events.location} holds no customer with purchases")
    log.info("sampled %d customers' baskets (seed %d); asking %s", len(baskets), seed, labeller)
    prompt = tp.proposal_prompt(baskets, name)
    prompt_path = tp.sidecar(out, ".prompt.txt")
    prompt_path.write_text(prompt.text(), encoding="utf-8")

    answer = tp.ask(labeller, config, prompt, args.max_tokens)
    answer_path = tp.sidecar(out, ".answer.txt")
    try:
        if answer.error:
            # A cut answer may still parse, silently short of its last personas: never a draft.
            raise InputError(f"{answer.source} gave no complete answer: {answer.error}"
                             + (" (raise --max-tokens)" if "max_tokens" in answer.error else ""))
        _, mapping = tp.parse_proposal(answer.text, name, where=f"the answer of {answer.source}")
    except InputError as exc:
        answer_path.write_text(answer.text or "", encoding="utf-8")
        raise InputError(f"{exc}; the raw answer is in {answer_path}, the prompt in {prompt_path}") from exc
    out.write_text(tp.draft_text(mapping, answer, prompt, seed, baskets), encoding="utf-8")
    taxonomy = load_taxonomy(out)  # the draft must load as it is written
    log.info("wrote a draft taxonomy of %d personas to %s (edit before use)", len(taxonomy.personas), out)
    return {"path": str(out), "prompt_path": str(prompt_path), "name": taxonomy.name,
            "personas": list(taxonomy.names), "max_personas": taxonomy.max_personas,
            "source": answer.source, "prompt_version": prompt.version, "seed": seed,
            "customers_sampled": len(baskets), "taxonomy_version": taxonomy.version}
