"""Pure-PyTorch deformable attention against an independent float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from mobius_core.modeling.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_core


def reference_core(value, shapes, locations, weights):
    """Explicit bilinear interpolation with loops (zeros outside, pixel centres at +0.5)."""
    b, _, n_heads, head_dim = value.shape
    _, q, _, _, n_points, _ = locations.shape
    out = torch.zeros(b, q, n_heads, head_dim, dtype=value.dtype)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        level = value[:, start : start + h * w].reshape(b, h, w, n_heads, head_dim)
        start += h * w
        for bi in range(b):
            for qi in range(q):
                for hi in range(n_heads):
                    for p in range(n_points):
                        x = locations[bi, qi, hi, lvl, p, 0].item() * w - 0.5
                        y = locations[bi, qi, hi, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = torch.zeros(head_dim, dtype=value.dtype)
                        for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc = acc + wy * wx * level[bi, yy, xx, hi]
                        out[bi, qi, hi] += weights[bi, qi, hi, lvl, p] * acc
    return out.reshape(b, q, n_heads * head_dim)


def _inputs(shapes, b=2, q=5, n_heads=2, head_dim=3, n_points=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, n_heads, head_dim, generator=g, dtype=dtype)
    # include points just outside the map to exercise the zero padding
    loc = torch.rand(b, q, n_heads, len(shapes), n_points, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    w = torch.rand(b, q, n_heads, len(shapes), n_points, generator=g, dtype=dtype)
    w = (w.flatten(-2).softmax(-1)).reshape(w.shape)
    return value, loc, w


@pytest.mark.parametrize("shapes", [[(4, 6), (2, 3)], [(5, 7), (3, 4), (2, 2), (1, 1)]])
def test_core_matches_float64_reference(shapes):
    value, loc, w = _inputs(shapes)
    got = ms_deform_attn_core(value, shapes, loc, w)
    want = reference_core(value, shapes, loc, w)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-10


def test_core_gradcheck():
    shapes = [(3, 4), (2, 2)]
    value, loc, w = _inputs(shapes, b=1, q=2, n_heads=1, head_dim=2, n_points=2, seed=1)
    # keep points inside the maps and off pixel centres, where bilinear is smooth
    loc = (loc.clamp(0.05, 0.95) * 0.9 + 0.013).requires_grad_()
    value.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, l_, a: ms_deform_attn_core(v, shapes, l_, a), (value, loc, w), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_shapes_and_gradients(ref_dim):
    torch.manual_seed(0)
    shapes = [(8, 8), (4, 4), (2, 2)]
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.01)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.01)
    query = torch.randn(2, 7, 32)
    ref = torch.rand(2, 7, 3, ref_dim) * 0.8 + 0.1
    value = torch.randn(2, 84, 32)
    out = attn(query, ref, value, shapes)
    assert out.shape == (2, 7, 32)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_mask_removes_masked_tokens():
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    query, ref, value = torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2), torch.randn(1, 20, 16)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :16] = True  # the whole first level
    got = attn(query, ref, value, shapes, value_padding_mask=mask)
    changed = value.clone()
    changed[mask] = 100.0
    # masked tokens have no influence with the mask ...
    torch.testing.assert_close(attn(query, ref, changed, shapes, value_padding_mask=mask), got)
    # ... and do without it
    assert not torch.allclose(attn(query, ref, changed, shapes), attn(query, ref, value, shapes))


def test_errors_name_the_mismatch():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    query, ref = torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="built for 2 levels"):
        attn(query, ref, torch.randn(1, 16, 16), [(4, 4)])
    with pytest.raises(ValueError, match="need sum"):
        attn(query, ref, torch.randn(1, 19, 16), [(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)
