"""Training-input throughput: JPEG cache vs packed cache (decode + augment + collate), and the
augmentation libraries compared on one core.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/bench_input.py [--images 1024] [--workers 2]

Part 1 builds a temporary data folder of ``--images`` cached 256x256 JPEGs (real Paris6k photos
from ../shared/data when present, else generated ones) plus their packed array, and times a
DataLoader (``--workers`` workers, batch 64, shuffled, persistent workers; the first epoch is a
warm-up) over ``build_dataset(..., cache=jpeg|packed)`` with the training transform at 224, with
and without colour jitter. Part 2 times crop 224 + flip + jitter of one 256x256 image in the main
process on one thread: torchvision v2 (the project's transform, and with torchvision's
ColorJitter) vs albumentations.
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
from torch.utils.data import DataLoader  # noqa: E402

from data_prep.images import cache_relpath, resize_image  # noqa: E402
from data_prep.packed import build_packed  # noqa: E402
from pipeline.data import build_dataset, build_train_transform  # noqa: E402

PARIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k_sample"


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


def make_data(folder: Path, n: int, size: int) -> pd.DataFrame:
    ids = [f"img{i:05d}" for i in range(n)]
    rels = [cache_relpath(i) for i in ids]
    for rel, img in zip(rels, source_images(n, size)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(folder / rel, "JPEG", quality=92)
    build_packed(folder, ids, rels, size, workers=2)
    return pd.DataFrame({"id": ids, "image": rels, "label": np.arange(n) % 10, "landmark_id": np.arange(n) % 10})


def loader_rate(
    folder: Path, rows: pd.DataFrame, cache: str, crop: int, jitter: float, args, workers: int | None = None
) -> float:
    workers = args.workers if workers is None else workers
    ds = build_dataset(folder, rows, build_train_transform(crop, 0.5, jitter), cache)
    g = torch.Generator()
    g.manual_seed(0)
    dl = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=g,
    )
    for _ in dl:  # warm-up epoch: worker start, page cache
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(args.epochs):
        for batch in dl:
            n += len(batch["image"])
    rate = n / (time.perf_counter() - t0)
    assert batch["image"].shape[1:] == (3, crop, crop) and batch["image"].dtype == torch.uint8
    del dl
    return rate


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
    torch.set_num_threads(1)
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
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    p.add_argument("--jitter", type=float, default=0.2, help="colour jitter strength (train config default)")
    p.add_argument("--aug-n", type=int, default=300, help="images per augmentation timing")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        t0 = time.perf_counter()
        rows = make_data(tmp, args.images, args.size)
        print(f"data: {args.images} images {args.size}px JPEG + packed ({time.perf_counter() - t0:.1f}s to build)")
        result: dict = {"workers": args.workers, "batch": args.batch, "crop": args.crop, "loader": {}}
        for jitter in (0.0, args.jitter):
            rates = {c: loader_rate(tmp, rows, c, args.crop, jitter, args) for c in ("jpeg", "packed")}
            rates["packed_0_workers"] = loader_rate(tmp, rows, "packed", args.crop, jitter, args, workers=0)
            tag = f"crop+flip{'+jitter ' + str(jitter) if jitter else ''}"
            result["loader"][tag] = rates
            print(
                f"{tag:22s} jpeg {rates['jpeg']:6.0f} img/s ({rates['jpeg'] / args.workers:5.0f}/core)  "
                f"packed {rates['packed']:6.0f} img/s ({rates['packed'] / args.workers:5.0f}/core)  "
                f"packed/jpeg {rates['packed'] / rates['jpeg']:.1f}x  |  packed in-process (0 workers) "
                f"{rates['packed_0_workers']:6.0f} img/s = {rates['packed_0_workers'] / rates['jpeg']:.1f}x"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    aug = aug_compare(args.size, args.crop, args.jitter, args.aug_n)
    result["augment_us_per_image"] = aug
    print(f"augmentation, one 256px image -> {args.crop}, 1 thread (us/image):")
    for k, v in aug.items():
        print(f"  {k:55s} {v:8.0f} us  ({1e6 / v:6.0f} img/s)")
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
