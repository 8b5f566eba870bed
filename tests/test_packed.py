"""Packed uint8 cache: written atomically, read by PackedDataset with the same items, pixels and
augmentation results as the JPEG cache; the fast crop/flip/jitter equal their reference forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from common import schema
from common.errors import DataError
from data_prep.packed import build_packed, open_packed, packed_paths
from data_prep.prep import run_prep
from data_prep.readers import gld_image_path
from pipeline.data.datasets import (
    FastColorJitter,
    PackedDataset,
    build_dataset,
    build_eval_transform,
    build_train_transform,
)
from pipeline.data.loaders import make_loader
from tests.conftest import gld_prep_config


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    rng = np.random.default_rng(0)
    rows = []
    for k in range(3):
        for i in range(10):
            image_id = f"{k}{i:x}a{k * 16 + i:013x}"
            rows.append((image_id, "u", k + 1))
            p = gld_image_path(root / "raw", image_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).resize((64, 48), Image.Resampling.BICUBIC).save(p, quality=90)
    pd.DataFrame(rows, columns=["id", "url", "landmark_id"]).to_csv(root / "raw" / "train.csv", index=False)
    cfg = gld_prep_config(root, dataset="p", top_k=3, image_size=40, packed=True)
    report = run_prep(cfg, progress=False)
    return root / "data" / "p", report


def _rows(data_dir):
    return pd.concat([schema.read_manifest(data_dir, s) for s in schema.SPLITS], ignore_index=True)


def test_packed_files_and_index(prepped):
    data_dir, report = prepped
    assert report["packed"]["rows"] == report["rows_kept"] == 30 and report["packed"]["rebuilt"]
    arr, ids = open_packed(data_dir, 40)
    assert arr.shape == (30, 40, 40, 3) and arr.dtype == np.uint8
    assert ids == _rows(data_dir)["id"].tolist()  # manifest order: train, val, test
    assert not list(data_dir.glob(".*.tmp"))


def test_same_items_as_jpeg_cache(prepped):
    data_dir, _ = prepped
    rows = schema.read_manifest(data_dir, "val")
    tf = build_eval_transform(32)
    jpeg = build_dataset(data_dir, rows, tf, "jpeg")
    packed = build_dataset(data_dir, rows, tf, "packed")
    assert isinstance(packed, PackedDataset) and len(packed) == len(jpeg) == len(rows)
    for i in range(len(rows)):
        a, b = jpeg[i], packed[i]
        assert a.keys() == b.keys() == {"image", "target", "id"}
        assert a["image"].dtype == b["image"].dtype == torch.uint8 and b["image"].shape == (3, 32, 32)
        assert torch.equal(a["image"], b["image"]) and a["target"] == b["target"] and a["id"] == b["id"] == i


def test_same_augmentation_from_either_cache(prepped):
    data_dir, _ = prepped
    rows = schema.read_manifest(data_dir, "train")
    tf = build_train_transform(32, 0.5, 0.3)
    out = {}
    for cache in ("jpeg", "packed"):
        ds = build_dataset(data_dir, rows, tf, cache)
        torch.manual_seed(7)
        out[cache] = torch.stack([ds[i % len(ds)]["image"] for i in range(40)])
    assert torch.equal(out["jpeg"], out["packed"])  # same pixels, same random crops/flips/jitter
    stats = out["packed"].float().mean(dim=(0, 2, 3))
    assert torch.allclose(stats, out["jpeg"].float().mean(dim=(0, 2, 3)))


def test_loader_with_worker_processes(prepped):
    data_dir, _ = prepped
    rows = schema.read_manifest(data_dir, "train")
    ds = build_dataset(data_dir, rows, build_train_transform(32), "packed")
    ds[0]  # the memory map opened in this process must not be pickled into the worker
    batch = next(iter(make_loader(ds, 8, train=True, num_workers=1)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.uint8


def test_rebuild_only_when_needed_and_bad_files(prepped, tmp_path):
    data_dir, _ = prepped
    rows = _rows(data_dir)
    ids, rels = rows["id"].tolist(), rows["image"].tolist()
    data, index = packed_paths(data_dir, 40)
    assert build_packed(data_dir, ids, rels, 40)["rebuilt"] is False
    # a copy of the data folder with a truncated array: a clear error, then a rebuild fixes it
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    with open(copy / data.name, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="rerun prep with packed=true"):
        build_dataset(copy, rows, None, "packed")
    assert build_packed(copy, ids, rels, 40)["rebuilt"] is True
    assert len(build_dataset(copy, rows, None, "packed")) == len(rows)
    (copy / index.name).unlink()
    with pytest.raises(DataError, match="no packed cache"):
        build_dataset(copy, rows, None, "packed")
    with pytest.raises(DataError, match="not in the packed cache"):
        PackedDataset(data_dir, pd.DataFrame({"id": ["nope"], "label": [0]}))
    with pytest.raises(DataError, match="unknown cache 'lmdb'"):
        build_dataset(data_dir, rows, None, "lmdb")


def test_fast_crop_flip_equal_torchvision():
    ours = build_train_transform(24, 0.5, 0.0)
    ref = v2.Compose([v2.RandomCrop(24, pad_if_needed=True), v2.RandomHorizontalFlip(0.5)])
    for shape in [(3, 32, 40), (3, 20, 30), (3, 24, 24)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        torch.manual_seed(3)
        a = [ours(x) for _ in range(16)]
        torch.manual_seed(3)
        b = [ref(x) for _ in range(16)]
        assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_fast_color_jitter_matches_the_three_step_formula():
    x = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(5)
    got = FastColorJitter(0.4)(x)
    torch.manual_seed(5)
    b, c, s = (1 + (torch.rand(3) * 2 - 1) * 0.4).tolist()
    f = x.float()
    gray = 0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2]
    f = gray + (f - gray) * s
    mean = gray.mean()
    want = (((f - mean) * c + mean) * b).clamp(0, 255).to(torch.uint8)
    assert (got.int() - want.int()).abs().max() <= 1
