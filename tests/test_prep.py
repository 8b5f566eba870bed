"""The prep stage on the generated default: layout, counts, rerun no-op; selection unit tests."""

import json

import numpy as np
import pandas as pd
import pytest

from common import schema
from data_prep import select, synthetic
from data_prep.readers import read_gld_v2


def test_synthetic_default_is_gld_v2_layout(tiny_data):
    raw = tiny_data["data_root"] / "raw" / "tiny"
    df = pd.read_csv(raw / "train.csv", dtype={"id": str})
    assert list(df.columns) == ["id", "url", "landmark_id"]
    assert df["id"].str.fullmatch(r"[0-9a-f]{16}").all()
    for image_id in df["id"].head(20):
        assert (raw / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg").is_file()
    sizes = df["landmark_id"].value_counts()
    assert sizes.max() >= 4 * sizes.min()  # a long tail: a few big classes, many small ones
    table = read_gld_v2(raw)
    assert len(table.rows) == len(df) and not table.skipped


def test_counts_reconcile(tiny_data):
    r = tiny_data["report"]
    data_dir = tiny_data["data_root"] / "tiny"
    assert r["rows_in"] == r["rows_read"] + sum(r["skipped_reading"].values())
    assert r["rows_after_sampling"] == r["rows_kept"] + sum(r["skipped_images"].values())
    # the synthetic default adds generated non-landmarks to the internal test split (label -1)
    assert sum(r["splits"].values()) == r["rows_kept"] + r["nonlandmark"]["test"]
    assert r["classes_kept"] == 6
    manifests = {s: schema.read_manifest(data_dir, s) for s in schema.SPLITS}
    assert {s: len(m) for s, m in manifests.items()} == r["splits"]
    assert (manifests["train"]["label"] >= 0).all() and (manifests["val"]["label"] >= 0).all()
    assert (manifests["test"]["label"] == schema.NON_LANDMARK).sum() == r["nonlandmark"]["test"]
    all_ids = pd.concat([m["id"] for m in manifests.values()])
    assert all_ids.is_unique
    lm = schema.read_label_map(data_dir)
    assert set(manifests["train"]["label"]) == set(range(6))  # every class has training images
    # the kept classes are the top-6 by frequency of the raw csv
    raw = pd.read_csv(tiny_data["data_root"] / "raw" / "tiny" / "train.csv")
    counts = raw["landmark_id"].value_counts()
    assert set(lm["landmark_id"]) == set(counts.sort_index().sort_values(ascending=False, kind="stable").index[:6])
    # ratio: each kept class keeps round(n * 0.75) images
    for lid, n in zip(lm["landmark_id"], lm["count"]):
        assert n == max(1, round(counts[lid] * 0.75))
    for m in manifests.values():
        assert all((data_dir / p).is_file() for p in m["image"])


def test_rerun_is_a_noop(tiny_data):
    from data_prep.prep import run_prep

    data_dir = tiny_data["data_root"] / "tiny"

    def files():  # .lock holds who runs prep now: rewritten by every run, never read as data
        return {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    report = run_prep(tiny_data["prep_cfg"], progress=False)
    after = files()
    assert before == after
    assert report["fingerprint"] == json.loads((data_dir / schema.PREP_REPORT).read_text())["fingerprint"]


def test_selection_functions():
    rows = pd.DataFrame(
        {"id": [str(i) for i in range(30)], "landmark_id": [1] * 15 + [2] * 10 + [3] * 4 + [4], "name": "x", "src": "x"}
    )
    top = select.top_k_classes(rows, 2)
    assert set(top["landmark_id"]) == {1, 2}
    sub = select.subsample(rows, 0.5, seed=0)
    assert sub.groupby("landmark_id").size().to_dict() == {1: 8, 2: 5, 3: 2, 4: 1}
    assert select.subsample(rows, 0.5, seed=0).equals(sub)  # deterministic
    assert set(select.subsample(rows, 1.0, seed=0, min_per_class=4)["landmark_id"]) == {1, 2, 3}
    assert select.subsample(rows, 1.0, seed=0, max_per_class=3).groupby("landmark_id").size().max() == 3
    split = select.stratified_split(rows, 0.2, 0.2, seed=0)
    by = pd.crosstab(rows["landmark_id"], split)
    assert by.loc[1, "test"] == 3 and by.loc[1, "val"] == 3 and by.loc[1, "train"] == 9
    assert by.loc[4, "train"] == 1  # a single-image class keeps it for training


def test_official_test_split_is_kept():
    rows = pd.DataFrame(
        {
            "id": list("abcdefgh"),
            "landmark_id": [0, 0, 0, 0, 1, 1, 1, 1],
            "split": ["train", "train", "train", "test"] * 2,
        }
    )
    split = select.stratified_split(rows, 0.25, 0.5, seed=1)
    assert list(split[rows["split"] == "test"]) == ["test", "test"]
    assert (split[rows["split"] == "train"] != "test").all()


def test_class_sizes_long_tail():
    sizes = synthetic.class_sizes(synthetic.SynthSpec(num_classes=60, max_per_class=500, tail=0.8, min_per_class=3))
    assert sizes[0] == 500 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 25


def test_render_is_deterministic_and_classes_differ():
    d0, d1 = synthetic._landmark_design(0, 0), synthetic._landmark_design(0, 1)
    a = np.asarray(synthetic.render_photo(d0, 0, 0, 3, 64))
    assert np.array_equal(a, np.asarray(synthetic.render_photo(d0, 0, 0, 3, 64)))
    assert d0 != d1


@pytest.mark.parametrize("bad", ["missing_manifest", "empty_label_map"])
def test_missing_inputs_are_clear_errors(tmp_path, bad):
    from common.errors import DataError

    if bad == "missing_manifest":
        with pytest.raises(DataError, match="train manifest not found.*make prep"):
            schema.read_manifest(tmp_path, "train")
    else:
        (tmp_path / schema.LABEL_MAP).write_text(",".join(schema.LABEL_MAP_COLUMNS) + "\n")
        with pytest.raises(DataError, match="class list is empty"):
            schema.read_label_map(tmp_path)


def test_generated_set_is_regenerated_when_the_spec_changes(tmp_path):
    spec = synthetic.SynthSpec(num_classes=3, max_per_class=4, min_per_class=2, image_size=24)
    synthetic.generate(tmp_path, spec, workers=1)
    assert synthetic.is_complete(tmp_path, spec)
    other = synthetic.SynthSpec(num_classes=3, max_per_class=4, min_per_class=2, image_size=32)
    assert not synthetic.is_complete(tmp_path, other)
    df = synthetic.generate(tmp_path, other, workers=1)
    from PIL import Image

    first = synthetic.image_path(tmp_path, df["id"].iloc[0])
    assert Image.open(first).size[1] <= 32 and Image.open(first).size[1] > 24  # re-rendered at the new size
    assert synthetic.is_complete(tmp_path, other)
