"""Per-class accuracy, confusion matrix and the per-run analysis files, on hand-made arrays."""

import numpy as np
import pandas as pd
import pytest

from common.errors import DataError
from pipeline.metrics import topk_accuracy
from pipeline.report.analysis import (
    confusion_classes,
    confusion_matrix,
    per_class_accuracy,
    per_class_table,
    per_class_topk,
    write_run_analysis,
)

# 6 rows, 3 classes (+ one non-landmark row and one landmark outside the label map)
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0 -> 0
        [0.1, 0.8, 0.1],  # true 0 -> 1
        [0.2, 0.5, 0.3],  # true 1 -> 1
        [0.1, 0.6, 0.3],  # true 1 -> 1
        [0.2, 0.7, 0.1],  # true 1 -> 1
        [0.6, 0.3, 0.1],  # true -1 (non-landmark): left out
        [0.1, 0.1, 0.8],  # true -2 (other landmark): left out
    ]
)
LABELS = np.array([0, 0, 1, 1, 1, -1, -2])
LABEL_MAP = pd.DataFrame(
    {"label": [0, 1, 2], "landmark_id": [501, 7, 99], "name": ["louvre", "eiffel_tower", ""], "count": [2, 3, 0]}
)


def test_per_class_accuracy_and_confusion_by_hand():
    acc = per_class_accuracy(PROBS, LABELS, 3)
    np.testing.assert_allclose(acc[:2], [0.5, 1.0])
    assert np.isnan(acc[2])  # no rows of class 2
    np.testing.assert_array_equal(confusion_matrix(PROBS, LABELS, 3), [[1, 1, 0], [0, 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(per_class_topk(PROBS, LABELS, 3, k=2)[:2], [1.0, 1.0])


def test_per_class_scores_agree_with_the_metrics_module_even_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, 400)
    probs = np.round(rng.random((400, 9)), 1)  # many ties: the tie rule must match topk_accuracy's
    n = np.bincount(labels, minlength=9)
    for k, per_class in ((1, per_class_accuracy(probs, labels, 9)), (5, per_class_topk(probs, labels, 9, 5))):
        assert np.nansum(per_class * n) / n.sum() == pytest.approx(topk_accuracy(probs, labels, k))


def test_per_class_table_names_the_most_confused_class():
    t = per_class_table(PROBS, LABELS, LABEL_MAP)
    assert list(t["label"]) == [0, 1, 2]  # worst first; the class without rows last
    louvre = t.iloc[0]
    assert (louvre["name"], louvre["n"], louvre["top1"]) == ("louvre", 2, 0.5)
    assert (louvre["confused_with"], louvre["confused_landmark_id"], louvre["confused_n"]) == ("eiffel_tower", 7, 1)
    eiffel = t.iloc[1]
    assert eiffel["confused_with"] == "" and pd.isna(eiffel["confused_landmark_id"]) and eiffel["confused_n"] == 0
    assert t.iloc[2]["display"] == "99"  # no name: the landmark id


def test_confusion_keeps_the_classes_with_most_errors():
    true = np.array([0, 0, 0, 1, 2, 3, 3, 4, 5, 5, 5, 5])
    pred = np.array([1, 1, 0, 1, 2, 0, 3, 4, 5, 5, 5, 5])
    # errors: class 0 (2 as true, 1 as predicted), 1 (2 as predicted), 3 (1), then by size: 5 (4 rows), 2, 4
    np.testing.assert_array_equal(confusion_classes(true, pred, 6, limit=6), [0, 1, 3, 5, 2, 4])  # most confused first
    np.testing.assert_array_equal(confusion_classes(true, pred, 6, limit=3), [0, 1, 3])


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(DataError, match=r"predictions have 3 classes, the label map 4"):
        per_class_accuracy(PROBS, LABELS, 4)
    with pytest.raises(DataError, match=r"probs \(7, 3\) and labels \(2,\) do not match"):
        confusion_matrix(PROBS, LABELS[:2], 3)
    with pytest.raises(DataError, match="label 5 is outside 0..2"):
        per_class_accuracy(PROBS, np.array([0, 0, 1, 1, 5, -1, -2]), 3)


@pytest.mark.parametrize("num_classes", [3, 70])
def test_write_run_analysis_files(tmp_path, num_classes):
    rng = np.random.default_rng(num_classes)
    if num_classes == 3:
        probs, labels, lm = PROBS, LABELS, LABEL_MAP
    else:
        labels = rng.integers(-1, num_classes, 700)
        probs = rng.dirichlet(np.ones(num_classes), 700)
        probs[np.flatnonzero(labels >= 0), labels[labels >= 0]] += 0.3
        lm = pd.DataFrame({"label": range(num_classes), "landmark_id": 1000 + np.arange(num_classes), "name": ""})
    paths = write_run_analysis(tmp_path / "m" / "fold0", probs, labels, lm)
    assert [p.name for p in paths] == ["per_class.csv", "per_class.png", "confusion.png"]
    table = pd.read_csv(paths[0])
    want = "label landmark_id name n top1 top5 confused_with confused_landmark_id confused_n"
    assert list(table.columns) == want.split()
    assert len(table) == num_classes and table["n"].sum() == (labels >= 0).sum()
    for png in paths[1:]:
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_per_class_figure_has_a_legend_for_its_colours(tmp_path, monkeypatch):
    from pipeline.report import plots_classes

    figs = []
    monkeypatch.setattr(plots_classes, "save", lambda fig, path: figs.append(fig) or path)
    for top1 in ([0.2, 0.55, 0.7, 0.95], np.linspace(0.2, 1.0, 60)):  # bars alone; the curve of all + the worst
        n = len(top1)
        t = pd.DataFrame({"display": [f"c{i}" for i in range(n)], "n": 5, "top1": top1, "confused_with": "c0"})
        plots_classes.plot_per_class(t, tmp_path / "p.png")
        bars = figs[-1].axes[-1]
        labels = [x.get_text() for x in bars.get_legend().get_texts()]
        assert labels[:2] == ["top-1 < 0.5", f"below overall ({t['top1'].mean():.3f})"], labels
        assert "at or above overall" in labels and "overall top-1" in labels
    colours = {tuple(p.get_facecolor()[:3]) for p in figs[0].axes[-1].patches if p.get_width() > 0}
    assert colours == {plots_classes.RED, plots_classes.ORANGE, plots_classes.BLUE}  # 0.2 | 0.55 | 0.7, 0.95


def test_per_class_legend_covers_no_bar_label(tmp_path, monkeypatch):
    """With every class above 0.6 (a good CIFAR run) the worst bars' labels reach the right-hand side,
    where an in-axes legend used to hide them; the legend must overlap no label, in either layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pipeline.report import plots_classes

    figs = []
    monkeypatch.setattr(plots_classes, "save", lambda fig, path: figs.append(fig) or path)
    for top1 in (np.linspace(0.75, 0.95, 10), np.linspace(0.75, 1.0, 60)):
        n = len(top1)
        names = [f"c{i}" for i in range(n)]
        t = pd.DataFrame({"display": names, "n": 500, "top1": top1, "confused_with": "automobile"})
        plots_classes.plot_per_class(t, tmp_path / "p.png")
        fig = figs[-1]
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # axis labels take their places when drawn
        renderer = canvas.get_renderer()
        bars = fig.axes[-1]
        legend_box = bars.get_legend().get_window_extent(renderer)
        labels = [x.get_window_extent(renderer) for x in bars.texts]
        assert labels and not any(legend_box.overlaps(b) for b in labels)
        assert legend_box.y0 >= 0 and legend_box.x0 >= 0 and legend_box.x1 <= fig.bbox.x1  # inside the figure
        assert not legend_box.overlaps(bars.xaxis.label.get_window_extent(renderer))


def test_analysis_of_topk_predictions_equals_the_dense_one(tmp_path):
    """At 81k classes the OOF file is top-k: per-class top-1/top-5 and the confusion come from the
    candidates and equal the dense analysis (k >= 5)."""
    from pipeline.report.analysis import per_class_table
    from pipeline.scores import topk

    rng = np.random.default_rng(3)
    c = 60
    probs = rng.random((400, c)).astype(np.float32)
    labels = rng.integers(-1, c, 400)
    lm = pd.DataFrame({"label": range(c), "landmark_id": range(100, 100 + c), "name": [f"n{i}" for i in range(c)]})
    dense, sparse = per_class_table(probs, labels, lm), per_class_table(topk(probs, 8), labels, lm)
    pd.testing.assert_frame_equal(dense, sparse)
    paths = write_run_analysis(tmp_path, topk(probs, 8), labels, lm)
    assert all(p.is_file() for p in paths)
