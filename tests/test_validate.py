"""The submission validator on good and bad files (one line per problem, file and line named)."""

import pytest

from common.errors import DataError
from pipeline.__main__ import main as cli
from pipeline.submit.validate import MAX_PER_KIND, check_cell, read_sample_ids, validate_submission

SAMPLE = "id,landmarks\nbbb,\naaa,\nccc,\n"  # prep's id rule: 3 or more of [0-9a-zA-Z_-]


@pytest.fixture()
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text(SAMPLE)
    return path


def _write(tmp_path, text, name="sub.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_file_passes_in_any_order(tmp_path, sample, capsys):
    path = _write(tmp_path, "id,landmarks\naaa,123 0.5\nccc,\nbbb,7 1.000000\n")
    problems, stats = validate_submission(path, read_sample_ids(sample))
    assert problems == [] and stats == {"rows": 3, "answers": 2, "empty": 1}
    assert cli(["validate", str(path), "--sample", str(sample)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("OK: 3 rows, 2 answers, 1 empty; every id of " + str(sample) + " exactly once")


def test_without_a_sample_only_the_file_is_checked(tmp_path):
    path = _write(tmp_path, "id,landmarks\nx,1 0.1\n\ny,\n")  # a blank line is skipped, as Kaggle does
    assert validate_submission(path) == ([], {"rows": 2, "answers": 1, "empty": 1})


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("12 0.5", None),
        ("  12 0.5 ", None),
        ("12 1e-3", None),
        ("abc 0.5", "is not '<landmark_id> <confidence>'"),
        ("12", "is not '<landmark_id> <confidence>'"),
        ("-4 0.5", "is not '<landmark_id> <confidence>'"),
        ("12 x", "confidence 'x' is not a number"),
        ("12 nan", "confidence 'nan' is not finite"),
        ("12 inf", "confidence 'inf' is not finite"),
        ("12 0.5 13 0.4", "has 4 tokens; expected one prediction"),
    ],
)
def test_landmarks_cells(cell, problem):
    got = check_cell(cell)
    assert got is None if problem is None else problem in got


def test_every_problem_is_one_line_with_file_and_line(tmp_path, sample, capsys):
    text = "id,landmarks\naaa,12 0.5\naaa,13 0.4\nzzz,1 0.2\nccc,12 nan\nddd,1,2\n"
    path = _write(tmp_path, text)
    problems, _ = validate_submission(path, read_sample_ids(sample))
    name = str(path)
    assert problems == [
        f"{name}:3: id 'aaa' appears again (first on line 2)",
        f"{name}:5: confidence 'nan' is not finite",
        f"{name}:6: 3 fields, expected 2 (id,landmarks)",
        f"{name}:4: id 'zzz' is not in the sample submission",
        f"{name}: id 'bbb' of the sample submission (line 2) is missing",
    ]
    assert cli(["validate", str(path), "--sample", str(sample)]) == 1
    assert capsys.readouterr().out.splitlines() == problems


@pytest.mark.parametrize(
    "text, problem",
    [
        ("id,landmark\na,\n", ":1: header must be exactly 'id,landmarks', got 'id,landmark'"),
        ("\ufeffid,landmarks\na,\n", "(it starts with a byte-order mark)"),
        ("landmarks,id\na,\n", "got 'landmarks,id'"),
        ("", ": empty file"),
    ],
)
def test_header_problems(tmp_path, text, problem):
    problems, _ = validate_submission(_write(tmp_path, text))
    assert len(problems) == 1 and problem in problems[0]


def test_missing_file_and_not_utf8(tmp_path):
    assert validate_submission(tmp_path / "nope.csv")[0] == [f"{tmp_path / 'nope.csv'}: file not found"]
    path = tmp_path / "latin.csv"
    path.write_bytes(b"id,landmarks\n\xe9,\n")
    assert "not UTF-8 text" in validate_submission(path)[0][0]


def test_many_problems_of_a_kind_are_capped(tmp_path):
    ids = [f"id{k}" for k in range(MAX_PER_KIND + 10)]
    sample = _write(tmp_path, "id,landmarks\n" + "".join(f"{i},\n" for i in ids), "sample.csv")
    path = _write(tmp_path, "id,landmarks\n")
    problems, _ = validate_submission(path, read_sample_ids(sample))
    assert len(problems) == MAX_PER_KIND + 1
    assert problems[-1] == f"{path}: ... and 10 more (missing)"


def test_a_sample_without_ids_is_one_error(tmp_path):
    with pytest.raises(DataError, match="missing column 'id'"):
        read_sample_ids(_write(tmp_path, "key,landmarks\na,\n", "s.csv"))
    with pytest.raises(DataError, match="sample submission not found"):
        read_sample_ids(tmp_path / "absent.csv")
