"""Worker processes that die with the process that started them.

A ``ProcessPoolExecutor`` worker whose parent is killed (``kill -9``, an OOM kill, a closed
terminal) is orphaned and keeps rendering or decoding for nobody, holding CPU and memory, and
its half-written temporary files. On Linux a process can ask the kernel for a signal when its
parent dies (``prctl(PR_SET_PDEATHSIG)``); :func:`die_with_parent` is the pool initializer that
asks for SIGKILL. Elsewhere it does nothing (the pool's own shutdown still applies).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Pool initializer: SIGKILL this process when its parent dies; True when armed (Linux).

    ``parent_pid`` (the pid of the process that made the pool) closes the race of a parent
    that died before the request: then this process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone: nobody wants this worker's results
    return True
