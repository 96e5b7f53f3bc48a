"""``personas evaluate published``: the published tables scored against the recorded labels.

Scored customers: those of the latest complete run's customer_personas whose source is not
``llm`` and who have a recorded label (data/gplr_online_retail user labels, Unrepresentable
dropped), over the personas that occur in those labels. Figures:
- f1: mean set-F1 of the published personas (restricted to the label personas);
- macro_f1: per-persona F1 over the scored customers, averaged over the personas;
- prevalence_gap: mean over personas of |published share - labelled share|;
- ece: expected calibration error of persona_affinity.probability over every (scored
  customer, persona) pair, 10 equal-width bins, a missing row counting as probability 0;
- ambiguous_share, f1_ambiguous, f1_certain: share flagged is_ambiguous, mean set-F1 of the
  flagged and of the other customers.
Everything is aggregated in Spark; only the figures reach the driver.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_lib import publishing, storage
from persona_lib.config import AppConfig
from persona_lib.evaluation import data

BINS = 10


def published_scores(customer_personas: DataFrame, persona_affinity: DataFrame, truth: DataFrame) -> dict:
    """The figures (see the module docstring) of published tables against ``truth`` rows
    (customer_id, persona)."""
    truth = truth.select("customer_id", "persona").distinct()
    personas = truth.select("persona").distinct()
    scored = (customer_personas.where(F.col("source") != "llm")
              .select("customer_id", "is_ambiguous", "personas")
              .join(truth.select("customer_id").distinct(), "customer_id", "left_semi")).cache()
    predicted = (scored.select("customer_id", F.explode("personas").alias("persona"))
                 .join(personas, "persona", "left_semi").distinct())
    true_rows = truth.join(scored.select("customer_id"), "customer_id", "left_semi")
    grid = (scored.select("customer_id", "is_ambiguous").crossJoin(F.broadcast(personas))
            .join(true_rows.withColumn("y", F.lit(1)), ["customer_id", "persona"], "left")
            .join(predicted.withColumn("p", F.lit(1)), ["customer_id", "persona"], "left")
            .join(persona_affinity.select("customer_id", "persona", "probability"), ["customer_id", "persona"], "left")
            .select("customer_id", "persona", "is_ambiguous",
                    F.coalesce("y", F.lit(0)).alias("y"), F.coalesce("p", F.lit(0)).alias("p"),
                    F.coalesce("probability", F.lit(0.0)).alias("probability"))).cache()
    per_customer = grid.groupBy("customer_id", "is_ambiguous").agg(
        F.sum(F.col("y") * F.col("p")).alias("h"), F.sum("p").alias("n"), F.sum("y").alias("t"))
    set_f1 = F.when(F.col("n") + F.col("t") > 0, 2.0 * F.col("h") / (F.col("n") + F.col("t"))).otherwise(0.0)
    customers = per_customer.agg(
        F.avg(set_f1).alias("f1"), F.avg(F.col("is_ambiguous").cast("double")).alias("ambiguous_share"),
        F.avg(F.when(F.col("is_ambiguous"), set_f1)).alias("f1_ambiguous"),
        F.avg(F.when(~F.col("is_ambiguous"), set_f1)).alias("f1_certain"),
        F.count(F.lit(1)).alias("customers")).first()
    per_persona = grid.groupBy("persona").agg(
        F.sum(F.col("y") * F.col("p")).alias("tp"), F.sum("p").alias("pred"), F.sum("y").alias("pos"),
        F.count(F.lit(1)).alias("rows"))
    persona_figures = per_persona.agg(
        F.avg(F.when(F.col("pred") + F.col("pos") > 0, 2.0 * F.col("tp") / (F.col("pred") + F.col("pos")))
              .otherwise(0.0)).alias("macro_f1"),
        F.avg(F.abs(F.col("pred") - F.col("pos")) / F.col("rows")).alias("prevalence_gap"),
        F.count(F.lit(1)).alias("personas")).first()
    bin_of = F.least(F.floor(F.col("probability") * BINS), F.lit(BINS - 1))
    bins = grid.groupBy(bin_of.alias("bin")).agg(
        F.count(F.lit(1)).alias("k"), F.sum("probability").alias("sp"), F.sum("y").alias("sy"))
    ece = bins.agg((F.sum(F.abs(F.col("sp") - F.col("sy"))) / F.sum("k")).alias("ece")).first()["ece"]
    scored.unpersist()
    grid.unpersist()
    as_float = lambda v: None if v is None else round(float(v), 4)
    return {
        "f1": as_float(customers["f1"]), "macro_f1": as_float(persona_figures["macro_f1"]),
        "prevalence_gap": as_float(persona_figures["prevalence_gap"]), "ece": as_float(ece),
        "ambiguous_share": as_float(customers["ambiguous_share"]),
        "f1_ambiguous": as_float(customers["f1_ambiguous"]), "f1_certain": as_float(customers["f1_certain"]),
        "customers": int(customers["customers"] or 0), "personas": int(persona_figures["personas"] or 0),
    }


def evaluate_published(spark: SparkSession, config: AppConfig) -> dict:
    """The latest complete run's published tables against the recorded labels."""
    tables = storage.resolve_tables(config)
    summary = publishing.read_current(spark, tables, "customer_personas")
    affinity = publishing.read_current(spark, tables, "persona_affinity")
    return published_scores(summary, affinity, data.user_labels(spark, config))
