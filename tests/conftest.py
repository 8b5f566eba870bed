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


TINY_PREP = dict(
    dataset="tiny",
    source="synthetic",
    synth_classes=10,
    synth_max_per_class=48,
    synth_min_per_class=6,
    synth_tail=0.7,
    synth_image_size=48,
    top_k=6,
    sample_ratio=0.75,
    image_size=36,
    val_frac=0.125,
    test_frac=0.125,
    seed=0,
    workers=2,
)


def gld_prep_config(tmp_path: Path, **over):
    """A prep config over a GLD v2 tree at ``tmp_path/raw`` (tests build the tree), tiny images."""
    from data_prep.config import PrepConfig

    base = dict(
        dataset="t",
        source="gld_v2",
        source_root=str(tmp_path / "raw"),
        data_root=str(tmp_path / "data"),
        top_k=10,
        sample_ratio=1.0,
        image_size=16,
        workers=1,
    )
    return PrepConfig(**{**base, **over})


@pytest.fixture()
def one_thread():
    """Tiny inputs on a shared 2-core machine: one intra-op thread is faster than two fighting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_prep_config(data_root: Path, **over):
    from data_prep.config import PrepConfig

    return PrepConfig(data_root=str(data_root), **{**TINY_PREP, **over})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """A tiny generated landmark set, prepped and folded once per test session (~5 s)."""
    from data_prep.config import FoldsConfig
    from data_prep.folds import run_folds
    from data_prep.prep import run_prep

    root = tmp_path_factory.mktemp("tiny")
    cfg = tiny_prep_config(root / "data")
    report = run_prep(cfg, progress=False)
    folds = run_folds(FoldsConfig(dataset="tiny", data_root=str(root / "data"), folds_dir=str(root / "folds"), k=3))
    return {
        "root": root,
        "data_root": root / "data",
        "folds_dir": root / "folds",
        "report": report,
        "folds_file": folds,
        "prep_cfg": cfg,
    }
