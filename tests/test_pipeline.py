"""The whole pipeline on a slice of the real data: tables, invariants, MLflow, resume,
overrides, the query, and forgetting a customer."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import contracts, publishing, storage, tracking
from persona_lib.config import load_config
from persona_lib.forget import forget_customers
from persona_lib.ingest import ingest
from persona_lib.labelling import add_overrides, label_customers
from persona_lib.pipeline import run_pipeline
from persona_lib.query import predict
from persona_lib.testing import TEST_CONF
from tests.landing_files import copy_landing_slice


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    landing = copy_landing_slice(root / "landing")
    config = load_config(TEST_CONF, workdir=str(root / "work"))
    config = config.replace("ingest", landing=str(landing))
    return config.replace("sampling", budget=0.3, rounds=2)


class CrashInRoundTwo(RuntimeError):
    pass


@pytest.fixture(scope="module")
def crashed_then_resumed(spark, small_config):
    """A run that crashes in round 2's propagation, then the same run started again."""
    from persona_lib import propagation

    real_propagate = propagation.propagate
    calls = []

    def crash_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise CrashInRoundTwo("simulated crash")
        return real_propagate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(propagation, "propagate", crash_on_second_call)
        with pytest.raises(CrashInRoundTwo):
            run_pipeline(spark, small_config)
    labelled_before_crash = storage.resolve_tables(small_config).persona_labels.read(spark).count()
    return labelled_before_crash, run_pipeline(spark, small_config)


@pytest.fixture(scope="module")
def first_run(crashed_then_resumed):
    return crashed_then_resumed[1]


def test_a_crashed_run_resumes_without_asking_the_llm_again(spark, small_config, crashed_then_resumed):
    labelled_before_crash, resumed = crashed_then_resumed
    runs = {r["status"] for r in storage.resolve_tables(small_config).runs.read(spark).collect()}
    assert runs == {"failed", "complete"}
    assert labelled_before_crash > 0
    assert resumed["rounds"][0]["llm_calls"] == 0
    total = storage.resolve_tables(small_config).persona_labels.read(spark).count()
    assert sum(r["llm_calls"] for r in resumed["rounds"]) == total - labelled_before_crash


def current(spark, config, key):
    return publishing.read_current(spark, storage.resolve_tables(config), key)


def test_the_summary_lists_the_taxonomys_personas_no_label_seeds(spark, small_config, first_run):
    from persona_lib.labelling import label_distribution
    from persona_lib.taxonomy import load_taxonomy

    seeded = label_distribution(spark, storage.resolve_tables(small_config), small_config.forget)
    taxonomy = load_taxonomy(small_config.resolve_path(small_config.labelling.taxonomy))
    assert first_run["personas_without_seed"] == [name for name in taxonomy.names if name not in seeded]
    assert len(first_run["personas_without_seed"]) < len(taxonomy.names)


def test_run_publishes_every_table_with_its_contract(spark, small_config, first_run):
    for key, schema in (("persona_affinity", contracts.PERSONA_AFFINITY),
                        ("customer_personas", contracts.CUSTOMER_PERSONAS),
                        ("product_personas", contracts.PRODUCT_PERSONAS)):
        table = current(spark, small_config, key)
        assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == \
            [(f.name, f.dataType.simpleString()) for f in schema.fields]
        assert table.count() > 0
    assert set(first_run["tables"]) >= {"persona_affinity", "customer_personas", "product_personas",
                                        "persona_labels"}
    assert first_run["customers"] == current(spark, small_config, "customer_personas").count()
    assert first_run["labelled"] > 0 and first_run["propagated"] > 0


def test_probabilities_are_calibrated_multi_label_and_ranks_follow_them(spark, small_config, first_run):
    affinity = current(spark, small_config, "persona_affinity")
    per_customer = affinity.groupBy("customer_id", "source").agg(
        F.count(F.lit(1)).alias("n"), F.min("rank").alias("low"), F.max("rank").alias("high"),
        F.min("probability").alias("p_min"), F.max("probability").alias("p_max"))
    broken = per_customer.where((F.col("low") != 1) | (F.col("high") != F.col("n"))
                                | (F.col("p_min") < 0) | (F.col("p_max") > 1))
    assert broken.count() == 0
    # Propagated ranks order the probabilities; labelled personas are known (probability 1).
    best_first = Window.partitionBy("customer_id").orderBy("rank")
    propagated = affinity.where("source = 'propagated'").withColumn("_next", F.lead("probability").over(best_first))
    assert propagated.where(F.col("_next") > F.col("probability")).count() == 0
    assert affinity.where("source != 'propagated' and probability != 1.0").count() == 0


def test_labelled_customers_keep_their_llm_labels(spark, small_config, first_run):
    labels = storage.resolve_tables(small_config).persona_labels.read(spark).where("status in ('ok', 'repaired')")
    published = current(spark, small_config, "customer_personas").where("source = 'llm'")
    mismatched = labels.select("customer_id", "personas").exceptAll(published.select("customer_id", "personas"))
    assert published.count() == labels.count() and mismatched.count() == 0


def test_thin_evidence_is_ambiguous_and_customers_with_evidence_get_personas(spark, small_config, first_run):
    summary = current(spark, small_config, "customer_personas").where("source = 'propagated'")
    products = storage.resolve_tables(small_config).purchase_events.read(spark) \
        .groupBy("customer_id").agg(F.countDistinct("product_id").alias("products"))
    rows = summary.join(products, "customer_id", "left")
    thin = (F.col("why.labelled_neighbours") == 0) | (F.coalesce("products", F.lit(0)) < small_config.model.min_products)
    assert rows.where(thin & ~F.col("is_ambiguous")).count() == 0
    assert rows.where((F.col("why.labelled_neighbours") > 0) & (F.size("personas") == 0)).count() == 0
    assert first_run["ambiguous_share"] < 1


def test_mlflow_run_records_params_metrics_inputs_outputs_and_model(spark, small_config, first_run):
    tracking.configure(small_config)
    client = MlflowClient()
    run = client.get_run(first_run["run_id"])
    assert {"budget", "rounds", "epsilon", "lhat", "beta", "top_k", "labeller", "model", "seed",
            "taxonomy_version", "prompt_version"} <= set(run.data.params)
    assert {"coverage", "ambiguous_share", "supersteps", "max_residual", "cache_hit_rate"} <= set(run.data.metrics)
    assert any(d.dataset.name.startswith("purchase_events@v") for d in run.inputs.dataset_inputs)
    assert run.data.tags["output.customer_personas.version"] == str(first_run["tables"]["customer_personas"]["version"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | \
        {a.path for folder in ("charts", "samples") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"charts/persona_distribution.png", "charts/convergence.png", "samples/why_records.json"} <= artifacts
    assert "persona_model/persona_model.json" in {a.path for a in client.list_artifacts(run.info.run_id, "persona_model")}
    assert {"model_oof_f1", "model_oof_prevalence_gap"} <= set(run.data.metrics)
    alias = client.get_model_version_by_alias(small_config.tracking.registered_model, "current")
    assert alias.version is not None


def test_query_answers_known_and_new_customers_in_the_product_page_shape(spark, small_config, first_run):
    customer = current(spark, small_config, "customer_personas").where("source = 'propagated' AND size(personas) > 0") \
        .orderBy("customer_id").first()["customer_id"]
    rows = predict({"from": "customer_purchases", "where": {"customer_id": customer}, "predict": "persona",
                    "select": ["$p", "$why", "persona"], "limit": 3}, spark, small_config)
    assert len(rows) == 3 and all(set(r) == {"$p", "$why", "persona"} for r in rows)
    assert [r["$p"] for r in rows] == sorted((r["$p"] for r in rows), reverse=True)
    product = current(spark, small_config, "product_personas").orderBy("product_id").first()["product_id"]
    cold = predict({"where": {"customer_id": "no-such-customer", "products": [product]}, "limit": 2},
                   spark, small_config)
    assert 1 <= len(cold) <= 2 and cold[0]["$p"] > 0


@pytest.fixture(scope="module")
def overridden_second_run(spark, small_config, first_run):
    """An override on a propagated customer, then the same run again (one run proves both)."""
    customer = current(spark, small_config, "customer_personas").where("source = 'propagated'") \
        .orderBy("customer_id").first()["customer_id"]
    add_overrides(spark, small_config, [{"customer_id": customer, "personas": ["Gardening Lover"],
                                         "author": "tests", "reason": "known gardener"}])
    return customer, run_pipeline(spark, small_config)


def test_second_run_pays_for_no_label(first_run, overridden_second_run):
    _, second = overridden_second_run
    assert sum(r["llm_calls"] for r in second["rounds"]) == 0
    assert second["llm_labelled"] == first_run["llm_labelled"]
    assert second["overridden"] == first_run["overridden"] + 1


def test_an_override_wins_and_becomes_a_label(spark, small_config, overridden_second_run):
    from persona_lib.labelling import labels_for_propagation

    customer, _ = overridden_second_run
    row = current(spark, small_config, "customer_personas").where(F.col("customer_id") == customer).first()
    assert (row["source"], row["personas"]) == ("override", ["Gardening Lover"])
    seeds = labels_for_propagation(spark, storage.resolve_tables(small_config), small_config.forget) \
        .where(F.col("customer_id") == customer)
    assert [r["persona"] for r in seeds.collect()] == ["Gardening Lover"]


def test_forget_removes_every_trace_and_nothing_brings_it_back(spark, small_config, overridden_second_run):
    customer = storage.resolve_tables(small_config).persona_labels.read(spark).where("status = 'ok'") \
        .orderBy("customer_id").first()["customer_id"]
    result = forget_customers(spark, small_config, [customer])
    assert result["removed"]["purchase_events"] > 0 and result["removed"]["persona_labels"] == 1

    for key in ("purchase_events", "quarantine", "persona_labels", "persona_overrides", "recorded_answers",
                "customer_affinity", "persona_affinity", "customer_personas"):
        ref = storage.resolve_tables(small_config).get(key)
        if ref.exists(spark):
            column = F.regexp_replace("customer_id", r"\.0$", "")
            assert ref.read(spark).where(column == customer).count() == 0, key
    assert current(spark, small_config, "customer_personas").where(F.col("customer_id") == customer).count() == 0
    assert not _parquet_files_containing(Path(small_config.workdir_path) / "tables", customer)

    again = ingest(spark, small_config)
    # The landing files' contents are already ingested: skipped, so the customer cannot come
    # back (tests/test_ingest.py proves tombstones hold for new content).
    assert again["files_skipped"] == again["files"]
    asked = spark.createDataFrame([(customer,)], "customer_id string")
    tables = storage.resolve_tables(small_config)
    events = tables.purchase_events.read(spark)
    label_customers(spark, small_config, tables, asked, events, run_id="after-forget")
    for key in ("purchase_events", "persona_labels"):
        assert tables.get(key).read(spark).where(F.col("customer_id") == customer).count() == 0


def _parquet_files_containing(root: Path, customer: str) -> list[str]:
    hits = []
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            if str(column.type) == "string" and any(
                    v in (customer, f"{customer}.0") for v in column.to_pylist()):
                hits.append(f"{path}:{name}")
    return hits
