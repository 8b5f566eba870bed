"""Config loading: stage sections, base files, typed overrides, unknown keys."""

import pytest
import yaml

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
    from pipeline.config_stages import EnsembleConfig

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


CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_shipped_configs_hold_what_the_readme_promises():
    from data_prep.config import FoldsConfig

    gld_t = load_stage_config(TrainConfig, "train", CONFIGS / "gld.yaml")
    gld_p = load_stage_config(PrepConfig, "prep", CONFIGS / "gld.yaml")
    # seed 001: top-1000 classes, ratio 0.1, 256 px cache, crop 224, Adam 5e-4, batch 64, 25 epochs
    assert (gld_p.source, gld_p.top_k, gld_p.sample_ratio, gld_p.image_size) == ("gld_v2", 1000, 0.1, 256)
    assert (gld_t.img_size, gld_t.batch_size, gld_t.epochs, gld_t.lr, gld_t.optimizer) == (224, 64, 25, 5e-4, "adam")
    assert (gld_t.beta1, gld_t.beta2, gld_t.schedule, gld_t.loss) == (0.9, 0.999, "halve_on_drop", "ce")
    assert gld_t.model_overrides == {}  # nothing of the offline demo leaks into the real recipe
    # seed 001's Table 3: seven nets
    assert sorted(gld_t.models) == sorted(
        ["resnet50", "resnext50_32x4d", "densenet121", "inception_resnet_v2", "seresnet50", "inception_res_pa",
         "resneat50"]
    )  # fmt: skip
    for path in sorted(CONFIGS.glob("*.yaml")):  # dataset, k and fold seed stated once, equal in every stage
        t = load_stage_config(TrainConfig, "train", path)
        f = load_stage_config(FoldsConfig, "folds", path)
        p = load_stage_config(PrepConfig, "prep", path)
        assert t.dataset == f.dataset == p.dataset, path
        assert (t.k, t.fold_seed) == (f.k, f.fold_seed), path
    paris = load_stage_config(TrainConfig, "train", CONFIGS / "paris6k.yaml")
    assert paris.epochs == 10 and paris.for_model("simple_cnn").epochs == 10  # the child's epochs win
    assert paris.for_model("simple_cnn").lr == 0.002  # what the child did not set is still inherited
    default = load_stage_config(TrainConfig, "train", CONFIGS / "default.yaml")
    assert (default.batch_size, default.epochs, default.img_size) == (32, 12, 64)
    assert default.for_model("simple_cnn").epochs == 25


def test_child_beats_inherited_model_overrides_and_common_section(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "common: {dataset: a, experiment: e1, k: 4}\n"
        "train:\n  epochs: 5\n  model_overrides:\n    m: {epochs: 25, lr: 0.1}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\ncommon: {experiment: e2}\ntrain:\n  epochs: 7\n")
    cfg = load_stage_config(TrainConfig, "train", tmp_path / "child.yaml")
    assert (cfg.dataset, cfg.experiment, cfg.k, cfg.epochs) == ("a", "e2", 4, 7)
    assert cfg.model_overrides == {"m": {"lr": 0.1}}  # inherited epochs override dropped, lr kept
    (tmp_path / "own.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\n  model_overrides:\n    m: {epochs: 9}\n")
    assert load_stage_config(TrainConfig, "train", tmp_path / "own.yaml").for_model("m").epochs == 9
    (tmp_path / "bad.yaml").write_text("common: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"'lr' cannot go in 'common:'"):
        load_stage_config(TrainConfig, "train", tmp_path / "bad.yaml")


def test_layered_files_and_keys_of_other_stages(tmp_path):
    from data_prep.config import PrepConfig as P
    from pipeline.config_stages import EnsembleConfig

    (tmp_path / "data.yaml").write_text("common: {dataset: d}\ntrain: {epochs: 3, lr: 0.01}\n")
    (tmp_path / "recipe.yaml").write_text("train: {optimizer: sgd, lr: 0.1}\n")
    cfg = load_stage_config(TrainConfig, "train", [tmp_path / "data.yaml", tmp_path / "recipe.yaml"])
    assert (cfg.dataset, cfg.epochs, cfg.optimizer, cfg.lr) == ("d", 3, "sgd", 0.1)
    # the same ARGS reach every stage: each takes its keys, ignores those of other stages
    ens = load_stage_config(EnsembleConfig, "ensemble", None, ["experiment=x", "lr=0.1"], (TrainConfig, P))
    assert ens.experiment == "x"
    with pytest.raises(ConfigError, match="unknown key 'lrr'.*did you mean: lr"):
        load_stage_config(EnsembleConfig, "ensemble", None, ["lrr=0.1"], (TrainConfig, P))


def test_cli_help_lists_every_key_with_type_default_and_meaning():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for f in __import__("dataclasses").fields(TrainConfig):
        assert f"\n  {f.name} " in out, f.name
    assert "warmup_epochs" in out and "linear warm-up" in out and "[default: 'halve_on_drop']" in out


def test_recipe_overlays_layer_on_every_data_set_and_keep_its_epochs():
    for recipe in sorted((CONFIGS / "recipes").glob("*.yaml")):
        for data in ("default", "paris6k", "cifar10", "gld"):
            base = load_stage_config(TrainConfig, "train", CONFIGS / f"{data}.yaml")
            cfg = load_stage_config(TrainConfig, "train", [CONFIGS / f"{data}.yaml", recipe])
            wanted = yaml.safe_load(recipe.read_text())["train"]
            got = {k: list(v) if isinstance(v, tuple) else v for k in wanted for v in [getattr(cfg, k)]}
            assert got == wanted, recipe
            assert cfg.optimizer != base.optimizer, recipe
            assert (cfg.epochs, cfg.batch_size) == (base.epochs, base.batch_size)
            assert cfg.models == wanted.get("models", base.models)  # transfer.yaml names its own net
            for m in cfg.models:  # a model's own epochs/batch stay; the recipe's lr beats its own lr
                assert cfg.for_model(m).epochs == base.for_model(m).epochs
                assert cfg.for_model(m).lr == cfg.lr


def test_prefetch_is_auto_on_a_gpu_only_and_validated():
    import torch

    from pipeline.train.loop import resolve_prefetch

    def cfg(value):
        c = TrainConfig(prefetch=value)
        c.validate()
        return c.prefetch

    assert cfg("auto") == "auto" and cfg(True) == "true" and cfg(False) == "false"
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not resolve_prefetch("auto", cpu) and resolve_prefetch("auto", gpu)
    assert resolve_prefetch("true", cpu) and not resolve_prefetch("false", gpu)
    with pytest.raises(ConfigError, match="prefetch must be auto"):
        cfg("sometimes")


def test_ensemble_weights_without_models_say_how_to_give_them():
    from pipeline.config_stages import EnsembleConfig

    cfg = EnsembleConfig(method="weighted", weights=[0.8, 0.2])
    with pytest.raises(ConfigError, match=r"needs one value per entry of 'models'.*e\.g\. models=resnet18"):
        cfg.validate()
    EnsembleConfig(method="weighted", weights=[0.8, 0.2], models=["a", "b"]).validate()


def test_a_bad_command_line_value_names_the_command_line_and_lists_take_brackets():
    with pytest.raises(ConfigError, match=r"^command line: epochs=ten: expected int"):
        load_stage_config(TrainConfig, "train", CONFIGS / "default.yaml", ["epochs=ten"])
    cfg = load_stage_config(TrainConfig, "train", CONFIGS / "default.yaml", ["models=[resnet18, simple_cnn]"])
    assert cfg.models == ["resnet18", "simple_cnn"]


def test_unknown_key_suggests_the_keys_of_its_own_stage_first():
    from common.stages import stage_configs

    with pytest.raises(ConfigError, match=r"unknown key 'lr_rate' for train \(did you mean: lr, lr_factor\?\)$"):
        load_stage_config(TrainConfig, "train", None, ["lr_rate=1e-3"], stage_configs())
    # a key only another stage has is named with that stage
    with pytest.raises(ConfigError, match=r"for prep \(did you mean: lr \(train\), lr_factor \(train\)\?\)$"):
        load_stage_config(PrepConfig, "prep", None, ["lr_rate=1e-3"], stage_configs())
    with pytest.raises(ConfigError, match=r"for train \(did you mean: sample_ratio \(prep\)\?\)$"):
        load_stage_config(TrainConfig, "train", None, ["sample_ration=1"], stage_configs())


def test_dotted_keys_set_one_entry_of_a_mapping(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 4\n  model_kwargs: {drop_path_rate: 0.1}\n"
                    "  model_overrides:\n    simple_cnn: {lr: 0.002, epochs: 9}\n")  # fmt: skip
    over = ["model_kwargs.drop_rate=0.2", "model_kwargs.act=relu", "model_overrides.resnet18.lr=1e-3", "epochs=2"]
    cfg = load_stage_config(TrainConfig, "train", path, over)
    assert cfg.model_kwargs == {"drop_path_rate": 0.1, "drop_rate": 0.2, "act": "relu"}  # the file's entry kept
    assert cfg.for_model("resnet18").lr == 0.001 and cfg.for_model("resnet18").epochs == 2
    assert cfg.for_model("simple_cnn").lr == 0.002 and cfg.for_model("simple_cnn").epochs == 2  # epochs=2 wins
    with pytest.raises(ConfigError, match=r"^command line: lr\.x=1: 'lr' is not a mapping; give lr=value$"):
        load_stage_config(TrainConfig, "train", path, ["lr.x=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'model_kwarg.drop_rate' for train \(did you mean: model_kw"):
        load_stage_config(TrainConfig, "train", path, ["model_kwarg.drop_rate=0.2"])


def test_dashed_key_value_is_the_same_as_key_equals_value():
    from common.cli import dashed_overrides

    got = dashed_overrides(["train", "--epochs", "3", "--config", "c.yaml", "lr=1", "--model-kwargs.drop_rate=0.2",
                            "--cpu", "--config=d.yaml", "--models", "a,b"])  # fmt: skip
    assert got == ["train", "--config", "c.yaml", "--config=d.yaml",
                   "epochs=3", "lr=1", "model_kwargs.drop_rate=0.2", "cpu=true", "models=a,b"]  # fmt: skip
    assert dashed_overrides(["verify", "--shallow", "--top_k", "5"]) == ["verify", "--shallow", "top_k=5"]
    assert dashed_overrides(["compare", "a", "--out", "x"]) == ["compare", "a", "--out", "x"]  # not a stage
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipeline", "settings", "--epochs", "2", "--config", str(CONFIGS / "default.yaml"),
           "--models", "resnet18", "folds=0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=CONFIGS.parent)
    assert out.returncode == 0 and "models=resnet18 folds=0 epochs=2 " in out.stdout, out.stderr


@pytest.mark.parametrize("face", ["pipeline", "data_prep"])
def test_own_flags_of_the_stage_commands_are_the_ones_left_alone(face, capsys):
    """A new option on a stage command must be added to OWN_FLAGS, or --it would become an override."""
    import importlib
    import re

    from common.cli import OVERRIDE_COMMANDS, OWN_FLAGS

    main = importlib.import_module(f"{face}.__main__").main
    for cmd in OVERRIDE_COMMANDS:
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr()
        if "invalid choice" in text.err:
            continue  # a command of the other face
        options = text.out.split("options:")[1].split("\n\n")[0]
        flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", options))
        assert flags and flags <= set(OWN_FLAGS), (cmd, flags - set(OWN_FLAGS))
        for flag in flags:  # and each takes as many values as OWN_FLAGS says
            shown = re.search(rf"{flag}( [A-Z_]+)?[ ,\n]", options + "\n").group(1)
            assert OWN_FLAGS[flag] == (1 if shown else 0), (cmd, flag)
