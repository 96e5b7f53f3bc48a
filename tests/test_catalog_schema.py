"""--catalog/--schema: one bundle target per Unity Catalog schema, from one config file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib.config import REPO_ROOT, TablesConfig, load_config, with_catalog_schema
from persona_lib.errors import ConfigError

DATABRICKS_CONF = REPO_ROOT / "conf" / "databricks.yaml"
PERSONAS = Path(sys.executable).with_name("personas")


def test_every_table_moves_to_the_schema_keeping_its_table_name():
    original = load_config(DATABRICKS_CONF)
    moved = load_config(DATABRICKS_CONF, catalog="dev", schema="personas_ana")
    for table in dataclasses.fields(TablesConfig):
        before = getattr(original.tables, table.name)
        assert getattr(moved.tables, table.name) == "dev.personas_ana." + before.split(".")[-1]


def test_volume_paths_move_to_the_schemas_volumes():
    moved = load_config(DATABRICKS_CONF, catalog="dev", schema="personas_ana")
    assert moved.workdir == "/Volumes/dev/personas_ana/work"
    assert moved.labelling.replay_answers == "/Volumes/dev/personas_ana/files/data/gplr_online_retail/user_labels.csv.gz"
    assert moved.evaluation.data_dir == "/Volumes/dev/personas_ana/files/data/gplr_online_retail"
    assert moved.ingest.landing == "/Volumes/dev/personas_ana/landing/online_retail"
    assert moved.labelling.vllm.model_path == "/Volumes/dev/personas_ana/models/Qwen2.5-7B-Instruct"


def test_path_tables_of_a_local_config_become_catalog_tables_named_after_their_path():
    moved = load_config(REPO_ROOT / "conf" / "local.yaml", catalog="main", schema="scratch")
    assert moved.tables.purchase_events == "main.scratch.purchase_events"
    assert moved.tables.paper_purchase_events == "main.scratch.paper_purchase_events"
    assert moved.tables.synth_truth == "main.scratch.synth_customer_truth"
    names = [getattr(moved.tables, t.name) for t in dataclasses.fields(TablesConfig)]
    assert len(set(names)) == len(names)
    # Not a volume path, not a three-level model name: left alone.
    assert moved.tracking.registered_model == "personas_cold_start"


def test_two_level_names_and_absolute_paths_keep_their_table_name():
    config = load_config(DATABRICKS_CONF)
    config = config.replace("tables", products="sales.products", quarantine="s3://bucket/tables/quarantine/")
    moved = with_catalog_schema(config, "dev", "x")
    assert (moved.tables.products, moved.tables.quarantine) == ("dev.x.products", "dev.x.quarantine")


def test_two_tables_landing_on_one_name_is_a_config_error():
    config = load_config(DATABRICKS_CONF).replace("tables", products="/mnt/a/purchase_events")
    with pytest.raises(ConfigError, match="tables.products and tables.purchase_events"):
        with_catalog_schema(config, "dev", "x")


@pytest.mark.parametrize("catalog,schema", [("dev", None), (None, "x"), ("dev", "bad-name"), ("a.b", "c")])
def test_a_half_or_malformed_override_is_a_config_error(catalog, schema):
    with pytest.raises(ConfigError, match="catalog|schema"):
        with_catalog_schema(load_config(DATABRICKS_CONF), catalog, schema)


@pytest.mark.parametrize("args", [["--catalog", "dev"], ["--schema", "x"], ["--catalog", "dev", "--schema", "a-b"]])
def test_the_cli_rejects_a_half_or_malformed_override_before_spark_starts(args):
    result = subprocess.run([str(PERSONAS), "ingest", "--conf", str(DATABRICKS_CONF), *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--catalog" in result.stderr or "--schema" in result.stderr
