"""Configuration: typed, validated by key, tables resolve to paths or catalog names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from persona_lib.config import PATH_KEYS, REPO_ROOT, AppConfig, config_value, load_config, validate_for_labelling
from persona_lib.errors import ConfigError
from persona_lib.jars import required_jars
from persona_lib.storage import resolve_tables
from persona_lib.testing import TEST_CONF


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "c.yaml", "propagation:\n  epsilonn: 0.1\n")
    with pytest.raises(ConfigError, match="epsilonn"):
        load_config(path)


def test_edge_weighting_is_a_graph_setting_and_the_old_propagation_key_is_unknown(tmp_path):
    config = load_config(write(tmp_path, "g.yaml", "graph:\n  edge_weighting: recency\n  half_life_days: 30\n"))
    assert (config.graph.edge_weighting, config.graph.half_life_days) == ("recency", 30.0)
    with pytest.raises(ConfigError, match="edge_weighting"):
        load_config(write(tmp_path, "p.yaml", "propagation:\n  edge_weighting: recency\n"))


def test_an_unknown_edge_weighting_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"graph\.edge_weighting.*'hourly'"):
        load_config(write(tmp_path, "g.yaml", "graph:\n  edge_weighting: hourly\n"))


def test_a_neighbour_sketch_precision_outside_hyperloglog_range_is_an_error_naming_the_key(tmp_path):
    assert load_config(write(tmp_path, "ok.yaml", "publishing:\n  neighbour_sketch_lg_k: 8\n")) \
        .publishing.neighbour_sketch_lg_k == 8
    with pytest.raises(ConfigError, match=r"publishing\.neighbour_sketch_lg_k.*4\.\.21.*got 3"):
        load_config(write(tmp_path, "low.yaml", "publishing:\n  neighbour_sketch_lg_k: 3\n"))


def test_wrong_type_is_an_error_naming_the_field(tmp_path):
    path = write(tmp_path, "c.yaml", "sampling:\n  rounds: two\n")
    with pytest.raises(ConfigError, match="rounds"):
        load_config(path)


def test_a_config_overrides_its_base(tmp_path):
    write(tmp_path, "base.yaml", "sampling:\n  rounds: 3\n  seed: 1\n")
    path = write(tmp_path, "c.yaml", "base: base.yaml\nsampling:\n  seed: 9\n")
    config = load_config(path)
    assert (config.sampling.rounds, config.sampling.seed) == (3, 9)


def test_workdir_option_overrides_the_config(tmp_path):
    config = load_config(None, workdir=str(tmp_path / "w"))
    assert config.workdir_path == tmp_path / "w"


@pytest.mark.parametrize("name, location, is_catalog", [
    ("purchase_events", "{workdir}/tables/purchase_events", False),
    ("paper/purchase_events", "{workdir}/tables/paper/purchase_events", False),
    ("/data/events", "/data/events", False),
    ("s3://bucket/events", "s3://bucket/events", False),
    ("main.personas.purchase_events", "main.personas.purchase_events", True),
])
def test_table_names_resolve_to_paths_or_catalog_tables(tmp_path, name, location, is_catalog):
    config = load_config(None, workdir=str(tmp_path)).replace("tables", purchase_events=name)
    ref = resolve_tables(config).purchase_events
    assert (ref.location, ref.is_catalog) == (location.format(workdir=tmp_path), is_catalog)


@pytest.mark.parametrize("budget", [0, 0.05, 1, 300])
def test_a_budget_of_zero_a_fraction_or_a_whole_count_is_valid(budget):
    validate_for_labelling(load_config().replace("sampling", budget=budget))


@pytest.mark.parametrize("budget, message", [(-1, "must be 0"), (2.5, "must be whole")])
def test_a_negative_or_fractional_count_budget_is_a_config_error_naming_the_key(budget, message):
    with pytest.raises(ConfigError, match=f"sampling.budget.*{message}"):
        validate_for_labelling(load_config().replace("sampling", budget=budget))


SOURCE = """ingest:
  source:
    format: delta
    path: /data/orders
    columns: {customer_id: cust_no, product_id: sku, quantity: qty, event_ts: sold_at,
              unit_price: null, basket_id: order_no, title: null, country: null}
  products:
    format: csv
    path: /data/catalogue.csv
    columns: {product_id: sku, title: [kind, brand], group: category}
"""


def test_the_issue_source_yaml_loads_typed(tmp_path):
    config = load_config(write(tmp_path, "s.yaml", SOURCE))
    source, catalogue = config.ingest.source, config.ingest.products
    assert (source.format, source.path, source.columns.customer_id, source.columns.unit_price) == \
        ("delta", "/data/orders", "cust_no", None)
    assert (catalogue.columns.title, catalogue.columns.group) == (("kind", "brand"), "category")


def test_an_unknown_source_or_column_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sku'\]"):
        load_config(write(tmp_path, "c.yaml", SOURCE.replace("product_id: sku, quantity", "sku: sku, quantity")))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['paths'\]"):
        load_config(write(tmp_path, "p.yaml", SOURCE.replace("path: /data/orders", "paths: /data/orders")))


def test_an_unknown_format_a_missing_location_or_an_unmapped_required_column_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.source\.format: 'xlsx'"):
        load_config(write(tmp_path, "f.yaml", SOURCE.replace("format: delta", "format: xlsx")))
    with pytest.raises(ConfigError, match=r"ingest\.source\.table is required by format 'table'"):
        load_config(write(tmp_path, "t.yaml", SOURCE.replace("format: delta", "format: table")))
    with pytest.raises(ConfigError, match=r"ingest\.source\.columns: quantity, event_ts must name a source column"):
        load_config(write(tmp_path, "m.yaml", SOURCE.replace("quantity: qty, event_ts: sold_at",
                                                             "quantity: null, event_ts: null")))
    with pytest.raises(ConfigError, match=r"ingest\.products\.format: 'json'"):
        load_config(write(tmp_path, "j.yaml", SOURCE.replace("format: csv", "format: json")))


def test_the_bundled_configs_read_the_landing_files_and_a_bare_landing_key_still_does(tmp_path):
    assert load_config().ingest.source.format == "uci_landing"
    legacy = load_config(write(tmp_path, "l.yaml", "ingest:\n  landing: /data/landing\n"))
    assert (legacy.ingest.source.format, legacy.ingest.landing) == ("uci_landing", "/data/landing")
    # Without either, there is no source: personas run will not ingest anything on its own.
    assert load_config(write(tmp_path, "n.yaml", "sampling:\n  rounds: 2\n")).ingest.source.format == ""


# -- paths: a relative path in a config file resolves against that file's folder -------------

SHIPPED_TAXONOMY = REPO_ROOT / "conf" / "personas" / "online_retail.yaml"


def test_relative_paths_in_a_config_resolve_against_its_folder_whatever_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "conf"
    (folder / "personas").mkdir(parents=True)
    shutil.copy(SHIPPED_TAXONOMY, folder / "personas" / "shop.yaml")
    path = write(folder, "shop.yaml", "labelling:\n  taxonomy: personas/shop.yaml\n"
                                      "  replay_answers: ../data/answers.csv.gz\n"
                                      "ingest:\n  source:\n    format: csv\n    path: orders.csv\n"
                                      "    columns: {customer_id: c, product_id: p, quantity: q, event_ts: t}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.labelling.taxonomy == str(folder / "personas" / "shop.yaml")
    assert config.labelling.replay_answers == str(tmp_path / "project" / "data" / "answers.csv.gz")
    assert config.ingest.source.path == str(folder / "orders.csv")
    assert config.resolve_path(config.labelling.taxonomy) == folder / "personas" / "shop.yaml"
    validate_for_labelling(config)  # finds the taxonomy beside the config, not in the cwd


def test_each_file_of_a_base_chain_resolves_the_paths_it_writes_against_its_own_folder(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "team").mkdir()
    write(tmp_path / "base", "base.yaml", "workdir: state\nlabelling:\n  taxonomy: t.yaml\n  replay_answers: a.csv\n")
    path = write(tmp_path / "team", "mine.yaml", "base: ../base/base.yaml\nlabelling:\n  replay_answers: mine.csv\n")

    config = load_config(path)

    assert config.workdir_path == tmp_path / "base" / "state"
    assert config.labelling.taxonomy == str(tmp_path / "base" / "t.yaml")
    assert config.labelling.replay_answers == str(tmp_path / "team" / "mine.csv")


def test_defaults_no_config_file_sets_resolve_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, "c.yaml", "sampling:\n  rounds: 2\n"))
    assert config.workdir_path == REPO_ROOT / "work"
    assert config.resolve_path(config.spark.jars_dir) == REPO_ROOT / ".jars"
    assert config.resolve_path(config.labelling.taxonomy) == SHIPPED_TAXONOMY
    assert config.resolve_path(config.labelling.replay_proposal).is_file()
    assert config.resolve_path(config.evaluation.data_dir) == REPO_ROOT / "data" / "gplr_online_retail"


def test_the_bundled_configs_name_the_bundled_files_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(TEST_CONF)
    assert Path(config.labelling.taxonomy) == SHIPPED_TAXONOMY
    for key in ("ingest.landing", "labelling.replay_answers", "labelling.products.replay_answers"):
        assert config.resolve_path(config_value(config, key)).exists(), key
    assert config.workdir_path == REPO_ROOT / "work"


def test_the_jars_lookup_is_unaffected_by_where_the_config_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = write(tmp_path, "c.yaml", f"base: {TEST_CONF}\nlabelling:\n  taxonomy: t.yaml\n")
    config = load_config(conf)
    jars = required_jars(config.resolve_path(config.spark.jars_dir))
    assert jars and all(jar.parent == REPO_ROOT / ".jars" for jar in jars)


def test_uris_absolute_and_home_paths_are_kept(tmp_path):
    config = load_config(write(tmp_path, "c.yaml", "workdir: ~/personas-work\n"
                                                   "labelling:\n  taxonomy: /etc/personas/t.yaml\n"
                                                   "  replay_answers: s3://bucket/answers.csv\n"
                                                   "evaluation:\n  data_dir: dbfs:/data/gplr\n"))
    assert config.workdir == str(Path.home() / "personas-work")
    assert (config.labelling.taxonomy, config.labelling.replay_answers, config.evaluation.data_dir) == \
        ("/etc/personas/t.yaml", "s3://bucket/answers.csv", "dbfs:/data/gplr")


def test_the_workdir_option_resolves_against_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    conf = write(tmp_path / "conf", "c.yaml", "workdir: from-conf\n")
    assert load_config(conf).workdir_path == tmp_path / "conf" / "from-conf"
    monkeypatch.chdir(tmp_path)
    assert load_config(conf, workdir="w").workdir_path == tmp_path / "w"


def test_a_missing_taxonomy_names_the_key_and_the_resolved_path(tmp_path):
    config = load_config(write(tmp_path, "c.yaml", "labelling:\n  taxonomy: personas/nosuch.yaml\n"))
    with pytest.raises(ConfigError, match=re.escape(f"labelling.taxonomy: {tmp_path / 'personas' / 'nosuch.yaml'} "
                                                    "not found")):
        validate_for_labelling(config)


def test_base_dir_is_no_longer_a_key_and_says_why(tmp_path):
    with pytest.raises(ConfigError, match="base_dir.*resolves against that file's folder"):
        load_config(write(tmp_path, "c.yaml", "base_dir: /data\n"))


def test_every_path_key_names_a_text_setting():
    for key in PATH_KEYS:
        assert isinstance(config_value(AppConfig(), key), (str, type(None))), key


def test_a_missing_evaluation_folder_names_the_key_and_the_resolved_path(tmp_path):
    from persona_lib.evaluation.data import data_dir

    config = load_config(write(tmp_path, "c.yaml", "evaluation:\n  data_dir: ../gplr\n"))
    with pytest.raises(ConfigError, match=re.escape(f"evaluation.data_dir: {tmp_path.parent / 'gplr'} not found")):
        data_dir(config)
    assert data_dir(load_config(TEST_CONF)) == REPO_ROOT / "data" / "gplr_online_retail"


def test_jobs_run_the_default_jit_and_the_tests_the_fast_start_flags():
    assert load_config(REPO_ROOT / "conf" / "local.yaml").spark.fast_jvm is False
    assert load_config(TEST_CONF).spark.fast_jvm is True
