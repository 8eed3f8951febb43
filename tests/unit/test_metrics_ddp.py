"""The metrics reduce correctly across processes (2-process gloo group on CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from msma.evaluation.heldout import HeldOutMetrics
from msma.metrics.mesh_error import MeshError, ScanError, SimilarityTransform
from msma.metrics.nme import AFLW2000NME
from msma.metrics.synthetic import per_vertex_error

pytestmark = pytest.mark.slow


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 68, 2, generator=gen) * 200 + 100
    return {
        "gt": gt,
        "pred": gt + torch.randn(6, 68, 2, generator=gen) * 3,
        "yaw": torch.tensor([5.0, -40.0, 75.0, 20.0, 61.0, -10.0]),
        "v_gt": torch.randn(6, 50, 3, generator=gen) * 40,
        "v_noise": torch.randn(6, 50, 3, generator=gen),
        "dist": torch.rand(6, 30, generator=gen, dtype=torch.float64),
    }


def _summaries(rows: slice) -> dict[str, object]:
    d = _data()
    nme = AFLW2000NME()
    nme.update(d["pred"][rows], d["gt"][rows], d["yaw"][rows])
    syn = HeldOutMetrics()
    pred_v, gt_v = d["v_gt"][rows] + d["v_noise"][rows], d["v_gt"][rows]
    syn.add_errors(
        {
            "vertex_posed_mm": per_vertex_error(pred_v, gt_v, "none"),
            "vertex_aligned_mm": per_vertex_error(pred_v, gt_v, "rigid"),
        }
    )
    mesh = MeshError()
    for i in range(6)[rows]:
        dist_i = d["dist"][i].numpy()
        mesh.update(ScanError(float(np.sqrt((dist_i**2).mean())), dist_i, dist_i, SimilarityTransform(), 0.0))
    return {"nme": nme.summary().as_dict(), "syn": syn.summary().as_dict(), "mesh": mesh.summary().__dict__}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        result = _summaries(slice(rank * 3, rank * 3 + 3))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result, default=list))
    finally:
        dist.destroy_process_group()


def test_two_process_reduction_equals_single_process(tmp_path: Path) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = json.loads(json.dumps(_summaries(slice(0, 6)), default=list))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for group in ("nme", "syn", "mesh"):
            for key, value in single[group].items():
                if isinstance(value, float):
                    np.testing.assert_allclose(got[group][key], value, rtol=1e-9, err_msg=f"{group}.{key}")
                else:
                    assert got[group][key] == value, (group, key)
