"""Readers for file-based sources: Google-Landmarks v2 layout and image folders.

Each returns a :class:`~data_prep.sources.SourceTable`. Problems with single rows (missing
image, bad id) are skipped and counted by reason; problems with the whole input (missing
column, empty CSV, non-integer landmark_id) raise one :class:`DataError` naming file and row.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from common.errors import DataError
from common.io import atomic_write, write_csv
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
Image.MAX_IMAGE_PIXELS = 60_000_000  # decompression-bomb limit (GLD photos are far smaller)


def open_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied (palette/alpha/CMYK/grey -> RGB)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            return bg
        return im.convert("RGB")


def gld_image_path(root: Path, image_id: str, subdir: str = "train") -> Path:
    return root / subdir / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def read_gld_csv(path: Path) -> pd.DataFrame:
    """Read a GLD ``train.csv`` (``id,url,landmark_id``; v1 quotes every field; BOM tolerated)."""
    if not path.is_file():
        raise DataError(f"GLD csv not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV (expected header id,url,landmark_id)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    df.columns = [c.strip() for c in df.columns]
    for col in ("id", "landmark_id"):
        if col not in df.columns:
            raise DataError(f"{path}: missing column '{col}' (found {list(df.columns)})")
    if df.empty:
        raise DataError(f"{path}: no rows")
    lid = pd.to_numeric(df["landmark_id"].str.strip(), errors="coerce")
    bad = lid.isna() | (lid != lid.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: row {i + 2}: landmark_id {df['landmark_id'].iloc[i]!r} is not an integer")
    df["landmark_id"] = lid.astype("int64")
    df["id"] = df["id"].str.strip()
    return df


def _dedupe(df: pd.DataFrame, skipped: dict, path: Path) -> pd.DataFrame:
    dup = df["id"].duplicated()
    if dup.any():
        skipped["duplicate_id"] = skipped.get("duplicate_id", 0) + int(dup.sum())
        log.warning("%s: %d duplicate ids skipped (first: %s)", path, int(dup.sum()), df.loc[dup, "id"].iloc[0])
    return df[~dup]


def read_gld_v2(root: str | os.PathLike, label_source: str = "train") -> SourceTable:
    """GLD v2: ``train.csv`` (or ``train_clean.csv``: ``landmark_id,images``) + ``train/a/b/c/<id>.jpg``.

    Rows whose image file is absent are skipped and counted (a partial download is normal).
    """
    root = Path(root)
    skipped: dict[str, int] = {}
    if label_source == "clean":
        path = root / "train_clean.csv"
        if not path.is_file():
            raise DataError(f"GLD clean csv not found: {path}")
        clean = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False)
        if not {"landmark_id", "images"} <= set(clean.columns):
            raise DataError(f"{path}: expected columns landmark_id,images (found {list(clean.columns)})")
        clean["id"] = clean["images"].str.split()
        df = read_gld_frame(clean.explode("id")[["id", "landmark_id"]].dropna(), path)
    else:
        path = root / "train.csv"
        df = read_gld_csv(path)
    df = _dedupe(df, skipped, path)
    bad_id = ~df["id"].str.fullmatch(r"[0-9a-zA-Z_-]{3,}")
    if bad_id.any():
        skipped["bad_id"] = int(bad_id.sum())
        df = df[~bad_id]
    src = [str(gld_image_path(root, i)) for i in df["id"]]
    exists = pd.Series([os.path.isfile(s) for s in src], index=df.index)
    if (~exists).any():
        skipped["missing_image"] = int((~exists).sum())
        log.warning("%s: %d of %d images are missing (skipped)", root, int((~exists).sum()), len(df))
    names = df["landmark_id"].astype(str)
    names_csv = root / "landmark_names.csv"  # written by image_folder_to_gld
    if names_csv.is_file():
        known = pd.read_csv(names_csv, dtype={"name": str}).set_index("landmark_id")["name"]
        names = df["landmark_id"].map(known).fillna(names)
    rows = pd.DataFrame({"id": df["id"], "landmark_id": df["landmark_id"], "name": names, "src": src})
    rows = rows[exists.to_numpy()].reset_index(drop=True)
    return SourceTable(rows, open_rgb, skipped, f"GLD v2 at {root} ({label_source})")


def read_gld_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate an (id, landmark_id) frame from train_clean.csv."""
    lid = pd.to_numeric(df["landmark_id"], errors="coerce")
    if lid.isna().any():
        raise DataError(f"{path}: landmark_id {df['landmark_id'][lid.isna()].iloc[0]!r} is not an integer")
    return pd.DataFrame({"id": df["id"].str.strip(), "landmark_id": lid.astype("int64")})


def read_image_folder(root: str | os.PathLike) -> SourceTable:
    """``<root>/<class>/<file>`` -> one class per folder; landmark ids are 0..n-1 in sorted name order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise DataError(f"image folder not readable: {root}") from None
    if not classes:
        raise DataError(f"{root}: no class folders (expected <root>/<class>/<image>)")
    rows, skipped = [], {}
    for lid, name in enumerate(classes):
        try:
            files = sorted(p for p in (root / name).iterdir() if p.is_file())
        except PermissionError:
            skipped["unreadable_dir"] = skipped.get("unreadable_dir", 0) + 1
            log.warning("%s: not readable, skipped", root / name)
            continue
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTS:
                skipped["not_image_ext"] = skipped.get("not_image_ext", 0) + 1
                continue
            rows.append((f"{name}/{p.stem}", lid, name, str(p)))
    df = pd.DataFrame(rows, columns=["id", "landmark_id", "name", "src"])
    if df.empty:
        raise DataError(f"{root}: no image files found in {len(classes)} class folders")
    return SourceTable(df, open_rgb, skipped, f"image folder {root}")


def image_folder_to_gld(src_root: str | os.PathLike, dst_root: str | os.PathLike) -> pd.DataFrame:
    """Convert ``<class>/<file>`` into the GLD v2 layout (train.csv + train/a/b/c/<id>.jpg).

    Ids are 16-hex digests of the relative path (stable across runs); landmark ids are the
    sorted class index; a ``landmark_names.csv`` keeps the folder names. Idempotent.
    """
    import hashlib

    table = read_image_folder(src_root)
    dst_root = Path(dst_root)
    rows = []
    for r in table.rows.itertuples():
        image_id = hashlib.sha1(r.id.encode()).hexdigest()[:16]
        out = gld_image_path(dst_root, image_id)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                img = table.open_image(r.src)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                log.warning("%s: unreadable image skipped (%s)", r.src, e)
                continue
            with atomic_write(out, "wb") as f:
                img.save(f, "JPEG", quality=95)
        rows.append((image_id, f"file://{r.src}", r.landmark_id, r.name))
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id", "name"])
    write_csv(dst_root / "train.csv", df[["id", "url", "landmark_id"]])
    write_csv(dst_root / "landmark_names.csv", df[["landmark_id", "name"]].drop_duplicates())
    return df
