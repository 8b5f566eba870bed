"""Exact integers from CSV text: landmark ids and labels never pass through float.

pandas reads an integer column as float64 as soon as one cell is empty, and as uint64 or
float64 when a value is beyond int64: ``2**62 + 1`` then silently becomes ``2**62`` and two
landmarks merge into one class. Integer columns are therefore read as text and converted here,
exactly, to int64; a value that is not an integer or does not fit in 64 bits is one
:class:`~common.errors.DataError` naming the file, the CSV line and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from common.errors import DataError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# optional sign, ASCII digits, an optional all-zero fraction ("5.0", what a float column writes)
_INT_TEXT = re.compile(r"\s*([+-]?[0-9]+)(?:\.0*)?\s*")


def parse_int64(text: object) -> int | None:
    """``text`` as an exact Python int in the int64 range; None when it is not an integer.

    Raises ``OverflowError`` for an integer outside int64 (the caller names the file and line).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    m = _INT_TEXT.fullmatch(str(text))
    if m is None:
        return None
    value = int(m.group(1))
    if not INT64_MIN <= value <= INT64_MAX:
        raise OverflowError(value)
    return value


def int64_column(values: pd.Series, path: str | Path, column: str, line_of: Sequence[int] | None = None) -> pd.Series:
    """The text column ``values`` as exact int64 (same index); the first bad cell is one DataError.

    ``line_of[i]`` is the CSV line of row position ``i`` (default ``i + 2``: a header line, then
    1-based). Accepted: optional sign and ASCII digits, surrounding spaces, an all-zero fraction.
    Refused, naming the line: empty cells, other text (``1.5``, ``1e3``, ``x7``), and integers
    outside int64.
    """
    if pd.api.types.is_integer_dtype(values) and values.dtype.itemsize <= 8 and values.dtype.kind == "i":
        return values.astype("int64")
    num = pd.to_numeric(values, errors="coerce") if len(values) else values.astype("int64")
    if num.dtype == "int64":  # fast path: every cell parsed as an integer that fits (exact, no float)
        return num
    out = []
    for i, text in enumerate(values.tolist()):
        line = line_of[i] if line_of is not None else i + 2
        try:
            value = parse_int64(text)
        except OverflowError:
            raise DataError(
                f"{path}: line {line}: {column} {text!r} does not fit in a 64-bit integer "
                f"(must be within {INT64_MIN}..{INT64_MAX})"
            ) from None
        if value is None:
            if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
                raise DataError(f"{path}: line {line}: {column} is empty")
            raise DataError(f"{path}: line {line}: {column} {text!r} is not an integer")
        out.append(value)
    return pd.Series(out, index=values.index, dtype="int64")
