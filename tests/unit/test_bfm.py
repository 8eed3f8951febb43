"""BFM09 in Deep3D's format, on small synthetic files with the real keys, shapes, dtypes and conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.io import savemat

from msma.cli.assets import cli_main
from msma.face_model import load_face_model
from msma.face_model.bfm import DM_TO_MM, arrays_from_front, convert_bfm09, load_bfm, read_exp_pca

RNG = np.random.default_rng(7)
ICO = trimesh.creation.icosphere(subdivisions=1, radius=0.8)  # 42 vertices, 80 faces; 0.8 dm = 80 mm
N = len(ICO.vertices)
TRI1 = np.asarray(ICO.faces, dtype=np.float64) + 1  # MATLAB 1-based, stored as double like the real file


def point_buf(tri0: np.ndarray, n: int) -> np.ndarray:
    buf = np.full((n, 8), len(tri0) + 1, dtype=np.float64)
    fill = np.zeros(n, dtype=int)
    for f, t in enumerate(tri0):
        for v in t:
            if fill[v] < 8:
                buf[v, fill[v]] = f + 1
                fill[v] += 1
    return buf


def info_content() -> dict[str, np.ndarray]:
    keypoints = (np.arange(68) % N + 1).astype(np.float64).reshape(1, 68)
    return {
        "tri": TRI1,
        "point_buf": point_buf(TRI1.astype(np.int64) - 1, N),
        "tri_mask2": TRI1[:40],
        "keypoints": keypoints,
        "frontmask2_idx": np.arange(1, 31, dtype=np.float64).reshape(-1, 1),
        "skinmask": (np.arange(N) % 3 != 0).astype(np.float64).reshape(1, N),
    }


def front_content() -> dict[str, np.ndarray]:
    mean = np.asarray(ICO.vertices) + np.array([0.1, -0.2, 0.3])  # not centred: the loader recentres
    return {
        "meanshape": mean.reshape(1, -1).astype(np.float32),
        "idBase": (1e-3 * RNG.normal(size=(3 * N, 80))).astype(np.float32),
        "exBase": (1e-3 * RNG.normal(size=(3 * N, 64))).astype(np.float32),
        "meantex": RNG.uniform(80, 200, size=(1, 3 * N)).astype(np.float32),
        "texBase": RNG.normal(scale=10.0, size=(3 * N, 80)).astype(np.float32),
        **info_content(),
    }


@pytest.fixture()
def front_mat(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    content = front_content()
    path = tmp_path / "BFM_model_front.mat"
    savemat(path, content)
    return path, content


def test_front_mat_loader(front_mat: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, c = front_mat
    m = load_face_model("bfm", path=str(path))
    assert m.name == "bfm" and m.exp_kind == "pca" and m.uv is None
    assert (m.layout.n_id, m.layout.n_exp, m.layout.n_tex) == (80, 64, 80) and m.layout.total == 257
    mean = c["meanshape"].reshape(-1, 3).astype(np.float64)
    expected = (mean - mean.mean(0)) * 100.0
    np.testing.assert_allclose(m.mean_shape.numpy(), expected, rtol=1e-5, atol=1e-4)
    assert abs(float(m.mean_shape.mean(0).abs().max())) < 1e-3  # recentred
    np.testing.assert_allclose(m.id_basis[5, 1, 7].item(), c["idBase"][3 * 5 + 1, 7] * DM_TO_MM, rtol=1e-5)
    np.testing.assert_allclose(m.exp_basis[9, 2, 63].item(), c["exBase"][3 * 9 + 2, 63] * DM_TO_MM, rtol=1e-5)
    np.testing.assert_allclose(m.albedo_mean.numpy(), c["meantex"].reshape(-1, 3) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(m.albedo_basis[3, 0, 11].item(), c["texBase"][9, 11] / 255.0, rtol=1e-5)
    assert torch.equal(m.tri, torch.as_tensor(c["tri"], dtype=torch.int64) - 1)
    assert int(m.tri.min()) == 0 and torch.equal(m.mesh_tri, m.tri)
    assert m.landmark_idx.tolist() == [(k % N) for k in range(68)]
    np.testing.assert_array_equal(m.skin_mask.numpy(), c["skinmask"].reshape(-1))
    # The icosphere's faces are counter-clockwise from outside, like BFM's: normals point outward.
    n = m.vertex_normals(m.mean_shape[None])[0]
    radial = torch.nn.functional.normalize(m.mean_shape, dim=-1)
    assert float((n * radial).sum(-1).min()) > 0.95
    # Forward works with Deep3D's 257 layout.
    out = m(m.layout.split(torch.zeros(2, 257)))
    assert out.vertices.shape == (2, N, 3) and out.landmarks_2d.shape == (2, 68, 2)
    # A folder holding the file works too.
    m2 = load_bfm(path.parent)
    assert torch.equal(m2.mean_shape, m.mean_shape)


def test_front_mat_errors(tmp_path: Path) -> None:
    content = front_content()
    del content["idBase"]
    bad = tmp_path / "BFM_model_front.mat"
    savemat(bad, content)
    with pytest.raises(ValueError, match="idBase"):
        load_bfm(bad)
    with pytest.raises(ValueError, match="meantex"):
        arrays_from_front({**front_content(), "meantex": np.zeros((1, 5))})
    with pytest.raises(FileNotFoundError):
        load_bfm(tmp_path / "nothing.mat")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("idBase", {"a": 1.0}, "idBase is not a real numeric array (MATLAB type struct)"),
        ("tri", np.array([[np.zeros(3), "x"]], dtype=object), "tri is not a real numeric array (MATLAB type cell)"),
        ("meanshape", "hello", "meanshape is not a real numeric array (MATLAB type char)"),
    ],
)
def test_front_mat_fields_that_are_not_arrays(tmp_path: Path, key: str, value: object, message: str) -> None:
    """A struct / cell / string field used to escape as a TypeError (or a cast error without the file)."""
    bad = tmp_path / "BFM_model_front.mat"
    savemat(bad, {**front_content(), key: value})
    with pytest.raises(ValueError) as info:
        load_bfm(bad)
    assert str(info.value) == f"{bad}: {message}"


def test_empty_and_truncated_bfm_files_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scipy's MatReadError (an empty or truncated file) is not a ValueError: it ended `msma assets bfm` with a
    traceback."""
    good = tmp_path / "good.mat"
    savemat(good, front_content())
    for name, data in (("empty", b""), ("cut", good.read_bytes()[:100])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "BFM_model_front.mat").write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}/BFM_model_front\.mat: cannot read MATLAB file"):
            load_bfm(folder)
        assert cli_main(["bfm", "--dir", str(folder)]) == 1
        assert f"{name}/BFM_model_front.mat: cannot read MATLAB file" in capsys.readouterr().err


def test_missing_bfm_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSMA_BFM_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="MSMA_BFM_DIR"):
        load_face_model("bfm")


def write_sources(folder: Path) -> dict[str, np.ndarray]:
    """Synthetic 01_MorphableModel.mat + Exp_Pca.bin + std_exp.txt + index/info files (Deep3D's layout)."""
    n_bfm, n_exp_v, exp_dim = 60, 50, 79
    shape_mu = RNG.uniform(-8e4, 8e4, size=(3 * n_bfm, 1))
    shape_pc = RNG.normal(size=(3 * n_bfm, 199))
    shape_ev = RNG.uniform(100, 5000, size=(199, 1))
    tex_mu = RNG.uniform(50, 200, size=(3 * n_bfm, 1))
    tex_pc = RNG.normal(size=(3 * n_bfm, 199))
    tex_ev = RNG.uniform(1, 20, size=(199, 1))
    savemat(
        folder / "01_MorphableModel.mat",
        {
            "shapeMU": shape_mu,
            "shapePC": shape_pc,
            "shapeEV": shape_ev,
            "texMU": tex_mu,
            "texPC": tex_pc,
            "texEV": tex_ev,
        },
    )
    exp_mu = RNG.normal(size=3 * n_exp_v).astype(np.float32)
    exp_pc_rows = RNG.normal(size=(exp_dim, 3 * n_exp_v)).astype(np.float32)  # component-major on disk
    with open(folder / "Exp_Pca.bin", "wb") as fh:
        fh.write(np.array([exp_dim], dtype="<i4").tobytes())
        fh.write(exp_mu.astype("<f4").tobytes())
        fh.write(exp_pc_rows.astype("<f4").tobytes())
    std_exp = RNG.uniform(1e3, 1e4, size=exp_dim)
    np.savetxt(folder / "std_exp.txt", std_exp)
    trim = RNG.permutation(n_bfm)[:n_exp_v] + 1  # 1-based into BFM09's vertices
    front = RNG.permutation(n_exp_v)[:N] + 1  # 1-based into the expression model's vertices
    savemat(folder / "BFM_exp_idx.mat", {"trimIndex": trim.reshape(-1, 1).astype(np.float64)})
    savemat(folder / "BFM_front_idx.mat", {"idx": front.reshape(-1, 1).astype(np.float64)})
    savemat(folder / "facemodel_info.mat", info_content())
    return {
        "shape_mu": shape_mu,
        "shape_pc": shape_pc,
        "shape_ev": shape_ev,
        "tex_mu": tex_mu,
        "tex_pc": tex_pc,
        "tex_ev": tex_ev,
        "exp_pc_rows": exp_pc_rows,
        "std_exp": std_exp,
        "trim": trim,
        "front": front,
    }


def test_deep3d_conversion_from_sources(tmp_path: Path) -> None:
    s = write_sources(tmp_path)
    mean_pc, pcs = read_exp_pca(tmp_path / "Exp_Pca.bin", 50)
    assert pcs.shape == (150, 79) and np.array_equal(pcs[:, 3], s["exp_pc_rows"][3])
    content = convert_bfm09(tmp_path)
    assert content["meanshape"].shape == (1, 3 * N) and content["idBase"].shape == (3 * N, 80)
    assert content["exBase"].shape == (3 * N, 64) and content["texBase"].shape == (3 * N, 80)
    m = load_bfm(tmp_path)  # folder without BFM_model_front.mat -> converted from the sources
    j = 17  # front vertex -> expression vertex e -> BFM vertex b
    e = s["front"][j] - 1
    b = s["trim"][e] - 1
    # identity: shapePC * shapeEV / 1e5 (dm) * 100 (mm)
    exp_id = s["shape_pc"][3 * b : 3 * b + 3, 5] * s["shape_ev"][5, 0] * 1e-5 * 100
    np.testing.assert_allclose(m.id_basis[j, :, 5].numpy(), exp_id, rtol=1e-5)
    exp_ex = s["exp_pc_rows"][10, 3 * e : 3 * e + 3] * s["std_exp"][10] * 1e-5 * 100
    np.testing.assert_allclose(m.exp_basis[j, :, 10].numpy(), exp_ex, rtol=1e-5)
    exp_tex = s["tex_pc"][3 * b : 3 * b + 3, 2] * s["tex_ev"][2, 0] / 255.0
    np.testing.assert_allclose(m.albedo_basis[j, :, 2].numpy(), exp_tex, rtol=1e-5)
    np.testing.assert_allclose(m.albedo_mean[j].numpy(), s["tex_mu"][3 * b : 3 * b + 3, 0] / 255.0, rtol=1e-6)
    mu = s["shape_mu"].reshape(-1, 3)[s["trim"][s["front"] - 1] - 1] * 1e-5
    np.testing.assert_allclose(m.mean_shape.numpy(), (mu - mu.mean(0)) * 100, rtol=1e-4, atol=1e-3)


def test_sources_missing_file(tmp_path: Path) -> None:
    write_sources(tmp_path)
    (tmp_path / "std_exp.txt").unlink()
    with pytest.raises(FileNotFoundError, match="std_exp.txt"):
        convert_bfm09(tmp_path)
    (tmp_path / "std_exp.txt").write_text("1.0 abc\n")
    with pytest.raises(ValueError, match=r"std_exp\.txt: not a list of numbers"):
        convert_bfm09(tmp_path)


def test_cli_bfm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sources(tmp_path)
    out = tmp_path / "bfm.npz"
    assert cli_main(["bfm", "--dir", str(tmp_path), "--out", str(out)]) == 0
    assert "bfm: 42 vertices" in capsys.readouterr().out
    m = load_face_model("bfm", path=str(out))
    assert m.n_vertices == N
    assert cli_main(["bfm", "--dir", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err
