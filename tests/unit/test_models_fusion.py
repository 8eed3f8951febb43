"""Fusion blocks: HRNet exchange, AFF / MS-CAM, coordinate attention, heads."""

from __future__ import annotations

import pytest
import torch

from msma.face_model.params import CoeffLayout
from msma.models.fusion import MSCAM, AttentionalFeatureFusion, MultiScaleExchange
from msma.models.heads import TRANS_UNIT_MM, AttributeHeads, HeadInputs, HeadWidths
from msma.models.mlanet import CoordinateAttention


@pytest.mark.parametrize("sizes", [(28, 14, 7), (25, 13, 7), (16, 8, 4)])
def test_exchange_shapes_and_mixing(sizes: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    ex = MultiScaleExchange((6, 9, 12), (8, 16, 32)).eval()
    xs = [torch.randn(2, c, s, s) for c, s in zip((6, 9, 12), sizes)]
    outs = ex(xs)
    assert [tuple(o.shape) for o in outs] == [(2, c, s, s) for c, s in zip((6, 9, 12), sizes)]
    assert all((o >= 0).all() for o in outs)  # ReLU after the sum
    # every output depends on every input scale
    for j in range(3):
        changed = [x.clone() for x in xs]
        changed[j] = changed[j] + torch.randn_like(changed[j])
        new = ex(changed)
        assert all((a - b).abs().max() > 0 for a, b in zip(new, outs)), j


def test_exchange_subset_and_errors() -> None:
    ex = MultiScaleExchange((4, 8, 16), (8, 16, 32), out_scales=(2,))
    outs = ex([torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])
    assert len(outs) == 1 and outs[0].shape == (1, 16, 4, 4)
    assert len(ex.paths[0][0]) == 2  # two strided convs from stride 8 to 32
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleExchange((4, 8), (8, 24))
    with pytest.raises(ValueError, match="expects 3 scales"):
        ex([torch.randn(1, 4, 16, 16)])


def test_aff_convex_combination() -> None:
    torch.manual_seed(0)
    aff = AttentionalFeatureFusion(16, r=4).eval()
    x, y = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5)
    z = aff(x, y)
    w = MSCAM.forward(aff.attention, x + y)
    assert ((w > 0) & (w < 1)).all()
    torch.testing.assert_close(z, w * x + (1 - w) * y)
    torch.testing.assert_close(aff(x, x), x)
    lo, hi = torch.minimum(x, y), torch.maximum(x, y)
    assert ((z >= lo - 1e-6) & (z <= hi + 1e-6)).all()
    assert aff.attention.local[0][0].out_channels == 4  # r = 4
    with pytest.raises(ValueError, match="same shape"):
        aff(x, y[:, :, :4])


def test_coordinate_attention_gates_rows_and_columns() -> None:
    torch.manual_seed(0)
    ca = CoordinateAttention(16, reduction=4).eval()
    x = torch.randn(2, 16, 6, 9)
    assert ca(x).shape == x.shape
    with torch.no_grad():
        for conv in (ca.gate_h, ca.gate_w):
            conv.weight.zero_()
            conv.bias.zero_()
    torch.testing.assert_close(ca(x), x * 0.25)  # sigmoid(0) * sigmoid(0)
    with torch.no_grad():
        ca.gate_h.bias.fill_(1e3)  # row gate saturates at 1: only the column gate remains
        ca.gate_w.bias.fill_(-1e3)
    torch.testing.assert_close(ca(x), torch.zeros_like(x))


def test_heads_zero_and_units() -> None:
    layout = CoeffLayout(5, 4, 3)
    heads = AttributeHeads(HeadWidths(8, 8, 6, 6, 4, 4, 8), layout)
    feats = HeadInputs(
        id=torch.randn(2, 8),
        exp=torch.randn(2, 8),
        tex=torch.randn(2, 6),
        angles=torch.randn(2, 6),
        sh=torch.randn(2, 4),
        txy=torch.randn(2, 4),
        tz=torch.randn(2, 8),
    )
    out = heads(feats)
    assert torch.count_nonzero(layout.join(out)) == 0
    assert all(torch.count_nonzero(p) == 0 for p in heads.parameters())
    with torch.no_grad():
        heads.txy.bias.copy_(torch.tensor([0.5, -0.25]))
        heads.tz.bias.fill_(-2.0)
    assert heads(feats).trans[0].tolist() == [0.5 * TRANS_UNIT_MM, -0.25 * TRANS_UNIT_MM, -2.0 * TRANS_UNIT_MM]
