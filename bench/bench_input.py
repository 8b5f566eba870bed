"""Training-input throughput: the batched packed path vs the per-item paths (packed, JPEG cache),
the same with worker processes, the effect on a fast model's training step (prefetch), and the
augmentation libraries compared on one core.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/bench_input.py [--quick] [--parts 1,2,3,4]

Part 1, the input path alone, one core (one torch thread, no worker processes), images/s of
``build_train_input(...).loader`` for crops of 32 px (a 32 px PNG cache, ``crop_padding=4``, as
CIFAR), 64 px (from 72 px JPEGs) and 224 px (from 256 px JPEGs): ``batched`` (packed cache,
one ``__getitems__`` per batch, jitter as a batch op), ``per_item`` over the packed cache and
``per_item`` over the JPEG cache; crop + flip, and + colour jitter 0.2 (the train default).
Goals: batched >= 10x the JPEG cache, and >= 3k img/s per core at 224 px with jitter.
Part 2, the same loaders with ``--workers`` worker processes (the previous benchmark's setting).
Part 3, ``simple_cnn`` training steps at 64 px, one thread, fed by each input path, with and
without :class:`pipeline.data.prefetch.Prefetcher`, against a plain loop on one resident batch.
Part 4, crop 224 + flip + jitter of one 256 px image by torchvision v2 vs albumentations.

Images are real Paris6k photos (flipped variants) from ../shared/data when present, else
generated. Pixels are uint8 (jitter in float32; the model step in float32). Every number is
printed with the 1-minute load average at the time, since a shared machine inflates them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep.images import cache_relpath, resize_image  # noqa: E402
from data_prep.packed import build_packed  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402
from pipeline.data.datasets import build_train_transform, normalize
from pipeline.data.loaders import build_train_input
from pipeline.data.prefetch import Prefetcher  # noqa: E402

PARIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"
PRECISION = "uint8 pixels; jitter and model in float32"
# (crop side, cached side, crop_padding, cache file format)
SIZES = {32: (32, 4, "PNG"), 64: (72, 0, "JPEG"), 224: (256, 0, "JPEG")}
PATHS = (("batched", "packed"), ("per_item", "packed"), ("per_item", "jpeg"))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def source_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``n`` RGB images of ``size`` px: real photos (flipped/cropped variants) or generated ones."""
    rng = np.random.default_rng(seed)
    files = sorted(PARIS.glob("*/*.jpg")) if PARIS.is_dir() else []
    base = []
    for f in files:
        with Image.open(f) as im:
            base.append(resize_image(im.convert("RGB"), size, "shorter"))
    out = []
    for i in range(n):
        if base:
            img = base[i % len(base)]
            if (i // len(base)) % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:  # smooth colour field + detail, so it compresses like a photo, not like noise
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
            noise = rng.normal(0, 12, (size, size, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        out.append(img)
    return out


def make_data(folder: Path, n: int, size: int, fmt: str = "JPEG") -> pd.DataFrame:
    """``n`` cached images of ``size`` px (the file cache) and their packed array, in ``folder``."""
    ids = [f"img{i:05d}" for i in range(n)]
    rels = [cache_relpath(i) if fmt == "JPEG" else cache_relpath(i).replace(".jpg", ".png") for i in ids]
    for rel, img in zip(rels, source_images(n, size)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(folder / rel, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    build_packed(folder, ids, rels, size, workers=2)
    return pd.DataFrame({"id": ids, "image": rels, "label": np.arange(n) % 10, "landmark_id": np.arange(n) % 10})


def cfg_for(crop: int, path: str, cache: str, jitter: float, batch: int, workers: int = 0) -> TrainConfig:
    pad = SIZES[crop][1]
    return TrainConfig(
        cache=cache,
        input_path=path,
        img_size=crop,
        crop_padding=pad,
        color_jitter=jitter,
        batch_size=batch,
        num_workers=workers,
        cpu=True,
    )


def loader_rate(folder: Path, rows: pd.DataFrame, cfg: TrainConfig, min_seconds: float) -> float:
    """Images/s of the training loader (one warm-up epoch, then whole epochs for >= min_seconds)."""
    ti = build_train_input(folder, rows, cfg)
    ti.set_epoch(0)
    for _ in ti.loader:  # warm-up: page cache, worker start
        pass
    n, epoch, t0 = 0, 1, time.perf_counter()
    while True:
        ti.set_epoch(epoch)
        for batch in ti.loader:
            images = batch["image"]
            if ti.device_transform is not None:
                images = ti.device_transform(images)
            n += len(images)
        epoch += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    assert images.shape[1:] == (3, cfg.img_size, cfg.img_size) and images.dtype == torch.uint8
    return n / (time.perf_counter() - t0)


def part_paths(data: dict, args, workers: int) -> list[dict]:
    rows = []
    for crop, (folder, manifest) in data.items():
        for jitter in (0.0, args.jitter):
            rates = {}
            for path, cache in PATHS:
                cfg = cfg_for(crop, path, cache, jitter, args.batch, workers)
                rates[f"{path}/{cache}"] = loader_rate(folder, manifest, cfg, args.seconds)
            rows.append({"crop": crop, "jitter": jitter, "workers": workers, "img_s": rates, "load1": load()})
            r = rates
            print(
                f"| {crop} | {'crop+flip+jitter ' + str(jitter) if jitter else 'crop+flip'} | "
                f"{r['batched/packed']:.0f} | {r['per_item/packed']:.0f} | {r['per_item/jpeg']:.0f} | "
                f"**{r['batched/packed'] / r['per_item/jpeg']:.1f}x** | "
                f"{r['batched/packed'] / r['per_item/packed']:.1f}x | {rows[-1]['load1']} |",
                flush=True,
            )
    return rows


def part_training(data: dict, args) -> list[dict]:
    """simple_cnn steps at 64 px fed by each path, with and without prefetch, vs a resident batch."""
    from pipeline.models import create_model

    folder, manifest = data[64]
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(images: torch.Tensor, target: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(normalize(images)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run(batches, steps: int) -> float:
        n, t0 = 0, time.perf_counter()
        for k, batch in enumerate(batches):
            if k >= steps:
                break
            step(batch["image"], batch["target"])
            n += len(batch["image"])
        return n / (time.perf_counter() - t0)

    steps = args.train_steps
    resident = next(iter(build_train_input(folder, manifest, cfg_for(64, "batched", "packed", 0.2, args.batch)).loader))
    run([resident] * 3, 3)  # warm-up
    plain = run([resident] * steps, steps)
    rows = [{"feed": "plain loop (one resident batch)", "img_s": plain, "vs_plain": 1.0, "load1": load()}]
    for path, cache in PATHS:
        for prefetch in (False, True):
            ti = build_train_input(folder, manifest, cfg_for(64, path, cache, args.jitter, args.batch))
            ti.set_epoch(1)
            loader = Prefetcher(ti.loader, "cpu") if prefetch else ti.loader
            epochs = [loader] * (1 + steps // max(1, len(ti.loader)))

            def chained(epochs=epochs):
                for e in epochs:
                    yield from e

            rate = run(chained(), steps)
            name = f"{path}/{cache}{' + prefetch' if prefetch else ''}"
            rows.append({"feed": name, "img_s": rate, "vs_plain": rate / plain, "load1": load()})
    for r in rows:
        print(f"| {r['feed']} | {r['img_s']:.0f} | {r['vs_plain']:.2f}x | {r['load1']} |", flush=True)
    return rows


def per_image_us(fn, img, n: int) -> float:
    fn(img)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(img)
    return (time.perf_counter() - t0) / n * 1e6


def aug_compare(size: int, crop: int, jitter: float, n: int) -> dict:
    import albumentations as A
    import cv2
    from torchvision.transforms import v2

    cv2.setNumThreads(1)  # main process only (never inside DataLoader workers)
    hwc = np.asarray(source_images(1, size)[0])
    chw = torch.from_numpy(hwc.copy()).permute(2, 0, 1).contiguous()
    tv_fast = build_train_transform(crop, 0.5, jitter)
    tv_cj = v2.Compose([v2.RandomCrop(crop), v2.RandomHorizontalFlip(0.5), v2.ColorJitter(jitter, jitter, jitter)])
    tv_noj = build_train_transform(crop, 0.5, 0.0)
    al = A.Compose(
        [
            A.RandomCrop(crop, crop),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0.0, p=1.0),
        ]
    )
    al_noj = A.Compose([A.RandomCrop(crop, crop), A.HorizontalFlip(p=0.5)])

    def al_tensor(x: torch.Tensor, t=al) -> torch.Tensor:  # same interface as ours: uint8 CHW in and out
        return torch.from_numpy(t(image=x.permute(1, 2, 0).numpy())["image"]).permute(2, 0, 1)

    return {
        "torchvision v2 crop+flip+FastColorJitter (project)": per_image_us(tv_fast, chw, n),
        "torchvision v2 crop+flip+v2.ColorJitter": per_image_us(tv_cj, chw, max(20, n // 5)),
        "albumentations crop+flip+ColorJitter (numpy HWC)": per_image_us(lambda x: al(image=x)["image"], hwc, n),
        "albumentations crop+flip+ColorJitter (tensor in/out)": per_image_us(al_tensor, chw, n),
        "torchvision v2 crop+flip": per_image_us(tv_noj, chw, n),
        "albumentations crop+flip (tensor in/out)": per_image_us(lambda x: al_tensor(x, al_noj), chw, n),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="cached images at 224 (4x as many at 32 and 64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of part 2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per loader measurement")
    p.add_argument("--jitter", type=float, default=0.2, help="colour jitter strength (train config default)")
    p.add_argument("--train-steps", type=int, default=60, help="training steps per feed in part 3")
    p.add_argument("--aug-n", type=int, default=300, help="images per augmentation timing (part 4)")
    p.add_argument("--parts", default="1,2,3,4", help="which parts to run")
    p.add_argument("--quick", action="store_true", help="fewer images and shorter timings (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.images, args.seconds, args.train_steps, args.aug_n = 128, 0.3, 10, 30
    parts = {int(x) for x in args.parts.split(",") if x}
    torch.set_num_threads(1)  # per core: the model's intra-op threads would blur the input's share
    result: dict = {"precision": PRECISION, "threads": 1, "batch": args.batch, "load1_start": load()}
    tmp = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        data = {}
        if parts & {1, 2, 3}:
            t0 = time.perf_counter()
            for crop, (side, _, fmt) in SIZES.items():
                folder = tmp / str(crop)
                n = args.images if crop == 224 else 4 * args.images
                data[crop] = (folder, make_data(folder, n, side, fmt))
            print(f"data: {time.perf_counter() - t0:.1f}s to build ({PRECISION}; load {load()})\n")
        header = (
            "| crop px | augmentation | batched packed | per-item packed | per-item JPEG | batched / JPEG "
            "| batched / per-item packed | load |\n|---|---|---|---|---|---|---|---|"
        )
        if 1 in parts:
            print("Part 1: input path alone, one core, in process (images/s)")
            print(header)
            result["per_core"] = part_paths(data, args, 0)
            at224 = [r for r in result["per_core"] if r["crop"] == 224 and r["jitter"] > 0][0]["img_s"]
            ratios = [r["img_s"]["batched/packed"] / r["img_s"]["per_item/jpeg"] for r in result["per_core"]]
            print(
                f"\ngoals: batched >= 10x JPEG: {min(ratios):.1f}x..{max(ratios):.1f}x; "
                f">= 3000 img/s/core at 224 with jitter: {at224['batched/packed']:.0f}\n"
            )
        if 2 in parts:
            print(f"Part 2: the same with {args.workers} worker processes (images/s for the whole loader)")
            print(header)
            result["workers"] = part_paths(data, args, args.workers)
            print()
        if 3 in parts:
            print(f"Part 3: simple_cnn training steps at 64 px, batch {args.batch}, one thread (images/s)")
            print("| feed | img/s | vs plain loop | load |\n|---|---|---|---|")
            result["training"] = part_training(data, args)
            print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if 4 in parts:
        aug = aug_compare(256, 224, args.jitter, args.aug_n)
        result["augment_us_per_image"] = aug
        print(f"Part 4: augmentation, one 256px image -> 224, 1 thread (us/image; load {load()}):")
        for k, v in aug.items():
            print(f"  {k:55s} {v:8.0f} us  ({1e6 / v:6.0f} img/s)")
    result["load1_end"] = load()
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
