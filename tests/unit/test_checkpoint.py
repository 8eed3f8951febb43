"""Checkpoint reading: incompatible stored configurations and foreign weights fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msma.checkpoint import CONFIG_KEY, encoder_state, load_inference_model, untrained_config
from msma.config import to_plain_dict


def test_incompatible_config_says_how_to_convert(tmp_path: Path) -> None:
    config = to_plain_dict(untrained_config())
    config["model"] = {**config["model"], "removed_option": 3}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, CONFIG_KEY: config}, path)
    with pytest.raises(
        ValueError, match=r"(?s)old\.ckpt: its stored configuration does not fit .*removed_option.*Convert"
    ):
        load_inference_model(path)


def test_encoder_state_strips_the_prefix_and_rejects_foreign_weights() -> None:
    w = torch.zeros(2)
    assert encoder_state({"encoder.head.weight": w, "face_model.mean_shape": w}, "x.ckpt") == {"head.weight": w}
    with pytest.raises(ValueError, match=r"x\.ckpt: unexpected weights.*net\.fc"):
        encoder_state({"encoder.a": w, "net.fc": w}, "x.ckpt")
