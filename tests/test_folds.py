"""Fold files: stratified, deterministic, every id exactly once."""

import pandas as pd
import pytest

from common import schema
from data_prep.folds import make_folds


def test_fold_file_covers_every_train_id_once(tiny_data):
    train = schema.read_manifest(tiny_data["data_root"] / "tiny", "train")
    folds = schema.read_folds(tiny_data["folds_file"])
    assert tiny_data["folds_file"].name == "tiny_k3_s42.csv"
    assert folds["id"].is_unique and set(folds["id"]) == set(train["id"])
    assert set(folds["fold"]) == {0, 1, 2}


def test_stratified_and_deterministic():
    labels = [0] * 30 + [1] * 12 + [2] * 6 + [3] * 2  # class 3 is smaller than k
    train = pd.DataFrame({"id": [f"i{i}" for i in range(len(labels))], "label": labels})
    a, b = make_folds(train, 3, seed=7), make_folds(train, 3, seed=7)
    assert a.equals(b)
    assert not a.equals(make_folds(train, 3, seed=8))
    per = pd.crosstab(pd.Series(labels), a["fold"])
    assert (per.loc[0] == 10).all() and (per.loc[1] == 4).all() and (per.loc[2] == 2).all()
    assert per.loc[3].sum() == 2 and per.loc[3].max() == 1  # small class spread, not dropped
    assert (a["fold"] >= 0).all()


def test_fold_seed_key_names_the_file(tmp_path, tiny_data):
    from common.config import load_stage_config
    from common.errors import ConfigError
    from data_prep.config import FoldsConfig
    from data_prep.folds import run_folds

    over = [f"data_root={tiny_data['data_root']}", "dataset=tiny", f"folds_dir={tmp_path}", "k=3"]
    out = run_folds(load_stage_config(FoldsConfig, "folds", None, [*over, "fold_seed=7"]))
    assert out.name == "tiny_k3_s7.csv"
    assert not schema.read_folds(out).equals(schema.read_folds(tiny_data["folds_file"]))  # another seed
    with pytest.raises(ConfigError, match="unknown key 'seed'.*fold_seed"):
        load_stage_config(FoldsConfig, "folds", None, [*over, "seed=7"])
