"""The submission's answers figure: drawn for labelled and unlabelled test sets, written beside it."""

import numpy as np
import pandas as pd

from pipeline.report.plots_answers import plot_answers


def _frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"q{i:03d}" for i in range(n)]
    cls = np.where(rng.random(n) < 0.5, 7, rng.integers(0, 20, n))
    cells = [f"{1000 + c} {x:.4f}" for c, x in zip(cls, rng.random(n))]
    cells[3] = ""  # an empty answer
    return pd.DataFrame({"id": ids, "landmarks": cells}), rng.integers(-1, 20, n)


def test_answers_figure_labelled_and_unlabelled(tmp_path):
    frame, labels = _frame()
    a = plot_answers(frame, pd.Series(labels, index=frame["id"]), 20, tmp_path / "a.png", "x: GAP 0.3")
    b = plot_answers(frame, None, 20, tmp_path / "b.png", "x: unlabelled")
    for p in (a, b):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert a.read_bytes() != b.read_bytes()  # the labelled one splits landmarks from non-landmarks
