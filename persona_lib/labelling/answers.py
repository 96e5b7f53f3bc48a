"""What every labeller shares: the raw-answer schema, the statuses, the ``Labeler`` protocol
and the one reader of recorded answers files.

A labeller turns prompts (``persona_lib.prompts.PROMPT_COLUMNS``) into raw answers with the
``ANSWERS`` schema: one row per customer, ``raw_response`` null when the backend has no
answer, ``error`` set when asking failed (the customer's status becomes ``failed``), and for
model backends the engine batch and token counts. ``validation`` gives each answer one of
``STATUSES``. The backends (``backends``, ``vllm_backend``, ``openai_backend``) import this
module and never each other's.

A recorded answers file (``labelling.replay_answers``, the authors' GPT-4-Turbo labels of
Online Retail) is a CSV with CustomerID and the personas joined by "|".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from persona_lib.config import LABELLERS
from persona_lib.errors import InputError
from persona_lib.ingest_files import customer_id_column
from persona_lib.taxonomy import UNREPRESENTABLE

__all__ = ["ANSWERS", "FAILED", "FINAL_STATUSES", "LABELLERS", "LABEL_STATUSES", "Labeler", "NO_ANSWER",
           "OK", "PERSONA_SEPARATOR", "REPAIRED", "STATUSES", "UNREPRESENTABLE", "UNREPRESENTABLE_STATUS",
           "no_model_columns", "read_recorded_answers", "recorded_labels"]

# Statuses (persona_labels.status, product_labels.status); their meaning is in ``validation``.
OK, REPAIRED, UNREPRESENTABLE_STATUS, NO_ANSWER, FAILED = (
    "ok", "repaired", "unrepresentable", "no_answer", "failed")
STATUSES = (OK, REPAIRED, UNREPRESENTABLE_STATUS, NO_ANSWER, FAILED)
# Statuses whose personas are labels (propagation's seeds).
LABEL_STATUSES = (OK, REPAIRED)
# Statuses a stored label keeps until its history, prompt or taxonomy changes (never re-asked).
FINAL_STATUSES = (OK, REPAIRED, UNREPRESENTABLE_STATUS)

ANSWERS = StructType([
    StructField("customer_id", StringType(), False),
    StructField("raw_response", StringType(), True),
    StructField("error", StringType(), True),
    StructField("batch_id", StringType(), True),  # one id per engine generate() call
    StructField("prompt_tokens", IntegerType(), True),
    StructField("generated_tokens", IntegerType(), True),
    StructField("cached_tokens", IntegerType(), True),
])

PERSONA_SEPARATOR = "|"
RECORDED_COLUMNS = ("CustomerID", "personas")


class Labeler(Protocol):
    name: str
    source: str  # written to persona_labels.source, e.g. "replay:gpt-4-turbo"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        """Raw answers (``ANSWERS``) for every customer of ``prompts``."""
        ...


def no_model_columns(answers: DataFrame) -> DataFrame:
    """Fill the engine-only columns of ``ANSWERS`` with nulls."""
    for column in ("batch_id", "prompt_tokens", "generated_tokens", "cached_tokens"):
        answers = answers.withColumn(column, F.lit(None).cast(ANSWERS[column].dataType))
    return answers.select(ANSWERS.fieldNames())


def read_recorded_answers(spark: SparkSession, path: Path, where: str = "labelling.replay_answers") -> DataFrame:
    """(customer_id, personas): one row per customer of a recorded answers file.

    ``customer_id`` is the id as the tables hold it (ingest's rule: "12346.0" is "12346");
    ``personas`` the recorded names in order, trimmed, "Unrepresentable" kept (validation
    decides what it means). A row whose CustomerID is not an id, or whose personas are empty,
    is an InputError naming the file, the field and the row: a recorded label is never
    silently dropped.
    """
    if not path.is_file():
        raise InputError(f"{where}: recorded answers file not found: {path}")
    raw = spark.read.option("header", True).csv(str(path))
    missing = [c for c in RECORDED_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (expected {', '.join(RECORDED_COLUMNS)})")
    # A lambda, not F.trim itself: transform takes a two-argument function as (element, index).
    names = F.filter(F.transform(F.split(F.col("personas"), re.escape(PERSONA_SEPARATOR)),
                                 lambda name: F.trim(name)),
                     lambda name: name != "")
    frame = raw.select("CustomerID", "personas", customer_id_column(F.col("CustomerID")).alias("customer_id"),
                       F.coalesce(names, F.array().cast("array<string>")).alias("_names"))
    for field, problem in (("CustomerID", F.col("customer_id").isNull()), ("personas", F.size("_names") == 0)):
        bad = frame.where(problem).select(*RECORDED_COLUMNS).limit(1).collect()
        if bad:
            raise InputError(f"{path}: field {field!r} is not usable in row {bad[0].asDict()} "
                             "(CustomerID: digits with an optional .0; personas: names joined by '|')")
    return frame.select("customer_id", F.col("_names").alias("personas")).dropDuplicates(["customer_id"])


def recorded_labels(recorded: DataFrame) -> DataFrame:
    """(customer_id, persona) of ``read_recorded_answers``: one row per recorded persona;
    "Unrepresentable" is no persona, so such customers have no row (the paper drops them)."""
    return (recorded.select("customer_id", F.explode("personas").alias("persona"))
            .where(F.col("persona") != UNREPRESENTABLE)
            .dropDuplicates(["customer_id", "persona"]))
