"""SyntheticFaceDataset: determinism, cache round trip and repair, ground-truth consistency, pose distribution."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from msma.data.batch import collate_samples
from msma.data.synthetic import (
    SamplingSettings,
    SyntheticFaceDataset,
    procedural_background,
    sample_params,
    sample_params_with,
    sample_pose,
    sample_seed,
    visible_landmarks,
)
from msma.data.synthetic.parallel import generate_shards, resolve_workers
from msma.render.renderer import MeshRenderer
from msma.utils.cores import cpu_count

S = 64


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared CPU, small-tensor work with several threads is many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dataset(model, n: int = 6, **kw) -> SyntheticFaceDataset:  # type: ignore[no-untyped-def]
    kw.setdefault("image_size", S)
    kw.setdefault("progress", False)
    return SyntheticFaceDataset(model, n, **kw)


def _assert_same(a, b, image_tol: float = 0.0, flips: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Same sample: equal coefficients, landmarks within 1e-3 px, image values within ``image_tol`` (uint8 storage
    rounds to 1/255) except a share ``flips`` of the values: rendered in batches of another size, a depth near-tie
    can resolve the other way (batched products round differently), which changes a few pixels entirely."""
    assert a.source == b.source
    assert torch.equal(a.params, b.params)
    torch.testing.assert_close(a.landmarks, b.landmarks, rtol=0, atol=1e-3)
    diff = (a.image - b.image).abs()
    assert float((diff > image_tol + 1e-6).float().mean()) <= flips
    assert float((diff > 0).float().mean()) <= (0.01 if image_tol > 0 else 0.0)
    assert float(((a.skin_mask - b.skin_mask).abs() > image_tol + 1e-6).float().mean()) <= flips


def test_sample_is_deterministic_by_seed_and_index(ict_model) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 6, seed=3)
    first = [ds[i] for i in (4, 1)]
    again = _dataset(ict_model, 50, seed=3)  # another length, another access order
    _assert_same(again[1], first[1])
    _assert_same(again[4], first[0])
    other = _dataset(ict_model, 6, seed=4)[4]
    assert not torch.equal(other.params, first[0].params)
    assert not torch.equal(first[0].params, first[1].params)
    assert float((first[0].image - first[1].image).abs().mean()) > 0.02
    assert first[0].source == "synthetic:3:4"
    assert sample_seed(3, 4) != sample_seed(4, 3) and sample_seed(3, 4) == sample_seed(3, 4)


def test_sample_contents_are_consistent_ground_truth(ict_model) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 4, seed=0)
    s = ds[2]
    layout = ict_model.layout
    assert s.image.shape == (3, S, S) and s.image.dtype == torch.float32
    assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
    assert s.params is not None and s.params.shape == (layout.total,)
    assert s.landmarks.shape == (68, 2) and torch.isfinite(s.landmarks).all()
    assert torch.equal(s.crop_to_image, torch.eye(3))
    assert s.skin_mask is not None and s.skin_mask.shape == (1, S, S)
    assert 0.05 < float(s.skin_mask.mean()) < 0.9
    params = layout.split(s.params[None])
    assert math.isclose(s.yaw, math.degrees(float(params.angles[0, 1])), abs_tol=1e-4)
    with torch.no_grad():
        face = ict_model(params, S)
    torch.testing.assert_close(s.landmarks, face.landmarks_2d[0], rtol=0, atol=1e-3)
    assert s.vertices is not None
    torch.testing.assert_close(s.vertices, face.vertices[0], rtol=0, atol=1e-3)
    exp = params.exp[0]
    assert float(exp.min()) >= 0.0 and float(exp.max()) <= 1.0  # ICT blendshape weights
    batch = collate_samples([ds[0], s])
    assert batch.params is not None and batch.params.shape == (2, layout.total) and bool(batch.params_valid.all())
    assert batch.vertices is not None and batch.skin_mask is not None


def test_landmarks_land_on_the_rendered_face(ict_model) -> None:  # type: ignore[no-untyped-def]
    size = 96
    ds = _dataset(ict_model, 12, seed=7, image_size=size, extreme_yaw_fraction=0.3)
    samples = [ds[i] for i in range(12)]
    params = ict_model.layout.split(torch.stack([s.params for s in samples]))
    with torch.no_grad():
        face = ict_model(params, size)
        out = MeshRenderer(backend="torch").render(face, ict_model.tri_int32)
    lm = torch.stack([s.landmarks for s in samples])
    depth = ict_model.camera.depth(face.landmarks_3d)
    vis = visible_landmarks(lm, depth, out.depth, out.mask)
    assert int(vis.sum()) > 0.8 * vis.numel() * 0.8  # most are visible
    j = lm[..., 0].round().long().clamp(0, size - 1)
    i = lm[..., 1].round().long().clamp(0, size - 1)
    bi = torch.arange(len(samples))[:, None].expand_as(j)
    on_face = out.mask[bi, 0, i, j] > 0.5
    assert bool(on_face[vis].all())
    # the stored skin mask is where the face was rendered (the head around it, rendered in the same pass, only
    # changes the antialiasing of the face's silhouette: skin within one pixel of the face-only coverage)
    skin = torch.stack([s.skin_mask for s in samples])  # type: ignore[misc]
    near_face = torch.nn.functional.max_pool2d(out.mask, 3, stride=1, padding=1)
    assert float((skin - near_face).max()) <= 1.0 / 255 + 1e-6
    assert float((skin * out.mask).sum()) > 0.5 * float(out.mask.sum())  # and it covers most of the face
    # without domain randomisation, the composite shows the render where the face covers the pixel (up to
    # uint8 rounding, per-pixel vs per-vertex SH shading and sensor noise)
    plain = _dataset(ict_model, 12, seed=7, image_size=size, extreme_yaw_fraction=0.3, effects=())
    img = torch.stack([plain[k].image for k in range(12)])
    pp = ict_model.layout.split(torch.stack([plain[k].params for k in range(12)]))
    with torch.no_grad():
        out = MeshRenderer(backend="torch").render(ict_model(pp, size), ict_model.tri_int32)
    full = (out.mask > 0.999).expand_as(img)
    assert float((img[full] - out.image.clamp(0, 1)[full]).abs().mean()) < 0.03


def test_cache_round_trip_equals_on_the_fly(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cached = _dataset(ict_model, 5, seed=1, cache_dir=tmp_path, shard_size=3, render_batch=2)
    assert cached.ensure_generated() == 2
    assert cached.ensure_generated() == 0  # nothing left to do
    root = tmp_path / cached.cache_key()
    assert sorted(p.name for p in root.iterdir()) == ["settings.json", "shard_00000", "shard_00001"]
    images = np.load(root / "shard_00000" / "images.npy")
    assert images.dtype == np.uint8 and images.shape == (3, S, S, 3)
    # On the fly the faces are rendered in other batches (of 8, not the shards' 2 + 1): equal up to the uint8
    # rounding but for a few pixels where a depth near-tie flips (at most 0.2 % of the values).
    fly = _dataset(ict_model, 5, seed=1)
    flipped = 0
    for i in range(5):
        _assert_same(cached[i], fly[i], image_tol=1.0 / 255, flips=0.002)
        flipped += int(((cached[i].image - fly[i].image).abs() > 1.0 / 255 + 1e-6).sum())
    assert flipped <= 30  # 15 values (5 pixels) of one face at the time of writing
    # a larger dataset with the same settings reuses the cache; the short last shard is regenerated bigger
    bigger = _dataset(ict_model, 6, seed=1, cache_dir=tmp_path, shard_size=3, render_batch=3)
    assert bigger.cache_key() == cached.cache_key()
    assert bigger.ensure_generated() == 1
    _assert_same(bigger[4], cached[4], image_tol=1.0 / 255, flips=0.002)  # rendered in a batch of 3, not 2
    # other settings -> another cache directory
    assert _dataset(ict_model, 5, seed=1, cache_dir=tmp_path, max_yaw_deg=30).cache_key() != cached.cache_key()
    # workers receive a picklable dataset without open memory maps
    clone = pickle.loads(pickle.dumps(cached))
    _assert_same(clone[2], cached[2])


def test_half_written_shard_is_detected_and_regenerated(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 4, seed=2, cache_dir=tmp_path, shard_size=2, render_batch=2)
    ds.ensure_generated()
    before = [ds[i] for i in range(4)]
    root = tmp_path / ds.cache_key()
    # 1) truncated file (a copy or write cut short), 2) a shard without its completion record,
    # 3) a leftover temporary directory of an interrupted writer
    images = root / "shard_00000" / "images.npy"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    (root / "shard_00001" / "done.json").unlink()
    (root / ".tmp_shard_00001_x").mkdir()
    fresh = _dataset(ict_model, 4, seed=2, cache_dir=tmp_path, shard_size=2, render_batch=2)
    assert not fresh.shard_is_valid(0) and not fresh.shard_is_valid(1)
    assert fresh.ensure_generated() == 2
    assert fresh.shard_is_valid(0) and fresh.shard_is_valid(1)
    for i in range(4):
        _assert_same(fresh[i], before[i])
    # a flipped byte with the size intact is caught by the hash check
    data = bytearray(images.read_bytes())
    data[-10] ^= 0xFF
    images.write_bytes(bytes(data))
    assert fresh.shard_is_valid(0, check_hashes=False) and not fresh.shard_is_valid(0)
    assert fresh.ensure_generated() == 1
    done = json.loads((root / "shard_00000" / "done.json").read_text())
    assert done["count"] == 2 and set(done["files"]) == {"images.npy", "skin.npy", "params.npy", "landmarks.npy"}
    # a file where a shard directory belongs (it ended generation with NotADirectoryError) is replaced
    shutil.rmtree(root / "shard_00001")
    (root / "shard_00001").write_bytes(b"not a shard")
    assert not fresh.shard_is_valid(1) and fresh.ensure_generated() == 1 and fresh.shard_is_valid(1)
    _assert_same(fresh[3], before[3])


def _shard_bytes(ds: SyntheticFaceDataset) -> dict[str, bytes]:
    root = ds.cache_root
    assert root is not None
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.glob("shard_*/*.npy"))}


def test_worker_processes_write_the_cache_one_process_writes(ict_model, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    kw = {"shard_size": 2, "render_batch": 2}
    one = _dataset(ict_model, 7, seed=9, cache_dir=tmp_path / "one", **kw)
    assert one.ensure_generated(workers=1) == 4
    two = _dataset(ict_model, 7, seed=9, cache_dir=tmp_path / "two", **kw)
    other = _dataset(ict_model, 3, seed=10, cache_dir=tmp_path / "two", **kw)
    assert resolve_workers(2, 6, [two, other]) == 2
    with caplog.at_level("INFO", logger="msma.data.synthetic.parallel"):
        assert generate_shards([two, other], workers=2) == 6  # both splits in one pool
    assert "6 shards, 2 process(es)" in caplog.text
    # byte for byte the files one process wrote (the cache key is the same: the worker count is not a setting)
    assert two.cache_key() == one.cache_key()
    written = _shard_bytes(two)
    assert len(written) == 16 and written == _shard_bytes(one)
    assert all(other.shard_is_valid(k) for k in range(2))
    assert generate_shards([two, other], workers=2) == 0  # nothing left to do
    _assert_same(two[5], one[5])


def test_a_failing_worker_raises_here_and_keeps_complete_shards(
    ict_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 6, seed=11, cache_dir=tmp_path, shard_size=2, render_batch=2)
    write = SyntheticFaceDataset._write_shard

    def flaky(self, shard: int, bar=None) -> None:  # type: ignore[no-untyped-def]
        if shard == 2:
            raise OSError(f"disk full writing shard {shard}")
        write(self, shard, bar)

    monkeypatch.setattr(SyntheticFaceDataset, "_write_shard", flaky)  # inherited by the forked workers
    with pytest.raises(OSError, match="disk full writing shard 2"):
        generate_shards([ds], workers=2)
    assert not ds.shard_is_valid(2)
    monkeypatch.setattr(SyntheticFaceDataset, "_write_shard", write)
    done_before = sum(ds.shard_is_valid(k) for k in range(3))
    assert ds.ensure_generated(workers=2) == 3 - done_before  # only what is missing
    assert all(ds.shard_is_valid(k) for k in range(3))


def test_worker_count_resolution(ict_model) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 4)
    with pytest.raises(ValueError, match="synthetic_workers must be >= 1"):
        resolve_workers(0, 4, [ds])
    assert resolve_workers(8, 1, [ds]) == 1  # one shard: nothing to share
    assert resolve_workers(1, 9, [ds]) == 1
    assert resolve_workers(8, 3, [ds]) == 3  # never more processes than shards
    assert resolve_workers(None, 100, [ds]) == min(cpu_count(), 100)


def test_missing_shard_is_generated_on_access(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(ict_model, 3, seed=5, cache_dir=tmp_path, shard_size=2)
    s = ds[2]  # no ensure_generated(): the shard is written on first access
    assert ds.shard_is_valid(1) and not ds.shard_is_valid(0)
    _assert_same(s, _dataset(ict_model, 3, seed=5)[2], image_tol=1.0 / 255)
    with pytest.raises(IndexError):
        ds.raw(3)


def test_yaw_distribution_respects_limits() -> None:
    settings = SamplingSettings(max_yaw_deg=50.0, extreme_yaw_fraction=0.2)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    angles = torch.rad2deg(sample_pose(gen, n, settings))
    yaw = angles[:, 1]
    assert float(yaw.abs().max()) <= 90.0 + 1e-6
    extreme = yaw.abs() > 50.0
    assert abs(float(extreme.float().mean()) - 0.2) < 0.015
    inner = yaw[~extreme]
    hist = torch.histc(inner, bins=10, min=-50.0, max=50.0) / inner.numel()
    assert float(hist.min()) > 0.08 and float(hist.max()) < 0.12  # uniform within +-max_yaw
    assert abs(float((yaw[extreme] > 0).float().mean()) - 0.5) < 0.05  # both sides
    assert float(angles[:, 0].abs().max()) <= settings.max_pitch_deg + 1e-6
    assert float(angles[:, 2].abs().max()) <= settings.max_roll_deg + 1e-6
    assert abs(float(angles[:, 0].std()) - 10.0) < 1.0
    none = torch.rad2deg(
        sample_pose(torch.Generator().manual_seed(1), 5000, SamplingSettings(extreme_yaw_fraction=0.0))
    )
    assert float(none[:, 1].abs().max()) <= 60.0


def test_sample_params_prior_and_expression_structure(ict_model) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    p = sample_params(ict_model, 300, gen, id_scale=1.0)
    layout = ict_model.layout
    assert (
        p.id.shape == (300, layout.n_id) and p.exp.shape == (300, layout.n_exp) and p.tex.shape == (300, layout.n_tex)
    )
    assert abs(float(p.id.std()) - 1.0) < 0.1 and float(p.id.abs().max()) <= 3.0 + 1e-5
    names = ict_model.exp_names
    exp = p.exp
    assert float(exp.min()) >= 0.0 and float(exp.max()) <= 1.0
    active = (exp > 0).sum(1)
    assert float(active.float().mean()) < 0.35 * len(names)  # sparse
    assert float((active == 0).float().mean()) < 0.2
    col = {n: i for i, n in enumerate(names)}
    assert not bool(((exp[:, col["jawLeft"]] > 0) & (exp[:, col["jawRight"]] > 0)).any())
    assert not bool(((exp[:, col["eyeBlink_L"]] > 0) & (exp[:, col["eyeWide_L"]] > 0)).any())
    assert bool((exp[:, col["mouthClose"]] <= exp[:, col["jawOpen"]] + 1e-6).all())
    # gaze is conjugate: the left eye looking out goes with the right eye looking in
    assert torch.equal(exp[:, col["eyeLookOut_L"]] > 0, exp[:, col["eyeLookIn_R"]] > 0)
    assert not bool(((exp[:, col["eyeLookOut_L"]] > 0) & (exp[:, col["eyeLookIn_L"]] > 0)).any())
    # light: Deep3D layout, modest deviations from the default ambient
    sh = p.sh.view(300, 3, 9)
    assert float(sh[:, :, 0].abs().max()) < 0.8 and float(sh.abs().max()) < 1.5
    assert float(p.trans[:, 2].abs().max()) <= 80.0 + 1e-4 and float(p.trans[:, :2].abs().max()) <= 20.0 + 1e-4
    # one generator per sample reproduces the same draws
    a = sample_params_with(ict_model, 1, torch.Generator().manual_seed(9), SamplingSettings())
    b = sample_params_with(ict_model, 1, torch.Generator().manual_seed(9), SamplingSettings())
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.items(), b.items()))


def test_procedural_backgrounds_vary_and_are_deterministic() -> None:
    bgs = [procedural_background(48, torch.Generator().manual_seed(k)) for k in range(12)]
    assert all(b.shape == (3, 48, 48) and float(b.min()) >= 0 and float(b.max()) <= 1 for b in bgs)
    assert torch.equal(bgs[3], procedural_background(48, torch.Generator().manual_seed(3)))
    means = torch.stack([b.mean((1, 2)) for b in bgs])
    assert float(means.std(0).mean()) > 0.05  # different colours
    assert float(torch.stack([b.std() for b in bgs]).max()) > 0.05  # some texture


def test_bad_arguments_are_rejected(ict_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="unknown sampling settings"):
        SyntheticFaceDataset(ict_model, 4, max_yaw=30)
    with pytest.raises(ValueError, match="max_yaw_deg"):
        SyntheticFaceDataset(ict_model, 4, max_yaw_deg=120)
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticFaceDataset(ict_model, -1)


def test_dataloader_workers_and_a_moved_model_give_the_same_samples(ict_model) -> None:  # type: ignore[no-untyped-def]
    import copy

    from torch.utils.data import DataLoader

    mine = copy.deepcopy(ict_model)
    ds = _dataset(mine, 4, seed=11, image_size=32)
    assert ds.face_model is not mine
    mine.double()  # the caller's model changes (Lightning moves it to a GPU in place): the dataset keeps its copy
    direct = [ds[i] for i in range(4)]
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples, shuffle=False)
    batches = list(loader)
    assert [s for b in batches for s in b.source] == [f"synthetic:11:{i}" for i in range(4)]
    got = torch.cat([b.image for b in batches])
    assert torch.equal(got, torch.stack([s.image for s in direct]))
    assert torch.equal(torch.cat([b.params for b in batches]), torch.stack([s.params for s in direct]))  # type: ignore[misc]


def test_preview_cli_writes_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    from msma.data.synthetic import main

    out = tmp_path / "grid.png"
    assert main(["--grid", str(out), "--num", "3", "--size", "32", "--speed", "2", "--batch", "2"]) == 0
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape == (32, 4 * 32, 3)  # 3 tiles padded to a row of 4
    assert float(grid[:, 3 * 32 :].max()) == 0.0 and float(grid[:, :32].std()) > 5
    assert "s/sample" in capsys.readouterr().out


def test_head_context_only_changes_the_background(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the legacy painted head context applies where the head mesh is not rendered (effects without "head")
    with_ctx = _dataset(ict_model, 3, seed=8, image_size=48, effects=())
    without = _dataset(ict_model, 3, seed=8, image_size=48, head_context=False, effects=())
    assert (
        _dataset(ict_model, 3, cache_dir=tmp_path).cache_key()
        != _dataset(ict_model, 3, cache_dir=tmp_path, head_context=False).cache_key()
    )
    changed = 0
    for i in range(3):
        a, b = with_ctx[i], without[i]
        assert torch.equal(a.params, b.params) and torch.equal(a.skin_mask, b.skin_mask)  # type: ignore[arg-type]
        diff = (a.image - b.image).abs().amax(0)
        face = a.skin_mask[0] > 0.99  # type: ignore[index]
        assert float(diff[face].max()) <= 1.0 / 255 + 1e-6  # the face itself is untouched
        changed += int(float(diff[~face].max()) > 0.1)
    assert changed >= 1  # most samples get a skull / neck behind the face


def test_renderer_backend_selection(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fly = _dataset(ict_model, 2, renderer_backend="auto")
    assert fly.device.type == "cpu" and fly.resolved_backend == "torch"  # workers never get CUDA
    cached = _dataset(ict_model, 2, renderer_backend="auto", cache_dir=tmp_path)
    assert cached.resolved_backend == ("nvdiffrast" if torch.cuda.is_available() else "torch")
    assert cached.settings_dict()["renderer_backend"] == cached.resolved_backend
    with pytest.raises(ValueError, match="renderer_backend"):
        _dataset(ict_model, 2, renderer_backend="opengl")


@pytest.mark.gpu
def test_nvdiffrast_generation_matches_torch(ict_model) -> None:  # type: ignore[no-untyped-def]
    gpu = _dataset(ict_model, 3, seed=4, image_size=96, renderer_backend="nvdiffrast", device="cuda")
    cpu = _dataset(ict_model, 3, seed=4, image_size=96, renderer_backend="torch")
    for i in range(3):
        a, b = gpu[i], cpu[i]
        assert torch.equal(a.params, b.params)
        torch.testing.assert_close(a.landmarks, b.landmarks, rtol=0, atol=2e-2)
        # antialiased silhouettes differ; the interiors agree
        assert float((a.image - b.image).abs().mean()) < 0.02
        assert float((a.skin_mask - b.skin_mask).abs().mean()) < 0.02  # type: ignore[operator]
