"""Label sources of the prep stage: GLD v2 train.csv / train_clean.csv (partial downloads), image
folders and their conversion to the GLD layout, CIFAR through the prep; counts reconcile."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import schema
from data_prep.prep import SKIPPED_IMAGES, SKIPPED_READING, run_prep
from data_prep.readers import gld_image_path, image_folder_to_gld, read_gld_v2, read_image_folder
from tests.conftest import gld_prep_config


def make_gld(root, sizes=(6, 4, 3), size=40, missing=(), extra_rows=()):
    """A GLD v2 tree: ``sizes[k]`` images of landmark ``10 * (k + 1)``; ``missing`` ids get no file."""
    rows = []
    for k, n in enumerate(sizes):
        for i in range(n):
            image_id = f"{k:x}{i:x}f{k * 16 + i:013x}"
            rows.append((image_id, f"http://x/{image_id}.jpg", 10 * (k + 1)))
            if image_id in missing or len(missing) and i == 0 and k in missing:
                continue
            p = gld_image_path(root, image_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size + 8 * i, size), (40 * k, 10 * i, 90)).save(p, "JPEG")
    df = pd.DataFrame(list(rows) + list(extra_rows), columns=["id", "url", "landmark_id"])
    df.to_csv(root / "train.csv", index=False)
    return df


def cfg(tmp_path, **kw):
    return gld_prep_config(tmp_path, **{"dataset": "t", "val_frac": 0.2, "test_frac": 0.2, **kw})


def assert_reconciles(r):
    assert r["rows_in"] == r["rows_read"] + sum(r["skipped_reading"].values())
    assert r["rows_after_sampling"] == r["rows_kept"] + sum(r["skipped_images"].values())
    assert sum(r["splits"].values()) == r["rows_kept"]


def test_partial_download_counted_and_listed(tmp_path):
    df = make_gld(tmp_path / "raw", missing=(0, 2))  # first image of classes 0 and 2 absent
    extra = tmp_path / "raw" / "train" / "f" / "f" / "f"
    extra.mkdir(parents=True)
    r = run_prep(cfg(tmp_path), progress=False)
    assert r["skipped_reading"] == {"missing_image": 2}
    assert r["rows_in"] == len(df) and r["rows_read"] == len(df) - 2
    assert_reconciles(r)
    listed = pd.read_csv(tmp_path / "data" / "t" / SKIPPED_READING)
    assert sorted(listed["reason"]) == ["missing_image"] * 2
    assert set(listed["id"]) == {df["id"][0], df["id"][10]}
    assert (tmp_path / "data" / "t" / r["histogram"]).stat().st_size > 1000


def test_train_clean_csv(tmp_path):
    df = make_gld(tmp_path / "raw")
    clean = df.groupby("landmark_id")["id"].apply(lambda s: " ".join(s.iloc[:-1])).reset_index()
    clean.columns = ["landmark_id", "images"]
    clean.to_csv(tmp_path / "raw" / "train_clean.csv", index=False)
    t = read_gld_v2(tmp_path / "raw", "clean")
    assert len(t.rows) == len(df) - 3 and set(t.rows["landmark_id"]) == {10, 20, 30}
    assert t.description.endswith("(train_clean.csv)")
    r = run_prep(cfg(tmp_path, label_source="clean"), progress=False)
    assert r["rows_kept"] == len(df) - 3
    assert_reconciles(r)


def test_counts_reconcile_with_every_kind_of_skip(tmp_path):
    dup = ("00f0000000000000", "u", 10)
    df = make_gld(tmp_path / "raw", sizes=(8, 6, 5, 2), missing=(1,), extra_rows=[dup, ("x", "u", 10)])
    p = gld_image_path(tmp_path / "raw", df["id"][3])
    p.write_bytes(p.read_bytes()[:100])  # truncated
    gld_image_path(tmp_path / "raw", df["id"][4]).write_bytes(b"")  # empty
    r = run_prep(cfg(tmp_path, top_k=3, sample_ratio=0.8, max_per_class=5), progress=False)
    assert r["skipped_reading"] == {"bad_id": 1, "duplicate_id": 1, "missing_image": 1}
    assert r["rows_after_top_k"] == 8 + 5 + 5
    assert r["rows_after_sampling"] == 5 + 4 + 4
    assert_reconciles(r)
    assert sum(r["skipped_images"].values()) == len(pd.read_csv(tmp_path / "data" / "t" / SKIPPED_IMAGES))
    m = pd.concat(schema.read_manifest(tmp_path / "data" / "t", s) for s in schema.SPLITS)
    assert len(m) == r["rows_kept"] and m["id"].is_unique


def test_splits_deterministic_and_stratified(tmp_path):
    make_gld(tmp_path / "raw", sizes=(16, 16, 8))
    r1 = run_prep(cfg(tmp_path, val_frac=0.125, test_frac=0.125), progress=False)
    r2 = run_prep(cfg(tmp_path, dataset="u", val_frac=0.125, test_frac=0.125), progress=False)
    assert r1["splits"] == r2["splits"] == {"train": 30, "val": 5, "test": 5}
    for s in schema.SPLITS:
        a = schema.read_manifest(tmp_path / "data" / "t", s)
        b = schema.read_manifest(tmp_path / "data" / "u", s)
        assert a.equals(b)
    r3 = run_prep(cfg(tmp_path, dataset="v", seed=1, val_frac=0.125, test_frac=0.125), progress=False)
    assert r3["splits"] == r1["splits"]
    assert not schema.read_manifest(tmp_path / "data" / "v", "val")["id"].equals(
        schema.read_manifest(tmp_path / "data" / "t", "val")["id"]
    )


def _folder(root):
    for name, color in (("arc", (200, 0, 0)), ("bridge", (0, 200, 0))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (30, 20), color).save(root / name / f"p{i}.jpg", quality=90)
    Image.new("RGBA", (30, 20), (0, 0, 200, 255)).save(root / "bridge" / "p9.png")
    Image.new("RGB", (30, 20)).save(root / "bridge" / "p0.png")  # same stem as p0.jpg
    (root / "arc" / "notes.txt").write_text("x")


def test_image_folder_reader(tmp_path):
    _folder(tmp_path / "f")
    t = read_image_folder(tmp_path / "f")
    assert t.skipped == {"not_image_ext": 1}
    assert t.rows["id"].is_unique and "bridge/p0.png" in set(t.rows["id"]) and "arc/p0" in set(t.rows["id"])
    assert dict(zip(t.rows["name"], t.rows["landmark_id"])) == {"arc": 0, "bridge": 1}


def test_image_folder_to_gld_layout(tmp_path):
    _folder(tmp_path / "f")
    df = image_folder_to_gld(tmp_path / "f", tmp_path / "raw")
    assert len(df) == 8 and df["id"].str.fullmatch(r"[0-9a-f]{16}").all()
    src = df.loc[df["url"].str.endswith("arc/p1.jpg"), "id"].item()
    # a JPEG is copied byte for byte (no second lossy encode)
    assert gld_image_path(tmp_path / "raw", src).read_bytes() == (tmp_path / "f" / "arc" / "p1.jpg").read_bytes()
    again = image_folder_to_gld(tmp_path / "f", tmp_path / "raw")
    assert again["id"].tolist() == df["id"].tolist()  # stable ids, idempotent
    r = run_prep(cfg(tmp_path), progress=False)
    assert r["rows_kept"] == 8 and r["classes_kept"] == 2
    lm = schema.read_label_map(tmp_path / "data" / "t")
    assert lm["name"].tolist() == ["arc", "bridge"]


def test_real_paris6k_runs_the_gld_path(tmp_path, shared_data):
    df = image_folder_to_gld(shared_data / "paris6k_sample", tmp_path / "raw")
    assert len(df) == 250
    r = run_prep(
        cfg(tmp_path, image_size=24, resize_mode="shorter", val_frac=0.1, test_frac=0.1, workers=2), progress=False
    )
    assert r["classes_kept"] == 5 and r["rows_kept"] == 250 and not r["skipped_images"]
    assert_reconciles(r)
    lm = schema.read_label_map(tmp_path / "data" / "t")
    assert set(lm["name"]) == {"defense", "eiffel_tower", "invalides", "louvre", "moulinrouge"}


def test_cifar10_through_prep_is_lossless(tmp_path, shared_data):
    from data_prep.cifar import load_cifar_arrays

    c = cfg(
        tmp_path,
        dataset="c10",
        source="cifar10",
        source_root=str(shared_data / "cifar10_subset"),
        top_k=3,
        sample_ratio=0.02,
        image_size=32,
        val_frac=0.1,
        packed=True,
    )
    r = run_prep(c, progress=False)
    assert_reconciles(r)
    assert r["cache"]["format"] == "png" and r["classes_kept"] == 3
    out = tmp_path / "data" / "c10"
    test = schema.read_manifest(out, "test")
    assert test["id"].str.startswith("cifar10_test_").all() and len(test) == r["splits"]["test"] > 0
    train = pd.concat([schema.read_manifest(out, "train"), schema.read_manifest(out, "val")])
    assert train["id"].str.startswith("cifar10_train_").all()
    arrays = load_cifar_arrays(shared_data / "cifar10_subset", "cifar10")
    row = test.iloc[0]
    want = arrays["test"][0][int(row["id"].rsplit("_", 1)[1])]
    assert np.array_equal(np.asarray(Image.open(out / row["image"])), want)
    meta = json.loads((out / "packed_32.json").read_text())
    packed = np.memmap(out / "packed_32.u8", dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
    assert np.array_equal(packed[meta["ids"].index(row["id"])], want)


@pytest.mark.parametrize("source", ["gld_v2", "imagefolder"])
def test_missing_source_root_is_a_clear_error(tmp_path, source):
    from common.errors import DataError

    with pytest.raises(DataError, match="not found"):
        run_prep(cfg(tmp_path, source=source, source_root=str(tmp_path / "nowhere")), progress=False)
