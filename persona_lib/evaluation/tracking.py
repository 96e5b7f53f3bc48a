"""MLflow logging of evaluation runs, in one place the lead can redirect.

Runs go to the work dir's store (``persona_lib.tracking``), experiment
``evaluation.experiment``; charts are PNG artifacts (F1 against budget, NDCG@K).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Mapping

from persona_lib import tracking
from persona_lib.config import AppConfig

log = logging.getLogger("personas.evaluation")


@contextlib.contextmanager
def evaluation_run(config: AppConfig, run_name: str) -> Iterator[object]:
    """An MLflow run in the evaluation experiment of this work dir's store."""
    evaluation_config = config.replace("tracking", experiment=config.evaluation.experiment)
    with tracking.run(evaluation_config, run_name, tags=tracking.environment_tags()) as active:
        yield active


def log_accuracy(rows: list[dict]) -> None:
    """Metrics per (budget, sampler) and the chart of F1 against budget per method."""
    for row in rows:
        prefix = f"{row['sampler']}_{int(round(row['budget'] * 100))}pct"
        tracking.log_metrics({f"{prefix}_{key}": row[key] for key in (
            "f1", "macro_f1", "prevalence_gap", "ece", "ambiguous_share", "f1_with_product_labels",
            "f1_top5", "authors_f1", "f1_per_1k_llm_calls", "f1_per_1k_llm_calls_with_product_labels",
            "prompt_chars", "f1_per_1k_prompt_chars", "f1_per_1k_prompt_chars_with_product_labels")
            if row.get(key) is not None})
    series: dict[str, list[float]] = {}
    for row in rows:
        for key, name in (("f1", "published model"), ("f1_with_product_labels", "published model, product labels"),
                          ("f1_top5", "top-5"), ("authors_f1", "authors")):
            if row.get(key) is not None:
                series.setdefault(f"{name} ({row['sampler']})" if key != "authors_f1" else name, []).append(row[key])
    tracking.log_line_chart(series, "set-F1 against budget (x: budgets in order run)",
                            "budget index", "mean set-F1", "charts/f1_by_budget.png")


def log_ranking(result: Mapping[str, Mapping[str, Mapping[int, float]]]) -> None:
    """NDCG@K and F1@K of each variant, and the NDCG@K curves."""
    tracking.log_params({k: result[k] for k in ("persona_source", "blend_weight") if k in result})
    for metric, variants in result.items():
        if metric not in ("ndcg", "f1"):
            continue
        for variant, by_k in variants.items():
            tracking.log_metrics({f"{metric}_{variant}_at_{k}": v for k, v in by_k.items()})
    tracking.log_line_chart({v: list(by_k.values()) for v, by_k in result["ndcg"].items()},
                            "NDCG@K", "K index (2, 5, 10, 20, 50, 100)", "NDCG", "charts/ndcg_at_k.png")
