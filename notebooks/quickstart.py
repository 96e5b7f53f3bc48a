# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: personas from purchase histories
#
# Runs the whole pipeline on a slice of the bundled Online Retail landing files (ingest ->
# sample -> label with the recorded GPT-4-Turbo answers -> RevAff propagation -> publish),
# then reads the published tables with SQL through the `current_*` views, which always show
# the latest *complete* run. Set `DAYS = 0` for all 305 landing files (a few minutes on 2
# cores). Run it from the repository root (the kernel of `.venv`).

# %% tags=["parameters"]
WORKDIR = "work/notebooks"  # all local state: Delta tables, MLflow store, checkpoints
CONF = "conf/local.yaml"
DAYS = 30  # landing files (one per trading day) to ingest; 0: all of them
BUDGET = 0.3  # labelling budget: a fraction of the customers

# %%
import shutil

from persona_lib import publishing
from persona_lib.config import load_config
from persona_lib.pipeline import run_pipeline
from persona_lib.query import predict
from persona_lib.spark import get_spark

config = load_config(CONF, workdir=WORKDIR).replace("sampling", budget=BUDGET)
if DAYS:
    # A slice of the landing folder: the first DAYS files, copied under the work dir.
    landing = config.workdir_path / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    for path in sorted(config.resolve_path(config.ingest.landing).glob(config.ingest.file_glob))[:DAYS]:
        if not (landing / path.name).exists():
            shutil.copy(path, landing / path.name)
    config = config.replace("ingest", landing=str(landing))
spark = get_spark(config)
print("work dir:", config.workdir_path, "| landing:", config.ingest.landing)

# %% [markdown]
# ## Run the pipeline
# Progress goes to this cell's output; the summary is what `personas run` prints.

# %%
summary = run_pipeline(spark, config, progress=print)
{key: summary[key] for key in ("run_id", "customers", "labelled", "propagated", "ambiguous_share", "top_personas")}

# %%
{name: table["version"] for name, table in summary["tables"].items()}

# %% [markdown]
# ## Read the tables with SQL
# `register_views` creates `current_persona_affinity`, `current_customer_personas`,
# `current_product_personas` (pinned to the latest complete run's versions) and
# `customer_purchases` (the events). docs/sql.md has more queries.

# %%
publishing.register_views(spark, config)
spark.sql("""
    SELECT persona, COUNT(*) AS customers
    FROM current_customer_personas LATERAL VIEW explode(personas) p AS persona
    GROUP BY persona ORDER BY customers DESC, persona LIMIT 10
""").toPandas()

# %%
spark.sql("""
    SELECT source, COUNT(*) AS customers, ROUND(AVG(confidence), 3) AS mean_confidence,
           ROUND(AVG(CAST(is_ambiguous AS INT)), 3) AS ambiguous_share
    FROM current_customer_personas GROUP BY source ORDER BY source
""").toPandas()

# %% [markdown]
# Top personas per country: the events give each customer's country.

# %%
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

# %% [markdown]
# ## The product page's query
# One customer's personas, best first, with the probability and the evidence.

# %%
customer_id = spark.sql(
    "SELECT customer_id FROM current_customer_personas WHERE source = 'propagated' AND size(personas) > 0 "
    "ORDER BY confidence DESC, customer_id LIMIT 1").first()["customer_id"]
rows = predict({"from": "customer_purchases", "where": {"customer_id": customer_id},
                "predict": "persona", "select": ["$p", "persona", "$why"], "limit": 3}, spark, config)
assert rows, f"no personas for customer {customer_id}"
[(customer_id, row["persona"], round(row["$p"], 3), [p["title"] for p in row["$why"]["products"][:3]])
 for row in rows]
