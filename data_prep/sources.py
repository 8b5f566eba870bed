"""The interface every dataset reader returns, so the prep stage is one code path.

A reader (synthetic default, GLD v1/v2, image folder, CIFAR-10/100) turns its raw files into a
:class:`SourceTable`: one row per image with the same columns, and a function that opens the
image of a row as an RGB PIL image. Selection (top-K, ratio), splitting and caching then never
look at where the pixels came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from PIL import Image

SOURCE_COLUMNS = ["id", "landmark_id", "name", "src"]
# optional column "split": "train"/"test" when the source has an official test split (CIFAR)


@dataclass
class SourceTable:
    rows: pd.DataFrame  # SOURCE_COLUMNS (+ optional "split"); id str, landmark_id int, name str, src str
    open_image: Callable[[str], Image.Image]  # src -> RGB PIL image; raises on unreadable input
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped while reading
    description: str = ""  # for people: names the folder it was read from
    # what the content is, never where it was found (the prep fingerprint and the image cache key
    # on it): the reader's kind for file sources (their files are checked one by one), a content
    # signature for in-memory sources (CIFAR: its files' names, sizes and mtimes)
    identity: str = ""

    def __post_init__(self) -> None:
        missing = [c for c in SOURCE_COLUMNS if c not in self.rows.columns]
        if missing:
            raise ValueError(f"reader returned rows without column(s) {missing}")
