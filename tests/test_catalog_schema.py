"""--catalog/--schema: one bundle target per Unity Catalog schema, from one config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib.config import REPO_ROOT, TABLE_KEYS, load_config, with_catalog_schema
from persona_lib.errors import ConfigError
from persona_lib.storage import resolve_tables

DATABRICKS_CONF = REPO_ROOT / "conf" / "databricks.yaml"
PERSONAS = Path(sys.executable).with_name("personas")


# The name each table had as a main.personas.* table when conf/databricks.yaml listed them
# one by one: the catalog and schema form must keep every one of them.
DATABRICKS_TABLES = {
    "purchase_events": "purchase_events", "products": "products", "quarantine": "quarantine",
    "ingest_log": "ingest_log", "paper_purchase_events": "paper_purchase_events",
    "paper_products": "paper_products", "paper_quarantine": "paper_quarantine",
    "paper_ingest_log": "paper_ingest_log", "synth_purchase_events": "synth_purchase_events",
    "synth_products": "synth_products", "synth_truth": "synth_customer_truth",
    "persona_labels": "persona_labels", "product_labels": "product_labels",
    "persona_overrides": "persona_overrides", "recorded_answers": "recorded_answers",
    "customer_affinity": "customer_affinity", "product_affinity": "product_affinity",
    "propagation_runs": "propagation_runs", "persona_affinity": "persona_affinity",
    "customer_personas": "customer_personas", "product_personas": "product_personas",
    "runs": "runs", "tombstones": "tombstones", "evaluation_personas": "evaluation_customer_personas",
}


def test_the_databricks_catalog_and_schema_resolve_every_table_to_its_unity_catalog_name():
    tables = resolve_tables(load_config(DATABRICKS_CONF))
    assert set(TABLE_KEYS) == set(DATABRICKS_TABLES)
    for key, ref in tables.items():
        assert (ref.location, ref.is_catalog) == (f"main.personas.{DATABRICKS_TABLES[key]}", True), key


def test_every_table_moves_to_the_schema_keeping_its_table_name():
    tables = resolve_tables(load_config(DATABRICKS_CONF, catalog="dev", schema="personas_ana"))
    for key, ref in tables.items():
        assert (ref.location, ref.is_catalog) == (f"dev.personas_ana.{DATABRICKS_TABLES[key]}", True), key


def test_without_catalog_and_schema_every_table_is_a_path_under_the_work_dir(tmp_path):
    tables = resolve_tables(load_config(REPO_ROOT / "conf" / "local.yaml", workdir=str(tmp_path)))
    assert tables.synth_truth.location == str(tmp_path / "tables" / "synth" / "customer_truth")
    for key, ref in tables.items():
        assert not ref.is_catalog and ref.location.startswith(str(tmp_path / "tables") + "/"), key


def test_a_table_set_explicitly_keeps_its_place_beside_the_catalog_and_schema():
    config = load_config(DATABRICKS_CONF).replace("tables", products="sales.shop.products",
                                                  quarantine="s3://bucket/tables/quarantine")
    tables = resolve_tables(config)
    assert (tables.products.location, tables.products.is_catalog) == ("sales.shop.products", True)
    assert (tables.quarantine.location, tables.quarantine.is_catalog) == ("s3://bucket/tables/quarantine", False)
    assert tables.purchase_events.location == "main.personas.purchase_events"


def test_volume_paths_move_to_the_schemas_volumes():
    moved = load_config(DATABRICKS_CONF, catalog="dev", schema="personas_ana")
    assert moved.workdir == "/Volumes/dev/personas_ana/work"
    assert moved.labelling.replay_answers == "/Volumes/dev/personas_ana/files/data/gplr_online_retail/user_labels.csv.gz"
    assert moved.evaluation.data_dir == "/Volumes/dev/personas_ana/files/data/gplr_online_retail"
    assert moved.ingest.landing == "/Volumes/dev/personas_ana/landing/online_retail"
    assert moved.labelling.vllm.model_path == "/Volumes/dev/personas_ana/models/Qwen2.5-7B-Instruct"


def test_path_tables_of_a_local_config_become_catalog_tables_named_after_their_path():
    moved = load_config(REPO_ROOT / "conf" / "local.yaml", catalog="main", schema="scratch")
    tables = resolve_tables(moved)
    assert tables.purchase_events.location == "main.scratch.purchase_events"
    assert tables.paper_purchase_events.location == "main.scratch.paper_purchase_events"
    assert tables.synth_truth.location == "main.scratch.synth_customer_truth"
    names = [ref.location for _, ref in tables.items()]
    assert len(set(names)) == len(names)
    # Not a volume path, not a three-level model name: left alone.
    assert moved.tracking.registered_model == "personas_cold_start"


def test_the_override_moves_explicitly_placed_tables_too_keeping_their_table_name():
    config = load_config(DATABRICKS_CONF)
    config = config.replace("tables", products="sales.products", quarantine="s3://bucket/tables/quarantine/")
    tables = resolve_tables(with_catalog_schema(config, "dev", "x"))
    assert (tables.products.location, tables.quarantine.location) == ("dev.x.products", "dev.x.quarantine")


def test_two_tables_landing_on_one_name_is_a_config_error():
    config = load_config(DATABRICKS_CONF).replace("tables", products="/mnt/a/purchase_events")
    with pytest.raises(ConfigError, match="tables.products and tables.purchase_events"):
        with_catalog_schema(config, "dev", "x")


def test_a_path_table_that_is_no_catalog_name_is_a_config_error_when_moved_to_a_schema():
    config = load_config(REPO_ROOT / "conf" / "local.yaml").replace("tables", products="shop-products")
    with pytest.raises(ConfigError, match="tables.products: 'shop-products'"):
        with_catalog_schema(config, "dev", "x")


@pytest.mark.parametrize("tables, message", [
    ("  catalog: main\n", "tables.catalog and tables.schema go together"),
    ("  catalog: main\n  schema: bad-name\n", "tables.schema: 'bad-name'"),
    ("  catalog: main\n  schema: p\n  products: shop-products\n", "tables.products: 'shop-products'"),
    ("  catalog: main\n  schema: p\n  products: purchase_events\n",
     "tables.products and tables.purchase_events would both be main.p.purchase_events"),
])
def test_a_bad_catalog_and_schema_in_a_config_file_is_a_config_error_naming_the_key(tmp_path, tables, message):
    conf = tmp_path / "conf.yaml"
    conf.write_text("tables:\n" + tables)
    with pytest.raises(ConfigError, match=message):
        load_config(conf)


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
