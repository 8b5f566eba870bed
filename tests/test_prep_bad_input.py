"""Bad input to the prep stage: a clear one-line error naming the file/row, or skipped and counted.
Also: a prep killed mid-cache resumes without redoing finished work and leaves no partial files."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import schema
from common.errors import DataError
from data_prep import readers
from data_prep.prep import SKIPPED_IMAGES, SKIPPED_READING, run_prep
from data_prep.readers import gld_image_path, read_gld_csv, read_gld_v2, read_image_folder
from tests.conftest import gld_prep_config

REPO = Path(__file__).resolve().parents[1]


def make_gld(root: Path, n: int = 12, classes: int = 3, size: int = 32) -> pd.DataFrame:
    """``n`` images round-robin over ``classes`` landmarks in the GLD v2 layout."""
    rows = []
    for i in range(n):
        image_id = f"{i % 16:x}{i // 16 % 16:x}c{i:013x}"
        rows.append((image_id, f"http://x/{i}.jpg", 100 + i % classes))
        p = gld_image_path(root, image_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size + i, size), (i * 9 % 256, 80, 160)).save(p, "JPEG")
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id"])
    df.to_csv(root / "train.csv", index=False)
    return df


def cfg(tmp_path, **kw):
    # tiny classes (2-3 images): test_frac 0.5 keeps a test image per class (an empty test split is refused)
    return gld_prep_config(tmp_path, **{"dataset": "b", "test_frac": 0.5, **kw})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- CSV problems -------------------------------------------------------------------------------


def test_missing_column(tmp_path):
    p = write(tmp_path / "train.csv", "id,url\nabc,u\n")
    with pytest.raises(DataError, match=r"train.csv: missing column 'landmark_id'"):
        read_gld_csv(p)


def test_non_integer_landmark_id_names_the_line(tmp_path):
    p = write(tmp_path / "train.csv", "id,url,landmark_id\nabc,u,1\nabd,u,x7\n")
    with pytest.raises(DataError, match=r"train.csv: line 3: landmark_id 'x7' is not an integer"):
        read_gld_csv(p)
    p = write(tmp_path / "train.csv", "id,url,landmark_id\nabc,u,1.5\n")
    with pytest.raises(DataError, match="line 2"):
        read_gld_csv(p)


def test_non_integer_landmark_id_in_train_clean(tmp_path):
    write(tmp_path / "train_clean.csv", "landmark_id,images\n1,abc abd\nseven,abe\n")
    with pytest.raises(DataError, match=r"train_clean.csv: line 3: landmark_id 'seven'"):
        read_gld_v2(tmp_path, "clean")
    write(tmp_path / "train_clean.csv", "landmark,images\n1,abc\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['landmark_id'\]"):
        read_gld_v2(tmp_path, "clean")


@pytest.mark.parametrize("text, match", [("", "empty CSV"), ("id,url,landmark_id\n", "no rows")])
def test_empty_csv(tmp_path, text, match):
    p = write(tmp_path / "train.csv", text)
    with pytest.raises(DataError, match=match):
        read_gld_csv(p)
    with pytest.raises(DataError, match=match):
        run_prep(cfg(tmp_path, source_root=str(tmp_path)), progress=False)


def test_bom_and_quoted_fields(tmp_path):
    """GLD v1 quotes every field; Excel writes a BOM; both parse."""
    text = '\ufeff"id","url","landmark_id"\n"abc123","http://x/a.jpg","5"\n"abd124","http://x/b.jpg", "6"\n'
    df = read_gld_csv(write(tmp_path / "train.csv", text))
    assert df["id"].tolist() == ["abc123", "abd124"] and df["landmark_id"].tolist() == [5, 6]


def test_duplicate_ids_skipped_and_counted(tmp_path):
    df = make_gld(tmp_path / "raw", n=6)
    pd.concat([df, df.iloc[[0, 1]]]).to_csv(tmp_path / "raw" / "train.csv", index=False)
    r = run_prep(cfg(tmp_path), progress=False)
    assert r["skipped_reading"] == {"duplicate_id": 2} and r["rows_in"] == 8 and r["rows_kept"] == 6
    listed = pd.read_csv(tmp_path / "data" / "b" / SKIPPED_READING)
    assert sorted(listed["id"]) == sorted(df["id"][:2])


# ---- image problems ------------------------------------------------------------------------------


def test_missing_image_path_counted(tmp_path):
    df = make_gld(tmp_path / "raw", n=9)
    gld_image_path(tmp_path / "raw", df["id"][4]).unlink()
    r = run_prep(cfg(tmp_path), progress=False)
    assert r["skipped_reading"] == {"missing_image": 1} and r["rows_read"] == 8


def test_all_images_missing_is_a_clear_error(tmp_path):
    write(tmp_path / "raw" / "train.csv", "id,url,landmark_id\nabc,u,1\n")
    with pytest.raises(DataError, match="no usable rows"):
        run_prep(cfg(tmp_path), progress=False)


def test_empty_truncated_and_non_image_files_skipped_and_listed(tmp_path):
    df = make_gld(tmp_path / "raw", n=9, size=64)
    paths = [gld_image_path(tmp_path / "raw", i) for i in df["id"]]
    paths[0].write_bytes(b"")
    paths[1].write_bytes(paths[1].read_bytes()[:200])
    paths[2].write_text("<html>404 not found</html>")
    paths[3].write_bytes(b"\xff\xd8\xff" + os.urandom(300))  # JPEG magic, garbage body
    r = run_prep(cfg(tmp_path), progress=False)
    assert r["skipped_images"].get("empty_file") == 1 and r["skipped_images"].get("not_image", 0) >= 1
    assert sum(r["skipped_images"].values()) == 4 and r["rows_kept"] == 5
    listed = pd.read_csv(tmp_path / "data" / "b" / SKIPPED_IMAGES)
    assert set(listed["id"]) == set(df["id"][:4]) and listed["detail"].notna().all()
    assert dict(zip(listed["id"], listed["reason"]))[df["id"][1]] in ("truncated", "unreadable")


def test_unreadable_gld_folder_counts_its_images_missing(tmp_path, monkeypatch):
    """chmod 000 does not stop root (the user here), so the listing raises PermissionError."""
    df = make_gld(tmp_path / "raw", n=6)
    locked = str(gld_image_path(tmp_path / "raw", df["id"][0]).parent)
    real = os.listdir

    def listdir(path="."):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(readers.os, "listdir", listdir)
    t = read_gld_v2(tmp_path / "raw")
    assert t.skipped == {"missing_image": 1} and len(t.rows) == 5


def test_unreadable_class_folder_is_skipped(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "f" / name / "x.jpg")
    real = Path.iterdir

    def iterdir(self):
        if self.name == "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    t = read_image_folder(tmp_path / "f")
    assert t.skipped == {"unreadable_dir": 1} and t.rows["name"].tolist() == ["a"]
    assert t.skipped_rows["reason"].tolist() == ["unreadable_dir"]


def test_unreadable_root_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "f").mkdir()

    def iterdir(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match="not readable"):
        read_image_folder(tmp_path / "f")


# ---- CIFAR ---------------------------------------------------------------------------------------


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar_batch_with_wrong_shape(tmp_path):
    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"c{i}".encode() for i in range(10)]
    _pickle(folder / "batches.meta", {b"label_names": names})
    _pickle(folder / "data_batch_1", {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})
    _pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    c = cfg(tmp_path, source="cifar10", source_root=str(tmp_path / "c"), image_size=32)
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must have shape \(N, 3072\), found \(4, 100\)"):
        run_prep(c, progress=False)


# ---- interrupted prep ----------------------------------------------------------------------------

_SLOW_PREP = """
import sys, time
import data_prep.images as images
_resize = images.resize_image
def slow(*a, **k):
    time.sleep(0.02)
    return _resize(*a, **k)
images.resize_image = slow
from common.cli import run_main
from data_prep.__main__ import main
sys.exit(run_main(main, sys.argv[1:]))
"""


def test_killed_prep_resumes_without_redoing_work(tmp_path):
    df = make_gld(tmp_path / "raw", n=120, classes=4)
    c = cfg(tmp_path)
    args = [
        f"{k}={getattr(c, k)}"
        for k in ("dataset", "source", "source_root", "data_root", "top_k", "sample_ratio", "image_size", "workers")
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREP, "prep", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "data" / "b"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and len(list(out.glob("images/*/*.jpg"))) < 15:
            assert proc.poll() is None, "prep finished before it could be interrupted"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*.jpg")}
    assert 15 <= len(before) < len(df)
    assert not (out / schema.PREP_REPORT).exists() and not schema.manifest_path(out, "train").exists()

    r = run_prep(c, progress=False)
    assert r["cache"]["reused"] == len(before) and r["cache"]["encoded"] == len(df) - len(before)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished files not redone
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert sum(len(schema.read_manifest(out, s)) for s in schema.SPLITS) == len(df) == r["rows_kept"]
