"""Heads for any backbone: GeM pooling, an embedding neck, linear / ArcFace / sub-center ArcFace
classifiers with dynamic margins, and L2-normalised embeddings for retrieval.

Papers: Radenović et al. 2018, "Fine-tuning CNN Image Retrieval with No Human Annotation" (GeM);
Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"; Deng et al.
2020, "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces"; Ha et al.
2020, "Google Landmark Recognition 2020 Competition Third Place Solution" (dynamic margins
``m_c = a * n_c^(-1/4) + b``, also used with sub-center ArcFace by Henkel & Singer's 1st place).

The model is ``backbone feature map -> pool -> neck -> head``:

* **feature map**: ``forward_features`` (timm's convention; the project's own families have it)
  or a row of :data:`_ADAPTERS` (torchvision GoogLeNet/AlexNet). The backbone's own pooling and
  classifier are dropped: a dry run (:func:`probe_features`) finds every module the feature path
  never calls (timm's classifier, VGG's pre-logits MLP, ConvNeXt's head norm, ...) and replaces it
  by ``nn.Identity``, so every parameter left gets a gradient (DDP refuses unused ones).
  Token outputs (ViT) use the model's own token pooling (``forward_head(pre_logits=True)``).
* **pool**: ``avg`` or ``gem`` (:class:`GeM`, learnable ``p``).
* **neck**: ``none`` or ``linear`` (Linear -> BatchNorm1d -> PReLU of ``embedding_size``).
* **head**: ``linear``, ``arcface`` or ``subcenter_arcface`` (:class:`ArcMarginHead`).

With the defaults (avg, none, linear) :func:`pipeline.models.create_model` returns the plain
backbone, unchanged (old checkpoints load), with :func:`embed` and ``needs_target`` attached.

Margin heads are trained as ``model(x, target)`` and return the margin logits (cross-entropy on
them is the ArcFace loss); in eval mode, or without a target, they return ``s * cos`` without
margin, so softmax gives probabilities and everything after training is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import PipelineError, close_matches

log = logging.getLogger(__name__)

POOLS = ("avg", "gem")
NECKS = ("none", "linear")
HEADS = ("linear", "arcface", "subcenter_arcface")
MARGIN_HEADS = ("arcface", "subcenter_arcface")

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- pooling and neck


def _float32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the block (the meta device has no autocast)."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean(clamp(x, eps)^p))^(1/p)`` over H and W -> (N, C).

    ``p = 1`` is average pooling, ``p -> inf`` max pooling; ``learnable=True`` trains ``p``
    (stored as a parameter ``p``; otherwise a buffer). The clamp assumes non-negative activations
    (ReLU networks): negative entries (nets ending in a norm layer) count as ``eps``. Computed in
    float32 under autocast: ``x^p`` of bf16 values loses too much precision.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if not (math.isfinite(p) and p > 0):
            raise PipelineError(f"GeM: p must be a finite number > 0, got {p}")
        init = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(init)
        else:
            self.register_buffer("p", init)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        with _float32(x):
            x = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
            return x.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().float().item() if self.p.device.type != 'meta' else '?'}, eps={self.eps}"


class AvgPool(nn.Module):
    """Global average pooling (N, C, H, W) -> (N, C); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def linear_neck(in_features: int, embedding_size: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> PReLU: the embedding layer of the GLR winners."""
    return nn.Sequential(
        OrderedDict(
            fc=nn.Linear(in_features, embedding_size),
            bn=nn.BatchNorm1d(embedding_size),
            act=nn.PReLU(),
        )
    )


# ----------------------------------------------------------------------------- classifiers


class LinearHead(nn.Linear):
    """A plain linear classifier that accepts (and ignores) a target, like the margin heads."""

    needs_target = False

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def dynamic_margins(
    class_counts: Sequence[float] | torch.Tensor, m_max: float, m_min: float, power: float = 0.25
) -> torch.Tensor:
    """Per-class ArcFace margins from class frequencies: ``a * n_c^(-power) + b`` (Ha et al. 2020).

    ``a`` and ``b`` are chosen so the largest class gets ``m_min`` and the smallest ``m_max``
    (small classes get larger margins). The scaling makes the result independent of a common
    factor on the counts, so the label map's counts serve as well as one fold's. Equal counts give
    ``m_max`` everywhere (plain ArcFace); a class with 0 images counts as 1 (it never is a target).
    """
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.dim() != 1 or n.numel() == 0:
        raise PipelineError(f"class_counts must be a non-empty list of per-class counts, got shape {tuple(n.shape)}")
    bad = torch.nonzero(~torch.isfinite(n) | (n < 0))
    if len(bad):
        i = int(bad[0])
        raise PipelineError(f"class_counts[{i}] = {n[i].item()} is not a count (finite and >= 0)")
    if not 0 <= m_min <= m_max:
        raise PipelineError(f"dynamic margins need 0 <= margin_min <= arcface_m, got {m_min} and {m_max}")
    t = n.clamp(min=1).pow(-power)
    span = t.max() - t.min()
    if span <= 1e-12:
        return torch.full_like(t, m_max, dtype=torch.float32)
    return (m_min + (m_max - m_min) * (t - t.min()) / span).float()


class ArcMarginHead(nn.Module):
    """ArcFace / sub-center ArcFace classifier on L2-normalised features and class centres.

    ``cos_c = max_j <x/|x|, W_cj/|W_cj|>`` over ``subcenters`` centres per class (``subcenters=1``
    is ArcFace). Training with a target: the target logit becomes ``cos(theta + m_y)``, all logits
    are multiplied by ``s``. ``margins`` holds one margin per class (a buffer, saved in
    checkpoints): constant ``m`` or :func:`dynamic_margins`.

    Past ``theta + m > pi`` the function ``cos(theta + m)`` turns back up, which would reward a
    larger angle; there the target logit is ``cos(theta) - m * sin(m)`` instead (the reference
    ArcFace's threshold ``cos(pi - m)``, continuous at the switch and decreasing in theta).
    ``easy_margin=True`` applies the margin only where ``cos(theta) > 0`` (theta < 90 degrees).

    Targets: class indices (N,), negative ones (e.g. non-landmark rows) get no margin; or soft
    targets (N, C) from mixup/cutmix, which move each logit towards its margin version in
    proportion to its target weight (equal to the index form for one-hot rows). Cosines and
    logits are float32 even under autocast (``s * cos`` amplifies bf16 rounding 30-fold).
    """

    needs_target = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float = 30.0,
        m: float = 0.3,
        subcenters: int = 1,
        margins: torch.Tensor | None = None,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if subcenters < 1:
            raise PipelineError(f"subcenters must be >= 1, got {subcenters}")
        self.in_features, self.num_classes, self.subcenters = in_features, num_classes, subcenters
        self.s, self.easy_margin = float(s), easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's init (direction only matters)
        if margins is None:
            margins = torch.full((num_classes,), float(m))
        margins = torch.as_tensor(margins, dtype=torch.float32)
        if margins.shape != (num_classes,):
            raise PipelineError(f"margin head: {margins.numel()} margins for {num_classes} classes")
        self.register_buffer("margins", margins.clone())

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) float32 cosine to the nearest sub-centre of each class."""
        with _float32(x):
            cos = F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cos

    def add_margin(self, cos: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``cos(theta + m)`` with the threshold (or easy-margin) rule of the class docstring."""
        sin = (1.0 - cos * cos).clamp(min=1e-7).sqrt()  # clamp: finite gradient at |cos| = 1
        phi = cos * torch.cos(m) - sin * torch.sin(m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > torch.cos(math.pi - m), phi, cos - m * torch.sin(m))

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(x)
        if target is None or not self.training:
            return self.s * cos
        if target.dim() == 2:  # soft targets (mixup / cutmix)
            if target.shape != cos.shape:
                shapes = f"{tuple(target.shape)} for logits {tuple(cos.shape)}"
                raise PipelineError(f"margin head: soft targets of shape {shapes}")
            phi = self.add_margin(cos, self.margins.unsqueeze(0))
            return self.s * (cos + target.float() * (phi - cos))
        t = target.long().view(-1, 1)
        idx = t.clamp(min=0)
        cos_t = cos.gather(1, idx)
        phi = torch.where(t >= 0, self.add_margin(cos_t, self.margins[idx]), cos_t)
        return self.s * cos.scatter(1, idx, phi)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, subcenters={self.subcenters}, "
            f"s={self.s}, easy_margin={self.easy_margin}"
        )


# ----------------------------------------------------------------------------- feature maps of any backbone


def _forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x)


_GOOGLENET_LAYERS = (
    "conv1",
    "maxpool1",
    "conv2",
    "conv3",
    "maxpool2",
    "inception3a",
    "inception3b",
    "maxpool3",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "maxpool4",
    "inception5a",
    "inception5b",
)


def _googlenet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision GoogLeNet up to inception5b (1024 channels), before its pool/dropout/fc."""
    x = model._transform_input(x)
    for name in _GOOGLENET_LAYERS:
        x = getattr(model, name)(x)
    return x


def _alexnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision AlexNet's conv trunk (256 channels); the head replaces its 4096-wide MLP."""
    return model.features(x)


def _adapters() -> list[tuple[type, FeatureFn]]:
    """Backbones without ``forward_features``: (class, feature-map function)."""
    from torchvision.models import AlexNet, GoogLeNet

    return [(GoogLeNet, _googlenet_features), (AlexNet, _alexnet_features)]


def feature_fn(model: nn.Module, name: str) -> FeatureFn:
    """The function giving ``model``'s last feature map; one clear error when there is none."""
    for cls, fn in _adapters():
        if isinstance(model, cls):
            return fn
    if callable(getattr(model, "forward_features", None)):
        return _forward_features
    raise PipelineError(
        f"model '{name}' ({type(model).__name__}) cannot take a pooling/neck/head: it has no "
        "forward_features() and no feature adapter in pipeline/models/heads.py"
    )


def _layout(model: nn.Module, shape: torch.Size) -> str:
    if len(shape) == 4:
        return "nhwc" if "NHWC" in str(getattr(model, "output_fmt", "NCHW")) else "nchw"
    if len(shape) == 3:
        return "tokens"
    if len(shape) == 2:
        return "vector"
    raise PipelineError(f"feature output of shape {tuple(shape)} is not a feature map")


def _first_in_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


@dataclass(frozen=True)
class Probe:
    """What a dry run of a backbone's feature path found."""

    layout: str  # nchw | nhwc | tokens | vector
    num_features: int  # width of the pooled features
    unused: tuple[str, ...]  # top-most modules with parameters that the feature path never calls


def probe_features(model: nn.Module, features: FeatureFn, size: int) -> Probe:
    """Run ``features`` once on a ``size`` x ``size`` zero image (eval mode, no grad; on the
    model's device, so a model built on the meta device costs nothing) and record its output
    layout, pooled width and the parameter-holding modules it never called."""
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, _args: called.add(id(mod))) for m in model.modules()]
    modes = {m: m.training for m in model.modules()}
    p = next(model.parameters())
    x = torch.zeros(1, _first_in_channels(model), size, size, device=p.device, dtype=p.dtype)
    try:
        model.eval()
        with torch.no_grad():
            out = features(model, x)
            layout = _layout(model, out.shape)
            if layout == "tokens":
                if not callable(getattr(model, "forward_head", None)):
                    raise PipelineError(f"token features {tuple(out.shape)} but no forward_head() to pool them")
                out = model.forward_head(out, pre_logits=True)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    width = out.shape[1] if layout in ("nchw", "vector") else out.shape[-1]
    unused: list[str] = []
    # a called module that uses its children's weights directly (F.conv2d(x, self.key.weight)),
    # e.g. ResNeAt's fused attention, never calls them: they are in use all the same
    functional = [
        n for n, m in model.named_modules() if n and id(m) in called and getattr(m, "uses_child_weights", False)
    ]
    for mod_name, mod in model.named_modules():
        if not mod_name or any(mod_name.startswith(u + ".") for u in unused + functional):
            continue
        if id(mod) not in called and any(True for _ in mod.parameters()):
            inner = [id(m) for m in mod.modules()]
            if not any(i in called for i in inner):
                unused.append(mod_name)
    return Probe(layout, int(width), tuple(unused))


def _drop_modules(model: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())


# ----------------------------------------------------------------------------- the model


class HeadedModel(nn.Module):
    """``backbone feature map -> pool -> neck -> head`` (see the module docstring).

    ``forward(x, target=None)`` gives logits (margin logits when training a margin head with a
    target); :meth:`embed` gives L2-normalised embeddings; ``needs_target`` says whether training
    should pass the target. State-dict keys: ``backbone.*``, ``pool.p`` (GeM), ``neck.*``, ``head.*``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        features: FeatureFn,
        layout: str,
        num_features: int,
        pool: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        embedding_size: int,
    ) -> None:
        super().__init__()
        self.backbone, self.pool, self.neck, self.head = backbone, pool, neck, head
        self._features = features
        self.layout = layout
        self.num_features = num_features  # pooled backbone width
        self.embedding_size = embedding_size  # width of embed() (neck output, or num_features)
        self.needs_target = bool(getattr(head, "needs_target", False))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (or tokens)."""
        return self._features(self.backbone, x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_features) pooled backbone features."""
        f = self.forward_features(x)
        if self.layout == "tokens":
            return self.backbone.forward_head(f, pre_logits=True)
        if self.layout == "vector":
            return f
        if self.layout == "nhwc":
            f = f.permute(0, 3, 1, 2)
        return self.pool(f)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, embedding_size) float32 L2-normalised embeddings (neck output, or pooled features)."""
        return F.normalize(self.neck(self.pooled(x)).float(), dim=1)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.neck(self.pooled(x)), target)

    def get_classifier(self) -> nn.Module:
        return self.head

    def head_modules(self) -> list[nn.Module]:
        """Everything that is not the backbone: what ``freeze_backbone`` leaves trainable."""
        return [self.pool, self.neck, self.head]

    def reparameterize(self) -> nn.Module:
        """Fuse re-parameterisable backbone blocks (VAN-RepLK, RepLKNet) for inference."""
        if hasattr(self.backbone, "reparameterize"):
            self.backbone.reparameterize()
        return self


@dataclass(frozen=True)
class HeadConfig:
    """The head keys of ``TrainConfig`` (see its help texts), validated by :meth:`check`."""

    pool: str = "avg"
    neck: str = "none"
    embedding_size: int = 512
    head: str = "linear"
    arcface_s: float = 30.0
    arcface_m: float = 0.3
    subcenters: int = 3
    dynamic_margin: bool = False
    margin_min: float = 0.05
    class_counts: Sequence[float] | None = None

    @property
    def is_default(self) -> bool:
        """avg + no neck + linear: the plain backbone, exactly as built without a head."""
        return self.pool == "avg" and self.neck == "none" and self.head == "linear"

    def check(self, name: str, num_classes: int) -> None:
        """One clear error for an unknown name or a bad value, before anything is built."""
        for key, valid in (("pool", POOLS), ("neck", NECKS), ("head", HEADS)):
            value = getattr(self, key)
            if value not in valid:
                raise PipelineError(f"model '{name}': unknown {key} '{value}' ({close_matches(str(value), valid)})")
        if self.neck == "linear" and not (isinstance(self.embedding_size, int) and self.embedding_size >= 1):
            raise PipelineError(
                f"model '{name}': embedding_size must be a positive integer, got {self.embedding_size!r}"
            )
        if self.head not in MARGIN_HEADS:
            return
        if not (math.isfinite(self.arcface_s) and self.arcface_s > 0):
            raise PipelineError(f"model '{name}': arcface_s must be > 0, got {self.arcface_s}")
        if not (math.isfinite(self.arcface_m) and 0 <= self.arcface_m < math.pi / 2):
            raise PipelineError(f"model '{name}': arcface_m must be in [0, pi/2), got {self.arcface_m}")
        if self.head == "subcenter_arcface" and not (isinstance(self.subcenters, int) and self.subcenters >= 1):
            raise PipelineError(f"model '{name}': subcenters must be a positive integer, got {self.subcenters!r}")
        if self.dynamic_margin:
            if self.class_counts is None:
                raise PipelineError(
                    f"model '{name}': dynamic_margin needs class_counts (training images per class, "
                    "e.g. the 'count' column of label_map.csv)"
                )
            if len(self.class_counts) != num_classes:
                raise PipelineError(
                    f"model '{name}': class_counts has {len(self.class_counts)} entries for {num_classes} classes"
                )

    def build_head(self, in_features: int, num_classes: int) -> nn.Module:
        if self.head == "linear":
            return LinearHead(in_features, num_classes)
        margins = None
        if self.dynamic_margin:
            margins = dynamic_margins(self.class_counts, self.arcface_m, self.margin_min)
        k = self.subcenters if self.head == "subcenter_arcface" else 1
        return ArcMarginHead(in_features, num_classes, self.arcface_s, self.arcface_m, k, margins)


def attach_head(model: nn.Module, name: str, num_classes: int, cfg: HeadConfig, probe_size: int) -> HeadedModel:
    """Wrap a built backbone into ``pool -> neck -> head`` (the backbone's own head is dropped).

    ``probe_size`` is an input side the backbone accepts (its minimum): the dry run of
    :func:`probe_features` uses it. Raises :class:`PipelineError` naming the model when it cannot
    take the head (no feature map; GeM on token or vector features).
    """
    cfg.check(name, num_classes)
    features = feature_fn(model, name)
    probe = probe_features(model, features, probe_size)
    if cfg.pool == "gem" and probe.layout in ("tokens", "vector"):
        what = "tokens (N, L, C)" if probe.layout == "tokens" else "already pooled vectors"
        raise PipelineError(f"model '{name}' cannot take pool='gem': its features are {what}, not a spatial map")
    if probe.unused:
        log.debug("model '%s': dropping modules the head replaces: %s", name, ", ".join(probe.unused))
    _drop_modules(model, probe.unused)
    pool = GeM(3.0) if cfg.pool == "gem" else AvgPool()
    width = probe.num_features
    neck: nn.Module = nn.Identity()
    if cfg.neck == "linear":
        neck, width = linear_neck(probe.num_features, cfg.embedding_size), cfg.embedding_size
    device = next(model.parameters()).device
    head = cfg.build_head(width, num_classes)
    return HeadedModel(model, features, probe.layout, probe.num_features, pool, neck, head, width).to(device)


# ----------------------------------------------------------------------------- the plain model


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings of any model: its ``embed`` or, for a plain backbone, the
    (N, D) features its classifier reads (captured by a hook, so every family works as is)."""
    if isinstance(model, HeadedModel):
        return model.embed(x)
    from pipeline.models.utils import classifier_of

    captured: list[torch.Tensor] = []
    hook = classifier_of(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return F.normalize(captured[-1].flatten(1).float(), dim=1)


def as_plain(model: nn.Module) -> nn.Module:
    """Give a plain backbone the head API (``embed``, ``needs_target=False``); nothing else changes."""
    model.needs_target = False
    model.embed = types.MethodType(embed, model)
    return model
