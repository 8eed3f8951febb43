"""The notebooks run headless on tiny settings (scripts/run_notebooks.py, nbclient, the venv's python3 kernel)
and write their plots; the stored notebooks carry no outputs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_png(path: Path, min_side: int = 64) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.stat().st_size > 2000, f"{path.name} is nearly empty"
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side, (path.name, im.size)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 50, f"{path.name} is a flat image"


@pytest.fixture(scope="module")
def kernel_env() -> dict[str, str]:
    """Environment for the kernel: the venv first on PATH (its python3 kernelspec), quiet, offline W&B."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    argv0 = spec.argv[0]
    if argv0 not in ("python", "python3", "{python}") and Path(argv0).resolve() != Path(sys.executable).resolve():
        pytest.fail(f"the python3 kernel runs {argv0}, not this interpreter {sys.executable}")
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MPLBACKEND": "Agg",
        "MSMA_NB_TINY": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MSMA_ASSET_MIRROR": os.environ.get("MSMA_ASSET_MIRROR", str(ROOT.parent / "shared" / "assets")),
    }


def test_stored_notebooks_have_no_outputs() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"ablation.ipynb", "quickstart.ipynb"}
    check = _script("check_notebooks")
    for path in NOTEBOOKS:
        assert check.dirty_cells(path) == [], f"{path.name} is stored with outputs"
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"


def test_check_notebooks_flags_outputs(tmp_path: Path) -> None:
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells[code].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nb.cells[code].execution_count = 1
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    check = _script("check_notebooks")
    assert check.dirty_cells(dirty) == [code]
    assert check.main([str(dirty)]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tiny", "full_without_runs"])
def test_ablation_notebook(mode: str, kernel_env: dict[str, str], tmp_path: Path) -> None:
    """Tiny mode; and full mode (`make notebooks`) on a checkout without runs, which falls back to tiny runs."""
    run = _script("run_notebooks")
    out = tmp_path / "out"
    env = {**kernel_env, "MSMA_NB_OUT": str(out)}
    if mode == "full_without_runs":
        env.update({"MSMA_NB_TINY": "", "MSMA_NB_RUNS": str(tmp_path / "no_runs")})
    executed = run.execute(ROOT / "notebooks" / "ablation.ipynb", out, env, 600)
    nb = nbformat.read(executed, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert ("Showing the tiny demonstration" in text) == (mode == "full_without_runs")
    for name in ("ablation_curves.png", "ablation_yaw_bins.png", "ablation_grid.png"):
        _check_png(out / name)
    # Four ablations, each trained a few steps into $MSMA_NB_OUT/runs and evaluated per yaw bin.
    import pandas as pd

    runs = pd.read_csv(out / "ablation_runs.csv")
    assert list(runs["experiment"]) == ["msma_spatial", "msma_no_attention", "msma_no_fusion", "deep3d_r50"]
    assert (runs["steps"] == 4).all() and runs["val_nme_pct"].notna().all()
    assert runs["val_vertex_aligned_mm"].notna().all()
    table = pd.read_csv(out / "ablation_yaw_bins.csv", header=[0, 1], index_col=0)
    assert list(table.index) == list(runs["experiment"])
    nme_all = table[("landmark NME (%)", "all")]
    assert ((nme_all > 0) & (nme_all < 100)).all()
    assert (table[("vertex error (mm)", "faces")] == 6).all()
    per_face = pd.read_csv(out / "ablation_per_face.csv")
    assert set(per_face["yaw_bin"]) <= {"0-30", "30-60", "60-90"} and len(per_face) == 4 * 6
    with Image.open(out / "ablation_grid_raw.png") as im:
        assert im.size == (5 * 128, 3 * 128)  # input + 4 runs, 3 faces


@pytest.mark.slow
def test_quickstart_notebook_tiny(kernel_env: dict[str, str], tmp_path: Path) -> None:
    """Loads the newest quickstart checkpoint of MSMA_NB_RUNS (a one-step run made here)."""
    import torch

    from msma.config import compose_experiment
    from msma.training.run import run_training

    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    cfg = compose_experiment(
        "quickstart",
        [
            "logger=csv",
            "num_threads=1",
            "data.image_size=32",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.num_samples=2",
            "data.val_samples=2",
            f"data.synthetic_cache_dir={tmp_path / 'synthetic'}",
            "model.channels=[12,24,48]",
            "trainer.max_steps=1",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false",
            "trainer.grid_every_n=0",
            "final_eval=false",
        ],
    )
    result = run_training(cfg, runs / "quickstart" / "20260101-000000")
    assert result.best_checkpoint
    run = _script("run_notebooks")
    out = tmp_path / "out"
    env = {**kernel_env, "MSMA_NB_OUT": str(out), "MSMA_NB_RUNS": str(runs)}
    executed = run.execute(ROOT / "notebooks" / "quickstart.ipynb", out, env, 600)
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"checkpoint: {result.best_checkpoint}" in text
    assert "crop 32 px" in text  # the checkpoint's training size: the checkpoint was used
    for name in ("quickstart_overlay.png", "quickstart_mesh.png", "quickstart_mesh_mpl.png"):
        _check_png(out / name)
    with Image.open(out / "quickstart_mesh_raw.png") as im:
        assert im.size == (3 * 256, 2 * 256)
    assert (out / "quickstart_mesh.obj").stat().st_size > 100_000
