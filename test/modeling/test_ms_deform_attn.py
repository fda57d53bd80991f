"""Pure-PyTorch deformable attention against an independent float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mobius_core.modeling.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_core


def reference_core(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """Explicit bilinear interpolation by integer indexing (no grid_sample).

    Pixel (row i, col j) of an HxW level has its centre at x = (j + 0.5) / W,
    y = (i + 0.5) / H (align_corners=False); neighbours outside the map read zero.
    value [B,S,nH,Dh], locations [B,Q,nH,L,P,2], weights [B,Q,nH,L,P] -> [B,Q,nH*Dh].
    """
    b, _, n_heads, head_dim = value.shape
    _, q, _, _, n_points, _ = locations.shape
    out = torch.zeros(b, q, n_heads, head_dim, dtype=value.dtype)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        level = value[:, start : start + h * w]  # [B,H*W,nH,Dh]
        start += h * w
        x = locations[:, :, :, lvl, :, 0] * w - 0.5  # [B,Q,nH,P] in pixel units
        y = locations[:, :, :, lvl, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        x0, y0 = x0.long(), y0.long()
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                xi, yi = x0 + dx, y0 + dy
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                flat = yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)  # [B,Q,nH,P]
                # [B,Q,nH,P] -> [B,Q,P,nH] -> [B,Q*P,nH,Dh] index into dim 1 of the level
                idx = flat.permute(0, 1, 3, 2).reshape(b, q * n_points, n_heads)
                idx = idx[..., None].expand(-1, -1, -1, head_dim)
                corner = level.gather(1, idx)  # [B,Q*P,nH,Dh]
                # [B,Q*P,nH,Dh] -> [B,Q,P,nH,Dh] -> [B,Q,nH,P,Dh]
                corner = corner.reshape(b, q, n_points, n_heads, head_dim).permute(0, 1, 3, 2, 4)
                coef = wy * wx * inside * weights[:, :, :, lvl]  # [B,Q,nH,P]
                out += (coef[..., None] * corner).sum(3)
    return out.reshape(b, q, n_heads * head_dim)  # [B,Q,nH,Dh] -> [B,Q,nH*Dh]


def _inputs(shapes, b=2, q=5, n_heads=2, head_dim=3, n_points=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, n_heads, head_dim, generator=g, dtype=dtype)
    # [-0.15, 1.15]: includes points partly and wholly outside the map (zero padding)
    shape = (b, q, n_heads, len(shapes), n_points, 2)
    loc = torch.rand(shape, generator=g, dtype=dtype) * 1.3 - 0.15
    logits = torch.randn(b, q, n_heads, len(shapes) * n_points, generator=g, dtype=dtype)
    # [B,Q,nH,L*P] -> [B,Q,nH,L,P]
    weights = logits.softmax(-1).reshape(b, q, n_heads, len(shapes), n_points)
    return value, loc, weights


def _smooth_locations(shapes, b, q, n_heads, n_points, seed):
    """Locations at least 0.15 px from any pixel centre (where bilinear has kinks)."""
    g = torch.Generator().manual_seed(seed)
    per_level = []
    for h, w in shapes:
        size = torch.tensor([w, h], dtype=torch.float64)
        # cell index in [-1, size-1]: the first and last cells straddle the border
        cell = torch.floor(torch.rand(b, q, n_heads, n_points, 2, generator=g) * (size + 1)) - 1
        frac = 0.15 + 0.7 * torch.rand(b, q, n_heads, n_points, 2, generator=g, dtype=torch.float64)
        per_level.append((cell + frac + 0.5) / size)  # pixel coordinate -> normalised
    return torch.stack(per_level, dim=3)  # L x [B,Q,nH,P,2] -> [B,Q,nH,L,P,2]


def test_core_hand_computed_values():
    # one 2x3 level holding 0..5 row-major; single head, Dh=1, one point with weight 1
    value = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1, 1)
    weights = torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)
    points = [
        ((2 + 0.5) / 3, (1 + 0.5) / 2),  # centre of row 1, col 2 -> 5
        ((0.5 + 0.5) / 3, (0 + 0.5) / 2),  # halfway between cols 0 and 1 on row 0 -> 0.5
        ((1 + 0.5) / 3, (0.5 + 0.5) / 2),  # halfway between rows 0 and 1 at col 1 -> 2.5
        ((-0.5 + 0.5) / 3, (0 + 0.5) / 2),  # left edge of row 0: half of pixel 0 -> 0
    ]
    loc = torch.tensor(points, dtype=torch.float64).reshape(1, 4, 1, 1, 1, 2)
    got = ms_deform_attn_core(value, [(2, 3)], loc, weights)
    torch.testing.assert_close(got.flatten(), torch.tensor([5.0, 0.5, 2.5, 0.0]).double())
    torch.testing.assert_close(reference_core(value, [(2, 3)], loc, weights), got)


@pytest.mark.parametrize(
    "shapes",
    [
        [(4, 6), (2, 3)],
        [(5, 7), (3, 2), (2, 5)],
        [(6, 9), (3, 5), (2, 3), (1, 2)],
    ],
)
def test_core_matches_float64_reference(shapes):
    value, loc, weights = _inputs(shapes)
    got = ms_deform_attn_core(value, shapes, loc, weights)
    want = reference_core(value, shapes, loc, weights)
    assert got.shape == want.shape == (2, 5, 2 * 3)
    assert got.dtype == torch.float64
    assert (got - want).abs().max().item() < 1e-10


def test_core_gradcheck():
    shapes = [(3, 4), (2, 3)]
    b, q, n_heads, head_dim, n_points = 2, 3, 2, 2, 2
    value, _, weights = _inputs(shapes, b, q, n_heads, head_dim, n_points, seed=1)
    loc = _smooth_locations(shapes, b, q, n_heads, n_points, seed=2)
    inputs = (value.requires_grad_(), loc.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda v, l_, a: ms_deform_attn_core(v, shapes, l_, a), inputs, eps=1e-6, atol=1e-7
    )


def deformable_detr_forward(attn, query, ref, value, shapes, mask=None):
    """Deformable-DETR's MSDeformAttn.forward, with its tensor offset normaliser."""
    b, q, _ = query.shape
    s = value.shape[1]
    n_heads, n_levels, n_points = attn.n_heads, attn.n_levels, attn.n_points
    v = attn.value_proj(value)
    if mask is not None:
        v = v.masked_fill(mask[..., None], 0.0)
    v = v.view(b, s, n_heads, attn.d_model // n_heads)
    off = attn.sampling_offsets(query).view(b, q, n_heads, n_levels, n_points, 2)
    aw = attn.attention_weights(query).view(b, q, n_heads, n_levels * n_points)
    aw = aw.softmax(-1).view(b, q, n_heads, n_levels, n_points)
    if ref.shape[-1] == 2:
        shapes_t = torch.tensor(shapes, dtype=query.dtype)
        normaliser = torch.stack([shapes_t[:, 1], shapes_t[:, 0]], -1)  # (W, H)
        loc = ref[:, :, None, :, None, :] + off / normaliser[None, None, None, :, None, :]
    else:
        loc = ref[:, :, None, :, None, :2] + off / n_points * ref[:, :, None, :, None, 2:] * 0.5
    return attn.output_proj(ms_deform_attn_core(v, shapes, loc, aw))


def _module_inputs(shapes, ref_dim, d_model, b=2, q=7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    query = torch.randn(b, q, d_model, generator=g, dtype=dtype)
    ref = torch.rand(b, q, len(shapes), ref_dim, generator=g, dtype=dtype) * 0.8 + 0.1
    value = torch.randn(b, s, d_model, generator=g, dtype=dtype)
    return query, ref, value


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_matches_deformable_detr(ref_dim):
    torch.manual_seed(0)
    shapes = [(6, 10), (3, 5), (2, 3)]
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=2, n_points=3).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.3)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.3)
    query, ref, value = _module_inputs(shapes, ref_dim, 16, dtype=torch.float64)
    mask = torch.rand(2, value.shape[1]) < 0.3
    got = attn(query, ref, value, shapes, value_padding_mask=mask)
    want = deformable_detr_forward(attn, query, ref, value, shapes, mask)
    assert (got - want).abs().max().item() < 1e-12


def test_reset_parameters_matches_deformable_detr():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    bias = attn.sampling_offsets.bias.detach().view(8, 2, 3, 2)  # [nH,L,P,2]
    # head h points along angle 2*pi*h/8 scaled onto the unit square; point i at i+1 px
    torch.testing.assert_close(bias[0, 1, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(bias[1, 0, 2], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(bias[2, 1, 1], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[5, 0, 0], torch.tensor([-1.0, -1.0]))
    for lin in (attn.value_proj, attn.output_proj):
        assert torch.count_nonzero(lin.bias) == 0
        bound = math.sqrt(6 / (32 + 32))  # xavier_uniform
        assert lin.weight.abs().max() <= bound


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_shapes_and_gradients(ref_dim):
    torch.manual_seed(0)
    shapes = [(8, 12), (4, 6), (2, 3)]
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)  # default init
    query, ref, value = _module_inputs(shapes, ref_dim, 32)
    out = attn(query, ref, value, shapes)
    assert out.shape == (2, 7, 32)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_mask_zeroes_masked_values():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    torch.nn.init.normal_(attn.value_proj.bias)
    query, ref, value = _module_inputs(shapes, 2, 16, q=5)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, 24:] = True  # sample 0: the whole coarse level
    mask[1, ::3] = True  # sample 1: scattered tokens of both levels
    got = attn(query, ref, value, shapes, value_padding_mask=mask)

    # masking by hand: the projected value is zero at masked tokens
    with torch.no_grad():
        attn.value_proj.bias.zero_()
    by_hand = attn(query, ref, value.masked_fill(mask[..., None], 0.0), shapes)
    torch.testing.assert_close(attn(query, ref, value, shapes, value_padding_mask=mask), by_hand)

    # whatever sits at masked tokens has no influence with the mask, and does without it
    changed = value.masked_fill(mask[..., None], 100.0)
    torch.testing.assert_close(attn(query, ref, changed, shapes, value_padding_mask=mask), by_hand)
    assert not torch.allclose(attn(query, ref, changed, shapes), by_hand)
    assert not torch.allclose(got, attn(query, ref, value, shapes))


def test_errors_name_the_mismatch():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    query, ref = torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"n_levels=2 but got 1 spatial shapes \[\(4, 4\)\]"):
        attn(query, ref, torch.randn(1, 16, 16), [(4, 4)])
    with pytest.raises(ValueError, match=r"value has 19 tokens .* need sum\(H\*W\) = 20"):
        attn(query, ref, torch.randn(1, 19, 16), [(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="must end in 2"):
        attn(query, torch.rand(1, 3, 2, 3), torch.randn(1, 20, 16), [(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=8"):
        MSDeformAttn(d_model=30, n_heads=8)


def test_export_keeps_level_sizes_dynamic():
    class FromFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)

        def forward(self, query, ref, f0, f1):
            shapes = [(f.shape[2], f.shape[3]) for f in (f0, f1)]
            # [B,C,H,W] -> [B,H*W,C] per level, finest first
            value = torch.cat([f.flatten(2).transpose(1, 2) for f in (f0, f1)], dim=1)
            return self.attn(query, ref, value, shapes)

    torch.manual_seed(0)
    model = FromFeatures().eval()
    args = (torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2), torch.randn(1, 16, 8, 12))
    args = (*args, torch.randn(1, 16, 4, 6))
    dims = [torch.export.Dim(name, min=2, max=512) for name in ("H0", "W0", "H1", "W1")]
    dynamic = (None, None, {2: dims[0], 3: dims[1]}, {2: dims[2], 3: dims[3]})
    exported = torch.export.export(model, args, dynamic_shapes=dynamic)
    other = (args[0], args[1], torch.randn(1, 16, 10, 7), torch.randn(1, 16, 5, 3))
    torch.testing.assert_close(exported.module()(*other), model(*other))
