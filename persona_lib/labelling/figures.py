"""What one labelling pass spent: answers per status, LLM calls, prompt characters, tokens.

Shared by the customer and the product labelling so the run summary and MLflow count both
the same way. Prompt characters are those of the chat messages sent: the template's fixed
part (system message and prefix) plus the request's own suffix, for every request sent to
the backend (a replayed answer counts as the request it stands for).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_lib.errors import PersonasError
from persona_lib.labelling.answers import FAILED

# Failed answers quoted in the error that stops a failing labelling stage.
FAILURE_EXAMPLES = 5

TOKEN_COLUMNS = ("prompt_tokens", "generated_tokens", "cached_tokens")


def answer_figures(answers: DataFrame, suffix_chars: DataFrame, key: str, fixed_chars: int) -> dict:
    """Figures of ``answers`` (validated ANSWERS rows keyed by ``key``) in one pass.

    ``suffix_chars`` holds ``key`` and suffix_chars (the characters of each request's prompt
    suffix). Returns new_statuses (status -> answers), llm_calls, prompt_chars and tokens.
    """
    per_status = answers.join(suffix_chars, key, "left").groupBy("status").agg(
        F.count("*").alias("answers"),
        F.sum("suffix_chars").alias("suffix_chars"),
        *[F.sum(c).alias(c) for c in TOKEN_COLUMNS]).collect()
    new_statuses = {row["status"]: int(row["answers"]) for row in per_status}
    calls = sum(new_statuses.values())
    return {
        "new_statuses": new_statuses,
        "llm_calls": calls,
        "prompt_chars": calls * fixed_chars + int(sum(row["suffix_chars"] or 0 for row in per_status)),
        "tokens": {c: int(sum(row[c] or 0 for row in per_status)) for c in TOKEN_COLUMNS},
    }


def suffix_lengths(prompts: DataFrame, key: str) -> DataFrame:
    return prompts.select(key, F.length("prompt_suffix").alias("suffix_chars"))


def raise_if_failing(answers: DataFrame, key: str, stage: str, asked: str, failure_rate: float,
                     max_failure_rate: float) -> None:
    """Stop a labelling stage whose share of failed answers passed ``labelling.max_failure_rate``.

    Called after the good answers were stored, so a re-run pays only for the failed ones; the
    error quotes a few failures (``key`` and detail) so the cause is visible without a query.
    """
    if failure_rate <= max_failure_rate:
        return
    examples = answers.where(F.col("status") == FAILED).select(key, "detail").limit(FAILURE_EXAMPLES).collect()
    raise PersonasError(
        f"{stage} failed for {failure_rate:.1%} of {asked} (labelling.max_failure_rate is "
        f"{max_failure_rate:.1%}); the other answers are stored. Examples: "
        + "; ".join(f"{row[key]}: {row['detail']}" for row in examples))


def generate_calls(answers: DataFrame) -> int:
    """How many vLLM generate() calls (distinct batch_id) answered ``answers``."""
    return int(answers.where(F.col("batch_id").isNotNull()).select("batch_id").distinct().count())
