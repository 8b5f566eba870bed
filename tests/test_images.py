"""Image handling of the resize cache: draft decoding, EXIF, colour modes, bomb limit, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep import readers
from data_prep.images import build_cache, cache_relpath, draft_open, prepare_cache_dir, resize_image


def _jpeg(path, w, h, color=(200, 30, 30), exif=None):
    img = Image.new("RGB", (w, h), color)
    img.paste((10, 220, 10), (0, 0, w // 2, h))  # left half green: shows flips and rotations
    kw = {"exif": exif} if exif is not None else {}
    img.save(path, "JPEG", quality=95, **kw)
    return str(path)


def test_resize_modes():
    img = Image.new("RGB", (400, 100), (0, 0, 0))
    img.paste((255, 255, 255), (150, 0, 250, 100))  # white centre band
    sq = resize_image(img, 32, "square")
    assert sq.size == (32, 32)
    short = resize_image(img, 32, "shorter")
    assert short.size == (32, 32)
    a = np.asarray(short)
    assert a[:, 4:28].min() > 200  # the centre crop (x 150..250 of 400) is the white band
    assert resize_image(img.convert("L"), 16).mode == "RGB"


def test_draft_mode_decodes_large_jpeg_small(tmp_path):
    src = _jpeg(tmp_path / "big.jpg", 2000, 1000)
    with Image.open(src) as im:
        im.draft("RGB", (100, 100))
        assert im.size == (250, 125)  # 1/8 scale: both sides still >= 100
    img = draft_open(src, 100)
    assert img.mode == "RGB" and min(img.size) >= 100 and img.size[0] < 2000
    full = resize_image(readers.open_rgb(src), 100)
    fast = resize_image(img, 100)
    diff = np.abs(np.asarray(full).astype(int) - np.asarray(fast)).mean()
    assert diff < 3  # same picture


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = _jpeg(tmp_path / "rot.jpg", 80, 40, exif=exif.tobytes())
    for img in (readers.open_rgb(src), draft_open(src, 16)):
        assert img.size[1] > img.size[0]  # landscape file, portrait display
        a = np.asarray(img)
        assert a[2, a.shape[1] // 2, 1] > 150  # the green half is now on top


@pytest.mark.parametrize(
    "mode, expect",
    [
        ("L", (128, 128, 128)),
        ("CMYK", None),
        ("P", None),
        ("RGBA", (255, 255, 255)),  # fully transparent -> white background
        ("LA", (255, 255, 255)),
        ("I;16", (128, 128, 128)),
    ],
)
def test_colour_modes_become_rgb(tmp_path, mode, expect):
    if mode == "RGBA":
        img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    elif mode == "LA":
        img = Image.new("LA", (20, 20), (0, 0))
    elif mode == "I;16":
        img = Image.fromarray(np.full((20, 20), 128 * 256, np.uint16))
    else:
        img = Image.new("RGB", (20, 20), (128, 128, 128)).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else ("TIFF" if mode == "I;16" else "PNG")
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt)
    out = readers.open_rgb(str(path))
    assert out.mode == "RGB" and out.size == (20, 20)
    if expect:
        assert np.abs(np.asarray(out)[10, 10].astype(int) - expect).max() <= 2
    assert draft_open(str(path), 8).mode == "RGB"


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    a = np.asarray(readers.open_rgb(str(tmp_path / "p.png")))
    assert (a == 255).all()  # transparent palette entry -> white


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    src = tmp_path / "bomb.png"  # a PNG decodes at full size: its pixels count
    Image.new("RGB", (300, 300), (9, 9, 9)).save(src)
    monkeypatch.setattr(readers, "MAX_PIXELS", 50_000)
    done, failed = build_cache([("b", str(src))], tmp_path / "out", lambda s: draft_open(s, 32), 32, progress=False)
    assert failed == {"b": "decompression_bomb"} and not done


def test_a_large_real_jpeg_is_decoded_at_draft_scale_not_refused(tmp_path, monkeypatch):
    """An 8000x8000 competition photo (64 MP, over the 60 MP limit) must be predicted: the limit
    counts the pixels decoded, and a JPEG is decoded at 1/8 scale. Scaled down here: 2400x2400
    (5.8 MP) against a 1 MP limit, cached at 64 px from a 300x300 draft decode."""
    src = _jpeg(tmp_path / "big.jpg", 2400, 2400)
    monkeypatch.setattr(readers, "MAX_PIXELS", 1_000_000)
    done, failed = build_cache([("big", src)], tmp_path / "out", lambda s: draft_open(s, 64), 64, progress=False)
    assert not failed and "big" in done


def test_bad_files_are_listed_not_raised(tmp_path):
    good = _jpeg(tmp_path / "good.jpg", 64, 48)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    items = [
        ("good", good),
        ("trunc", str(tmp_path / "trunc.jpg")),
        ("empty", str(tmp_path / "empty.jpg")),
        ("text", str(tmp_path / "text.jpg")),
        ("gone", str(tmp_path / "gone.jpg")),
    ]
    stats: dict = {}
    out = tmp_path / "out"
    done, failed = build_cache(items, out, lambda s: draft_open(s, 32), 32, progress=False, stats=stats)
    assert set(done) == {"good"}
    assert failed == {"trunc": "truncated", "empty": "empty_file", "text": "not_image", "gone": "missing_image"}
    assert set(stats["details"]) == set(failed) and stats["encoded"] == 1
    with Image.open(out / done["good"]) as im:
        assert im.size == (32, 32) and im.format == "JPEG"
    assert not list(out.rglob("*.tmp"))
    # rerun: the cached file is reused, not re-encoded
    stats2: dict = {}
    build_cache(items[:1], out, lambda s: draft_open(s, 32), 32, progress=False, stats=stats2)
    assert stats2["encoded"] == 0 and stats2["reused"] == 1


def test_png_cache_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    done, _ = build_cache(
        [("c0", "x")], tmp_path, lambda _s: Image.fromarray(arr), 32, fmt="png", progress=False, workers=1
    )
    assert done["c0"] == cache_relpath("c0", "png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / done["c0"])), arr)
    jpeg, _ = build_cache([("c1", "x")], tmp_path, lambda _s: Image.fromarray(arr), 32, progress=False)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / jpeg["c1"])), arr)  # why CIFAR uses PNG


def test_cache_dir_cleared_when_size_changes(tmp_path):
    meta = {"size": 32, "mode": "square", "format": "jpeg", "quality": 92}
    assert not prepare_cache_dir(tmp_path, meta)
    (tmp_path / "images" / "ab").mkdir(parents=True)
    (tmp_path / "images" / "ab" / "x.jpg").write_bytes(b"x")
    assert not prepare_cache_dir(tmp_path, meta)  # same settings: kept
    assert (tmp_path / "images" / "ab" / "x.jpg").exists()
    assert prepare_cache_dir(tmp_path, {**meta, "size": 64})
    assert not (tmp_path / "images" / "ab").exists()
