"""Shared fixtures. Tests never touch the network; GPU tests skip without CUDA."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

# Offline, before anything imports wandb / huggingface_hub / albumentations.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
if "MSMA_ASSET_MIRROR" not in os.environ and (SHARED / "assets").is_dir():
    os.environ["MSMA_ASSET_MIRROR"] = str(SHARED / "assets")


def _load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark(name)``: ``benchmarks/<name>.py`` as a module (registered in ``sys.modules``: dataclasses
    look their module up)."""
    return _load_benchmark


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder (assets and test data)."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set MSMA_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def testdata(shared_dir: Path) -> Path:
    return shared_dir / "testdata"


@pytest.fixture(scope="session")
def ict_model():  # type: ignore[no-untyped-def]
    """The embedded default face model (converted once per machine into $MSMA_HOME from the mirror)."""
    import torch

    from msma.face_model import load_face_model

    torch.manual_seed(0)
    return load_face_model("ict").eval()


@pytest.fixture(scope="session")
def synthetic_bfm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a small synthetic ``BFM_model_front.mat`` (real keys, shapes per vertex, 80/64/80 bases;
    42 vertices), written with the helpers of tests/unit/test_bfm.py."""
    import importlib.util

    from scipy.io import savemat

    spec = importlib.util.spec_from_file_location("_bfm_helpers", Path(__file__).parent / "unit" / "test_bfm.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    folder = tmp_path_factory.mktemp("bfm")
    savemat(folder / "BFM_model_front.mat", helpers.front_content())
    return folder
