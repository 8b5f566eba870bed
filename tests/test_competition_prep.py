"""The competition's test set in prep: the three layouts, broken images kept in the order file,
one-line errors for bad id lists, solution labels, counts, fingerprint, packed cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import schema
from common.errors import DataError
from data_prep.competition import read_competition_images
from data_prep.prep import run_prep
from data_prep.readers import gld_image_path
from tests.conftest import gld_prep_config


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


# ---- prep with a competition test set -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TRAIN_LANDMARKS = (10, 20, 30)  # landmark ids of the tiny training tree (all kept by top_k)


def make_train(root: Path, per_class: int = 6) -> None:
    """A GLD v2 training tree: ``per_class`` images of each of TRAIN_LANDMARKS."""
    rows = []
    for k, lid in enumerate(TRAIN_LANDMARKS):
        for i in range(per_class):
            image_id = f"{k:x}{i:x}e{k * 16 + i:013x}"
            rows.append((image_id, "u", lid))
            p = gld_image_path(root, image_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30 + i, 28), (60 * k, 20 * i, 120)).save(p, "JPEG")
    pd.DataFrame(rows, columns=["id", "url", "landmark_id"]).to_csv(root / "train.csv", index=False)


def comp_cfg(tmp_path: Path, **over):
    if not (tmp_path / "raw" / "train.csv").is_file():
        make_train(tmp_path / "raw")
    return gld_prep_config(tmp_path, **{"dataset": "c", "test_root": str(tmp_path / "comp"), **over})


def image_of(test_root: Path, image_id: str) -> Path:
    return test_root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def test_broken_test_images_stay_in_the_order_file(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, order=[7, 2, 5, 0, 3, 6, 1, 4])
    image_of(comp, ids[1]).write_bytes(b"")  # 0-byte
    image_of(comp, ids[4]).write_bytes(image_of(comp, ids[4]).read_bytes()[:120])  # truncated
    image_of(comp, ids[6]).unlink()  # missing
    r = run_prep(comp_cfg(tmp_path), progress=False)  # exits normally
    out = tmp_path / "data" / "c"
    order = pd.read_csv(out / schema.COMPETITION_ORDER, dtype=str)
    assert order["id"].tolist() == ids  # sample_submission order, every id
    status = dict(zip(order["id"], order["status"]))
    assert status[ids[1]] == "empty_file" and status[ids[6]] == "missing_image"
    assert status[ids[4]] in ("truncated", "unreadable")
    assert [status[i] for i in ids if i not in (ids[1], ids[4], ids[6])] == ["ok"] * 5
    manifest = schema.read_manifest(out, schema.COMPETITION)
    assert manifest["id"].tolist() == [i for i in ids if status[i] == "ok"]  # readable, still in order
    assert (manifest["label"] == schema.UNLABELLED).all() and (manifest["landmark_id"] == -1).all()
    assert all((out / p).is_file() for p in manifest["image"])
    skipped = pd.read_csv(out / "skipped_competition.csv", dtype=str)
    assert sorted(skipped["id"]) == sorted([ids[1], ids[4], ids[6]])
    c = r["competition"]
    assert c["format"] == "glr2020" and c["labelled"] is False and c["ids"] == 8 and c["readable"] == 5
    assert c["ids"] == c["readable"] + sum(c["skipped"].values())
    assert c["skipped"]["empty_file"] == 1 and c["skipped"]["missing_image"] == 1
    assert c["labels"] == {"landmark": 0, "other_landmark": 0, "non_landmark": 0, "unlabelled": 5}
    assert r["nonlandmark"] is None  # no non-landmark folder: test.csv stays landmark-only
    assert (schema.read_manifest(out, "test")["label"] >= 0).all()


def test_competition_images_are_cached_like_training_images(tmp_path):
    comp = tmp_path / "comp"
    make_glr2020(comp, n=3, size=50)
    run_prep(comp_cfg(tmp_path, image_size=20, resize_mode="shorter"), progress=False)
    out = tmp_path / "data" / "c"
    for split in ("train", schema.COMPETITION):
        for rel in schema.read_manifest(out, split)["image"]:
            with Image.open(out / rel) as im:
                assert im.size == (20, 20) and im.mode == "RGB" and im.format == "JPEG"
                assert rel.startswith("images/")


def test_solution_labels(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=7)
    # class / class (first known of several) / other landmark / non-landmark / ignored / not in the solution
    (comp / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n"
        f"{ids[0]},20,Public\n"
        f"{ids[1]},999 30 10,Private\n"
        f"{ids[2]},555,Private\n"
        f"{ids[3]},,Public\n"
        f"{ids[4]},10,Ignored\n"
        f"{ids[6]},10,Private\n"
        "zzz0000000000000,10,Private\n"
    )
    r = run_prep(comp_cfg(tmp_path), progress=False)
    out = tmp_path / "data" / "c"
    lm = schema.read_label_map(out)
    label_of = dict(zip(lm["landmark_id"], lm["label"]))
    m = schema.read_manifest(out, schema.COMPETITION).set_index("id")
    got = [(int(m.loc[i, "label"]), int(m.loc[i, "landmark_id"])) for i in ids]
    assert got == [
        (label_of[20], 20),
        (label_of[30], 30),
        (schema.OTHER_LANDMARK, 555),
        (schema.NON_LANDMARK, -1),
        (schema.UNLABELLED, -1),
        (schema.UNLABELLED, -1),
        (label_of[10], 10),
    ]
    c = r["competition"]
    assert c["labelled"] is True and c["solution"].endswith("recognition_solution_v2.1.csv")
    assert c["labels"] == {"landmark": 3, "other_landmark": 1, "non_landmark": 1, "unlabelled": 2}
    assert c["solution_rows_not_in_test_set"] == 1


def test_bad_solution_rows_name_the_line(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=2)
    sol = write(tmp_path / "sol.csv", f"id,landmarks,Usage\n{ids[0]},12,Public\n{ids[1]},x7,Public\n")
    with pytest.raises(DataError, match=r"sol.csv: line 3: landmarks 'x7' are not integer"):
        run_prep(comp_cfg(tmp_path, solution_csv=str(sol)), progress=False)
    write(sol, f"id,landmarks\n{ids[0]},12\n{ids[0]},13\n")
    with pytest.raises(DataError, match=r"sol.csv: line 3: duplicate id"):
        run_prep(comp_cfg(tmp_path, solution_csv=str(sol)), progress=False)
    with pytest.raises(DataError, match="solution csv not found"):
        run_prep(comp_cfg(tmp_path, solution_csv=str(tmp_path / "nope.csv")), progress=False)


def test_duplicate_id_is_one_error_line_at_the_cli(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=3)
    write(comp / "sample_submission.csv", f"id,landmarks\n{ids[0]},\n{ids[1]},\n{ids[0]},\n")
    make_train(tmp_path / "raw")
    args = ["source=gld_v2", f"source_root={tmp_path / 'raw'}", f"data_root={tmp_path / 'data'}", "dataset=c"]
    p = subprocess.run(
        [sys.executable, "-m", "data_prep", "prep", *args, f"test_root={comp}", "image_size=16", "workers=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "sample_submission.csv: line 4: duplicate id" in lines[-1]
    assert "Traceback" not in p.stderr


def test_glr2019_and_plain_folder_through_prep(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=4)
    (comp / "sample_submission.csv").unlink()
    write(comp / "test.csv", "id,url\n" + "".join(f"{i},http://x/{i}.jpg\n" for i in reversed(ids)))
    r = run_prep(comp_cfg(tmp_path), progress=False)
    out = tmp_path / "data" / "c"
    assert r["competition"]["format"] == "glr2019"
    assert pd.read_csv(out / schema.COMPETITION_ORDER, dtype=str)["id"].tolist() == ids[::-1]
    folder = tmp_path / "photos"
    for name in ("b/q2.png", "a/q1.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (1, 2, 3)).save(folder / name)
    r = run_prep(comp_cfg(tmp_path, test_root=str(folder)), progress=False)
    assert r["competition"]["format"] == "folder" and r["competition"]["readable"] == 2
    assert schema.read_manifest(out, schema.COMPETITION)["id"].tolist() == ["q1", "q2"]


def test_rerun_is_a_noop_and_a_changed_test_folder_reruns(tmp_path):
    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=4)
    cfg = comp_cfg(tmp_path)
    first = run_prep(cfg, progress=False)
    out = tmp_path / "data" / "c"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = run_prep(cfg, progress=False)
    assert again["fingerprint"] == first["fingerprint"]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing rewritten (.lock names the running prep)
    # a replaced image under the same id: prep reruns and the cached copy follows the new file
    rel = schema.read_manifest(out, schema.COMPETITION).set_index("id").loc[ids[2], "image"]
    Image.new("RGB", (30, 30), (255, 0, 0)).save(image_of(comp, ids[2]), "JPEG")
    changed = run_prep(cfg, progress=False)
    assert changed["test_fingerprint"] != first["test_fingerprint"]  # the test set has its own identity:
    assert changed["fingerprint"] == first["fingerprint"]  # the training one (and every run) stays
    with Image.open(out / rel) as im:
        assert im.getpixel((8, 8))[0] > 200 and im.getpixel((8, 8))[1] < 60  # red now
    # one more test image: the manifest and order file grow
    new = comp_id(40)
    image_of(comp, new).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 30)).save(image_of(comp, new), "JPEG")
    write(comp / "sample_submission.csv", "id,landmarks\n" + "".join(f"{i},\n" for i in [*ids, new]))
    grown = run_prep(cfg, progress=False)
    assert grown["competition"]["ids"] == 5 and grown["test_fingerprint"] != changed["test_fingerprint"]
    # the test set dropped from the config: its old outputs go, nothing stale is left to trust
    run_prep(comp_cfg(tmp_path, test_root=None), progress=False)
    assert not (out / "competition.csv").exists() and not (out / schema.COMPETITION_ORDER).exists()


def test_ids_must_be_unique_across_sets(tmp_path):
    comp = tmp_path / "comp"
    make_train(tmp_path / "raw")
    train_id = pd.read_csv(tmp_path / "raw" / "train.csv", dtype=str)["id"][0]
    image_of(comp, train_id).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20)).save(image_of(comp, train_id), "JPEG")
    write(comp / "sample_submission.csv", f"id,landmarks\n{train_id},\n")
    with pytest.raises(DataError, match=f"competition test image id '{train_id}'.*is also an image of GLD v2"):
        run_prep(comp_cfg(tmp_path), progress=False)


# ---- non-landmark folder and the packed cache ---------------------------------------------------


def make_nonlandmark(folder: Path, n: int) -> list[str]:
    ids = [f"nl{i:03d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        p = folder / f"part{i % 2}" / f"{image_id}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (26, 22), (10 * i % 256, 200, 30)).save(p, "JPEG")
    return ids


@pytest.mark.parametrize("share", [0.5, 0.75, 0.0])
def test_nonlandmark_share_of_test_and_pool(tmp_path, share):
    nl_ids = make_nonlandmark(tmp_path / "nl", 12)
    (tmp_path / "nl" / "part0" / "nl000.jpg").write_bytes(b"")  # unreadable: skipped, listed
    cfg = comp_cfg(tmp_path, test_root=None, nonlandmark_root=str(tmp_path / "nl"), nonlandmark_test_share=share)
    cfg.test_frac = 0.34  # 2 landmark test rows per class
    r = run_prep(cfg, progress=False)
    out = tmp_path / "data" / "c"
    test = schema.read_manifest(out, "test")
    n_lm = int((test["label"] >= 0).sum())
    n_nl = int((test["label"] == schema.NON_LANDMARK).sum())
    assert n_lm == 6 and n_nl == {0.5: 6, 0.75: 11, 0.0: 0}[share]  # 0.75 wants 18: all 11 readable go
    assert (test.loc[test["label"] < 0, "landmark_id"] == -1).all()
    pool = pd.read_csv(out / "nonlandmark.csv", dtype={"id": str})
    assert list(pool.columns) == schema.MANIFEST_COLUMNS and (pool["label"] == schema.NON_LANDMARK).all()
    assert set(pool["id"]) | set(test.loc[test["label"] < 0, "id"]) == set(nl_ids) - {"nl000"}
    assert not set(pool["id"]) & set(test["id"])
    for split in ("train", "val"):
        assert (schema.read_manifest(out, split)["label"] >= 0).all()  # folds are made over train: landmark-only
    nl = r["nonlandmark"]
    assert nl["images"] == 12 and nl["readable"] == 11 and nl["skipped"] == {"empty_file": 1}
    assert nl["test"] == n_nl and nl["pool"] == len(pool) and nl["test"] + nl["pool"] == nl["readable"]
    assert r["splits"]["test"] == len(test) and sum(r["splits"].values()) == r["rows_kept"] + nl["test"]
    assert pd.read_csv(out / "skipped_nonlandmark.csv", dtype=str)["id"].tolist() == ["nl000"]


def test_packed_cache_covers_every_manifest(tmp_path):
    from data_prep.packed import open_packed

    comp = tmp_path / "comp"
    ids = make_glr2020(comp, n=5)
    image_of(comp, ids[3]).write_bytes(b"")
    make_nonlandmark(tmp_path / "nl", 6)
    cfg = comp_cfg(tmp_path, nonlandmark_root=str(tmp_path / "nl"), packed=True, image_size=16)
    r = run_prep(cfg, progress=False)
    out = tmp_path / "data" / "c"
    names = [*schema.SPLITS, schema.COMPETITION, schema.NONLANDMARK]
    manifests = pd.concat([schema.read_manifest(out, s) for s in names], ignore_index=True)
    arr, packed_ids = open_packed(out, 16)
    assert packed_ids == manifests["id"].tolist() and r["packed"]["rows"] == len(manifests)
    assert ids[3] not in packed_ids  # the unreadable test image has no pixels, only its order-file row
    row = packed_ids.index(ids[0])
    rel = schema.read_manifest(out, schema.COMPETITION).set_index("id").loc[ids[0], "image"]
    with Image.open(out / rel) as im:
        assert (arr[row] == np.asarray(im.convert("RGB"))).all()  # the same pixels as the file cache


def test_bad_nonlandmark_and_solution_settings_are_clear(tmp_path):
    from common.errors import ConfigError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no image files found"):
        run_prep(comp_cfg(tmp_path, test_root=None, nonlandmark_root=str(tmp_path / "empty")), progress=False)
    with pytest.raises(DataError, match="image folder not found"):
        run_prep(comp_cfg(tmp_path, test_root=None, nonlandmark_root=str(tmp_path / "nope")), progress=False)
    with pytest.raises(ConfigError, match="solution_csv is set but test_root is not"):
        run_prep(comp_cfg(tmp_path, test_root=None, solution_csv=str(tmp_path / "s.csv")), progress=False)
    make_glr2020(tmp_path / "comp", n=2)
    make_nonlandmark(tmp_path / "nl", 2)
    dup = tmp_path / "nl" / f"{comp_id(1)}.jpg"
    Image.new("RGB", (8, 8)).save(dup, "JPEG")
    with pytest.raises(DataError, match=f"id '{comp_id(1)}' is both a competition test image"):
        run_prep(comp_cfg(tmp_path, nonlandmark_root=str(tmp_path / "nl")), progress=False)


def test_adding_the_test_set_after_training_keeps_every_run(tmp_path):
    """A competitor trains first and gets the test set later (or a new one for the private stage):
    prep with test_root then keeps the training fingerprint, a finished fold is skipped, not refused."""
    import dataclasses

    from pipeline.config import TrainConfig
    from pipeline.train.stage import fit

    cfg = comp_cfg(tmp_path, test_root=None)
    first = run_prep(cfg, progress=False)
    train = TrainConfig(dataset="c", data_root=str(tmp_path / "data"), folds_dir=str(tmp_path / "folds"),
                        runs_root=str(tmp_path / "runs"), experiment="t", models=["simple_cnn"], folds=[-1],
                        epochs=1, batch_size=8, img_size=32, progress=False)  # fmt: skip
    fit(train, "simple_cnn", -1)
    make_glr2020(tmp_path / "comp", n=4)
    later = run_prep(comp_cfg(tmp_path), progress=False)
    assert later["fingerprint"] == first["fingerprint"] and later["test_fingerprint"]
    summary = fit(dataclasses.replace(train), "simple_cnn", -1)  # skipped as finished, not refused
    assert summary["model"] == "simple_cnn"
