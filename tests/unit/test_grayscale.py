"""Greyscale input augmentation (``msma.data.grayscale``) and the composition of input augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from msma.data.grayscale import RandomGrayscale
from msma.data.input_augment import ChainedInputAugment, build_input_augment
from msma.data.randconv import RandomConvolution


def test_chosen_images_hold_their_bt601_luma_in_every_channel() -> None:
    image = torch.empty(2, 3, 4, 5)
    image[:, 0], image[:, 1], image[:, 2] = 0.2, 0.4, 0.6
    out = RandomGrayscale(p=1.0)(image, torch.Generator().manual_seed(0))
    expected = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6  # 0.363
    torch.testing.assert_close(out, torch.full_like(image, expected))
    assert image[0, 0, 0, 0].item() == pytest.approx(0.2)  # the input is not modified


def test_which_images_are_greyed_follows_the_generator() -> None:
    image = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    out = RandomGrayscale(p=0.25)(image, torch.Generator().manual_seed(7))
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.25
    assert 4 <= int(chosen.sum()) <= 30
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert torch.equal(grey, chosen)
    assert torch.equal(out[~chosen], image[~chosen])
    untouched = RandomGrayscale(p=0.0)(image, torch.Generator().manual_seed(7))
    assert torch.equal(untouched, image) and untouched is not image


def test_greyed_image_is_what_a_black_and_white_photo_loads_as(tmp_path: Path) -> None:
    """The augmentation's output equals (within the 8-bit rounding) the same photo saved in greyscale and loaded."""
    from PIL import Image
    from skimage import data

    from msma.data.io import image_to_tensor, load_image

    rgb = data.astronaut()[::4, ::4]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "bw.png")
    colour = image_to_tensor(load_image(tmp_path / "rgb.png").image)[None]
    bw = image_to_tensor(load_image(tmp_path / "bw.png").image)[None]
    assert torch.equal(bw[:, 0], bw[:, 1]) and torch.equal(bw[:, 1], bw[:, 2])
    greyed = RandomGrayscale(p=1.0)(colour, torch.Generator().manual_seed(0))
    assert float((greyed - bw).abs().max()) <= 1.0 / 255 + 1e-6


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="grayscale probability"):
        RandomGrayscale(p=1.5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        RandomGrayscale(p=0.5)(torch.rand(3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="grayscale probability"):
        build_input_augment(0.5, -0.1)
    with pytest.raises(ValueError, match="at least one"):
        ChainedInputAugment([])


def test_build_input_augment_composes_randconv_then_greyscale() -> None:
    assert build_input_augment(0.0, 0.0) is None
    only_randconv = build_input_augment(0.5, 0.0)
    assert isinstance(only_randconv, RandomConvolution) and only_randconv.p == 0.5
    only_grey = build_input_augment(0.0, 0.3)
    assert isinstance(only_grey, RandomGrayscale) and only_grey.p == 0.3
    both = build_input_augment(1.0, 1.0)
    assert isinstance(both, ChainedInputAugment)
    image = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = both(image, torch.Generator().manual_seed(3))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # greyscale last: exactly grey
    # the chain draws RandConv's numbers first, then greyscale's, from the one generator
    gen = torch.Generator().manual_seed(3)
    convolved = RandomConvolution(1.0)(image, gen)
    torch.testing.assert_close(out, RandomGrayscale(1.0)(convolved, gen))
    assert not np.allclose(out.numpy(), RandomGrayscale(1.0)(image, torch.Generator()).numpy(), atol=1e-3)
