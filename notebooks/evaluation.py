# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluation against the GPLR paper
# MAGIC
# MAGIC The charts of `personas evaluate` (persona_lib.evaluation), on the paper's OnlineRetail
# MAGIC cut: persona accuracy (set-F1 against the recorded labels, on the customers a run did not
# MAGIC label) against the labelling budget, beside the authors' released outputs; the
# MAGIC recommendation lift of persona conditioning (NDCG@K); segmentation stability over the two
# MAGIC halves of the year. Left at their defaults, the `RUN_*` widgets are off and the notebook
# MAGIC only scores the authors' released outputs; switched on, each part runs the full evaluation
# MAGIC (many minutes). CI runs accuracy at one budget and one seed.

# COMMAND ----------

# Parameters
from persona_lib.notebook import widget

WORKDIR = widget("WORKDIR", "work/notebooks")
CONF = widget("CONF", "conf/local.yaml")
BUDGETS = widget("BUDGETS", [0.05, 0.1, 0.2, 0.3])  # fractions of the customers
SAMPLERS = widget("SAMPLERS", ["random", "du"])
SEEDS = widget("SEEDS", 3)
# Each part below computes, and writes its evaluation tables under WORKDIR, only when switched on.
RUN_ACCURACY = widget("RUN_ACCURACY", False)  # GPLR runs at each budget (many minutes at the defaults)
RUN_RECOMMEND = widget("RUN_RECOMMEND", False)  # ALS baseline vs persona re-ranking (a few minutes)
RUN_STABILITY = widget("RUN_STABILITY", False)  # needs the paper cut: ingests it into the work dir first

# COMMAND ----------

import matplotlib.pyplot as plt
import pandas as pd

from persona_lib import storage
from persona_lib.config import load_config
from persona_lib.evaluation import accuracy, data
from persona_lib.notebook import show_figure
from persona_lib.spark import get_spark

config = load_config(CONF, workdir=WORKDIR)
spark = get_spark(config)
tables = storage.resolve_tables(config)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The authors' released outputs
# MAGIC Scored exactly as ours: a customer whose output equals its full label counts as labelled.

# COMMAND ----------

truth = data.user_labels(spark, config)
published_budgets = [0.05, 0.1, 0.2, 0.3]
authors = pd.DataFrame([
    {"budget": budget, "sampler": sampler, **scores}
    for budget in published_budgets for sampler in ("du", "random")
    if (scores := accuracy.authors_accuracy(spark, config, budget, truth, sampler)) is not None
])
authors[["budget", "sampler", "f1", "precision", "recall", "labelled"]]

# COMMAND ----------

# MAGIC %md
# MAGIC ## Persona accuracy against the budget
# MAGIC `f1_top5` is the paper's fixed top-5; `f1`, `macro_f1`, `prevalence_gap`, `ece` and
# MAGIC `ambiguous_share` score the tables `personas run` would publish with the default config
# MAGIC (the production persona model); `f1_with_product_labels` the same model with the
# MAGIC products' LLM labels as a feature.

# COMMAND ----------

if RUN_ACCURACY:
    result = accuracy.evaluate_accuracy(spark, config, BUDGETS, SAMPLERS, SEEDS)
    ours = pd.DataFrame(result["rows"])
    print(accuracy.format_table(result["rows"]))
    display(ours[["budget", "sampler", "seeds", "f1", "macro_f1", "prevalence_gap", "ece",  # noqa: F821
                  "ambiguous_share", "f1_with_product_labels", "f1_top5", "authors_f1"]])
else:
    ours = pd.DataFrame(columns=["sampler", "budget", "f1", "f1_top5"])
    print("RUN_ACCURACY is off: the chart shows the authors' outputs only")

# COMMAND ----------

figure, axis = plt.subplots(figsize=(7, 4.5))
for sampler, rows in ours.groupby("sampler"):
    rows = rows.sort_values("budget")
    axis.plot(rows["budget"] * 100, rows["f1"], marker="o", label=f"ours, published model ({sampler})")
    axis.plot(rows["budget"] * 100, rows["f1_top5"], marker="x", linestyle=":", label=f"ours, top-5 ({sampler})")
authors_du = authors[authors["sampler"] == "du"].sort_values("budget")
axis.plot(authors_du["budget"] * 100, authors_du["f1"], marker="s", linestyle="--", label="authors' GPLR (du)")
axis.set_xlabel("labelling budget (% of customers)")
axis.set_ylabel("set-F1 on unlabelled customers")
axis.set_title("Persona accuracy against the budget")
axis.legend()
show_figure(figure)

# COMMAND ----------

# MAGIC %md
# MAGIC The last run's predictions are a Delta table (`evaluation_personas`): personas per customer
# MAGIC and where they came from.

# COMMAND ----------

predictions_table = tables.evaluation_personas
if predictions_table.exists(spark):
    display(predictions_table.read(spark).groupBy("source").count().toPandas())  # noqa: F821
else:
    print("no accuracy evaluation in", config.workdir_path)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Recommendation lift (NDCG@K)
# MAGIC MLlib ALS on the authors' train split, then the same lists re-ranked with persona
# MAGIC affinity; NDCG@K on the test split, training items masked.

# COMMAND ----------

if RUN_RECOMMEND:
    from persona_lib.evaluation import recommend

    ranking = recommend.evaluate_recommend(spark, config)
    print(recommend.format_table(ranking))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in ("baseline", "persona"):
        ks = sorted(ranking["ndcg"][name])
        axis.plot(ks, [ranking["ndcg"][name][k] for k in ks], marker="o",
                  label="ALS" if name == "baseline" else f"ALS + personas (weight {ranking['blend_weight']})")
    axis.set_xscale("log")
    axis.set_xlabel("K")
    axis.set_ylabel("NDCG@K")
    axis.set_title("Recommendation: NDCG@K on the authors' test split")
    axis.legend()
    show_figure(figure)
else:
    print("RUN_RECOMMEND is off")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Segmentation stability
# MAGIC Customers with more than 10 invoices, split into the two halves of the year: the share
# MAGIC whose RFM deciles are unchanged, against the share whose dominant 3 personas are. Two
# MAGIC persona representations: "distinctive" (personas by lift over the average customer) and
# MAGIC "most named" (raw counts), whose near-total stability comes from nearly everyone sharing
# MAGIC one set: the table's "distinct sets" and "largest set" columns show it.

# COMMAND ----------

if RUN_STABILITY:
    from persona_lib.evaluation import stability
    from persona_lib.ingest import ingest

    if not tables.paper_purchase_events.exists(spark):
        ingest(spark, config, cut="paper")
    stable = stability.evaluate_stability(spark, config)
    print(stability.format_table(stable))
    figure, axis = plt.subplots(figsize=(6, 4))
    names = ["RFM deciles", "distinctive 3", "most named 3"]
    axis.bar(names, [stable["unchanged_rfm"], stable["unchanged_personas"],
                     stable["unchanged_personas_most_named"]], label="ours")
    axis.scatter(names[:2], [stable["paper_unchanged_rfm"], stable["paper_unchanged_personas"]],
                 color="black", zorder=3, label="paper")
    axis.set_ylabel("share unchanged between halves")
    axis.legend()
    show_figure(figure)
else:
    print("RUN_STABILITY is off")
