"""``personas evaluate accuracy|recommend|stability|published``: the evaluation against the GPLR paper."""

from __future__ import annotations

import argparse
import logging
import sys

from persona_lib.cli import add_common_options, load_app_config
from persona_lib.config import SAMPLERS
from persona_lib.errors import UsageError

log = logging.getLogger("personas.evaluate")

QUICK_BUDGET = 0.2
QUICK_SAMPLER = "du"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="persona accuracy, recommendation lift and segmentation stability",
        description="Evaluate against the GPLR paper on its OnlineRetail cut.")
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    accuracy = tasks.add_parser("accuracy", help="set-F1 of predicted personas at each budget and sampler")
    add_common_options(accuracy, writer=True)
    accuracy.add_argument("--budget", type=float, default=None, metavar="F",
                          help="one budget, a fraction (default: evaluation.budgets)")
    accuracy.add_argument("--sampler", choices=SAMPLERS, default=None,
                          help="one sampler (default: evaluation.samplers)")
    accuracy.add_argument("--seeds", type=int, default=None, metavar="N",
                          help="seeds per budget and sampler (default: evaluation.seeds)")
    accuracy.add_argument("--quick", action="store_true",
                          help=f"one budget ({QUICK_BUDGET} unless --budget), one sampler ({QUICK_SAMPLER} "
                               "unless --sampler), one seed, the default config's model only (no product-label "
                               "variant): the CI check")
    accuracy.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    accuracy.set_defaults(handler=run_accuracy)

    recommend = tasks.add_parser("recommend", help="ALS baseline vs persona re-ranking on the authors' split")
    add_common_options(recommend, writer=True)
    recommend.add_argument("--personas", choices=("pipeline", "recorded"), default="pipeline",
                           help="condition on GPLR's personas (default) or on every customer's recorded "
                                "GPT-4 label (the ceiling of persona conditioning)")
    recommend.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    recommend.set_defaults(handler=run_recommend)

    stability = tasks.add_parser("stability", help="RFM deciles vs dominant personas over two halves")
    add_common_options(stability, writer=True)
    stability.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    stability.set_defaults(handler=run_stability)

    published = tasks.add_parser(
        "published", help="the latest run's published tables against the full recorded labels",
        description="Score customer_personas and persona_affinity of the latest complete run against the "
                    "recorded GPT-4 labels, on the customers the LLM did not label: one JSON line with "
                    "f1, macro_f1, prevalence_gap, ece, ambiguous_share, f1_ambiguous, f1_certain.")
    add_common_options(published)
    published.set_defaults(handler=run_published)


def run_accuracy(args: argparse.Namespace) -> dict:
    from persona_lib.evaluation import accuracy
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    # A fraction only: 1 or more would be a count of customers (sampling.budget's rule).
    if args.budget is not None and not 0 < args.budget < 1:
        raise UsageError(f"--budget is a fraction in (0, 1), got {args.budget}")
    if args.quick:
        budgets = [args.budget if args.budget is not None else QUICK_BUDGET]
        samplers = [args.sampler or QUICK_SAMPLER]
        seeds = 1
    else:
        budgets = [args.budget] if args.budget is not None else [float(b) for b in config.evaluation.budgets]
        samplers = [args.sampler] if args.sampler else list(config.evaluation.samplers)
        seeds = args.seeds or config.evaluation.seeds
    spark = get_spark(config)
    log.info("accuracy: budgets %s, samplers %s, %d seed(s)", budgets, samplers, seeds)
    result = _tracked(config, args, "evaluate-accuracy",
                      lambda: accuracy.evaluate_accuracy(spark, config, budgets, samplers, seeds,
                                                         with_product_labels=not args.quick),
                      lambda r: _log_accuracy(r))
    print(accuracy.format_table(result["rows"]), file=sys.stdout)
    headline = _headline(result["rows"])
    return {
        "budget": headline["budget"], "sampler": headline["sampler"], "seeds": headline["seeds"],
        **{key: headline[key] for key in accuracy.MODEL_FIGURES},
        "f1_top5": headline["f1_top5"], "f1_with_product_labels": headline["f1_with_product_labels"],
        "macro_f1_with_product_labels": headline["macro_f1_with_product_labels"],
        "authors_f1": headline["authors_f1"], "llm_calls": headline["llm_calls"],
        "prompt_chars": headline["prompt_chars"], "f1_per_1k_prompt_chars": headline["f1_per_1k_prompt_chars"],
        "product_label_answers": result.get("product_label_answers"),
        "customer_personas": result["customer_personas"], "mlflow_run_id": result.get("mlflow_run_id"),
        "rows": result["rows"],
    }


def run_published(args: argparse.Namespace) -> dict:
    from persona_lib.evaluation.published import evaluate_published
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    return evaluate_published(get_spark(config), config)


def run_recommend(args: argparse.Namespace) -> dict:
    from persona_lib.evaluation import recommend

    evaluate = lambda spark, config: recommend.evaluate_recommend(spark, config, persona_source=args.personas)
    return _run_task(args, "evaluate-recommend", evaluate, recommend.format_table, _log_ranking)


def run_stability(args: argparse.Namespace) -> dict:
    from persona_lib.evaluation import stability

    return _run_task(args, "evaluate-stability", stability.evaluate_stability, stability.format_table,
                     _log_stability)


def _run_task(args: argparse.Namespace, run_name: str, evaluate, format_table, log_result) -> dict:
    """Evaluate (tracked), print the human table to stdout, return the JSON result."""
    from persona_lib.spark import get_spark

    config = load_app_config(args)
    spark = get_spark(config)
    result = _tracked(config, args, run_name, lambda: evaluate(spark, config), log_result)
    print(format_table(result), file=sys.stdout)
    return result


def _headline(rows: list[dict]) -> dict:
    """The row the JSON's top-level fields describe: 20% DU when it ran, else the last."""
    for row in rows:
        if abs(row["budget"] - QUICK_BUDGET) < 1e-9 and row["sampler"] == QUICK_SAMPLER:
            return row
    return rows[-1]


def _tracked(config, args, run_name: str, compute, log_result) -> dict:
    if getattr(args, "no_mlflow", False):
        return compute()
    from persona_lib.evaluation.tracking import evaluation_run

    with evaluation_run(config, run_name) as active:
        result = compute()
        log_result(result)
        result["mlflow_run_id"] = active.info.run_id
    return result


def _log_accuracy(result: dict) -> None:
    from persona_lib.evaluation.tracking import log_accuracy

    log_accuracy(result["rows"])


def _log_ranking(result: dict) -> None:
    from persona_lib.evaluation.tracking import log_ranking

    log_ranking(result)


def _log_stability(result: dict) -> None:
    from persona_lib import tracking

    tracking.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
