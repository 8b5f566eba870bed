"""The make interface does what was typed: EXPERIMENT/ARGS reach every stage, help lists every
target, a wrong DATASET lists the valid ones, and runs are never deleted without asking."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True)


def commands(out: str, stage: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(rf"-m (pipeline|data_prep) {stage}\b", line)]


def test_experiment_and_args_reach_every_stage():
    out = make("-n", "all", "predict", "submit", "EXPERIMENT=x", "ARGS=name=y lr=0.01").stdout
    for stage in ("prep", "folds", "train", "ensemble", "predict", "submit"):
        (line,) = commands(out, stage)
        assert "experiment=x" in line and "name=y" in line and "lr=0.01" in line, (stage, line)
    (line,) = commands(make("-n", "ensemble", "ARGS=tta=true", "NAME=sub").stdout, "ensemble")
    assert "tta=true" in line and "name=sub" in line
    (line,) = commands(make("-n", "train", "RECIPE=kaggle").stdout, "train")
    assert "--config configs/recipes/kaggle.yaml" in line and "experiment=default_kaggle" in line


def test_help_lists_every_target_and_variable():
    text = make("help").stdout
    phony = re.search(r"^\.PHONY:(.*(?:\\\n.*)*)", (REPO / "Makefile").read_text(), re.M).group(1)
    for target in phony.replace("\\", " ").split():
        if target != "check-dataset":
            assert re.search(rf"^\s+{re.escape(target)}\b|;\s+{re.escape(target)}:", text, re.M), target
    for var in ("DATASET", "EXPERIMENT", "NAME", "MODELS", "FOLDS", "EPOCHS", "ARGS", "PREP_ARGS", "RECIPE",
                "GLD_ROOT", "CIFAR_ROOT", "TEST_ROOT", "EXPERIMENTS"):  # fmt: skip
        assert var in text, var


def test_wrong_dataset_and_missing_roots_are_one_line():
    p = make("check-dataset", "DATASET=nope")
    assert p.returncode != 0 and "error: no config configs/nope.yaml for DATASET=nope (valid: " in p.stderr
    assert "default" in p.stderr and "paris6k" in p.stderr
    p = make("check-dataset", "DATASET=gld")
    if not (REPO / "data" / "gld" / "prep_report.json").exists():
        assert p.returncode != 0 and "DATASET=gld needs GLD_ROOT=" in p.stderr


def test_runs_are_not_deleted_without_asking(tmp_path):
    p = make("clean-runs")
    assert p.returncode != 0 and "make clean-runs EXPERIMENT=name" in p.stderr
    assert "rm -rf runs" not in make("-n", "clean").stdout
