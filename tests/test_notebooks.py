"""The notebooks of notebooks/ executed with nbclient against the local Spark, as CI runs
them: a cell that raises fails the test. Each notebook runs in its own kernel (its own
Spark application) with a tmp work dir, on a small slice of the bundled data. They are stored
in Databricks source format; the runner's converter is tested here on small texts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from persona_lib.config import REPO_ROOT
from persona_lib.notebook import parse_widget

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TEST_CONF = str(REPO_ROOT / "conf" / "test.yaml")


def load_runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO_ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def outputs_text(notebook) -> str:
    """Everything the executed cells printed or displayed, as one string."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k == "text/plain")
    return "\n".join(parts)


def images(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory) -> Path:
    """The quickstart's work dir; the explorer builds its second run on the quickstart's first."""
    return tmp_path_factory.mktemp("notebooks") / "work"


def test_every_notebook_is_a_databricks_source_file_whose_parameters_are_widgets():
    stored = sorted(p.name for p in NOTEBOOK_DIR.iterdir() if p.suffix in (".py", ".ipynb"))
    assert stored == sorted(runner.NOTEBOOKS)
    for name in runner.NOTEBOOKS:
        text = (NOTEBOOK_DIR / name).read_text()
        assert text.startswith("# Databricks notebook source\n"), name
        notebook = runner.read_notebook(NOTEBOOK_DIR / name)
        parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(parameters) == 1, f"{name} needs exactly one cell starting with '# Parameters'"
        assert 'WORKDIR = widget("WORKDIR"' in parameters[0].source, name
        assert 'CONF = widget("CONF"' in parameters[0].source, name


def test_the_converter_reads_markdown_parameters_and_code_cells():
    text = ("# Databricks notebook source\n# MAGIC %md\n# MAGIC # Title\n# MAGIC\n# MAGIC Some text.\n\n"
            "# COMMAND ----------\n\n# Parameters\nX = widget(\"X\", 1)\n\n"
            "# COMMAND ----------\n\nprint(X)\n")
    notebook = runner.from_databricks_source(text)
    assert [c.cell_type for c in notebook.cells] == ["markdown", "code", "code"]
    assert notebook.cells[0].source == "# Title\n\nSome text."
    assert notebook.cells[1].metadata["tags"] == ["parameters"]
    assert notebook.cells[2].source == "print(X)"


def test_the_converter_refuses_a_file_without_the_databricks_header():
    with pytest.raises(ValueError, match="Databricks notebook source"):
        runner.from_databricks_source("# %%\nprint(1)\n")


def test_a_widget_text_is_read_back_as_its_default_kind():
    assert parse_widget("DAYS", "8", 30) == 8
    assert parse_widget("RUN", "true", False) is True
    assert parse_widget("BUDGETS", "[0.2]", [0.05]) == [0.2]
    assert parse_widget("CUSTOMER", "null", None) is None
    assert parse_widget("CONF", "conf/x.yaml", "conf/local.yaml") == "conf/x.yaml"
    with pytest.raises(ValueError, match="widget DAYS"):
        parse_widget("DAYS", "eight", 30)


def test_the_runner_rejects_a_parameter_the_notebook_does_not_declare():
    notebook = runner.read_notebook(NOTEBOOK_DIR / "quickstart.py")
    with pytest.raises(ValueError, match="NO_SUCH"):
        runner.with_parameters(notebook, {"NO_SUCH": 1})


def test_the_runner_injects_parameters_after_the_parameters_cell():
    notebook = runner.with_parameters(runner.read_notebook(NOTEBOOK_DIR / "quickstart.py"), {"DAYS": 3})
    tagged = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    assert notebook.cells[tagged + 1].source.endswith("DAYS = 3\n")


def test_quickstart_runs_the_pipeline_and_reads_the_tables_with_sql(shared_workdir):
    notebook = runner.run_notebook(NOTEBOOK_DIR / "quickstart.py",
                                   {"WORKDIR": str(shared_workdir), "CONF": TEST_CONF, "RUN_PIPELINE": True,
                                    "DAYS": 8, "BUDGET": 0.3})
    text = outputs_text(notebook)
    assert "'run_id'" in text and "customers" in text
    runs = list((shared_workdir / "tables" / "runs" / "_delta_log").glob("*.json"))
    assert runs, "the quickstart published no run"


def runs_table_commits(workdir: Path) -> int:
    return len(list((workdir / "tables" / "runs" / "_delta_log").glob("*.json")))


def test_persona_explorer_left_at_its_defaults_reads_one_run_and_writes_nothing(shared_workdir):
    before = runs_table_commits(shared_workdir)
    notebook = runner.run_notebook(NOTEBOOK_DIR / "persona_explorer.py",
                                   {"WORKDIR": str(shared_workdir), "CONF": TEST_CONF})
    assert "drift needs two complete runs" in outputs_text(notebook)
    assert runs_table_commits(shared_workdir) == before


def test_persona_explorer_shows_distribution_why_and_drift_between_two_runs(shared_workdir):
    notebook = runner.run_notebook(NOTEBOOK_DIR / "persona_explorer.py",
                                   {"WORKDIR": str(shared_workdir), "CONF": TEST_CONF, "MAKE_RUNS": True,
                                    "FIRST_DAYS": 8,
                                    "MORE_DAYS": 4, "BUDGET": 0.3})
    text = outputs_text(notebook)
    assert "customers_in_both" in text and "top_persona_changed" in text
    assert "labelled co-buyers reached" in text
    assert images(notebook) == 2  # the distribution and the share per run


def test_evaluation_notebook_shows_the_authors_figures_and_leaves_the_evaluation_to_ci(spark, tmp_path):
    """The accuracy evaluation itself is CI's `evaluate accuracy --quick` step (.ci/run asserts its
    figures); the notebook, at its defaults, scores the authors' released outputs and charts them."""
    from persona_lib.config import load_config
    from persona_lib.evaluation import accuracy, data

    notebook = runner.run_notebook(NOTEBOOK_DIR / "evaluation.py",
                                   {"WORKDIR": str(tmp_path / "work"), "CONF": TEST_CONF,
                                    "RUN_RECOMMEND": False, "RUN_STABILITY": False})
    text = outputs_text(notebook)
    config = load_config(TEST_CONF, workdir=str(tmp_path / "check"))
    authors_20 = accuracy.authors_accuracy(spark, config, 0.2, data.user_labels(spark, config), "du")
    assert f"{authors_20['f1']:.6f}" in text  # pandas shows 6 decimals
    assert "RUN_ACCURACY is off" in text
    assert images(notebook) >= 1
