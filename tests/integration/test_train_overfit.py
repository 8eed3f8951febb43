"""Tiny overfit: one synthetic batch, a few hundred steps -> landmark error near zero."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from msma.config import compose_experiment, to_typed
from msma.data.batch import collate_samples
from msma.data.synthetic import SyntheticFaceDataset
from msma.metrics.nme import nme as landmark_nme
from msma.training.checkpoint import build_module


@pytest.mark.slow
def test_overfit_one_batch(ict_model: Any) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = SyntheticFaceDataset(ict_model, num_samples=4, seed=11, image_size=48, progress=False)
        batch = collate_samples([data[i] for i in range(4)])
        cfg = compose_experiment("quickstart", ["model.channels=[12,24,48]", "data.image_size=48"])
        module = build_module(to_typed(cfg), face_model=ict_model)
        opt = torch.optim.Adam(module.encoder.parameters(), lr=2e-3)

        def nme() -> float:
            module.eval()
            with torch.no_grad():
                pred = module.face_model(module.encoder(batch.image), image_size=48).landmarks_2d
            module.train()
            return float(landmark_nme(pred, batch.landmarks).mean())

        start = nme()
        losses = []
        for _ in range(300):
            opt.zero_grad()
            out, _ = module.compute_loss(batch)
            out.total.backward()
            opt.step()
            losses.append(float(out.total))
        end = nme()
    finally:
        torch.set_num_threads(threads)
    assert start > 0.05  # the mean face is far from these posed faces
    assert end < 0.015 and end < 0.1 * start, (start, end)
    assert losses[-1] < 0.1 * losses[0]
