"""CIFAR-10 / CIFAR-100 readers for the official python pickle format.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009
(https://www.cs.toronto.edu/~kriz/cifar.html).

Layouts read here (the extracted official archives)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_N, test_batch, batches.meta (label_names)
    cifar-100-python/      train, test, meta (fine_label_names, coarse_label_names)

Unlike ``torchvision.datasets.CIFAR10`` any number of training batches is accepted (the real
sample in ``shared/data`` holds one), and md5 sums are checked only for files whose name and
byte size are the official ones: a re-packed subset is read, a damaged official download is not.
The md5 table is torchvision's (``CIFAR10.train_list`` ...), imported only when needed because
importing torchvision takes seconds.

Pickles are loaded with a restricted unpickler that only resolves the numpy classes an array
needs, so a hostile file cannot run code; every problem with a file is one :class:`DataError`
naming it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from common.errors import ConfigError, DataError, PipelineError, close_matches
from data_prep.sources import SourceTable

log = logging.getLogger(__name__)

IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class _Spec:
    label: str  # human name for messages
    folder: str  # folder inside the archive
    meta: str  # meta file name
    test: str  # test file name
    train_pattern: str  # regex of training file names; group 1 (if any) orders them
    tv_class: str  # torchvision.datasets class holding the official md5 table


SPECS = {
    "cifar10": _Spec("CIFAR-10", "cifar-10-batches-py", "batches.meta", "test_batch", r"data_batch_(\d+)",
                     "CIFAR10"),
    "cifar100": _Spec("CIFAR-100", "cifar-100-python", "meta", "test", r"(train)", "CIFAR100"),
}
LABEL_MODES = ("fine", "coarse")

# Byte sizes of the official extracted files: a file is "official" (and its md5 is checked) only
# when its name and size match. CIFAR-100's sizes are not recorded (no copy to measure offline),
# so its md5 is never checked; add them here to enable the check.
OFFICIAL_SIZES: dict[str, dict[str, int]] = {
    "cifar10": {
        "batches.meta": 158,
        "data_batch_1": 31035704,
        "data_batch_2": 31035320,
        "data_batch_3": 31035999,
        "data_batch_4": 31035696,
        "data_batch_5": 31035623,
        "test_batch": 31035526,
    },
    "cifar100": {},
}

# what a batch pickle may reference: numpy's array reconstruction (old and new module names)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (a re-pickled copy)
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array classes (a pickle can otherwise run any code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR file never does")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy 2 renamed it (no warning)
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a Python-2 CIFAR pickle; keys come back as ``str`` whatever the pickling side used."""
    if not path.is_file():
        raise DataError(f"CIFAR file missing: {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(meta: dict, key: str, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: missing or empty '{key}' (found keys {sorted(meta)})")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise DataError(f"{path}: '{key}' must hold strings, found {type(n).__name__}")
        out.append(n)
    return out


def _batch(d: dict, label_key: str, n_classes: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check one batch dict and return (uint8 N x 32 x 32 x 3, int64 labels)."""
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path}: missing key '{key}' (found keys {sorted(d)})")
    data = d["data"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: 'data' must be a numpy array, found {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8, found {data.dtype}")
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path}: 'data' must have shape (N, {_PIXELS}), found {data.shape}")
    try:
        labels = np.asarray(d[label_key])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: '{label_key}' is not a list of integers ({e})") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but '{label_key}' has shape {labels.shape}")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{label_key}' must hold integers, found {labels.dtype}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{path}: '{label_key}' out of range 0..{n_classes - 1} "
                        f"(min {labels.min()}, max {labels.max()})")
    # channel-major rows (R plane, G plane, B plane) -> N x H x W x C
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _spec(which: str) -> tuple[str, _Spec]:
    key = which.lower().replace("-", "").replace("_", "")
    if key not in SPECS:
        raise ConfigError(f"unknown CIFAR variant '{which}' ({close_matches(which, SPECS)})")
    return key, SPECS[key]


def _train_files(folder: Path, spec: _Spec) -> list[Path]:
    pat = re.compile(spec.train_pattern + r"\Z")
    found = []
    for p in folder.iterdir():
        m = pat.match(p.name)
        if m and p.is_file():
            order = int(m.group(1)) if m.group(1).isdigit() else 0
            found.append((order, p))
    if not found:
        want = spec.train_pattern.replace(r"(\d+)", "<n>").replace("(", "").replace(")", "")
        raise DataError(f"CIFAR training file missing: no '{want}' in {folder}")
    return [p for _, p in sorted(found)]


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def official_md5(which: str) -> dict[str, str]:
    """File name -> md5 of the official extracted files, from torchvision's dataset classes."""
    _, spec = _spec(which)
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    table = {name: md5 for name, md5 in [*cls.train_list, *cls.test_list]}
    table[cls.meta["filename"]] = cls.meta["md5"]
    return table


def _verify(which: str, files: list[Path]) -> int:
    """Check the md5 of the files that are the official ones (name and size); returns how many."""
    sizes = OFFICIAL_SIZES.get(which, {})
    official = [p for p in files if sizes.get(p.name) == p.stat().st_size]
    data_files = [p for p in official if p.name != _spec(which)[1].meta]
    if not data_files:  # a subset or a re-pack: the meta file alone (tiny, re-pickled) proves nothing
        return 0
    table = official_md5(which)
    for p in official:
        want = table.get(p.name)
        if want and _md5(p) != want:
            raise DataError(f"{p}: md5 mismatch with the official {SPECS[which].label} file "
                            f"(damaged download? delete it and download again)")
    return len(official)


def _download(which: str, root: Path) -> None:
    """Fetch and extract the official archive into ``root`` through torchvision's downloader."""
    _, spec = _spec(which)
    import torchvision.datasets as tvd
    from torchvision.datasets import utils as tv_utils

    cls = getattr(tvd, spec.tv_class)
    try:
        tv_utils.download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        reason = str(getattr(e, "reason", e)).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"could not download {spec.label} from {cls.url} ({reason}); offline? "
                            f"put the extracted '{spec.folder}/' folder under {root}") from None


def _complete(folder: Path, spec: _Spec) -> bool:
    pat = re.compile(spec.train_pattern + r"\Z")
    return ((folder / spec.meta).is_file() and (folder / spec.test).is_file()
            and any(pat.match(p.name) for p in folder.iterdir()))


def find_cifar_folder(root: str | os.PathLike, which: str = "cifar10", *, download: bool = False) -> Path:
    """The extracted folder: ``root/<official folder>`` or ``root`` itself when it is that folder.

    With ``download=True`` an absent or incomplete folder is fetched into ``root`` first.
    """
    key, spec = _spec(which)
    root = Path(root)
    folder = next((c for c in (root / spec.folder, root)
                   if c.is_dir() and (c.name == spec.folder or (c / spec.meta).is_file())), None)
    if download and (folder is None or not _complete(folder, spec)):
        target = folder.parent if folder is not None else root
        log.info("downloading %s into %s", spec.label, target)
        _download(key, target)
        folder = target / spec.folder
    if folder is None:
        raise DataError(f"{spec.label} not found: expected {root / spec.folder}/ (the extracted official "
                        f"python archive){'' if download else '; pass download=True when online'}")
    return folder


def load_cifar_arrays(root: str | os.PathLike, which: str = "cifar10", label_mode: str = "fine", *,
                      download: bool = False, verify: bool = True) -> dict[str, Any]:
    """Read CIFAR-10/100 into arrays: the fast path for a training loader.

    Returns ``{"train": (images, labels), "test": (images, labels), "names": [...]}`` with
    images uint8 N x 32 x 32 x 3 (RGB, HWC) and labels int64 class indices into ``names``.
    ``label_mode`` is "fine" (100 classes) or "coarse" (20 superclasses) for CIFAR-100; CIFAR-10
    has only "fine".
    """
    key, spec = _spec(which)
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {LABEL_MODES}, got '{label_mode}'")
    if key == "cifar10" and label_mode != "fine":
        raise ConfigError("label_mode 'coarse' exists only for CIFAR-100")
    folder = find_cifar_folder(root, key, download=download)
    meta_path = folder / spec.meta
    train_paths = _train_files(folder, spec)
    test_path = folder / spec.test
    for p in (meta_path, test_path):
        if not p.is_file():
            raise DataError(f"CIFAR file missing: {p}")
    if verify:
        n = _verify(key, [meta_path, *train_paths, test_path])
        if n:
            log.info("%s: md5 of %d official file(s) verified", folder, n)
    meta = _unpickle(meta_path)
    if key == "cifar10":
        names, label_key = _names(meta, "label_names", meta_path), "labels"
    else:
        names = _names(meta, f"{label_mode}_label_names", meta_path)
        label_key = f"{label_mode}_labels"
    parts = [_batch(_unpickle(p), label_key, len(names), p) for p in train_paths]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    test = _batch(_unpickle(test_path), label_key, len(names), test_path)
    return {"train": train, "test": test, "names": names}


def read_cifar(root: str | os.PathLike, which: str = "cifar10", label_mode: str = "fine", *,
               download: bool = False, verify: bool = True) -> SourceTable:
    """CIFAR-10/100 as a :class:`SourceTable` (train rows, then test rows; ``split`` column set).

    ids are ``cifar10_train_00000`` / ``cifar10_test_00000`` (index within the split, batches
    concatenated in order); ``src`` is the id; ``open_image`` decodes from the in-memory arrays.
    """
    key, spec = _spec(which)
    arrays = load_cifar_arrays(root, key, label_mode, download=download, verify=verify)
    folder = find_cifar_folder(root, key)
    names = arrays["names"]
    frames = []
    for split in ("train", "test"):
        _, labels = arrays[split]
        width = max(5, len(str(len(labels) - 1)))
        ids = [f"{key}_{split}_{i:0{width}d}" for i in range(len(labels))]
        frames.append(pd.DataFrame({
            "id": ids,
            "landmark_id": labels.astype(np.int64),
            "name": [names[i] for i in labels],
            "src": ids,
            "split": split,
        }))
    rows = pd.concat(frames, ignore_index=True)
    images = {split: arrays[split][0] for split in ("train", "test")}

    def open_image(src: str) -> Image.Image:
        prefix, split, index = (str(src).rsplit("_", 2) + ["", "", ""])[:3]
        if prefix != key or split not in images or not index.isdigit() or int(index) >= len(images[split]):
            raise DataError(f"not a {spec.label} image key: {src!r}")
        return Image.fromarray(images[split][int(index)])

    n_train, n_test = len(arrays["train"][1]), len(arrays["test"][1])
    kind = f"{spec.label} ({label_mode if key == 'cifar100' else 'labels'}: {len(names)} classes)"
    desc = f"{kind} from {folder}: {n_train} train + {n_test} test images"
    return SourceTable(rows=rows, open_image=open_image, skipped={}, description=desc,
                       identity=f"{kind}, files {_files_identity(folder, spec)}")


def _files_identity(folder: Path, spec: _Spec) -> str:
    """Names, sizes and mtimes of the files the pixels come from: the same copy found through
    another path (a symlink, a new mount) is the same source; a re-packed one is not."""
    h = hashlib.sha1()
    for p in sorted([folder / spec.meta, folder / spec.test, *_train_files(folder, spec)]):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def read_cifar10(root: str | os.PathLike, **kw: Any) -> SourceTable:
    return read_cifar(root, "cifar10", **kw)


def read_cifar100(root: str | os.PathLike, label_mode: str = "fine", **kw: Any) -> SourceTable:
    return read_cifar(root, "cifar100", label_mode, **kw)

