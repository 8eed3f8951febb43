"""Asset resolution: cache verification and atomic rebuild, mirror, missing-asset error, the `msma assets` CLI."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from msma.cli.assets import cli_main as assets_cli
from msma.face_model import AssetError, FaceModel, load_face_model
from msma.face_model import assets as A
from msma.face_model.ict import ICT_ARCHIVE_NAME, ICT_URL
from msma.face_model.model import FaceModelArrays


def tiny_arrays() -> FaceModelArrays:
    n = 70
    rng = np.random.default_rng(0)
    return FaceModelArrays(
        name="ict",
        mean_shape=rng.normal(size=(n, 3)).astype(np.float32),
        id_basis=np.zeros((n, 3, 2), np.float32),
        exp_basis=np.zeros((n, 3, 1), np.float32),
        albedo_mean=np.full((n, 3), 0.5, np.float32),
        albedo_basis=np.zeros((n, 3, 1), np.float32),
        tri=np.array([[0, 1, 2]]),
        mesh_tri=np.array([[0, 1, 2], [0, 2, 3]]),
        landmark_idx=np.arange(68),
        skin_mask=np.ones(n, np.float32),
        id_std=np.ones(2, np.float32),
        tex_std=np.ones(1, np.float32),
        exp_kind="blendshape",
        exp_names=("jawOpen",),
        tex_names=("t",),
    )


@pytest.fixture()
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """$MSMA_HOME in tmp, a mirror holding a fake archive with the pinned checksum, a counting converter."""
    home, mirror = tmp_path / "home", tmp_path / "mirror"
    mirror.mkdir()
    (mirror / ICT_ARCHIVE_NAME).write_bytes(b"archive")
    monkeypatch.setenv("MSMA_HOME", str(home))
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(mirror))
    monkeypatch.setattr(A, "ICT_ARCHIVE_SHA256", hashlib.sha256(b"archive").hexdigest())
    calls: list[Path] = []

    def fake_convert(src: Path, progress: object = None) -> FaceModelArrays:
        calls.append(Path(src))
        return tiny_arrays()

    monkeypatch.setattr(A, "convert_ict", fake_convert)

    def no_network(*_a: object, **_k: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return {"home": home, "mirror": mirror, "calls": calls}


def test_cache_built_from_mirror_then_reused(fake_env: dict[str, object]) -> None:
    calls: list[Path] = fake_env["calls"]  # type: ignore[assignment]
    m = load_face_model("ict")
    assert isinstance(m, FaceModel) and m.n_vertices == 70
    path = A.ict_cache_path()
    assert path.parent == fake_env["home"] and path.is_file()
    assert A.cache_is_valid(path)
    assert calls == [Path(fake_env["mirror"]) / ICT_ARCHIVE_NAME]  # type: ignore[operator]
    load_face_model("ict")
    assert len(calls) == 1  # second load: verified cache, no conversion
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporaries left


def test_corrupt_or_half_written_cache_is_rebuilt(fake_env: dict[str, object]) -> None:
    calls: list[Path] = fake_env["calls"]  # type: ignore[assignment]
    load_face_model("ict")
    path = A.ict_cache_path()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: checksum mismatch
    assert not A.cache_is_valid(path)
    m = load_face_model("ict")
    assert m.n_vertices == 70 and len(calls) == 2 and A.cache_is_valid(path)
    A._sidecar(path).unlink()  # missing sidecar (e.g. killed between the two writes)
    assert not A.cache_is_valid(path)
    load_face_model("ict")
    assert len(calls) == 3


def test_missing_asset_error_names_variable_and_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, object]
) -> None:
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(tmp_path / "empty"))
    with pytest.raises(AssetError) as info:
        load_face_model("ict")
    msg = str(info.value)
    assert "MSMA_ASSET_MIRROR" in msg and ICT_URL in msg and ICT_ARCHIVE_NAME in msg
    assert "network disabled" in msg


def test_mirror_with_wrong_checksum_is_rejected(fake_env: dict[str, object]) -> None:
    (Path(fake_env["mirror"]) / ICT_ARCHIVE_NAME).write_bytes(b"tampered")  # type: ignore[arg-type]
    with pytest.raises(AssetError, match="does not match"):
        A.find_ict_archive()


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="unknown face model"):
        load_face_model("flame")


def test_cli_ict(fake_env: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[Path] = fake_env["calls"]  # type: ignore[assignment]
    assert assets_cli(["ict"]) == 0
    out = capsys.readouterr().out
    assert "ict:" in out and "MiB" in out and " s" in out and "70 vertices" in out
    assert assets_cli(["ict", "--force"]) == 0
    assert len(calls) == 2
    src = Path(str(fake_env["mirror"])) / ICT_ARCHIVE_NAME
    assert assets_cli(["ict", "--force", "--source", str(src)]) == 0
    assert calls[-1] == src


def test_cli_ict_reports_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, object]) -> None:
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(tmp_path / "empty"))
    assert assets_cli(["ict"]) == 1


def test_msma_home_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSMA_HOME", raising=False)
    assert A.msma_home() == Path.home() / ".cache" / "msma"
    monkeypatch.setenv("MSMA_HOME", "/x/y")
    assert A.msma_home() == Path("/x/y")
    assert os.fspath(A.ict_cache_path()).startswith("/x/y/ict_")


class FakeResponse:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.headers = {"Content-Length": str(len(payload))}

    def read(self, n: int = -1) -> bytes:
        out, self.payload = (self.payload, b"") if n < 0 else (self.payload[:n], self.payload[n:])
        return out

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_download_when_no_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, object]) -> None:
    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(tmp_path / "empty"))
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        urls.append(url)
        return FakeResponse(b"archive")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = A.find_ict_archive()
    assert urls == [ICT_URL] and path == A.msma_home() / "downloads" / ICT_ARCHIVE_NAME
    assert path.read_bytes() == b"archive"
    assert A.find_ict_archive() == path and len(urls) == 1  # reused, verified, not downloaded again
    # A corrupted download fails the checksum and leaves nothing behind.
    path.unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"garbage"))
    with pytest.raises(AssetError, match="sha256"):
        A.find_ict_archive()
    assert not path.exists()
