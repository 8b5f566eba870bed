"""The make interface does what was typed: EXPERIMENT/ARGS reach every stage, help lists every
target, a wrong DATASET or RECIPE lists the valid ones, a misspelt variable stops make, a missing
photo folder says how to point at it, and runs are never deleted without asking."""

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


def test_misspelt_variables_stop_make_before_anything_runs():
    p = make("-n", "train", "MODEL=resnet18", "EPOCH=1")
    assert p.returncode != 0 and not commands(p.stdout, "train"), p.stdout
    assert "MODEL (did you mean MODELS?)" in p.stderr and "EPOCH (did you mean EPOCHS?)" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    typos = (("FOLD=0", "FOLDS"), ("RECIPES=kaggle", "RECIPE"), ("epochs=1", "EPOCHS"), ("DATSET=x", "DATASET"))
    for typo, known in typos:
        p = make("-n", "train", typo)
        assert p.returncode != 0 and f"did you mean {known}?" in p.stderr, (typo, p.stderr)
    # a variable close to nothing (an environment setting for the commands) is passed through
    p = make("-n", "train", "CUDA_VISIBLE_DEVICES=0", "MODELS=resnet18", "EPOCHS=1")
    (line,) = commands(p.stdout, "train")
    assert p.returncode == 0 and "models=resnet18" in line and "epochs=1" in line


def test_every_known_variable_is_in_help():
    known = re.search(r"^KNOWN_VARS := (.*(?:\\\n.*)*)", (REPO / "Makefile").read_text(), re.M).group(1)
    text = make("help").stdout
    for var in known.replace("\\", " ").split():
        assert re.search(rf"\b{var}\b", text), var


def test_all_ends_with_the_submission_step_not_the_internal_csv():
    last = make("-n", "all").stdout.strip().splitlines()[-1]
    assert "make predict submit" in last and "submissions/default.csv" in last, last
    assert "internal" not in last
    last = make("-n", "all", "DATASET=paris6k", "RECIPE=kaggle").stdout.strip().splitlines()[-1]
    assert "make predict submit DATASET=paris6k RECIPE=kaggle" in last, last
    assert "submissions/paris6k_kaggle.csv" in last, last
    last = make("-n", "all", "NAME=mine").stdout.strip().splitlines()[-1]
    assert "NAME=mine" in last and "submissions/mine.csv" in last, last
    # the name as the submit stage resolves it ({experiment}, submissions_dir), with the ARGS to repeat
    last = make("-n", "all", "EXPERIMENT=e1", "ARGS=name=sub_{experiment} submissions_dir=out").stdout.splitlines()[-1]
    assert "EXPERIMENT=e1 ARGS='name=sub_{experiment} submissions_dir=out' -> out/sub_e1.csv" in last, last


def test_wrong_recipe_lists_the_recipes():
    p = make("check-dataset", "RECIPE=kagle")
    assert p.returncode != 0 and "error: no recipe configs/recipes/kagle.yaml for RECIPE=kagle (valid: " in p.stderr
    assert "kaggle" in p.stderr and "cosine" in p.stderr


def test_missing_photo_folder_says_how_to_point_at_it(tmp_path):
    cfg = tmp_path / "photos.yaml"
    cfg.write_text(f"prep:\n  source: imagefolder\n  source_root: {tmp_path / 'absent'}   # the photos\n")
    p = make("check-dataset", "DATASET=nowhere_xyz", f"CONFIG={cfg}")
    assert p.returncode != 0 and f"reads its photos from {tmp_path / 'absent'} ({cfg})" in p.stderr, p.stderr
    assert "SOURCE_ROOT=/path/to/photos" in p.stderr
    assert make("check-dataset", "DATASET=nowhere_xyz", f"CONFIG={cfg}", f"SOURCE_ROOT={tmp_path}").returncode == 0
    (tmp_path / "absent").mkdir()
    assert make("check-dataset", "DATASET=nowhere_xyz", f"CONFIG={cfg}").returncode == 0


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_first_screen_and_its_links():
    """What a newcomer sees first: contents, the two commands, where the submission is, results;
    every relative link of the README and docs/ pages points at a file (and heading) that exists."""
    text = (REPO / "README.md").read_text()
    first = "\n".join(text.splitlines()[:64])
    for must in ("**Contents:**", "make all", "make test", "submissions/default.csv", "| `resnet18`", "docs/models.md"):
        assert must in first, must
    assert "seed 001" not in first and "submission: submissions/default_internal_test.csv" not in text
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), (page.name, target)
            if anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, (page.name, target)
        for code in re.findall(r"`((?:pipeline|data_prep|common|bench|tests)/[\w/]+\.py)", page.read_text()):
            assert (REPO / code).is_file(), (page.name, code)  # a module named in the docs still exists there


def test_nproc_launches_the_network_stages_with_accelerate():
    """make train NPROC=8 runs accelerate launch with 8 processes; the stages without a network do not."""
    out = make("-n", "train", "predict", "embed", "ensemble", "NPROC=8", "LAUNCH_ARGS=--num_machines 2").stdout
    for stage in ("train", "predict", "embed"):
        (line,) = commands(out, stage)
        assert "accelerate launch --multi_gpu --num_processes 8 --num_machines 2 -m pipeline " + stage in line
    (line,) = commands(out, "ensemble")
    assert "accelerate" not in line
    (line,) = commands(make("-n", "train").stdout, "train")
    assert "accelerate" not in line and "/python -m pipeline train" in line
