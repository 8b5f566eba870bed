"""All of GLD v2 in prep and folds: top_k=all / min_images, the vectorised selection, splits and
folds (the same draws as the per-class code they replaced), the fold rule for classes of 2-5
photos, the class-size report, the import layering, and installs with ranges + constraints."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from common import schema
from common.config import load_stage_config
from common.errors import ConfigError
from common.io import write_csv
from data_prep import select
from data_prep.config import FoldsConfig, PrepConfig
from data_prep.folds import make_folds, run_folds
from data_prep.prep import run_prep
from tests.conftest import REPO
from tests.test_gld_sources import cfg, make_gld


def long_tail(seed: int, classes: int = 300) -> pd.DataFrame:
    """Rows of a GLD-like tail: most classes 1-5 photos, a few large ones; sparse landmark ids."""
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(classes) < 0.7, rng.integers(1, 6, classes), rng.integers(6, 60, classes))
    lids = rng.choice(10 * classes, classes, replace=False)
    lab = rng.permutation(np.repeat(lids, sizes))
    return pd.DataFrame({"id": [f"i{i:06d}" for i in range(len(lab))], "landmark_id": lab, "name": lab.astype(str)})


# ---- the per-class code the vectorised functions replaced: they must draw exactly the same


def ref_subsample(rows, ratio, seed, min_per_class=0, max_per_class=None):
    rng, parts = np.random.default_rng(seed), []
    for _, grp in rows.groupby("landmark_id", sort=True):
        n = max(1, int(round(len(grp) * ratio)))
        n = n if max_per_class is None else min(n, max_per_class)
        if n >= min_per_class:
            parts.append(grp.iloc[np.sort(rng.choice(len(grp), n, replace=False))])
    return pd.concat(parts)


def ref_split(rows, val_frac, test_frac, seed):
    rng, split = np.random.default_rng(seed + 1), pd.Series("train", index=rows.index, dtype=object)
    if "split" in rows:  # an official test set (CIFAR) stays test; the rest gives only val
        split[rows["split"] == "test"], rows, test_frac = "test", rows[rows["split"] != "test"], 0.0
    for _, grp in rows.groupby("landmark_id", sort=True):
        n = len(grp)
        n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
        while n_test + n_val > n - 1 and (n_test or n_val):
            n_test, n_val = (n_test - 1, n_val) if n_test >= n_val and n_test else (n_test, n_val - 1)
        perm = grp.index.to_numpy()[rng.permutation(n)]
        split[perm[:n_test]], split[perm[n_test : n_test + n_val]] = "test", "val"
    return split


def ref_folds(labels, k, seed):
    """scikit-learn's StratifiedKFold on classes >= k, seeded round-robin over the smaller ones."""
    fold, counts = np.full(len(labels), -1), pd.Series(labels).value_counts()
    small = np.isin(labels, counts[counts < k].index)
    big = np.flatnonzero(~small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, val) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(big, labels[big])):
            fold[big[val]] = f
    rng, start = np.random.default_rng(seed), 0
    for lab in sorted(set(labels[small])):
        idx = np.flatnonzero(small & (labels == lab))
        fold[idx[rng.permutation(len(idx))]] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return fold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_selection_draws_what_the_per_class_code_drew(seed):
    rows = long_tail(seed)
    rows.index = np.random.default_rng(seed).permutation(len(rows)) + 7  # an index that is not 0..n-1
    for ratio, cap, floor in ((1.0, None, 0), (0.3, None, 2), (0.8, 4, 0), (1.0, 10, 0)):
        got = select.subsample(rows, ratio, seed, floor, cap)
        assert got.equals(ref_subsample(rows, ratio, seed, floor, cap)), (ratio, cap, floor)
    official = rows.assign(split=np.where(np.arange(len(rows)) % 4 == 0, "test", "train"))
    for val, test in ((0.125, 0.125), (0.3, 0.4), (0.0, 0.25)):
        assert select.stratified_split(rows, val, test, seed).equals(ref_split(rows, val, test, seed))
        assert select.stratified_split(official, val, test, seed).equals(ref_split(official, val, test, seed))
    for k in (2, 5):
        train = pd.DataFrame({"id": rows["id"].to_numpy(), "label": rows["landmark_id"].to_numpy()})
        np.testing.assert_array_equal(make_folds(train, k, seed)["fold"], ref_folds(train["label"].to_numpy(), k, seed))


def test_top_k_all_and_min_images():
    rows = pd.DataFrame({"landmark_id": [5, 5, 5, 9, 9, 2, 2, 2, 7], "id": list("abcdefghi")})
    assert select.top_k_classes(rows, "all").equals(rows)
    assert set(select.top_k_classes(rows, "all", min_images=3)["landmark_id"]) == {2, 5}
    assert set(select.top_k_classes(rows, 1)["landmark_id"]) == {2}  # a tie: the smaller id
    assert set(select.top_k_classes(rows, 3, min_images=2)["landmark_id"]) == {2, 5, 9}
    assert select.top_k_classes(rows, "all", min_images=4).empty


def test_config_top_k_all_min_images_and_one_line_errors():
    def load(*over):
        return load_stage_config(PrepConfig, "prep", None, list(over))

    assert load("top_k=all").top_k == "all" and load("top_k=ALL").top_k == "all"
    assert load("top_k=20").top_k == 20 and isinstance(load("top_k=20").top_k, int)  # the fingerprint keeps 20
    assert load("min_images=3").min_images == 3
    for bad, match in (("top_k=most", "top_k must be a positive integer or 'all', got 'most'"),
                       ("top_k=0", "top_k must be"), ("top_k=2.5", "top_k must be"),
                       ("min_images=-1", "min_images must be >= 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            load(bad)


def test_fingerprint_of_an_existing_config_unchanged_by_the_new_key(tmp_path):
    from data_prep.competition import ExtraSets
    from data_prep.inputs import fingerprint, prep_inputs
    from data_prep.readers import read_gld_v2

    make_gld(tmp_path / "raw")
    table = read_gld_v2(tmp_path / "raw")
    default = prep_inputs(cfg(tmp_path), table, ExtraSets())
    assert "min_images" not in default["config"]  # left out at its default: older preps stay up to date
    limited = prep_inputs(cfg(tmp_path, min_images=4), table, ExtraSets())
    assert limited["config"]["min_images"] == 4 and fingerprint(limited) != fingerprint(default)


def test_folds_rule_when_most_classes_have_2_to_5_photos():
    rng = np.random.default_rng(3)
    sizes = np.r_[rng.integers(2, 6, 400), rng.integers(5, 40, 30)]  # 400 classes of 2-5, 30 larger ones
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    train = pd.DataFrame({"id": [f"p{i}" for i in range(len(labels))], "label": labels})
    folds = make_folds(train, 5, seed=42)
    assert folds["id"].equals(train["id"]) and folds["fold"].between(0, 4).all()
    fold_sizes = np.bincount(folds["fold"], minlength=5)
    assert fold_sizes.max() - fold_sizes.min() <= 2  # round-robin keeps the folds balanced
    per = pd.crosstab(train["label"], folds["fold"]).reindex(columns=range(5), fill_value=0)
    counts = train["label"].value_counts().sort_index()
    small = counts.index[counts < 5]
    assert (per.loc[small].max(axis=1) == 1).all()  # a small class: at most one image per fold
    big = counts.index[counts >= 5]
    assert ((per.loc[big].max(axis=1) - per.loc[big].min(axis=1)) <= 1).all()  # stratified


def _train_manifest(data_root: Path, labels: list[int]) -> None:
    ids = [f"im{i:04d}" for i in range(len(labels))]
    df = pd.DataFrame({"id": ids, "image": [f"{i}.jpg" for i in ids], "label": labels, "landmark_id": labels})
    write_csv(schema.manifest_path(data_root / "d", "train"), df)


def test_a_fold_left_empty_is_one_line_and_nothing_written(tmp_path):
    _train_manifest(tmp_path / "data", [0, 0, 1])  # 3 images, k=5: two folds would hold nothing
    over = [f"data_root={tmp_path / 'data'}", "dataset=d", f"folds_dir={tmp_path / 'folds'}", "k=5"]
    r = subprocess.run([sys.executable, "-m", "data_prep", "folds", *over], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "k=5 leaves fold(s) 3, 4 empty" in lines[0] and "train.csv" in lines[0]
    assert not (tmp_path / "folds").exists() or not any((tmp_path / "folds").iterdir())
    out = run_folds(load_stage_config(FoldsConfig, "folds", None, [*over[:-1], "k=3"]))  # k=3 fits
    assert sorted(schema.read_folds(out, 3)["fold"]) == [0, 1, 2]


def test_prep_all_classes_reports_class_sizes(tmp_path):
    make_gld(tmp_path / "raw", sizes=(9, 5, 3, 2, 1), size=24)
    r = run_prep(cfg(tmp_path, top_k="all", min_images=2), progress=False)
    sizes = r["class_sizes"]
    assert sizes["source"] == {"1": 1, "2": 1, "3": 1, "5": 1, "6-9": 1}
    assert sizes["kept"] == {"2": 1, "3": 1, "5": 1, "6-9": 1} and r["classes_kept"] == 4  # the 1-photo class dropped
    assert sum(sizes["train"].values()) == r["classes_kept"] and "round-robin" in sizes["fold_rule"]
    assert len(schema.read_label_map(tmp_path / "data" / "t")) == 4
    assert run_prep(cfg(tmp_path, top_k="all", min_images=2), progress=False)["fingerprint"] == r["fingerprint"]


def test_histogram_of_200k_classes_is_drawn(tmp_path):
    from data_prep.report import plot_histogram

    counts = np.maximum(1, (5000 / np.arange(1, 200_001) ** 0.7).astype(int))
    plot_histogram(pd.DataFrame({"count": counts}), tmp_path / "h.png", "gld")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_data_prep_never_imports_pipeline_and_prep_verify_have_no_cycle():
    for path in sorted((REPO / "data_prep").glob("*.py")):
        assert not [m for m in _imports(path) if m.split(".")[0] == "pipeline"], path.name
    assert "data_prep.prep" not in _imports(REPO / "data_prep" / "verify.py")
    from common.stages import stage_configs
    from pipeline.__main__ import all_stage_configs

    assert set(stage_configs()) == set(all_stage_configs())  # the one list data_prep's CLI uses is complete


def test_install_states_ranges_and_setup_uses_the_constraints():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if "==" in d]  # `pip install .` on a GPU host keeps its own torch build
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip
    for dist in ("torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn"):
        assert pins[dist] == version(dist).split("+")[0], dist  # the versions CI runs
    make = (REPO / "Makefile").read_text()
    stamp = make[make.index("$(STAMP):") :].split("\n\n")[0]
    assert "constraints.txt" in stamp.splitlines()[0] and "-c $(or $(CONSTRAINTS),constraints.txt)" in stamp
    assert "HF_HUB_OFFLINE" not in make
