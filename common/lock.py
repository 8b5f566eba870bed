"""One writer per output folder: an advisory ``flock`` on ``<folder>/.lock``.

Two processes writing the same run folder (or prep folder, or ensemble outputs) would leave
files from different processes side by side, each looking complete. The first process takes
the lock; a second one gets one :class:`~common.errors.PipelineError` line naming the holder
(pid, host, start time, command). The kernel drops a ``flock`` when its process dies, so a
lock left by a killed process (``kill -9``, a crash) never blocks a rerun: there is no stale
state to clean up, only the holder text, which the next owner overwrites.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from common.errors import PipelineError

LOCK_NAME = ".lock"


def _holder_text() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:200],
        }
    )


def describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the duration of the block.

    Raises :class:`PipelineError` at once (no waiting) when another process holds it. The lock
    is per open file description, so the same process taking it twice also fails: hold it once,
    at the top of the stage.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise PipelineError(
                f"{folder} is in use by {holder}{f' ({what})' if what else ''}; "
                "wait for it to finish or stop it (a killed process releases the lock by itself)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock
