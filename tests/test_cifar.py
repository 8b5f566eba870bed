"""CIFAR-10/100 readers: the real CIFAR-10 sample, and generated files in the official format."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, DataError, PipelineError
from data_prep import cifar

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- generated files (official format)


def _dump(path: Path, obj: dict) -> Path:
    """Pickle like the official Python-2 files: protocol 2, bytes keys and bytes strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def _images(n: int, seed: int) -> np.ndarray:
    """N x 32 x 32 x 3 images whose R, G, B planes are constant and distinct per image."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return np.broadcast_to(rgb[:, None, None, :], (n, 32, 32, 3)).copy()


def _rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> the official channel-major rows (N x 3072: R plane, G plane, B plane)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def make_cifar10(root: Path, n_batches: int = 2, per_batch: int = 20, n_test: int = 10) -> dict:
    folder = root / "cifar-10-batches-py"
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                    b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    train_x, train_y = [], []
    for b in range(1, n_batches + 1):
        x, y = _images(per_batch, seed=b), [(i + b) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b}", {b"batch_label": f"training batch {b}".encode(), b"labels": y,
                                           b"data": _rows(x), b"filenames": [b"x.png"] * per_batch})
        train_x.append(x)
        train_y += y
    test_x, test_y = _images(n_test, seed=99), [i % 10 for i in range(n_test)]
    _dump(folder / "test_batch", {b"batch_label": b"testing batch 1", b"labels": test_y,
                                  b"data": _rows(test_x)})
    return {"folder": folder, "train": (np.concatenate(train_x), train_y), "test": (test_x, test_y)}


def make_cifar100(root: Path, n_train: int = 30, n_test: int = 12) -> dict:
    folder = root / "cifar-100-python"
    fine = [f"fine{i:02d}" for i in range(100)]
    coarse = [f"coarse{i:02d}" for i in range(20)]
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in fine],
                            b"coarse_label_names": [n.encode() for n in coarse]})
    out = {"folder": folder, "fine_names": fine, "coarse_names": coarse}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x = _images(n, seed)
        f = [(7 * i + seed) % 100 for i in range(n)]
        c = [v // 5 for v in f]
        _dump(folder / split, {b"data": _rows(x), b"fine_labels": f, b"coarse_labels": c,
                               b"filenames": [b"f.png"] * n, b"batch_label": split.encode()})
        out[split] = (x, f, c)
    return out


def test_cifar10_generated_batches_concatenate_in_order(tmp_path):
    g = make_cifar10(tmp_path, n_batches=3)
    arr = cifar.load_cifar_arrays(tmp_path, "cifar10")
    assert arr["names"] == CIFAR10_NAMES
    x, y = arr["train"]
    assert x.shape == (60, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, g["train"][0])  # channel-major rows -> HWC, batches 1, 2, 3
    assert y.tolist() == g["train"][1]
    np.testing.assert_array_equal(arr["test"][0], g["test"][0])

    table = cifar.read_cifar(tmp_path, "cifar10")
    rows = table.rows
    assert list(rows.columns) == ["id", "landmark_id", "name", "src", "split"]
    assert rows["id"].iloc[0] == "cifar10_train_00000" and rows["id"].iloc[-1] == "cifar10_test_00009"
    assert (rows["split"] == "train").sum() == 60 and (rows["split"] == "test").sum() == 10
    assert rows["id"].is_unique and rows["landmark_id"].dtype == np.int64
    assert (rows["name"] == [CIFAR10_NAMES[i] for i in rows["landmark_id"]]).all()
    im = table.open_image(rows["src"].iloc[61])  # cifar10_test_00001
    assert im.mode == "RGB" and im.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(im), g["test"][0][1])
    # the batch folder itself is accepted as root too
    assert len(cifar.read_cifar10(g["folder"]).rows) == 70


def test_data_batch_numbers_sort_numerically(tmp_path):
    g = make_cifar10(tmp_path, n_batches=2, per_batch=4)
    folder = g["folder"]
    (folder / "data_batch_2").rename(folder / "data_batch_10")
    (folder / "data_batch_10.bin").write_bytes(b"not ours")  # other formats are ignored
    x, _ = cifar.load_cifar_arrays(tmp_path)["train"]
    np.testing.assert_array_equal(x, g["train"][0])  # 1 before 10


@pytest.mark.parametrize("mode, n_classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse(tmp_path, mode, n_classes):
    g = make_cifar100(tmp_path)
    arr = cifar.load_cifar_arrays(tmp_path, "cifar100", mode)
    assert arr["names"] == g[f"{mode}_names"] and len(arr["names"]) == n_classes
    k = 1 if mode == "fine" else 2
    assert arr["train"][1].tolist() == g["train"][k] and arr["test"][1].tolist() == g["test"][k]
    np.testing.assert_array_equal(arr["train"][0], g["train"][0])

    table = cifar.read_cifar100(tmp_path, label_mode=mode)
    rows = table.rows
    assert len(rows) == 42 and rows["id"].iloc[0] == "cifar100_train_00000"
    assert rows["id"].iloc[30] == "cifar100_test_00000" and rows["split"].iloc[30] == "test"
    assert rows["name"].iloc[0] == g[f"{mode}_names"][g["train"][k][0]]
    np.testing.assert_array_equal(np.asarray(table.open_image("cifar100_train_00005")), g["train"][0][5])
    assert f"{n_classes} classes" in table.description


def test_open_image_rejects_foreign_keys(tmp_path):
    make_cifar10(tmp_path, n_batches=1, per_batch=3, n_test=2)
    table = cifar.read_cifar(tmp_path)
    for bad in ("cifar100_train_00000", "cifar10_train_00003", "cifar10_val_00000", "x", "cifar10_test_abc"):
        with pytest.raises(DataError):
            table.open_image(bad)


def test_bad_variant_and_label_mode(tmp_path):
    make_cifar10(tmp_path, n_batches=1, per_batch=2, n_test=2)
    with pytest.raises(ConfigError, match="did you mean: cifar10"):
        cifar.read_cifar(tmp_path, "cifar1O")
    with pytest.raises(ConfigError, match="only for CIFAR-100"):
        cifar.read_cifar(tmp_path, "cifar10", "coarse")
    with pytest.raises(ConfigError, match="label_mode"):
        cifar.read_cifar(tmp_path, "cifar100", "medium")
    assert len(cifar.read_cifar(tmp_path, "CIFAR-10").rows) == 4  # spelling variants accepted


# ---------------------------------------------------------------- bad input: one DataError naming the file


def _batch(**over) -> dict:
    d = {b"data": _rows(_images(4, 0)), b"labels": [0, 1, 2, 3], b"batch_label": b"b"}
    d.update({k.encode(): v for k, v in over.items()})
    return {k: v for k, v in d.items() if v is not None}


BAD_BATCHES = {
    "wrong_shape": (_batch(data=np.zeros((4, 3000), np.uint8)), "shape (N, 3072)"),
    "wrong_dtype": (_batch(data=np.zeros((4, 3072), np.int64)), "must be uint8"),
    "list_not_array": (_batch(data=[[0] * 3072] * 4), "numpy array"),
    "missing_labels": (_batch(labels=None), "missing key 'labels'"),
    "missing_data": (_batch(data=None), "missing key 'data'"),
    "label_count": (_batch(labels=[0, 1]), "4 images but 'labels'"),
    "label_range": (_batch(labels=[0, 1, 2, 10]), "out of range 0..9"),
    "float_labels": (_batch(labels=[0.5, 1.0, 2.0, 3.0]), "must hold integers"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_is_one_data_error(tmp_path, case):
    make_cifar10(tmp_path, n_batches=2, per_batch=4)
    bad, needle = BAD_BATCHES[case]
    path = _dump(tmp_path / "cifar-10-batches-py" / "data_batch_2", bad)
    with pytest.raises(DataError) as e:
        cifar.read_cifar(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


@pytest.mark.parametrize("content, needle", [
    (b"this is not a pickle at all", "not a readable CIFAR pickle"),
    (b"", "not a readable CIFAR pickle"),
    (pickle.dumps({b"data": 1}, protocol=2)[:-5], "not a readable CIFAR pickle"),  # cut short
    (pickle.dumps([1, 2, 3], protocol=2), "expected a pickled dict"),
])
def test_non_pickle_file_is_one_data_error(tmp_path, content, needle):
    make_cifar10(tmp_path, n_batches=1, per_batch=2, n_test=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle) as e:
        cifar.load_cifar_arrays(tmp_path)
    assert str(path) in str(e.value)


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_pickle_cannot_run_code(tmp_path):
    make_cifar10(tmp_path, n_batches=1, per_batch=2, n_test=2)
    path = _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": _Evil()})
    with pytest.raises(DataError, match="posix.getcwd|os.getcwd|nt.getcwd") as e:
        cifar.load_cifar_arrays(tmp_path)
    assert str(path) in str(e.value)


def test_legacy_numpy_module_names_resolve():
    import io

    up = cifar._SafeUnpickler(io.BytesIO(b""))
    assert up.find_class("numpy.core.multiarray", "_reconstruct") is np._core.multiarray._reconstruct


@pytest.mark.parametrize("missing", ["batches.meta", "test_batch", "data_batch_1"])
def test_missing_file_is_one_data_error(tmp_path, missing):
    make_cifar10(tmp_path, n_batches=1, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(DataError) as e:
        cifar.read_cifar(tmp_path)
    assert "cifar-10-batches-py" in str(e.value)
    assert missing in str(e.value) or "data_batch_<n>" in str(e.value)


def test_missing_folder_and_bad_meta(tmp_path):
    with pytest.raises(DataError, match="CIFAR-100 not found: .*cifar-100-python"):
        cifar.read_cifar(tmp_path, "cifar100")
    g = make_cifar100(tmp_path)
    _dump(g["folder"] / "meta", {b"fine_label_names": [b"a"]})
    with pytest.raises(DataError, match="missing or empty 'coarse_label_names'"):
        cifar.read_cifar(tmp_path, "cifar100", "coarse")
    with pytest.raises(DataError, match=r"out of range 0\.\.0"):  # labels beyond the name list
        cifar.read_cifar(tmp_path, "cifar100", "fine")


# ---------------------------------------------------------------- md5 only for official files


def _pad_to(path: Path, size: int) -> None:
    """Pad a pickle to ``size`` bytes (pickle ignores what follows its STOP opcode)."""
    with open(path, "r+b") as f:
        f.truncate(size)


def test_md5_checked_only_when_name_and_size_are_official(tmp_path, monkeypatch):
    g = make_cifar10(tmp_path, n_batches=1, per_batch=4, n_test=2)
    batch = g["folder"] / "data_batch_1"
    cifar.load_cifar_arrays(tmp_path)  # not official sizes: no md5 table needed
    _pad_to(batch, cifar.OFFICIAL_SIZES["cifar10"]["data_batch_1"])
    fake_table = {"data_batch_1": "0" * 32, "batches.meta": cifar._md5(g["folder"] / "batches.meta")}
    monkeypatch.setattr(cifar, "official_md5", lambda which: fake_table)
    with pytest.raises(DataError, match="md5 mismatch") as e:
        cifar.load_cifar_arrays(tmp_path)
    assert str(batch) in str(e.value)
    cifar.load_cifar_arrays(tmp_path, verify=False)  # verification can be switched off
    fake_table["data_batch_1"] = cifar._md5(batch)
    x, _ = cifar.load_cifar_arrays(tmp_path)["train"]  # matching md5: read
    assert x.shape == (4, 32, 32, 3)


def test_official_md5_table_comes_from_torchvision():
    torchvision = pytest.importorskip("torchvision")
    table = cifar.official_md5("cifar10")
    assert set(table) == set(cifar.OFFICIAL_SIZES["cifar10"])
    assert table["data_batch_1"] == dict(torchvision.datasets.CIFAR10.train_list)["data_batch_1"]
    assert set(cifar.official_md5("cifar100")) == {"train", "test", "meta"}


# ---------------------------------------------------------------- download


def test_download_offline_is_one_pipeline_error(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    import torchvision.datasets.utils as tv_utils

    calls = []

    def offline(url, download_root, **kw):
        calls.append((url, download_root, kw))
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(PipelineError) as e:
        cifar.read_cifar(tmp_path, "cifar100", download=True)
    msg = str(e.value)
    assert "could not download CIFAR-100" in msg and "offline?" in msg and "\n" not in msg
    assert calls and calls[0][0].endswith("cifar-100-python.tar.gz") and calls[0][2]["md5"]

    calls.clear()
    make_cifar10(tmp_path, n_batches=1, per_batch=2, n_test=2)
    assert len(cifar.read_cifar(tmp_path, "cifar10", download=True).rows) == 4
    assert not calls  # complete folder: nothing fetched


# ---------------------------------------------------------------- the real CIFAR-10 sample


@pytest.mark.realdata
def test_real_cifar10_sample(shared_data):
    root = shared_data / "cifar10_subset"
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {root / 'cifar-10-batches-py'}")
    arr = cifar.load_cifar_arrays(root, "cifar10")
    assert arr["names"] == CIFAR10_NAMES
    (xtr, ytr), (xte, yte) = arr["train"], arr["test"]
    assert xtr.shape == (10000, 32, 32, 3) and xte.shape == (2000, 32, 32, 3) and xtr.dtype == np.uint8
    assert np.bincount(ytr, minlength=10).tolist() == [1000] * 10
    assert np.bincount(yte, minlength=10).tolist() == [200] * 10
    assert 40 < xtr.mean() < 200 and xtr.std() > 20  # real pixels, not a blank array

    table = cifar.read_cifar(root, "cifar10")
    rows = table.rows
    assert len(rows) == 12000 and rows["id"].is_unique
    counts = rows.groupby("split")["name"].value_counts().unstack()
    assert counts.loc["train"].tolist() == [1000] * 10 and counts.loc["test"].tolist() == [200] * 10
    im = table.open_image("cifar10_train_00042")
    assert im.mode == "RGB" and im.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(im), xtr[42])
