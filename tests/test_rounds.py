"""Algorithm 1 written once (persona_lib.rounds): budget targets, who each round draws, when
it walks; with the evaluation's replayed answers as the labels (a real RoundLabels)."""

from __future__ import annotations

import pytest

from persona_lib.config import PropagationConfig
from persona_lib.errors import ConfigError
from persona_lib.evaluation.accuracy import ReplayLabels
from persona_lib.graph import build_graph, edges_from_pairs
from persona_lib.propagation import propagate
from persona_lib.rounds import RoundPlan, run_rounds

# Two communities: customers 0-5 buy A/B (persona "baker"), 6-11 buy C/D ("gardener").
PAIRS = [(str(c), p) for c in range(6) for p in ("A", "B")] + [(str(c), p) for c in range(6, 12) for p in ("C", "D")]
ANSWERS = [(str(c), "baker") for c in range(6)] + [(str(c), "gardener") for c in range(6, 12)]


@pytest.fixture(scope="module")
def world(spark):
    pairs = spark.createDataFrame(PAIRS, "customer_id string, product_id string")
    graph = build_graph(edges_from_pairs(pairs))
    answers = spark.createDataFrame(ANSWERS, "customer_id string, persona string")
    customers = pairs.select("customer_id").distinct()
    return graph, answers, customers


def ids(df) -> set[str]:
    return {row["customer_id"] for row in df.collect()}


def test_a_plan_holds_cumulative_targets_of_the_budget():
    plan = RoundPlan.from_budget(100, 0.25, 2, seed=1)
    assert plan.targets == (13, 25)


def test_du_plans_walk_before_every_du_round_and_random_plans_only_at_the_end():
    du = RoundPlan((2, 4, 6), seed=0, sampler="du")
    random = RoundPlan((2, 4, 6), seed=0, sampler="random")
    assert [du.walks_after(i) for i in range(3)] == [True, True, True]
    assert [random.walks_after(i) for i in range(3)] == [False, False, True]


def test_an_unknown_sampler_is_a_config_error():
    with pytest.raises(ConfigError, match="sampler"):
        RoundPlan((1,), seed=0, sampler="greedy")


def test_rounds_reach_each_target_without_drawing_a_customer_twice(spark, world):
    graph, answers, customers = world
    labels = ReplayLabels(spark, answers)
    plan = RoundPlan((3, 6), seed=7, sampler="du")
    walk = lambda seeds, round_index: propagate(spark, graph, seeds, PropagationConfig())
    records = run_rounds(customers, plan, labels, walk)

    assert [(r.sampler, r.sampled, r.rechecks) for r in records] == [("random", 3, 0), ("du", 3, 0)]
    assert labels.labelled.count() == 6 and len(ids(labels.labelled)) == 6
    assert all(r.result is not None for r in records)
    assert ids(labels.seeds()) == ids(labels.labelled)


def test_the_same_seed_draws_the_same_customers(spark, world):
    graph, answers, customers = world
    first, second = ReplayLabels(spark, answers), ReplayLabels(spark, answers)
    plan = RoundPlan((4,), seed=3, sampler="random")
    run_rounds(customers, plan, first, None)
    run_rounds(customers, plan, second, None)
    assert ids(first.labelled) == ids(second.labelled)


def test_labelling_only_rounds_never_walk(spark, world):
    _, answers, customers = world
    records = run_rounds(customers, RoundPlan((2, 4), seed=0, sampler="random"), ReplayLabels(spark, answers), None)
    assert [r.result for r in records] == [None, None]
