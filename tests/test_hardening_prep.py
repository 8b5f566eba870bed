"""A run that says DONE is right, or it does not say DONE: the data-prep side of the hardening issue.

Each test reproduces a case that used to give wrong output silently (or a traceback) on a tiny
data set and checks the behaviour now: exact landmark ids, a cache that ``verify`` (and a
rerun of prep) repairs, a cache keyed on content rather than paths, workers and temporary
files that do not outlive a killed prep, one-line errors, and one prep per dataset folder.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import schema
from common.errors import ConfigError, DataError, PipelineError
from common.ints import int64_column
from data_prep.images import CACHE_DIR, SOURCES_LEDGER, check_cached_file
from data_prep.packed import open_packed
from data_prep.prep import run_prep
from data_prep.readers import gld_image_path, read_gld_csv, read_gld_v2
from data_prep.verify import VERIFY_REPORT, check_cache, manifest_names, run_verify
from tests.conftest import gld_prep_config, tiny_prep_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"}
BIG = 2**62 + 1  # float64 rounds it (and BIG + 1) to 2**62: two landmarks would merge into one class


def make_gld(root: Path, landmarks=(BIG, BIG + 1, 7), per_class: int = 4, size: int = 24) -> pd.DataFrame:
    """``per_class`` images of each landmark id in the GLD v2 layout; train.csv written as text."""
    rows = []
    for k, lid in enumerate(landmarks):
        for i in range(per_class):
            image_id = f"{k:x}{i:x}e{k * 16 + i:013x}"
            rows.append((image_id, f"http://x/{image_id}.jpg", lid))
            p = gld_image_path(root, image_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size + 4 * i, size), (60 * k % 256, 30 * i, 120)).save(p, "JPEG")
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},{u},{lid}\n" for i, u, lid in rows))
    return pd.DataFrame(rows, columns=["id", "url", "landmark_id"])


def make_test_folder(root: Path, ids: list[str], size: int = 20) -> None:
    """A GLR 2020 test folder (sample_submission.csv + test/a/b/c/<id>.jpg)."""
    for k, image_id in enumerate(ids):
        p = root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size + k, size), (200, 20 * k % 256, 40)).save(p, "JPEG")
    (root / "sample_submission.csv").write_text("id,landmarks\n" + "".join(f"{i},\n" for i in ids))


def make_nonlandmark(folder: Path, n: int) -> None:
    for i in range(n):
        p = folder / f"part{i % 2}" / f"nl{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (22, 26), (10 * i % 256, 180, 30)).save(p, "JPEG")


def cfg(tmp_path: Path, **kw):
    return gld_prep_config(tmp_path, **{"dataset": "h", "test_frac": 0.25, "val_frac": 0.25, **kw})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cache_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / CACHE_DIR).rglob("*") if p.suffix in (".jpg", ".png")}


@pytest.fixture()
def own_tiny(tiny_data, tmp_path):
    """A private copy of the tiny default (raw generated set, prep with a packed cache): tests damage it."""
    shutil.copytree(tiny_data["data_root"], tmp_path / "data", symlinks=True)
    c = tiny_prep_config(tmp_path / "data", packed=True)
    run_prep(c, progress=False)  # adds the packed cache; every image is reused
    return c, tmp_path / "data" / "tiny"


# ---- 1. landmark ids are exact integers end to end ------------------------------------------------


def test_huge_landmark_ids_survive_exactly_to_label_map_manifests_and_solution(tmp_path):
    make_gld(tmp_path / "raw")
    write(tmp_path / "raw" / "landmark_names.csv", f"landmark_id,name\n{BIG},big one\n{BIG + 1},big two\n7,small\n")
    comp = tmp_path / "comp"
    ids = ["c0e0000000000001", "c1e0000000000002", "c2e0000000000003"]
    make_test_folder(comp, ids)
    write(comp / "solution.csv", f"id,landmarks,Usage\n{ids[0]},{BIG + 1},Public\n{ids[1]},{BIG + 7},Private\n")
    run_prep(cfg(tmp_path, test_root=str(comp)), progress=False)
    out = tmp_path / "data" / "h"
    text = (out / schema.LABEL_MAP).read_text()
    assert f",{BIG}," in text and f",{BIG + 1}," in text  # written as exact digits, not 4.611686018427388e+18
    lm = schema.read_label_map(out)
    assert lm["landmark_id"].tolist() == [7, BIG, BIG + 1] and lm["landmark_id"].dtype == "int64"
    assert lm["name"].tolist() == ["small", "big one", "big two"]
    assert lm["count"].tolist() == [4, 4, 4]  # two huge neighbours stay two classes
    train = pd.concat(schema.read_manifest(out, s) for s in schema.SPLITS)
    label_of = dict(zip(lm["landmark_id"], lm["label"]))
    assert set(train["landmark_id"]) == {7, BIG, BIG + 1}
    assert (train["label"] == train["landmark_id"].map(label_of)).all()
    m = schema.read_manifest(out, schema.COMPETITION).set_index("id")
    assert (m.loc[ids[0], "label"], m.loc[ids[0], "landmark_id"]) == (label_of[BIG + 1], BIG + 1)
    assert (m.loc[ids[1], "label"], m.loc[ids[1], "landmark_id"]) == (schema.OTHER_LANDMARK, BIG + 7)


@pytest.mark.parametrize(
    "value, match",
    [
        (str(2**64), r"line 3: landmark_id '18446744073709551616' does not fit in a 64-bit integer"),
        (str(2**63), r"line 3: landmark_id '9223372036854775808' does not fit in a 64-bit integer"),
        ("", r"line 3: landmark_id is empty"),  # pandas would read the whole column as float64
        ("4.611686018427388e18", r"line 3: landmark_id '4.611686018427388e18' is not an integer"),
        ("12.5", r"line 3: landmark_id '12.5' is not an integer"),
    ],
)
def test_landmark_ids_that_are_not_exact_int64_are_one_line(tmp_path, value, match):
    p = write(tmp_path / "train.csv", f"id,url,landmark_id\nabc1,u,{BIG}\nabc2,u,{value}\nabc3,u,{BIG + 1}\n")
    with pytest.raises(DataError, match=r"train.csv: " + match):
        read_gld_csv(p)
    write(tmp_path / "train_clean.csv", f"landmark_id,images\n{BIG},abc1\n{value},abc2\n")
    with pytest.raises(DataError, match=r"train_clean.csv: " + match):
        read_gld_v2(tmp_path, "clean")


def test_exact_ints_in_manifests_label_maps_and_solutions(tmp_path):
    from data_prep.competition import read_solution

    # an id that pandas would read as NaN stays text; huge ids stay exact even beside -1
    cols = "id,image,label,landmark_id\n"
    write(tmp_path / "test.csv", cols + f"NA,images/x.jpg,0,{BIG}\nnull,images/y.jpg,-1,-1\n")
    m = schema.read_manifest(tmp_path, "test")
    assert m["id"].tolist() == ["NA", "null"] and m["landmark_id"].tolist() == [BIG, -1]
    write(tmp_path / "val.csv", cols + f"a,images/a.jpg,0,{BIG}\nb,images/b.jpg,0,\n")
    with pytest.raises(DataError, match=r"val.csv: line 3: landmark_id is empty"):
        schema.read_manifest(tmp_path, "val")
    write(tmp_path / "train.csv", cols + f"a,images/a.jpg,0,{2**64}\n")
    with pytest.raises(DataError, match=r"train.csv: line 2: landmark_id '18446744073709551616' does not fit"):
        schema.read_manifest(tmp_path, "train")
    write(tmp_path / schema.LABEL_MAP, f"label,landmark_id,name,count\n0,{BIG},a,3\n1,{BIG},b,2\n")
    with pytest.raises(DataError, match=rf"label_map.csv: line 3: landmark_id {BIG} appears twice \(first on line 2\)"):
        schema.read_label_map(tmp_path)
    write(tmp_path / "sol.csv", f"id,landmarks\nabc,{BIG} 5\nabd,{2**64}\n")
    with pytest.raises(DataError, match=r"sol.csv: line 3: landmarks '18446744073709551616': .* 64-bit"):
        read_solution(tmp_path / "sol.csv")
    write(tmp_path / "sol.csv", f"id,landmarks\nabc,{BIG} 5\n")
    assert read_solution(tmp_path / "sol.csv")["landmarks"].tolist() == [[BIG, 5]]
    # the fast path and the exact slow path agree (5.0 is what a float column writes)
    s = pd.Series([str(BIG), " 12 ", "5.0", "-3"], dtype=object)
    assert int64_column(s, "f.csv", "x").tolist() == [BIG, 12, 5, -3]


# ---- 2. a damaged cache: verify re-encodes it; prep's rerun does too ------------------------------


def _damage(out: Path, manifest: str, n: int, how: str) -> list[tuple[str, Path, bytes]]:
    """Damage the cached files of the first ``n`` rows of ``manifest``; (id, path, good bytes)."""
    rows = schema.read_manifest(out, manifest).head(n)
    done = []
    for image_id, rel in zip(rows["id"], rows["image"]):
        p = out / rel
        good = p.read_bytes()
        if how == "empty":
            p.write_bytes(b"")
        elif how == "truncated":
            p.write_bytes(good[: len(good) // 2])
        elif how == "garbage":
            p.write_bytes(b"\xff\xd8\xff" + os.urandom(200) + b"\xff\xd9")
        elif how == "tables":  # a damaged Huffman table: header and end marker intact, decoding fails
            bad = bytearray(good)
            at = good.find(b"\xff\xc4") + 5
            bad[at : at + 16] = b"\xff" * 16
            p.write_bytes(bytes(bad))
        done.append((image_id, p, good))
    return done


def test_verify_reencodes_damaged_cached_images_and_patches_the_packed_rows(own_tiny):
    c, out = own_tiny
    damaged = (
        _damage(out, "train", 2, "empty")
        + _damage(out, "test", 1, "truncated")
        + _damage(out, schema.COMPETITION, 1, "garbage")
        + _damage(out, "val", 1, "tables")
    )
    arr, ids = open_packed(out, c.image_size)
    row = ids.index(schema.read_manifest(out, "train")["id"].iloc[2])  # its cached file is sound
    with open(out / f"packed_{c.image_size}.u8", "r+b") as f:  # a damaged packed row (bit rot)
        f.seek(row * arr[0].size)
        f.write(b"\x00" * arr[0].size)
    del arr
    names = manifest_names(out)
    shallow = check_cache(out, names)
    assert {i for _, i, _ in shallow} == {i for i, _, _ in damaged[:4]}  # tables damage needs a decode
    assert ("train", damaged[0][0], "empty file (0 bytes)") in shallow
    deep = check_cache(out, names, deep=True)
    assert {i for _, i, _ in deep} == {i for i, _, _ in damaged}
    assert check_cache(out, names, "packed") == []  # index and ids fine: only a deep look sees the row
    deep_packed = check_cache(out, ["train"], "packed", deep=True)
    assert ("train", ids[row], "packed row differs from its cached file") in deep_packed
    p = subprocess.run(
        [sys.executable, "-m", "data_prep", "verify", f"data_root={c.data_root}", *_tiny_args()],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "5 damaged: 5 re-encoded, 0 could not be fixed" in p.stderr
    for _image_id, path, good in damaged:
        assert path.read_bytes() == good  # the same decode, resize and encode as prep: the same bytes
    report = json.loads((out / VERIFY_REPORT).read_text())
    assert report["ok"] and len(report["fixed"]) == 5 and not report["unfixed"]
    assert check_cache(out, names, deep=True) == [] and check_cache(out, names, "packed", True) == []
    assert run_prep(c, progress=False)["fingerprint"] == schema.prep_fingerprint(out)  # still up to date


def test_verify_says_what_it_cannot_fix_and_exits_1(own_tiny):
    c, out = own_tiny
    (image_id, path, _), *_ = _damage(out, "train", 1, "garbage")
    raw = Path(c.data_root) / "raw" / "tiny"
    gld_image_path(raw, image_id).unlink()  # the source is gone too
    p = subprocess.run(
        [sys.executable, "-m", "data_prep", "verify", f"data_root={c.data_root}", *_tiny_args()],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1
    assert f"could not fix {image_id}: its source cannot be read: missing_image" in p.stderr
    report = json.loads((out / VERIFY_REPORT).read_text())
    assert not report["ok"] and list(report["unfixed"]) == [image_id]
    assert not path.exists()  # the garbage is not left behind to be trusted
    assert check_cache(out, ["train"]) == [("train", image_id, "missing")]


def test_an_up_to_date_prep_and_a_forced_one_reencode_damaged_files(own_tiny, caplog):
    c, out = own_tiny
    damaged = _damage(out, "train", 1, "empty") + _damage(out, schema.NONLANDMARK, 1, "truncated")
    with caplog.at_level(logging.INFO, logger="data_prep"):
        run_prep(c, progress=False)  # up to date: used to be a no-op that kept the broken files
    assert "is up to date" in caplog.text
    assert "re-encoded 2 damaged cached images (2 packed rows rewritten)" in caplog.text
    assert all(p.read_bytes() == good for _, p, good in damaged)
    damaged = _damage(out, "train", 2, "empty")
    (out / schema.PREP_REPORT).unlink()  # a forced prep: used to keep 0-byte files as "cached"
    report = run_prep(c, progress=False)
    assert report["cache"]["reencoded"] == {"damaged cached file (empty file)": 2}
    assert all(p.read_bytes() == good for _, p, good in damaged)


def _tiny_args() -> list[str]:
    from tests.conftest import TINY_PREP

    return [f"{k}={v}" for k, v in TINY_PREP.items()] + ["packed=true"]


# ---- 3. the cache follows content, not paths -------------------------------------------------------


def test_prep_through_a_symlinked_or_copied_source_reencodes_nothing(tmp_path, caplog):
    make_gld(tmp_path / "raw")
    make_test_folder(tmp_path / "raw" / "comp", ["c0e0000000000001", "c1e0000000000002"])
    make_nonlandmark(tmp_path / "raw" / "nl", 6)
    roots = dict(source_root="raw", test_root="raw/comp", nonlandmark_root="raw/nl")

    def prep(base: str, **kw):
        paths = {k: str(tmp_path / v.replace("raw", base, 1)) for k, v in roots.items()}
        return run_prep(cfg(tmp_path, **paths, **kw), progress=False)

    first = prep("raw")
    out = tmp_path / "data" / "h"
    before = cache_files(out)
    (tmp_path / "link").symlink_to(tmp_path / "raw")  # another path to the same files (a new mount alike)
    with caplog.at_level(logging.INFO, logger="data_prep"):
        again = prep("link")
    assert again["fingerprint"] == first["fingerprint"] and "is up to date" in caplog.text
    assert cache_files(out) == before
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_prep"):
        changed = prep("link", top_k=2)  # a real change: prep reruns, says why, re-encodes nothing
    assert "runs: config changed: top_k 10 -> 2" in caplog.text and "rebuilt from scratch" not in caplog.text
    assert changed["cache"]["encoded"] == 0 and changed["cache"]["reencoded"] == {}
    shutil.copytree(tmp_path / "raw", tmp_path / "copy")  # copy2 keeps sizes and mtimes (cp -a, rsync -a)
    copied = prep("copy", top_k=2)
    assert copied["fingerprint"] == changed["fingerprint"] and cache_files(out) == before
    time.sleep(0.01)
    shutil.copytree(tmp_path / "raw", tmp_path / "new", copy_function=shutil.copyfile)  # cp -r: new mtimes
    assert prep("new", top_k=2)["fingerprint"] == changed["fingerprint"]  # the same content: up to date
    recopied = prep("new", top_k=3)  # a rerun over the copy: told from replaced files by content samples
    assert recopied["cache"]["encoded"] == 0 and cache_files(out) == before
    # a file replaced under the same id is re-encoded, and the log says why
    src = gld_image_path(tmp_path / "new", pd.read_csv(tmp_path / "raw" / "train.csv", dtype=str)["id"][0])
    Image.new("RGB", (40, 30), (255, 0, 0)).save(src, "JPEG")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_prep"):
        replaced = prep("new", top_k=3)
    assert "runs: the selected images changed (files' sizes)" in caplog.text
    assert replaced["cache"]["reencoded"] == {"source changed (size or content)": 1}
    assert "re-encoded 1 cached images: 1 source changed (size or content)" in caplog.text
    assert (out / CACHE_DIR / SOURCES_LEDGER).is_file()


def test_a_settings_change_says_why_the_cache_is_rebuilt(tmp_path, caplog):
    make_gld(tmp_path / "raw")
    run_prep(cfg(tmp_path), progress=False)
    with caplog.at_level(logging.INFO, logger="data_prep"):
        r = run_prep(cfg(tmp_path, image_size=20), progress=False)
    assert "rebuilt from scratch: the cached images have other settings: size 16 -> 20" in caplog.text
    assert "runs: config changed: image_size 16 -> 20" in caplog.text and r["cache"]["reused"] == 0


# ---- 4. killed prep: no orphaned workers, no stale temporary files ----------------------------------

_SLOW_GENERATION = """
import sys, time
import data_prep.synthetic as synthetic
_render = synthetic.render_photo
def slow(*a, **k):
    time.sleep(0.05)
    return _render(*a, **k)
synthetic.render_photo = slow
from common.cli import run_main
from data_prep.__main__ import main
sys.exit(run_main(main, sys.argv[1:]))
"""


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [k for k in kids if k not in found]
            found.update(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (whoever adopted it reaps it later)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux")
def test_a_killed_prep_leaves_no_workers_and_the_next_run_no_temp_files(tmp_path):
    from data_prep.config import PrepConfig

    data = tmp_path / "data"
    over = dict(dataset="k", synth_classes=6, synth_max_per_class=30, synth_min_per_class=4, synth_image_size=40,
                top_k=4, sample_ratio=1.0, test_frac=0.25, image_size=24, workers=2)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_GENERATION, "prep", f"data_root={data}", *[f"{k}={v}" for k, v in over.items()]],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    raw = data / "raw" / "k"
    workers: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(raw.glob("train/*/*/*/*.jpg"))) < 10:
            assert proc.poll() is None, "prep finished before it could be killed"
            workers |= _descendants(proc.pid)
            time.sleep(0.02)
        workers |= _descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(workers) >= 2  # the render pool
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "render workers outlived the killed prep"
    # what killed writes leave: temporary files beside the raw images and in the image cache
    leaf = next(raw.glob("train/*/*/*"))
    (leaf / ".0123456789abcdef.jpg.a1b2c3.tmp").write_bytes(b"\xff\xd8half")
    (data / "k" / CACHE_DIR / "ab").mkdir(parents=True, exist_ok=True)
    (data / "k" / CACHE_DIR / "ab" / ".x.jpg.99.1.tmp").write_bytes(b"half")
    report = run_prep(PrepConfig(data_root=str(data), **over), progress=False)
    assert report["rows_kept"] > 0
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp")]


# ---- 5. one line instead of a traceback -----------------------------------------------------------


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    make_gld(tmp_path / "raw")
    (tmp_path / "afile").write_text("not a folder")
    p = subprocess.run(
        [sys.executable, "-m", "data_prep", "prep", "source=gld_v2", f"source_root={tmp_path / 'raw'}",
         f"data_root={tmp_path / 'afile' / 'data'}", "image_size=16", "workers=1"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: prep: {tmp_path / 'afile' / 'data'}")


class _FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() fails: no file name


@pytest.mark.parametrize("where", ["image cache", "manifest"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, where):
    import builtins

    import common.io
    import data_prep.images

    make_gld(tmp_path / "raw")
    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        name = os.path.basename(str(file))
        hit = name.startswith(".") and name.endswith(".tmp") and "w" in mode
        if hit and (where == "image cache" and ".jpg." in name or where == "manifest" and ".train.csv." in name):
            real_open(file, mode, *a, **k).close()
            return _FullDisk()
        return real_open(file, mode, *a, **k)

    target = data_prep.images if where == "image cache" else common.io
    monkeypatch.setattr(target, "open", full_open, raising=False)
    name = r"images/[0-9a-f]{2}/\w+\.jpg" if where == "image cache" else r"train\.csv"
    with pytest.raises(PipelineError, match=rf"^prep: \S*{name}: No space left on device \(disk full: free some"):
        run_prep(cfg(tmp_path), progress=False)
    out = tmp_path / "data" / "h"
    assert not (out / schema.PREP_REPORT).exists() and not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("content", [b"\x00\x01\xfe\xff" * 50, b'id,url,landmark_id\n"abc,u\n', b"\xff\xfe\x00"])
def test_corrupt_csvs_are_one_line(tmp_path, content):
    (tmp_path / "train.csv").write_bytes(content)
    with pytest.raises(DataError, match=r"train.csv: "):
        read_gld_csv(tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"train.csv: "):
        schema.read_manifest(tmp_path, "train")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "train.csv").mkdir()  # a folder where a file should be
    with pytest.raises(DataError, match=r"not found"):
        schema.read_manifest(tmp_path / "x", "train")


def test_no_internal_test_split_is_refused_in_prep(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "data_prep", "prep", "test_frac=0", f"data_root={tmp_path}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: prep: test_frac=0 leaves no internal test split, which training evaluates after the last epoch "
        "(and the ensemble scores); use test_frac > 0, e.g. 0.1"
    ]
    assert not (tmp_path / "raw").exists()  # refused before generating anything
    cfg(tmp_path, source="cifar10", test_frac=0.0).validate()  # CIFAR: its own test set is the split
    make_gld(tmp_path / "raw", per_class=2)
    with pytest.raises(DataError, match=r"test split of h is empty \(test_frac=0.1 of at most 2 images per class"):
        run_prep(cfg(tmp_path, test_frac=0.1, val_frac=0.1), progress=False)
    with pytest.raises(ConfigError):
        cfg(tmp_path, test_frac=0.0).validate()


# ---- 6. one prep per dataset folder -----------------------------------------------------------------


def test_a_second_prep_on_the_same_folder_is_refused_and_a_dead_one_is_not(tmp_path):
    make_gld(tmp_path / "raw")
    out = tmp_path / "data" / "h"
    holder = subprocess.Popen(
        [sys.executable, "-c", "from common.lock import folder_lock\nimport time\n"
         f"with folder_lock({str(out)!r}, 'prep'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=rf"h is in use by pid {holder.pid} on \S+ since \d{{4}}-.*\(prep\)"):
            run_prep(cfg(tmp_path), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused prep
        p = subprocess.run(
            [sys.executable, "-m", "data_prep", "prep", "source=gld_v2", f"source_root={tmp_path / 'raw'}",
             f"data_root={tmp_path / 'data'}", "dataset=h"],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
        assert p.stderr.startswith(f"error: {out} is in use by pid {holder.pid}")
    finally:
        holder.kill()  # as kill -9: the lock goes with the process
        holder.wait()
    assert run_prep(cfg(tmp_path), progress=False)["rows_kept"] == 12
    assert check_cached_file(out / schema.read_manifest(out, "train")["image"].iloc[0], "jpeg", 16) is None


def test_verify_without_a_prep_and_unknown_cache_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no finished prep to verify"):
        run_verify(cfg(tmp_path))
    with pytest.raises(ConfigError, match="unknown cache 'jpg'"):
        check_cache(tmp_path, ["train"], cache="jpg")


def test_pixels_of_a_png_cache_are_checked_too(tmp_path):
    rng = np.random.default_rng(0)
    from data_prep.images import build_cache

    arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    done, _ = build_cache([("p0", "x")], tmp_path, lambda _s: Image.fromarray(arr), 8, fmt="png", progress=False)
    path = tmp_path / done["p0"]
    assert check_cached_file(path, "png", 8) is None
    assert check_cached_file(path, "jpeg", 8) == "PNG file, expected JPEG"
    assert check_cached_file(path, "png", 16) == "8x8 pixels, expected 16x16"
    path.write_bytes(path.read_bytes()[:-8])
    assert check_cached_file(path, "png", 8) == "truncated (no end-of-image marker)"
