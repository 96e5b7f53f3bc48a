"""The persona model's fits and its per-customer sums: each is the maths it replaces.

The profile logistics and the stacker are minimised by scipy on the executors, and the vote and
profile sums are sparse products per batch of customers; these tests hold them to the definitions
(the L2 logistic's optimality condition, MLlib's standardised logistic, the plain join-and-sum).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import Window
from pyspark.sql import functions as F

from persona_lib import persona_model
from persona_lib.config import ModelConfig
from persona_lib.persona_scoring import ScoringTables, customer_features


def _profile_rows(seed: int = 3) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    personas = ["A", "B", "C"]
    rows = []
    for customer in range(40):
        # A customer's labels row (no product; its personas' indices), then its products' rows.
        given = [i for i in range(len(personas)) if rng.random() < 0.4]
        rows.append((7, f"u{customer}", ",".join(map(str, given)), None, None))
        for product in rng.choice(12, size=int(rng.integers(1, 5)), replace=False):
            rows.append((7, f"u{customer}", None, f"p{product}", float(rng.random())))
    rows.append((7, "u-unknown", "0", None, None))  # no known product: still trains the intercept
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
    labels = rows[rows["product_id"].isna()].set_index("customer_id")["positives"]
    for index, persona in enumerate(personas):
        y = np.array([str(index) in labels[u].split(",") for u in customers], dtype=float)
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


def test_customer_features_sum_the_product_tables_like_a_join(spark):
    """The vote and profile sums of ``customer_features`` (sparse products on the executors) equal
    the join of the customers' products with the tables, summed per customer and persona."""
    personas, products = ["A", "B"], ["p1", "p2", "p9"]
    edges = [("u1", "p1"), ("u1", "p2"), ("u2", "p1"), ("u3", "p9"), ("u3", "p-unknown")]
    idf = {"p1": 0.5, "p2": 2.0, "p9": 1.0}
    frac = {("p1", "A"): 0.2, ("p2", "A"): 0.1, ("p2", "B"): 0.4}  # p9: no labelled buyer
    weight = {("p1", "B"): 1.5, ("p9", "A"): -0.7}
    dense = lambda table: np.array([[table.get((p, m), 0.0) for m in personas] for p in products])
    tables = ScoringTables(
        personas=np.asarray(personas, dtype=object), features=("vote_mean", "vote_log_sum", "profile_logit"),
        products=pd.Index(products), idf=np.array([idf[p] for p in products]), labelled=np.array([True, True, False]),
        frac=dense(frac), weight=dense(weight), item=None, profile_intercepts=np.array([0.25, -0.25]),
        intercepts=np.zeros(2), slopes=np.zeros((2, 3)), thresholds=np.zeros(2), unit=1.0)
    customers = ["u1", "u2", "u3"]
    values, sizes = customer_features(tables, 3, np.array([customers.index(c) for c, _ in edges]),
                                      np.array([p for _, p in edges], dtype=object), np.zeros((3, 2)), 0.0)
    actual = spark.createDataFrame(
        [(c, m, float(values["vote_mean"][0][i, j]), float(values["profile_logit"][0][i, j]))
         for i, c in enumerate(customers) for j, m in enumerate(personas)],
        "customer_id string, persona string, vote_mean double, profile_logit double")

    pairs = spark.createDataFrame(edges, "customer_id string, product_id string")
    known = pairs.join(spark.createDataFrame(list(idf.items()), "product_id string, idf double"), "product_id")
    cross = known.crossJoin(spark.createDataFrame([(m,) for m in personas], "persona string"))
    table = lambda rows: spark.createDataFrame([(p, m, v) for (p, m), v in rows.items()],
                                               "product_id string, persona string, value double")
    x = known.select("customer_id", "product_id", (F.col("idf") / F.sqrt(F.sum(F.col("idf") ** 2).over(
        Window.partitionBy("customer_id")))).alias("x"))
    reached = known.where(F.col("product_id") != "p9").groupBy("customer_id").agg(F.sum("idf").alias("reached"))
    votes = (cross.join(table(frac), ["product_id", "persona"], "left").groupBy("customer_id", "persona")
             .agg(F.sum(F.col("idf") * F.coalesce(F.col("value"), F.lit(0.0))).alias("vote")))
    profile = (x.crossJoin(spark.createDataFrame([("A", 0.25), ("B", -0.25)], "persona string, b double"))
               .join(table(weight), ["product_id", "persona"], "left").groupBy("customer_id", "persona")
               .agg((F.first("b") + F.sum(F.col("x") * F.coalesce(F.col("value"), F.lit(0.0)))).alias("profile_logit")))
    expected = (votes.join(reached, "customer_id", "left").join(profile, ["customer_id", "persona"])
                .select("customer_id", "persona",
                        F.when(F.col("reached") > 0, F.col("vote") / F.col("reached")).otherwise(0.0).alias("vote_mean"),
                        "profile_logit"))
    assert_approx_df_equality(actual, expected, precision=1e-12, ignore_row_order=True, ignore_nullable=True)
    assert list(sizes) == [2, 1, 2]  # an unknown product counts in the basket's size only


def test_the_fits_give_the_same_model_for_their_rows_in_any_order():
    """Stopped at max_iter, L-BFGS follows the order of its sums: the fits sort their rows, so the
    order a shuffle delivers them in cannot move the model."""
    rows, personas = _profile_rows()
    shuffled = rows.sample(frac=1.0, random_state=7).reset_index(drop=True)
    by_key = lambda frame: frame.sort_values(["persona", "product_id"], na_position="first").reset_index(drop=True)
    # Bit for bit: unsorted, the shuffled rows' sums round differently (by 1e-15 here, amplified
    # to 1e-3 over 200 iterations on a pipeline's rows).
    pd.testing.assert_frame_equal(by_key(persona_model._fit_profile_group(rows, personas, 1.0, 5)),
                                  by_key(persona_model._fit_profile_group(shuffled, personas, 1.0, 5)), check_exact=True)
    rng = np.random.default_rng(11)
    features = ["walk_share", "vote_mean"]
    stack_rows = pd.DataFrame({"persona": rng.choice(personas, 300), "label": (rng.random(300) < 0.3).astype(float),
                               "walk_share": rng.random(300), "vote_mean": rng.random(300)})
    fit = lambda frame: persona_model._fit_stacker_rows(frame, personas, features, 0.01, 5)
    pd.testing.assert_frame_equal(fit(stack_rows), fit(stack_rows.sample(frac=1.0, random_state=3).reset_index(drop=True)),
                                  check_exact=True)
