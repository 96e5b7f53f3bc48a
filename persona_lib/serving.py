"""``personas serve``: persona answers in milliseconds, from the latest complete run, without a JVM.

The service reads the published Delta tables with delta-rs (``deltalake``) at the versions the
``runs`` table names for the latest complete run (as ``publishing.latest_run`` and the
``current_*`` views do), holds them in memory as column arrays, and answers:

- ``POST /query``: the product page's query, validated and answered as ``query.predict`` does;
- ``GET /customers/{id}/personas``: the published personas with probability, rank, confidence,
  ambiguity and why;
- ``POST /cold-start``: a new shopper's personas from the run's cold-start model (MLflow registry);
- ``POST /rerank``: candidates re-ranked by persona affinity (``query.rerank``'s math);
- ``GET /health``: the run served, its table versions and when it was loaded.

Freshness: a watcher thread polls the ``runs`` and ``tombstones`` tables. A new complete run is
loaded into a new ``Snapshot`` beside the one being served, then one reference is swapped, so a
request (which reads that reference once) never sees a mix of two runs. A tombstone (the keyed
hash ``personas forget`` writes) hides its customer from the next poll on, without a new run.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona_lib.config import AppConfig
from persona_lib.errors import DependencyError, InputError

# query.validate and run_alias are plain Python; importing query loads pyspark's Python
# modules but starts no JVM.
from persona_lib.query import run_alias, validate
from persona_lib.storage import TableRef, Tables, resolve_tables
from persona_lib.tombstones import customer_hash, tombstone_key

log = logging.getLogger("personas.serve")

OUTPUT_TABLES = ("persona_affinity", "customer_personas", "product_personas")


# --------------------------------------------------------------------------- tombstones

def tombstone_hashes(customer_id: str, key: bytes) -> tuple[str, ...]:
    """The hash a tombstone of this customer carries (``personas forget``'s keyed hash)."""
    return (customer_hash(customer_id, key),)


# --------------------------------------------------------------------------- Delta access


class TableMissing(Exception):
    pass


def table_location(ref: TableRef) -> str:
    """The Delta path of a table; catalog tables cannot be read without a metastore."""
    if ref.is_catalog:
        raise InputError(
            f"tables.{ref.name}: {ref.location!r} is a catalog table; personas serve reads Delta paths "
            "(on Databricks serve through Model Serving and Lakebase synced tables, see README)")
    return ref.location


def open_table(ref: TableRef, version: Optional[int] = None):
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

    key, location = ref.name, table_location(ref)
    try:
        return DeltaTable(location, version=version)
    except TableNotFoundError as exc:
        raise TableMissing(f"{key}: no Delta table at {location}") from exc
    except DeltaProtocolError as exc:
        raise unreadable(key, location, exc) from exc


def read_arrow(ref: TableRef, columns: list[str], version: Optional[int] = None) -> pa.Table:
    from deltalake.exceptions import DeltaProtocolError

    table = open_table(ref, version)
    try:
        return table.to_pyarrow_table(columns=columns)
    except DeltaProtocolError as exc:
        raise unreadable(ref.name, table.table_uri, exc) from exc


def unreadable(key: str, location: str, exc: Exception) -> DependencyError:
    import deltalake

    return DependencyError(
        f"{key} ({location}): delta-rs (deltalake {deltalake.__version__}) cannot read this table: "
        f"{exc}. Its protocol uses a reader feature delta-rs does not support; upgrade deltalake, or "
        "disable the feature on the table (e.g. ALTER TABLE ... DROP FEATURE) and republish")


def latest_complete_run(runs_table: TableRef) -> Optional[dict]:
    """``publishing.latest_run`` without Spark: newest finished_at, then run_id."""
    try:
        runs = read_arrow(runs_table, ["run_id", "status", "finished_at", "table_versions"]).to_pylist()
    except TableMissing:
        return None
    complete = [r for r in runs if r["status"] == "complete" and r["finished_at"] is not None]
    if not complete:
        return None
    best = max(complete, key=lambda r: (r["finished_at"], r["run_id"]))
    return {"run_id": best["run_id"], "table_versions": dict(best["table_versions"]),
            "finished_at": best["finished_at"]}


def table_version(ref: TableRef) -> Optional[int]:
    try:
        return open_table(ref).version()
    except TableMissing:
        return None


# --------------------------------------------------------------------------- the snapshot


@dataclass(frozen=True)
class Snapshot:
    """One complete run in memory. Customers have a slot; per-slot arrays index the rest."""

    run_id: str
    table_versions: dict
    finished_at: str
    loaded_at: str
    personas: list  # persona code -> name
    slot_of: dict  # customer_id -> slot
    # persona_affinity, sorted by customer then rank: a slot's rows are [aff_start, aff_end).
    aff_start: np.ndarray
    aff_end: np.ndarray
    aff_persona: np.ndarray
    aff_probability: np.ndarray
    aff_score: np.ndarray
    aff_rank: np.ndarray
    aff_source: np.ndarray
    sources: list
    # customer_personas: row of the slot (-1: none) and its columns.
    cp_row: np.ndarray
    cp_personas: Any  # pyarrow ListArray
    cp_source: Any
    cp_confidence: Any
    cp_ambiguous: np.ndarray
    cp_why: Any  # pyarrow StructArray
    # product_personas as a dense matrix (0 where the table has no row: it only keeps score > 0).
    product_ids: list  # product code -> id, sorted, so code order is id order
    product_code: dict
    product_titles: list
    product_matrix: np.ndarray
    # purchase_events' distinct (customer, product) pairs, for the per-persona why.
    edge_start: np.ndarray
    edge_end: np.ndarray
    edge_product: np.ndarray  # product codes with a product_personas row
    degree: np.ndarray  # distinct products bought (all of them, as predict's 1/d(u) counts)
    cold_start_model: Any = None
    cold_start_error: Optional[str] = None
    published_rows: int = 0

    @property
    def customers(self) -> int:
        return len(self.slot_of)


def _sorted_codes(values: pa.Array) -> tuple[list, np.ndarray]:
    """(distinct values sorted, code of each value)."""
    distinct = pc.unique(values).sort()
    codes = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)
    return distinct.to_pylist(), codes


def _index_or_minus_one(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy(zero_copy_only=False)


def build_snapshot(config: AppConfig, tables: Tables, run: dict, load_model: bool = True) -> Snapshot:
    """Read the run's output tables at its versions (and purchase_events, products now)."""
    versions = run["table_versions"]
    missing = [k for k in OUTPUT_TABLES if k not in versions]
    if missing:
        raise InputError(f"run {run['run_id']}: the runs table names no version for {missing}")
    affinity = read_arrow(tables.persona_affinity, ["customer_id", "persona", "probability", "score", "rank", "source"],
                          versions["persona_affinity"])
    summary = read_arrow(tables.customer_personas, ["customer_id", "personas", "source", "confidence", "is_ambiguous", "why"],
                         versions["customer_personas"])
    product_rows = read_arrow(tables.product_personas, ["product_id", "persona", "score"],
                              versions["product_personas"])

    personas = sorted(set(pc.unique(affinity["persona"]).to_pylist())
                      | set(pc.unique(product_rows["persona"]).to_pylist()))
    persona_set = pa.array(personas, pa.string())

    affinity = affinity.sort_by([("customer_id", "ascending"), ("rank", "ascending")])
    aff_ids = affinity["customer_id"].combine_chunks()
    aff_customers = pc.unique(aff_ids)  # in sorted order, since the rows are sorted
    aff_codes = pc.index_in(aff_ids, value_set=aff_customers).to_numpy(zero_copy_only=False)
    boundaries = np.flatnonzero(np.diff(aff_codes)) + 1
    offsets = np.concatenate([[0], boundaries, [len(aff_codes)]]).astype(np.int64)

    cp_ids = summary["customer_id"].combine_chunks()
    all_ids = pc.unique(pa.concat_arrays([aff_customers, cp_ids]))
    aff_slot = _index_or_minus_one(all_ids, aff_customers)
    has_aff = aff_slot >= 0
    aff_start = np.where(has_aff, offsets[np.where(has_aff, aff_slot, 0)], 0)
    aff_end = np.where(has_aff, offsets[np.where(has_aff, aff_slot, 0) + 1], 0)
    source_names, source_codes = _sorted_codes(affinity["source"].combine_chunks())

    product_ids, product_codes = _sorted_codes(product_rows["product_id"].combine_chunks())
    persona_codes = pc.index_in(product_rows["persona"], value_set=persona_set).to_numpy(zero_copy_only=False)
    matrix = np.zeros((len(product_ids), len(personas)), dtype=np.float64)
    matrix[product_codes, persona_codes] = product_rows["score"].to_numpy()
    product_set = pa.array(product_ids, pa.string())
    titles = [None] * len(product_ids)
    try:
        catalogue = read_arrow(tables.products, ["product_id", "title"])
        codes = _index_or_minus_one(catalogue["product_id"].combine_chunks(), product_set)
        for code, title in zip(codes, catalogue["title"].to_pylist()):
            if code >= 0:
                titles[code] = title
    except TableMissing:
        pass

    edge_start, edge_end, edge_product, degree = _edges(tables.purchase_events, all_ids, product_set)
    snapshot = Snapshot(
        run_id=run["run_id"], table_versions={k: int(v) for k, v in versions.items()},
        finished_at=str(run["finished_at"]), loaded_at=datetime.now(timezone.utc).isoformat(),
        personas=personas, slot_of={cid: i for i, cid in enumerate(all_ids.to_pylist())},
        aff_start=aff_start, aff_end=aff_end,
        aff_persona=pc.index_in(affinity["persona"], value_set=persona_set).to_numpy(zero_copy_only=False)
        .astype(np.int32),
        aff_probability=affinity["probability"].to_numpy(), aff_score=affinity["score"].to_numpy(),
        aff_rank=affinity["rank"].to_numpy().astype(np.int32), aff_source=source_codes.astype(np.int16),
        sources=source_names,
        cp_row=_index_or_minus_one(all_ids, cp_ids), cp_personas=summary["personas"].combine_chunks(),
        cp_source=summary["source"].combine_chunks(), cp_confidence=summary["confidence"].combine_chunks(),
        cp_ambiguous=summary["is_ambiguous"].to_numpy().astype(bool),
        cp_why=summary["why"].combine_chunks(),
        product_ids=product_ids, product_code={p: i for i, p in enumerate(product_ids)},
        product_titles=titles, product_matrix=matrix,
        edge_start=edge_start, edge_end=edge_end, edge_product=edge_product, degree=degree,
        published_rows=affinity.num_rows,
    )
    if load_model:
        model, error = _load_cold_start(config, run["run_id"])
        snapshot = _with(snapshot, cold_start_model=model, cold_start_error=error)
    return snapshot


def _with(snapshot: Snapshot, **changes) -> Snapshot:
    import dataclasses

    return dataclasses.replace(snapshot, **changes)


def _edges(purchase_events: TableRef, all_ids: pa.Array, product_set: pa.Array):
    """CSR of each customer's distinct products (those with persona scores) and its degree."""
    slots = len(all_ids)
    try:
        events = read_arrow(purchase_events, ["customer_id", "product_id"])
    except TableMissing:
        empty = np.zeros(slots, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.int32), np.zeros(slots, dtype=np.int32)
    pairs = events.group_by(["customer_id", "product_id"]).aggregate([])
    slot = _index_or_minus_one(pairs["customer_id"].combine_chunks(), all_ids)
    product = _index_or_minus_one(pairs["product_id"].combine_chunks(), product_set)
    known_customer = slot >= 0
    degree = np.bincount(slot[known_customer], minlength=slots).astype(np.int32)
    keep = known_customer & (product >= 0)
    slot, product = slot[keep], product[keep]
    order = np.lexsort((product, slot))
    slot, product = slot[order], product[order].astype(np.int32)
    counts = np.bincount(slot, minlength=slots)
    edge_end = np.cumsum(counts).astype(np.int64)
    return edge_end - counts, edge_end, product, degree


def _load_cold_start(config: AppConfig, run_id: str) -> tuple[Any, Optional[str]]:
    """The run's cold-start pyfunc from the registry (None and why, if it cannot be loaded)."""
    import mlflow

    from persona_lib.tracking import tracking_uri

    uri = f"models:/{config.tracking.registered_model}@{run_alias(run_id)}"
    store = config.workdir_path / "mlflow.db"
    if not config.tracking.tracking_uri and not store.is_file():
        # Opening a missing sqlite store would create (and migrate) an empty one: nothing to load.
        return None, f"the cold-start model {uri} could not be loaded: no MLflow store at {store}"
    # MLflow keeps its store URI per process; every caller in this process uses the same one.
    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_registry_uri(tracking_uri(config))
    try:
        return mlflow.pyfunc.load_model(uri), None
    except Exception as exc:  # noqa: BLE001 - serving the tables must not depend on the model
        log.warning("cold-start model %s not loaded: %s", uri, exc)
        return None, f"the cold-start model {uri} could not be loaded: {exc}"


# --------------------------------------------------------------------------- answers


class ServeError(Exception):
    """An answer that is an error: HTTP status and message (the body is {"error": message})."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class State:
    """What one request reads: a snapshot and the tombstones, swapped together as one reference."""

    snapshot: Optional[Snapshot]
    forgotten: frozenset = frozenset()
    tombstones_version: Optional[int] = None
    key: Optional[bytes] = field(default=None, repr=False)

    def slot(self, customer_id: str) -> Optional[int]:
        slot = self.snapshot.slot_of.get(customer_id)
        if slot is None:
            return None
        if self.forgotten and any(h in self.forgotten for h in tombstone_hashes(customer_id, self.key)):
            return None
        return slot


def _snapshot(state: State) -> Snapshot:
    if state.snapshot is None:
        raise ServeError(503, "no complete run published yet: run `personas run`; the service picks it up")
    return state.snapshot


def _unknown_customer(snapshot: Snapshot, customer_id: str) -> ServeError:
    return ServeError(404, f"customer {customer_id!r} is not in run {snapshot.run_id} "
                           "(unknown, or forgotten)")


def affinity_rows(snapshot: Snapshot, slot: int, limit: Optional[int] = None) -> list[dict]:
    start, end = int(snapshot.aff_start[slot]), int(snapshot.aff_end[slot])
    if limit is not None:
        end = min(end, start + limit)
    return [{"persona": snapshot.personas[snapshot.aff_persona[i]], "probability": float(snapshot.aff_probability[i]),
             "score": float(snapshot.aff_score[i]), "rank": int(snapshot.aff_rank[i]),
             "source": snapshot.sources[snapshot.aff_source[i]]} for i in range(start, end)]


def why_by_persona(snapshot: Snapshot, slot: int, personas: list[str], limit: int) -> dict[str, list[dict]]:
    """``query.why_by_persona`` in memory: per persona, the customer's products with the largest
    (1/d(u)) x product_personas[v, m], ties by product id."""
    degree = int(snapshot.degree[slot])
    if degree == 0:
        return {}
    products = snapshot.edge_product[snapshot.edge_start[slot]:snapshot.edge_end[slot]]
    evidence: dict[str, list[dict]] = {}
    for persona in personas:
        code = snapshot.personas.index(persona)
        scores = snapshot.product_matrix[products, code]
        present = np.flatnonzero(scores > 0)
        if not len(present):
            continue
        order = present[np.lexsort((products[present], -scores[present]))][:limit]
        evidence[persona] = [{"product_id": snapshot.product_ids[products[i]],
                              "title": snapshot.product_titles[products[i]],
                              "weight": float(scores[i]) / degree} for i in order]
    return evidence


def _summary(snapshot: Snapshot, slot: int) -> Optional[dict]:
    row = int(snapshot.cp_row[slot])
    if row < 0:
        return None
    why = snapshot.cp_why[row].as_py() or {}
    return {"personas": snapshot.cp_personas[row].as_py(), "source": snapshot.cp_source[row].as_py(),
            "confidence": snapshot.cp_confidence[row].as_py(), "is_ambiguous": bool(snapshot.cp_ambiguous[row]),
            "why": {"products": why.get("products") or [], "labelled_neighbours": why.get("labelled_neighbours") or 0,
                    "llm_evidence": why.get("llm_evidence")}}


def _project(row: dict, select: list[str]) -> dict:
    names = {"$p": "probability", "$why": "why"}
    return {key: row[names.get(key, key)] for key in select}


def answer_query(state: State, query: Any, config: AppConfig) -> list[dict]:
    """``query.predict`` on the snapshot; an unknown customer without products is a 404."""
    try:
        spec = validate(query)
    except InputError as exc:
        raise ServeError(400, str(exc)) from exc
    snapshot = _snapshot(state)
    customer_id = spec["where"]["customer_id"]
    if customer_id is not None:
        slot = state.slot(customer_id)
        if slot is not None:
            rows = affinity_rows(snapshot, slot, spec["limit"])
            if rows:
                summary = _summary(snapshot, slot)
                evidence = why_by_persona(snapshot, slot, [r["persona"] for r in rows],
                                          config.publishing.why_products)
                for row in rows:
                    row["is_ambiguous"] = summary["is_ambiguous"] if summary else True
                    row["why"] = {"products": evidence.get(row["persona"], []),
                                  "labelled_neighbours": summary["why"]["labelled_neighbours"] if summary else 0,
                                  "llm_evidence": summary["why"]["llm_evidence"] if summary else None}
                return [_project(r, spec["select"]) for r in rows]
        elif not spec["where"]["products"]:
            raise _unknown_customer(snapshot, customer_id)
    if spec["where"]["products"]:
        scored, _ = cold_start(snapshot, spec["where"]["products"], spec["limit"])
        return [_project({**r, "source": "cold_start", "is_ambiguous": False,
                          "why": {"products": [], "labelled_neighbours": 0, "llm_evidence": None,
                                  "matched_products": r["matched_products"]}}, spec["select"])
                for r in scored]
    return []


def customer_personas(state: State, customer_id: str) -> dict:
    snapshot = _snapshot(state)
    slot = state.slot(customer_id)
    if slot is None:
        raise _unknown_customer(snapshot, customer_id)
    rows = {r["persona"]: r for r in affinity_rows(snapshot, slot)}
    summary = _summary(snapshot, slot)
    if summary is None:  # not in customer_personas: the affinity's top-k, unconfirmed
        names = [r["persona"] for r in sorted(rows.values(), key=lambda r: r["rank"])][:5]
        summary = {"personas": names, "source": "propagated", "confidence": None, "is_ambiguous": True,
                   "why": {"products": [], "labelled_neighbours": 0, "llm_evidence": None}}
    personas = [{"persona": name, "probability": rows[name]["probability"] if name in rows else None,
                 "score": rows[name]["score"] if name in rows else None,
                 "rank": rows[name]["rank"] if name in rows else None} for name in summary["personas"]]
    return {"customer_id": customer_id, "run_id": snapshot.run_id, "personas": personas,
            "source": summary["source"], "confidence": summary["confidence"],
            "is_ambiguous": summary["is_ambiguous"], "why": summary["why"]}


def cold_start(snapshot: Snapshot, products: list[str], limit: int) -> tuple[list[dict], list[str]]:
    """(rows of the pyfunc's answer, products the run does not know)."""
    if snapshot.cold_start_model is None:
        raise ServeError(503, snapshot.cold_start_error or "no cold-start model for this run")
    import pandas as pd

    unknown = [p for p in dict.fromkeys(products) if p not in snapshot.product_code]
    scored = _predict(snapshot.cold_start_model, pd.DataFrame({"products": [list(products)]}))
    # Plain lists, not pandas indexing: filtering and iterating the frame cost 3 ms, the model 1.
    columns = zip(*(scored[c].tolist() for c in ("row", "persona", "score", "probability", "rank",
                                                  "matched_products")))
    rows = [{"persona": persona, "probability": float(probability), "score": float(score), "rank": int(rank),
             "matched_products": int(matched)}
            for row, persona, score, probability, rank, matched in columns if row == 0][:limit]
    if not rows and len(unknown) == len(set(products)):
        raise ServeError(404, f"none of the products is known to run {snapshot.run_id}: {unknown}; "
                              "no personas can be scored from them")
    return rows, unknown


def _predict(model, frame):
    """The pyfunc contract (a DataFrame with a ``products`` list column in, the ranked rows out).

    The request is validated here (a non-empty list of product id strings), so MLflow's
    per-call schema enforcement, about 2 ms of the 5 ms a call takes, is skipped for a
    python-function model; any other flavour goes through ``predict``."""
    try:
        return model.unwrap_python_model().predict(None, frame)
    except Exception:  # noqa: BLE001 - another flavour or signature: the generic path (which raises
        return model.predict(frame)  # the model's own error, if that is what it was)


def answer_cold_start(state: State, body: Any) -> dict:
    if not isinstance(body, dict):
        raise ServeError(400, "cold-start: expected a JSON object {\"products\": [...], \"limit\": 5}")
    unknown_fields = sorted(set(body) - {"products", "limit"})
    if unknown_fields:
        raise ServeError(400, f"cold-start: unknown field(s) {unknown_fields}; allowed: ['limit', 'products']")
    products = body.get("products")
    if not isinstance(products, list) or not products or not all(isinstance(p, str) and p.strip() for p in products):
        raise ServeError(400, f"cold-start.products: expected a non-empty list of product ids, got {products!r}")
    limit = body.get("limit", 5)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ServeError(400, f"cold-start.limit: expected a positive integer, got {limit!r}")
    snapshot = _snapshot(state)
    rows, unknown = cold_start(snapshot, [p.strip() for p in products], limit)
    return {"run_id": snapshot.run_id, "personas": [{k: r[k] for k in ("persona", "probability", "score", "rank")}
                                                    for r in rows],
            "matched_products": rows[0]["matched_products"] if rows else 0, "unknown_products": unknown}


def answer_rerank(state: State, body: Any, default_weight: float) -> dict:
    """``query.rerank`` for one customer: final = (1 - w) x base + w x persona match, both min-max
    scaled over the candidates; an ambiguous customer (or no candidate with persona scores)
    keeps the base order."""
    if not isinstance(body, dict):
        raise ServeError(400, "rerank: expected a JSON object {\"customer_id\": ..., \"candidates\": [...]}")
    unknown_fields = sorted(set(body) - {"customer_id", "candidates", "weight"})
    if unknown_fields:
        raise ServeError(400, f"rerank: unknown field(s) {unknown_fields}; allowed: "
                              "['candidates', 'customer_id', 'weight']")
    customer = body.get("customer_id")
    if not (isinstance(customer, (str, int)) and not isinstance(customer, bool) and str(customer).strip()):
        raise ServeError(400, f"rerank.customer_id: expected a customer id string, got {customer!r}")
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise ServeError(400, "rerank.candidates: expected a non-empty list of {\"product_id\", \"base_score\"}")
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, dict) or set(candidate) != {"product_id", "base_score"}:
            raise ServeError(400, f"rerank.candidates[{index}]: expected exactly product_id and base_score, "
                                  f"got {candidate!r}")
        if not isinstance(candidate["product_id"], str) or not candidate["product_id"]:
            raise ServeError(400, f"rerank.candidates[{index}].product_id: expected a product id string, "
                                  f"got {candidate['product_id']!r}")
        score = candidate["base_score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
            raise ServeError(400, f"rerank.candidates[{index}].base_score: expected a number, got {score!r}")
    weight = body.get("weight", default_weight)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ServeError(400, f"rerank.weight: expected a number in [0, 1], got {weight!r}")
    snapshot = _snapshot(state)
    customer_id = str(customer).strip()
    slot = state.slot(customer_id)
    if slot is None:
        raise _unknown_customer(snapshot, customer_id)
    summary_row = int(snapshot.cp_row[slot])
    ambiguous = summary_row < 0 or bool(snapshot.cp_ambiguous[summary_row])

    base = np.array([float(c["base_score"]) for c in candidates])
    match = np.full(len(candidates), np.nan)
    if not ambiguous:
        start, end = int(snapshot.aff_start[slot]), int(snapshot.aff_end[slot])
        personas, probabilities = snapshot.aff_persona[start:end], snapshot.aff_probability[start:end]
        for index, candidate in enumerate(candidates):
            code = snapshot.product_code.get(candidate["product_id"])
            if code is None:
                continue
            scores = snapshot.product_matrix[code, personas]
            if (scores > 0).any():  # the join has a row only where product_personas has one
                match[index] = float(np.dot(probabilities, scores))
    conditioned = bool(np.isfinite(match).any())
    base_scaled = _scaled(base)
    final = (1 - weight) * base_scaled + weight * _scaled(np.nan_to_num(match, nan=0.0)) if conditioned else base_scaled
    order = sorted(range(len(candidates)),
                   key=lambda i: (-final[i], -base[i], candidates[i]["product_id"]))
    ranked = [{"product_id": candidates[i]["product_id"], "base_score": candidates[i]["base_score"],
               "persona_score": None if np.isnan(match[i]) else float(match[i]),
               "final_score": float(final[i]), "rank": rank + 1} for rank, i in enumerate(order)]
    return {"run_id": snapshot.run_id, "customer_id": customer_id, "is_ambiguous": ambiguous,
            "conditioned": conditioned, "weight": float(weight), "candidates": ranked}


def _scaled(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def health(state: State) -> dict:
    snapshot = state.snapshot
    if snapshot is None:
        return {"status": "waiting", "run_id": None, "table_versions": {}, "loaded_at": None,
                "tombstones_version": state.tombstones_version}
    return {"status": "ok", "run_id": snapshot.run_id, "table_versions": snapshot.table_versions,
            "finished_at": snapshot.finished_at, "loaded_at": snapshot.loaded_at,
            "customers": snapshot.customers, "published_rows": snapshot.published_rows,
            "cold_start": "ok" if snapshot.cold_start_model is not None
            else snapshot.cold_start_error or "not loaded",
            "tombstones_version": state.tombstones_version, "forgotten": len(state.forgotten)}


# --------------------------------------------------------------------------- the service


class PersonaService:
    """Holds the served ``State`` and keeps it fresh from a watcher thread."""

    def __init__(self, config: AppConfig, load_model: bool = True):
        self.config = config
        self.tables = resolve_tables(config)
        self._load_model = load_model
        self._state = State(snapshot=None, key=tombstone_key(config.forget))
        self._runs_version: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_error: Optional[str] = None

    @property
    def state(self) -> State:
        return self._state

    def refresh(self) -> bool:
        """Load a newer complete run and newer tombstones if there are any; True if anything changed."""
        state = self._state
        snapshot, forgotten, tombstones_version = state.snapshot, state.forgotten, state.tombstones_version
        runs_version = table_version(self.tables.runs)
        if runs_version is not None and runs_version != self._runs_version:
            run = latest_complete_run(self.tables.runs)
            if run is not None and (snapshot is None or run["run_id"] != snapshot.run_id
                                    or {k: int(v) for k, v in run["table_versions"].items()}
                                    != snapshot.table_versions):
                started = time.monotonic()
                snapshot = build_snapshot(self.config, self.tables, run, self._load_model)
                log.info("loaded run %s (%d customers, %d rows) in %.2f s", snapshot.run_id, snapshot.customers,
                         snapshot.published_rows, time.monotonic() - started)
        new_tombstones = table_version(self.tables.tombstones)
        if new_tombstones is not None and new_tombstones != tombstones_version:
            hashes = read_arrow(self.tables.tombstones, ["customer_hash"])["customer_hash"].to_pylist()
            forgotten, tombstones_version = frozenset(hashes), new_tombstones
        self._runs_version = runs_version
        if snapshot is state.snapshot and tombstones_version == state.tombstones_version:
            return False
        # The one write a request can observe: a whole new State, never a half-updated one.
        self._state = State(snapshot=snapshot, forgotten=forgotten, tombstones_version=tombstones_version,
                            key=state.key)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="personas-serve-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.config.serving.poll_seconds):
            try:
                self.refresh()
                self._last_error = None
            except Exception as exc:  # noqa: BLE001 - keep serving the last good snapshot
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    log.error("refresh failed, still serving run %s: %s",
                              self._state.snapshot.run_id if self._state.snapshot else None, message)
                self._last_error = message


# --------------------------------------------------------------------------- HTTP


def configured_api_key(config: AppConfig) -> Optional[str]:
    """The key requests must carry (None: no key); a named but unset variable is a config error."""
    key_env = config.serving.api_key_env
    if not key_env:
        return None
    api_key = os.environ.get(key_env)
    if not api_key:
        raise InputError(f"serving.api_key_env: the environment variable {key_env} is not set "
                         "(unset serving.api_key_env to run without a key)")
    return api_key


def create_app(service: PersonaService):
    """The Starlette app over a service (which the app starts watching on start-up)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    config = service.config
    api_key = configured_api_key(config)
    limit = config.serving.max_body_bytes

    def reply(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body, default=str).encode("utf-8"), status_code=status,
                        media_type="application/json")

    def error(status: int, message: str) -> Response:
        return reply({"error": message}, status)

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8"))

    async def json_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServeError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServeError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ServeError(400, "empty body: expected a JSON object")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServeError(400, f"query: not valid JSON ({exc})") from exc

    def endpoint(handler: Callable, reads_body: bool):
        async def run(request: Request) -> Response:
            if not authorised(request):
                return error(401, "missing or wrong X-API-Key")
            try:
                state = service.state  # read once: the whole answer comes from this state
                if reads_body:
                    return reply(handler(state, await json_body(request)))
                return reply(handler(state, request))
            except ServeError as exc:
                return error(exc.status, exc.message)
        return run

    routes = [
        Route("/query", endpoint(lambda s, body: answer_query(s, body, config), True), methods=["POST"]),
        Route("/customers/{customer_id}/personas",
              endpoint(lambda s, r: customer_personas(s, r.path_params["customer_id"]), False), methods=["GET"]),
        Route("/cold-start", endpoint(answer_cold_start, True), methods=["POST"]),
        Route("/rerank", endpoint(lambda s, body: answer_rerank(s, body, config.query.rerank_weight), True),
              methods=["POST"]),
        Route("/health", endpoint(lambda s, r: health(s), False), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


CONF_ENV, WORKDIR_ENV = "PERSONAS_SERVE_CONF", "PERSONAS_SERVE_WORKDIR"


def app_from_environment():
    """Factory for uvicorn's worker processes (``--workers`` > 1): each loads its own snapshot."""
    from persona_lib.config import load_config

    config = load_config(os.environ.get(CONF_ENV) or None, workdir=os.environ.get(WORKDIR_ENV) or None)
    service = PersonaService(config)
    service.refresh()
    return create_app(service)


def serve(config: AppConfig, conf_path: Optional[str] = None) -> dict:
    """Run the service until interrupted: load the latest complete run first, so a table delta-rs
    cannot read fails here with a clear message rather than on the first request."""
    import uvicorn

    serving = config.serving
    configured_api_key(config)
    service = PersonaService(config)
    service.refresh()
    run_id = service.state.snapshot.run_id if service.state.snapshot else None
    if run_id is None:
        log.warning("no complete run in %s yet: answering 503 until one is published", config.workdir_path)
    else:
        log.info("serving run %s on http://%s:%d (%d worker(s))", run_id, serving.host, serving.port,
                 serving.workers)
    options = dict(host=serving.host, port=serving.port, log_level="warning", access_log=False,
                   timeout_keep_alive=30)
    for name, module in (("loop", "uvloop"), ("http", "httptools")):
        try:
            __import__(module)
            options[name] = module
        except ImportError:
            pass
    if serving.workers > 1:
        os.environ[CONF_ENV] = conf_path or ""
        os.environ[WORKDIR_ENV] = str(config.workdir_path)
        del service  # each worker loads its own; this one only proved the tables readable
        uvicorn.run("persona_lib.serving:app_from_environment", factory=True, workers=serving.workers, **options)
    else:
        uvicorn.run(create_app(service), **options)
    return {"stopped": True, "run_id": run_id}
