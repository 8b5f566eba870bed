"""The offline default: a procedurally generated landmark data set in the Google-Landmarks v2 layout.

No machine here reaches the internet and the project ships no third-party images, so the default
data set is generated, deterministically from a seed:

* each class is a distinct "landmark": a fixed structure of 3-7 primitives (towers, domes,
  spires, arches, decks, stripes, window grids) with its own palette;
* each photo of it varies viewpoint (horizontal squeeze + shear, small rotation), scale, position
  and crop, sky/ground/time of day, lighting and colour cast, background clutter (trees, people,
  other buildings) and foreground occluders, plus blur and JPEG noise;
* class sizes follow a long tail (``n_k = max * k**-tail``, a few big classes, many small ones,
  class order shuffled), so the top-K selection matters as it does on GLD.

Like the competition, most test photos show no landmark, so the generator also renders
**non-landmark scenes** with the same sky, ground, clutter, people, trees, lighting and framing:
streets of ordinary houses (one box or gabled house each, never a landmark design), parks, open
views, rooms and close-ups.

Output, ``a/b/c`` the first three characters of the 16-hex id as in GLD v2:

* ``<root>/train.csv`` (``id,url,landmark_id``) and ``<root>/train/<a>/<b>/<c>/<id>.jpg``;
* the non-landmark pool: ``<root>/nonlandmark.csv`` (``id``) and ``<root>/nonlandmark/<a>/<b>/<c>/<id>.jpg``;
* a competition test folder in the GLR 2020 layout: ``<root>/competition/sample_submission.csv``
  (``id,landmarks``), ``competition/test/<a>/<b>/<c>/<id>.jpg`` and its labels,
  ``competition/recognition_solution_v2.1.csv`` (``id,landmarks,Usage``; empty = no landmark):
  fresh photos (not the training ones) of mostly big classes, a few tail classes, and a majority
  of non-landmark scenes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import atomic_write, cleanup_temp_files, write_csv, write_json
from common.lock import folder_lock
from data_prep.synthetic_render import _landmark_design, render_photo, render_scene
from data_prep.workers import die_with_parent

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when rendering changes: old generated sets are then regenerated
SPEC_FILE = "synthetic_spec.json"
NONLANDMARK_DIR = "nonlandmark"
NONLANDMARK_CSV = "nonlandmark.csv"
COMPETITION_DIR = "competition"
SOLUTION_FILE = "recognition_solution_v2.1.csv"
@dataclass(frozen=True)
class SynthSpec:
    num_classes: int = 40
    max_per_class: int = 300
    min_per_class: int = 4
    tail: float = 1.1
    image_size: int = 128
    seed: int = 0
    nonlandmark: int | None = None  # non-landmark pool size; None = auto (nonlandmark_count)
    competition: int | None = None  # competition test images; None = auto (competition_count)
    competition_landmarks: float = 0.38  # share of competition images that show a landmark


def class_sizes(spec: SynthSpec) -> list[int]:
    """Long-tailed class sizes, largest first (the order is shuffled when ids are assigned)."""
    return [max(spec.min_per_class, round(spec.max_per_class * (k + 1) ** -spec.tail)) for k in range(spec.num_classes)]


def image_path(root: Path, image_id: str) -> Path:
    """GLD v2 location of an image: ``train/<a>/<b>/<c>/<id>.jpg``."""
    return root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _hex_id(seed: int, landmark: int, index: int) -> str:
    return hashlib.sha1(f"synth-{seed}-{landmark}-{index}".encode()).hexdigest()[:16]


# ---- non-landmark scenes: what most competition test photos show ------------------------------

# ---- writing the set -----------------------------------------------------------------------------


def _render_job(args: tuple) -> int:
    """Render one chunk of images: ``("landmark", cls, design, index)`` or ``("scene", stream, index)``."""
    seed, size, items = args
    written = 0
    for path, what in items:
        path = Path(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if what[0] == "landmark":
            _, cls, design, index = what
            img = render_photo(design, seed, cls, index, size)
            q = int(np.random.default_rng([seed, cls, index, 13]).integers(80, 96))
        else:
            _, stream, index = what
            img = render_scene(seed, stream, index, size)
            q = int(np.random.default_rng([seed, stream, index, 19]).integers(80, 96))
        with atomic_write(path, "wb") as f:
            img.save(f, "JPEG", quality=q)
        written += 1
    return written


def nonlandmark_count(spec: SynthSpec) -> int:
    """Non-landmark scenes generated: ``spec.nonlandmark`` or, when None, 0.17 x the landmark photos
    (>= 24): on the default that fills half of the internal test split and leaves a pool of ~350."""
    if spec.nonlandmark is not None:
        return spec.nonlandmark
    return max(24, round(0.17 * sum(class_sizes(spec))))


def competition_count(spec: SynthSpec) -> int:
    """Competition test images: ``spec.competition`` or, when None, 0.12 x the landmark photos (>= 24)."""
    if spec.competition is not None:
        return spec.competition
    return max(24, round(0.12 * sum(class_sizes(spec))))


def nonlandmark_path(root: Path, image_id: str) -> Path:
    return root / NONLANDMARK_DIR / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def competition_path(root: Path, image_id: str) -> Path:
    return root / COMPETITION_DIR / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _scene_id(seed: int, what: str, index: int) -> str:
    return hashlib.sha1(f"synth-{what}-{seed}-{index}".encode()).hexdigest()[:16]


def generate(root: str | os.PathLike, spec: SynthSpec, workers: int = 2) -> pd.DataFrame:
    """Write the data set under ``root`` (skipping images already there); return train.csv rows.

    Besides the landmark photos: the non-landmark pool (``nonlandmark/`` + ``nonlandmark.csv``) and a
    competition test folder in the GLR 2020 layout with its solution (``competition/``).

    One generator per folder at a time (``root/.lock``); temporary files of a killed earlier run
    are removed first; the render workers are processes that die with this one
    (:func:`data_prep.workers.die_with_parent`: killing prep never leaves them rendering). Call
    it from the thread that owns the work (the kernel's parent-death signal follows the thread
    that started the workers).
    """
    root = Path(root)
    with folder_lock(root, "generating the synthetic data set"):
        return _generate(root, spec, workers)


def _generate(root: Path, spec: SynthSpec, workers: int) -> pd.DataFrame:
    removed = cleanup_temp_files(root)
    if removed:
        log.info("%s: removed %d temporary files of a killed earlier run", root, removed)
    if (root / SPEC_FILE).is_file() and not is_complete(root, spec):
        log.info("%s was generated from another spec or generator version: regenerating", root)
        clear(root)
    sizes = class_sizes(spec)
    rng = np.random.default_rng([spec.seed, 3])
    order = rng.permutation(spec.num_classes)  # big classes are not the first ids
    landmark_ids = np.sort(rng.choice(np.arange(1000, 100000), spec.num_classes, replace=False))
    designs = {int(c): _landmark_design(spec.seed, int(c)) for c in order}
    rows, tasks = [], []
    for rank, cls in enumerate(order):
        lid = int(landmark_ids[cls])
        for i in range(sizes[rank]):
            image_id = _hex_id(spec.seed, lid, i)
            rows.append((image_id, f"synthetic://landmark/{lid}/{i}", lid))
            tasks.append((str(image_path(root, image_id)), ("landmark", int(cls), designs[int(cls)], i)))
    pool_ids = [_scene_id(spec.seed, "nonlandmark", j) for j in range(nonlandmark_count(spec))]
    tasks += [(str(nonlandmark_path(root, i)), ("scene", 1, j)) for j, i in enumerate(pool_ids)]
    comp, comp_tasks = _competition_rows(spec, sizes, order, landmark_ids, designs, root)
    tasks += comp_tasks
    all_ids = [r[0] for r in rows] + pool_ids + comp["id"].tolist()
    if len(set(all_ids)) != len(all_ids):  # a 64-bit hash collision: would mix two images up
        raise AssertionError("synthetic generator: two generated images share an id")
    jobs = [(spec.seed, spec.image_size, tasks[s : s + 64]) for s in range(0, len(tasks), 64)]
    with ProcessPoolExecutor(max(1, workers), initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        written = sum(pool.map(_render_job, jobs))
    df = pd.DataFrame(rows, columns=["id", "url", "landmark_id"])
    df = df.sample(frac=1.0, random_state=spec.seed).reset_index(drop=True)  # GLD's csv is not grouped
    write_csv(root / "train.csv", df)
    write_csv(root / NONLANDMARK_CSV, pd.DataFrame({"id": pool_ids}))
    if len(comp):
        comp_dir = root / COMPETITION_DIR
        write_csv(comp_dir / "sample_submission.csv", pd.DataFrame({"id": comp["id"], "landmarks": ""}))
        write_csv(comp_dir / SOLUTION_FILE, comp[["id", "landmarks", "Usage"]])
    write_json(root / SPEC_FILE, _spec_record(spec))  # written last: marks a complete set
    log.info(
        "synthetic data set: %d images in %d classes, %d non-landmark scenes, %d competition test images "
        "at %s (%d newly rendered)",
        len(df),
        spec.num_classes,
        len(pool_ids),
        len(comp),
        root,
        written,
    )
    return df


def _competition_rows(
    spec: SynthSpec, sizes: list[int], order: np.ndarray, landmark_ids: np.ndarray, designs: dict, root: Path
) -> tuple[pd.DataFrame, list]:
    """The competition test set: fresh photos of landmarks (classes drawn by size squared, so mostly
    the big classes a top-K keeps, a few from the tail) and non-landmark scenes, shuffled; its
    solution rows (``id, landmarks, Usage``; empty landmarks = no landmark) and render tasks."""
    n = competition_count(spec)
    n_lm = int(round(n * spec.competition_landmarks))
    rng = np.random.default_rng([spec.seed, 5])
    weight = np.asarray(sizes, float) ** 2
    ranks = rng.choice(len(sizes), n_lm, p=weight / weight.sum())
    is_lm = np.zeros(n, bool)
    is_lm[rng.permutation(n)[:n_lm]] = True
    rows, tasks, k_lm = [], [], 0
    for j in range(n):
        image_id = _scene_id(spec.seed, "competition", j)
        if is_lm[j]:
            cls = int(order[ranks[k_lm]])
            k_lm += 1
            # indices far above any class size: new viewpoints, not copies of training photos
            tasks.append((str(competition_path(root, image_id)), ("landmark", cls, designs[cls], 1_000_000 + j)))
            landmarks = str(int(landmark_ids[cls]))
        else:
            tasks.append((str(competition_path(root, image_id)), ("scene", 2, j)))
            landmarks = ""
        rows.append((image_id, landmarks, "Public" if rng.random() < 0.3 else "Private"))
    return pd.DataFrame(rows, columns=["id", "landmarks", "Usage"]), tasks


def _spec_record(spec: SynthSpec) -> dict:
    return {**asdict(spec), "generator_version": GENERATOR_VERSION}


def is_complete(root: str | os.PathLike, spec: SynthSpec) -> bool:
    """True when ``root`` holds a finished set made by this generator version from ``spec``.

    A set from another spec or generator version is regenerated (its images are rewritten).
    """
    root = Path(root)
    marker = root / SPEC_FILE
    needed = [root / "train.csv", root / NONLANDMARK_CSV]
    if competition_count(spec):
        needed += [root / COMPETITION_DIR / "sample_submission.csv", root / COMPETITION_DIR / SOLUTION_FILE]
    if not marker.is_file() or not all(p.is_file() for p in needed):
        return False
    try:
        return json.loads(marker.read_text()) == _spec_record(spec)
    except (OSError, json.JSONDecodeError):
        return False


def clear(root: str | os.PathLike) -> None:
    """Remove a stale generated set (only the files this module writes)."""
    root = Path(root)
    for name in (SPEC_FILE, "train.csv", NONLANDMARK_CSV):
        (root / name).unlink(missing_ok=True)
    for folder in ("train", NONLANDMARK_DIR, COMPETITION_DIR):
        shutil.rmtree(root / folder, ignore_errors=True)


__all__ = [
    "SynthSpec",
    "class_sizes",
    "clear",
    "competition_count",
    "competition_path",
    "generate",
    "image_path",
    "is_complete",
    "nonlandmark_count",
    "nonlandmark_path",
    "render_photo",
    "render_scene",
]
