"""ICT-FaceKit converter: OBJ parsing, landmarks, units/regions, albedo prior, subset == slices of the full model."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from msma.face_model import FaceModel
from msma.face_model.albedo import ALBEDO_MODE_NAMES
from msma.face_model.ict import (
    FACE_AREA,
    ICT_ARCHIVE_NAME,
    MOUTH_SOCKET,
    SCLERA_LEFT,
    IctSource,
    convert_ict,
    ict_layout,
    kept_vertex_indices,
    parse_obj_topology,
    parse_obj_vertices,
    parse_readme_landmarks,
)

OBJ = b"""# comment
mtllib x.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 2 0.5 0.25
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl a
f 1/1 2/2 3/3 4/4
f 2/2 5/1 3/3
"""


def mirror_zip() -> Path:
    mirror = os.environ.get("MSMA_ASSET_MIRROR")
    if not mirror or not (Path(mirror) / ICT_ARCHIVE_NAME).is_file():
        pytest.skip("ICT-FaceKit mirror (MSMA_ASSET_MIRROR) not available")
    return Path(mirror) / ICT_ARCHIVE_NAME


def test_parse_obj_vertices_and_topology() -> None:
    v = parse_obj_vertices(OBJ)
    assert v.shape == (5, 3) and v[4].tolist() == [2.0, 0.5, 0.25]
    topo = parse_obj_topology(OBJ)
    # quad (1,2,3,4) -> (0,1,2), (0,2,3); triangle stays
    assert topo.tri.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]]
    assert topo.tri_uv.tolist() == [[0, 1, 2], [0, 2, 3], [1, 0, 2]]
    assert topo.polygon.tolist() == [0, 0, 1]
    assert topo.uv.shape == (4, 2)
    with pytest.raises(ValueError, match="relative"):
        parse_obj_topology(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\n")
    with pytest.raises(ValueError, match="no vertices"):
        parse_obj_vertices(b"f 1 2 3\n", "empty.obj")
    with pytest.raises(ValueError, match="bad.obj"):
        parse_obj_vertices(b"v 0 0\nv 1 1\n", "bad.obj")


def test_parse_readme_landmarks() -> None:
    text = "intro\nMulti-PIE 68 point facial landmarks indices:\n\n    " + ", ".join(str(i) for i in range(68)) + "\n"
    assert parse_readme_landmarks(text).tolist() == list(range(68))
    with pytest.raises(ValueError, match="expected 68"):
        parse_readme_landmarks("Multi-PIE 68 point facial landmarks indices:\n 1, 2, 3\n")
    with pytest.raises(ValueError, match="no 'Multi-PIE"):
        parse_readme_landmarks("nothing here")


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        IctSource(tmp_path / "absent.zip")
    with pytest.raises(FileNotFoundError, match="generic_neutral_mesh"):
        IctSource(tmp_path)
    (tmp_path / "fake.zip").write_bytes(b"no zip")
    with pytest.raises(ValueError, match="fake.zip"):
        IctSource(tmp_path / "fake.zip")


def test_ict_units_regions_and_prior(ict_model: FaceModel) -> None:
    m = ict_model
    assert m.n_vertices == len(kept_vertex_indices()) == 9409 + 2046 + 2 * 770
    assert m.layout == ict_layout()
    lm = m.mean_shape[m.landmark_idx]
    # millimetres: jaw width (0..16) ~ 147 mm, outer eye corners ~ 89 mm, nose tip in front of the eyes.
    assert 120 < float(lm[16, 0] - lm[0, 0]) < 180
    assert 80 < float(lm[45, 0] - lm[36, 0]) < 100
    assert float(lm[30, 2]) > float(lm[36:48, 2].mean()) + 20
    # Rendered triangles: the narrow face area (< 6706), the mouth socket and the eyeballs' front halves.
    used = m.tri.reshape(-1).unique()
    extra = used >= FACE_AREA[1]
    assert int(used[~extra].max()) < 6706
    n_mouth = MOUTH_SOCKET[1] - MOUTH_SOCKET[0]
    mouth = (used >= FACE_AREA[1]) & (used < FACE_AREA[1] + n_mouth)
    eyes = used >= FACE_AREA[1] + n_mouth
    assert int(mouth.sum()) == n_mouth and 0 < int(eyes.sum()) < 2 * 770
    # tri is a subset of mesh_tri
    mesh_set = {tuple(t) for t in m.mesh_tri.tolist()}
    assert all(tuple(t) in mesh_set for t in m.tri[:: max(1, len(m.tri) // 500)].tolist())
    # Eyeballs and the mouth interior are not skin; the cheeks are.
    assert float(m.skin_mask[FACE_AREA[1] :].max()) == 0.0
    assert float(m.skin_mask[m.landmark_idx[[1, 15, 29]]].min()) > 0.9
    # The face area's UVs lie in the first UV tile (other regions use other UDIM tiles upstream).
    face_uv = m.uv[: FACE_AREA[1]]  # type: ignore[index]
    assert float(face_uv.min()) >= 0.0 and float(face_uv.max()) <= 1.0
    # Identity modes come pre-scaled by their stds (decreasing RMS), coefficients ~N(0, 1).
    rms = m.id_basis.square().sum(1).mean(0).sqrt()
    assert float(rms[0]) > 2.0 and float(rms[0]) > 10 * float(rms[-1])
    torch.testing.assert_close(m.id_std, torch.ones(100))
    # Expressions are blendshape deltas: jawOpen moves the chin down by centimetres.
    jaw = m.exp_names.index("jawOpen")
    assert float(m.exp_basis[m.landmark_idx[8], 1, jaw]) < -5.0


def test_albedo_prior_plausible(ict_model: FaceModel) -> None:
    m = ict_model
    assert m.tex_names == ALBEDO_MODE_NAMES
    mean = m.albedo_mean
    assert float(mean.min()) >= 0 and float(mean.max()) <= 1
    skin = mean[m.landmark_idx[1]]
    lip = mean[m.landmark_idx[62]]
    assert float(lip[0] - lip[1]) > float(skin[0] - skin[1])  # lips redder than cheeks
    # The left eyeball: an iris/pupil cap (dark) in front, sclera (bright) elsewhere.
    start = FACE_AREA[1] + MOUTH_SOCKET[1] - MOUTH_SOCKET[0]
    ball = torch.arange(start, start + SCLERA_LEFT[1] - SCLERA_LEFT[0])
    lum = mean[ball].mean(-1)
    assert float(lum.min()) < 0.1 and float(lum.max()) > 0.7
    front = m.mean_shape[ball, 2] > m.mean_shape[ball, 2].mean()
    centre = m.mean_shape[ball, :2].mean(0)
    on_axis = front & ((m.mean_shape[ball, :2] - centre).norm(dim=-1) < 1.5)
    assert float(lum[on_axis].max()) < 0.1  # pupil
    g = torch.Generator().manual_seed(0)
    samples = m.albedo(torch.randn(64, m.layout.n_tex, generator=g))
    inside = ((samples >= 0) & (samples <= 1)).float().mean()
    assert float(inside) > 0.99
    # Each mode changes the albedo somewhere, with a plausible size (std per mode 0.005..0.2).
    per_mode = m.albedo_basis.abs().amax(dim=(0, 1))
    assert bool((per_mode > 0.005).all()) and bool((per_mode < 0.25).all())


@pytest.mark.slow
def test_subset_conversion_equals_full_slices(ict_model: FaceModel, tmp_path: Path) -> None:
    ids = [0, 37, 99]
    exprs = ["jawOpen", "eyeBlink_L", "mouthSmile_R"]
    sub = convert_ict(mirror_zip(), identities=ids, expressions=exprs)
    full = ict_model
    assert np.array_equal(sub.id_basis, full.id_basis[:, :, ids].numpy())
    exp_idx = [full.exp_names.index(e) for e in exprs]
    assert np.array_equal(sub.exp_basis, full.exp_basis[:, :, exp_idx].numpy())
    for key in ("mean_shape", "albedo_mean", "albedo_basis", "tri", "mesh_tri", "landmark_idx", "skin_mask", "uv"):
        assert np.array_equal(getattr(sub, key), getattr(full, key).numpy()), key
    assert sub.exp_names == tuple(exprs)
    # The same subset from an extracted copy (with the archive's top folder) gives identical arrays.
    with zipfile.ZipFile(mirror_zip()) as zf:
        wanted = [f"identity{i:03d}.obj" for i in ids] + [f"{e}.obj" for e in exprs]
        wanted += ["generic_neutral_mesh.obj", "vertex_indices.json"]
        for name in zf.namelist():
            if name.endswith("README.md") and name.count("/") == 1 or name.rsplit("/", 1)[-1] in wanted:
                zf.extract(name, tmp_path)
    from_dir = convert_ict(tmp_path, identities=ids, expressions=exprs)
    for key in ("mean_shape", "id_basis", "exp_basis", "albedo_basis", "tri", "landmark_idx"):
        assert np.array_equal(getattr(from_dir, key), getattr(sub, key)), key
    with pytest.raises(ValueError, match="unknown ICT expressions"):
        convert_ict(mirror_zip(), identities=[0], expressions=["notAnExpression"])
