"""The product page's query: validation that names the wrong field, and re-ranking."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from persona_lib.errors import InputError
from persona_lib.query import rerank, validate

GOOD = {"from": "customer_purchases", "where": {"customer_id": "12347"}, "predict": "persona",
        "select": ["$p", "$why", "persona"], "limit": 3}


@pytest.mark.parametrize("change, field", [
    ({"from": "orders"}, "query.from"),
    ({"predict": "country"}, "query.predict"),
    ({"where": {"customer": "1"}}, "query.where"),
    ({"where": {}}, "query.where"),
    ({"select": ["$p", "$score"]}, "query.select"),
    ({"limit": 0}, "query.limit"),
    ({"limit": "3"}, "query.limit"),
    ({"where": {"products": "85123A"}}, "query.where.products"),
    ({"order": "asc"}, "unknown field"),
])
def test_an_invalid_query_names_the_wrong_field(change, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        validate({**GOOD, **change})


def test_a_valid_query_gets_its_defaults():
    spec = validate({"where": {"customer_id": 12347}})
    assert spec["where"]["customer_id"] == "12347"
    assert spec["select"] == ["$p", "$why", "persona"] and spec["limit"] == 5


def test_rerank_lifts_persona_matching_products_but_not_for_ambiguous_customers(spark):
    candidates = spark.createDataFrame(
        [("a", "rake", 0.5), ("a", "cake", 0.9), ("b", "rake", 0.5), ("b", "cake", 0.9)],
        "customer_id string, product_id string, base_score double")
    affinity = spark.createDataFrame([("a", "Gardener", 1.0), ("b", "Gardener", 1.0)],
                                     "customer_id string, persona string, probability double")
    personas = spark.createDataFrame([("a", False), ("b", True)], "customer_id string, is_ambiguous boolean")
    products = spark.createDataFrame([("rake", "Gardener", 0.9), ("cake", "Gardener", 0.1)],
                                     "product_id string, persona string, score double")

    ranked = rerank(candidates, affinity, personas, products, weight=0.7).select("customer_id", "product_id", "rank")

    expected = spark.createDataFrame([("a", "rake", 1), ("a", "cake", 2), ("b", "cake", 1), ("b", "rake", 2)],
                                     "customer_id string, product_id string, rank int")
    assert_df_equality(ranked, expected, ignore_row_order=True, ignore_nullable=True)
