"""Builds the device kit: what a bare CUDA machine's Python lacks to run msma's device check.

The GPU machine this project borrows (one H200; see docs/gpu.md) has its own Python 3.12 with torch, lightning,
timm, torchvision, scikit-image, OpenCV and more, but not msma's other requirements, and it reaches no package
index. This script gathers, into a git-ignored folder (default ``.device/``):

* ``wheels/``: the wheels of every package in msma's runtime closure (extra ``cuda``) that the device image lacks,
  for the device's interpreter (``cp312``, ``manylinux`` x86-64), downloaded with ``pip download --no-deps
  --only-binary=:all:`` at the versions installed here (``constraints.txt``); a pure-Python project published only
  as an sdist is built into a ``py3-none-any`` wheel here (``pip wheel``);
* ``msma_home/``: the converted ICT-FaceKit face model of this msma version from ``$MSMA_HOME`` (44 MiB with the
  head context mesh; the 133 MiB upstream archive cannot travel), with its checksum file;
* ``manifest.json``: what is inside, for which interpreter, and the sizes.

Nothing else. It prints the kit's size and that of the working tree that travels with it, and fails when both
together exceed the transfer limit (64 MiB).

    python scripts/device_kit.py [--out .device] [--python-version 3.12] [--limit-mib 64]
    python scripts/device_kit.py --plan          # list what would be fetched, download nothing

Which packages the device has: :data:`DEVICE_IMAGE_PACKAGES`, read off the device image's package list
(the device tool's KINDS.md, "Python packages already there", read on 2026-11-17).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

#: Packages the device image ships (normalised names), from the device tool's KINDS.md (read 2026-11-17).
DEVICE_IMAGE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
    torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
    uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)

#: Requirements of msma the device check does not use, left out of the kit with their own dependencies:
#: W&B (the check logs to CSV), the landmark backends (imported lazily; the check trains on synthetic faces:
#: dlib, face-alignment, MediaPipe with its OpenCV-contrib build, together far over the transfer limit) and
#: ``opencv-python`` (the image's ``opencv-python-headless`` provides the same ``cv2``).
NOT_NEEDED_ON_DEVICE = frozenset(
    {
        "wandb",
        "face-alignment",
        "opencv-python",
        "dlib-bin",
        "face-recognition-models",
        "mediapipe",
        "opencv-contrib-python",
    }
)

#: Wheel platforms the device's glibc accepts (newest first), for ``pip download --platform``.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalise(name: str) -> str:
    """PEP 503 normalised project name (``Hydra_Core`` -> ``hydra-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    """One package of the kit: normalised name and the exact version installed here."""

    name: str
    version: str


def runtime_closure(
    root: str = "msma",
    extras: Iterable[str] = ("cuda",),
    skip: Iterable[str] = (),
    provided: Iterable[str] = (),
) -> list[Pin]:
    """The installed distributions ``root`` needs at run time (its requirements, recursively), with versions.

    Args:
        root: distribution to start from (installed in this interpreter).
        extras: extras of ``root`` to include.
        skip: normalised names not to follow (neither they nor what only they need are listed).
        provided: normalised names supplied elsewhere in their own versions (the device image): listed, but
            their requirements are not followed (the provider's version brings its own).

    Returns:
        Pins sorted by name, ``root`` itself excluded.

    Raises:
        RuntimeError: a required distribution is not installed here (run ``make setup`` first).
    """
    skipped = {normalise(s) for s in skip}
    stop = {normalise(s) for s in provided}
    found: dict[str, str] = {}
    missing: list[str] = []
    todo: list[tuple[str, tuple[str, ...]]] = [(root, tuple(extras))]
    visited: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (normalise(name), tuple(sorted(wanted)))
        if key in visited:
            continue
        visited.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        if normalise(name) != normalise(root):
            found[normalise(name)] = dist.version
        if normalise(name) in stop:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if normalise(req.name) in skipped:
                continue
            if req.marker is not None:
                envs = [{"extra": ""}] + [{"extra": e} for e in wanted]
                if not any(req.marker.evaluate(env) for env in envs):
                    continue
            todo.append((req.name, tuple(req.extras)))
    if missing:
        raise RuntimeError(f"not installed here (run `make setup` first): {sorted(set(missing))}")
    return [Pin(n, v) for n, v in sorted(found.items())]


def missing_on_device(pins: Iterable[Pin], image: frozenset[str] = DEVICE_IMAGE_PACKAGES) -> list[Pin]:
    """The pins whose package the device image does not ship."""
    return [p for p in pins if p.name not in image]


def plan() -> list[Pin]:
    """What the kit must carry: msma's runtime closure minus the device image and the unused requirements."""
    return missing_on_device(runtime_closure(skip=NOT_NEEDED_ON_DEVICE, provided=DEVICE_IMAGE_PACKAGES))


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch_wheel(pin: Pin, dest: Path, python_version: str) -> Path:
    """Downloads the wheel of ``pin`` for the device (or builds a pure-Python one from its sdist) into ``dest``.

    Raises:
        RuntimeError: neither a matching wheel nor a pure-Python build exists.
    """
    before = set(dest.glob("*.whl"))
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    res = _pip(
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *plat,
        "-d",
        str(dest),
        f"{pin.name}=={pin.version}",
    )
    if res.returncode != 0:
        # An sdist-only project: build it here; accept it only if the result is pure Python.
        with tempfile.TemporaryDirectory() as tmp:
            built = _pip("wheel", "--quiet", "--no-deps", "-w", tmp, f"{pin.name}=={pin.version}")
            wheels = list(Path(tmp).glob("*.whl"))
            if built.returncode != 0 or not wheels:
                raise RuntimeError(f"{pin.name}=={pin.version}: no wheel for the device: {res.stderr.strip()[-600:]}")
            if not wheels[0].name.endswith("-none-any.whl"):
                raise RuntimeError(
                    f"{pin.name}=={pin.version}: only a platform-specific local build ({wheels[0].name})"
                )
            shutil.copy2(wheels[0], dest / wheels[0].name)
    new = set(dest.glob("*.whl")) - before
    if not new:  # already there from an earlier run
        stem = normalise(pin.name).replace("-", "_")
        new = {w for w in dest.glob("*.whl") if normalise(w.name.split("-")[0]).replace("-", "_") == stem}
    if not new:
        raise RuntimeError(f"{pin.name}=={pin.version}: pip reported success but no wheel appeared in {dest}")
    return sorted(new)[0]


def tree_size_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree that travels to the device (tracked + untracked-not-ignored files)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for rel in out.decode().split("\0"):
        path = root / rel
        if rel and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def copy_face_model(dest: Path) -> list[Path]:
    """Copies the converted ICT model of this msma version (and its ``.sha256``) from ``$MSMA_HOME`` into ``dest``,
    which then holds nothing else.

    Raises:
        FileNotFoundError: no converted model (run ``make assets`` first).
    """
    from msma.face_model.assets import ict_cache_path

    model = ict_cache_path()
    if not model.is_file():
        raise FileNotFoundError(f"no converted ICT model at {model}: run `make assets` first")
    shutil.rmtree(dest, ignore_errors=True)  # a model of an older recipe would be shipped beside this one
    dest.mkdir(parents=True)
    copied = []
    for src in (model, model.with_name(model.name + ".sha256")):
        if src.is_file():
            shutil.copy2(src, dest / src.name)
            copied.append(dest / src.name)
    return copied


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_kit(out: Path, python_version: str, limit_mib: float) -> dict[str, object]:
    """Builds the kit in ``out`` (see the module docstring) and returns its manifest.

    Raises:
        RuntimeError: a wheel cannot be had, or kit + working tree exceed ``limit_mib``.
    """
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = plan()
    files = {}
    for i, pin in enumerate(pins, 1):
        whl = fetch_wheel(pin, wheels, python_version)
        files[pin.name] = whl.name
        print(f"  [{i:>2}/{len(pins)}] {pin.name}=={pin.version}: {whl.name}", flush=True)
    keep = set(files.values())
    for stale in wheels.glob("*.whl"):
        if stale.name not in keep:
            stale.unlink()
    home_files = copy_face_model(out / "msma_home")
    kit_bytes = folder_size_bytes(out)
    tree_bytes = tree_size_bytes()
    manifest: dict[str, object] = {
        "python_version": python_version,
        "platforms": list(PLATFORMS),
        "packages": {p.name: {"version": p.version, "wheel": files[p.name]} for p in pins},
        "msma_home": {f.name: sha256(f) for f in home_files if f.suffix == ".npz"},
        "kit_mib": round(kit_bytes / 2**20, 2),
        "tree_mib": round(tree_bytes / 2**20, 2),
        "limit_mib": limit_mib,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    total = (kit_bytes + tree_bytes) / 2**20
    print(
        f"device kit: {out} {kit_bytes / 2**20:.1f} MiB ({len(pins)} wheels, face model) + working tree "
        f"{tree_bytes / 2**20:.1f} MiB = {total:.1f} MiB (limit {limit_mib:.0f} MiB)"
    )
    if total > limit_mib:
        raise RuntimeError(f"kit + working tree = {total:.1f} MiB exceeds the {limit_mib:.0f} MiB transfer limit")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".device")
    ap.add_argument("--python-version", default="3.12", help="the device interpreter's version (default 3.12)")
    ap.add_argument("--limit-mib", type=float, default=64.0, help="transfer limit for kit + working tree")
    ap.add_argument("--plan", action="store_true", help="print the packages the kit would carry and exit")
    args = ap.parse_args(argv)
    if args.plan:
        for pin in plan():
            print(f"{pin.name}=={pin.version}")
        return 0
    try:
        build_kit(args.out, args.python_version, args.limit_mib)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"device-kit: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
