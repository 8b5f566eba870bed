"""Atomic file writing: a killed stage never leaves a half file that the next stage trusts.

Everything is written to a temporary file in the destination folder and renamed over the
target (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path of ``path`` to fill by any means; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched. The file is
    fsynced before the rename, so a crash never leaves a renamed but empty file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kw: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kw) as f:
        yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | os.PathLike, df: Any, **to_csv_kw: Any) -> None:
    """Write a pandas DataFrame atomically (index off unless asked)."""
    to_csv_kw.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, **to_csv_kw)


def cleanup_temp_files(folder: str | os.PathLike) -> int:
    """Remove temporaries left by a killed writer (``.<name>.*.tmp``); returns how many."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
