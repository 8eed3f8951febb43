"""The pinned environment: setup.cfg, constraints.txt and environment.yml agree; one working cv2."""

from __future__ import annotations

import configparser
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
        out[canonicalize_name(req.name)] = specs[0].version
    return out


def _constraints() -> dict[str, str]:
    return _pins((ROOT / "constraints.txt").read_text().splitlines())


def _environment_yml() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge"
    assert all(c in ("conda-forge", "nodefaults") for c in env["channels"]), env["channels"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert any(str(p).startswith("-e .") for p in pip_section), "environment.yml must install the package"
    return _pins([str(p) for p in pip_section])


def _setup_requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].strip().splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.strip().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.strip()]


def test_environment_yml_matches_constraints() -> None:
    assert _environment_yml() == _constraints()


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = _constraints()
    for req in _setup_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} from setup.cfg has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside setup.cfg's range {req.specifier}"
        )


def test_installed_versions_match_the_pins() -> None:
    pins = _constraints()
    mismatched = {}
    for name in ("torch", "torchvision", "lightning", "timm", "hydra-core", "opencv-python", "opencv-python-headless"):
        installed = metadata.version(name)
        if installed.split("+")[0] != pins[canonicalize_name(name)]:
            mismatched[name] = (installed, pins[canonicalize_name(name)])
    assert not mismatched, f"installed != pinned: {mismatched} (run `make setup`)"


def test_one_working_cv2() -> None:
    # opencv-python (face-alignment) and opencv-python-headless (albumentations) share the cv2 package; both are
    # pinned to the same 4.x release so whichever wrote last, cv2 has CascadeClassifier and cv2.data (dropped in 5).
    assert metadata.version("opencv-python") == metadata.version("opencv-python-headless")
    code = (
        "import cv2, os; assert hasattr(cv2, 'CascadeClassifier'); p = cv2.data.haarcascades; "
        "assert os.path.isfile(os.path.join(p, 'haarcascade_frontalface_default.xml')); "
        "assert not cv2.CascadeClassifier(os.path.join(p, 'haarcascade_frontalface_default.xml')).empty(); print(cv2.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("4.")


@pytest.mark.parametrize(
    "module",
    [
        "msma",
        "lightning",
        "timm",
        "torchvision",
        "torchmetrics",
        "wandb",
        "albumentations",
        "face_alignment",
        "trimesh",
    ],
)
def test_imports(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_environment_file_is_generated_from_constraints() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sync_environment.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
