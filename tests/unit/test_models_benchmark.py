"""benchmarks/model.py runs on tiny settings and writes its table and JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def test_model_benchmark_tiny_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load_benchmark: Callable[[str], ModuleType]
) -> None:
    bench = load_benchmark("model")
    out = tmp_path / "model.json"
    # batch 2: the authors' MSMA applies BatchNorm to pooled 1x1 branches (training needs > 1 value per channel)
    argv = ["--batch", "2", "--size", "64", "--repeats", "1", "--backbone", "resnet18"]
    argv += ["--only", "msma_lka", "--paired", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    for key in ("date", "device", "versions", "batch", "size", "rows", "paired_msma_vs_deep3d", "target_met"):
        assert key in result
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["deep3d_r50", "msma_lka"]
    ref, msma = result["rows"]
    assert len(ref["step_s_all"]) == 2  # measured before and after the others
    assert ref["ratio_step_vs_deep3d"] == 1.0 and ref["ratio_flops_vs_deep3d"] == 1.0
    assert msma["gflops_train"] > msma["gflops_fwd"] > 0 and msma["params_m"] > ref["params_m"]
    assert len(result["paired_msma_vs_deep3d"]["ratios"]) == 2
    assert "msma_lka" in capsys.readouterr().out
