"""Scoring one shopper with a fitted persona model's artifact: numpy only, no Spark.

The artifact is ``persona_model.PersonaModel.artifact()`` (coefficients plus per-product x
persona tables). A JVM-free server (the cold-start pyfunc) imports only this module.
"""

from __future__ import annotations

import math

import numpy as np


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
