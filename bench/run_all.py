"""Run every ``bench/bench_*.py`` script in turn (``make bench``); exit non-zero if one fails.

.venv/bin/python bench/run_all.py [-k NAME]    # -k: only scripts whose name contains NAME
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only scripts whose file name contains this")
    args = p.parse_args()
    here = Path(__file__).resolve().parent
    scripts = sorted(s for s in here.glob("bench_*.py") if args.k in s.name)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    failed = []
    for script in scripts:
        print(f"=== {script.name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script)], cwd=here.parent, env=env)
        print(
            f"=== {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t0:.0f}s\n", flush=True
        )
        if rc:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
