"""Every ```sql block of docs/sql.md runs as written against a small published run (with an
override): `register_views` names the tables and views, and the `:name` markers are bound by
`spark.sql(recipe, args=...)`, as the doc tells users to."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib import publishing
from persona_lib.config import REPO_ROOT
from persona_lib.query import rerank_sql
from persona_lib.testing import TEST_CONF
from tests.cli_runner import run_personas
from tests.console import assert_quiet

SQL_DOC = REPO_ROOT / "docs" / "sql.md"
BLOCK = re.compile(r"```sql\n(.*?)```", re.S)
PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)\b")


def sql_blocks() -> list[str]:
    return [block.strip() for block in BLOCK.findall(SQL_DOC.read_text())]


def section_of(sql: str) -> str:
    text = SQL_DOC.read_text()
    return re.findall(r"^## (.+)$", text[:text.index(sql)], re.M)[-1]


@pytest.fixture(scope="module")
def published(spark, published_site):
    config, summary, customer_id = published_site.config, published_site.summary, published_site.overridden_customer
    publishing.register_views(spark, config)
    spark.sql("""
        CREATE OR REPLACE TEMP VIEW candidates AS
        SELECT a.customer_id, p.product_id, CAST(row_number() OVER (PARTITION BY a.customer_id ORDER BY p.product_id)
               AS DOUBLE) AS base_score
        FROM (SELECT DISTINCT customer_id FROM current_persona_affinity ORDER BY customer_id LIMIT 5) a
        CROSS JOIN (SELECT DISTINCT product_id FROM current_product_personas ORDER BY product_id LIMIT 20) p
    """)
    propagated = spark.sql("SELECT customer_id FROM current_customer_personas WHERE source = 'propagated' "
                           "AND size(personas) > 0 ORDER BY customer_id LIMIT 1").first()["customer_id"]
    version = summary["tables"]["customer_personas"]["version"]
    parameters = {"customer_id": propagated, "version": version, "previous_version": max(version - 1, 0)}
    return config, parameters, customer_id


def run_doc_sql(spark, parameters: dict, sql: str):
    """The recipe verbatim, with the parameters it names."""
    return spark.sql(sql, args={name: parameters[name] for name in PARAMETER.findall(sql)}).collect()


def test_the_doc_has_a_recipe_for_each_question():
    sections = {section_of(sql) for sql in sql_blocks()}
    assert {"A customer's personas (the product page)", "Top personas per country", "Top personas per spend segment",
            "Persona share over time (time travel)", "Persona-conditioned ranking", "Ambiguous customers",
            "Labels that came from overrides"} <= sections


def test_the_ranking_recipe_is_the_librarys_rerank_sql(published):
    config, _, _ = published
    ranking = [sql for sql in sql_blocks() if section_of(sql) == "Persona-conditioned ranking"]
    assert ranking == [rerank_sql(config)]


@pytest.mark.parametrize("index", range(len(sql_blocks())))
def test_every_recipe_runs_on_a_published_run(spark, published, index):
    config, parameters, _ = published
    sql = sql_blocks()[index]
    rows = run_doc_sql(spark, parameters, sql)
    if section_of(sql) != "Ambiguous customers":  # a small run may have no ambiguous customer
        assert rows, f"no rows from the recipe under {section_of(sql)!r}"


def test_the_override_recipe_finds_the_overridden_customer(spark, published, published_site):
    config, parameters, overridden = published
    sql = next(sql for sql in sql_blocks() if section_of(sql) == "Labels that came from overrides")
    rows = run_doc_sql(spark, parameters, sql)
    assert [(r["customer_id"], r["personas"], r["reason"]) for r in rows] == [(overridden, list(published_site.override_personas), published_site.override_reason)]


def test_the_product_page_recipe_ranks_from_1(spark, published):
    config, parameters, _ = published
    sql = sql_blocks()[0]
    ranks = [r["rank"] for r in run_doc_sql(spark, parameters, sql)]
    assert ranks == list(range(1, len(ranks) + 1))


def test_personas_sql_reads_the_current_views_from_a_fresh_process(published):
    config, parameters, _ = published
    personas = Path(sys.executable).with_name("personas")
    result = subprocess.run(
        [str(personas), "sql", "--conf", TEST_CONF, "--workdir", str(config.workdir_path), "--format", "json",
         "SELECT customer_id, size(personas) > 0 AS has_personas FROM current_customer_personas "
         "WHERE customer_id = :customer_id", "--param", f"customer_id={parameters['customer_id']}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_quiet(result.stderr)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"columns": ["customer_id", "has_personas"], "rows": [[parameters["customer_id"], True]],
                      "truncated": False}


def test_personas_sql_names_a_sql_error_with_exit_3(spark, published):
    config, _, _ = published
    result = run_personas("sql", "--conf", TEST_CONF, "--workdir", str(config.workdir_path),
                          "SELECT nosuch FROM current_customer_personas")
    assert result.returncode == 3
    assert "nosuch" in result.stderr
