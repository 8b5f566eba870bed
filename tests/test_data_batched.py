"""The batched input path over the packed cache, the training-input interface and the prefetcher.

Images here encode their own coordinates (R = row + 1, G = column + 1, B = 100 + image number;
zero = padding), so a crop tells where it came from and whether it was flipped. The batched
and per-item paths are compared on the *distribution* of what they draw (they use different
random streams by design), with tolerances derived from the sample sizes; everything is seeded,
so the tests are deterministic.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from common.errors import ConfigError, DataError
from data_prep.packed import build_packed
from pipeline.config import TrainConfig
from pipeline.data.augment import get_policy
from pipeline.data.batch_augment import BatchAugment
from pipeline.data.datasets import (
    BatchedPackedDataset,
    ItemDataError,
    PackedDataset,
    batch_as_is,
    build_dataset,
    build_eval_transform,
)
from pipeline.data.loaders import build_eval_loader, build_train_input, resolve_input_path
from pipeline.data.prefetch import Prefetcher
from pipeline.data.transforms import FastColorJitter, FastHorizontalFlip, FastRandomCrop, ItemPipeline
from tests.ddp import needs_torchrun, torchrun2

SIDE = 40  # packed side
N_IMAGES = 30


def _coord_image(k: int, h: int = SIDE, w: int = SIDE) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy + 1, xx + 1, np.full_like(yy, 100 + k)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def coord_data(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A data folder with lossless cached images (PNG) and their packed array, built by prep's writer."""
    root = tmp_path_factory.mktemp("coords")
    ids = [f"img{k:03d}" for k in range(N_IMAGES)]
    rels = [f"images/{i}.png" for i in ids]
    (root / "images").mkdir()
    for k, rel in enumerate(rels):
        Image.fromarray(_coord_image(k)).save(root / rel)
    build_packed(root, ids, rels, SIDE, workers=1)
    rows = pd.DataFrame({"id": ids, "image": rels, "label": np.arange(N_IMAGES) % 5})
    return root, rows


def _decode(img: torch.Tensor) -> tuple[int, int, bool]:
    """(top, left, flipped) of a crop of a coordinate image, in source pixels (negative = padding)."""
    r, g, b = (img[c].long() for c in range(3))
    valid = b > 0
    rows = valid.sum(1)
    y = int(torch.nonzero(rows >= 2)[0])
    cols = torch.nonzero(valid[y]).flatten()
    c = int(cols[0])
    flipped = bool(g[y, cols[1]] < g[y, c])
    top = int(r[y, c]) - 1 - y
    s = img.shape[-1]
    left = int(g[y, c]) - 1 - (s - 1 - c if flipped else c)
    return top, left, flipped


def _expected_crop(k: int, top: int, left: int, flipped: bool, size: int) -> torch.Tensor:
    """The reference crop: zero-pad generously, slice, flip."""
    pad = size
    src = torch.from_numpy(_coord_image(k)).permute(2, 0, 1)
    src = torch.nn.functional.pad(src, (pad, pad, pad, pad))
    out = src[:, top + pad : top + pad + size, left + pad : left + pad + size]
    return out.flip(-1) if flipped else out


def _chi2_uniform(values: np.ndarray, lo: int, hi: int) -> float:
    counts = np.bincount(values - lo, minlength=hi - lo + 1)
    assert len(counts) == hi - lo + 1, f"values outside [{lo}, {hi}]"
    expected = len(values) / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def _cfg(**over) -> TrainConfig:
    base = dict(cache="packed", img_size=32, batch_size=8, crop_padding=0, color_jitter=0.0, seed=3)
    return TrainConfig(**{**base, **over})


# ---- same distribution, per item and batched


@pytest.mark.parametrize("use_cv2", [True, False])
def test_batched_crops_and_flips_have_the_per_item_distribution(coord_data, use_cv2):
    """Crop offsets uniform over the same range (padding included), same flip rate; every
    batched crop is exactly the window it claims (padding zeros where the window leaves the image)."""
    root, rows = coord_data
    size, pad, epochs = 32, 4, 100
    n = epochs * N_IMAGES  # 3000 draws per path
    item = PackedDataset(root, rows, ItemPipeline([FastRandomCrop(size, pad), FastHorizontalFlip(0.5)]), seed=11)
    batched = BatchedPackedDataset(root, rows, BatchAugment(size, "crop", pad, 0.5, use_cv2=use_cv2), seed=11)
    draws = {"item": [], "batched": []}
    for epoch in range(epochs):
        item.epoch = batched.epoch = epoch
        for i in range(N_IMAGES):
            draws["item"].append(_decode(item[i]["image"]))
        for start in range(0, N_IMAGES, 8):
            idx = list(range(start, min(start + 8, N_IMAGES)))
            batch = batched.__getitems__(idx)
            for j, k in enumerate(idx):
                got = batch["image"][j]
                t, left, f = _decode(got)
                if epoch < 3:  # pixel check of the rendering on a few hundred crops
                    assert torch.equal(got, _expected_crop(k, t, left, f, size))
                draws["batched"].append((t, left, f))
    lo, hi = -pad, SIDE + pad - size  # offsets in source pixels: -4 .. 12 (17 values)
    crit = 39.3  # chi-square, 16 degrees of freedom, p = 0.001
    sd_mean = math.sqrt(((hi - lo + 1) ** 2 - 1) / 12 / n)
    for name, d in draws.items():
        a = np.array(d)
        assert len(a) == n
        for col in (0, 1):
            assert _chi2_uniform(a[:, col], lo, hi) < crit, (name, col)
            assert abs(a[:, col].mean() - (lo + hi) / 2) < 4 * sd_mean, (name, col)
        assert abs(a[:, 2].mean() - 0.5) < 4 * math.sqrt(0.25 / n), name
    a, b = np.array(draws["item"]), np.array(draws["batched"])
    for col in (0, 1):  # the two paths against each other: means and quartiles
        assert abs(a[:, col].mean() - b[:, col].mean()) < 4 * math.sqrt(2) * sd_mean
        assert np.abs(np.quantile(a[:, col], [0.25, 0.5, 0.75]) - np.quantile(b[:, col], [0.25, 0.5, 0.75])).max() <= 1
    # and they are different streams (different pixels), as documented
    assert (a != b).any()


def _brightness(outputs: torch.Tensor, value: int) -> np.ndarray:
    # on a grey image only the brightness factor acts: out = trunc(clamp(b * value))
    return outputs.float().mean(dim=(1, 2, 3)).numpy() / value


def test_batched_jitter_has_the_per_item_distribution(tmp_path):
    """Grey images: only the brightness factor acts, so outputs show its distribution, which must
    be uniform on [1 - s, 1 + s] on both paths (and through the device transform)."""
    value, s, n = 100, 0.4, 2000
    ids = [f"g{k}" for k in range(n)]
    rels = []
    (tmp_path / "images").mkdir()
    grey = np.full((8, 8, 3), value, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "images" / "g.png")
    rels = ["images/g.png"] * n
    build_packed(tmp_path, ids, rels, 8, workers=1)
    rows = pd.DataFrame({"id": ids, "image": rels, "label": 0})
    item = PackedDataset(tmp_path, rows, ItemPipeline([FastColorJitter(s)]), seed=1)
    per_item = torch.stack([item[i]["image"] for i in range(n)])
    cfg = _cfg(img_size=8, color_jitter=s, batch_size=100, hflip=0.0)
    in_loader = torch.cat([b["image"] for b in build_train_input(tmp_path, rows, cfg, jitter_on_device=False).loader])
    ti = build_train_input(tmp_path, rows, cfg, jitter_on_device=True)
    assert ti.device_transform is not None
    raw = torch.cat([b["image"] for b in ti.loader])
    assert (raw == value).all()  # the loader leaves the jitter to the device transform
    on_device = torch.cat([ti.device_transform(b.clone()) for b in raw.split(100)])
    sd = s * 2 / math.sqrt(12 * n)
    samples = {}
    for name, out in (("item", per_item), ("loader", in_loader), ("device", on_device)):
        f = _brightness(out, value)
        samples[name] = f
        assert len(f) == n
        assert abs(f.mean() - 1) < 4 * sd + 0.5 / value, name  # (+ truncation to an integer)
        # within one grey level of [1 - s, 1 + s] (OpenCV rounds where torch truncates; see jitter_matrix)
        assert f.min() >= 1 - s - 1.001 / value and f.max() <= 1 + s + 1.001 / value, name
        assert f.min() < 1 - s + 0.02 and f.max() > 1 + s - 0.03, name  # reaches both ends
        hist = np.histogram(f, bins=8, range=(1 - s, 1 + s + 1e-6))[0]
        assert hist.min() > n / 8 * 0.7, (name, hist)
    crit = 1.95 * math.sqrt(2 / n)  # two-sample Kolmogorov-Smirnov, p = 0.001
    for other in ("loader", "device"):
        a, b = np.sort(samples["item"]), np.sort(samples[other])
        grid = np.union1d(a, b)
        ks = np.abs(np.searchsorted(a, grid, "right") / n - np.searchsorted(b, grid, "right") / n).max()
        assert ks < crit, (other, ks)


def test_batched_rrc_boxes_follow_the_scale_range(coord_data):
    """rrc through the batched loader: crops are resized boxes whose area fraction lies in rrc_scale."""
    root, rows = coord_data
    cfg = _cfg(augment="rrc", rrc_scale=[0.3, 0.6], hflip=0.0, img_size=24)
    ti = build_train_input(root, rows, cfg)
    assert ti.path == "batched"
    fractions = []
    for epoch in range(10):
        ti.set_epoch(epoch)
        for batch in ti.loader:
            img = batch["image"].long()
            assert img.shape[1:] == (3, 24, 24)
            # resized coordinates: the spread of R and G over the output is the box size (minus one)
            h = (img[:, 0].amax(dim=(1, 2)) - img[:, 0].amin(dim=(1, 2)) + 1).float()
            w = (img[:, 1].amax(dim=(1, 2)) - img[:, 1].amin(dim=(1, 2)) + 1).float()
            fractions.append((h * w / SIDE**2).numpy())
    f = np.concatenate(fractions)
    # bilinear resampling trims about half a pixel per side, hence the slack
    assert f.min() > 0.3 * 0.8 and f.max() < 0.6 * 1.1
    assert f.std() > 0.03  # boxes vary


def test_eval_loader_batched_equals_per_item_centre_crop(coord_data):
    root, rows = coord_data
    for img_size in (32, 40, 45):  # smaller, equal, larger than the packed side (zero padding)
        cfg = _cfg(img_size=img_size, batch_size=7)
        loader = build_eval_loader(root, rows, cfg)
        assert isinstance(loader.dataset, BatchedPackedDataset)
        got = list(loader)
        ids = torch.cat([b["id"] for b in got])
        assert ids.tolist() == list(range(N_IMAGES))  # in order, every row once, short last batch kept
        images = torch.cat([b["image"] for b in got])
        ref = build_dataset(root, rows, build_eval_transform(img_size), "jpeg")
        assert torch.equal(images, torch.stack([ref[i]["image"] for i in range(N_IMAGES)]))
        assert torch.equal(torch.cat([b["target"] for b in got]), torch.tensor(rows["label"].to_numpy()))
    per_item = build_eval_loader(root, rows, _cfg(input_path="per_item"))
    assert not isinstance(per_item.dataset, BatchedPackedDataset)


# ---- the TrainInput interface


def _epoch(ti, epoch: int) -> list[dict]:
    ti.set_epoch(epoch)
    return list(ti.loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x[k], y[k]) for k in ("image", "target", "id")) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("cache,augment", [("packed", "default"), ("packed", "rrc"), ("jpeg", "default")])
def test_set_epoch_makes_runs_repeatable_and_resumable(coord_data, cache, augment):
    root, rows = coord_data
    cfg = _cfg(cache=cache, augment=augment, color_jitter=0.3, crop_padding=4)
    a, b = build_train_input(root, rows, cfg), build_train_input(root, rows, cfg)
    assert a.path == ("batched" if cache == "packed" else "per_item")
    first = [_epoch(a, e) for e in range(3)]
    assert _same(first[0], _epoch(b, 0))
    assert not _same(first[0], first[1])  # another epoch: other order and augmentation
    resumed = build_train_input(root, rows, cfg)
    assert _same(first[2], _epoch(resumed, 2))  # a resumed run's epoch 2 equals the uninterrupted one's
    other_seed = build_train_input(root, rows, _cfg(cache=cache, augment=augment, color_jitter=0.3, seed=4))
    assert not _same(first[0], _epoch(other_seed, 0))


@pytest.mark.parametrize("cache", ["packed", "jpeg"])
def test_rows_get_new_augmentations_every_epoch(coord_data, cache):
    root, rows = coord_data
    ti = build_train_input(root, rows, _cfg(cache=cache, crop_padding=4, batch_size=30))
    seen = []
    for epoch in range(3):
        batch = _epoch(ti, epoch)[0]
        seen.append({int(i): img for i, img in zip(batch["id"], batch["image"])})
    for a, b in ((0, 1), (1, 2)):
        same = sum(torch.equal(seen[a][i], seen[b][i]) for i in range(N_IMAGES))
        assert same <= 3  # 17 x 17 offsets x 2 flips: a repeat by chance is rare


def test_batched_epoch_covers_every_row_once(coord_data):
    root, rows = coord_data
    ti = build_train_input(root, rows, _cfg(batch_size=8))
    for epoch in range(3):
        batches = _epoch(ti, epoch)
        ids = torch.cat([b["id"] for b in batches]).tolist()
        assert all(len(b["id"]) == 8 for b in batches)
        assert len(ids) == len(set(ids)) == N_IMAGES // 8 * 8  # the short last batch is dropped
        for b in batches:  # targets and images belong to the ids
            assert b["target"].tolist() == rows["label"].to_numpy()[b["id"].numpy()].tolist()
            assert (b["image"][:, 2].amax(dim=(1, 2)) - 100).tolist() == b["id"].tolist()


def test_no_global_random_state_is_used(coord_data):
    """Neither path draws from torch's or numpy's global generators (a prefetch thread would
    otherwise interleave with the main thread's dropout draws)."""
    root, rows = coord_data
    for cache, augment in (("packed", "default"), ("packed", "rrc"), ("jpeg", "default"), ("jpeg", "strong")):
        ti = build_train_input(root, rows, _cfg(cache=cache, augment=augment, color_jitter=0.3))
        torch.manual_seed(0)
        np.random.seed(0)
        before = torch.get_rng_state(), np.random.get_state()[1].copy()
        for _ in Prefetcher(ti.loader, "cpu"):
            pass
        assert torch.equal(torch.get_rng_state(), before[0]), (cache, augment)
        assert (np.random.get_state()[1] == before[1]).all(), (cache, augment)


def test_worker_processes_give_the_same_batches(coord_data):
    """Augmentation is seeded per batch (batched) or per row (per item), not per process."""
    root, rows = coord_data
    for cache in ("packed", "jpeg"):
        one = _epoch(build_train_input(root, rows, _cfg(cache=cache, color_jitter=0.3, crop_padding=2)), 1)
        two = _epoch(
            build_train_input(root, rows, _cfg(cache=cache, color_jitter=0.3, crop_padding=2, num_workers=1)), 1
        )
        assert _same(one, two), cache


def test_input_path_resolution_and_errors(coord_data):
    root, rows = coord_data
    assert resolve_input_path(_cfg()) == "batched"
    assert resolve_input_path(_cfg(augment="rrc")) == "batched"
    assert resolve_input_path(_cfg(augment="strong")) == "per_item"
    assert resolve_input_path(_cfg(cache="jpeg")) == "per_item"
    assert resolve_input_path(_cfg(input_path="per_item")) == "per_item"
    assert build_train_input(root, rows, _cfg(input_path="per_item")).path == "per_item"
    with pytest.raises(ConfigError, match="input_path=batched.*cache=jpeg") as e:
        build_train_input(root, rows, _cfg(cache="jpeg", input_path="batched"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="input_path=batched.*augment=strong"):
        build_train_input(root, rows, _cfg(augment="strong", input_path="batched"))
    with pytest.raises(DataError, match="no training rows"):
        build_train_input(root, rows.iloc[:0], _cfg())


# ---- sharding under DDP (accelerate's BatchSamplerShard, as prepare() builds it)


def test_sharded_batch_sampler_sees_every_row_once(coord_data):
    from accelerate.data_loader import BatchSamplerShard

    root, rows = coord_data
    ti = build_train_input(root, rows, _cfg(batch_size=7))  # 30 rows: 4 full batches, 2 dropped
    ev = build_eval_loader(root, rows, _cfg(batch_size=4))  # 8 batches, the last one of 2
    for loader, train in ((ti.loader, True), (ev, False)):
        seen = []
        for rank in range(2):
            ti.set_epoch(5)
            shard = BatchSamplerShard(loader.batch_sampler, num_processes=2, process_index=rank, even_batches=True)
            dl = DataLoader(loader.dataset, batch_sampler=shard, collate_fn=batch_as_is)
            seen.append(torch.cat([b["id"] for b in dl]).tolist())
        both = seen[0] + seen[1]
        if train:
            assert len(both) == len(set(both)) == 28  # disjoint shards, 4 full batches of 7
        else:
            assert set(both) == set(range(N_IMAGES))  # every row; accelerate's even_batches pads with
            assert len(both) - N_IMAGES == 2  # rows from the start, which gather_for_metrics drops


@pytest.mark.slow
@needs_torchrun
def test_two_rank_run_reads_every_row_once(tmp_path, coord_data):
    """Two gloo ranks through accelerate.prepare + Prefetcher: training shards are disjoint,
    evaluation (gather_for_metrics) returns every row exactly once."""
    import json

    root, rows = coord_data
    rows.to_csv(tmp_path / "rows.csv", index=False)
    script = tmp_path / "ddp.py"
    script.write_text(
        f"""
import json, sys
import pandas as pd, torch
from accelerate import Accelerator
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pipeline.config import TrainConfig
from pipeline.data.loaders import build_eval_loader, build_train_input
from pipeline.data.prefetch import Prefetcher
acc = Accelerator(cpu=True)
rows = pd.read_csv({str(tmp_path / "rows.csv")!r}, dtype={{"id": str}})
cfg = TrainConfig(cache="packed", img_size=32, batch_size=4, color_jitter=0.2, seed=1)
ti = build_train_input({str(root)!r}, rows, cfg)
ev = build_eval_loader({str(root)!r}, rows, cfg)
train, ev = acc.prepare(ti.loader, ev)
out = {{"train": [], "eval": []}}
for epoch in range(2):
    ti.set_epoch(epoch)
    ids = torch.cat([b["id"] for b in Prefetcher(train, acc.device)])
    out["train"].append(acc.gather(ids).tolist())
got = [acc.gather_for_metrics(b["id"]) for b in Prefetcher(ev, acc.device)]
out["eval"] = torch.cat(got).tolist()
if acc.is_main_process:
    json.dump(out, open({str(tmp_path / "out.json")!r}, "w"))
acc.wait_for_everyone()
torch.distributed.destroy_process_group()
"""
    )
    torchrun2([str(script)], tmp_path, timeout=300)
    out = json.loads((tmp_path / "out.json").read_text())
    for ids in out["train"]:  # 30 rows, 2 ranks x batch 4: 3 steps of 8 rows, no row twice
        assert len(ids) == len(set(ids)) == 24
    assert out["train"][0] != out["train"][1]
    assert sorted(out["eval"]) == list(range(N_IMAGES))


# ---- one clear line for a bad cached image, even from a worker process


@pytest.fixture()
def broken_jpeg_rows(coord_data, tmp_path) -> tuple[Path, pd.DataFrame]:
    import shutil

    root, rows = coord_data
    shutil.copytree(root / "images", tmp_path / "images")
    (tmp_path / rows["image"].iloc[5]).write_bytes(b"\xff\xd8 not a jpeg")
    return tmp_path, rows


def test_worker_decode_error_is_one_line(broken_jpeg_rows):
    root, rows = broken_jpeg_rows
    bad = str(root / rows["image"].iloc[5])
    for workers in (0, 1):
        loader = build_eval_loader(root, rows, _cfg(cache="jpeg", num_workers=workers, batch_size=4))
        with pytest.raises(DataError) as e:
            list(loader)
        msg = str(e.value)
        assert "\n" not in msg and bad in msg and "cannot decode cached image" in msg, msg
        assert ("worker process 0" in msg) == (workers == 1)


def test_worker_decode_error_reaches_the_cli_as_one_line(broken_jpeg_rows, capsys):
    from common.cli import run_main

    root, rows = broken_jpeg_rows
    loader = build_eval_loader(root, rows, _cfg(cache="jpeg", num_workers=1, batch_size=4))

    def main(argv):
        for _ in Prefetcher(loader, "cpu"):
            pass

    assert run_main(main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "images/img005.png" in err[0], err


def test_item_error_unwraps_only_the_worker_form():
    assert str(ItemDataError("plain message")) == "plain message"
    wrapped = (
        "Caught ItemDataError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ItemDataError(...)\n'
        "pipeline.data.datasets.ItemDataError: a.jpg: cannot decode cached image (bad); rerun 'make prep'\n"
    )
    assert (
        str(ItemDataError(wrapped))
        == "a.jpg: cannot decode cached image (bad); rerun 'make prep' (in DataLoader worker process 3)"
    )


# ---- Prefetcher


def test_prefetcher_keeps_order_and_length(coord_data):
    items = list(range(23))
    for depth in (1, 3):
        pf = Prefetcher(items, "cpu", depth)
        assert len(pf) == 23 and list(pf) == items and list(pf) == items  # re-iterable
    assert list(Prefetcher([], "cpu")) == []
    root, rows = coord_data
    loader = build_eval_loader(root, rows, _cfg(batch_size=4))
    direct, ahead = list(loader), list(Prefetcher(loader, "cpu", 2))
    assert len(Prefetcher(loader, "cpu")) == len(loader) == 8
    assert _same(direct, ahead)
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(items, "cpu", 0)


def test_prefetcher_raises_where_the_error_happened_and_stops_on_break():
    def source():
        yield from range(3)
        raise DataError("bad item 3")

    got = []
    with pytest.raises(DataError, match="bad item 3"):
        for x in Prefetcher(source(), "cpu"):
            got.append(x)
    assert got == [0, 1, 2]

    fetched = []

    def slow():
        for i in range(1000):
            fetched.append(i)
            yield i

    for x in Prefetcher(slow(), "cpu", depth=2):
        if x == 4:
            break
    assert not any(t.name == "prefetch" for t in threading.enumerate())
    assert len(fetched) <= 4 + 1 + 2  # no more than depth batches fetched ahead


def test_prefetcher_reports_the_end_of_an_accelerate_loader_like_the_loader():
    """accelerate's end_of_dataloader (accumulate, gather_for_metrics) must flip at the batch the
    loop holds, not at the batch the prefetcher fetched."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    loader = acc.prepare(DataLoader(list(range(10)), batch_size=3))

    def flags(it) -> list[tuple[int, bool]]:
        return [(len(b), acc.gradient_state.end_of_dataloader) for b in it]

    plain = flags(loader)
    assert plain == [(3, False), (3, False), (3, False), (1, True)]
    assert flags(Prefetcher(loader, acc.device)) == plain
    assert flags(Prefetcher(loader, acc.device, depth=3)) == plain
    assert not acc.gradient_state.in_dataloader  # nothing left registered


# ---- decoded images kept in RAM (JPEG cache)


@pytest.mark.parametrize("augment", ["default", "rrc", "strong"])
def test_ram_cache_gives_the_same_items_and_keeps_within_its_budget(coord_data, augment):
    """Two epochs of the per-item JPEG path with and without the RAM cache: identical items, the
    cached pixels are never written by a transform, and the cache stops at its budget."""
    data_dir, rows = coord_data
    cfg = TrainConfig(dataset="x", img_size=32, cache="jpeg", augment=augment, input_path="per_item", seed=3)
    policy = get_policy(augment)
    plain = build_dataset(data_dir, rows, policy.item(cfg), "jpeg", seed=3)
    cached = build_dataset(data_dir, rows, policy.item(cfg), "jpeg", seed=3, ram_cache_mb=1024)
    for epoch in (0, 1):
        plain.epoch = cached.epoch = epoch
        for i in range(len(rows)):
            assert torch.equal(plain[i]["image"], cached[i]["image"]), (epoch, i)
    assert len(cached.ram) == len(rows)
    first = next(iter(cached.ram.values()))
    for i, img in cached.ram.items():
        assert torch.equal(img, plain._decode(i))  # untouched by the transforms
    small = build_dataset(data_dir, rows, None, "jpeg", ram_cache_mb=2.5 * first.nbytes / 2**20)
    for i in range(len(rows)):
        small[i]
    assert len(small.ram) == 2 and small.ram_bytes <= small.ram_budget
    assert not build_dataset(data_dir, rows, None, "jpeg").ram  # 0 = off


def test_ram_cache_is_validated():
    with pytest.raises(ConfigError, match="ram_cache_mb must be a finite number >= 0"):
        TrainConfig(ram_cache_mb=-1).validate()
