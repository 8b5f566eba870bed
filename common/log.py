"""Logging set-up for the CLI faces (library code only calls ``logging.getLogger``)."""

from __future__ import annotations

import logging
import os


def process_rank() -> int:
    """This process's global rank under torchrun/accelerate launch (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def setup_logging(level: str | int | None = None) -> None:
    """INFO (or $LOGLEVEL) on the main process; other ranks of a multi-process run only report
    errors, so every line is printed once instead of once per process."""
    level = level or os.environ.get("LOGLEVEL", "INFO")
    if process_rank() != 0:
        level = "ERROR"
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
