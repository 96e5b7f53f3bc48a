"""Product labelling (labelling.products) with the replay backend and the authors' recorded
GPT-4 product labels: selection, statuses, the product label store's cache, prompt
characters, the persona model's view, and the pipeline's separate spend counts."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from chispa import assert_df_equality
from mlflow import MlflowClient

from persona_lib import contracts, storage, tracking
from persona_lib.config import load_config
from persona_lib.errors import ConfigError, PersonasError
from persona_lib.labelling import label_products, product_labels_for_model
from persona_lib.pipeline import run_pipeline
from persona_lib.prompts import product_prompt_template
from persona_lib.taxonomy import load_taxonomy
from persona_lib.testing import TEST_CONF
from tests.landing_files import copy_landing_slice

LABEL_COLUMNS = "product_id string, status string, personas array<string>"
WHEN = dt.datetime(2011, 1, 1)
# Recorded in data/gplr_online_retail/item_labels.csv.gz for these two titles.
HEART_PERSONAS = ["Home Decor Aficionado", "Vintage and Retro Enthusiast", "Seasonal and Festive Decorator"]
LANTERN_PERSONAS = ["Home Decor Aficionado", "Seasonal and Festive Decorator", "Gardening Lover"]


def products(spark, rows):
    """products rows from (product_id, title, customers)."""
    return spark.createDataFrame(
        [(pid, title, WHEN, WHEN, customers * 2, customers, None) for pid, title, customers in rows],
        contracts.PRODUCTS)


# Recorded titles in another case and spacing, one unrecorded title, one product without a title.
CATALOGUE = [
    ("85123A", "  white hanging   heart t-light holder ", 30),
    ("71053", "WHITE METAL LANTERN", 20),
    ("99001", "A TITLE NOBODY RECORDED", 10),
    ("99002", None, 40),
]


def enabled(config, **changes):
    products_config = dataclasses.replace(config.labelling.products, enabled=True, **changes)
    return config.replace("labelling", products=products_config)


def stored(spark, config):
    return storage.resolve_tables(config).product_labels.read(spark)


def test_replay_labels_products_by_normalised_title_with_statuses(spark, config, tables):
    config = enabled(config, selection="all")
    summary = label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    expected = spark.createDataFrame([
        ("85123A", "ok", HEART_PERSONAS),
        ("71053", "ok", LANTERN_PERSONAS),
        ("99001", "no_answer", []),
    ], LABEL_COLUMNS)
    assert_df_equality(stored(spark, config).select("product_id", "status", "personas"), expected,
                       ignore_row_order=True, ignore_nullable=True)
    assert summary["source"] == "replay:gpt-4-turbo"
    assert (summary["products"], summary["untitled"], summary["requested"]) == (4, 1, 3)
    assert (summary["llm_calls"], summary["cache_hits"]) == (3, 0)
    assert summary["statuses"] == {"ok": 2, "repaired": 0, "unrepresentable": 0, "no_answer": 1, "failed": 0}
    assert summary["answered_share"] == round(2 / 3, 4)
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    row = stored(spark, config).where("product_id = '71053'").first()
    assert (row["title"], row["taxonomy_version"], row["run_id"]) == \
        ("WHITE METAL LANTERN", taxonomy.version, "p1")
    assert row["prompt_version"] == summary["prompt_version"]


def test_popular_selection_asks_the_budgets_most_bought_titled_products(spark, config, tables):
    config = enabled(config, selection="popular", budget=2)
    summary = label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    assert {r["product_id"] for r in stored(spark, config).collect()} == {"85123A", "71053"}
    assert summary["requested"] == 2
    half = label_products(spark, enabled(config, selection="popular", budget=0.5), tables,
                          products(spark, CATALOGUE), run_id="p2")
    assert half["requested"] == 2  # half of the 3 titled products, rounded


def test_a_second_run_asks_nothing_and_a_changed_title_is_asked_again(spark, config, tables):
    config = enabled(config, selection="all")
    label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    version = tables.product_labels.version(spark)

    again = label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p2")
    assert (again["llm_calls"], again["cache_hits"], again["prompt_chars"]) == (0, 3, 0)
    assert tables.product_labels.version(spark) == version

    renamed = [("71053", "WHITE METAL LANTERN SMALL", 20) if pid == "71053" else (pid, title, n)
               for pid, title, n in CATALOGUE]
    changed = label_products(spark, config, tables, products(spark, renamed), run_id="p3")
    assert (changed["llm_calls"], changed["cache_hits"]) == (1, 2)
    row = stored(spark, config).where("product_id = '71053'").first()
    # The new title has no recorded answer: the stored label follows the title, not the id.
    assert (row["title"], row["status"], row["run_id"]) == ("WHITE METAL LANTERN SMALL", "no_answer", "p3")


def test_an_answer_outside_the_taxonomy_is_not_ok(spark, config, tables, tmp_path):
    recorded = tmp_path / "item_labels.csv"
    recorded.write_text("Description,StockCode,personas,author_tidx\n"
                        "SPACE ROCKET,1,Space Pirate,0\n"
                        "GARDEN HOSE,2,Gardening Lover|Space Pirate,1\n"
                        "TEA TIN,3,Tea and Coffee Lover,2\n")
    config = enabled(config, selection="all", replay_answers=str(recorded))
    config = config.replace("labelling", max_failure_rate=0.5)
    catalogue = [("1", "SPACE ROCKET", 3), ("2", "GARDEN HOSE", 2), ("3", "TEA TIN", 1)]
    summary = label_products(spark, config, tables, products(spark, catalogue), run_id="p1")
    rows = {r["product_id"]: r for r in stored(spark, config).collect()}
    assert (rows["1"]["status"], rows["1"]["personas"]) == ("failed", [])
    assert "Space Pirate" in rows["1"]["detail"]
    assert (rows["2"]["status"], rows["2"]["personas"]) == ("repaired", ["Gardening Lover"])
    assert (rows["3"]["status"], rows["3"]["personas"]) == ("ok", ["Tea and Coffee Lover"])
    assert summary["new_statuses"]["failed"] == 1

    # A failed answer is asked again next time; too many failures fail the stage, after storing.
    strict = config.replace("labelling", max_failure_rate=0.0)
    with pytest.raises(PersonasError, match="product labelling failed for 100.0% of 1 products"):
        label_products(spark, strict, tables, products(spark, catalogue), run_id="p2")
    assert stored(spark, config).where("run_id = 'p2'").count() == 1


def test_prompt_characters_count_every_character_sent(spark, config, tables):
    config = enabled(config, selection="all")
    summary = label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    template = product_prompt_template(taxonomy, config.labelling.products.max_personas)
    # The titles as the prompt quotes them: trimmed, whitespace runs as one space.
    titles = ["white hanging heart t-light holder", "WHITE METAL LANTERN", "A TITLE NOBODY RECORDED"]
    sent = sum(len(message["content"]) for title in titles
               for message in template.messages(f"<product>\n{title}\n</product>"))
    assert summary["prompt_chars"] == sent


def test_customer_prompt_characters_are_counted_too(spark, config, tables):
    from persona_lib.labelling import label_customers
    from persona_lib.prompts import build_prompts, prompt_template

    events = spark.createDataFrame(
        [("12346", "23166", "MEDIUM CERAMIC TOP STORAGE JAR", 12, WHEN),
         ("12347", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 1, WHEN),
         ("12347", "71053", "WHITE METAL LANTERN", 3, WHEN)],
        "customer_id string, product_id string, product_title string, quantity int, event_ts timestamp")
    sample = spark.createDataFrame([("12346",), ("12347",)], "customer_id string")
    summary = label_customers(spark, config, tables, sample, events, run_id="c1")
    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    budget = config.labelling.prompt_token_budget
    template = prompt_template(taxonomy, budget)
    suffixes = [row["prompt_suffix"] for row in build_prompts(events, sample, taxonomy, budget).collect()]
    assert summary["prompt_chars"] == sum(len(message["content"]) for suffix in suffixes
                                          for message in template.messages(suffix))
    assert label_customers(spark, config, tables, sample, events, run_id="c2")["prompt_chars"] == 0


def test_the_product_prompt_has_its_own_version_and_k(config):
    from persona_lib.prompts import prompt_template

    taxonomy = load_taxonomy(config.resolve_path(config.labelling.taxonomy))
    three, five = product_prompt_template(taxonomy, 3), product_prompt_template(taxonomy, 5)
    assert three.version != five.version
    assert five.version != prompt_template(taxonomy, config.labelling.prompt_token_budget).version
    assert "at most 5 personas" in five.prefix and "<product>" in five.prefix


def test_the_model_view_has_one_row_per_validated_persona_and_only_while_enabled(spark, config, tables):
    config = enabled(config, selection="all")
    label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    expected = spark.createDataFrame(
        [("85123A", p) for p in HEART_PERSONAS] + [("71053", p) for p in LANTERN_PERSONAS],
        "product_id string, persona string")
    assert_df_equality(product_labels_for_model(spark, config, tables), expected, ignore_row_order=True,
                       ignore_nullable=True)
    disabled = config.replace("labelling", products=dataclasses.replace(
        config.labelling.products, enabled=False))
    assert product_labels_for_model(spark, disabled, tables).count() == 0


def test_a_disabled_stage_asks_nothing(spark, config, tables):
    summary = label_products(spark, config, tables, products(spark, CATALOGUE), run_id="p1")
    assert summary == {"enabled": False, "llm_calls": 0, "prompt_chars": 0, "cache_hits": 0}
    assert not tables.product_labels.exists(spark)


def test_product_settings_are_typed_and_checked(spark, config, tables, tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(f"base: {TEST_CONF}\nlabelling:\n  products:\n    enabeld: true\n")
    with pytest.raises(ConfigError, match="enabeld"):
        load_config(bad_key)
    with pytest.raises(ConfigError, match="labelling.products.selection"):
        label_products(spark, enabled(config, selection="newest"), tables, products(spark, CATALOGUE), "p1")
    with pytest.raises(ConfigError, match="labelling.products.max_personas"):
        label_products(spark, enabled(config, max_personas=0), tables, products(spark, CATALOGUE), "p1")


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("product-pipeline")
    landing = copy_landing_slice(root / "landing")
    config = load_config(TEST_CONF, workdir=str(root / "work")).replace("ingest", landing=str(landing))
    config = enabled(config.replace("sampling", budget=0.2, rounds=1), selection="popular", budget=0.1)
    return config, run_pipeline(spark, config)


def test_the_pipeline_labels_products_first_and_reports_spend_apart(spark, pipeline_run):
    config, summary = pipeline_run
    spend = summary["llm_spend"]
    stored_products = stored(spark, config).count()
    assert spend["llm_calls_products"] == summary["product_labels"]["llm_calls"] == stored_products > 0
    assert spend["prompt_chars_products"] == summary["product_labels"]["prompt_chars"] > 0
    assert spend["llm_calls_customers"] == sum(r["llm_calls"] for r in summary["rounds"]) > 0
    assert spend["prompt_chars_customers"] == sum(r["prompt_chars"] for r in summary["rounds"]) > 0
    # Products and customers have different prompts: the counts are not one figure twice.
    assert spend["prompt_chars_customers"] != spend["prompt_chars_products"]

    tracking.configure(config)
    metrics = MlflowClient().get_run(summary["run_id"]).data.metrics
    assert {key: metrics[key] for key in spend} == {key: float(value) for key, value in spend.items()}
