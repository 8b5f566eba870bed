"""A 5,000-class run end to end through the CLI: prep -> folds -> train (1 epoch) -> predict ->
embed -> ensemble -> submit -> compare, with GLD v2's shape of tail (2-3 photos per class).

Above 1,000 classes every prediction file is top-k (k = 20): the test checks each stage's
outputs are bounded by rows x k, not rows x classes, and that every stage reads them.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.ddp import ENV

CLASSES = 5000


def _images(root: Path, rng: np.random.Generator) -> None:
    """Class folders of 2-3 tiny photos (a colour per class plus noise) and a competition folder."""
    base = rng.integers(0, 255, (CLASSES, 3))
    for c in range(CLASSES):
        d = root / "src" / f"c{c:05d}"
        d.mkdir(parents=True)
        for j in range(2 + c % 2):
            img = np.clip(base[c] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{j}.png")
    (root / "test").mkdir()
    for i in range(60):
        c = int(rng.integers(0, CLASSES))
        img = np.clip(base[c] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "test" / f"q{i:03d}.png")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env={**ENV, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, f"{args[:2]} failed:\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_five_thousand_classes_end_to_end_with_bounded_outputs(tmp_path):
    _images(tmp_path, np.random.default_rng(0))
    cfg = {
        "common": {"dataset": "s5k", "experiment": "s5k", "data_root": str(tmp_path / "data"),
                   "folds_dir": str(tmp_path / "folds"), "runs_root": str(tmp_path / "runs")},  # fmt: skip
        "prep": {"source": "imagefolder", "source_root": str(tmp_path / "src"), "top_k": "all",
                 "sample_ratio": 1.0, "image_size": 36, "packed": True, "workers": 2,
                 "val_frac": 0.34, "test_frac": 0.34},  # 3-photo classes give one photo to each split  # fmt: skip
        "train": {"models": ["simple_cnn"], "folds": [0], "img_size": 32, "epochs": 1, "batch_size": 128,
                  "cache": "packed", "progress": False},  # fmt: skip
        "predict": {"knn_k": 5},
        "ensemble": {"submissions_dir": str(tmp_path / "sub")},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = ["--config", str(path)]
    _run(["data_prep", "prep", *c, f"test_root={tmp_path / 'test'}"], tmp_path)
    _run(["data_prep", "folds", *c], tmp_path)
    _run(["pipeline", "train", *c], tmp_path)
    _run(["pipeline", "predict", *c], tmp_path)
    _run(["pipeline", "embed", *c], tmp_path)
    _run(["pipeline", "ensemble", *c, "knn=true"], tmp_path)
    _run(["pipeline", "submit", *c], tmp_path)
    _run(["pipeline", "compare", "s5k", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "cmp")],
         tmp_path)  # fmt: skip

    assert len(pd.read_csv(tmp_path / "data" / "s5k" / "label_map.csv")) == CLASSES
    run = tmp_path / "runs" / "s5k" / "simple_cnn" / "fold0"
    for name in ("oof.npz", "test.npz", "competition.npz", "oof_knn.npz", "competition_knn.npz"):
        with np.load(run / name) as z:
            assert "probs" not in z.files, f"{name}: a dense N x {CLASSES} matrix"
            rows, k = z["topk_idx"].shape
            assert k == 20 and z["topk_val"].shape == (rows, k), name
        assert (run / name).stat().st_size < rows * k * 8 + 200_000, name  # bounded by rows x k
    per_class = pd.read_csv(run / "per_class.csv")
    assert len(per_class) == CLASSES and (run / "confusion.png").is_file()
    board = pd.read_csv(tmp_path / "runs" / "s5k" / "leaderboard.csv")
    assert len(board) < 20 and "simple_cnn" in set(board["model"])
    sub = pd.read_csv(tmp_path / "sub" / "s5k.csv", dtype=str, keep_default_na=False)
    assert len(sub) == 60 and sub["landmarks"].str.fullmatch(r"\d+ [0-9.]+").all()
    assert (tmp_path / "cmp" / "compare.csv").is_file()
