"""The taxonomy file: validation errors name the file and field; names map back to the list."""

from __future__ import annotations

import pytest
import yaml

from persona_lib.config import REPO_ROOT
from persona_lib.errors import ConfigError
from persona_lib.taxonomy import UNREPRESENTABLE, load_taxonomy

SHIPPED = REPO_ROOT / "conf" / "personas" / "online_retail.yaml"


def write(tmp_path, content: dict):
    path = tmp_path / "personas.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def two_personas(**changes) -> dict:
    content = {"name": "t", "max_personas": 2, "personas": [
        {"name": "Gardening Lover", "definition": "Buys garden things."},
        {"name": "Tea and Coffee Lover", "definition": "Buys mugs and teapots."},
    ]}
    content.update(changes)
    return content


def test_shipped_online_retail_taxonomy_has_the_papers_20_personas_and_k_8():
    taxonomy = load_taxonomy(SHIPPED)
    assert taxonomy.name == "online_retail"
    assert len(taxonomy.personas) == 20
    assert taxonomy.max_personas == 8
    assert taxonomy.names[0] == "Kitchen and Culinary Enthusiast"
    assert len(taxonomy.version) == 16


def test_version_is_a_content_hash(tmp_path):
    first = load_taxonomy(write(tmp_path, two_personas()))
    assert load_taxonomy(write(tmp_path, two_personas())).version == first.version
    changed = two_personas()
    changed["personas"][0]["definition"] = "Buys seeds."
    assert load_taxonomy(write(tmp_path, changed)).version != first.version


@pytest.mark.parametrize("content, field", [
    (two_personas(personas=[{"name": "A", "definition": "a"}]), "'personas' holds 1 personas"),
    (two_personas(personas=[{"name": "Gardening Lover", "definition": "x"},
                            {"name": "gardening  lover", "definition": "y"}]), "duplicates"),
    (two_personas(personas=[{"name": "A", "definition": " "}, {"name": "B", "definition": "b"}]),
     "personas[0].definition"),
    (two_personas(max_personas=3), "max_personas"),
    (two_personas(max_personas=0), "max_personas"),
    (two_personas(personas=[{"name": UNREPRESENTABLE, "definition": "x"},
                            {"name": "B", "definition": "b"}]), "reserved"),
    (two_personas(colour="red"), "unknown key"),
])
def test_invalid_taxonomy_is_a_config_error_naming_file_and_field(tmp_path, content, field):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        load_taxonomy(path)
    assert str(path) in str(error.value)
    assert field in str(error.value)


def test_missing_taxonomy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_taxonomy(tmp_path / "nope.yaml")


@pytest.mark.parametrize("answer, expected", [
    ("Gardening Lover", ("Gardening Lover", False)),
    ("gardening  LOVER", ("Gardening Lover", True)),
    ("Gardening Lovers", ("Gardening Lover", True)),
    ("Tea & Coffee Lover", ("Tea and Coffee Lover", True)),
    ("Gardning Lover", ("Gardening Lover", True)),
    ("unrepresentable", (UNREPRESENTABLE, True)),
    ("Hacker", (None, True)),
    ("Lover", (None, True)),
])
def test_match_maps_variants_to_the_list_and_rejects_strangers(tmp_path, answer, expected):
    assert load_taxonomy(write(tmp_path, two_personas())).match(answer) == expected
