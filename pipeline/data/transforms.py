"""Per-item training transforms on uint8 (3, H, W) tensors: fast crop, flip, colour jitter and
RandomResizedCrop modules, the item pipeline, the albumentations bridge, and the seeding rule
(:func:`mix_seed`) every augmentation generator is derived from."""

from __future__ import annotations

import hashlib
import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

RRC_RATIO = (3 / 4, 4 / 3)  # torchvision's and albumentations' default aspect-ratio range


_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


_GRAY_WEIGHTS = torch.tensor(_GRAY).view(3, 1, 1)


def mix_seed(*parts: int | str | np.ndarray | list[int]) -> int:
    """A 63-bit seed from ``parts`` (ints, strings, integer arrays; order matters).

    Streams seeded from e.g. ``(seed, epoch, row)`` are independent of each other and of the
    order in which rows are visited, which is what makes worker processes and prefetch threads
    reproducible. (Seeding with ``seed + epoch`` would make epoch 1 of seed 0 equal epoch 0 of
    seed 1.)
    """
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, (np.ndarray, list, tuple)):
            h.update(np.asarray(p, dtype=np.int64).tobytes())
        else:
            h.update(str(p).encode())
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little") >> 1


def process_rank() -> int:
    """This process's rank under torch.distributed (0 without it): decorrelates per-rank streams."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class FastColorJitter(torch.nn.Module):
    """Brightness, contrast and saturation jitter of a uint8 (3, H, W) image in one float pass.

    Each factor is drawn uniformly from ``[1 - strength, 1 + strength]``. torchvision's
    ``ColorJitter`` does the same three adjustments but ran at ~140 img/s on 64 px uint8
    images here (BENCHMARKS.md), slower than decoding; this runs at thousands.
    ``generator``: where the factors come from (``None`` = torch's global generator).
    """

    def __init__(self, strength: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.strength = strength
        self.generator = generator

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, c, s = (1 + (torch.rand(3, generator=self.generator) * 2 - 1) * self.strength).tolist()
        x = img.float()
        gray = (x * _GRAY_WEIGHTS).sum(0)
        mean = gray.mean().item()
        # saturation, contrast, brightness in one affine map (same result, ~1.7x faster):
        # b * (c * (gray + s * (x - gray) - mean) + mean) = bcs * x + bc(1 - s) * gray + b(1 - c) * mean
        x.mul_(b * c * s).add_(gray.mul_(b * c * (1 - s)).add_(b * (1 - c) * mean))
        return x.clamp_(0, 255).to(torch.uint8)


class FastRandomCrop(torch.nn.Module):
    """``v2.RandomCrop(size, pad_if_needed=True)`` on a (C, H, W) tensor, without v2's dispatch.

    ``padding`` adds a zero border first (CIFAR's pad-4-then-crop-32). Draws the same random
    numbers in the same order as torchvision, so a seeded run crops the same pixels; v2's
    per-call dispatch cost ~55 us per image here, this ~5 us.
    """

    def __init__(self, size: int, padding: int = 0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = size
        self.padding = padding
        self.generator = generator

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        p = self.padding
        # pad_if_needed: torchvision pads the missing amount on *both* sides of a short side
        ph, pw = p + max(0, self.size - h - 2 * p), p + max(0, self.size - w - 2 * p)
        if ph or pw:
            img = F.pad(img, (pw, pw, ph, ph))
            h, w = img.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, size=(), generator=self.generator)) if h > self.size else 0
        left = int(torch.randint(0, w - self.size + 1, size=(), generator=self.generator)) if w > self.size else 0
        return img[..., top : top + self.size, left : left + self.size]


class FastHorizontalFlip(torch.nn.Module):
    """``v2.RandomHorizontalFlip(p)`` on a tensor: same random draw, without v2's dispatch."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(1, generator=self.generator) >= self.p:
            return img
        return img.flip(-1)


def rrc_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box ``(top, left, h, w)``: same draws in the same order."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    return _rrc_fallback(height, width, ratio)


def _rrc_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class FastRandomResizedCrop(torch.nn.Module):
    """``v2.RandomResizedCrop(size, scale, ratio, antialias=True)`` with an explicit generator.

    Same boxes for the same random stream (:func:`rrc_params`), same bilinear antialiased resize.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = RRC_RATIO,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.generator = generator

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2  # not at module level: the batched path never needs it

        top, left, h, w = rrc_params(img.shape[-2], img.shape[-1], self.scale, self.ratio, self.generator)
        return v2.functional.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)


class ItemTransform(Protocol):
    """A per-item training transform whose randomness is a function of its last ``reseed``."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor: ...

    def reseed(self, seed: int) -> None: ...


class ItemPipeline:
    """Torch ops applied in order, all drawing from one private generator (see ``reseed``)."""

    def __init__(self, ops: list[torch.nn.Module]) -> None:
        self.generator = torch.Generator()
        self.ops = ops
        for op in ops:
            op.generator = self.generator

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"ItemPipeline({', '.join(type(op).__name__ for op in self.ops)})"


class AlbumentationsItems:
    """An albumentations ``Compose`` behind the project's item interface (uint8 CHW tensor in/out).

    Albumentations works on HWC numpy arrays; the two conversions cost ~0.1 ms at 224 px, small
    next to the affine warp and the JPEG round trip of ``strong``. ``reseed`` sets the Compose's
    own generators (it never reads numpy's or Python's global state).
    """

    def __init__(self, compose) -> None:
        self.compose = compose

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        out = self.compose(image=hwc)["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"AlbumentationsItems({', '.join(type(t).__name__ for t in self.compose.transforms)})"


def strong_compose(img_size: int, rrc_scale=(0.35, 1.0), hflip: float = 0.5, color_jitter: float = 0.2):
    """The ``strong`` albumentations pipeline (also timed by bench/bench_augment.py).

    RandomResizedCrop first, so every later op works on the small output; then
    shift-scale-rotate (p 0.7), flip, colour jitter, JPEG quality 60-100 (p 0.5) and one
    coarse dropout hole of 10-40 % of the side (p 0.5), in the spirit of the GLR 2019/2020
    winners' recipes.
    """
    import albumentations as A

    ops = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=tuple(rrc_scale), ratio=RRC_RATIO),
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.15), rotate=(-10, 10), border_mode=0, fill=0, p=0.7),
        A.HorizontalFlip(p=hflip),
    ]
    if color_jitter > 0:
        j = color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0))
    ops += [
        A.ImageCompression(compression_type="jpeg", quality_range=(60, 100), p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.4), hole_width_range=(0.1, 0.4), p=0.5),
    ]
    return A.Compose(ops, seed=0)
