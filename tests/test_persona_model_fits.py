"""The persona model's fits and its per-customer sums: each is the maths it replaces.

The profile logistics and the stacker are minimised by scipy on the executors, and the vote and
profile sums go through a broadcast-matrix kernel; these tests hold them to the definitions (the
L2 logistic's optimality condition, MLlib's standardised logistic, the plain join-and-sum).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from persona_lib import persona_model
from persona_lib.config import ModelConfig


def _profile_rows(seed: int = 3) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    personas = ["A", "B", "C"]
    rows = []
    for customer in range(40):
        given = [p for p in personas if rng.random() < 0.4]
        for product in rng.choice(12, size=int(rng.integers(1, 5)), replace=False):
            rows.append((7, f"u{customer}", given, f"p{product}", float(rng.random())))
    rows.append((7, "u-unknown", ["A"], None, None))  # no known product: still trains the intercept
    return pd.DataFrame(rows, columns=["model_fold", "customer_id", "positives", "product_id", "x"]), personas


def test_each_profile_logistic_is_at_the_l2_optimum_of_its_persona():
    rows, personas = _profile_rows()
    c = 3.0
    fitted = persona_model._fit_profile_group(rows, personas, c, max_iter=500)
    assert set(fitted["model_fold"]) == {7}
    weights = fitted[fitted["product_id"].notna()].pivot(index="product_id", columns="persona", values="weight")
    bias = fitted[fitted["product_id"].isna()].set_index("persona")["weight"]
    customers = sorted(set(rows["customer_id"]))
    products = sorted(weights.index)
    known = rows[rows["product_id"].notna()]
    matrix = np.zeros((len(customers), len(products)))
    matrix[[customers.index(u) for u in known["customer_id"]], [products.index(p) for p in known["product_id"]]] = known["x"]
    labels = rows.drop_duplicates("customer_id").set_index("customer_id")["positives"]
    for persona in personas:
        y = np.array([persona in labels[u] for u in customers], dtype=float)
        w = weights[persona].reindex(products).fillna(0.0).to_numpy()
        residual = 1.0 / (1.0 + np.exp(-(matrix @ w + bias[persona]))) - y
        # Zero gradient of C x sum(logloss) + |w|^2 / 2, the intercept unpenalised, up to the
        # solver's tolerance (a wrong C or a penalised intercept is off by orders more).
        assert np.abs(c * matrix.T @ residual + w).max() < 2e-3
        assert abs(c * residual.sum()) < 2e-3


def test_stacker_minimises_mllibs_standardised_logistic(spark):
    rng = np.random.default_rng(11)
    personas, features = ["A", "B"], ["f1", "f2"]
    rows = [(p, float(rng.random() < 0.3 + 0.4 * (p == "A")), float(rng.normal(1.0 if p == "A" else 0.0)),
             float(rng.normal()) * (2.0 if p == "B" else 1.0)) for p in personas for _ in range(150)]
    training = spark.createDataFrame(rows, "persona string, label double, f1 double, f2 double")
    cfg = ModelConfig(stack_reg=0.05, max_iter=200)
    intercepts, slopes = persona_model.fit_stacker(training, personas, features, cfg)

    columns, expressions = [], []
    for i, persona in enumerate(personas):
        is_persona = (F.col("persona") == persona).cast("double")
        expressions.append(is_persona.alias(f"b{i}"))
        columns.append(f"b{i}")
        for name in features:
            expressions.append((is_persona * F.col(name)).alias(f"s{i}{name}"))
            columns.append(f"s{i}{name}")
    design = VectorAssembler(inputCols=columns, outputCol="features").transform(training.select("label", *expressions))
    mllib = LogisticRegression(regParam=cfg.stack_reg, standardization=True, maxIter=500, tol=1e-12).fit(design)
    w = dict(zip(columns, mllib.coefficients.toArray()))
    for i, persona in enumerate(personas):
        assert intercepts[persona] == pytest.approx(mllib.intercept + w[f"b{i}"], abs=2e-3)
        for name in features:
            assert slopes[persona][name] == pytest.approx(w[f"s{i}{name}"], abs=2e-3)


def test_weighted_product_sums_equal_the_join_and_sum_per_group(spark):
    rows = spark.createDataFrame(
        [("u1", 0, "p1", 0.5), ("u1", 0, "p2", 2.0), ("u2", 0, "p1", 1.0), ("u2", 1, "p1", 3.0),
         ("u3", 1, "p9", 1.0)],  # p9 has no entry in group 1: nothing reaches u3
        "customer_id string, group int, product_id string, w double")
    table = spark.createDataFrame(
        [(0, "p1", "A", 0.2), (0, "p2", "A", 0.1), (0, "p2", "B", 0.4), (1, "p1", "B", 1.5)],
        "group int, product_id string, persona string, value double")
    actual = persona_model.weighted_product_sums(rows, table, "total")
    expected = (rows.join(table, ["group", "product_id"]).groupBy("customer_id", "persona")
                .agg(F.sum(F.col("w") * F.col("value")).alias("total")))
    assert_approx_df_equality(actual, expected, precision=1e-12, ignore_row_order=True, ignore_nullable=True)
