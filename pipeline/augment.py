"""Training augmentation policies by name, in two forms: per item and per batch.

A policy is one :class:`Policy` row in :data:`POLICIES` (``augment:`` in the train config):

* ``default``: seed 001's random crop of ``img_size`` (after ``crop_padding``), horizontal flip,
  colour jitter. The per-item form is pixel-identical to the project's earlier transforms for
  the same random stream.
* ``rrc``: RandomResizedCrop(``img_size``, scale=``rrc_scale``, ratio 3/4..4/3) + flip + jitter.
* ``strong``: the kind of policy the Google Landmark winners trained with (albumentations):
  RandomResizedCrop, shift-scale-rotate (Affine), flip, colour jitter, JPEG re-compression and
  one coarse dropout hole. Per item only.

The per-item form (:class:`ItemPipeline`, :class:`AlbumentationsItems`) transforms one uint8
(3, H, W) tensor; the batched form (:class:`BatchAugment`) draws every random parameter of a
batch at once and renders the batch straight out of the packed uint8 array (crops, flips and
the colour jitter as one 3x4 colour matrix per image, by OpenCV), or leaves the jitter to a
batch tensor operation on the training device (:class:`BatchColorJitter`, :func:`apply_jitter`).
Both forms draw the same distribution of augmentations.

Randomness never comes from torch's or numpy's global generators: every form draws from its
own ``torch.Generator`` that the data layer reseeds from ``(seed, epoch, rows)`` (see
:func:`mix_seed`), so a background thread or a worker process cannot shift the main thread's
random stream (dropout), and a resumed run equals an uninterrupted one.

Mixup/CutMix (:func:`build_mixer`) works on the normalised float batch in the training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from common.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

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


# ---------------------------------------------------------------------------------------------
# per-item transforms (uint8 (3, H, W) tensor in, uint8 out)


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


# ---------------------------------------------------------------------------------------------
# batched form: draw the parameters of a whole batch, render crops/flips from the packed array


@dataclass
class BatchPlan:
    """Per-image parameters of one batch. Boxes are in source pixels; a box reaching outside the
    image (negative ``y0``/``x0`` or past the edge) reads zeros there (crop padding)."""

    y0: np.ndarray
    x0: np.ndarray
    h: np.ndarray
    w: np.ndarray
    flip: np.ndarray
    jitter: torch.Tensor | None = None  # (n, 3) brightness, contrast, saturation factors

    def __len__(self) -> int:
        return len(self.y0)


def _randint(n: int, high: np.ndarray | int, g: torch.Generator) -> np.ndarray:
    """``n`` integers uniform on ``[0, high]`` (per-element ``high``), from ``g``."""
    u = torch.rand(n, dtype=torch.float64, generator=g).numpy()
    high = np.asarray(high, dtype=np.int64)
    return np.minimum(np.floor(u * (high + 1)).astype(np.int64), high)


def jitter_factors(n: int, strength: float, g: torch.Generator) -> torch.Tensor:
    """(n, 3) brightness/contrast/saturation factors uniform on ``[1 - strength, 1 + strength]``."""
    return 1 + (torch.rand(n, 3, generator=g) * 2 - 1) * strength


def apply_jitter(images: torch.Tensor, factors: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """:class:`FastColorJitter`'s formula on a uint8 (N, 3, H, W) batch, in place.

    ``factors``: (N, 3) brightness, contrast, saturation. On a CPU the batch is done a few images
    at a time (``chunk``; default ~0.5 MB of pixels, 3 images at 224 px, 16 at 64) so the float
    temporaries stay in cache: a whole 224 px batch at once measured 3-6x slower than in chunks
    here; on a GPU, in one go.
    """
    n = len(images)
    if chunk is None:  # ~0.5 MB of uint8 per chunk (2 MB of float temporaries): fits in cache
        per_image = max(1, images[0].numel()) if n else 1
        chunk = min(16, max(1, 2**19 // per_image)) if images.device.type == "cpu" else max(n, 1)
    factors = factors.to(device=images.device, dtype=torch.float32)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].float()
        b, c, s = (factors[i : i + chunk, k].view(-1, 1, 1, 1) for k in range(3))
        gray = x[:, 0:1] * _GRAY[0]
        gray.add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x.mul_(b * c * s).add_(gray.mul_(b * c * (1 - s)).add_(b * (1 - c) * mean))
        images[i : i + chunk] = x.clamp_(0, 255).to(torch.uint8)
    return images


class BatchColorJitter:
    """Device transform: colour jitter of a uint8 batch where it trains (GPU: one pass per batch).

    Factors come from a private CPU generator (``reseed`` once per epoch), so the stream does not
    depend on the device and never touches the global generators.
    """

    def __init__(self, strength: float) -> None:
        self.strength = strength
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return apply_jitter(images, jitter_factors(len(images), self.strength, self.generator))


class BatchAugment:
    """The batched form of a policy: ``plan`` draws a batch's parameters, ``render`` applies them.

    ``mode``: ``crop`` (random crop of ``size`` after ``padding``, as :class:`FastRandomCrop`),
    ``rrc`` (random resized crop, as :class:`FastRandomResizedCrop`) or ``center`` (evaluation:
    ``v2.CenterCrop(size)``, no randomness). ``hflip`` and ``jitter`` as the item transforms;
    ``jitter=0`` leaves the colour jitter to a device transform (or off). ``use_cv2=False``
    renders crops with numpy/torch only (the fallback when OpenCV is missing).
    """

    def __init__(
        self,
        size: int,
        mode: str = "crop",
        padding: int = 0,
        hflip: float = 0.0,
        jitter: float = 0.0,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = RRC_RATIO,
        use_cv2: bool = True,
    ) -> None:
        if mode not in ("crop", "rrc", "center"):
            raise ValueError(f"unknown batch mode {mode!r}")
        self.size, self.mode, self.padding, self.hflip, self.jitter = size, mode, padding, hflip, jitter
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.use_cv2 = use_cv2

    @property
    def random(self) -> bool:
        return self.mode != "center" or self.hflip > 0 or self.jitter > 0

    def __repr__(self) -> str:
        return (
            f"BatchAugment(size={self.size}, mode={self.mode}, padding={self.padding}, hflip={self.hflip}, "
            f"jitter={self.jitter}, scale={self.scale})"
        )

    def plan(self, n: int, height: int, width: int, g: torch.Generator | None) -> BatchPlan:
        """Parameters of ``n`` images of ``height`` x ``width``, drawn from ``g`` in a fixed order."""
        s = self.size
        if self.mode == "center":
            y0, x0 = _center_offset(height, s), _center_offset(width, s)
            y0, x0 = np.full(n, y0), np.full(n, x0)
            h, w = np.full(n, s), np.full(n, s)
        elif self.mode == "crop":
            ph = self.padding + max(0, s - height - 2 * self.padding)  # as FastRandomCrop / pad_if_needed
            pw = self.padding + max(0, s - width - 2 * self.padding)
            y0 = _randint(n, height + 2 * ph - s, g) - ph
            x0 = _randint(n, width + 2 * pw - s, g) - pw
            h, w = np.full(n, s), np.full(n, s)
        else:
            y0, x0, h, w = rrc_boxes(n, height, width, self.scale, self.ratio, g)
        flip = np.zeros(n, dtype=bool)
        if self.hflip > 0:
            flip = torch.rand(n, generator=g).numpy() < self.hflip
        jitter = jitter_factors(n, self.jitter, g) if self.jitter > 0 else None
        return BatchPlan(y0, x0, h, w, flip, jitter)

    def render(self, src: np.ndarray, rows: np.ndarray, plan: BatchPlan, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (n, 3, size, size) uint8 from ``src[rows]`` (NHWC uint8, e.g. a memory map).

        Rows are visited in ascending order (sequential reads of the memory map). Crops: with
        OpenCV (``use_cv2``, the default when it is installed) each image is cut, flipped,
        jittered (one 3x4 colour matrix, :func:`jitter_matrix`) and split into (3, H, W) planes
        by SIMD kernels, ~4x faster than numpy's strided copy and torch's float jitter here;
        without it, one strided copy per image, a flip pass and :func:`apply_jitter`. Resized
        crops (``rrc``) use torch's antialiased bilinear resize (torchvision's kernel).
        """
        order = np.argsort(rows, kind="stable")
        if self.mode == "rrc":
            self._render_resized(src, rows, plan, out, order)
        elif self.use_cv2 and _cv2() is not None:
            self._render_cv2(src, rows, plan, out, order)
            return out
        else:
            self._render_copy(src, rows, plan, out, order)
        for k in np.flatnonzero(plan.flip):
            out[k] = out[k].flip(-1)
        if plan.jitter is not None:
            apply_jitter(out, plan.jitter)
        return out

    def _window(self, src: np.ndarray, row: int, y0: int, x0: int) -> tuple[np.ndarray, slice, slice]:
        """The part of the crop box inside the image, and where it goes in the crop (padding)."""
        s = self.size
        ya, yb = max(y0, 0), min(y0 + s, src.shape[1])
        xa, xb = max(x0, 0), min(x0 + s, src.shape[2])
        return src[row, ya:yb, xa:xb], slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)

    def _render_copy(self, src, rows, plan, out, order) -> None:
        s, out_np = self.size, out.numpy()
        for k in order:
            window, ys, xs = self._window(src, rows[k], int(plan.y0[k]), int(plan.x0[k]))
            if window.shape[:2] != (s, s):
                out_np[k] = 0  # zero padding around the part inside the image
            if window.size:
                np.copyto(out_np[k, :, ys, xs], window.transpose(2, 0, 1))

    def _render_cv2(self, src, rows, plan, out, order) -> None:
        cv2 = _cv2()
        s, out_np = self.size, out.numpy()
        for k in order:
            window, ys, xs = self._window(src, rows[k], int(plan.y0[k]), int(plan.x0[k]))
            if window.shape[:2] != (s, s):
                padded = np.zeros((s, s, 3), dtype=np.uint8)
                padded[ys, xs] = window
                window = padded
            if plan.flip[k]:
                window = cv2.flip(window, 1)
            if plan.jitter is not None:
                window = cv2.transform(window, jitter_matrix(plan.jitter[k].tolist(), cv2.mean(window)))
            # split writes into the three planes only from a contiguous source (else it copies)
            cv2.split(np.ascontiguousarray(window), [out_np[k, 0], out_np[k, 1], out_np[k, 2]])

    def _render_resized(self, src, rows, plan, out, order) -> None:
        s = self.size
        for k in order:
            y0, x0, h, w = int(plan.y0[k]), int(plan.x0[k]), int(plan.h[k]), int(plan.w[k])
            box_np = src[rows[k], y0 : y0 + h, x0 : x0 + w]
            if not box_np.flags.writeable:  # torch wraps only writeable arrays without a warning
                box_np = np.array(box_np)
            box = torch.from_numpy(box_np).permute(2, 0, 1)
            resized = F.interpolate(box[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            out[k].copy_(resized[0])


def jitter_matrix(factors: list[float], channel_means) -> np.ndarray:
    """:class:`FastColorJitter` of one image as a 3x4 colour matrix (for ``cv2.transform``).

    ``out_c = bcs * x_c + bc(1 - s) * gray + b(1 - c) * mean(gray)`` with ``gray = w . x`` is
    linear in the pixel: row c is ``bcs * e_c + bc(1 - s) * w``, plus the offset. OpenCV rounds
    to the nearest level where the torch version truncates; the -0.5 in the offset keeps the
    two within one level of each other (same distribution, to the level).
    """
    b, c, s = factors
    w = np.asarray(_GRAY, dtype=np.float64)
    mean = float(np.dot(w, np.asarray(channel_means[:3], dtype=np.float64)))
    m = np.empty((3, 4), dtype=np.float32)
    m[:, :3] = b * c * (1 - s) * w[None, :] + b * c * s * np.eye(3)
    m[:, 3] = b * (1 - c) * mean - 0.5
    return m


_CV2: list = []


def _cv2():
    """OpenCV (installed with albumentations) or ``None``; imported once."""
    if not _CV2:
        try:
            import cv2
        except ImportError:
            cv2 = None
        _CV2.append(cv2)
    return _CV2[0]


def _center_offset(length: int, size: int) -> int:
    """Top (left) of ``v2.CenterCrop(size)`` in source pixels; negative = zero padding first."""
    pad = (size - length) // 2 if size > length else 0
    padded = max(length, size)
    return int(round((padded - size) / 2.0)) - pad


def rrc_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rrc_params` for ``n`` images at once: the same distribution of boxes.

    Ten candidate (area, aspect) draws per image; the first that fits is taken, else
    torchvision's central fallback. Returns ``(top, left, h, w)`` arrays.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, dtype=torch.float64, generator=g))
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * torch.rand(n, 10, dtype=torch.float64, generator=g))
    w = torch.round(torch.sqrt(target * aspect)).long().numpy()
    h = torch.round(torch.sqrt(target / aspect)).long().numpy()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    bh, bw = h[rows, first], w[rows, first]
    fb = _rrc_fallback(height, width, ratio)
    none = ~ok.any(axis=1)
    bh[none], bw[none] = fb[2], fb[3]
    top = _randint(n, height - bh, g)
    left = _randint(n, width - bw, g)
    top[none], left[none] = fb[0], fb[1]
    return top, left, bh, bw


# ---------------------------------------------------------------------------------------------
# the policies


@dataclass(frozen=True)
class Policy:
    """One augmentation policy: its per-item builder and (when it has one) its batched builder."""

    name: str
    help: str
    item: Callable[[TrainConfig], ItemTransform]
    batch: Callable[[TrainConfig, bool], BatchAugment] | None = None  # (cfg, jitter_in_loader)


POLICIES: dict[str, Policy] = {}


def register_policy(policy: Policy) -> Policy:
    """Add a policy to :data:`POLICIES` (a duplicate name is an error)."""
    if policy.name in POLICIES:
        raise ValueError(f"augmentation policy '{policy.name}' is already registered")
    POLICIES[policy.name] = policy
    return policy


def get_policy(name: str) -> Policy:
    """The policy called ``name``; a :class:`ConfigError` listing the valid names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"train: unknown augment '{name}' (valid: {', '.join(POLICIES)})") from None


def _jitter_op(cfg: TrainConfig) -> list[torch.nn.Module]:
    return [FastColorJitter(cfg.color_jitter)] if cfg.color_jitter > 0 else []


def _default_item(cfg: TrainConfig) -> ItemTransform:
    return ItemPipeline(
        [FastRandomCrop(cfg.img_size, cfg.crop_padding), FastHorizontalFlip(cfg.hflip), *_jitter_op(cfg)]
    )


def _default_batch(cfg: TrainConfig, jitter_in_loader: bool) -> BatchAugment:
    jitter = cfg.color_jitter if jitter_in_loader else 0.0
    return BatchAugment(cfg.img_size, "crop", cfg.crop_padding, cfg.hflip, jitter)


def _rrc_item(cfg: TrainConfig) -> ItemTransform:
    return ItemPipeline(
        [
            FastRandomResizedCrop(cfg.img_size, tuple(cfg.rrc_scale)),
            FastHorizontalFlip(cfg.hflip),
            *_jitter_op(cfg),
        ]
    )


def _rrc_batch(cfg: TrainConfig, jitter_in_loader: bool) -> BatchAugment:
    jitter = cfg.color_jitter if jitter_in_loader else 0.0
    return BatchAugment(cfg.img_size, "rrc", 0, cfg.hflip, jitter, scale=tuple(cfg.rrc_scale))


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


def _strong_item(cfg: TrainConfig) -> ItemTransform:
    return AlbumentationsItems(strong_compose(cfg.img_size, cfg.rrc_scale, cfg.hflip, cfg.color_jitter))


register_policy(
    Policy(
        "default",
        "random crop img_size (after crop_padding) + flip + colour jitter (seed 001)",
        _default_item,
        _default_batch,
    )
)
register_policy(
    Policy(
        "rrc",
        "RandomResizedCrop(img_size, scale=rrc_scale) + flip + colour jitter (crop_padding unused)",
        _rrc_item,
        _rrc_batch,
    )
)
register_policy(
    Policy(
        "strong",
        "albumentations: RandomResizedCrop, shift-scale-rotate, flip, jitter, JPEG, coarse dropout (per item)",
        _strong_item,
    )
)


# ---------------------------------------------------------------------------------------------
# mixup / cutmix


def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot rows (timm's convention: off = smoothing / classes)."""
    off = smoothing / num_classes
    return F.one_hot(targets, num_classes).float() * (1 - smoothing) + off


class Mixer:
    """Mixup/CutMix of a normalised float batch: ``(images, targets) -> (images, soft targets)``.

    Built on ``timm.data.Mixup`` (batch mode; label smoothing passed through, so the loss takes
    the soft targets as they are). timm draws from numpy's global generator; the mixer runs it
    on a private numpy state instead (swapped in and out around each call, main thread only),
    reseeded by :meth:`set_epoch`, so it neither depends on nor shifts anyone else's stream.

    timm mixes a batch with its reverse and needs an even size: an odd batch mixes its first
    N-1 images and gives the last one its own smoothed target.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        from timm.data import Mixup

        self.num_classes = num_classes
        self.smoothing = cfg.label_smoothing
        self.seed = cfg.seed
        self._mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mix_prob,
            mode="batch",
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed from ``(seed, epoch, rank)``; call before each epoch (resume-exact)."""
        seed = mix_seed(self.seed, epoch, process_rank(), "mix") % 2**32
        self._state = np.random.RandomState(seed).get_state()

    @contextlib.contextmanager
    def _private_numpy(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._state)
        try:
            yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(images)
        even = n - n % 2
        soft = smooth_one_hot(targets, self.num_classes, self.smoothing)
        if even:
            with self._private_numpy():
                _, mixed = self._mixup(images[:even], targets[:even])  # in place on the view
            soft[:even] = mixed.to(soft.dtype)
        return images, soft


def build_mixer(cfg: TrainConfig, num_classes: int) -> Mixer | None:
    """Mixup/CutMix for the training loop, or ``None`` when both alphas are 0 (off)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixer(cfg, num_classes)
