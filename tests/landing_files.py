"""Small landing files written by tests, in the Online Retail CSV layout."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Sequence

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"


def write_landing_file(folder: Path, name: str, lines: Sequence[str], header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, *lines]) + "\n"
    path = folder / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text)
    return path


BUNDLED_LANDING = Path(__file__).resolve().parent.parent / "data" / "online_retail" / "landing"
# The first 8 days of the bundled data: about 150 customers, enough for every pipeline path.
SLICE_DAYS = 8


def copy_landing_slice(folder: Path, days: int = SLICE_DAYS) -> Path:
    """A landing folder holding the first ``days`` daily files of the bundled Online Retail data."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(BUNDLED_LANDING.glob("*.csv.gz"))[:days]:
        shutil.copy(path, folder / path.name)
    return folder
