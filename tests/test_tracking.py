"""Where MLflow records go and how runs are named, resolved from the config alone: the
Databricks config must land in Unity Catalog's registry without contacting a workspace."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import pytest

from persona_lib import tracking
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.errors import ConfigError
from persona_lib.storage import resolve_tables

DATABRICKS_CONF = REPO_ROOT / "conf" / "databricks.yaml"


def test_the_databricks_config_registers_in_unity_catalog_under_a_three_level_name():
    config = load_config(DATABRICKS_CONF)
    assert tracking.tracking_uri(config) == "databricks"
    assert tracking.registry_uri(config) == "databricks-uc"
    assert tracking.registered_model_name(config) == "main.personas.personas_cold_start"


def test_catalog_and_schema_overrides_move_the_registered_model_with_the_tables():
    config = load_config(DATABRICKS_CONF, catalog="dev", schema="personas_ana")
    assert tracking.registered_model_name(config) == "dev.personas_ana.personas_cold_start"
    assert resolve_tables(config).customer_personas.location == "dev.personas_ana.customer_personas"


def test_a_databricks_profile_keeps_its_profile_in_the_registry_uri():
    config = load_config(DATABRICKS_CONF)
    config = config.replace("tracking", tracking_uri="databricks://staging")
    assert tracking.registry_uri(config) == "databricks-uc://staging"


def test_an_explicit_registry_uri_wins():
    config = load_config(DATABRICKS_CONF).replace("tracking", registry_uri="databricks")
    assert tracking.registry_uri(config) == "databricks"
    # The legacy workspace registry takes plain names.
    assert tracking.registered_model_name(config.replace("tracking", registered_model="m")) == "m"


@pytest.mark.parametrize("name", ["personas_cold_start", "personas.cold_start", "main..cold_start"])
def test_unity_catalog_refuses_a_model_name_that_is_not_three_levels(name):
    config = load_config(DATABRICKS_CONF).replace("tracking", registered_model=name)
    with pytest.raises(ConfigError, match="tracking.registered_model"):
        tracking.registered_model_name(config)


def test_run_names_carry_the_config_name_and_the_date():
    started = datetime(2026, 11, 30, 3, 5)
    assert tracking.run_name(load_config(DATABRICKS_CONF), started_at=started) == "databricks-2026-11-30T0305Z"
    local = load_config(REPO_ROOT / "conf" / "local.yaml")
    assert tracking.run_name(local, "forget", started) == "local-forget-2026-11-30T0305Z"
    named = dataclasses.replace(local, name="nightly")
    assert tracking.run_name(named, started_at=started).startswith("nightly-2026-11-30")


def test_the_git_commit_tag_comes_from_the_bundle_environment_first(monkeypatch):
    monkeypatch.setenv("PERSONAS_GIT_COMMIT", "0123abcd")
    assert tracking.environment_tags()["mlflow.source.git.commit"] == "0123abcd"


def test_the_git_commit_tag_is_the_checkouts_head(monkeypatch):
    import subprocess

    monkeypatch.delenv("PERSONAS_GIT_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tracking.environment_tags()["mlflow.source.git.commit"] == head


def test_a_delta_input_is_logged_at_its_version_with_its_schema_and_exact_row_count(spark, tmp_path):
    import mlflow

    from persona_lib.storage import TableRef

    ref = TableRef("purchase_events", str(tmp_path / "purchase_events"), is_catalog=False)
    rows = spark.createDataFrame([("1", "A"), ("2", "B")], "customer_id string, product_id string")
    rows.write.format("delta").save(ref.location)
    rows.limit(1).write.format("delta").mode("append").save(ref.location)  # version 1, 3 rows
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            tracking.log_delta_input(spark, ref, context="purchase_events")
        logged = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert [(d.dataset.name, d.dataset.digest, d.dataset.source_type, d.tags[0].value) for d in logged] == \
        [("purchase_events@v1", "purchase_events-v1", "delta_table", "purchase_events")]
    assert json.loads(logged[0].dataset.profile) == {"num_rows": 3}
    assert json.loads(logged[0].dataset.source) == {"path": ref.location, "delta_table_version": 1}
    assert [c["name"] for c in json.loads(logged[0].dataset.schema)["mlflow_colspec"]] == ["customer_id", "product_id"]
