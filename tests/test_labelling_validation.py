"""Every answer gets exactly one status; nothing outside the taxonomy becomes a label."""

from __future__ import annotations

import json

import pytest

from persona_lib.labelling.validation import answer_json_schema, validate_answer
from persona_lib.taxonomy import UNREPRESENTABLE, taxonomy_from_mapping

TAXONOMY = taxonomy_from_mapping({"name": "t", "max_personas": 2, "personas": [
    {"name": "Gardening Lover", "definition": "Buys garden things."},
    {"name": "Tea and Coffee Lover", "definition": "Buys mugs."},
    {"name": "Home Decor Aficionado", "definition": "Buys cushions."},
]})


def answer(*names) -> str:
    return json.dumps({"personas": list(names)})


@pytest.mark.parametrize("raw, expected", [
    (answer("Gardening Lover"), (["Gardening Lover"], "ok", None)),
    (answer("Gardening Lover", "Tea and Coffee Lover"),
     (["Gardening Lover", "Tea and Coffee Lover"], "ok", None)),
    (answer(UNREPRESENTABLE), ([], "unrepresentable", None)),
    ('{"12346": ["Gardening Lover"]}', (["Gardening Lover"], "ok", None)),
    ('["Gardening Lover"]', (["Gardening Lover"], "ok", None)),
])
def test_clean_answers_are_ok_or_unrepresentable(raw, expected):
    assert validate_answer(raw, TAXONOMY) == expected


@pytest.mark.parametrize("raw, personas, detail", [
    (answer("gardening lover"), ["Gardening Lover"], "mapped 'gardening lover'"),
    (answer("Gardning Lover"), ["Gardening Lover"], "mapped 'Gardning Lover'"),
    (answer("Gardening Lover", "Hacker"), ["Gardening Lover"], "dropped unknown 'Hacker'"),
    (answer("Gardening Lover", "Gardening Lover"), ["Gardening Lover"], "dropped duplicate"),
    (answer("Gardening Lover", "Tea and Coffee Lover", "Home Decor Aficionado"),
     ["Gardening Lover", "Tea and Coffee Lover"], "cut 3 personas to the first 2"),
    (answer("Gardening Lover", UNREPRESENTABLE), ["Gardening Lover"], "dropped 'Unrepresentable'"),
    ('Sure! ```json\n{"personas": ["Gardening Lover"]}\n```', ["Gardening Lover"], "extra text"),
])
def test_fixable_answers_are_repaired_with_the_fix_in_detail(raw, personas, detail):
    got_personas, status, got_detail = validate_answer(raw, TAXONOMY)
    assert (got_personas, status) == (personas, "repaired")
    assert detail in got_detail


@pytest.mark.parametrize("raw, reason", [
    ('{"personas": ["Gardening Lover"', "bad JSON"),
    ("I think gardening", "bad JSON"),
    (answer(), "empty persona list"),
    (answer("Hacker", "Admin"), "no persona of the list"),
    ('{"a": 1, "b": 2}', "bad JSON"),
])
def test_unusable_answers_fail_with_the_reason(raw, reason):
    personas, status, detail = validate_answer(raw, TAXONOMY)
    assert (personas, status) == ([], "failed")
    assert reason in detail


def test_no_answer_and_backend_errors_have_their_own_statuses():
    assert validate_answer(None, TAXONOMY) == ([], "no_answer", None)
    assert validate_answer(None, TAXONOMY, "timeout after 1 s") == ([], "failed", "timeout after 1 s")


def test_answer_schema_allows_only_the_taxonomy_names_up_to_k_or_unrepresentable():
    schema = answer_json_schema(TAXONOMY)
    personas, unrepresentable = schema["properties"]["personas"]["anyOf"]
    assert personas["items"]["enum"] == list(TAXONOMY.names)
    assert (personas["minItems"], personas["maxItems"]) == (1, 2)
    assert unrepresentable["items"]["enum"] == [UNREPRESENTABLE]
    assert unrepresentable["maxItems"] == 1
    assert schema["additionalProperties"] is False
