"""LKA / MLKA: shape, identity at initialisation, receptive field measured by input gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msma.models.lka import LKA, MLKA, VAN_LKA_CHAIN, LKABlock, LKAChain, build_attention


def _measured_receptive_field(module: nn.Module, channels: int, size: int) -> tuple[int, int, int]:
    """(rows, cols, count) of input positions with a non-zero gradient of the centre output pixel."""
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    c = size // 2
    module(x)[0, :, c, c].sum().backward()
    assert x.grad is not None
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    # The support must be centred on the output pixel.
    assert int(rows.min() + rows.max()) == 2 * c and int(cols.min() + cols.max()) == 2 * c
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1), int(support.sum())


def _activate(module: nn.Module) -> nn.Module:
    """Random non-zero output scales (they start at 0, which makes the blocks the identity)."""
    for name, p in module.named_parameters():
        if name.endswith("scale"):
            with torch.no_grad():
                p.normal_()
    return module.double()


def test_chain_receptive_field_formula() -> None:
    assert VAN_LKA_CHAIN.receptive_field == 5 + 3 * 6 == 23
    assert LKAChain(3, 5, 2).receptive_field == 11
    assert LKAChain(7, 9, 4).receptive_field == 39
    with pytest.raises(ValueError, match="odd"):
        LKAChain(4, 5, 2)
    with pytest.raises(ValueError, match="dilation"):
        LKAChain(3, 5, 0)


@pytest.mark.parametrize("size", [(7, 7), (14, 9), (1, 1)])
def test_shapes_preserved(size: tuple[int, int]) -> None:
    x = torch.randn(2, 12, *size)
    for module in (LKA(12), LKABlock(12), MLKA(12), MLKA(12, (LKAChain(3, 3, 1), LKAChain(5, 5, 2)))):
        assert module(x).shape == x.shape


def test_blocks_are_identity_at_init() -> None:
    x = torch.randn(2, 24, 9, 9)
    for module in (LKABlock(24), MLKA(24), build_attention("none", 24)):
        assert torch.equal(module(x), x)
    mlka = MLKA(24)
    assert torch.count_nonzero(mlka.scale) == 0


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (LKA(6, 3, 3, 1), 5),
        (LKA(6, 3, 5, 2), 11),
        (LKA(6), 23),  # VAN: 5x5 then 7x7 d3
        (LKA(6, 5, 7, 4), 29),
        (_activate(LKABlock(6)), 23),
        (_activate(MLKA(6, (LKAChain(3, 5, 2),))), 11),
        (_activate(MLKA(6, (LKAChain(3, 5, 2), LKAChain(5, 7, 3)))), 23),
        (_activate(MLKA(6)), 39),  # MSMA: 3->5 d2, 5->7 d3, 7->9 d4
    ],
)
def test_receptive_field_matches_analytic_size(module: nn.Module, expected: int) -> None:
    module = module.double()
    assert module.receptive_field == expected
    rows, cols, count = _measured_receptive_field(module, 6, expected + 12)
    assert (rows, cols) == (expected, expected)
    assert count == expected * expected  # dense: the dilated taps are filled in by the first kernel


def test_receptive_field_grows_with_kernel_and_dilation() -> None:
    sizes = [
        _measured_receptive_field(LKA(3, k, kd, d).double(), 3, 45)[0]
        for k, kd, d in [(3, 3, 1), (3, 5, 1), (3, 5, 2), (5, 7, 3), (7, 9, 4)]
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes == [5, 7, 11, 23, 39]


def test_mlka_scale_zero_blocks_gradient_to_attention_but_not_scale() -> None:
    mlka = MLKA(6)
    x = torch.randn(2, 6, 8, 8)
    mlka(x).square().sum().backward()
    assert mlka.scale.grad is not None and mlka.scale.grad.abs().sum() > 0
    conv = mlka.lkas[0][0]
    assert isinstance(conv, nn.Conv2d) and conv.weight.grad is not None
    assert torch.count_nonzero(conv.weight.grad) == 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MLKA(10)
    with pytest.raises(ValueError, match="gate"):
        MLKA(6, gate_kernel_sizes=(3, 5))
    with pytest.raises(ValueError, match="unknown attention"):
        build_attention("se", 6)
