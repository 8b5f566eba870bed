"""Check a submission CSV the way Kaggle would: ``python -m pipeline validate FILE [--sample S]``.

Google Landmark Recognition format: header exactly ``id,landmarks``; one row per test id; the
``landmarks`` cell empty (no answer) or ``"<landmark_id> <confidence>"`` (one prediction: an
ASCII integer in [0, 2^63 - 1] and a plain ASCII decimal confidence in [0, 1]; Python's
``int``/``float`` would also take non-ASCII digits and ``0.5_0``, Kaggle's scorer does not). With
``--sample sample_submission.csv``: every id of the sample exactly once and no other id (order
does not matter to Kaggle); the sample's ids are read by the same helper prep reads it with
(:func:`data_prep.competition.read_id_csv`: padded ids stripped). Blank lines are skipped, as
Kaggle's CSV reader does.

Every problem is one line ``FILE:LINE: what`` (at most :data:`MAX_PER_KIND` of a kind, then a
count); exit status 1 when there is any, else 0 and one ``OK`` line.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path

from common.errors import DataError
from common.ints import INT64_MAX
from data_prep.competition import read_id_csv

HEADER = ["id", "landmarks"]
MAX_PER_KIND = 20
_CELL = re.compile(r"([0-9]+) +(\S+)")  # [0-9], not \d: \d matches any script's digits
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # no '_', no non-ASCII


class _Problems:
    """Problem lines, capped per kind so a wrong file does not print 100k lines."""

    def __init__(self, name: str) -> None:
        self.name, self.lines, self.counts = name, [], Counter()

    def add(self, kind: str, line: int | None, what: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.lines.append(f"{self.name}:{line}: {what}" if line else f"{self.name}: {what}")

    def finish(self) -> list[str]:
        more = [
            f"{self.name}: ... and {c - MAX_PER_KIND} more ({k})" for k, c in self.counts.items() if c > MAX_PER_KIND
        ]
        return self.lines + more


def read_sample_ids(path: str | Path) -> list[str]:
    """The ``id`` column of a sample submission, in order, exactly as prep reads it (padded ids
    stripped, malformed or repeated ids refused): one DataError line if unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sample submission not found: {path}")
    return read_id_csv(path).tolist()


def check_cell(cell: str) -> str | None:
    """What is wrong with a ``landmarks`` cell, or None (empty is fine: no answer)."""
    cell = cell.strip()
    if not cell:
        return None
    m = _CELL.fullmatch(cell)
    if not m:
        n = len(cell.split())
        if n > 2:
            return f"landmarks '{cell[:40]}' has {n} tokens; expected one prediction '<landmark_id> <confidence>'"
        return f"landmarks '{cell[:40]}' is not '<landmark_id> <confidence>'"
    if int(m.group(1)) > INT64_MAX:
        return f"landmark id '{m.group(1)[:40]}' is beyond int64"
    text = m.group(2)
    if not _NUMBER.fullmatch(text):
        try:
            finite = math.isfinite(float(text))
        except ValueError:
            finite = True
        return f"confidence '{text[:40]}' is " + ("not a number (ASCII digits, '.', 'e')" if finite else "not finite")
    conf = float(text)
    if not math.isfinite(conf):
        return f"confidence '{text}' is not finite"
    if not 0 <= conf <= 1:
        return f"confidence '{text}' is outside [0, 1]"
    return None


def _unreadable(e: Exception) -> str:
    """Why a submission file cannot be read, in a few words."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, csv.Error):
        return f"not a readable CSV ({e})"
    known = {FileNotFoundError: "file not found", IsADirectoryError: "is a folder, not a submission CSV"}
    return known.get(type(e), f"cannot be read ({e.strerror or type(e).__name__})")


def validate_submission(
    path: str | Path, sample_ids: list[str] | None = None, name: str | None = None
) -> tuple[list[str], dict[str, int]]:
    """Problems of a submission file (``name`` in the messages, default the path) and its counts
    ``{"rows", "answers", "empty"}``."""
    path = Path(path)
    probs = _Problems(name or str(path))
    stats = {"rows": 0, "answers": 0, "empty": 0}
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                probs.add("header", 1, "empty file (expected the header 'id,landmarks')")
                return probs.finish(), stats
            if header != HEADER:
                bom = " (it starts with a byte-order mark)" if header and header[0].startswith("\ufeff") else ""
                probs.add("header", 1, f"header must be exactly 'id,landmarks', got '{','.join(header)}'{bom}")
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    probs.add("fields", line, f"{len(row)} fields, expected 2 (id,landmarks)")
                    continue
                rid, cell = row
                stats["rows"] += 1
                if not rid.strip():
                    probs.add("id", line, "empty id")
                elif rid in seen:
                    probs.add("duplicate", line, f"id '{rid}' appears again (first on line {seen[rid]})")
                else:
                    seen[rid] = line
                what = check_cell(cell)
                if what:
                    probs.add("landmarks", line, what)
                elif cell.strip():
                    stats["answers"] += 1
                else:
                    stats["empty"] += 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        probs.add("file", None, _unreadable(e))
        return probs.finish(), stats
    if sample_ids is not None:
        expected = set(sample_ids)
        for rid, line in seen.items():
            if rid not in expected:
                probs.add("unknown", line, f"id '{rid}' is not in the sample submission")
        for i, rid in enumerate(sample_ids):
            if rid not in seen:
                probs.add("missing", None, f"id '{rid}' of the sample submission (line {i + 2}) is missing")
    return probs.finish(), stats


def main(file: str, sample: str | None = None) -> int:
    """CLI face: one line per problem and exit 1, or one OK line and exit 0."""
    sample_ids = read_sample_ids(sample) if sample else None
    problems, stats = validate_submission(file, sample_ids)
    for p in problems:
        print(p)
    if problems:
        return 1
    against = f"; every id of {sample} exactly once" if sample else ""
    print(f"{file}: OK: {stats['rows']} rows, {stats['answers']} answers, {stats['empty']} empty{against}")
    return 0
