"""Modulated deformable convolution (DCNv2) with a pure-PyTorch fallback.

:func:`deform_conv2d` has the signature and the semantics of ``torchvision.ops.deform_conv2d`` and
uses it when torchvision imports; otherwise (the usual case beside a CPU-only torch wheel)
:func:`deform_conv2d_torch` runs: a vectorised gather of the four bilinear neighbours by index,
with torchvision's sample positions and zero-outside rule, so both agree to float rounding (unlike
``grid_sample``, whose coordinate normalisation adds its own rounding). When the conv does not widen
the channels it projects first (``W_k · x`` per kernel point k, then samples those ``out_c`` planes):
sampling is linear, so this is the same sum with fewer values to gather.

Conventions (torchvision's):
- ``offset`` is ``(N, 2*G_off*kh*kw, Ho, Wo)``; within an offset group, kernel point
  ``k = row*kw + col`` owns channels ``2k`` (dy) and ``2k+1`` (dx);
- sample position = ``out_row*stride - pad + row*dilation + dy`` (likewise for columns);
- bilinear sampling where every neighbour outside the input counts as 0;
- ``mask`` ``(N, G_off*kh*kw, Ho, Wo)`` scales kernel point ``k`` for all channels of its group.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

try:  # torchvision is optional: its wheels only import beside the exact torch they were built for
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except Exception:  # ImportError, or a RuntimeError/AttributeError from a mismatched build
    _tv_deform_conv2d = None

HAS_TORCHVISION = _tv_deform_conv2d is not None

Backend = Literal["auto", "torchvision", "torch"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bilinear_taps(
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The four bilinear neighbours of every sample: ``[(flat index, weight)]``, each ``(n, g, k, P)``.

    ``flat index`` = row * W + column into an H x W plane (clamped; an outside neighbour has weight 0
    instead), ``weight`` includes the modulation mask. P = Ho * Wo, k = kh * kw, g = offset groups.
    """
    h, w = size
    kh, kw = kernel
    n, _, ho, wo = offset.shape
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    dtype, device = offset.dtype, offset.device
    off = offset.view(n, og, k, 2, ho * wo)
    # Base positions (k, P) by broadcasting (kernel row/col x output row/col) rather than
    # repeat / repeat_interleave: the ONNX exporter lowers those with a symbolic count (a dynamic
    # H x W) to Expand / Tile shapes of the wrong rank, a graph that fails at its first inference.
    # The sums are of small integers, so they are exact either way.
    ky = torch.arange(kh, device=device, dtype=dtype) * dilation[0]
    kx = torch.arange(kw, device=device, dtype=dtype) * dilation[1]
    oy = torch.arange(ho, device=device, dtype=dtype) * stride[0] - padding[0]
    ox = torch.arange(wo, device=device, dtype=dtype) * stride[1] - padding[1]
    base_y = (oy.view(1, 1, ho, 1) + ky.view(kh, 1, 1, 1)).expand(kh, kw, ho, wo).reshape(k, ho * wo)
    base_x = (ox.view(1, 1, 1, wo) + kx.view(1, kw, 1, 1)).expand(kh, kw, ho, wo).reshape(k, ho * wo)
    py = base_y + off[:, :, :, 0]  # (n, g, k, P), same arithmetic order as torchvision
    px = base_x + off[:, :, :, 1]

    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    hy, hx = 1 - ly, 1 - lx
    if mask is not None:
        m = mask.view(n, og, k, ho * wo)
        hy, ly = hy * m, ly * m  # fold the modulation into the row weights once
    y0i, x0i = y0.long(), x0.long()
    y1i, x1i = y0i + 1, x0i + 1
    # A neighbour outside the map contributes zero: its weight is zeroed and its index clamped.
    vy0, vy1 = ((y0i >= 0) & (y0i < h)).to(dtype), ((y1i >= 0) & (y1i < h)).to(dtype)
    vx0, vx1 = ((x0i >= 0) & (x0i < w)).to(dtype), ((x1i >= 0) & (x1i < w)).to(dtype)
    r0, r1 = y0i.clamp(0, h - 1) * w, y1i.clamp(0, h - 1) * w
    c0, c1 = x0i.clamp(0, w - 1), x1i.clamp(0, w - 1)
    return [
        (r0 + c0, hy * hx * vy0 * vx0),
        (r0 + c1, hy * lx * vy0 * vx1),
        (r1 + c0, ly * hx * vy1 * vx0),
        (r1 + c1, ly * lx * vy1 * vx1),
    ]


def deform_conv2d_torch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch ``deform_conv2d`` (differentiable in every argument); see the module docstring."""
    n, c, h, w = input.shape
    out_c, c_per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k, p = kh * kw, ho * wo
    groups = c // c_per_group
    og = offset.shape[1] // (2 * k)
    if og < 1 or offset.shape[1] != 2 * k * og or c % og or c % c_per_group or out_c % groups:
        raise ValueError(
            f"deform_conv2d: offset has {offset.shape[1]} channels, input {c}, weight {tuple(weight.shape)}"
        )
    if tuple(offset.shape[-2:]) != (ho, wo):
        raise ValueError(f"deform_conv2d: offset is {tuple(offset.shape[-2:])}, output is {(ho, wo)}")
    taps = _bilinear_taps(offset, mask, (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))

    if og == 1 and out_c <= c:
        # Sampling is linear and its positions are shared by all channels, so project first:
        # z[o, k] = sum_c W[o, c, k] * x[c] (a 1x1 conv, grouped like the weight), then sample plane
        # z[o, k] at kernel point k's positions. This moves out_c * k values per tap instead of c * k.
        wz = weight.permute(0, 2, 3, 1).reshape(out_c * k, c_per_group, 1, 1)
        z = F.conv2d(input, wz, groups=groups).view(n, out_c, k * h * w)
        plane = (torch.arange(k, device=input.device) * (h * w))[:, None]
        out = input.new_zeros(())
        for idx, wt in taps:
            flat_idx = (idx[:, 0] + plane).view(n, 1, k * p).expand(n, out_c, k * p)
            sampled = z.gather(2, flat_idx).view(n, out_c, k, p)
            out = out + (sampled * wt.view(n, 1, k, p)).sum(2)
        out = out.view(n, out_c, ho, wo)
    else:
        # im2col: sample the inputs (channels of group j follow offset group j), then one matmul
        # per weight group. Cheaper than projecting first when the conv widens the channels.
        cg = c // og
        flat = input.reshape(n, og, cg, h * w)
        cols = input.new_zeros(())
        for idx, wt in taps:
            sampled = flat.gather(3, idx.view(n, og, 1, k * p).expand(n, og, cg, k * p))
            cols = cols + sampled * wt.view(n, og, 1, k * p)
        cols = cols.view(n, groups, c_per_group * k, p)
        wmat = weight.reshape(groups, out_c // groups, c_per_group * k)
        out = torch.matmul(wmat, cols).reshape(n, out_c, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` when available (``backend="auto"``, outside ONNX export),
    else the fallback.

    ``backend="torchvision"`` requires torchvision (``RuntimeError`` otherwise); ``"torch"`` forces
    the pure-PyTorch path.
    """
    if backend == "torchvision" and _tv_deform_conv2d is None:
        raise RuntimeError("deform_conv2d: torchvision is not importable here")
    # At ONNX export "auto" takes the fallback: its gathers are plain ONNX ops (checked on ONNX
    # Runtime and OpenVINO), so the file does not depend on a runtime version that has DeformConv.
    exporting = backend == "auto" and torch.onnx.is_in_onnx_export()
    if backend != "torch" and _tv_deform_conv2d is not None and not exporting:
        return _tv_deform_conv2d(
            input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )
    return deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


class DeformableConv2d(nn.Module):
    """Modulated deformable conv (DCNv2): ``in_channels -> out_channels``, same output size as a
    ``kernel_size`` conv with this ``stride`` / ``padding``.

    ``offset_conv`` (2*k*k outputs, bias) and ``modulator_conv`` (k*k outputs, bias) read the input;
    mask = 2*sigmoid(modulator), so both start at zero and the block starts as ``regular_conv``
    (whose weight, and bias if any, the sampling conv uses). Names follow the FeatherFace V1 weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = False,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.backend = stride, padding, backend
        kk = kernel_size * kernel_size
        self.offset_conv = nn.Conv2d(in_channels, 2 * kk, kernel_size, stride, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, kk, kernel_size, stride, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(
            x,
            offset,
            self.regular_conv.weight,
            self.regular_conv.bias,
            stride=self.stride,
            padding=self.padding,
            mask=mask,
            backend=self.backend,
        )

    def to_plain(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding copies of ``regular_conv``'s weights (offsets 0, mask 1)."""
        rc = self.regular_conv
        conv = nn.Conv2d(
            rc.in_channels, rc.out_channels, rc.kernel_size, rc.stride, rc.padding, bias=rc.bias is not None
        )
        conv.load_state_dict(rc.state_dict())
        return conv


__all__ = ["HAS_TORCHVISION", "DeformableConv2d", "deform_conv2d", "deform_conv2d_torch"]
