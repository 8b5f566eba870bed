"""Augmentation policies by name, their per-item and batched pieces, and mixup/cutmix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from common.errors import ConfigError
from pipeline.config import TrainConfig
from pipeline.data.augment import POLICIES, Policy, get_policy, register_policy
from pipeline.data.batch_augment import BatchAugment, BatchColorJitter, apply_jitter, jitter_factors, rrc_boxes
from pipeline.data.datasets import build_train_transform
from pipeline.data.mixup import build_mixer
from pipeline.data.transforms import FastColorJitter, FastRandomResizedCrop, mix_seed, rrc_params


def _cfg(**over) -> TrainConfig:
    return TrainConfig(**{**dict(img_size=24, color_jitter=0.3, hflip=0.5, seed=0), **over})


def _image(h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


# ---- the registry


def test_every_policy_builds_and_outputs_the_training_crop():
    x = _image()
    for name in POLICIES:
        tf = get_policy(name).item(_cfg(augment=name))
        tf.reseed(1)
        out = tf(x)
        assert out.shape == (3, 24, 24) and out.dtype == torch.uint8, name
        tf.reseed(1)
        assert torch.equal(tf(x), out), name  # a function of the seed
        tf.reseed(2)
        assert not torch.equal(tf(x), out), name


def test_unknown_policy_is_one_error_listing_the_valid_names():
    with pytest.raises(ConfigError) as e:
        get_policy("randaug")
    msg = str(e.value)
    assert "\n" not in msg and "'randaug'" in msg
    assert all(name in msg for name in ("default", "rrc", "strong"))
    with pytest.raises(ValueError, match="already registered"):
        register_policy(Policy("default", "dup", POLICIES["default"].item))


def test_a_new_policy_is_one_entry():
    def solarize(cfg):
        return POLICIES["default"].item(cfg)

    register_policy(Policy("_test_only", "test", solarize))
    try:
        assert get_policy("_test_only").item(_cfg()) is not None
        assert get_policy("_test_only").batch is None  # per item only unless it says otherwise
    finally:
        del POLICIES["_test_only"]


# ---- the default policy keeps the seed-001 transforms, pixel for pixel


def test_default_policy_equals_the_previous_transforms_for_the_same_stream():
    for h, w, pad, jitter in [(32, 40, 0, 0.3), (20, 30, 0, 0.0), (32, 32, 4, 0.2), (24, 24, 0, 0.3)]:
        x = _image(h, w)
        cfg = _cfg(img_size=24, crop_padding=pad, color_jitter=jitter)
        ours = get_policy("default").item(cfg)
        before = build_train_transform(24, cfg.hflip, jitter, pad)  # global generator
        for seed in range(12):
            ours.reseed(seed)
            torch.manual_seed(seed)
            assert torch.equal(ours(x), before(x)), (h, w, pad, seed)


def test_fast_random_resized_crop_equals_torchvision():
    x = _image(36, 48)
    ours = FastRandomResizedCrop(24, (0.3, 1.0))
    ref = v2.RandomResizedCrop(24, scale=(0.3, 1.0), antialias=True)
    for seed in range(16):
        torch.manual_seed(seed)
        a = ours(x)
        torch.manual_seed(seed)
        assert torch.equal(a, ref(x)), seed


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.union1d(a, b)
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def test_batched_rrc_boxes_have_torchvision_distribution():
    n, h, w, scale = 4000, 36, 48, (0.2, 0.9)
    g = torch.Generator().manual_seed(0)
    ref = np.array([rrc_params(h, w, scale, (3 / 4, 4 / 3), g) for _ in range(n)])
    top, left, bh, bw = rrc_boxes(n, h, w, scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    ours = np.stack([top, left, bh, bw], 1)
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for name, f in {
        "area": lambda b: b[:, 2] * b[:, 3] / (h * w),
        "aspect": lambda b: np.log(b[:, 3] / b[:, 2]),
        "centre_y": lambda b: b[:, 0] + b[:, 2] / 2,
        "centre_x": lambda b: b[:, 1] + b[:, 3] / 2,
    }.items():
        a, b = f(ref), f(ours)
        tol = 4 * math.sqrt(a.var() / n + b.var() / n)  # difference of two means, 4 sigma
        assert abs(a.mean() - b.mean()) < tol, name
        assert _ks(a, b) < 1.95 * math.sqrt(2 / n), name  # two-sample Kolmogorov-Smirnov, p = 0.001


def test_batched_rrc_renders_torchvision_resized_crop():
    x = _image(36, 48, seed=3)
    src = x.permute(1, 2, 0).numpy()[None].copy()  # (1, H, W, 3) like the packed array
    aug = BatchAugment(24, "rrc", scale=(0.3, 1.0))
    for seed in range(8):
        plan = aug.plan(1, 36, 48, torch.Generator().manual_seed(seed))
        out = aug.render(src, np.array([0]), plan, torch.empty(1, 3, 24, 24, dtype=torch.uint8))
        t, le, h, w = (int(v[0]) for v in (plan.y0, plan.x0, plan.h, plan.w))
        assert torch.equal(out[0], v2.functional.resized_crop(x, t, le, h, w, [24, 24], antialias=True))


# ---- colour jitter: one formula, per item and per batch


def test_batch_jitter_is_the_item_formula():
    imgs = torch.stack([_image(20, 20, seed=k) for k in range(10)])
    g = torch.Generator().manual_seed(4)
    factors = jitter_factors(10, 0.4, g)
    got = apply_jitter(imgs.clone(), factors, chunk=3)
    for k in range(10):
        b, c, s = factors[k].tolist()
        f = imgs[k].float()
        gray = 0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2]
        want = (((gray + (f - gray) * s - gray.mean()) * c + gray.mean()) * b).clamp(0, 255).to(torch.uint8)
        assert (got[k].int() - want.int()).abs().max() <= 1
    # FastColorJitter draws its three factors the same way from the same kind of stream
    g = torch.Generator().manual_seed(9)
    item = FastColorJitter(0.4, generator=g)(imgs[0])
    same = apply_jitter(imgs[:1].clone(), jitter_factors(1, 0.4, torch.Generator().manual_seed(9)))
    assert (item.int() - same[0].int()).abs().max() <= 1
    assert jitter_factors(5000, 0.4, g).min() >= 0.6 and jitter_factors(5000, 0.4, g).max() <= 1.4


def test_batched_renderers_agree():
    """OpenCV's colour matrix and torch's float pass: the same jitter to one level; the same crops
    and flips exactly (padding included)."""
    src = torch.stack([_image(40, 40, seed=k) for k in range(6)]).permute(0, 2, 3, 1).numpy().copy()
    rows = np.array([4, 0, 5, 1, 3, 2])
    for jitter, pad in ((0.0, 4), (0.4, 0), (0.4, 6)):
        fast = BatchAugment(32, "crop", pad, 0.5, jitter, use_cv2=True)
        slow = BatchAugment(32, "crop", pad, 0.5, jitter, use_cv2=False)
        plan = fast.plan(6, 40, 40, torch.Generator().manual_seed(2))
        a = fast.render(src, rows, plan, torch.empty(6, 3, 32, 32, dtype=torch.uint8))
        b = slow.render(src, rows, plan, torch.empty(6, 3, 32, 32, dtype=torch.uint8))
        diff = (a.int() - b.int()).abs()
        assert diff.max() <= (1 if jitter else 0), (jitter, pad)
        if jitter:
            assert diff.float().mean() < 0.1  # rounding differences are rare
            assert not torch.equal(a, fast.render(src, rows, fast.plan(6, 40, 40, None), torch.empty_like(a)))


def test_device_jitter_is_reseedable_and_changes_colours():
    imgs = torch.stack([_image(16, 16, seed=k) for k in range(4)])
    dt = BatchColorJitter(0.3)
    dt.reseed(5)
    a = dt(imgs.clone())
    dt.reseed(5)
    assert torch.equal(dt(imgs.clone()), a)
    assert not torch.equal(a, imgs)
    assert a.dtype == torch.uint8 and a.shape == imgs.shape


# ---- what each policy changes


def test_default_policy_crops_flips_and_jitters():
    x = _image(32, 32)
    no_jitter = get_policy("default").item(_cfg(color_jitter=0.0, hflip=1.0))
    no_jitter.reseed(0)
    out = no_jitter(x)
    # a flipped window of the source: find it
    windows = x.unfold(1, 24, 1).unfold(2, 24, 1)  # (3, 9, 9, 24, 24)
    flipped = out.flip(-1)
    assert any(torch.equal(windows[:, i, j], flipped) for i in range(9) for j in range(9))
    jitter = get_policy("default").item(_cfg(color_jitter=0.5, hflip=0.0))
    jitter.reseed(0)
    j = jitter(x)
    assert not any(torch.equal(windows[:, i, j_], j) for i in range(9) for j_ in range(9))


def test_rrc_and_strong_resample_the_image():
    x = _image(48, 48)
    windows = x.unfold(1, 24, 1).unfold(2, 24, 1)
    for name in ("rrc", "strong"):
        tf = get_policy(name).item(_cfg(augment=name, color_jitter=0.0, hflip=0.0))
        hits = 0
        for seed in range(10):
            tf.reseed(seed)
            out = tf(x)
            hits += any(torch.equal(windows[:, i, j], out) for i in range(0, 25, 4) for j in range(0, 25, 4))
        assert hits == 0, name  # resized (and warped), not plain crops


def test_strong_policy_uses_jpeg_dropout_and_affine():
    names = [type(t).__name__ for t in get_policy("strong").item(_cfg(augment="strong")).compose.transforms]
    for op in ("RandomResizedCrop", "Affine", "HorizontalFlip", "ColorJitter", "ImageCompression", "CoarseDropout"):
        assert op in names
    # dropout: some outputs have a zero-filled rectangle the source (no zeros) cannot give
    x = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    tf = get_policy("strong").item(_cfg(augment="strong", color_jitter=0.0))
    zeros = 0
    for seed in range(20):
        tf.reseed(seed)
        zeros += int((tf(x) == 0).all(0).sum() > 4)
    assert 3 <= zeros <= 19


def test_mix_seed_separates_streams():
    assert mix_seed(0, 1, 5) == mix_seed(0, 1, 5)
    assert len({mix_seed(0, 1, 5), mix_seed(0, 5, 1), mix_seed(1, 0, 5), mix_seed(0, 1, [5])}) >= 3
    assert mix_seed(0, [1, 2, 3]) != mix_seed(0, [3, 2, 1])
    assert 0 <= mix_seed(0) < 2**63


# ---- mixup / cutmix


def test_mixer_off_when_both_alphas_are_zero():
    assert build_mixer(_cfg(), 10) is None
    assert build_mixer(_cfg(mixup=0.2), 10) is not None
    assert build_mixer(_cfg(cutmix=1.0), 10) is not None


def test_mixup_mixes_images_and_targets_with_one_lambda():
    n, classes = 8, 5
    x = torch.randn(n, 3, 8, 8)
    y = torch.arange(n) % classes
    mixer = build_mixer(_cfg(mixup=0.4, label_smoothing=0.1), classes)
    mixer.set_epoch(0)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    out, soft = mixer(x.clone(), y)
    assert (np.random.get_state()[1] == before).all()  # numpy's global stream untouched
    assert soft.shape == (n, classes) and torch.allclose(soft.sum(1), torch.ones(n))
    # recover lambda from the images: out = lam * x + (1 - lam) * x.flip(0)
    d = (x - x.flip(0)).flatten()
    lam = float(((out - x.flip(0)).flatten() @ d) / (d @ d))
    assert 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    off = 0.1 / classes
    want = lam * (torch.nn.functional.one_hot(y, classes) * 0.9 + off)
    want += (1 - lam) * (torch.nn.functional.one_hot(y.flip(0), classes) * 0.9 + off)
    assert torch.allclose(soft, want, atol=1e-5)
    mixer.set_epoch(0)
    again, soft2 = mixer(x.clone(), y)
    assert torch.equal(again, out) and torch.equal(soft2, soft)  # set_epoch makes it repeatable


def test_mixer_handles_an_odd_batch_and_passes_label_smoothing():
    classes = 4
    x = torch.randn(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 1])
    mixer = build_mixer(_cfg(cutmix=1.0, label_smoothing=0.2), classes)
    out, soft = mixer(x.clone(), y)
    assert out.shape == x.shape and soft.shape == (5, classes)
    assert torch.equal(out[4], x[4])  # the odd one out: unmixed, its own smoothed target
    assert torch.allclose(soft[4], torch.tensor([0.05, 0.85, 0.05, 0.05]))
    assert not torch.equal(out[:4], x[:4])  # the others: a box pasted from the reversed batch
    # never mixing (mix_prob 0): smoothed one-hot targets, images untouched
    never = build_mixer(_cfg(mixup=0.5, mix_prob=0.0, label_smoothing=0.2), classes)
    out, soft = never(x.clone(), y)
    assert torch.equal(out, x)
    assert torch.allclose(soft, torch.nn.functional.one_hot(y, classes) * 0.8 + 0.05)
