"""The competition's test set in prep: the three layouts, broken images kept in the order file,
one-line errors for bad id lists, solution labels, counts, fingerprint, packed cache."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from common.errors import DataError
from data_prep.competition import read_competition_images


def comp_id(i: int) -> str:
    """16-hex-like ids spread over a few a/b/c folders."""
    return f"{i % 3:x}{i % 2:x}f{i:013x}"


def make_glr2020(root: Path, n: int = 6, size: int = 24, order: list[int] | None = None) -> list[str]:
    """``sample_submission.csv`` (in ``order``) + ``test/a/b/c/<id>.jpg``; returns the ids in csv order."""
    ids = [comp_id(i) for i in (order if order is not None else range(n))]
    for k, image_id in enumerate(ids):
        p = root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size + k, size), (k * 40 % 256, 90, 200)).save(p, "JPEG")
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "landmarks": ""}).to_csv(root / "sample_submission.csv", index=False)
    return ids


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- read_competition_images (used without prep by the offline bundle) ------------------------


def test_glr2020_order_and_paths(tmp_path):
    ids = make_glr2020(tmp_path, order=[4, 1, 5, 0, 3, 2])
    (tmp_path / "test" / ids[2][0] / ids[2][1] / ids[2][2] / f"{ids[2]}.jpg").unlink()  # listed even when absent
    df = read_competition_images(tmp_path)
    assert list(df.columns) == ["id", "src"]
    assert df["id"].tolist() == ids  # sample_submission order, not sorted
    for image_id, src in zip(df["id"], df["src"]):
        assert Path(src) == tmp_path / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    assert not Path(df["src"][2]).exists()


def test_glr2019_test_csv(tmp_path):
    write(tmp_path / "test.csv", "id,url\nabc0000000000001,http://x/1.jpg\n0ff0000000000002,None\n")
    df = read_competition_images(tmp_path)  # auto: glr2019
    assert df["id"].tolist() == ["abc0000000000001", "0ff0000000000002"]
    assert Path(df["src"][1]) == tmp_path / "test" / "0" / "f" / "f" / "0ff0000000000002.jpg"
    assert read_competition_images(tmp_path, "glr2019").equals(df)


def test_plain_folder_recursive_stems(tmp_path):
    for rel in ("b/x2.png", "a/x1.jpg", "a/deeper/x3.JPEG", ".hidden/x9.jpg"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p, "PNG" if rel.endswith("png") else "JPEG")
    write(tmp_path / "notes.txt", "not an image")
    df = read_competition_images(tmp_path)
    assert df["id"].tolist() == ["x3", "x1", "x2"]  # sorted relative paths: a/deeper/.., a/x1, b/x2
    assert Path(df["src"][2]) == tmp_path / "b" / "x2.png"


def test_folder_stem_clash_names_both_files(tmp_path):
    for rel in ("a/same.jpg", "b/same.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p)
    with pytest.raises(DataError, match=r"two images have the id 'same'.*a/same.jpg and .*b/same.png"):
        read_competition_images(tmp_path, "folder")


def test_duplicate_id_is_one_error_naming_file_and_line(tmp_path):
    write(tmp_path / "sample_submission.csv", "id,landmarks\nabc1,\nabd2,\nabc1,\n")
    with pytest.raises(DataError, match=r"sample_submission.csv: line 4: duplicate id 'abc1' \(first on line 2\)"):
        read_competition_images(tmp_path)


def test_missing_id_column_is_one_error(tmp_path):
    write(tmp_path / "sample_submission.csv", "image,landmarks\nabc1,\n")
    with pytest.raises(DataError, match=r"sample_submission.csv: missing column 'id'"):
        read_competition_images(tmp_path)


def test_bad_id_and_wrong_format_are_clear(tmp_path):
    write(tmp_path / "sample_submission.csv", "id,landmarks\nabc1,\n../x,\n")
    with pytest.raises(DataError, match=r"line 3: id '../x' is not a valid image id"):
        read_competition_images(tmp_path)
    with pytest.raises(DataError, match="test_format glr2019 needs test.csv"):
        read_competition_images(tmp_path, "glr2019")
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown test_format 'glr2012'.*glr2019"):
        read_competition_images(tmp_path, "glr2012")
    with pytest.raises(DataError, match="competition test folder not found"):
        read_competition_images(tmp_path / "nope")
