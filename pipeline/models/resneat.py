"""ResNeAt-50: ResNeXt-50 (32x4d) whose last 1x1 conv is an attention unit AU_C (seed 001, 3.2).

Report: "Pre-activation and self-attention in image classification" (seed 001, section 3.2,
Fig. 8, Table 1), built on Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural
Networks" (ResNeXt) and Vaswani et al. 2017 (scaled dot-product attention). In each bottleneck
the last 1x1 conv is replaced by

    K = CV_C(x), Q = CV_C(x), V = AP(CV_C(x)), O = CV_C(x)
    Scale = sigmoid(softmax(Q K^T / sqrt(s)) V)         K, Q: (ch, s), V, Scale: (ch, 1)
    out = Scale * O + shortcut

with ``CV_C`` a grouped convolution (C = 32 groups), ``AP`` adaptive average pooling to 1x1,
``ch`` the output channels and ``s = H * W``: an attention between channels whose result
re-weights the channels of ``O``.

Choices where the report is ambiguous (each checked in ``tests/test_models_zoo1.py``):

* CV_C is a **1x1** grouped conv (width -> out channels, 32 groups, no bias): that is the only
  reading that reproduces the report's arithmetic for the 256-d block,
  ``256*128 + 128*3*3*4 + 128*256*4/32 = 41,472`` (four grouped 1x1 convs of 128*256/32 = 1,024
  weights each), against 70,144 for ResNeXt and 212,992 for a width-128 ResNet block.
  K, Q, V and O are four separate convs (one conv with 4x the outputs would mix the groups).
* The ``+ x`` of the report cannot be the AU's own input (width 128, output 256): it is the
  bottleneck's shortcut, as in Fig. 8. At a stage transition (stride 2 or a channel change) the
  shortcut is ResNeXt's projection (1x1 conv with stride + BN), unchanged.
* O is followed by BN (the ``bn3`` of ResNeXt; zero-initialised like timm's ResNeXt baseline, so
  every block starts as the identity), and a ReLU follows the sum as in the ResNeXt block of
  Fig. 8. K, Q and V have no BN or activation (the formulas have none). Softmax is over the last
  axis (each channel's attention over all channels). The stride stays in the 3x3 conv.
* The stem, stage depths (3-4-6-3), widths and head are ResNeXt-50 32x4d's (Table 1); the model is
  timm's ``ResNet`` with this block, so ``small_input=True`` uses the same CIFAR stem (3x3/1
  conv, no max-pool) as the other ResNets.

Cost: written as above, the attention adds ``ch^2 * s`` MACs per block for ``Q K^T`` (about
0.2 GMACs per block at 224 px, ~3.3 G for the 16 blocks): 6.10 GMACs for the net against
ResNeXt-50's 4.23, with fewer parameters. The unit computes the same function in a cheaper order
(see :class:`AttentionUnit`): where ``s`` is large against ``ch`` (stages 1-3 at 224 px) the logits
come from the Gram matrix of the unit's input, ``Wq (X X^T) Wk^T`` (~4x fewer MACs), so the
project's MAC counter, which counts the ops that run, gives 4.13 GMACs at 224 px. The logits are
formed and consumed in cache-sized blocks with a hand-written backward (the eager version's
passes over whole (B, ch, ch) tensors cost more than its matmuls). ``_reference_scale`` keeps the
formula op by op; ``tests/test_resneat_fused.py`` holds the fused path to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import ResNet

from pipeline.models.registry import register_model
from pipeline.models.standard import small_input_stem

PAPER = "Seed 001 report (ResNeAt); Xie et al. 2017, ResNeXt; Vaswani et al. 2017, attention"


# Logits are formed, used and dropped in blocks of at most this many elements (2 MB in bf16), so
# they stay near the core (L2 1 MB + L3 here): whole (B, ch, ch) tensors (67 MB per block in the
# last stage at batch 8) cost more in fresh-page faults and memory passes than the matmuls that fill
# them. Measured per unit (forward + backward, 1 thread, 224 px, batch 8): 2^20 against 2^19 is
# 1-12 % faster in stages 3-4 and equal in stage 2; 2^18 and 2^21 are slower.
_CHUNK_ELEMENTS = 1 << 20


def _reference_scale(au: AttentionUnit, x: torch.Tensor) -> torch.Tensor:
    """The report's formula as written (eager, one op per symbol): the yardstick of the fused path."""
    k = au.key(x).flatten(2)  # (B, ch, s)
    q = au.query(x).flatten(2)  # (B, ch, s)
    v = au.value(x).mean(dim=(2, 3)).unsqueeze(-1)  # AP -> (B, ch, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(k.shape[-1]), dim=-1)  # (B, ch, ch)
    return torch.sigmoid(attn @ v).unsqueeze(-1)


def _gram_is_cheaper(width: int, out_chs: int, groups: int, s: int) -> bool:
    """Whether ``Wq (X X^T) Wk^T`` costs fewer MACs than ``Q K^T`` (with Q, K convs) for this shape.

    Q K^T costs ``ch^2 s`` (+ ``2 ch wg s`` for the convs); through the Gram matrix of the input it
    costs ``w^2 s + w ch wg + ch^2 wg`` (``wg`` = input channels per group). With ``w = ch / 2``
    the Gram path is ~4x cheaper while ``s`` is large against ``ch`` (stages 1-3 at 224 px) and
    dearer in the last stage (ch 2048, s 49).
    """
    wg = width // groups
    direct = out_chs * out_chs * s + 2 * out_chs * wg * s
    gram = width * width * s + width * out_chs * wg + out_chs * out_chs * wg
    return gram < direct


def _attend_backward(
    logits: torch.Tensor, v: torch.Tensor, out: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``o = softmax(L) v`` for one block of rows: ``dL_ij = g_i p_ij (v_j - o_i)``, ``dv``.

    ``logits`` (n, r, ch) is overwritten; ``v`` (n, ch, 1), ``out`` and ``grad`` (n, r, 1).
    """
    gp = torch.softmax(logits, dim=-1).mul_(grad)  # g_i p_ij
    dv = gp.sum(dim=1).unsqueeze(-1)
    return gp.mul_(v.transpose(1, 2) - out), dv


def _blocks(batch: int, n_rows: int, row_elems: int, unit: int = 1) -> list[tuple[slice, slice]]:
    """(batch slice, row slice) pairs covering ``batch x n_rows`` with <= _CHUNK_ELEMENTS logits each.

    Rows are cut in multiples of ``unit`` (the rows of one group in the Gram path); whole items are
    grouped together when one item's logits fit.
    """
    per_item = n_rows * row_elems
    if per_item <= _CHUNK_ELEMENTS:
        step = _CHUNK_ELEMENTS // per_item
        return [(slice(b, b + step), slice(0, n_rows)) for b in range(0, batch, step)]
    rows = max(unit, _CHUNK_ELEMENTS // row_elems // unit * unit)
    return [(slice(b, b + 1), slice(r, r + rows)) for b in range(batch) for r in range(0, n_rows, rows)]


# the autocast whose state the fused Functions carry into their backward: the GPU's where there is
# one (a model trained there), else the CPU's (bf16 autocast on CPUs with native bf16)
_AMP_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _DirectAttention(torch.autograd.Function):
    """``softmax(q k^T) v`` with ``q, k: (B, ch, s)``, ``v: (B, ch, 1)``, block by block of rows.

    Why a Function: autograd would keep the (B, ch, ch) probabilities for the backward and run
    softmax, its backward and the bmm backward as separate passes over freshly allocated
    (B, ch, ch) tensors. Here each block's logits are recomputed in the backward (one bmm) and
    consumed while in cache.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type=_AMP_DEVICE)
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kt = k.transpose(1, 2)
        blocks = _blocks(q.shape[0], q.shape[1], k.shape[1])
        parts = [_matvec(torch.softmax(torch.bmm(q[b, r], kt[b]), dim=-1), v[b]) for b, r in blocks]
        out = _assemble(parts, blocks, (q.shape[0], q.shape[1], 1))
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type=_AMP_DEVICE)
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, out = ctx.saved_tensors
        grad = grad.to(out.dtype)
        dq = q.new_empty(q.shape)
        kt, qt = k.transpose(1, 2), q.transpose(1, 2)
        dkt = k.new_zeros(kt.shape, dtype=_acc(k))  # summed over row blocks: at least fp32
        dv = v.new_zeros(v.shape, dtype=_acc(v))
        for b, r in _blocks(q.shape[0], q.shape[1], k.shape[1]):
            dlogits, dv_part = _attend_backward(torch.bmm(q[b, r], kt[b]), v[b], out[b, r], grad[b, r])
            dq[b, r] = torch.bmm(dlogits, k[b])
            dkt[b] += torch.bmm(qt[b, :, r], dlogits)  # (s, ch): 20 % faster than dL^T q (ch, s)
            dv[b] += dv_part
        return dq, dkt.transpose(1, 2).to(k.dtype), dv.to(v.dtype)


class _GramAttention(torch.autograd.Function):
    """``softmax(L) v`` with ``L = Wq N`` (``Wq`` block-diagonal, one (og, wg) block per group).

    ``wq``: (g, og, wg), ``n``: (B, g, wg, ch) (``N = X X^T Wk^T``), ``v``: (B, ch, 1). The rows
    of group h of L are ``wq[h] @ n[:, h]``: logits are formed a few groups at a time, as in
    :class:`_DirectAttention`, and each group's ``dn`` is written once (no accumulation).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type=_AMP_DEVICE)
    def forward(ctx, wq: torch.Tensor, n: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, g, _, ch = n.shape
        og = wq.shape[1]
        blocks = _blocks(batch, g * og, ch, unit=og)
        parts = [_matvec(torch.softmax(_group_logits(wq, n, b, r, og), dim=-1), v[b]) for b, r in blocks]
        out = _assemble(parts, blocks, (batch, ch, 1))
        ctx.save_for_backward(wq, n, v, out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type=_AMP_DEVICE)
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        wq, n, v, out = ctx.saved_tensors
        grad = grad.to(out.dtype)
        batch, g, _, ch = n.shape
        og = wq.shape[1]
        dwq = wq.new_zeros(wq.shape, dtype=_acc(wq))
        dn = n.new_empty(n.shape)
        dv = v.new_zeros(v.shape, dtype=_acc(v))
        for b, r in _blocks(batch, g * og, ch, unit=og):
            logits = _group_logits(wq, n, b, r, og)
            dlogits, dv_part = _attend_backward(logits, v[b], out[b, r], grad[b, r])
            groups = slice(r.start // og, r.stop // og)
            dl = dlogits.view(dlogits.shape[0], -1, og, ch)  # (nb, gc, og, ch)
            w_blk, n_blk = wq[groups].to(dl.dtype), n[b, groups]
            dwq[groups] += torch.matmul(dl, n_blk.transpose(-1, -2)).sum(dim=0)
            dn[b, groups] = torch.matmul(w_blk.transpose(-1, -2), dl)
            dv[b] += dv_part
        return dwq.to(wq.dtype), dn, dv.to(v.dtype)


class _Gram(torch.autograd.Function):
    """``(X X^T, mean of X over s)`` for ``X: (B, w, s)``; backward ``dX = (dG + dG^T) X + dm / s``.

    One bmm (+ the mean's gradient as its bias) in ``X``'s own memory layout, where autograd would
    run two bmms, expand the mean's gradient to a full tensor and add the three, one of them in
    the other layout than ``X`` (a slow strided add).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type=_AMP_DEVICE)
    def forward(ctx, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(xf)
        return torch.bmm(xf, xf.transpose(1, 2)), xf.mean(dim=-1)

    @staticmethod
    @torch.amp.custom_bwd(device_type=_AMP_DEVICE)
    def backward(ctx, grad: torch.Tensor, grad_mean: torch.Tensor) -> torch.Tensor:
        (xf,) = ctx.saved_tensors
        sym = (grad + grad.transpose(1, 2)).to(xf.dtype)
        bias = (grad_mean / xf.shape[-1]).to(xf.dtype)
        if xf.stride(1) == 1:  # channels_last: (B, s, w) is the contiguous one; X^T S = (S X)^T
            return torch.baddbmm(bias.unsqueeze(1), xf.transpose(1, 2), sym).transpose(1, 2)
        return torch.baddbmm(bias.unsqueeze(-1), sym, xf)


def _group_logits(wq: torch.Tensor, n: torch.Tensor, b: slice, r: slice, og: int) -> torch.Tensor:
    """Rows ``r`` (whole groups) of ``L = Wq N`` for the batch items ``b``: (nb, rows, ch)."""
    groups = slice(r.start // og, r.stop // og)
    n_blk = n[b, groups]
    logits = torch.matmul(wq[groups].to(n_blk.dtype), n_blk)  # (nb, gc, og, ch)
    return logits.view(logits.shape[0], -1, logits.shape[-1])


def _matvec(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``bmm(p, v)`` for ``p: (n, r, ch)``, ``v: (n, ch, 1)``: one ``linear`` per item, 3x faster in bf16."""
    return torch.stack([F.linear(p_i, v_i.transpose(0, 1)) for p_i, v_i in zip(p, v)])


def _acc(t: torch.Tensor) -> torch.dtype:
    """Accumulator dtype for sums over blocks: fp32 for bf16/fp16 inputs, the input's own otherwise."""
    return torch.promote_types(t.dtype, torch.float32)


def _assemble(parts: list[torch.Tensor], blocks: list[tuple[slice, slice]], shape: tuple[int, ...]) -> torch.Tensor:
    """One (B, ch, 1) tensor from the per-block results."""
    out = parts[0].new_empty(shape)
    for part, (b, r) in zip(parts, blocks):
        out[b, r] = part
    return out


class AttentionUnit(nn.Module):
    """AU_C(x) without the residual: ``sigmoid(softmax(Q K^T / sqrt(s)) V) * O``.

    :meth:`scale` computes the report's formula (kept as :func:`_reference_scale`) in a cheaper
    but equal order: ``AP(CV(x)) = CV(AP(x))`` (a 1x1 conv without bias commutes with the mean),
    ``1/sqrt(s)`` folded into the query weights (ch x wg numbers, not ch x s), and the logits either
    as ``Q K^T`` through :class:`_ChannelSoftmaxAttention` or, where :func:`_gram_is_cheaper`,
    as ``Wq (X X^T) Wk^T`` with the grouped weights applied group by group.
    """

    uses_child_weights = True  # key/query/value weights are used directly (fused path): see heads.probe

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        groups: int = 32,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.groups = groups
        self.key = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.query = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.value = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.out = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False, **dd)
        self.norm = norm_layer(out_chs, **dd)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, ch, 1, 1) channel scale in (0, 1)."""
        width, s = x.shape[1], x.shape[2] * x.shape[3]
        ch, g = self.key.out_channels, self.groups
        wq = self.query.weight * (1.0 / math.sqrt(s))  # (ch, wg, 1, 1): the smaller operand
        if _gram_is_cheaper(width, ch, g, s):
            gram, mean = _Gram.apply(x.flatten(2))  # (B, w, w), symmetric; (B, w)
            v = self._value(mean)
            n = self._gram_times_key(gram)
            out = _GramAttention.apply(wq.view(g, ch // g, width // g), n, v.to(n.dtype))
        else:
            v = self._value(x.mean(dim=(2, 3)))
            # q row-major once (a channels_last conv output is (B, ch, s) transposed): else every
            # block's bmm, forward, recompute and backward, copied its rows again
            q = F.conv2d(x, wq, groups=g).flatten(2).contiguous()
            k = self.key(x).flatten(2)
            out = _DirectAttention.apply(q, k, v.to(q.dtype))
        return torch.sigmoid(out).unsqueeze(-1)

    def _value(self, mean: torch.Tensor) -> torch.Tensor:
        """``V = AP(CV(x)) = CV(AP(x))`` (a 1x1 conv without bias commutes with the mean): (B, ch, 1)."""
        v = F.conv2d(mean[:, :, None, None], self.value.weight, groups=self.groups)
        return v.flatten(1).unsqueeze(-1)

    def _gram_times_key(self, gram: torch.Tensor) -> torch.Tensor:
        """``N = G Wk^T`` as a contiguous (B, g, wg, ch), so that ``Q K^T = Wq N`` group by group.

        Group h of ``N``'s columns is ``G[:, group h] Wk_h^T``: one bmm over the groups reads G's
        column blocks in place and leaves the result to be copied in runs of ``og`` numbers. The
        earlier ``Wk G`` (rows) needed a full element-wise transpose of ``N`` and of its gradient,
        ~20 ms per stage-3 unit at 224 px. The gradient reaching ``G`` is that of ``G^T`` (the
        same, ``G`` being symmetric; :class:`_Gram` symmetrises it).
        """
        b, w = gram.shape[:2]
        ch, g = self.key.out_channels, self.groups
        wg, og = w // g, ch // g
        cols = gram.reshape(b * w, g, wg).transpose(0, 1)  # (g, B*w, wg): a view
        wkt = self.key.weight.view(g, og, wg).transpose(1, 2).to(gram.dtype)  # (g, wg, og)
        return torch.bmm(cols, wkt).transpose(0, 1).reshape(b, g, wg, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the (B, ch, H, W) map first: with the (B, ch, 1, 1) scale as the first operand, the
        # broadcast multiply and its backward ran 2-5x slower on channels_last maps (CPU, bf16)
        return self.norm(self.out(x)) * self.scale(x)


class ResNeAtBottleneck(nn.Module):
    """ResNeXt bottleneck (1x1, grouped 3x3) with AU_C as its last layer; timm ``Bottleneck`` API."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
        base_width: int = 4,
        reduce_first: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop_path: nn.Module | None = None,
        device=None,
        dtype=None,
        **_: object,  # timm passes attn_layer / aa_layer / drop_block: not used by ResNeAt
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, **dd)
        self.bn1 = norm_layer(width, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(
            width,
            width,
            3,
            stride,
            padding=first_dilation,
            dilation=first_dilation,
            groups=cardinality,
            bias=False,
            **dd,
        )
        self.bn2 = norm_layer(width, **dd)
        self.act2 = act_layer(inplace=True)
        self.au = AttentionUnit(width, outplanes, groups=cardinality, norm_layer=norm_layer, **dd)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.au.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.au(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act3(x + shortcut)


def resneat(
    layers: tuple[int, ...], num_classes: int, small_input: bool, cardinality: int = 32, base_width: int = 4, **kw
) -> ResNet:
    model = ResNet(
        block=ResNeAtBottleneck,
        layers=layers,
        num_classes=num_classes,
        cardinality=cardinality,
        base_width=base_width,
        **kw,
    )
    return small_input_stem(model) if small_input else model


@register_model(family="resneat", min_size=32, min_size_small=8, paper=PAPER)
def resneat50(num_classes: int = 1000, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    """ResNeAt-50 (32 groups, Table 1 of seed 001)."""
    return resneat((3, 4, 6, 3), num_classes, small_input, **kw)
