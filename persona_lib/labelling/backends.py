"""The labellers by name (``labelling.labeller``), and the two that need no model.

The interface they share (``Labeler``, the ``ANSWERS`` schema) is in ``answers``; validation
is the same for every backend (``validation.validate_answers``).

- ``replay``: recorded answers of a real LLM from the recorded_answers table, loaded once
  from ``labelling.replay_answers`` (the authors' GPT-4-Turbo labels of Online Retail);
- ``manual``: the team's assignments in persona_overrides;
- ``vllm``: the offline vLLM engine on the Spark workers (``vllm_backend``);
- ``openai``: an OpenAI-compatible endpoint (``openai_backend``).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import contracts, storage
from persona_lib.config import AppConfig
from persona_lib.errors import ConfigError
from persona_lib.labelling.answers import LABELLERS, Labeler, no_model_columns, read_recorded_answers
from persona_lib.labelling.openai_backend import OpenAILabeler
from persona_lib.labelling.vllm_backend import VllmLabeler
from persona_lib.prompts import PromptTemplate
from persona_lib.taxonomy import UNREPRESENTABLE, Taxonomy

__all__ = ["LABELLERS", "Labeler", "ManualLabeler", "ReplayLabeler", "ensure_recorded_answers", "make_labeler",
           "no_model_columns", "read_or_empty"]


def make_labeler(name: str, config: AppConfig, tables: storage.Tables, taxonomy: Taxonomy,
                 template: PromptTemplate) -> Labeler:
    if name == "replay":
        return ReplayLabeler(tables.recorded_answers, config.resolve_path(config.labelling.replay_answers),
                             config.labelling.replay_model)
    if name == "manual":
        return ManualLabeler(tables.persona_overrides)
    if name == "vllm":
        return VllmLabeler(config.labelling.vllm, config, taxonomy, template)
    if name == "openai":
        return OpenAILabeler(config.labelling.openai, taxonomy, template)
    raise ConfigError(f"labelling.labeller: unknown labeller {name!r}; known: {', '.join(LABELLERS)}")


def read_or_empty(spark: SparkSession, ref: storage.TableRef) -> DataFrame:
    """The table ``ref`` (one of ``storage.Tables``), or an empty frame of its contract if absent."""
    if ref.exists(spark):
        return ref.read(spark)
    return spark.createDataFrame([], contracts.CONTRACTS_BY_KEY[ref.name].schema)


class ReplayLabeler:
    """Serves recorded LLM answers; a customer without a record gets status no_answer."""

    name = "replay"

    def __init__(self, recorded_answers: storage.TableRef, answers_file: Path, model: str):
        self.recorded_answers, self.answers_file, self.model = recorded_answers, answers_file, model
        self.source = f"replay:{model}"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        recorded = ensure_recorded_answers(spark, self.recorded_answers, self.answers_file, self.model).read(
            spark).where(F.col("model") == self.model)
        joined = prompts.select("customer_id").join(
            recorded.select("customer_id", F.col("response").alias("raw_response")),
            "customer_id", "left")
        return no_model_columns(joined.withColumn("error", F.lit(None).cast("string")))


def ensure_recorded_answers(spark: SparkSession, ref: storage.TableRef, answers_file: Path,
                            model: str) -> storage.TableRef:
    """The recorded_answers table ``ref``, loaded on first use from ``answers_file``
    (``labelling.replay_answers``) as the answers of ``model`` (``labelling.replay_model``).

    Each customer's recorded personas (``answers.read_recorded_answers``) are stored as the
    JSON answer {"personas": [...]} the model would have given, so replayed answers pass the
    same validation as live ones.
    """
    if ref.exists(spark):
        return ref
    recorded = read_recorded_answers(spark, answers_file).select(
        "customer_id", F.to_json(F.struct("personas")).alias("response"), F.lit(model).alias("model"))
    # One plain write on first use (a MERGE into an empty table costs a join for nothing).
    storage.overwrite(recorded, ref, contracts.RECORDED_ANSWERS)
    return ref


class ManualLabeler:
    """The team's assignments (persona_overrides) as answers; others get no_answer."""

    name = "manual"
    source = "manual"

    def __init__(self, overrides: storage.TableRef):
        self.overrides = overrides

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        overrides = read_or_empty(spark, self.overrides)
        # An empty override is "none of these": the answer that says so.
        personas = F.when(F.size("personas") == 0, F.array(F.lit(UNREPRESENTABLE))).otherwise(F.col("personas"))
        assigned = overrides.select("customer_id", F.to_json(F.struct(personas.alias("personas"))).alias("raw_response"))
        joined = prompts.select("customer_id").join(assigned, "customer_id", "left")
        return no_model_columns(joined.withColumn("error", F.lit(None).cast("string")))
