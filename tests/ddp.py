"""Two CPU processes (gloo ranks) through torchrun, for the tests of several-process runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"
needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="torchrun absent"
)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "LOGLEVEL": "WARNING"}


def torchrun2(args: list[str], cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on CPU (2 gloo ranks, 1 thread each); must succeed.

    ``args`` is what follows torchrun's own options: ``["-m", "pipeline", "train", ...]`` or a script.
    """
    p = subprocess.run(
        [str(TORCHRUN), "--nproc_per_node", "2", *args],
        cwd=cwd,
        env={**ENV, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p
