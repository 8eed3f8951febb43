"""RandConv (``msma.data.randconv``): which images are filtered, what a filter does, determinism, and the module's
use of it (the encoder sees the filtered image, the losses the clean one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from msma.data.randconv import RandomConvolution


def _images(b: int = 6, s: int = 24, seed: int = 0) -> torch.Tensor:
    """Mid-grey images with a little structure: filtered and re-normalised, they stay inside [0, 1] (no clip)."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.05 * torch.randn(b, 3, s, s, generator=g).clamp(-2, 2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_probability_zero_is_the_identity_and_one_filters_every_image() -> None:
    x = _images()
    assert torch.equal(RandomConvolution(p=0.0)(x, _gen(0)), x)
    y = RandomConvolution(p=1.0, kernel_sizes=(3,), mix=False)(x, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(not torch.allclose(y[i], x[i], atol=1e-3) for i in range(len(x)))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_half_of_a_large_batch_is_filtered_at_p_half() -> None:
    x = _images(b=400, s=8)
    y = RandomConvolution(p=0.5)(x, _gen(3))
    changed = (y - x).abs().flatten(1).amax(1) > 1e-6
    assert 160 < int(changed.sum()) < 240


def test_one_by_one_kernel_is_a_colour_map_with_the_input_statistics() -> None:
    """k = 1 without mixing: each output channel is an affine function of the pixel's three input channels, and
    every image keeps its per-channel mean and standard deviation."""
    x = _images(b=3)
    y = RandomConvolution(p=1.0, kernel_sizes=(1,), mix=False)(x, _gen(1))
    for i in range(3):
        a = np.concatenate([x[i].reshape(3, -1).T.numpy(), np.ones((x.shape[-1] ** 2, 1))], axis=1)
        for c in range(3):
            coef, res, *_ = np.linalg.lstsq(a, y[i, c].reshape(-1).numpy(), rcond=None)
            assert float(res[0]) < 1e-8, (i, c, res)
        np.testing.assert_allclose(y[i].mean((1, 2)), x[i].mean((1, 2)), atol=1e-5)
        np.testing.assert_allclose(y[i].std((1, 2)), x[i].std((1, 2)), rtol=1e-3)


def test_mixing_keeps_the_channel_means() -> None:
    x = _images(b=4)
    y = RandomConvolution(p=1.0, kernel_sizes=(5, 7), mix=True)(x, _gen(2))
    np.testing.assert_allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-3)


def test_same_generator_state_same_output_and_input_untouched() -> None:
    x = _images()
    before = x.clone()
    rc = RandomConvolution(p=0.7)
    a, b, c = rc(x, _gen(5)), rc(x, _gen(5)), rc(x, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.5}, "probability"),
        ({"p": -0.1}, "probability"),
        ({"kernel_sizes": (2,)}, "odd"),
        ({"kernel_sizes": ()}, "odd"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomConvolution(**kwargs)


def test_wrong_image_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        RandomConvolution()(torch.zeros(2, 1, 8, 8), _gen(0))
