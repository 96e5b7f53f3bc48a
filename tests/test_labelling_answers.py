"""The one reader of recorded answers files, and enumerated values spelt in one place."""

from __future__ import annotations

import argparse

import pytest
from chispa import assert_df_equality

from persona_lib import config as config_module
from persona_lib.cli import build_parser
from persona_lib.errors import InputError
from persona_lib.labelling.answers import read_recorded_answers, recorded_labels


def write(tmp_path, text):
    path = tmp_path / "answers.csv"
    path.write_text(text)
    return path


def test_recorded_answers_hold_the_canonical_id_and_the_trimmed_names_in_order(spark, tmp_path):
    path = write(tmp_path, "CustomerID,personas\n12346.0, B | A |\n012347,Unrepresentable\n")
    recorded = read_recorded_answers(spark, path).orderBy("customer_id")
    expected = spark.createDataFrame([("12346", ["B", "A"]), ("12347", ["Unrepresentable"])],
                                     "customer_id string, personas array<string>")
    assert_df_equality(recorded, expected, ignore_nullable=True)
    labels = recorded_labels(recorded).orderBy("persona")
    assert [tuple(r) for r in labels.collect()] == [("12346", "A"), ("12346", "B")]


@pytest.mark.parametrize("text, field", [
    ("CustomerID,personas\n12346,A\n1e4,B\n", "CustomerID"),
    ("CustomerID,personas\n12346,A\n12347, | \n", "personas"),
])
def test_an_unusable_row_is_an_input_error_naming_file_field_and_row(spark, tmp_path, text, field):
    with pytest.raises(InputError, match=rf"answers\.csv: field '{field}' .*row"):
        read_recorded_answers(spark, write(tmp_path, text))


def test_a_file_without_the_personas_column_is_an_input_error(spark, tmp_path):
    with pytest.raises(InputError, match=r"missing column\(s\) \['personas'\]"):
        read_recorded_answers(spark, write(tmp_path, "CustomerID,labels\n1,A\n"))


def _choices(parser: argparse.ArgumentParser, path: list[str], option: str):
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


@pytest.mark.parametrize("path, option, values", [
    (["label"], "--labeller", config_module.LABELLERS),
    (["run"], "--labeller", config_module.LABELLERS),
    (["ingest"], "--cut", config_module.CUTS),
    (["propagate"], "--method", config_module.PROPAGATION_METHODS),
    (["propagate"], "--weighting", config_module.EDGE_WEIGHTINGS),
    (["evaluate", "accuracy"], "--sampler", config_module.SAMPLERS),
])
def test_command_line_choices_are_the_configs_values(path, option, values):
    assert _choices(build_parser(), path, option) == values
