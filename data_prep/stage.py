"""Errors of a data stage as one line: an OSError (full disk, unwritable or read-only folder)
names its file and says what to do, instead of a traceback from deep inside pandas."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path

from common.errors import PipelineError

log = logging.getLogger(__name__)

_OS_HINTS = {
    errno.ENOSPC: "disk full: free some space or choose another data_root; finished files are kept, rerun to resume",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another data_root",
    errno.EACCES: "permission denied: choose a writable data_root (or fix the folder's permissions)",
    errno.EPERM: "not permitted: choose a writable data_root (or fix the folder's permissions)",
    errno.EROFS: "read-only file system: choose a writable data_root",
}


@contextlib.contextmanager
def stage_os_errors(stage: str) -> Iterator[None]:
    """An OSError escaping the stage (full disk, unwritable or read-only folder, ...) becomes one
    :class:`PipelineError` line naming the file, instead of a traceback from deep inside pandas."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        log.debug("%s failed", stage, exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        hint = f" ({_OS_HINTS[e.errno]})" if e.errno in _OS_HINTS else ""
        raise PipelineError(f"{stage}: {where}{e.strerror or type(e).__name__}{hint}") from None


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (``write()`` on a full disk names none)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise

