"""The device kit's plan and the device check's CPU smoke mode (so the GPU check does not rot without a GPU)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import device_kit  # noqa: E402

pytestmark = pytest.mark.slow


def test_kit_plan_is_the_runtime_closure_minus_the_device_image() -> None:
    plan = {p.name: p.version for p in device_kit.plan()}
    # msma's own requirements the image lacks, at the versions installed here (constraints.txt) ...
    for name in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "albumentations", "trimesh", "diffrp-nvdiffrast"):
        assert plan[name] == md.version(name)
    # ... and what they need in turn, unless the image has it.
    assert "pydantic" in plan and "pydantic-core" in plan
    # What the image ships, or the check does not use, never travels.
    for name in (
        "torch",
        "numpy",
        "lightning",
        "timm",
        "scipy",
        "wandb",
        "face-alignment",
        "opencv-python",
        "mediapipe",
    ):
        assert name not in plan
    # Requirements of packages the image provides are the image's business (torch 2.15's CUDA wheels, say).
    assert not any(name.startswith("nvidia-") for name in plan)


def test_closure_follows_extras_and_stops_at_provided_packages() -> None:
    full = {p.name for p in device_kit.runtime_closure()}
    assert {"diffrp-nvdiffrast", "ninja", "torch"} <= full
    no_cuda = {p.name for p in device_kit.runtime_closure(extras=())}
    assert "diffrp-nvdiffrast" not in no_cuda
    stopped = {p.name for p in device_kit.runtime_closure(provided={"torch"})}
    assert "torch" in stopped and not any(n.startswith("nvidia-cu") for n in stopped - full.intersection(no_cuda))
    assert not any(n.startswith("nvidia-cublas") for n in stopped)
    with pytest.raises(RuntimeError, match="not installed here"):
        device_kit.runtime_closure(root="msma-no-such-distribution")


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    """A minimal valid pure-Python wheel ``name`` 1.0 whose metadata requires ``requires``."""
    dist = f"{name}-1.0"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: msma-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return whl


def _kit(tmp: Path, requires: list[str]) -> Path:
    kit = tmp / "kit"
    (kit / "wheels").mkdir(parents=True)
    _wheel(kit / "wheels", "msma_kit_probe", requires)
    device_kit.copy_face_model(kit / "msma_home")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    (kit / "manifest.json").write_text(json.dumps({"python_version": here, "platforms": []}))
    return kit


def _check(kit: Path, out: Path, *only: str, extra: tuple[str, ...] = ()) -> tuple[int, dict]:  # type: ignore[type-arg]
    cmd = [sys.executable, str(ROOT / "scripts/device_check.py"), "--out", str(out), "--kit", str(kit)]
    cmd += ["--device", "cpu", "--smoke", "--export", str(out / "export"), *extra]
    if only:
        cmd += ["--only", *only]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert (out / "check.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads((out / "check.json").read_text())


def test_install_stage_reports_unmet_requirements(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kit = _kit(tmp_path, ["numpy>=1", "msma-not-a-real-package>=2"])
    rc, check = _check(kit, tmp_path / "out", "env")
    install = next(s for s in check["stages"] if s["name"] == "install")
    assert rc == 1 and install["status"] == "failed"
    assert "msma-not-a-real-package" in install["detail"] and "numpy" not in install["detail"]
    assert install["data"]["installed"] == ["msma-kit-probe"]


def test_cpu_smoke_mode_runs_every_stage(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kit = _kit(tmp_path, ["numpy>=1"])
    out = tmp_path / "out"
    rc, check = _check(kit, out)
    status = {s["name"]: s["status"] for s in check["stages"]}
    assert status == {
        "install": "ok",
        "env": "ok",
        "build": "skipped",  # no CUDA here
        "gpu_tests": "ok",  # collection of every gpu-marked test file
        "render": "ok",
        "train_step": "ok",
        "train_run": "ok",
        "eval": "ok",
    }, json.dumps(check["stages"], indent=1)[-4000:]
    assert rc == 0
    stages = {s["name"]: s for s in check["stages"]}
    assert stages["install"]["data"]["installed"] == ["msma-kit-probe"] and stages["install"]["data"]["unmet"] == []
    assert "tests/integration/test_nvdiffrast_parity.py" in stages["gpu_tests"]["data"]["files"]
    assert "collected" in stages["gpu_tests"]["data"]["summary"]
    curve = stages["train_run"]["data"]["curve"]
    assert len(curve) >= 2 and all(v == v and v > 0 for _, v in curve)  # finite positive losses per step
    assert Path(stages["train_run"]["data"]["checkpoint"]).is_file()
    assert 0 < stages["eval"]["data"]["result"]["nme"] < 1  # a fraction of sqrt(w*h) of the GT box
    results = out / "results"
    step = json.loads(next(results.glob("train_step-cpu*.json")).read_text())
    row = step["rows"][0]
    assert row["encoder"] == "deep3d_r50" and row["batch"] == 2 and row["step_ms_median"] > 0
    assert 0 < row["render_share"] < 1 and 0 < row["encoder_share"] < 1
    render = json.loads(next(results.glob("render-cpu*.json")).read_text())
    assert {r["backend"] for r in render["results"]} == {"torch"}
    summary = (out / "summary.md").read_text()
    assert "| train_run | ok |" in summary and "train_step" in summary
    with tarfile.open(out / "export" / "results.tgz") as tar:
        names = set(tar.getnames())
    assert {"check.json", "summary.md", "results/eval-synthetic.json"} <= names


def test_train_variants_run_once_each_with_their_overrides(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--train-variant``: one training run and one eval per variant, each in its own folder with its overrides."""
    kit = _kit(tmp_path, ["numpy>=1"])
    out = tmp_path / "out"
    variants = ("--train-variant", "fused=optim.fused=true,seed=1", "--train-variant", "plain=optim.fused=false")
    rc, check = _check(kit, out, "train_run", extra=variants)
    stages = {s["name"]: s for s in check["stages"]}
    assert rc == 0 and {n: s["status"] for n, s in stages.items() if ":" in n} == {
        "train_run:fused": "ok",
        "eval:fused": "ok",
        "train_run:plain": "ok",
        "eval:plain": "ok",
    }
    assert stages["train_run:fused"]["data"]["overrides"] == ["optim.fused=true", "seed=1"]
    for name, fused, seed in (("fused", True, 1), ("plain", False, 0)):
        ckpt = Path(stages[f"train_run:{name}"]["data"]["checkpoint"])
        assert ckpt.is_relative_to(out / "run" / name)
        resolved = _yaml(out / "run" / name / ".hydra" / "config.yaml")
        assert resolved["optim"]["fused"] is fused and resolved["seed"] == seed
        assert (out / "results" / f"eval-synthetic-{name}.json").is_file()
    with tarfile.open(out / "export" / "results.tgz") as tar:
        names = set(tar.getnames())
    assert {"run/fused/csv/metrics.csv", "run/plain/csv/metrics.csv"} <= names
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts/device_check.py"), "--out", str(tmp_path / "bad"), "--train-variant", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "NAME=OVERRIDE" in bad.stderr


def _yaml(path: Path) -> dict:  # type: ignore[type-arg]
    import yaml

    return yaml.safe_load(path.read_text())
