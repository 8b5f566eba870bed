"""Helpers for the thin CLI faces: one ``error: ...`` line and exit code 2 for user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from common.errors import PipelineError
from common.log import setup_logging


def run_main(fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``fn(argv)``; a :class:`PipelineError` becomes one stderr line and exit code 2."""
    setup_logging()
    try:
        return int(fn(argv) or 0)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished outputs are kept; rerun to resume)", file=sys.stderr)
        return 130
