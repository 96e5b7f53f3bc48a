"""The installed ``personas`` command as a scheduler sees it: --help on every subcommand and
the documented exit codes (0 success, 2 usage, 3 bad input or config, 4 a missing
dependency, 1 anything else). Every case runs ``.venv/bin/personas`` as a subprocess and
none of them starts Spark."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from persona_lib import cli
from persona_lib.cli import bench
from persona_lib.config import REPO_ROOT

PERSONAS = Path(sys.executable).with_name("personas")


def personas(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(PERSONAS), *args], cwd=str(cwd), capture_output=True, text=True, timeout=120)


def write_conf(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_subcommand_prints_its_help():
    registered, missing = [], []
    for name in cli.SUBCOMMANDS:
        result = personas(name, "--help")
        if result.returncode == 2 and "invalid choice" in result.stderr:
            missing.append(name)
            continue
        assert result.returncode == 0, f"personas {name} --help: {result.stderr}"
        assert f"usage: personas {name}" in result.stdout
        registered.append(name)
    assert not missing, f"subcommands not implemented yet: {missing}"
    assert registered == list(cli.SUBCOMMANDS)


def test_the_top_level_help_lists_the_subcommands():
    result = personas("--help")
    assert result.returncode == 0
    for name in cli.SUBCOMMANDS:
        assert name in result.stdout


def test_an_unknown_subcommand_is_a_usage_error():
    result = personas("nosuch")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_a_malformed_option_value_is_a_usage_error():
    result = personas("run", "--rounds", "two")
    assert result.returncode == 2
    assert "--rounds" in result.stderr


def test_an_unknown_config_key_exits_3_naming_the_key(tmp_path):
    conf = write_conf(tmp_path / "bad.yaml", {"sampling": {"budgett": 0.2}})
    result = personas("ingest", "--conf", str(conf), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 3
    assert "budgett" in result.stderr


def test_a_missing_config_file_exits_3(tmp_path):
    result = personas("run", "--conf", str(tmp_path / "absent.yaml"))
    assert result.returncode == 3
    assert "config file not found" in result.stderr


def test_missing_spark_jars_exit_4_with_the_setup_hint(tmp_path):
    empty = tmp_path / "no-jars"
    empty.mkdir()
    conf = write_conf(tmp_path / "conf.yaml", {"base": str(REPO_ROOT / "conf" / "test.yaml"),
                                              "spark": {"jars_dir": str(empty)}})
    result = personas("ingest", "--conf", str(conf), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 4
    assert "scripts/setup.sh" in result.stderr


def test_bench_without_a_name_lists_the_benchmarks_as_json():
    result = personas("bench")
    assert result.returncode == 0
    listed = json.loads(result.stdout.strip().splitlines()[-1])["benchmarks"]
    assert listed == sorted(p.stem for p in (REPO_ROOT / "bench").glob("*.py"))


def test_an_unknown_benchmark_is_a_usage_error():
    result = personas("bench", "nosuch")
    assert result.returncode == 2
    assert "available:" in result.stderr


def test_bench_passes_arguments_through_and_returns_the_benchmarks_exit_code():
    # persona_accuracy rejects a budget above 1 as a usage error before it starts Spark.
    result = personas("bench", "persona_accuracy", "--budget", "7")
    assert result.returncode == 2
    assert "--budget is a fraction" in result.stderr


def test_bench_from_an_install_without_bench_folder_exits_4(tmp_path, monkeypatch, capsys):
    # What a wheel install looks like: the package without the repository's bench/ folder.
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "bench")
    assert cli.main(["bench", "propagation"]) == 4
    assert "ship with the source" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["accuracy", "recommend", "stability"])
def test_evaluate_tasks_print_their_help(task):
    result = personas("evaluate", task, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: personas evaluate {task}" in result.stdout


def test_version_prints_the_package_version():
    from persona_lib import __version__

    result = personas("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"personas {__version__}"


def test_a_query_without_customer_or_products_is_a_usage_error_before_spark_starts():
    result = personas("query", "--workdir", "/nonexistent/never-created")
    assert result.returncode == 2, result.stderr
    assert "--customer" in result.stderr


def test_query_rejects_an_unknown_format_as_a_usage_error():
    result = personas("query", "--customer", "1", "--format", "csv")
    assert result.returncode == 2
    assert "--format" in result.stderr


def test_a_missing_taxonomy_exits_3_naming_the_key_and_the_path_beside_the_config(tmp_path):
    """Relative to the config file, whatever the current directory; before Spark starts."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    conf = write_conf(tmp_path / "conf" / "shop.yaml", {"base": str(REPO_ROOT / "conf" / "test.yaml"),
                                                       "labelling": {"taxonomy": "personas/nosuch.yaml"}})
    result = personas("label", "--conf", str(conf), "--workdir", str(tmp_path / "work"),
                      cwd=tmp_path / "elsewhere")
    assert result.returncode == 3, result.stderr
    assert f"labelling.taxonomy: {tmp_path / 'conf' / 'personas' / 'nosuch.yaml'} not found" in result.stderr
    assert not (tmp_path / "work" / "tables").exists()


def test_a_relative_jars_dir_in_a_config_is_looked_up_beside_it(tmp_path):
    (tmp_path / "conf" / "no-jars").mkdir(parents=True)
    conf = write_conf(tmp_path / "conf" / "c.yaml", {"base": str(REPO_ROOT / "conf" / "test.yaml"),
                                                    "spark": {"jars_dir": "no-jars"}})
    result = personas("ingest", "--conf", str(conf), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 4, result.stderr
    assert f"in {tmp_path / 'conf' / 'no-jars'}" in result.stderr


def test_command_line_options_given_replace_their_config_keys_and_absent_ones_keep_them():
    from persona_lib.cli import with_options
    from persona_lib.config import load_config
    from persona_lib.testing import TEST_CONF

    config = load_config(TEST_CONF)
    args = argparse.Namespace(budget=0.1, rounds=None, weighting="recency")
    changed = with_options(config, args, {"budget": ("sampling", "budget"), "rounds": ("sampling", "rounds"),
                                          "weighting": ("graph", "edge_weighting")})
    assert (changed.sampling.budget, changed.sampling.rounds, changed.graph.edge_weighting) == \
        (0.1, config.sampling.rounds, "recency")
    assert config.sampling.budget != 0.1
