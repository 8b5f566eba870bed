"""Batched augmentation: every random parameter of a batch drawn at once, the batch rendered
straight out of the packed uint8 array (crops, flips, colour jitter as one 3x4 colour matrix per
image, by OpenCV), or the jitter left to a tensor operation on the training device. Draws the
same distribution as the per-item form (:mod:`pipeline.data.transforms`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.transforms import (
    _GRAY,
    RRC_RATIO,
    _rrc_fallback,
)

if TYPE_CHECKING:
    pass


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
