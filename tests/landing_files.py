"""Small landing files written by tests, in the Online Retail CSV layout."""

from __future__ import annotations

import gzip
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
