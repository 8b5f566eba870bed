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
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import schema
from common.errors import ConfigError, DataError, close_matches
from common.ints import parse_int64
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


def files_signature(srcs: pd.Series | list[str], root: str | Path | None = None, mtimes: bool = True) -> str:
    """Identity of a set of files for the prep fingerprint: path, size (and mtime) of each (absent = -1).

    With ``root``, paths are taken relative to it: the same files reached through another path
    (a symlink, a new mount point) have the same signature. ``mtimes=False`` also keeps it for a
    copy that did not keep the mtimes (``cp -r``); a replaced photo almost always has another size.
    """
    prefix = os.path.join(str(root), "") if root is not None else ""
    h = hashlib.sha1()
    for src in srcs:
        name = src[len(prefix) :] if prefix and src.startswith(prefix) else src
        try:
            st = os.stat(src)
            key = f"{name}\0{st.st_size}" + (f"\0{st.st_mtime_ns}" if mtimes else "")
            h.update(f"{key}\n".encode())
        except OSError:
            h.update(f"{name}\0-1\n".encode())
    return h.hexdigest()[:16]


# ---- labels -------------------------------------------------------------------------------------

SOLUTION_NAMES = ("recognition_solution_v2.1.csv", "solution.csv")  # looked for in test_root
IGNORED_USAGE = "ignored"  # GLD v2 solution rows that the metric leaves out


def find_solution(test_root: str | Path) -> Path | None:
    """The solution file in ``test_root`` (``recognition_solution_v2.1.csv`` or ``solution.csv``), if any."""
    for name in SOLUTION_NAMES:
        path = Path(test_root) / name
        if path.is_file():
            return path
    return None


def read_solution(path: str | Path) -> pd.DataFrame:
    """A recognition solution (``id,landmarks[,Usage]``) as ``id, landmarks, usage``.

    ``landmarks`` becomes a list of ints (empty = the image shows no landmark; several ids are
    space-separated); ``usage`` is lower-case ('' without the column). A missing column, a
    non-integer landmark id or an id listed twice is one :class:`DataError` naming the line.
    """
    path = Path(path)
    df = read_csv_text(path, "solution csv")
    missing = [c for c in ("id", "landmarks") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(df.columns)}; expected id,landmarks,Usage)")
    ids = df["id"].str.strip().reset_index(drop=True)
    dup = ids.duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {i + 2}: duplicate id '{ids[i]}'")
    landmarks = []
    for i, text in enumerate(df["landmarks"].tolist()):
        tokens = str(text).replace(",", " ").split()
        try:
            values = [parse_int64(t) for t in tokens]  # exact: never through float
        except OverflowError:
            raise DataError(
                f"{path}: line {i + 2}: landmarks {text!r}: a landmark id does not fit in a 64-bit integer"
            ) from None
        if None in values:
            raise DataError(f"{path}: line {i + 2}: landmarks {text!r} are not integer landmark ids")
        landmarks.append(values)
    usage = df["Usage"].str.strip().str.lower() if "Usage" in df.columns else pd.Series("", index=df.index)
    return pd.DataFrame({"id": ids, "landmarks": landmarks, "usage": usage.reset_index(drop=True)})


def label_rows(ids: pd.Series, solution: pd.DataFrame | None, label_of: dict[int, int]) -> pd.DataFrame:
    """``label, landmark_id`` of each id (same index as ``ids``), from the solution and the label map.

    label = the class index of the first landmark of the row that is in the label map;
    OTHER_LANDMARK when none is (landmark_id = the first true id); NON_LANDMARK for an empty
    landmarks field; UNLABELLED without a solution, for ids it does not list and for rows it
    marks ``Ignored`` (landmark_id -1 for the last three).
    """
    label = np.full(len(ids), schema.UNLABELLED, dtype="int64")
    landmark_id = np.full(len(ids), -1, dtype="int64")
    if solution is not None:
        truth = dict(zip(solution["id"], zip(solution["landmarks"], solution["usage"])))
        for i, image_id in enumerate(ids):
            landmarks, usage = truth.get(image_id, (None, ""))
            if landmarks is None or usage == IGNORED_USAGE:
                continue
            if not landmarks:
                label[i] = schema.NON_LANDMARK
                continue
            known = [lid for lid in landmarks if lid in label_of]
            if known:
                label[i], landmark_id[i] = label_of[known[0]], known[0]
            else:
                label[i], landmark_id[i] = schema.OTHER_LANDMARK, landmarks[0]
    return pd.DataFrame({"label": label, "landmark_id": landmark_id}, index=ids.index)


def label_counts(labels: pd.Series) -> dict[str, int]:
    """How many rows are a class / another landmark / no landmark / unlabelled (for the prep report)."""
    return {
        "landmark": int((labels >= 0).sum()),
        "other_landmark": int((labels == schema.OTHER_LANDMARK).sum()),
        "non_landmark": int((labels == schema.NON_LANDMARK).sum()),
        "unlabelled": int((labels == schema.UNLABELLED).sum()),
    }


# ---- the sets prep adds beside the training source ----------------------------------------------


@dataclass
class ExtraSets:
    """What prep reads besides the training source: the competition test set and the non-landmark pool."""

    test_root: Path | None = None
    test_format: str | None = None  # resolved (never "auto")
    competition: pd.DataFrame | None = None  # id, src in submission order
    solution_path: Path | None = None
    solution: pd.DataFrame | None = None  # read_solution()
    nonlandmark_root: Path | None = None
    nonlandmark: pd.DataFrame | None = None  # id, src

    def signature(self) -> str:
        """Identity of the non-landmark pool for the (training) prep fingerprint: ids, files'
        relative paths and sizes; never the folders' own paths or the files' mtimes (a symlink, a
        new mount or a copy is the same set; the image cache itself checks each file's mtime and
        content sample). The pool shapes the internal test split, so it is part of training."""
        h = hashlib.sha1()
        if self.nonlandmark is not None:
            h.update(b"nonlandmark\n")
            h.update("\n".join(self.nonlandmark["id"]).encode())
            h.update(files_signature(self.nonlandmark["src"], self.nonlandmark_root, mtimes=False).encode())
        return h.hexdigest()[:16]

    def test_signature(self) -> str | None:
        """Identity of the competition test set (ids, files, layout, solution) apart from training's:
        a test set added or replaced after training leaves every run valid; None without one."""
        if self.competition is None and self.solution_path is None:
            return None
        h = hashlib.sha1()
        if self.competition is not None:
            h.update(f"competition {self.test_format}\n".encode())
            h.update("\n".join(self.competition["id"]).encode())
            h.update(files_signature(self.competition["src"], self.test_root, mtimes=False).encode())
        if self.solution_path is not None:
            h.update(b"solution\n")
            h.update(hashlib.sha1(self.solution_path.read_bytes()).digest())
        return h.hexdigest()[:16]


def read_extra_sets(
    test_root: str | Path | None,
    test_format: str = "auto",
    solution_csv: str | Path | None = None,
    nonlandmark_root: str | Path | None = None,
) -> ExtraSets:
    """Read the id lists (not the pixels) of the competition test set and the non-landmark folder."""
    extra = ExtraSets()
    if test_root is not None:
        extra.test_root = Path(test_root)
        extra.test_format = resolve_format(test_root, test_format)
        extra.competition = read_competition_images(test_root, extra.test_format)
        extra.solution_path = Path(solution_csv) if solution_csv else find_solution(test_root)
        if extra.solution_path is not None:
            if not extra.solution_path.is_file():
                raise DataError(f"solution csv not found: {extra.solution_path}")
            extra.solution = read_solution(extra.solution_path)
    elif solution_csv:
        raise ConfigError("prep: solution_csv is set but test_root is not (the solution labels the test set)")
    if nonlandmark_root is not None:
        extra.nonlandmark_root = Path(nonlandmark_root)
        extra.nonlandmark = read_image_tree(nonlandmark_root)
        if extra.nonlandmark.empty:
            raise DataError(f"{nonlandmark_root}: no image files found (nonlandmark_root must hold images)")
    _check_disjoint(extra)
    return extra


def _check_disjoint(extra: ExtraSets) -> None:
    if extra.competition is None or extra.nonlandmark is None:
        return
    both = extra.competition.merge(extra.nonlandmark, on="id", suffixes=("_c", "_n"))
    if len(both):
        r = both.iloc[0]
        raise DataError(
            f"id '{r['id']}' is both a competition test image ({r['src_c']}) and a non-landmark ({r['src_n']})"
        )


def check_unique_ids(extra: ExtraSets, source: pd.DataFrame, what: str) -> None:
    """Every id must name one image across all manifests (caches and packed rows are keyed by id)."""
    for name, df in (("competition test image", extra.competition), ("non-landmark image", extra.nonlandmark)):
        if df is None:
            continue
        clash = df["id"].isin(source["id"])  # hashed: fast on GLD's 1.5M training rows
        if clash.any():
            r = df[clash].iloc[0]
            other = source.loc[source["id"] == r["id"], "src"].iloc[0]
            raise DataError(
                f"{name} id '{r['id']}' ({r['src']}) is also an image of {what} ({other}): "
                "ids must be unique across the training source, the test set and the non-landmark folder"
            )


def split_nonlandmark(ids: pd.Series, n_landmark_test: int, share: float, seed: int) -> tuple[list[str], list[str]]:
    """(ids for the internal test split, ids left for the pool), seeded.

    The test split gets ``ceil(share / (1 - share) * n_landmark_test)`` non-landmarks (share 0.5:
    as many as landmark rows), or all of them when fewer exist.
    """
    want = math.ceil(share / (1 - share) * n_landmark_test - 1e-9) if share > 0 else 0
    order = np.random.default_rng([seed, 29]).permutation(len(ids))
    shuffled = ids.to_numpy()[order].tolist()
    n = min(want, len(shuffled))
    if n < want:
        log.warning(
            "only %d non-landmark images for the %d the test split needs (share %s): the pool is empty",
            len(shuffled),
            want,
            share,
        )
    return shuffled[:n], shuffled[n:]
