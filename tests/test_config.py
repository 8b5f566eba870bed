"""Config loading: stage sections, base files, typed overrides, unknown keys."""

import pytest

from common.config import load_stage_config
from common.errors import ConfigError
from data_prep.config import PrepConfig
from pipeline.config import TrainConfig


def test_base_file_and_overrides_are_typed(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 3\n  models: [a, b]\n  lr: 0.001\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ntrain:\n  batch_size: 8\n")
    cfg = load_stage_config(TrainConfig, "train", tmp_path / "exp.yaml", ["epochs=5", "models=x,y z", "folds=0,1"])
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (5, 8, 0.001)
    assert cfg.models == ["x", "y", "z"] and cfg.folds == [0, 1]
    cfg = load_stage_config(TrainConfig, "train", None, ["limit_train_batches=none", "pretrained=true"])
    assert cfg.limit_train_batches is None and cfg.use_pretrained is True


@pytest.mark.parametrize(
    "yaml_text, overrides, match",
    [
        ("train:\n  epocs: 3\n", [], r"unknown key 'epocs'.*did you mean: epochs"),
        ("trian:\n  epochs: 3\n", [], r"unknown section 'trian'"),
        ("train:\n  epochs: 3\n", ["bacth_size=3"], r"command line: unknown key 'bacth_size'"),
        ("train:\n  epochs: three\n", [], r"key 'epochs': expected int"),
        ("train:\n  epochs: 2.5\n", [], r"expected an integer"),
        ("train:\n  folds: [7]\n", [], r"fold\(s\) \[7\] outside"),
        ("train: [1, 2]\n", [], r"must be a mapping"),
        ("train:\n  epochs: [\n", [], r"not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, yaml_text, overrides, match):
    path = tmp_path / "x.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_stage_config(TrainConfig, "train", path, overrides)


def test_missing_file_and_bad_prep_values(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_stage_config(TrainConfig, "train", tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown source 'gld'"):
        load_stage_config(PrepConfig, "prep", None, ["source=gld"])
    with pytest.raises(ConfigError, match="sample_ratio"):
        load_stage_config(PrepConfig, "prep", None, ["sample_ratio=0"])


def test_shipped_configs_resolve():
    from pathlib import Path

    from data_prep.config import FoldsConfig
    from pipeline.config import EnsembleConfig

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml")):
        for cls, stage in (
            (PrepConfig, "prep"),
            (FoldsConfig, "folds"),
            (TrainConfig, "train"),
            (EnsembleConfig, "ensemble"),
        ):
            load_stage_config(cls, stage, path)


def test_model_overrides_apply_per_model_and_are_validated(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 3\n  model_overrides:\n    simple_cnn: {lr: '0.002', epochs: 9}\n")
    cfg = load_stage_config(TrainConfig, "train", path)
    assert cfg.for_model("simple_cnn").lr == 0.002 and cfg.for_model("simple_cnn").epochs == 9
    assert cfg.for_model("resnet18").epochs == 3 and cfg.for_model("resnet18") is cfg
    cli = load_stage_config(TrainConfig, "train", path, ["epochs=2"])  # the command line wins
    assert cli.for_model("simple_cnn").epochs == 2 and cli.for_model("simple_cnn").lr == 0.002
    path.write_text("train:\n  model_overrides:\n    simple_cnn: {epoch: 9}\n")
    cfg = load_stage_config(TrainConfig, "train", path)
    with pytest.raises(ConfigError, match=r"model_overrides.simple_cnn: unknown key 'epoch'.*epochs"):
        cfg.for_model("simple_cnn")
    path.write_text("train:\n  model_overrides:\n    simple_cnn: 3\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_stage_config(TrainConfig, "train", path)
