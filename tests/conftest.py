"""Shared test set-up: offline, quiet, deterministic, small thread count."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network; pretrained fails at once
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ACCELERATE_USE_CPU", "true") if not os.environ.get("CUDA_VISIBLE_DEVICES") else None

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real Paris6k and CIFAR-10 samples); skip when this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data sample not found at {SHARED_DATA} (it sits beside the repo in this workplace)")
    return SHARED_DATA
