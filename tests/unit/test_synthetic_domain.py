"""Domain randomisation of the synthetic generator: each layer changes pixels where expected and no label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from msma.data.synthetic import SyntheticFaceDataset
from msma.data.synthetic.camera_effects import EFFECTS, apply_camera_effects
from msma.data.synthetic.dataset import DOMAIN_EFFECTS
from msma.data.synthetic.jitter import jitter_params, similarity_lstsq
from msma.data.synthetic.occluders import OCCLUDER_KINDS, occluder_layers
from msma.data.synthetic.sampling import SYNTHETIC_VERSION, population_albedo
from msma.face_model.context import PART_GUMS, PART_TEETH
from msma.face_model.params import FaceParams
from msma.render.renderer import MeshRenderer

S = 64
N = 8


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ds(model, effects, n: int = N, **kw):  # type: ignore[no-untyped-def]
    return SyntheticFaceDataset(model, n, seed=11, image_size=S, progress=False, effects=effects, **kw)


def _face_only(model, params: torch.Tensor):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return MeshRenderer(backend="torch").render(model(model.layout.split(params), S), model.tri_int32)


def test_version_bumped_and_effects_in_the_cache_key(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert SYNTHETIC_VERSION == 5
    keys = {_ds(ict_model, e, cache_dir=tmp_path).cache_key() for e in (None, (), ("camera",))}
    assert len(keys) == 3
    assert _ds(ict_model, None).effects == DOMAIN_EFFECTS
    with pytest.raises(ValueError, match="unknown synthetic effects"):
        _ds(ict_model, ("sparkles",))


def test_full_generator_keeps_exact_ground_truth(ict_model) -> None:  # type: ignore[no-untyped-def]
    ds = _ds(ict_model, None)
    again = _ds(ict_model, None, n=40)
    for i in (0, 5):
        a, b = ds[i], again[i]
        assert torch.equal(a.image, b.image) and torch.equal(a.landmarks, b.landmarks)  # deterministic
    params = torch.stack([ds[i].params for i in range(N)])
    lm = torch.stack([ds[i].landmarks for i in range(N)])
    with torch.no_grad():
        face = ict_model(ict_model.layout.split(params), S)
    # the stored landmarks are the projections of the stored coefficients' landmark vertices
    assert torch.allclose(face.landmarks_2d, lm, atol=1e-3)
    # and the stored vertices are the posed shape of the stored coefficients
    assert torch.allclose(ds[3].vertices, face.vertices[3], atol=1e-2)  # type: ignore[arg-type]


@pytest.mark.parametrize("effect", [e for e in DOMAIN_EFFECTS if e != "jitter"])
def test_each_effect_changes_pixels_not_labels(ict_model, effect: str) -> None:  # type: ignore[no-untyped-def]
    # (the legacy painted head, drawn where no head mesh is rendered, takes its colour from the lit face)
    # Clothing and occluders are random draws (occluders: about one sample in two; clothing below the chin, inside
    # the crop when the face is framed as a detector frames it): enough samples, and the detector-like framing
    # ("jitter") on both sides for clothing, so that the layer appears. With 8 samples and the sampled placement
    # none appeared (generator version 4's seeds).
    n = 24 if effect in ("clothing", "occluders") else N
    extra: tuple[str, ...] = ("jitter",) if effect == "clothing" else ()
    base = _ds(ict_model, extra, n=n, head_context=False)
    fx = _ds(ict_model, (effect, *extra), n=n, head_context=False)
    changed = 0.0
    for i in range(n):
        a, b = base[i], fx[i]
        assert torch.equal(a.params, b.params) and torch.equal(a.landmarks, b.landmarks)
        diff = (a.image - b.image).abs().amax(0)
        changed += float((diff > 2 / 255).float().mean())
        face_only = _face_only(ict_model, a.params[None]).mask[0, 0]
        inner = torch.nn.functional.max_pool2d(1 - face_only[None, None], 3, stride=1, padding=1)[0, 0] < 0.5
        outside = torch.nn.functional.max_pool2d(face_only[None, None], 5, stride=1, padding=2)[0, 0] == 0
        sa, sb = a.skin_mask[0], b.skin_mask[0]  # type: ignore[index]
        if effect in ("clutter",):  # background only
            assert float(torch.cat([diff[inner], diff.new_zeros(1)]).max()) <= 1 / 255 + 1e-6
            assert torch.equal(sa, sb)
        elif effect == "light":  # the head only, never the background
            assert float(torch.cat([diff[outside], diff.new_zeros(1)]).max()) <= 1 / 255 + 1e-6
            assert torch.equal(sa, sb)
        elif effect == "head":  # around the face: the face's own pixels keep their colour and skin label
            keep = inner & (sa > 0.99) & (sb > 0.99)
            assert float(diff[keep].mean()) < 2 / 255
            # skin changes only where the head hides the face (an ear at large yaw) or at antialiased edges
            assert float((sb - sa).abs().mean()) < 0.01
        elif effect == "camera":
            assert torch.equal(sa, sb)
        else:  # hair, clothing, occluders: may hide skin, never add it
            if effect == "clothing":  # at the bottom of the crop
                assert float(diff[: S // 3].max()) <= 1 / 255 + 1e-6
            assert bool((sb <= sa + 1e-6).all())
            hidden = (sa - sb) > 0.5
            if bool(hidden.any()):
                assert float(diff[hidden].mean()) > 2 / 255  # hidden skin is where pixels changed
    assert changed / n > (0.001 if effect == "clothing" else 0.01), f"{effect} changed almost no pixels"


def test_occluders_are_excluded_from_the_skin_mask(ict_model) -> None:  # type: ignore[no-untyped-def]
    ds = _ds(ict_model, ("occluders",), n=40)
    base = _ds(ict_model, (), n=40)
    seen = 0
    for i in range(40):
        a, b = base[i], ds[i]
        lost = a.skin_mask[0] - b.skin_mask[0]  # type: ignore[index]
        if float(lost.max()) > 0.5:
            seen += 1
            covered = lost > 0.5
            assert float((a.image - b.image).abs().amax(0)[covered].mean()) > 0.02
    assert seen >= 2


def test_occluder_layers_and_camera_effects_units() -> None:
    lm = torch.zeros(68, 2)
    lm[:, 0] = torch.linspace(20, 44, 68)
    lm[:, 1] = 32 + 10 * torch.sin(torch.linspace(0, 6.28, 68))
    lm[8] = torch.tensor([32.0, 52.0])
    lm[27] = torch.tensor([32.0, 22.0])
    r = torch.zeros(len(OCCLUDER_KINDS), 11) + 0.5
    r[:, 0] = 0.0  # every occluder present
    layers = occluder_layers(lm, 64, r)
    assert [k for k, *_ in layers] == list(OCCLUDER_KINDS)
    for _k, rgb, alpha in layers:
        assert rgb.shape == (3, 64, 64) and alpha.shape == (1, 64, 64)
        assert 0 < float(alpha.sum()) and float(alpha.max()) <= 1.0
    assert occluder_layers(lm, 64, r, probability=0.0) == []
    img = torch.rand(3, 64, 64)
    cam_r = torch.full((len(EFFECTS), 4), 0.5)
    assert torch.equal(apply_camera_effects(img, cam_r, torch.randn(3, 64, 64), strength=0.0), img.clamp(0, 1))
    cam_r[:, 0] = 0.0
    out = apply_camera_effects(img, cam_r, torch.randn(3, 64, 64))
    assert out.shape == img.shape and float((out - img).abs().mean()) > 0.01


def test_alignment_jitter_moves_the_pose_not_the_shape(ict_model) -> None:  # type: ignore[no-untyped-def]
    src = torch.randn(5, 2, dtype=torch.float64)
    ang = 0.2
    rot = torch.tensor([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    s, theta, t = similarity_lstsq(src, 1.3 * src @ rot.T + torch.tensor([2.0, -1.0], dtype=torch.float64))
    assert (
        s == pytest.approx(1.3)
        and theta == pytest.approx(0.2)
        and torch.allclose(t, torch.tensor([2.0, -1.0], dtype=torch.float64))
    )
    a, b = _ds(ict_model, ()), _ds(ict_model, ("jitter",))
    pa = ict_model.layout.split(torch.stack([a[i].params for i in range(N)]))
    pb = ict_model.layout.split(torch.stack([b[i].params for i in range(N)]))
    assert torch.equal(pa.id, pb.id) and torch.equal(pa.exp, pb.exp) and torch.equal(pa.tex, pb.tex)
    assert torch.equal(pa.angles[:, :2], pb.angles[:, :2])  # pitch and yaw kept (roll: jitter when not aligned)
    assert float((pa.trans - pb.trans).abs().max()) > 0.1
    p1 = ict_model.layout.split(a[0].params[None])
    p1 = FaceParams(**{**dict(p1.items()), "angles": torch.tensor([[0.1, 0.3, 0.05]])})  # aligned (|yaw| <= 50)
    same = jitter_params(ict_model, p1, S, torch.Generator().manual_seed(0), point_std=0.0, align=False)
    assert torch.equal(same.trans, p1.trans)
    # Without detector noise the placed face sits where the aligner puts the template: aligning its rendered
    # landmarks again gives the identity crop (up to the perspective change of the scale step).
    from msma.data.align import alignment_transform, template_from_face_model

    template = template_from_face_model(ict_model)
    for size in (64, 224):
        placed = jitter_params(ict_model, p1, size, torch.Generator().manual_seed(2), point_std=0.0)
        with torch.no_grad():
            lm = ict_model(placed, size).landmarks_2d[0].double().numpy()
        m = alignment_transform(lm, template, size)
        assert abs(m[0, 0] - 1.0) < 0.01 and np.abs(m[:2, 2]).max() < 0.01 * size
    # With detector noise, the crops scatter around that placement (a few % of the face size).
    scales = []
    for k in range(8):
        placed = jitter_params(ict_model, p1, S, torch.Generator().manual_seed(k))
        with torch.no_grad():
            lm = ict_model(placed, S).landmarks_2d[0].double().numpy()
        scales.append(alignment_transform(lm, template, S)[0, 0])
    assert 0.001 < float(np.std(scales)) < 0.1


def test_population_albedo_spans_skin_tones(ict_model) -> None:  # type: ignore[no-untyped-def]
    names = tuple(ict_model.tex_names)
    std = ict_model.tex_std.double()
    gen = torch.Generator().manual_seed(0)
    tones = torch.stack(
        [population_albedo(gen, names, torch.zeros(len(names), dtype=torch.float64), std) for _ in range(300)]
    )
    b = tones[:, names.index("skin_brightness")]
    assert float(b.min()) < -2.0 and float(b.max()) > 1.5  # very dark and very light skin both common
    assert float((b < -1.5).float().mean()) > 0.15
    assert float((tones.abs() <= 3.2 * std + 1e-9).float().min()) == 1.0


def test_context_mesh_follows_the_coefficients(ict_model) -> None:  # type: ignore[no-untyped-def]
    ctx = ict_model.context
    assert ctx is not None
    assert (ctx.part == PART_TEETH).sum() > 1000 and (ctx.part == PART_GUMS).sum() > 1000
    assert 0 < float((ctx.hair > 0.5).mean()) < 0.5
    p = ict_model.layout.split(torch.zeros(1, ict_model.layout.total))
    jaw = torch.zeros(1, ict_model.layout.n_exp)
    jaw[0, list(ict_model.exp_names).index("jawOpen")] = 1.0
    with torch.no_grad():
        c0 = ctx.canonical(ict_model.shape(p.id, p.exp), p.id, p.exp)
        c1 = ctx.canonical(ict_model.shape(p.id, jaw), p.id, jaw)
    moved = (c1 - c0).norm(dim=-1)[0]
    teeth = torch.as_tensor(ctx.part == PART_TEETH)
    assert float(moved[teeth].max()) > 5.0  # the lower teeth follow the jaw (mm)
    # copies equal the face model's vertices they refer to
    assert torch.equal(c0[0, : len(ctx.face_ref)], ict_model.shape(p.id, p.exp)[0, torch.as_tensor(ctx.face_ref)])


def test_context_mesh_survives_the_npz_cache_and_old_files_still_load(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from msma.face_model.assets import ICT_RECIPE_VERSION, ict_cache_path
    from msma.face_model.model import NPZ_FORMAT_VERSION, FaceModel

    assert NPZ_FORMAT_VERSION == 2 and ICT_RECIPE_VERSION == 5
    assert ict_cache_path(tmp_path).name.endswith("_v2.5.npz")
    path = tmp_path / "m.npz"
    ict_model.save(path)
    back = FaceModel.load(path)
    assert back.context is not None and back.context.digest() == ict_model.context.digest()
    assert back.fingerprint() == ict_model.fingerprint()  # the face model itself is unchanged by the context
    # a version-1 file (no context arrays) still loads, without a context
    with np.load(path) as data:
        old = {k: data[k] for k in data.files if not k.startswith("context_")}
    old["format_version"] = np.array(1)
    np.savez(tmp_path / "old.npz", **old)
    legacy = FaceModel.load(tmp_path / "old.npz")
    assert legacy.context is None and legacy.fingerprint() == ict_model.fingerprint()
    # and the generator still renders it (face only, the painted head behind it)
    ds = SyntheticFaceDataset(legacy, 2, image_size=32, progress=False)
    assert ds[1].image.shape == (3, 32, 32)
