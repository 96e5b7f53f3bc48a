"""Tombstones: how a forgotten customer is named without naming them.

A tombstone is HMAC-SHA256 of the customer id under a secret key (``tombstone_key``), so it
cannot be tested against a guessed id without the key. Ingestion, the label store, serving
and ``forget`` all match ids against tombstones with these functions; ``forget`` writes them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from persona_lib.config import ForgetConfig
from persona_lib.errors import InputError
from persona_lib.ingest_files import parse_customer_id

log = logging.getLogger("personas.forget")

# Quarantine reasons of lines whose CustomerID field could not be read as an id: for those,
# any number of the raw line may be the id (a line with a missing id is not one of them).
UNREADABLE_ID_REASONS = ("malformed_line", "unparsable_value")
UNREADABLE_ID_REASONS_SQL = "(" + ", ".join(f"'{r}'" for r in UNREADABLE_ID_REASONS) + ")"
# A number in a raw landing line: digits, optionally ".0", not part of a longer number.
RAW_ID_TOKEN_SQL = "(?<![0-9])([0-9]+)(?:[.]0+)?(?![0-9.])"
RAW_ID_TOKEN = re.compile(r"(?<![0-9])([0-9]+)(?:\.0+)?(?![0-9.])")


def clean_customer_id(raw: str) -> str:
    """"17850.0" -> "17850": the id as the tables hold it (digits, never through a float)."""
    # The same rule ingest applies to CustomerID, so forget names exactly the id the tables hold.
    customer_id = parse_customer_id(str(raw))
    if customer_id is None:
        raise InputError(f"forget: {raw!r} is not a customer id (expected digits like 17850 or 17850.0)")
    return customer_id


def customer_hash(customer_id: str, key: bytes) -> str:
    """A tombstone: HMAC-SHA256 of the clean id under the tombstone key, as hex."""
    return hmac.new(key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()


def tombstone_key(forget: ForgetConfig) -> bytes:
    """The tombstone key: the environment variable ``forget.tombstone_key_env``, else the
    config's public ``forget.demo_key`` (demo and test configs only); InputError if neither."""
    name = forget.tombstone_key_env
    value = os.environ.get(name, "")
    if value:
        return value.encode("utf-8")
    if forget.demo_key:
        log.warning("tombstone key: $%s is unset, using the config's public demo key (forget.demo_key); "
                    "set the variable from a secret outside the demo", name)
        return forget.demo_key.encode("utf-8")
    raise InputError(f"the tombstone key is not set: export {name}=<secret> (forget.tombstone_key_env "
                     "names the variable); tombstones are HMAC-SHA256 of the id under this key, and "
                     "the same key must be used by every job of this work dir")


def customer_hash_column(customer_id: Column, key: bytes) -> Column:
    """``customer_hash`` as a Spark column: HMAC-SHA256 (RFC 2104) from SQL's sha2, so a join
    against the tombstones runs in the JVM without a Python worker."""
    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner_pad = bytearray(b ^ 0x36 for b in key)
    outer_pad = bytearray(b ^ 0x5C for b in key)
    inner = F.sha2(F.concat(F.lit(inner_pad), F.encode(customer_id, "UTF-8")), 256)
    return F.sha2(F.concat(F.lit(outer_pad), F.unhex(inner)), 256)


def raw_id_tokens(raw_line: Column) -> Column:
    """Every number of a raw landing line that could be a customer id, as the tables write it."""
    return F.transform(F.regexp_extract_all(F.coalesce(raw_line, F.lit("")), F.lit(RAW_ID_TOKEN_SQL), 1),
                       lambda token: F.regexp_replace(token, "^0+(?=[0-9])", ""))


def tombstoned(df: DataFrame, tombstones: DataFrame, key: bytes, id_column: str = "customer_id") -> DataFrame:
    """The rows of ``df`` whose ``id_column`` is tombstoned (a semi join on the keyed hash)."""
    hashes = tombstones.select(F.col("customer_hash").alias("_tombstone_hash")).distinct()
    with_hash = df.withColumn("_customer_hash", customer_hash_column(F.col(id_column), key))
    return (with_hash.join(F.broadcast(hashes), with_hash["_customer_hash"] == hashes["_tombstone_hash"], "left_semi")
            .drop("_customer_hash"))
