"""The competition's own test set: its image list in submission order, its labels when known.

Kaggle's landmark-recognition test sets come in three layouts (``test_format``):

* ``glr2020`` (2020/2021 code competitions): ``<test_root>/sample_submission.csv`` (``id,landmarks``)
  and the images at ``<test_root>/test/<a>/<b>/<c>/<id>.jpg``;
* ``glr2019``: ``<test_root>/test.csv`` (``id,url``; GLD v2's ``metadata/test.csv`` has ``id`` only)
  and the same ``test/<a>/<b>/<c>/<id>.jpg`` tree, filled by the downloader::

      python -m data_prep.download --csv <test_root>/test.csv --out <test_root>/test

* ``folder``: any folder of images, searched recursively, id = file stem.

``auto`` picks glr2020 when ``sample_submission.csv`` exists, glr2019 when ``test.csv`` exists,
else folder. The id list keeps its order: a submission must list every id of it, and an image
that is missing or does not decode still gets a row (an empty prediction).

Labels, when a solution file is given (GLD v2's ``recognition_solution_v2.1.csv``:
``id,landmarks,Usage``), follow :mod:`common.schema`: a class index for a landmark of the label
map, ``OTHER_LANDMARK`` for a landmark outside it, ``NON_LANDMARK`` for an empty ``landmarks``
field, ``UNLABELLED`` for a row the solution leaves out or marks ``Ignored``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pandas as pd

from common.errors import ConfigError, DataError, close_matches
from data_prep.config import TEST_FORMATS
from data_prep.readers import ID_PATTERN, IMAGE_EXTS, read_csv_text

log = logging.getLogger(__name__)

SAMPLE_SUBMISSION = "sample_submission.csv"
TEST_CSV = "test.csv"
TEST_IMAGES = "test"  # <test_root>/test/<a>/<b>/<c>/<id>.jpg in the glr layouts
COMPETITION_COLUMNS = ["id", "src"]


def detect_format(test_root: str | Path) -> str:
    """``glr2020`` when ``sample_submission.csv`` exists, ``glr2019`` when ``test.csv`` exists, else ``folder``."""
    root = Path(test_root)
    if (root / SAMPLE_SUBMISSION).is_file():
        return "glr2020"
    if (root / TEST_CSV).is_file():
        return "glr2019"
    return "folder"


def read_id_csv(path: str | Path) -> pd.Series:
    """The ``id`` column of a sample submission / test.csv, in file order (str).

    A missing ``id`` column, an empty or malformed id, or an id listed twice is one
    :class:`DataError` naming the file and the CSV line (header = line 1).
    """
    path = Path(path)
    df = read_csv_text(path, "competition id list")
    if "id" not in df.columns:
        raise DataError(f"{path}: missing column 'id' (found {list(df.columns)}; expected id,landmarks or id,url)")
    ids = df["id"].str.strip().reset_index(drop=True)
    bad = ~ids.str.fullmatch(ID_PATTERN)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{path}: line {i + 2}: id {ids[i]!r} is not a valid image id (letters, digits, '_' or '-'; 3 or more)"
        )
    dup = ids.duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        first = int((ids == ids[i]).to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}: duplicate id '{ids[i]}' (first on line {first + 2})")
    return ids


def read_image_tree(root: str | Path) -> pd.DataFrame:
    """Every image file under ``root`` (recursive, hidden entries skipped) as ``id, src``; id = file stem.

    Files come in sorted relative-path order. Two files with the same stem are one
    :class:`DataError` naming both (an id must name one image).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS:
                found.append(((rel / name).as_posix(), os.path.join(dirpath, name)))
    found.sort()
    ids = [Path(r).stem for r, _ in found]
    seen: dict[str, str] = {}
    for image_id, (_, src) in zip(ids, found):
        if image_id in seen:
            raise DataError(f"{root}: two images have the id '{image_id}' (file stem): {seen[image_id]} and {src}")
        seen[image_id] = src
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "src": pd.Series([s for _, s in found], dtype=object)})


def _tree_paths(root: Path, ids: pd.Series) -> pd.Series:
    """``<root>/test/<a>/<b>/<c>/<id>.jpg`` for every id (vectorised; a Path per row is slow at 100k)."""
    sep = os.sep
    return str(root / TEST_IMAGES) + sep + ids.str[0] + sep + ids.str[1] + sep + ids.str[2] + sep + ids + ".jpg"


def resolve_format(test_root: str | Path, test_format: str = "auto") -> str:
    """The concrete layout of ``test_root`` (``auto`` detected); an unknown name is a ConfigError."""
    if test_format not in TEST_FORMATS:
        raise ConfigError(f"unknown test_format '{test_format}' ({close_matches(test_format, TEST_FORMATS)})")
    root = Path(test_root)
    if not root.is_dir():
        raise DataError(f"competition test folder not found: {root}")
    fmt = detect_format(root) if test_format == "auto" else test_format
    wanted = {"glr2020": SAMPLE_SUBMISSION, "glr2019": TEST_CSV}.get(fmt)
    if wanted and not (root / wanted).is_file():
        raise DataError(f"{root}: test_format {fmt} needs {wanted} (not found)")
    return fmt


def read_competition_images(test_root: str | Path, test_format: str = "auto") -> pd.DataFrame:
    """The competition's test images as ``id, src`` in submission order.

    ``src`` is where the image should be, whether or not it exists or decodes (a submission
    lists every id; prediction gives unreadable ones an empty answer). A duplicate id or a
    missing ``id`` column is one :class:`DataError` line naming the file and the line.
    """
    root = Path(test_root)
    fmt = resolve_format(root, test_format)
    if fmt == "folder":
        df = read_image_tree(root)
        if df.empty:
            raise DataError(f"{root}: no image files found (expected {SAMPLE_SUBMISSION}, {TEST_CSV} or images)")
        return df
    ids = read_id_csv(root / (SAMPLE_SUBMISSION if fmt == "glr2020" else TEST_CSV))
    if ids.empty:
        raise DataError(f"{root / (SAMPLE_SUBMISSION if fmt == 'glr2020' else TEST_CSV)}: no rows (only a header)")
    return pd.DataFrame({"id": ids.astype(object), "src": _tree_paths(root, ids).astype(object)})


def files_signature(srcs: pd.Series | list[str]) -> str:
    """Identity of a set of files for the prep fingerprint: path, size and mtime of each (absent = -1)."""
    h = hashlib.sha1()
    for src in srcs:
        try:
            st = os.stat(src)
            h.update(f"{src}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{src}\0-1\n".encode())
    return h.hexdigest()[:16]
