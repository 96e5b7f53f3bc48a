"""The Labeler interface and the backends that need no model: replay and manual.

A labeller turns prompts (``persona_lib.prompts.PROMPT_COLUMNS``) into raw answers with the
``ANSWERS`` schema: one row per customer, ``raw_response`` null when the backend has no
answer, ``error`` set when asking failed (the customer's status becomes ``failed``), and for
model backends the engine batch and token counts. Validation is the same for every backend
(``validation.validate_answers``). Backends are chosen by name in ``labelling.labeller``:

- ``replay``: recorded answers of a real LLM from the recorded_answers table, loaded once
  from ``labelling.replay_answers`` (the authors' GPT-4-Turbo labels of Online Retail);
- ``manual``: the team's assignments in persona_overrides;
- ``vllm``: the offline vLLM engine on the Spark workers (``vllm_backend``);
- ``openai``: an OpenAI-compatible endpoint (``openai_backend``).
"""

from __future__ import annotations

from typing import Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from persona_lib import contracts, storage
from persona_lib.config import AppConfig
from persona_lib.errors import ConfigError, InputError
from persona_lib.prompts import PromptTemplate
from persona_lib.taxonomy import UNREPRESENTABLE, Taxonomy

LABELLERS = ("replay", "vllm", "openai", "manual")

ANSWERS = StructType([
    StructField("customer_id", StringType(), False),
    StructField("raw_response", StringType(), True),
    StructField("error", StringType(), True),
    StructField("batch_id", StringType(), True),  # one id per engine generate() call
    StructField("prompt_tokens", IntegerType(), True),
    StructField("generated_tokens", IntegerType(), True),
    StructField("cached_tokens", IntegerType(), True),
])


class Labeler(Protocol):
    name: str
    source: str  # written to persona_labels.source, e.g. "replay:gpt-4-turbo"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        """Raw answers (``ANSWERS``) for every customer of ``prompts``."""
        ...


def make_labeler(name: str, config: AppConfig, taxonomy: Taxonomy, template: PromptTemplate) -> Labeler:
    if name == "replay":
        return ReplayLabeler(config)
    if name == "manual":
        return ManualLabeler(config)
    if name == "vllm":
        from persona_lib.labelling.vllm_backend import VllmLabeler

        return VllmLabeler(config.labelling.vllm, config, taxonomy, template)
    if name == "openai":
        from persona_lib.labelling.openai_backend import OpenAILabeler

        return OpenAILabeler(config.labelling.openai, taxonomy, template)
    raise ConfigError(f"labelling.labeller: unknown labeller {name!r}; known: {', '.join(LABELLERS)}")


def read_or_empty(spark: SparkSession, config: AppConfig, key: str) -> DataFrame:
    """The table named by ``config.tables.<key>``, or an empty frame of its contract if absent."""
    ref = storage.table_ref(config, key)
    if ref.exists(spark):
        return ref.read(spark)
    return spark.createDataFrame([], contracts.CONTRACTS_BY_KEY[key].schema)


def no_model_columns(answers: DataFrame) -> DataFrame:
    """Fill the engine-only columns of ``ANSWERS`` with nulls."""
    for column in ("batch_id", "prompt_tokens", "generated_tokens", "cached_tokens"):
        answers = answers.withColumn(column, F.lit(None).cast(ANSWERS[column].dataType))
    return answers.select(ANSWERS.fieldNames())


class ReplayLabeler:
    """Serves recorded LLM answers; a customer without a record gets status no_answer."""

    name = "replay"

    def __init__(self, config: AppConfig):
        self.config = config
        self.source = f"replay:{config.labelling.replay_model}"

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        recorded = ensure_recorded_answers(spark, self.config).read(spark).where(
            F.col("model") == self.config.labelling.replay_model)
        joined = prompts.select("customer_id").join(
            recorded.select("customer_id", F.col("response").alias("raw_response")),
            "customer_id", "left")
        return no_model_columns(joined.withColumn("error", F.lit(None).cast("string")))


def ensure_recorded_answers(spark: SparkSession, config: AppConfig) -> storage.TableRef:
    """The recorded_answers table, loaded from ``labelling.replay_answers`` on first use.

    The CSV holds CustomerID and the model's personas joined by "|"; each is stored as the
    JSON answer {"personas": [...]} the model would have given, so replayed answers pass the
    same validation as live ones.
    """
    ref = storage.table_ref(config, "recorded_answers")
    if ref.exists(spark):
        return ref
    path = config.resolve_path(config.labelling.replay_answers)
    if not path.is_file():
        raise InputError(f"labelling.replay_answers: recorded answers file not found: {path}")
    raw = spark.read.option("header", True).csv(str(path))
    missing = {"CustomerID", "personas"} - set(raw.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)} (expected CustomerID, personas)")
    recorded = raw.select(
        # "12346" and "12346.0" name the same customer: keep the integer form.
        F.regexp_replace(F.trim("CustomerID"), r"\.0+$", "").alias("customer_id"),
        F.to_json(F.struct(F.split(F.trim("personas"), r"\s*\|\s*").alias("personas"))).alias("response"),
        F.lit(config.labelling.replay_model).alias("model"),
    ).where(F.col("customer_id").isNotNull() & (F.col("customer_id") != ""))
    # One plain write on first use (a MERGE into an empty table costs a join for nothing).
    storage.overwrite(recorded.dropDuplicates(["customer_id"]), ref, contracts.RECORDED_ANSWERS)
    return ref


class ManualLabeler:
    """The team's assignments (persona_overrides) as answers; others get no_answer."""

    name = "manual"
    source = "manual"

    def __init__(self, config: AppConfig):
        self.config = config

    def answers(self, spark: SparkSession, prompts: DataFrame) -> DataFrame:
        overrides = read_or_empty(spark, self.config, "persona_overrides")
        # An empty override is "none of these": the answer that says so.
        personas = F.when(F.size("personas") == 0, F.array(F.lit(UNREPRESENTABLE))).otherwise(F.col("personas"))
        assigned = overrides.select("customer_id", F.to_json(F.struct(personas.alias("personas"))).alias("raw_response"))
        joined = prompts.select("customer_id").join(assigned, "customer_id", "left")
        return no_model_columns(joined.withColumn("error", F.lit(None).cast("string")))
