"""Logging set-up for the CLI faces (library code only calls ``logging.getLogger``)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("LOGLEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
