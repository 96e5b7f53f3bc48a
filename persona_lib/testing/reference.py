"""An independent single-machine GPLR affinity (scipy sparse), the oracle for the Spark code.

Written from the paper's formulas (restated here), not from persona_lib.propagation:
Psi = (1/lhat) sum_{l=1..lhat} (P P')^l L, with P[u, v] = w_uv / W_u and P'[v, u] = w_uv / W_v,
L[u, m] = c_m / |Phi_u| for each label, c_m = (min share / share of m) ** beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse


@dataclass
class ExactAffinity:
    customers: list      # row order of customer_scores
    products: list       # row order of product_scores
    personas: list       # column order
    customer_scores: np.ndarray  # customers x personas
    product_scores: np.ndarray   # products x personas (P' L)

    def customer_frame(self) -> pd.DataFrame:
        """(customer_id, persona, score) for every non-zero entry."""
        return _long(self.customer_scores, self.customers, self.personas, "customer_id")

    def product_frame(self) -> pd.DataFrame:
        return _long(self.product_scores, self.products, self.personas, "product_id")


def _long(matrix: np.ndarray, rows: list, personas: list, key: str) -> pd.DataFrame:
    r, c = np.nonzero(matrix)
    return pd.DataFrame({key: np.asarray(rows, dtype=object)[r], "persona": np.asarray(personas, dtype=object)[c],
                         "score": matrix[r, c]})


def seed_matrix(labels: pd.DataFrame, customers: list, beta: float) -> tuple[sparse.csr_matrix, list]:
    """L (customers x personas) from (customer_id, persona) rows; labels of unknown customers dropped."""
    index = {c: i for i, c in enumerate(customers)}
    labels = labels[["customer_id", "persona"]].astype(str).drop_duplicates()
    labels = labels[labels["customer_id"].isin(index)]
    personas = sorted(labels["persona"].unique())
    if not personas:
        return sparse.csr_matrix((len(customers), 0)), []
    share = labels["persona"].value_counts(normalize=True)
    debias = (share.min() / share) ** beta
    per_customer = labels.groupby("customer_id")["persona"].transform("count")
    rows = labels["customer_id"].map(index).to_numpy()
    cols = labels["persona"].map({p: j for j, p in enumerate(personas)}).to_numpy()
    values = labels["persona"].map(debias).to_numpy() / per_customer.to_numpy()
    return sparse.csr_matrix((values, (rows, cols)), shape=(len(customers), len(personas))), personas


@dataclass
class WalkMatrices:
    customers: list
    products: list
    to_products: sparse.csr_matrix   # P: customers x products, rows sum to 1
    to_customers: sparse.csr_matrix  # P': products x customers, rows sum to 1


def walk_matrices(edges: pd.DataFrame) -> WalkMatrices:
    """P and P' from edges (customer_id, product_id[, weight]); duplicate pairs count once."""
    edges = edges.copy()
    edges["customer_id"] = edges["customer_id"].astype(str)
    edges["product_id"] = edges["product_id"].astype(str)
    if "weight" not in edges:
        edges["weight"] = 1.0
    edges = edges.groupby(["customer_id", "product_id"], as_index=False)["weight"].max()
    customers = sorted(edges["customer_id"].unique())
    products = sorted(edges["product_id"].unique())
    u = edges["customer_id"].map({c: i for i, c in enumerate(customers)}).to_numpy()
    v = edges["product_id"].map({p: j for j, p in enumerate(products)}).to_numpy()
    w = edges["weight"].to_numpy(dtype=float)
    adjacency = sparse.csr_matrix((w, (u, v)), shape=(len(customers), len(products)))
    customer_sums = np.asarray(adjacency.sum(axis=1)).ravel()
    product_sums = np.asarray(adjacency.sum(axis=0)).ravel()
    return WalkMatrices(customers, products,
                        (sparse.diags(1.0 / customer_sums) @ adjacency).tocsr(),
                        (sparse.diags(1.0 / product_sums) @ adjacency.T).tocsr())


def affinity(walk: WalkMatrices, seeds: sparse.csr_matrix, lhat: int) -> tuple[np.ndarray, np.ndarray]:
    """(Psi customers x personas, P' L products x personas) by sparse products P (P' X)."""
    half = walk.to_customers @ seeds
    layer = seeds
    total = np.zeros(seeds.shape)
    for _ in range(lhat):
        layer = walk.to_products @ (walk.to_customers @ layer)
        total += layer.toarray() if sparse.issparse(layer) else layer
    return total / lhat, (half.toarray() if sparse.issparse(half) else np.asarray(half))


def exact_affinity(edges: pd.DataFrame, labels: pd.DataFrame, lhat: int, beta: float = 0.5) -> ExactAffinity:
    """edges: customer_id, product_id[, weight]; labels: customer_id, persona."""
    walk = walk_matrices(edges)
    seeds, personas = seed_matrix(labels, walk.customers, beta)
    customer_scores, product_scores = affinity(walk, seeds, lhat)
    return ExactAffinity(walk.customers, walk.products, personas, customer_scores, product_scores)
