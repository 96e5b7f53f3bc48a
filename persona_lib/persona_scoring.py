"""Scoring with a fitted persona model, without Spark.

- ``score_basket``: one shopper from the model's artifact (``persona_model.PersonaModel.artifact()``,
  coefficients plus per-product x persona tables), numpy only. A JVM-free server (the cold-start
  pyfunc) imports only this module.
- ``score_customers``: many customers at once from ``ScoringTables`` (the same tables as dense
  arrays), numpy and scipy.sparse. ``persona_model.score`` runs it on each Arrow batch of
  customers on the executors: every feature of a customer is a function of its own products and
  walk scores, so one pass over customers replaces a join per feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd


def score_basket(artifact: dict, products: list[str]) -> list[dict]:
    """The model's rows for one shopper from its products, with numpy only (no Spark).

    Same features as ``score`` with the shopper as one more customer: the one-step walk
    (1/|S|) sum of product affinities (the walk for lhat = 1), the vote, the profile and the
    item share over its known products. Unknown products are ignored.
    """
    table = artifact["products"]
    known = [p for p in dict.fromkeys(products) if p in table]
    if not known:
        return []
    personas = artifact["personas"]
    k = len(known)
    rows = [table[p] for p in known]
    walk = np.array([sum(r["affinity"].get(m, 0.0) for r in rows) / k for m in personas])
    scaled = walk / artifact["unit"]
    total = scaled.sum()
    order = sorted(range(len(personas)), key=lambda i: (-scaled[i], personas[i]))
    rank = np.empty(len(personas))
    rank[order] = np.arange(1, len(personas) + 1)
    idf = np.array([r["idf"] for r in rows])
    reached = np.array([r["labelled"] > 0 for r in rows])
    vote = np.array([sum(r["idf"] * r["frac"].get(m, 0.0) for r in rows) for m in personas])
    idf_total = idf[reached].sum()
    x = np.maximum(idf, 1e-6)
    x = x / np.sqrt((x * x).sum())
    profile = np.array([artifact["profile_intercepts"][m] + sum(xi * r["weight"].get(m, 0.0) for xi, r in zip(x, rows))
                        for m in personas])
    values = {
        "walk_share": scaled / total if total > 0 else np.zeros(len(personas)),
        "walk_reciprocal_rank": 1.0 / rank,
        "walk_log_score": np.log1p(scaled),
        "log_products": np.full(len(personas), math.log1p(k)),
        "vote_mean": vote / idf_total if idf_total > 0 else np.zeros(len(personas)),
        "vote_log_sum": np.log1p(vote),
        "profile_logit": profile,
        "item_share": np.array([sum(r["item"].get(m, 0.0) for r in rows) / k for m in personas]),
    }
    out = []
    for i, m in enumerate(personas):
        logit = artifact["intercepts"][m] + sum(artifact["slopes"][m][f] * values[f][i] for f in artifact["features"])
        probability = 1.0 / (1.0 + math.exp(-logit))
        out.append({"persona": m, "score": float(walk[i]), "probability": probability,
                    "threshold": artifact["thresholds"][m], "matched_products": k})
    out.sort(key=lambda r: (-r["probability"], r["persona"]))
    for i, r in enumerate(out):
        r["rank"] = i + 1
        r["published"] = r["probability"] >= r["threshold"] or i == 0
    return out


@dataclass(frozen=True)
class ScoringTables:
    """A fitted persona model as arrays: P products (rows) x K personas (columns, sorted)."""

    personas: np.ndarray               # K persona names, sorted (the rank's tie-break order)
    features: tuple[str, ...]          # the stacker's features, in its order
    products: pd.Index                 # P product ids
    idf: np.ndarray                    # P: log(customers / buyers)
    labelled: np.ndarray               # P: bought by a labelled customer (the vote reaches it)
    frac: np.ndarray                   # P x K: share of its labelled buyers labelled with the persona
    weight: np.ndarray                 # P x K: the profile logistic's weights
    item: Optional[np.ndarray]         # P x K: 1.0 where the product is labelled with the persona
    profile_intercepts: np.ndarray     # K
    intercepts: np.ndarray             # K: the stacker's
    slopes: np.ndarray                 # K x features
    thresholds: np.ndarray             # K
    unit: float                        # the walk score unit


SCORE_COLUMNS = ("score", "probability", "probability_low", "probability_high", "threshold")


def score_customers(tables: ScoringTables, customers: int, edge_customer: np.ndarray, edge_product: np.ndarray,
                    walk: np.ndarray, epsilon: float) -> dict[str, np.ndarray]:
    """Per customer (rows 0..customers-1) x persona (columns): ``SCORE_COLUMNS`` as
    customers x K arrays, and ``products`` (customers,): the customer's edge count.

    ``edge_customer``/``edge_product``: one entry per distinct (customer row, product id) pair;
    products the tables do not know count in the size only. ``walk``: customers x K raw walk
    scores (0 where unreached), certified within ``epsilon``: the exact score lies in
    [s, s + epsilon], which gives each walk feature, and the probability, an interval.
    """
    values, sizes = customer_features(tables, customers, edge_customer, edge_product, walk / tables.unit,
                                      epsilon / tables.unit)
    logit = np.repeat(tables.intercepts[None, :], customers, axis=0)
    low, high = logit.copy(), logit.copy()
    for j, name in enumerate(tables.features):
        slope = tables.slopes[None, :, j]
        value, lowest, highest = values[name]
        logit = logit + slope * value
        low = low + np.minimum(slope * lowest, slope * highest)
        high = high + np.maximum(slope * lowest, slope * highest)
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: probability 0
        probability = [1.0 / (1.0 + np.exp(-z)) for z in (logit, low, high)]
    return {"score": walk, "probability": probability[0], "probability_low": probability[1],
            "probability_high": probability[2],
            "threshold": np.repeat(tables.thresholds[None, :], customers, axis=0), "products": sizes}


def customer_features(tables: ScoringTables, customers: int, edge_customer: np.ndarray, edge_product: np.ndarray,
                      walk_units: np.ndarray, epsilon_units: float
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """({feature: (value, lowest, highest)} as customers x K arrays, the customers' edge counts)
    for ``tables.features``: ``score_customers``'s arguments, the walk already in units."""
    from scipy import sparse  # executor-side, like the profile fit

    k = len(tables.personas)
    codes = tables.products.get_indexer(edge_product)
    known = codes >= 0
    rows, cols = edge_customer[known], codes[known]
    sizes = np.bincount(edge_customer, minlength=customers).astype(float)

    def per_customer(weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(sparse.csr_matrix((weights, (rows, cols)), shape=(customers, len(tables.products))) @ matrix)

    idf = tables.idf[cols]
    # The profile: binary TF x IDF, L2-normalised per customer.
    x = np.maximum(idf, 1e-6)
    x = x / np.sqrt(np.bincount(rows, x * x, minlength=customers))[rows]
    profile = tables.profile_intercepts[None, :] + per_customer(x, tables.weight)
    # The IDF-weighted vote of the products' labelled buyers.
    reached_idf = np.where(tables.labelled[cols], idf, 0.0)
    vote = per_customer(reached_idf, tables.frac)
    idf_total = np.bincount(rows, reached_idf, minlength=customers)[:, None]
    log_products = np.repeat(np.log1p(sizes)[:, None], k, axis=1)

    values = {  # feature -> (value, its lowest, its highest)
        **walk_feature_bounds(walk_units, epsilon_units),
        "log_products": (log_products,) * 3,
        "vote_mean": (ratio(vote, idf_total),) * 3,
        "vote_log_sum": (np.log1p(vote),) * 3,
        "profile_logit": (profile,) * 3,
    }
    if "item_share" in tables.features:
        values["item_share"] = (ratio(per_customer(np.ones(len(rows)), tables.item), sizes[:, None]),) * 3
    return values, sizes


def walk_feature_bounds(s: np.ndarray, e: float) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The walk features of customers (rows) x personas (columns, sorted) from their walk scores
    ``s`` in units, each as (value, lowest, highest) over every exact score the certificate
    allows: RevAff never overestimates (all values are non-negative and the entries below
    theta are dropped, never added), so the exact score lies in [s, s + e].

    walk_share: s / the customer's total; walk_reciprocal_rank: 1 / rank, ties to the earlier
    persona; walk_log_score: log1p(s).
    """
    k = s.shape[1]
    total = s.sum(axis=1, keepdims=True)
    rank = np.empty(s.shape)
    np.put_along_axis(rank, np.argsort(-s, axis=1, kind="stable"), np.arange(1.0, k + 1.0)[None, :], axis=1)
    reciprocal_rank = 1.0 / rank
    if e > 0:
        # The other personas surely above m (s_n > s_m + e) and possibly above it (s_n + e >= s_m,
        # which m itself meets: hence the - 1). customers x K x K booleans: K is the taxonomy.
        surely = (s[:, None, :] > (s + e)[:, :, None]).sum(axis=2)
        possibly = ((s[:, None, :] + e) >= s[:, :, None]).sum(axis=2) - 1
        rank_bounds = (1.0 / (1 + possibly), 1.0 / (1 + surely))
    else:
        rank_bounds = (reciprocal_rank, reciprocal_rank)
    return {"walk_share": (ratio(s, total), ratio(s, total + (k - 1) * e), ratio(s + e, total + e)),
            "walk_reciprocal_rank": (reciprocal_rank, *rank_bounds),
            "walk_log_score": (np.log1p(s), np.log1p(s), np.log1p(s + e))}


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator where the denominator is positive, else 0."""
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)
