"""Test-time augmentation: which views of an image are averaged, and the check against a model's
minimum input size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torchvision.transforms.v2 import functional as TF

from common.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.runs.load import RunInfo


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: views averaged in probability space.

    A scale ``s`` shows the same field of view at ``s`` times the pixels: the cached image is
    resized by ``s`` and centre-cropped to ``round(s * img_size)`` (``s = 1`` is the plain eval
    crop). ``flip`` adds the mirrored image of every scale.
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def on(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)

    @property
    def n_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def crop_sizes(self, img_size: int) -> list[int]:
        return [round(s * img_size) for s in self.scales]

    def as_dict(self) -> dict:
        return {"flip": self.flip, "scales": list(self.scales)}

    def views(self, images: torch.Tensor, img_size: int) -> Iterator[torch.Tensor]:
        """uint8 (N, 3, H, W) cached images -> each view's uint8 input batch."""
        h, w = images.shape[-2:]
        for s in self.scales:
            if s == 1.0:
                x = TF.center_crop(images, [img_size, img_size])
            else:
                x = TF.resize(images, [round(s * h), round(s * w)], antialias=True)
                x = TF.center_crop(x, [round(s * img_size)] * 2)
            yield x
            if self.flip:
                yield x.flip(-1)


def check_tta(tta: TTA, info: RunInfo, model: torch.nn.Module) -> None:
    """One error line when a TTA scale makes inputs smaller than the model accepts."""
    need = getattr(model, "min_size", None)
    if need is None:
        return
    for s, side in zip(tta.scales, tta.crop_sizes(info.cfg.img_size)):
        if side < need:
            raise ConfigError(
                f"predict: tta_scales {s} gives {side}x{side} inputs (img_size {info.cfg.img_size}) but "
                f"'{info.model_name}' needs at least {need}x{need}"
            )
