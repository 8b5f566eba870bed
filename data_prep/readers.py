"""Readers for file-based sources: Google-Landmarks v2 layout and image folders.

Each returns a :class:`ReadTable` (a :class:`~data_prep.sources.SourceTable` that also lists
the rows it dropped). Problems with single rows (missing image, duplicate or malformed id, a
non-image file, an unreadable class folder) are skipped, counted by reason and listed; problems
with the whole input (missing column, empty CSV, non-integer landmark_id) raise one
:class:`DataError` naming the file and the row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from common.errors import DataError
from common.ints import int64_column
from common.io import atomic_write, write_csv
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
# Decompression-bomb limit on the pixels actually DECODED: a file that would decode to more is
# refused before decoding. A JPEG is decoded at 1/2..1/8 scale (draft mode, data_prep.images.
# draft_open), so a real 8000x8000 or 12000x9000 competition photo decodes far below it; PIL's own
# header check (it raises at twice Image.MAX_IMAGE_PIXELS) stops absurd headers: 960 MP.
MAX_PIXELS = 60_000_000
Image.MAX_IMAGE_PIXELS = 8 * MAX_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we raise ourselves, see check_pixels

SKIP_COLUMNS = ["id", "src", "reason"]
ID_PATTERN = r"[0-9a-zA-Z_-]{3,}"  # GLD ids: hex; at least 3 characters for the a/b/c folders


@dataclass
class ReadTable(SourceTable):
    """A SourceTable plus the dropped rows (``SKIP_COLUMNS``), written to ``skipped_reading.csv``."""

    skipped_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIP_COLUMNS))


def check_pixels(im: Image.Image, src: object = "") -> None:
    """Refuse images above :data:`MAX_PIXELS` (checked on the header, before any decoding)."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise Image.DecompressionBombError(f"{src}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS}")


def to_rgb(im: Image.Image) -> Image.Image:
    """EXIF orientation applied; palette/alpha over white, CMYK/grey/16-bit -> 8-bit RGB."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: keep the top 8 bits
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    return im.convert("RGB")


def open_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied (palette/alpha/CMYK/grey -> RGB)."""
    with Image.open(path) as im:
        check_pixels(im, path)
        return to_rgb(im)


def gld_image_path(root: Path, image_id: str, subdir: str = "train") -> Path:
    return root / subdir / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def image_paths(root: Path, ids: pd.Series) -> list[str]:
    """``gld_image_path`` of every id as strings. One f-string per id: a ``Path`` per row costs
    ~5 us, and pandas' ``.str[i]`` (Python-object strings without pyarrow) loops per element
    anyway, three times: 6.7 s at GLD v2 clean's 1.58M ids against 0.9 s here."""
    pre, sep = str(root / "train") + os.sep, os.sep
    return [f"{pre}{i[0]}{sep}{i[1]}{sep}{i[2]}{sep}{i}.jpg" for i in ids.tolist()]


def read_csv_text(path: Path, what: str) -> pd.DataFrame:
    """All-string frame of a CSV; BOM, quoted fields (v1) and padded headers tolerated."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable CSV ({reason})") from None
    df.columns = [str(c).strip().strip('"') for c in df.columns]
    return df


def read_gld_csv(path: Path) -> pd.DataFrame:
    """Read a GLD ``train.csv`` (``id,url,landmark_id``; v1 quotes every field; BOM tolerated)."""
    path = Path(path)
    df = read_csv_text(path, "GLD csv")
    for col in ("id", "landmark_id"):
        if col not in df.columns:
            raise DataError(f"{path}: missing column '{col}' (found {list(df.columns)}; expected id,url,landmark_id)")
    if df.empty:
        raise DataError(f"{path}: no rows (only a header)")
    df["landmark_id"] = int64_column(df["landmark_id"], path, "landmark_id")
    df["id"] = df["id"].str.strip()
    return df


def read_gld_clean_csv(path: Path) -> pd.DataFrame:
    """``train_clean.csv`` (``landmark_id,images``, images space-separated) -> (id, landmark_id) rows."""
    path = Path(path)
    clean = read_csv_text(path, "GLD clean csv")
    missing = [c for c in ("landmark_id", "images") if c not in clean.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (found {list(clean.columns)}; expected landmark_id,images)"
        )
    if clean.empty:
        raise DataError(f"{path}: no rows (only a header)")
    lid = int64_column(clean["landmark_id"], path, "landmark_id")
    ids = clean["images"].str.split()
    df = pd.DataFrame({"id": ids, "landmark_id": lid}).explode("id").dropna(subset=["id"])
    return df.reset_index(drop=True)


def _skip(skipped: dict, lists: list, reason: str, ids, srcs) -> None:
    ids, srcs = list(ids), list(srcs)
    if ids:
        skipped[reason] = skipped.get(reason, 0) + len(ids)
        lists.append(pd.DataFrame({"id": ids, "src": srcs, "reason": reason}))


def _present(root: Path, ids: pd.Series) -> np.ndarray:
    """Which ids have ``train/a/b/c/<id>.jpg``: one listing per leaf folder, not a stat per row."""
    mask = np.zeros(len(ids), dtype=bool)
    values = ids.to_numpy()
    for prefix, idx in ids.reset_index(drop=True).groupby(ids.str[:3].to_numpy()).indices.items():
        folder = root / "train" / prefix[0] / prefix[1] / prefix[2]
        try:
            names = set(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as e:  # PermissionError and friends: its images count as missing
            log.warning("%s: not readable (%s); its images count as missing", folder, e.strerror)
            continue
        mask[idx] = [f"{i}.jpg" in names for i in values[idx]]
    return mask


def read_gld_v2(root: str | os.PathLike, label_source: str = "train", check_images: bool = True) -> ReadTable:
    """GLD v2: ``train.csv`` (or ``train_clean.csv``: ``landmark_id,images``) + ``train/a/b/c/<id>.jpg``.

    A partial download is normal: rows whose image file is absent are skipped, counted
    (``missing_image``) and listed. ``check_images=False`` keeps them (CSV-only benchmarks).
    """
    root = Path(root)
    skipped: dict[str, int] = {}
    lists: list[pd.DataFrame] = []
    if label_source == "clean":
        path = root / "train_clean.csv"
        df = read_gld_clean_csv(path)
    elif label_source == "train":
        path = root / "train.csv"
        df = read_gld_csv(path)
    else:
        raise DataError(f"unknown GLD label source '{label_source}' (valid: train, clean)")
    dup = df["id"].duplicated()
    if dup.any():
        log.warning("%s: %d duplicate ids skipped (first: %s)", path, int(dup.sum()), df.loc[dup, "id"].iloc[0])
        _skip(skipped, lists, "duplicate_id", df.loc[dup, "id"], [str(path)] * int(dup.sum()))
        df = df[~dup]
    bad_id = ~df["id"].str.fullmatch(ID_PATTERN)
    if bad_id.any():
        _skip(skipped, lists, "bad_id", df.loc[bad_id, "id"], [str(path)] * int(bad_id.sum()))
        df = df[~bad_id]
    src = pd.Series(image_paths(root, df["id"]), index=df.index, dtype=df["id"].dtype)
    if check_images:
        exists = pd.Series(_present(root, df["id"]), index=df.index)
        if (~exists).any():
            n = int((~exists).sum())
            log.warning("%s: %d of %d images are missing (skipped, listed in skipped_reading.csv)", root, n, len(df))
            _skip(skipped, lists, "missing_image", df.loc[~exists, "id"], src[~exists])
            df, src = df[exists], src[exists]
    names = df["landmark_id"].astype(str)
    names_csv = root / "landmark_names.csv"  # written by image_folder_to_gld
    if names_csv.is_file():
        known = read_csv_text(names_csv, "landmark names csv")
        if not {"landmark_id", "name"} <= set(known.columns):
            raise DataError(f"{names_csv}: expected columns landmark_id,name (found {list(known.columns)})")
        known["landmark_id"] = int64_column(known["landmark_id"], names_csv, "landmark_id")
        known = known.drop_duplicates("landmark_id").set_index("landmark_id")
        names = df["landmark_id"].map(known["name"]).fillna(names)
    rows = pd.DataFrame({"id": df["id"], "landmark_id": df["landmark_id"], "name": names, "src": src})
    rows = rows.reset_index(drop=True)
    skipped_rows = pd.concat(lists, ignore_index=True) if lists else pd.DataFrame(columns=SKIP_COLUMNS)
    csv_name = "train_clean.csv" if label_source == "clean" else "train.csv"
    return ReadTable(rows, open_rgb, skipped, f"GLD v2 at {root} ({csv_name})", f"GLD v2 ({csv_name})", skipped_rows)


def read_image_folder(root: str | os.PathLike) -> ReadTable:
    """``<root>/<class>/<file>`` -> one class per folder; landmark ids are 0..n-1 in sorted name order.

    Row ids are ``<class>/<file stem>`` (``<class>/<file name>`` when two files share a stem).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise DataError(f"image folder not readable: {root}") from None
    if not classes:
        raise DataError(f"{root}: no class folders (expected <root>/<class>/<image>)")
    rows, skipped, lists = [], {}, []
    for lid, name in enumerate(classes):
        folder = root / name
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
        except PermissionError:
            log.warning("%s: not readable, skipped", folder)
            _skip(skipped, lists, "unreadable_dir", [f"{name}/"], [str(folder)])
            continue
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        others = [p for p in files if p.suffix.lower() not in IMAGE_EXTS]
        _skip(skipped, lists, "not_image_ext", [f"{name}/{p.name}" for p in others], [str(p) for p in others])
        stems = pd.Series([p.stem for p in images])
        clash = set(stems[stems.duplicated()])
        for p in images:
            rows.append((f"{name}/{p.name if p.stem in clash else p.stem}", lid, name, str(p)))
    df = pd.DataFrame(rows, columns=["id", "landmark_id", "name", "src"])
    if df.empty:
        raise DataError(f"{root}: no image files found in {len(classes)} class folders")
    skipped_rows = pd.concat(lists, ignore_index=True) if lists else pd.DataFrame(columns=SKIP_COLUMNS)
    return ReadTable(df, open_rgb, skipped, f"image folder {root}", "image folder", skipped_rows)


def _is_jpeg(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


def image_folder_to_gld(src_root: str | os.PathLike, dst_root: str | os.PathLike) -> pd.DataFrame:
    """Convert ``<class>/<file>`` into the GLD v2 layout (train.csv + train/a/b/c/<id>.jpg).

    Ids are 16-hex digests of the relative path (stable across runs); landmark ids are the
    sorted class index; a ``landmark_names.csv`` keeps the folder names. JPEG files are copied
    byte for byte (no second lossy encode; EXIF kept), other formats are converted to RGB JPEG.
    Unreadable non-JPEG files are left out (logged); a broken JPEG is copied and the prep stage
    skips and lists it, as it would on GLD. Idempotent: existing outputs are kept.
    """
    table = read_image_folder(src_root)
    dst_root = Path(dst_root)
    rows = []
    for r in table.rows.itertuples():
        image_id = hashlib.sha1(r.id.encode()).hexdigest()[:16]
        out = gld_image_path(dst_root, image_id)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                if _is_jpeg(r.src):
                    with open(r.src, "rb") as fin, atomic_write(out, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                else:
                    img = table.open_image(r.src)
                    with atomic_write(out, "wb") as f:
                        img.save(f, "JPEG", quality=95)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                log.warning("%s: unreadable image skipped (%s)", r.src, e)
                continue
        rows.append((image_id, f"file://{r.src}", r.landmark_id, r.name))
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id", "name"])
    write_csv(dst_root / "train.csv", df[["id", "url", "landmark_id"]])
    write_csv(dst_root / "landmark_names.csv", df[["landmark_id", "name"]].drop_duplicates())
    return df
