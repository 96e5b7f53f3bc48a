"""Validation of every answer against the taxonomy: one status per customer.

Statuses:
- ``ok``: valid JSON naming 1..k distinct personas of the list, exactly as spelt there;
- ``repaired``: usable after a fix, said in ``detail``: a name mapped from a case, spacing,
  plural or spelling variant, an unknown name dropped, a duplicate dropped, names beyond k
  cut, "Unrepresentable" next to real personas dropped, JSON found inside extra text, keys
  other than "personas" dropped;
- ``unrepresentable``: the answer is exactly ["Unrepresentable"];
- ``no_answer``: the backend had none (replay without a record, manual without assignment);
- ``failed``: nothing usable; ``detail`` gives the reason (bad JSON, no persona of the list,
  or the backend's error such as a timeout).
One bad answer never fails the batch: it becomes a row with status ``failed``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Optional

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from persona_lib.labelling.answers import FAILED, NO_ANSWER, OK, REPAIRED, UNREPRESENTABLE, UNREPRESENTABLE_STATUS
from persona_lib.taxonomy import Taxonomy

_JSON_SPAN = re.compile(r"(\{.*\}|\[.*\])", re.DOTALL)
# How much of a raw response a failure detail quotes.
DETAIL_QUOTE_CHARS = 120


def answer_json_schema(taxonomy: Taxonomy) -> dict:
    """The structured-output schema: {"personas": 1..k names of the list, or ["Unrepresentable"]}.

    No ``uniqueItems``: xgrammar rejects it, so duplicates are removed by validation.
    """
    return {
        "type": "object",
        "properties": {"personas": {"anyOf": [
            {"type": "array", "items": {"type": "string", "enum": list(taxonomy.names)},
             "minItems": 1, "maxItems": taxonomy.max_personas},
            {"type": "array", "items": {"type": "string", "enum": [UNREPRESENTABLE]},
             "minItems": 1, "maxItems": 1},
        ]}},
        "required": ["personas"],
        "additionalProperties": False,
    }


def validate_answer(raw: Optional[str], taxonomy: Taxonomy,
                    backend_error: Optional[str] = None) -> tuple[list[str], str, Optional[str]]:
    """(personas, status, detail) of one raw answer."""
    if backend_error:
        return [], FAILED, backend_error
    if raw is None:
        return [], NO_ANSWER, None
    notes: list[str] = []
    names = _names_in(raw, notes)
    if names is None:
        return [], FAILED, f"bad JSON: {raw[:DETAIL_QUOTE_CHARS]!r}"
    if not names:
        return [], FAILED, "empty persona list"
    kept: list[str] = []
    for name in names:
        if not isinstance(name, str):
            notes.append(f"dropped non-text entry {name!r}"[:DETAIL_QUOTE_CHARS])
            continue
        persona, repaired = taxonomy.match(name.strip())
        if persona is None:
            notes.append(f"dropped unknown {name[:60]!r}")
        elif persona in kept:
            notes.append(f"dropped duplicate {persona!r}")
        else:
            if repaired:
                notes.append(f"mapped {name[:60]!r} to {persona!r}")
            kept.append(persona)
    if kept == [UNREPRESENTABLE]:
        return [], UNREPRESENTABLE_STATUS, "; ".join(notes) or None
    if UNREPRESENTABLE in kept:
        kept.remove(UNREPRESENTABLE)
        notes.append(f"dropped {UNREPRESENTABLE!r} next to personas")
    if not kept:
        return [], FAILED, "no persona of the list: " + "; ".join(notes)
    if len(kept) > taxonomy.max_personas:
        notes.append(f"cut {len(kept)} personas to the first {taxonomy.max_personas}")
        kept = kept[:taxonomy.max_personas]
    return kept, (REPAIRED if notes else OK), "; ".join(notes) or None


def _names_in(raw: str, notes: list[str]) -> Optional[list[Any]]:
    """The persona list of an answer, or None when there is no JSON answer in it.

    Accepted shapes: {"personas": [...]}, the paper's {"<customer>": [...]}, a bare list, or
    a single name as a string; JSON inside extra text (a code fence, a preamble) is found.
    """
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        span = _JSON_SPAN.search(raw or "")
        if span is None:
            return None
        try:
            value = json.loads(span.group(1))
        except json.JSONDecodeError:
            return None
        notes.append("JSON found inside extra text")
    if isinstance(value, dict):
        if "personas" in value:
            # The schema allows no other key: one is text the answer was not asked for (an
            # injected "note", say), dropped and said, never an ok answer.
            extra = sorted(str(k) for k in value if k != "personas")
            if extra:
                notes.append(f"dropped extra key(s) {', '.join(repr(k[:40]) for k in extra[:5])}"[:DETAIL_QUOTE_CHARS])
            value = value["personas"]
        elif len(value) == 1:
            value = next(iter(value.values()))
        else:
            return None
    if isinstance(value, str):
        return [value]
    return value if isinstance(value, list) else None


VALIDATED_FIELDS = [
    StructField("personas", ArrayType(StringType(), False), False),
    StructField("status", StringType(), False),
    StructField("detail", StringType(), True),
]


def validate_answers(answers: DataFrame, taxonomy: Taxonomy) -> DataFrame:
    """``answers`` (customer_id, raw_response, error, ...) plus personas, status, detail."""
    schema = StructType(answers.schema.fields + VALIDATED_FIELDS)

    def validate_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            results = [
                validate_answer(None if pd.isna(raw) else raw, taxonomy,
                                None if pd.isna(error) else error)
                for raw, error in zip(batch["raw_response"], batch["error"])
            ]
            batch = batch.copy()
            batch["personas"] = [r[0] for r in results]
            batch["status"] = [r[1] for r in results]
            batch["detail"] = [r[2] for r in results]
            yield batch

    return answers.mapInPandas(validate_batches, schema)
