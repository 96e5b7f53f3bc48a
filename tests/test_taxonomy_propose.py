"""``personas taxonomy propose``: the answer parser on strings, the seeded basket sample on a
small frame, the openai backend against a small HTTP server in the test, and the command
(replay and openai) on a tiny purchase_events table, one Spark start per command."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from persona_lib import contracts, storage
from persona_lib import taxonomy_propose as tp
from persona_lib.config import REPO_ROOT, load_config
from persona_lib.errors import InputError
from persona_lib.taxonomy import load_taxonomy
from tests.cli_runner import run_personas
from tests.conftest import TEST_CONF
from tests.console import assert_quiet
from tests.openai_endpoint import chat_answer

SIX = [("Gardening Lover", "Buys garden tools and seeds."),
       ("Tea and Coffee Lover", "Buys mugs, teapots and coffee sets."),
       ("Party Planner", "Buys bunting, napkins and party bags."),
       ("Baker", "Buys cake tins and baking cases."),
       ("Christmas Decorator", "Buys tree ornaments and festive lights."),
       ("Young Family", "Buys toys, children's tableware and school items.")]


def answer_yaml(personas=SIX, name="shop", k=4) -> str:
    return yaml.safe_dump({"name": name, "max_personas": k,
                           "personas": [{"name": n, "definition": d} for n, d in personas]}, sort_keys=False)


# --- the parser -------------------------------------------------------------------------------

def test_a_fenced_yaml_answer_with_prose_around_it_parses():
    text = f"Sure! Here is a persona set:\n\n```yaml\n{answer_yaml()}```\n\nLet me know if you want changes."
    taxonomy, mapping = tp.parse_proposal(text, "draft")
    assert taxonomy.names == tuple(n for n, _ in SIX)
    assert (mapping["name"], mapping["max_personas"]) == ("draft", 4)
    assert mapping["personas"][0] == {"name": "Gardening Lover", "definition": "Buys garden tools and seeds."}


def test_unfenced_yaml_after_and_before_prose_parses():
    text = f"Based on the purchases, these personas fit:\n{answer_yaml()}\nThese cover most customers."
    taxonomy, _ = tp.parse_proposal(text, "draft")
    assert len(taxonomy.personas) == 6


def test_a_json_answer_parses_and_a_missing_k_gets_the_default():
    text = json.dumps({"personas": [{"name": n, "definition": d} for n, d in SIX]})
    taxonomy, mapping = tp.parse_proposal(text, "draft")
    assert taxonomy.max_personas == mapping["max_personas"] == min(tp.DEFAULT_K, 6)


def test_a_wrapped_mapping_or_a_bare_persona_list_parses():
    entries = [{"name": n, "definition": d} for n, d in SIX]
    wrapped, _ = tp.parse_proposal(yaml.safe_dump({"taxonomy": {"name": "x", "personas": entries}}), "draft")
    bare, _ = tp.parse_proposal("```\n" + yaml.safe_dump(entries) + "```", "draft")
    assert wrapped.names == bare.names == tuple(n for n, _ in SIX)


def test_too_few_personas_is_an_input_error_saying_how_many():
    with pytest.raises(InputError, match=r"holds 3 personas; a proposal needs 5 to 20"):
        tp.parse_proposal(answer_yaml(SIX[:3], k=2), "draft")


def test_too_many_personas_is_an_input_error():
    many = [(f"Persona {i}", f"Definition {i}.") for i in range(21)]
    with pytest.raises(InputError, match=r"holds 21 personas"):
        tp.parse_proposal(answer_yaml(many), "draft")


def test_duplicate_names_beyond_case_and_plural_are_an_input_error():
    duplicated = [*SIX[:5], ("gardening lovers", "Again.")]
    with pytest.raises(InputError, match=r"'gardening lovers' duplicates 'Gardening Lover'"):
        tp.parse_proposal(answer_yaml(duplicated), "draft")


def test_a_persona_without_definition_is_named():
    broken = [*SIX[:5], ("Outdoor Type", "")]
    with pytest.raises(InputError, match=r"personas\[5\].definition: persona 'Outdoor Type'"):
        tp.parse_proposal(answer_yaml(broken), "draft")


def test_prose_without_yaml_is_an_input_error():
    with pytest.raises(InputError, match="no YAML mapping with a 'personas' list"):
        tp.parse_proposal("I cannot help with that.", "draft")


def test_the_bundled_recorded_proposal_is_the_papers_20_personas():
    text = (REPO_ROOT / "data" / "gplr_online_retail" / "taxonomy_proposal.yaml").read_text()
    taxonomy, _ = tp.parse_proposal(text, "online_retail")
    shipped = load_taxonomy(REPO_ROOT / "conf" / "personas" / "online_retail.yaml")
    assert set(taxonomy.names) == set(shipped.names) and len(taxonomy.names) == 20


# --- the sample and the prompt ----------------------------------------------------------------

def events_frame(spark, customers: int):
    """Customer c buys product A c+1 times, B once and a long-titled C twice; customer 0 returns all."""
    rows = []
    for c in range(customers):
        for product, title, quantity in (("A", f"MUG {c}", c + 1), ("B", "TEAPOT", 1),
                                         ("C", "RED SPOTTY PAPER NAPKINS " * 4, 2)):
            rows.append((f"{1000 + c}", product, title, quantity if c else -quantity, dt.datetime(2011, 1, 1)))
    return spark.createDataFrame(rows, "customer_id string, product_id string, product_title string, "
                                       "quantity int, event_ts timestamp")


def test_the_sample_is_seeded_and_lists_the_most_bought_first_within_the_budget(spark):
    events = events_frame(spark, 20)
    first = tp.sample_baskets(events, 5, seed=1, chars_per_customer=60)
    assert first == tp.sample_baskets(events, 5, seed=1, chars_per_customer=60)
    assert [b.customer_id for b in first] != [b.customer_id for b in tp.sample_baskets(events, 5, seed=2)]
    assert len(first) == 5 and "1000" not in [b.customer_id for b in first]  # returned everything
    basket = next(b for b in first if int(b.customer_id) >= 1003)
    c = int(basket.customer_id) - 1000
    # MUG (c+1 >= 4 times) first; the 100-character napkins line (2 times) does not fit 60
    # characters, and the list stops there.
    assert basket.lines == (f"MUG {c}, {c + 1} times",)
    assert basket.products_left_out == 2
    roomy = next(b for b in tp.sample_baskets(events, 5, seed=1, chars_per_customer=200)
                 if b.customer_id == basket.customer_id)
    assert [line.split(",")[0][:3] for line in roomy.lines] == ["MUG", "RED", "TEA"]
    assert roomy.products_left_out == 0


def test_the_prompt_holds_every_basket_and_asks_for_5_to_20_personas_in_yaml(spark):
    baskets = tp.sample_baskets(events_frame(spark, 4), 3, seed=0)
    prompt = tp.proposal_prompt(baskets, "shop")
    assert "5 to 20 consumer personas" in prompt.user and "name: shop" in prompt.user
    for number, basket in enumerate(baskets, start=1):
        assert f"<customer {number}>\n" + "\n".join(basket.lines) in prompt.user
    assert prompt.version == tp.prompt_version() and len(prompt.version) == 16


# --- the openai backend -----------------------------------------------------------------------

USAGE = {"prompt_tokens": 900, "completion_tokens": 300}

def test_openai_sends_the_prompt_without_a_schema_and_its_answer_becomes_the_draft(endpoint_factory, tmp_path):
    endpoint = endpoint_factory(chat_answer(f"```yaml\n{answer_yaml()}```", **USAGE))
    config = load_config(TEST_CONF, workdir=str(tmp_path / "work"))
    config = config.replace("labelling", openai=dataclasses.replace(
        config.labelling.openai, base_url=endpoint.url, model="served-model", max_retries=0))
    baskets = [tp.Basket("1", ("MUG, 3 times", "TEAPOT, 1 time"), 0)]
    prompt = tp.proposal_prompt(baskets, "shop")
    answer = tp.ask("openai", config, prompt, max_tokens=1000)
    (request,) = endpoint.requests
    assert request["messages"] == prompt.messages and request["model"] == "served-model"
    assert request["max_tokens"] == 1000
    assert "response_format" not in request and "structured_outputs" not in request
    assert answer.source == "openai:served-model" and answer.error is None
    _, mapping = tp.parse_proposal(answer.text, "shop")
    draft = tmp_path / "shop.yaml"
    draft.write_text(tp.draft_text(mapping, answer, prompt, seed=7, baskets=baskets))
    assert load_taxonomy(draft).names == tuple(n for n, _ in SIX)
    assert "# source: openai:served-model" in draft.read_text()


# --- the command ------------------------------------------------------------------------------

def personas(*args: str) -> subprocess.CompletedProcess:
    return run_personas(*args, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def site(spark, tmp_path_factory):
    """(conf path, work dir) with a purchase_events table of 12 customers written by the test session."""
    root = tmp_path_factory.mktemp("taxonomy-propose")
    conf = root / "propose.yaml"
    conf.write_text(yaml.safe_dump({"base": str(TEST_CONF)}))
    workdir = root / "work"
    config = load_config(conf, workdir=str(workdir))
    when = dt.datetime(2011, 3, 1, 10)
    rows = [{"event_id": f"e{c}-{p}", "customer_id": str(20000 + c), "product_id": f"P{p}",
             "product_title": f"TITLE {c} {p}", "invoice_no": f"I{c}", "quantity": float(p + 1),
             "unit_price": 1.5, "event_ts": when, "country": "United Kingdom", "source_file": "test",
             "line_number": c * 10 + p, "content_sha256": None, "ingested_at": when}
            for c in range(12) for p in range(3)]
    storage.overwrite(spark.createDataFrame(rows, contracts.PURCHASE_EVENTS),
                      storage.resolve_tables(config).purchase_events, contracts.PURCHASE_EVENTS)
    return conf, workdir


def test_propose_with_replay_writes_a_draft_that_loads_and_the_prompt_with_the_baskets(site, tmp_path):
    conf, workdir = site
    out = tmp_path / "grocery.yaml"
    result = personas("taxonomy", "propose", "--conf", str(conf), "--workdir", str(workdir), "--out", str(out),
                      "--labeller", "replay", "--customers", "5", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result.stderr)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    taxonomy = load_taxonomy(out)
    assert taxonomy.name == "grocery" and len(taxonomy.personas) == 20
    assert summary["personas"] == list(taxonomy.names) and summary["path"] == str(out)
    assert summary["source"].startswith("replay:") and summary["prompt_version"] == tp.prompt_version()
    header = out.read_text().split("\nname:")[0]
    for recorded in ("DRAFT: edit before use", f"source: {summary['source']}", "seed: 3",
                     "customers_sampled: 5", f"prompt_version: {tp.prompt_version()}", "date: "):
        assert recorded in header
    prompt = Path(summary["prompt_path"]).read_text()
    assert prompt == (tmp_path / "grocery.yaml.prompt.txt").read_text()
    # Five customers, each with its three products most bought first.
    assert prompt.count("</customer>") == 5 + 1  # and once in the instructions
    listed = sorted({line.split(" ")[1] for line in prompt.splitlines() if line.startswith("TITLE ")})
    assert len(listed) == 5
    assert f"TITLE {listed[0]} 2, 3 times\nTITLE {listed[0]} 1, 2 times\nTITLE {listed[0]} 0, 1 time" in prompt

    again = personas("taxonomy", "propose", "--conf", str(conf), "--workdir", str(workdir), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


def test_an_invalid_answer_is_exit_3_naming_the_problem_with_the_raw_answer_saved(site, tmp_path, endpoint_factory):
    conf, workdir = site
    reply = f"Here you go:\n{answer_yaml(SIX[:3], k=2)}"
    endpoint = endpoint_factory(chat_answer(reply, **USAGE))
    openai_conf = tmp_path / "openai.yaml"
    openai_conf.write_text(yaml.safe_dump({"base": str(conf), "labelling": {"openai": {
        "base_url": endpoint.url, "model": "tiny", "max_retries": 0}}}))
    out = tmp_path / "draft.yaml"
    result = personas("taxonomy", "propose", "--conf", str(openai_conf), "--workdir", str(workdir),
                      "--out", str(out), "--labeller", "openai", "--customers", "4")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "holds 3 personas; a proposal needs 5 to 20" in result.stderr
    assert not out.exists()
    assert (tmp_path / "draft.yaml.answer.txt").read_text() == reply
    (request,) = endpoint.requests
    assert request["messages"][1]["content"] == (tmp_path / "draft.yaml.prompt.txt").read_text().split("[user]\n", 1)[1]


def test_vllm_without_a_model_path_is_exit_4_before_spark_starts(spark, tmp_path):
    result = personas("taxonomy", "propose", "--conf", str(TEST_CONF), "--workdir", str(tmp_path / "work"),
                      "--out", str(tmp_path / "d.yaml"), "--labeller", "vllm")
    assert result.returncode == 4, result.stderr[-3000:]
    assert "labelling.vllm.model_path" in result.stderr or "needs the vllm package" in result.stderr
    assert not (tmp_path / "work").exists()
