# Databricks notebook source
# MAGIC %md
# MAGIC # Persona explorer
# MAGIC
# MAGIC The published personas of a work dir: how customers spread over personas, why one
# MAGIC customer got its personas, and how personas drifted between the last two complete runs
# MAGIC (Delta time travel to the table versions each run recorded in the `runs` table).
# MAGIC
# MAGIC It reads the complete runs of `WORKDIR` and writes nothing unless asked. Drift needs two
# MAGIC complete runs: with the `MAKE_RUNS` widget set to `true` and fewer than two runs there, it
# MAGIC makes them (it adds landing files to `<workdir>/landing`, the quickstart's slice, ingests
# MAGIC them and runs the pipeline again, so the second run sees new purchases).

# COMMAND ----------

# Parameters
from persona_lib.notebook import widget

WORKDIR = widget("WORKDIR", "work/notebooks")
CONF = widget("CONF", "conf/local.yaml")
MAKE_RUNS = widget("MAKE_RUNS", False)  # true: run the pipeline until WORKDIR has two complete runs (writes)
FIRST_DAYS = widget("FIRST_DAYS", 30)  # landing files of the first run, when the work dir has none
MORE_DAYS = widget("MORE_DAYS", 10)  # landing files added before a second run
BUDGET = widget("BUDGET", 0.3)
CUSTOMER = widget("CUSTOMER", None)  # a customer id to explain; null: the most confident propagated customer

# COMMAND ----------

import json
import shutil

from persona_lib import publishing, storage
from persona_lib.config import load_config
from persona_lib.ingest import ingest
from persona_lib.notebook import show_figure
from persona_lib.pipeline import run_pipeline
from persona_lib.query import predict
from persona_lib.spark import get_spark

config = load_config(CONF, workdir=WORKDIR).replace("sampling", budget=BUDGET)
spark = get_spark(config)
tables = storage.resolve_tables(config)
landing = config.workdir_path / "landing"
runs_table = tables.runs


def complete_runs():
    """The complete runs, oldest first: run id, finish time and the version of every output table."""
    if not runs_table.exists(spark):
        return []
    return [row.asDict() for row in spark.sql(
        f"SELECT run_id, finished_at, table_versions FROM {runs_table.sql_name} "
        "WHERE status = 'complete' ORDER BY finished_at, run_id").collect()]


def run_with_more_days(days: int) -> dict:
    """Copy `days` more landing files under the work dir, ingest them and run the pipeline."""
    landing.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in landing.iterdir()}
    source = sorted(config.resolve_path(config.ingest.landing).glob(config.ingest.file_glob))
    for path in [p for p in source if p.name not in present][:days]:
        shutil.copy(path, landing / path.name)
    sliced = config.replace("ingest", landing=str(landing))
    ingest(spark, sliced)
    return run_pipeline(spark, sliced, progress=print)


while MAKE_RUNS and len(complete_runs()) < 2:
    run_with_more_days(FIRST_DAYS if not complete_runs() else MORE_DAYS)
runs = complete_runs()
assert runs, f"no complete run in {config.workdir_path}: run the pipeline, or set the MAKE_RUNS widget to true"
previous, latest = (runs[-2] if len(runs) >= 2 else None), runs[-1]
publishing.register_views(spark, config)
[(r["run_id"], str(r["finished_at"]), r["table_versions"]["customer_personas"]) for r in runs]

# COMMAND ----------

# MAGIC %md
# MAGIC ## Distribution
# MAGIC Customers per persona in the latest run (a customer counts once per persona it holds),
# MAGIC and how they were assigned.

# COMMAND ----------

distribution = spark.sql("""
    SELECT persona, COUNT(*) AS customers
    FROM current_customer_personas LATERAL VIEW explode(personas) p AS persona
    GROUP BY persona ORDER BY customers DESC, persona
""").toPandas()
axis = distribution.plot.barh(x="persona", y="customers", figsize=(7, 6), legend=False)
axis.invert_yaxis()
axis.set_title("Customers per persona (latest run)")
show_figure(axis.figure)

# COMMAND ----------

spark.sql("""
    SELECT source, COUNT(*) AS customers, ROUND(AVG(CAST(is_ambiguous AS INT)), 3) AS ambiguous_share,
           ROUND(AVG(confidence), 3) AS mean_confidence
    FROM current_customer_personas GROUP BY source ORDER BY source
""").toPandas()

# COMMAND ----------

# MAGIC %md
# MAGIC ## A customer's why
# MAGIC For a propagated customer: the products that contribute most to its top persona (each
# MAGIC product's weight is its share of the one-step walk score), the labelled co-buyers it
# MAGIC reaches, and per persona the evidence the product page's query returns.

# COMMAND ----------

customer_id = CUSTOMER or spark.sql(
    "SELECT customer_id FROM current_customer_personas "
    "WHERE source = 'propagated' AND NOT is_ambiguous AND size(personas) > 0 "
    "ORDER BY confidence DESC, customer_id LIMIT 1").first()["customer_id"]
record = spark.sql(
    f"SELECT * FROM current_customer_personas WHERE customer_id = '{customer_id}'").first().asDict(recursive=True)
print(json.dumps({k: record[k] for k in ("customer_id", "personas", "source", "confidence", "is_ambiguous")},
                 default=str))
print("labelled co-buyers reached:", record["why"]["labelled_neighbours"])
for product in record["why"]["products"]:
    print(f"  {product['weight']:.4f}  {product['product_id']:>8}  {product['title']}")

# COMMAND ----------

rows = predict({"from": "customer_purchases", "where": {"customer_id": customer_id},
                "predict": "persona", "select": ["$p", "persona", "$why"], "limit": 3}, spark, config)
assert rows, f"the query returned nothing for {customer_id}"
for row in rows:
    print(f"{row['persona']}: p={row['$p']:.3f}; top products:",
          ", ".join(p["title"] for p in row["$why"]["products"][:3]))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift between the last two runs
# MAGIC Each run recorded the version of every output table it published; `VERSION AS OF` reads
# MAGIC the table as that run left it. A customer drifts when its top persona changed.

# COMMAND ----------

customer_personas = tables.customer_personas.sql_name
if previous is None:
    print(f"drift needs two complete runs; {config.workdir_path} has one (set MAKE_RUNS to true to make another)")
    drift = None
else:
    before_version = previous["table_versions"]["customer_personas"]
    after_version = latest["table_versions"]["customer_personas"]
    drift = spark.sql(f"""
        WITH before AS (SELECT customer_id, try_element_at(personas, 1) AS top, personas
                        FROM {customer_personas} VERSION AS OF {before_version}),
             after AS (SELECT customer_id, try_element_at(personas, 1) AS top, personas
                       FROM {customer_personas} VERSION AS OF {after_version})
        SELECT
          COUNT(*) AS customers_in_both,
          SUM(CASE WHEN before.top <=> after.top THEN 0 ELSE 1 END) AS top_persona_changed,
          SUM(CASE WHEN array_sort(before.personas) = array_sort(after.personas) THEN 0 ELSE 1 END) AS personas_changed,
          (SELECT COUNT(*) FROM after LEFT ANTI JOIN before USING (customer_id)) AS new_customers
        FROM before JOIN after USING (customer_id)
    """).toPandas()
    display(drift)  # noqa: F821 - IPython's and Databricks' display

# COMMAND ----------

# MAGIC %md
# MAGIC Persona share in each run: the share of customers holding each persona.

# COMMAND ----------

if previous is not None:
    share = spark.sql(f"""
        WITH runs AS (
          SELECT 'previous' AS run, persona, COUNT(*) / (SELECT COUNT(*) FROM {customer_personas} VERSION AS OF {before_version}) AS share
          FROM {customer_personas} VERSION AS OF {before_version} LATERAL VIEW explode(personas) p AS persona GROUP BY persona
          UNION ALL
          SELECT 'latest' AS run, persona, COUNT(*) / (SELECT COUNT(*) FROM {customer_personas} VERSION AS OF {after_version}) AS share
          FROM {customer_personas} VERSION AS OF {after_version} LATERAL VIEW explode(personas) p AS persona GROUP BY persona
        )
        SELECT * FROM runs
    """).toPandas().pivot(index="persona", columns="run", values="share").fillna(0.0)
    share = share.reindex(columns=["previous", "latest"]).sort_values("latest", ascending=False)
    axis = share.plot.barh(figsize=(7, 6))
    axis.invert_yaxis()
    axis.set_xlabel("share of customers")
    axis.set_title("Persona share: previous vs latest run")
    show_figure(axis.figure)
    assert int(drift["customers_in_both"][0]) > 0
