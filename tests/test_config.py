"""Configuration: typed, validated by key, tables resolve to paths or catalog names."""

from __future__ import annotations

import pytest

from persona_lib.config import load_config, validate_for_labelling
from persona_lib.errors import ConfigError
from persona_lib.storage import resolve_table


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
    config = load_config(None, workdir=str(tmp_path))
    ref = resolve_table(config, "purchase_events", name)
    assert (ref.location, ref.is_catalog) == (location.format(workdir=tmp_path), is_catalog)


@pytest.mark.parametrize("budget", [0, 0.05, 1, 300])
def test_a_budget_of_zero_a_fraction_or_a_whole_count_is_valid(budget):
    validate_for_labelling(load_config().replace("sampling", budget=budget))


@pytest.mark.parametrize("budget, message", [(-1, "must be 0"), (2.5, "must be whole")])
def test_a_negative_or_fractional_count_budget_is_a_config_error_naming_the_key(budget, message):
    with pytest.raises(ConfigError, match=f"sampling.budget.*{message}"):
        validate_for_labelling(load_config().replace("sampling", budget=budget))
