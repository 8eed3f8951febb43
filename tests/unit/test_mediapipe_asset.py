"""The MediaPipe bundle: mirror, download, checksum mismatch and missing paths (offline), the canonical mesh and
the 478 -> 68 map read from the real bundle."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from msma.data import mediapipe_asset as MA
from msma.data.mediapipe_mesh import (
    FACE_OVAL,
    MEDIAPIPE_TO_68,
    MIRROR_468,
    NUM_DENSE,
    NUM_MESH,
    mirror_dense,
    parse_canonical_mesh,
    read_canonical_mesh,
)
from msma.face_model.assets import AssetError


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home, mirror = tmp_path / "home", tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("MSMA_HOME", str(home))
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(mirror))
    monkeypatch.delenv(MA.ENV_FACE_LANDMARKER, raising=False)
    monkeypatch.setattr(MA, "FACE_LANDMARKER_SHA256", hashlib.sha256(b"bundle").hexdigest())

    def no_network(*_a: object, **_k: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return {"home": home, "mirror": mirror}


def test_mirror_is_used_when_its_checksum_matches(offline: dict[str, Path]) -> None:
    (offline["mirror"] / MA.FACE_LANDMARKER_NAME).write_bytes(b"bundle")
    assert MA.find_face_landmarker() == offline["mirror"] / MA.FACE_LANDMARKER_NAME


def test_checksum_mismatch_and_no_network_error_names_mirror_and_url(offline: dict[str, Path]) -> None:
    (offline["mirror"] / MA.FACE_LANDMARKER_NAME).write_bytes(b"tampered")
    with pytest.raises(AssetError) as err:
        MA.find_face_landmarker()
    msg = str(err.value)
    assert "MSMA_ASSET_MIRROR" in msg and MA.FACE_LANDMARKER_URL in msg
    assert "does not match" in msg and "network disabled" in msg


def test_download_verified_and_reused(offline: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Resp(io.BytesIO):
        headers = {"Content-Length": "6"}

        def __enter__(self) -> Resp:
            return self

        def __exit__(self, *a: object) -> None:
            self.close()

    def fake_urlopen(url: str, timeout: float = 0.0) -> Resp:
        calls.append(url)
        return Resp(b"bundle")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = MA.find_face_landmarker()
    assert path == offline["home"] / "downloads" / MA.FACE_LANDMARKER_NAME
    assert path.read_bytes() == b"bundle" and calls == [MA.FACE_LANDMARKER_URL]
    assert MA.find_face_landmarker() == path and len(calls) == 1  # verified previous download, no new fetch


def test_download_with_wrong_checksum_is_rejected(offline: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    class Resp(io.BytesIO):
        headers: dict[str, str] = {}

        def __enter__(self) -> Resp:
            return self

        def __exit__(self, *a: object) -> None:
            self.close()

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0.0: Resp(b"evil"))
    with pytest.raises(AssetError, match="expected"):
        MA.find_face_landmarker()
    assert not (offline["home"] / "downloads" / MA.FACE_LANDMARKER_NAME).exists()


def test_explicit_path(offline: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.task"):
        MA.find_face_landmarker(tmp_path / "nope.task")
    f = tmp_path / "other.task"
    f.write_bytes(b"x")
    assert MA.find_face_landmarker(f) == f


def test_shared_mirror_holds_the_pinned_bundle(shared_dir: Path) -> None:
    path = shared_dir / "assets" / MA.FACE_LANDMARKER_NAME
    assert path.stat().st_size == MA.FACE_LANDMARKER_SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MA.FACE_LANDMARKER_SHA256


def test_canonical_mesh_from_the_bundle(shared_dir: Path) -> None:
    mesh = read_canonical_mesh(shared_dir / "assets" / MA.FACE_LANDMARKER_NAME)
    assert mesh.vertices.shape == (NUM_MESH, 3) and mesh.triangles.shape == (898, 3)
    assert mesh.uv.min() >= 0.0 and mesh.uv.max() <= 1.0
    v = mesh.vertices
    # a face in cm, x to the viewer's right, y up, z to the viewer: the subject's right eye corner (33) on the
    # left, mirrored by 263; nose tip (4) in front; chin (152) below the forehead (10)
    assert v[33, 0] < -3 and np.allclose(v[263] * [-1, 1, 1], v[33], atol=1e-3)
    assert v[4, 2] > v[33, 2] + 3 and v[152, 1] < v[10, 1] - 15
    assert 12 < np.linalg.norm(v[234] - v[454]) < 18


def test_index_maps() -> None:
    assert len(MEDIAPIPE_TO_68) == 68 and len(set(MEDIAPIPE_TO_68)) == 68
    assert max(MEDIAPIPE_TO_68) < NUM_MESH and len(FACE_OVAL) == 36
    assert MEDIAPIPE_TO_68[8] == 152 and MEDIAPIPE_TO_68[30] == 4  # chin, nose tip
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    assert tuple(c.start for c in FaceLandmarksConnections.FACE_LANDMARKS_FACE_OVAL) == FACE_OVAL


def test_mirror_468_is_the_canonical_mesh_symmetry(shared_dir: Path) -> None:
    from scipy.spatial import cKDTree

    from msma.data.landmark_index import MIRROR_68

    mesh = read_canonical_mesh(shared_dir / "assets" / MA.FACE_LANDMARKER_NAME)
    v = mesh.vertices
    dist, nearest = cKDTree(v).query(v * [-1.0, 1.0, 1.0])
    perm = np.asarray(MIRROR_468)
    assert perm.shape == (NUM_MESH,) and dist.max() < 1e-6  # the canonical face is exactly symmetric
    np.testing.assert_array_equal(perm, nearest)
    np.testing.assert_array_equal(perm[perm], np.arange(NUM_MESH))  # an involution
    assert (perm == np.arange(NUM_MESH)).sum() == 28 and np.abs(v[perm == np.arange(NUM_MESH), 0]).max() < 1e-6
    triangles = {tuple(sorted(t)) for t in mesh.triangles.tolist()}
    assert {tuple(sorted(t)) for t in perm[mesh.triangles].tolist()} == triangles
    assert set(perm[list(FACE_OVAL)].tolist()) == set(FACE_OVAL)
    assert all(perm[MEDIAPIPE_TO_68[i]] == MEDIAPIPE_TO_68[MIRROR_68[i]] for i in range(68))
    # mirror_dense: x mirrored in the image, re-indexed, iris dropped; twice is the identity on the mesh.
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (NUM_DENSE, 3)).astype(np.float32)
    once = mirror_dense(pts, 120)
    assert once.shape == pts.shape and np.isnan(once[NUM_MESH:]).all()
    np.testing.assert_allclose(once[33], [119 - pts[263, 0], pts[263, 1], pts[263, 2]])
    np.testing.assert_allclose(mirror_dense(once, 120)[:NUM_MESH], pts[:NUM_MESH], atol=1e-4)
    with pytest.raises(ValueError, match="dense points"):
        mirror_dense(pts[:100], 120)


def test_parse_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="geometry pipeline"):
        parse_canonical_mesh(b"\x0a\x05hello")
    bad = tmp_path / "x.task"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="x.task"):
        read_canonical_mesh(bad)


def test_assets_command_verifies_the_bundle_and_builds_the_correspondence(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`msma assets mediapipe` (run by `make setup`): finds the mirror's bundle, says it is verified, caches the
    correspondence to ICT under $MSMA_HOME; offline without a mirror it fails with exit 1 naming the mirror."""
    from msma.cli.assets import cli_main

    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(shared_dir / "assets"))
    monkeypatch.delenv(MA.ENV_FACE_LANDMARKER, raising=False)
    assert cli_main(["mediapipe"]) == 0
    out = capsys.readouterr().out
    assert str(shared_dir / "assets" / MA.FACE_LANDMARKER_NAME) in out and "sha256 verified" in out
    assert "correspondence to ICT: 468 points" in out

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(empty))
    monkeypatch.setenv("MSMA_HOME", str(tmp_path / "home"))

    def no_network(*_a: object, **_k: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert cli_main(["mediapipe"]) == 1
    assert "MSMA_ASSET_MIRROR" in capsys.readouterr().err
