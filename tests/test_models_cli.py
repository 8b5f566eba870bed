"""``python -m pipeline.models list``: names, parameters, MACs, and '-' with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.models.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_resnet50_params_and_macs(capsys) -> None:
    rc, out, _ = run(capsys, "list", "--pattern", "resnet50", "--img-size", "224")
    assert rc == 0
    row = [line for line in out.splitlines() if line.startswith("resnet50 ")]
    assert len(row) == 1 and "25,557,032" in row[0] and "4.089" in row[0]


def test_list_markdown_small_input(capsys) -> None:
    rc, out, _ = run(
        capsys,
        "list",
        "--pattern",
        "*resnet18",
        "--img-size",
        "32",
        "--small-input",
        "--markdown",
        "--num-classes",
        "10",
    )
    lines = out.splitlines()
    assert rc == 0
    assert lines[0].startswith("| model |") and "small-input" in lines[0] and lines[1].startswith("|---")
    assert any(line.startswith("| resnet18 |") for line in lines)
    assert any(line.startswith("| seresnet18 |") for line in lines)


def test_comma_separated_patterns(capsys) -> None:
    rc, out, _ = run(capsys, "list", "--pattern", "resnet18, vgg11*", "--img-size", "32")
    assert rc == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["resnet18", "vgg11_bn"]


def test_models_that_cannot_run_are_listed_with_reason(capsys) -> None:
    rc, out, _ = run(capsys, "list", "--pattern", "inception_v3", "--img-size", "64")
    assert rc == 0 and "needs >= 75 px" in out and " - " in out
    rc, out, _ = run(capsys, "list", "--pattern", "vgg11_bn", "--img-size", "32", "--small-input")
    assert rc == 0 and "no small-input variant" in out


def test_bad_arguments_give_one_error_line(capsys) -> None:
    for argv in (["--pattern", "no_such_model*"], ["--img-size", "0"], ["--num-classes", "0"]):
        rc, out, err = run(capsys, "list", *argv)
        assert rc == 2 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1


def test_module_entry_point() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.models", "list", "--pattern", "resnet18", "--img-size", "224"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "11,689,512" in proc.stdout and "1.814" in proc.stdout


def test_names_only_builds_nothing(capsys, monkeypatch) -> None:
    import pipeline.models.__main__ as cli

    def no_build(*a, **k):
        raise AssertionError("--names must not build a model")

    monkeypatch.setattr(cli, "profile_model", no_build)
    rc, out, err = run(capsys, "list", "--names", "--pattern", "van_b?,resnet18")
    assert rc == 0 and out.split() == ["resnet18", "van_b0", "van_b1"] and err == ""


def test_progress_only_on_a_terminal(capsys, monkeypatch) -> None:
    rc, _, err = run(capsys, "list", "--pattern", "resnet18", "--img-size", "32")
    assert rc == 0 and err == ""  # captured stderr is not a terminal: no progress line
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, "list", "--pattern", "resnet18,simple_cnn", "--img-size", "32")
    assert rc == 0 and "[1/2] resnet18" in err and "[2/2] simple_cnn" in err and err.endswith("\n")
