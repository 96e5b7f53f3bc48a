"""Serving: the per-customer predictive query of the product page, and persona-conditioned
re-ranking.

``predict`` takes the query shape of the product page:

    {"from": "customer_purchases", "where": {"customer_id": "12347"},
     "predict": "persona", "select": ["$p", "$why", "persona"], "limit": 3}

and returns rows best first, each with the selected keys: ``$p`` the persona's probability,
``$why`` the evidence, ``persona`` its name (also ``score``, ``rank``, ``source``,
``is_ambiguous`` on request). A customer the tables do not know, given its products
(``"where": {"products": [...]}``), is scored by the cold-start model. Reads pin the latest
complete run, so a query never sees half a run.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from persona_lib import publishing, storage
from persona_lib.config import AppConfig
from persona_lib.errors import InputError
from persona_lib.storage import TableRef, Tables

QUERY_KEYS = {"from", "where", "predict", "select", "limit"}
SOURCES_FROM = {"customer_purchases"}
SELECTABLE = {"$p", "$why", "persona", "score", "rank", "source", "is_ambiguous"}
DEFAULT_SELECT = ["$p", "$why", "persona"]


def validate(query: Any) -> dict:
    """The query with defaults filled in; an invalid one raises naming the wrong field."""
    if not isinstance(query, dict):
        raise InputError("query: expected a JSON object with from, where, predict, select, limit")
    unknown = sorted(set(query) - QUERY_KEYS)
    if unknown:
        raise InputError(f"query: unknown field(s) {unknown}; allowed: {sorted(QUERY_KEYS)}")
    source = query.get("from", "customer_purchases")
    if source not in SOURCES_FROM:
        raise InputError(f"query.from: {source!r} is not queryable; use one of {sorted(SOURCES_FROM)}")
    if query.get("predict", "persona") != "persona":
        raise InputError(f"query.predict: {query.get('predict')!r} is not predictable; use \"persona\"")
    where = query.get("where")
    if not isinstance(where, dict) or not where:
        raise InputError("query.where: expected an object with customer_id and/or products")
    bad_where = sorted(set(where) - {"customer_id", "products"})
    if bad_where:
        raise InputError(f"query.where: unknown field(s) {bad_where}; allowed: customer_id, products")
    customer = where.get("customer_id")
    if customer is not None and not (isinstance(customer, (str, int)) and str(customer).strip()):
        raise InputError(f"query.where.customer_id: expected a customer id string, got {customer!r}")
    products = where.get("products")
    if products is not None and (not isinstance(products, list) or not all(isinstance(p, str) for p in products)):
        raise InputError(f"query.where.products: expected a list of product ids, got {products!r}")
    if customer is None and not products:
        raise InputError("query.where: give customer_id, or products for a new shopper")
    select = query.get("select", DEFAULT_SELECT)
    if not isinstance(select, list) or not select:
        raise InputError(f"query.select: expected a non-empty list drawn from {sorted(SELECTABLE)}")
    bad_select = [s for s in select if s not in SELECTABLE]
    if bad_select:
        raise InputError(f"query.select: unknown column(s) {bad_select}; allowed: {sorted(SELECTABLE)}")
    limit = query.get("limit", 5)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"query.limit: expected a positive integer, got {limit!r}")
    return {"from": source, "where": {"customer_id": None if customer is None else str(customer).strip(),
                                      "products": products or []},
            "predict": "persona", "select": select, "limit": limit}


def predict(query: dict, spark: SparkSession, config: AppConfig) -> list[dict]:
    """Rows for the query, best first (an empty list if the customer is unknown and no products)."""
    return answer(query, spark, config)["rows"]


def answer(query: dict, spark: SparkSession, config: AppConfig) -> dict:
    """The query's rows and whether the latest complete run knows what was asked about.

    ``found``: rows came back (the customer's own, or the cold-start model's from at least one
    known product). ``answered_by``: "customer", "cold_start" or None. ``customer_found`` (None
    when no customer was asked about) and ``unknown_products``: which part was not known.
    """
    spec = validate(query)
    tables = storage.resolve_tables(config)
    customer_id = spec["where"]["customer_id"]
    products = spec["where"]["products"]
    result = {"found": False, "answered_by": None, "customer_id": customer_id, "customer_found": None,
              "unknown_products": [], "rows": []}
    if customer_id is not None:
        rows = _known_customer_rows(spark, tables, customer_id, spec["limit"], config.publishing.why_products)
        result["customer_found"] = bool(rows)
        if rows:
            return {**result, "found": True, "answered_by": "customer",
                    "rows": [_project(r, spec["select"]) for r in rows]}
    if products:
        unknown = unknown_products(spark, tables, products)
        result["unknown_products"] = unknown
        if len(unknown) < len(set(products)):
            rows = cold_start_rows(spark, config, tables.runs, products, spec["limit"])
            if rows:
                return {**result, "found": True, "answered_by": "cold_start",
                        "rows": [_project(r, spec["select"]) for r in rows]}
    return result


def unknown_products(spark: SparkSession, tables: Tables, products: list[str]) -> list[str]:
    """The products (in the order given) that the latest complete run has no personas for."""
    asked = list(dict.fromkeys(products))
    known = {r["product_id"] for r in publishing.read_current(spark, tables, "product_personas")
             .where(F.col("product_id").isin(*asked)).select("product_id").distinct().collect()}
    return [p for p in asked if p not in known]


def _known_customer_rows(spark: SparkSession, tables: Tables, customer_id: str, limit: int,
                         why_products: int) -> list[dict]:
    affinity = publishing.read_current(spark, tables, "persona_affinity")
    summary = publishing.read_current(spark, tables, "customer_personas")
    rows = affinity.where(F.col("customer_id") == customer_id).orderBy("rank").limit(limit).collect()
    if not rows:
        return []
    customer = summary.where(F.col("customer_id") == customer_id).select("is_ambiguous", "why").first()
    evidence = why_by_persona(spark, tables, customer_id, [r["persona"] for r in rows], why_products)
    return [{
        "persona": r["persona"], "probability": r["probability"], "score": r["score"], "rank": r["rank"],
        "source": r["source"], "is_ambiguous": bool(customer["is_ambiguous"]) if customer else True,
        "why": {
            "products": evidence.get(r["persona"], []),
            "labelled_neighbours": customer["why"]["labelled_neighbours"] if customer else 0,
            "llm_evidence": customer["why"]["llm_evidence"] if customer else None,
        },
    } for r in rows]


def why_by_persona(spark: SparkSession, tables: Tables, customer_id: str, personas: list[str],
                   limit: int) -> dict[str, list[dict]]:
    """Per persona, the customer's products that contribute most to its walk score.

    Product v of customer u adds (1/d(u)) x product_personas[v, m] to u's score for m; this
    reads one customer's products, so it is cheap enough to compute at query time.
    """
    events = tables.purchase_events.read(spark)
    bought = events.where(F.col("customer_id") == customer_id).select("product_id").distinct()
    degree = bought.count()
    if degree == 0:
        return {}
    products = publishing.read_current(spark, tables, "product_personas").where(F.col("persona").isin(*personas))
    titles = tables.products.read(spark).select("product_id", "title")
    best = Window.partitionBy("persona").orderBy(F.desc("score"), F.asc("product_id"))
    rows = (
        bought.join(products, "product_id").withColumn("_rank", F.row_number().over(best))
        .where(F.col("_rank") <= limit).join(titles, "product_id", "left")
        .orderBy("persona", "_rank").collect()
    )
    evidence: dict[str, list[dict]] = {}
    for r in rows:
        evidence.setdefault(r["persona"], []).append(
            {"product_id": r["product_id"], "title": r["title"], "weight": r["score"] / degree})
    return evidence


def cold_start_rows(spark: SparkSession, config: AppConfig, runs: TableRef, products: list[str],
                    limit: int) -> list[dict]:
    """Score a new shopper with the cold-start model of the latest complete run of ``runs``
    (``config``: where MLflow keeps the model)."""
    from persona_lib import cold_start, tracking

    run = publishing.latest_run(spark, runs)
    if run is None:
        raise InputError("no complete run yet: run `personas run` before scoring new shoppers")
    tracking.configure(config)
    model = cold_start.load_model(f"models:/{config.tracking.registered_model}@{run_alias(run['run_id'])}")
    import pandas as pd

    scored = model.predict(pd.DataFrame({"products": [products]})).head(limit)
    return [{
        "persona": r.persona, "probability": float(r.probability), "score": float(r.score), "rank": int(r.rank),
        "source": "cold_start", "is_ambiguous": False,
        "why": {"products": [], "labelled_neighbours": 0, "llm_evidence": None,
                "matched_products": int(r.matched_products)},
    } for r in scored.itertuples()]


def run_alias(run_id: str) -> str:
    return f"run_{run_id[:12]}"


def _project(row: dict, select: list[str]) -> dict:
    names = {"$p": "probability", "$why": "why"}
    return {key: row[names.get(key, key)] for key in select}


# --------------------------------------------------------------------------- re-ranking


def persona_match(customer_vectors: DataFrame, product_vectors: DataFrame) -> DataFrame:
    """(customer_id, product_id, persona_score): the dot product of their persona vectors."""
    return (
        customer_vectors.select("customer_id", "persona", F.col("probability").alias("_cp"))
        .join(product_vectors.select("product_id", "persona", F.col("score").alias("_pp")), "persona")
        .groupBy("customer_id", "product_id").agg(F.sum(F.col("_cp") * F.col("_pp")).alias("persona_score"))
    )


def rerank(candidates: DataFrame, persona_affinity: DataFrame, customer_personas: DataFrame,
           product_personas: DataFrame, weight: float) -> DataFrame:
    """Re-rank (customer_id, product_id, base_score) candidates with persona affinity.

    final = (1 - weight) x base (min-max scaled per customer) + weight x persona match
    (scaled per customer). Ambiguous customers keep their base order (weight 0), since
    their persona order is not certified. Adds persona_score, final_score and rank.
    """
    confident = customer_personas.where(~F.col("is_ambiguous")).select("customer_id")
    vectors = persona_affinity.join(confident, "customer_id")
    scored = candidates.join(persona_match(vectors, product_personas), ["customer_id", "product_id"], "left")
    per_customer = Window.partitionBy("customer_id")
    base = _scaled(F.col("base_score"), per_customer)
    match = _scaled(F.coalesce(F.col("persona_score"), F.lit(0.0)), per_customer)
    conditioned = F.max(F.col("persona_score").isNotNull().cast("int")).over(per_customer) == 1
    final = F.when(conditioned, (1 - weight) * base + weight * match).otherwise(base)
    ranked = scored.withColumn("final_score", final)
    order = Window.partitionBy("customer_id").orderBy(F.desc("final_score"), F.desc("base_score"), F.asc("product_id"))
    return ranked.withColumn("rank", F.row_number().over(order))


def _scaled(value: Column, window) -> Column:
    low, high = F.min(value).over(window), F.max(value).over(window)
    return F.when(high > low, (value - low) / (high - low)).otherwise(F.lit(0.0))


def query_from_json(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"query: not valid JSON ({exc})") from exc


def rerank_sql(config: AppConfig, candidates_view: str = "candidates", weight: Optional[float] = None) -> str:
    """The same re-ranking as SQL over the current_* views (docs/sql.md shows it)."""
    w = config.query.rerank_weight if weight is None else weight
    return f"""
WITH match AS (
  SELECT c.customer_id, c.product_id, SUM(a.probability * p.score) AS persona_score
  FROM {candidates_view} c
  JOIN current_customer_personas cp ON cp.customer_id = c.customer_id AND NOT cp.is_ambiguous
  JOIN current_persona_affinity a ON a.customer_id = c.customer_id
  JOIN current_product_personas p ON p.product_id = c.product_id AND p.persona = a.persona
  GROUP BY c.customer_id, c.product_id
), scored AS (
  SELECT c.*, m.persona_score,
    (c.base_score - MIN(c.base_score) OVER w) / NULLIF(MAX(c.base_score) OVER w - MIN(c.base_score) OVER w, 0) AS base_scaled,
    (COALESCE(m.persona_score, 0) - MIN(COALESCE(m.persona_score, 0)) OVER w)
      / NULLIF(MAX(COALESCE(m.persona_score, 0)) OVER w - MIN(COALESCE(m.persona_score, 0)) OVER w, 0) AS match_scaled,
    MAX(CASE WHEN m.persona_score IS NULL THEN 0 ELSE 1 END) OVER w AS conditioned
  FROM {candidates_view} c LEFT JOIN match m USING (customer_id, product_id)
  WINDOW w AS (PARTITION BY c.customer_id)
)
SELECT customer_id, product_id, base_score, persona_score,
  CASE WHEN conditioned = 1 THEN {1 - w} * COALESCE(base_scaled, 0) + {w} * COALESCE(match_scaled, 0)
       ELSE COALESCE(base_scaled, 0) END AS final_score
FROM scored
ORDER BY customer_id, final_score DESC, base_score DESC, product_id
""".strip()
