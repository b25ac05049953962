"""Modulated deformable conv: the pure-PyTorch fallback against a naive loop and torchvision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.layers.deform import (
    HAS_TORCHVISION,
    DeformableConv2d,
    deform_conv2d,
    deform_conv2d_torch,
)


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate for one point, all channels; outside neighbours are 0."""
    c, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return torch.zeros(c, dtype=img.dtype)
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    out = torch.zeros(c, dtype=img.dtype)
    for yy, xx, wt in (
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)),
        (y0 + 1, x0 + 1, ly * lx),
    ):
        if 0 <= yy < h and 0 <= xx < w:
            out += wt * img[:, yy, xx]
    return out


def _naive(x, offset, weight, bias, stride, padding, dilation, mask) -> torch.Tensor:
    """Loop over every output location and kernel point, straight from the DCNv2 definition."""
    n, c, h, w = x.shape
    o, cpg, kh, kw = weight.shape
    groups = c // cpg
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    cg = c // og
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, o, ho, wo, dtype=x.dtype)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                col = torch.zeros(c, k, dtype=x.dtype)
                for g in range(og):
                    for r in range(kh):
                        for s in range(kw):
                            kk = r * kw + s
                            dy = offset[b, g * 2 * k + 2 * kk, i, j].item()
                            dx = offset[b, g * 2 * k + 2 * kk + 1, i, j].item()
                            y = i * stride - padding + r * dilation + dy
                            xx = j * stride - padding + s * dilation + dx
                            val = _bilinear(x[b, g * cg : (g + 1) * cg], y, xx)
                            if mask is not None:
                                val = val * mask[b, g * k + kk, i, j]
                            col[g * cg : (g + 1) * cg, kk] = val
                for gi in range(groups):
                    wg = weight[gi * (o // groups) : (gi + 1) * (o // groups)].reshape(o // groups, -1)
                    cols = col[gi * cpg : (gi + 1) * cpg].reshape(-1)
                    out[b, gi * (o // groups) : (gi + 1) * (o // groups), i, j] = wg @ cols
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


CASES = [
    # n, cin, cout, h, w, stride, padding, dilation, groups, offset groups; the first two take the
    # fallback's project-first path, the others (widening, offset groups) its im2col path
    (2, 4, 3, 6, 7, 1, 1, 1, 1, 1),
    (1, 4, 4, 5, 6, 1, 1, 1, 2, 1),
    (1, 4, 6, 7, 6, 2, 1, 1, 2, 1),
    (1, 4, 2, 6, 6, 1, 2, 2, 1, 2),
]


def _random_case(case, dtype=torch.float32, seed=0):
    n, cin, cout, h, w, stride, padding, dilation, groups, og = case
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (w + 2 * padding - dilation * 2 - 1) // stride + 1
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    # Offsets of a few pixels push many samples across the border, where zeros must come in.
    offset = torch.randn(n, 2 * 9 * og, ho, wo, generator=gen, dtype=dtype) * 2.5
    mask = torch.rand(n, 9 * og, ho, wo, generator=gen, dtype=dtype) * 2
    weight = torch.randn(cout, cin // groups, 3, 3, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    return x, offset, weight, bias, stride, padding, dilation, mask


@pytest.mark.parametrize("case", CASES)
def test_fallback_matches_naive_loop(case) -> None:
    x, offset, weight, bias, stride, padding, dilation, mask = _random_case(case)
    got = deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)
    want = _naive(x, offset, weight, bias, stride, padding, dilation, mask)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fallback_without_mask_and_bias_matches_naive_loop() -> None:
    x, offset, weight, _, stride, padding, dilation, _ = _random_case(CASES[0], seed=3)
    got = deform_conv2d_torch(x, offset, weight, None, stride, padding, dilation, None)
    torch.testing.assert_close(got, _naive(x, offset, weight, None, stride, padding, dilation, None))


def test_integer_offsets_are_shifted_conv() -> None:
    """Offset (dy, dx) = (1, -2) everywhere equals a conv of the input shifted by that amount."""
    x = torch.randn(1, 3, 8, 9)
    weight = torch.randn(5, 3, 3, 3)
    offset = torch.zeros(1, 18, 8, 9)
    offset[:, 0::2] = 1.0
    offset[:, 1::2] = -2.0
    got = deform_conv2d_torch(x, offset, weight, padding=1)
    # Output (i, j), kernel point (r, s) samples x[i + r, j + s - 3] = xp[i + r + 3, j + s] with
    # xp = x zero-padded by 3: an unpadded conv over xp, its window moved down by 3 rows.
    xp = F.pad(x, [3, 3, 3, 3])
    want = F.conv2d(xp, weight)[:, :, 3 : 3 + 8, 0:9]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fresh_module_is_its_regular_conv() -> None:
    """Zero-initialised offset / modulator convs: offsets 0, mask 1, so DCN == regular conv."""
    torch.manual_seed(0)
    dcn = DeformableConv2d(6, 4)
    x = torch.randn(2, 6, 10, 7)
    torch.testing.assert_close(dcn(x), dcn.regular_conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dcn.to_plain()(x), dcn.regular_conv(x))


@pytest.mark.parametrize("offset_groups", [1, 2])  # project-first and im2col paths
def test_gradients_match_finite_differences(offset_groups: int) -> None:
    x, offset, weight, bias, stride, padding, dilation, mask = _random_case(
        (1, 2, 2, 3, 4, 1, 1, 1, 1, offset_groups), dtype=torch.float64, seed=5
    )
    args = [t.requires_grad_() for t in (x, offset, weight, bias, mask)]

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, fast_mode=True)


def test_bad_offset_channels_raise() -> None:
    with pytest.raises(ValueError, match="offset has 10 channels"):
        deform_conv2d_torch(
            torch.zeros(1, 2, 5, 5), torch.zeros(1, 10, 5, 5), torch.zeros(2, 2, 3, 3), padding=1
        )


def test_forced_backends() -> None:
    x, offset, weight, bias, stride, padding, dilation, mask = _random_case(CASES[0])
    out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask, backend="torch")
    torch.testing.assert_close(
        out, deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)
    )
    if not HAS_TORCHVISION:
        with pytest.raises(RuntimeError, match="torchvision"):
            deform_conv2d(x, offset, weight, backend="torchvision")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not importable beside this torch build")
@pytest.mark.parametrize("case", CASES)
def test_fallback_matches_torchvision(case) -> None:
    x, offset, weight, bias, stride, padding, dilation, mask = _random_case(case, seed=11)
    tv = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask, backend="torchvision")
    ours = deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(ours, tv, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("cin", "cout"), [(8, 4), (4, 8)])  # project-first and im2col paths
def test_exports_to_onnx_with_dynamic_size_and_matches_at_two_sizes(cin: int, cout: int) -> None:
    """The exported module runs on ONNX Runtime at sizes other than the traced one and agrees with
    PyTorch. (Regression: the base positions were built with repeat / repeat_interleave by the
    output size, which the exporter lowered to Expand / Tile shapes of the wrong rank; the file failed
    its first inference at every size.)"""
    import io
    import warnings

    import onnxruntime as ort

    torch.manual_seed(0)
    dcn = DeformableConv2d(cin, cout).eval()
    for conv in (dcn.offset_conv, dcn.modulator_conv):  # offsets of about a pixel, masks off 1
        torch.nn.init.normal_(conv.weight, std=0.3)
    dims = {2: torch.export.Dim("height", min=4), 3: torch.export.Dim("width", min=4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            dcn, (torch.randn(1, cin, 12, 16),), None, dynamo=True, dynamic_shapes=(dims,), verbose=False
        )
    buf = io.BytesIO()
    program.save(buf)
    session = ort.InferenceSession(buf.getvalue())
    for h, w in ((12, 16), (9, 23)):
        x = torch.randn(1, cin, h, w)
        with torch.no_grad():
            want = dcn(x).numpy()
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == want.shape
        assert float(abs(got - want).max()) <= 1e-5 * max(1.0, float(abs(want).max()))
