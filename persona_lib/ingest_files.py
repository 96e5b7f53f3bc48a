"""One landing file's bytes -> its identity and its records, in plain Python (no Spark).

Ingestion runs these inside Spark's Python workers (``mapInPandas``), one whole file at a
time; tests call them on strings.

- A file's identity is the SHA-256 of its content (after gunzip for ``.gz``), never its name:
  the same content under another name is the same delivery.
- Records are cut by a real CSV reader (RFC 4180: quoted fields may hold commas, quotes and
  line breaks). Only CR and LF end a record; U+2028, U+0085 and the other characters that
  ``str.splitlines`` treats as line breaks are field content. A UTF-8 byte order mark is
  dropped.
- A file that cannot be read (not gzip, not UTF-8, empty, wrong header) is a *file* fault with
  a reason; the other files of the delivery are not affected.

The customer id rule is here twice, as ``parse_customer_id`` (Python) and
``customer_id_column`` (the same rule as a Spark column, for every reader of ids in Spark).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from pyspark.sql import Column
from pyspark.sql import functions as F

from persona_lib.config import IngestConfig

# Python's csv reader refuses a field longer than this (its default limit); such a record
# is quarantined as malformed_line, with the limit in its detail.
CSV_FIELD_LIMIT = csv.field_size_limit()

# "17850", "17850.0" (the landing files' float-formatted ids), "017850": ASCII digits with an
# optional ".0". "1e4" or "17850.5" are not ids. Never through float: a 16-digit id is exact.
CUSTOMER_ID_PATTERN = r"^([0-9]+)(?:\.0+)?$"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


def parse_customer_id(text: Optional[str]) -> Optional[str]:
    """The canonical id ("17850") of a landing CustomerID, or None if it is not one.

    ``customer_id_column`` applies the same rule in Spark."""
    if text is None:
        return None
    match = _CUSTOMER_ID.match(text.strip())
    if not match:
        return None
    return match.group(1).lstrip("0") or "0"


def customer_id_digits(text: Column) -> Column:
    """``parse_customer_id`` as a Spark column, "" where ``text`` is not an id (null stays null)."""
    return F.regexp_replace(F.regexp_extract(F.trim(text), CUSTOMER_ID_PATTERN, 1), r"^0+(?=[0-9])", "")


def out_of_range_rules(settings: IngestConfig, event_ts: Column, quantity: Column, unit_price: Column,
                       shown: Sequence[tuple[str, str, Column]]) -> tuple[Column, Column]:
    """(whether a row breaks a range rule of ``settings``, the "; "-joined
    "<field> <value> <rule>" of every rule it breaks), the rules being the event date within
    ingest.event_date_min..event_date_max, |quantity| at most ingest.quantity_max and |unit
    price| at most ingest.unit_price_max. ``shown``: (rule "date", "quantity" or "price",
    the field's name, its value as the source wrote it), in the order the detail lists them.
    """
    event_date = F.to_date(event_ts)
    rules = {
        "date": ((event_date < F.lit(settings.event_date_min).cast("date"))
                 | (event_date > F.lit(settings.event_date_max).cast("date")),
                 f"outside ingest.event_date_min..event_date_max "
                 f"[{settings.event_date_min}, {settings.event_date_max}]"),
        "quantity": (F.coalesce(F.abs(quantity) > F.lit(float(settings.quantity_max)), F.lit(False)),
                     f"beyond ingest.quantity_max {settings.quantity_max}"),
        "price": (F.coalesce(F.abs(unit_price) > F.lit(settings.unit_price_max), F.lit(False)),
                  f"beyond ingest.unit_price_max {settings.unit_price_max:g}"),
    }
    broken = rules["date"][0] | rules["quantity"][0] | rules["price"][0]
    # concat_ws skips the nulls (rules not broken) without a lambda, so the projection stays code-generated.
    detail = F.concat_ws("; ", *[
        F.when(rules[rule][0], F.concat(F.lit(f"{field} "), value, F.lit(f" {rules[rule][1]}")))
        for rule, field, value in shown])
    return broken, detail


def customer_id_column(text: Column) -> Column:
    """``parse_customer_id`` as a Spark column: the canonical id, null where it is not one."""
    return F.nullif(customer_id_digits(text), F.lit(""))


@dataclass(frozen=True)
class FileContent:
    """A landing file opened: its identity, and its text or why it has none."""

    content_sha256: str
    text: Optional[str]
    problem: Optional[str]  # set when the file cannot be read at all


def open_content(name: str, content: bytes) -> FileContent:
    """Gunzip (``.gz``), hash and decode one file; a fault becomes ``problem``, never an exception."""
    if name.endswith(".gz"):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            # The raw bytes are this delivery's identity: the same broken file is the same fault.
            return FileContent(hashlib.sha256(content).hexdigest(), None,
                               f"not a valid gzip file (corrupt or truncated): {exc}")
    digest = hashlib.sha256(content).hexdigest()
    if not content:
        return FileContent(digest, None, "the file is empty (expected a header line)")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_number = content.count(b"\n", 0, exc.start) + 1
        return FileContent(digest, None,
                           f"not UTF-8 text: byte 0x{content[exc.start]:02x} on line {line_number} "
                           f"(offset {exc.start}: {exc.reason}); "
                           "export the file as UTF-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return FileContent(digest, None, "the file is empty (expected a header line)")
    return FileContent(digest, text, None)


@dataclass(frozen=True)
class Record:
    """One CSV record: the physical line it starts on (the header is line 1), its raw text
    (line breaks inside quoted fields included, the final one not), its fields, or the
    reason the CSV reader rejected it."""

    line_number: int
    raw: str
    fields: Optional[list[str]]
    error: Optional[str]


def split_records(text: str) -> Iterator[Record]:
    """Every record of ``text``, header first, each with exactly the lines it consumed."""
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        # newline="": only CR, LF and CRLF end a line, and the ends are kept, so the csv
        # module sees quoted line breaks exactly as written.
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)
    next_line = 1
    while True:
        try:
            fields: Optional[list[str]] = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as exc:
            fields, error = None, _csv_error_detail(str(exc))
        if not consumed:
            return
        raw = "".join(consumed)
        start, next_line = next_line, next_line + len(consumed)
        consumed.clear()
        yield Record(start, _strip_line_end(raw), fields, error)


def _strip_line_end(raw: str) -> str:
    if raw.endswith("\r\n"):
        return raw[:-2]
    if raw.endswith(("\n", "\r")):
        return raw[:-1]
    return raw


def _csv_error_detail(message: str) -> str:
    if "field larger than field limit" in message:
        return f"a field is longer than {CSV_FIELD_LIMIT} characters (the CSV field limit)"
    if "unexpected end of data" in message:
        return "a quoted field is never closed: the record runs to the end of the file (truncated?)"
    return f"not valid CSV: {message}"


def header_problem(record: Optional[Record], expected: Sequence[str]) -> Optional[str]:
    """Why a file's first record is not the expected header (None when it is)."""
    if record is None:
        return "the file is empty (expected a header line)"
    if record.error:
        return f"header line: {record.error}"
    found = [f.strip() for f in record.fields or []]
    if tuple(found) != tuple(expected):
        return f"wrong columns {found}; expected {list(expected)}"
    return None
