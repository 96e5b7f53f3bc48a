# Databricks notebook source
# MAGIC %md
# MAGIC # Quickstart: personas from purchase histories
# MAGIC
# MAGIC Runs the whole pipeline on a slice of the bundled Online Retail landing files (ingest ->
# MAGIC sample -> label with the recorded GPT-4-Turbo answers -> RevAff propagation -> publish),
# MAGIC then reads the published tables with SQL through the `current_*` views, which always show
# MAGIC the latest *complete* run. Set `DAYS = 0` for all 305 landing files (a few minutes on 2
# MAGIC cores). Run it from the repository root (the kernel of `.venv`), or import it into a
# MAGIC Databricks workspace as it is (it is stored in Databricks source format).
# MAGIC
# MAGIC It writes nothing unless asked: set the `RUN_PIPELINE` widget to `true` to copy the slice
# MAGIC under `WORKDIR` and run the pipeline there; left `false`, it only reads the tables of the
# MAGIC latest complete run in `WORKDIR`.

# COMMAND ----------

# Parameters
from persona_lib.notebook import widget

WORKDIR = widget("WORKDIR", "work/notebooks")  # all local state: Delta tables, MLflow store, checkpoints
CONF = widget("CONF", "conf/local.yaml")
RUN_PIPELINE = widget("RUN_PIPELINE", False)  # true: ingest the slice and run the pipeline (writes)
DAYS = widget("DAYS", 30)  # landing files (one per trading day) to ingest; 0: all of them
BUDGET = widget("BUDGET", 0.3)  # labelling budget: a fraction of the customers

# COMMAND ----------

import shutil

from persona_lib import publishing
from persona_lib.config import load_config
from persona_lib.pipeline import run_pipeline
from persona_lib.query import predict
from persona_lib.spark import get_spark

config = load_config(CONF, workdir=WORKDIR).replace("sampling", budget=BUDGET)
if RUN_PIPELINE and DAYS:
    # A slice of the landing folder: the first DAYS files, copied under the work dir.
    landing = config.workdir_path / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    for path in sorted(config.resolve_path(config.ingest.landing).glob(config.ingest.file_glob))[:DAYS]:
        if not (landing / path.name).exists():
            shutil.copy(path, landing / path.name)
    config = config.replace("ingest", landing=str(landing))
spark = get_spark(config)
print("work dir:", config.workdir_path, "| landing:", config.ingest.landing)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run the pipeline
# MAGIC Progress goes to this cell's output; the summary is what `personas run` prints. With
# MAGIC `RUN_PIPELINE` off, this shows the latest complete run of `WORKDIR` instead.

# COMMAND ----------

if RUN_PIPELINE:
    summary = run_pipeline(spark, config, progress=print)
    shown = {key: summary[key] for key in ("run_id", "customers", "labelled", "propagated", "ambiguous_share")}
else:
    latest = publishing.latest_complete_run(spark, config)
    assert latest is not None, f"no complete run in {config.workdir_path}: set the RUN_PIPELINE widget to true"
    shown = {"run_id": latest["run_id"], "finished_at": str(latest["finished_at"])}
shown

# COMMAND ----------

publishing.latest_complete_run(spark, config)["table_versions"]

# COMMAND ----------

# MAGIC %md
# MAGIC ## Read the tables with SQL
# MAGIC `register_views` creates `current_persona_affinity`, `current_customer_personas`,
# MAGIC `current_product_personas` (pinned to the latest complete run's versions) and
# MAGIC `customer_purchases` (the events). docs/sql.md has more queries.

# COMMAND ----------

publishing.register_views(spark, config)
spark.sql("""
    SELECT persona, COUNT(*) AS customers
    FROM current_customer_personas LATERAL VIEW explode(personas) p AS persona
    GROUP BY persona ORDER BY customers DESC, persona LIMIT 10
""").toPandas()

# COMMAND ----------

spark.sql("""
    SELECT source, COUNT(*) AS customers, ROUND(AVG(confidence), 3) AS mean_confidence,
           ROUND(AVG(CAST(is_ambiguous AS INT)), 3) AS ambiguous_share
    FROM current_customer_personas GROUP BY source ORDER BY source
""").toPandas()

# COMMAND ----------

# MAGIC %md
# MAGIC Top personas per country: the events give each customer's country.

# COMMAND ----------

spark.sql("""
    WITH customer_country AS (
      SELECT customer_id, max_by(country, event_ts) AS country FROM customer_purchases GROUP BY customer_id
    ), counts AS (
      SELECT country, persona, COUNT(*) AS customers
      FROM current_customer_personas cp
      JOIN customer_country USING (customer_id)
      LATERAL VIEW explode(cp.personas) p AS persona
      GROUP BY country, persona
    )
    SELECT country, persona, customers FROM (
      SELECT *, row_number() OVER (PARTITION BY country ORDER BY customers DESC, persona) AS position FROM counts)
    WHERE position <= 3
    ORDER BY country, customers DESC
""").toPandas().head(12)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The product page's query
# MAGIC One customer's personas, best first, with the probability and the evidence.

# COMMAND ----------

customer_id = spark.sql(
    "SELECT customer_id FROM current_customer_personas WHERE source = 'propagated' AND size(personas) > 0 "
    "ORDER BY confidence DESC, customer_id LIMIT 1").first()["customer_id"]
rows = predict({"from": "customer_purchases", "where": {"customer_id": customer_id},
                "predict": "persona", "select": ["$p", "persona", "$why"], "limit": 3}, spark, config)
assert rows, f"no personas for customer {customer_id}"
[(customer_id, row["persona"], round(row["$p"], 3), [p["title"] for p in row["$why"]["products"][:3]])
 for row in rows]
