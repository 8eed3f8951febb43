"""``msma eval``: AFLW2000-3D frames and protocol, the synthetic split, MICC / NoW scan layouts."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from msma.cli.eval import cli_main
from msma.data.batch import FaceBatch
from msma.data.scans import ScanLayout, micc_items, now_items, read_pp
from msma.evaluation.aflw2000 import evaluate_aflw2000
from msma.evaluation.scans import evaluate_scans
from msma.metrics.mesh_error import NOW_LANDMARKS_68
from msma.metrics.nme import landmark_box_size

pytestmark = pytest.mark.slow


class _OracleModule:
    """Predicts the ground-truth crop landmarks plus a fixed pixel offset (tests the frame chain)."""

    def __init__(self, face_model, offset: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
        self.face_model = face_model
        self.offset = torch.tensor(offset)
        self.config: dict[str, object] = {}
        self.current: FaceBatch | None = None

    def reconstruct(self, image: torch.Tensor, render: bool = False, **treatment: object) -> SimpleNamespace:
        assert self.current is not None
        self.treatment = treatment
        lm = self.current.landmarks + self.offset
        return SimpleNamespace(face=SimpleNamespace(landmarks_2d=lm, landmarks_3d=torch.zeros(*lm.shape[:2], 3)))


def test_aflw2000_frames_with_an_oracle(ict_model, testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Ground-truth crop landmarks map back to the original image exactly; an offset of (3, 4) crop px is
    5 * (image px per crop px) / box in the original frame."""
    import msma.evaluation.aflw2000 as ev

    oracle = _OracleModule(ict_model, (3.0, 4.0))
    original = ev.transform_points

    def spy(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
        return original(points, affine)

    # Feed the current batch ((index, sample) pairs) to the oracle through the progress iterator.
    def progress(iterable, total, desc, unit):  # type: ignore[no-untyped-def]
        from msma.data.batch import collate_samples

        for chunk in iterable:
            oracle.current = collate_samples([s for _, s in chunk])
            yield chunk

    monkeypatch.setattr(ev, "progress_bar", progress)
    monkeypatch.setattr(ev, "transform_points", spy)
    res = evaluate_aflw2000(oracle, testdata / "aflw2000_3d", "gt_box", 224, torch.device("cpu"), 2, None)
    assert res["counts"] == (1, 1, 0) and res["count"] == 2 and res["protocol"]["recrop"] == "none"
    from msma.data.datasets import AFLW2000Dataset

    ds = AFLW2000Dataset(testdata / "aflw2000_3d")
    expected = []
    for i in range(2):
        s = ds[i]
        scale = math.sqrt(abs(float(torch.linalg.det(s.crop_to_image[:2, :2].double()))))
        box = float(landmark_box_size(s.landmarks_3d[None].double()))
        expected.append(100 * 5.0 * scale / box)
    # Ground-truth landmarks carried into the crop and back are exact up to float32 rounding.
    np.testing.assert_allclose(res["bins"][:2], expected, rtol=1e-3)
    assert res["protocol"]["crop"] == "gt_box"
    assert "original" in res["protocol"]["ground_truth"]
    # the test-time treatment of msma reconstruct is on by default and handed to the pipeline
    assert oracle.treatment["flip_average"] is True and oracle.treatment["clamp_expressions"] is True
    assert "every group" in res["protocol"]["flip_average"] and "[0, 1]" in res["protocol"]["clamp_expressions"]

    # The two-step crop (--recrop 1): the second pass sees the crop aligned on the first pass's landmarks (here the
    # ground truth + the offset), and its predictions are the ones scored.
    from msma.data.align import recrop_transform

    res2 = evaluate_aflw2000(oracle, testdata / "aflw2000_3d", "gt_box", 224, torch.device("cpu"), 2, None, recrop=1)
    assert res2["protocol"]["recrop"].startswith("1 pass(es)") and "2 photo(s)" in res2["protocol"]["recrop"]
    expected2 = []
    for i in range(2):
        s = ds[i]
        m1 = recrop_transform(
            s.landmarks.double().numpy() + [3.0, 4.0], s.crop_to_image.double().numpy(), ds.template, 224
        )
        box = float(landmark_box_size(s.landmarks_3d[None].double()))
        expected2.append(100 * 5.0 * math.sqrt(abs(np.linalg.det(m1[:2, :2]))) / box)
    np.testing.assert_allclose(res2["bins"][:2], expected2, rtol=1e-3)
    assert all(abs(a - b) > 1e-2 * b for a, b in zip(expected2, expected))  # the crops did change


class _Asymmetric(torch.nn.Module):
    """A fixed, non-mirror-equivariant regressor: a random linear map of the 8x8-pooled crop, scaled so that
    blendshape weights leave [0, 1] and the pose moves a few degrees / millimetres."""

    def __init__(self, layout) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.layout = layout
        g = torch.Generator().manual_seed(3)
        self.weight = torch.nn.Parameter(torch.randn(layout.total, 3 * 64, generator=g) * 0.2)

    def forward(self, image: torch.Tensor):  # type: ignore[no-untyped-def]
        x = torch.nn.functional.adaptive_avg_pool2d(image, 8).flatten(1) - 0.5
        flat = x @ self.weight.T
        scale = torch.ones(self.layout.total)
        scale[self.layout.slices["angles"]] = 0.05
        return self.layout.split(flat * scale)


def test_aflw2000_test_time_treatment_matches_the_reconstructor_path(ict_model, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    """``evaluate_aflw2000`` scores what ``predict_params`` + ``in_range`` + the face model give (the path of
    ``msma reconstruct``), and differs from the raw single pass when the network is not mirror-equivariant."""
    from msma.evaluation.aflw2000 import _aflw_dataset
    from msma.face_model.mirror import CoefficientMirror
    from msma.metrics.nme import transform_points
    from msma.pipeline import FacePipeline, predict_params
    from msma.render.renderer import MeshRenderer

    pipe = FacePipeline(_Asymmetric(ict_model.layout), ict_model, MeshRenderer(backend="torch"), {}).eval()
    root, size = testdata / "aflw2000_3d", 64
    raw = evaluate_aflw2000(
        pipe, root, "box_aligned", size, torch.device("cpu"), 2, None, flip_average=False, clamp_expressions=False
    )
    tta = evaluate_aflw2000(pipe, root, "box_aligned", size, torch.device("cpu"), 2, None)
    assert tta["protocol"]["flip_average"].startswith("coefficients averaged")
    assert raw["protocol"]["flip_average"] == "none (single pass)" and raw["protocol"]["clamp_expressions"] == "none"

    mirror = CoefficientMirror.from_face_model(ict_model)
    dataset = _aflw_dataset(root, "box_aligned", size, ict_model, "dlib", "dlib")
    expected = {}
    for flip, clamp in ((False, False), (True, True)):
        nmes = []
        for i in range(len(dataset)):
            s = dataset[i]
            with torch.no_grad():
                params = predict_params(pipe.encoder, s.image[None], flip, mirror if flip else None)
                if clamp:
                    assert (params.exp < 0).any() or (params.exp > 1).any()  # the clamp has work to do
                    params = ict_model.in_range(params)
                lm = ict_model(params, image_size=size).landmarks_2d[0].double()
            pred = transform_points(lm[None], s.crop_to_image[None].double())[0]
            gt = s.landmarks_3d[:, :2].double()
            nmes.append(100 * float((pred - gt).norm(dim=-1).mean()) / float(landmark_box_size(gt[None])))
        expected[(flip, clamp)] = nmes
    np.testing.assert_allclose(raw["bins"][:2], expected[(False, False)], rtol=1e-4)
    np.testing.assert_allclose(tta["bins"][:2], expected[(True, True)], rtol=1e-4)
    assert abs(tta["bins"][0] - raw["bins"][0]) > 0.05


def test_cli_aflw2000_and_synthetic_mean(tmp_path: Path, testdata: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "aflw.json"
    assert (
        cli_main(
            ["--ckpt", "mean", "--data", "aflw2000_3d", "--root", str(testdata / "aflw2000_3d"), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "NME 2D |yaw| 0-30" in printed and "detect crop" in printed  # the default: msma's own detection
    report = json.loads(out.read_text())
    r = report["result"]
    assert r["protocol"]["crop"] == "detect" and r["protocol"]["detect_fallbacks_to_gt_box"] == 0
    assert r["counts"] == [1, 1, 0] and r["count"] == 2
    assert 0 < r["mean"] < 60 and math.isfinite(r["mean_3d"])
    assert report["checkpoint"] == "mean" and report["device"] == "cpu"

    out2 = tmp_path / "syn.json"
    args = ["--ckpt", "mean", "--data", "synthetic", "--root", str(tmp_path / "cache"), "--num-samples", "4"]
    assert cli_main([*args, "--image-size", "64", "--batch-size", "2", "--out", str(out2)]) == 0
    syn = json.loads(out2.read_text())["result"]
    assert syn["count"] == 4
    for key in ("vertex_aligned_mm", "vertex_posed_mm", "nme", "yaw_deg", "id_rmse"):
        assert math.isfinite(syn[key]) and syn[key] >= 0
    # The mean face is the untrained prediction: its aligned shape error is a few mm, not zero.
    assert 0.5 < syn["vertex_aligned_mm"] < 20
    assert cli_main(["--ckpt", "mean", "--data", "micc"]) == 2  # needs --root
    assert cli_main(["--ckpt", "mean", "--data", "synthetic", "--num-samples", "0"]) == 2  # nothing to score
    assert cli_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", "synthetic"]) == 2


def _write_scan(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    import trimesh

    trimesh.Trimesh(verts, faces, process=False).export(path)


@pytest.fixture(scope="module")
def mean_reconstructor():  # type: ignore[no-untyped-def]
    from msma.inference import Reconstructor

    return Reconstructor(None, renderer_backend="torch")


def test_scan_layouts_mean_face_against_itself(tmp_path: Path, mean_reconstructor) -> None:  # type: ignore[no-untyped-def]
    from skimage import data

    fm = mean_reconstructor.face_model
    mean = fm.mean_shape.double().numpy()
    tri = fm.tri.numpy()
    lm68 = mean[fm.landmark_idx.numpy()]
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    photo = Image.fromarray(data.astronaut())

    # MICC layout: subject a = the mean face itself under a rigid transform; b = with 0.5 mm noise.
    micc = tmp_path / "micc"
    for name, noise in (("a", 0.0), ("b", 0.5)):
        d = micc / name
        (d / "images").mkdir(parents=True)
        photo.save(d / "images" / "frame0.png")
        v = mean @ rot.T + 40.0
        v = v + rng.normal(scale=noise, size=v.shape) if noise else v
        _write_scan(d / "scan.ply", v, tri)
        np.savetxt(d / "scan_landmarks.txt", lm68 @ rot.T + 40.0)
    layout = micc_items(micc)
    items = layout.items
    assert [it.subject for it in items] == ["a", "b"] and layout.skipped == []
    res = evaluate_scans(mean_reconstructor, items, with_scale=False, crop_radius=95.0, batch_size=2)
    assert res["count"] == 2 and not res["skipped"]
    assert res["per_subject_rmse_mm"]["a"] < 0.05
    assert 0.2 < res["per_subject_rmse_mm"]["b"] < 0.6

    # NoW layout: 7 landmarks in a .pp file, the scan in metres.
    now = tmp_path / "now"
    subj = "FaMoS_000000_00000_TA"
    img_rel = f"{subj}/multiview_neutral/IMG_0001.jpg"
    (now / "final_release_version" / "iphone_pictures" / subj / "multiview_neutral").mkdir(parents=True)
    photo.save(now / "final_release_version" / "iphone_pictures" / img_rel)
    (now / "final_release_version" / "scans" / subj).mkdir(parents=True)
    _write_scan(now / "final_release_version" / "scans" / subj / "natural_head_rotation.000001.obj", mean / 1000.0, tri)
    (now / "final_release_version" / "scans_lmks_onlypp" / subj).mkdir(parents=True)
    pts = "\n".join(
        f'<point x="{p[0] / 1000}" y="{p[1] / 1000}" z="{p[2] / 1000}" name="{i}" active="1"/>'
        for i, p in enumerate(lm68[list(NOW_LANDMARKS_68)])
    )
    pp = now / "final_release_version" / "scans_lmks_onlypp" / subj / "natural_head_rotation.000001_picked_points.pp"
    pp.write_text(f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n{pts}\n</PickedPoints>\n")
    (now / "imagepathsvalidation.txt").write_text(img_rel + "\n")
    np.testing.assert_allclose(read_pp(pp), lm68[list(NOW_LANDMARKS_68)] / 1000.0, rtol=1e-5)
    layout = now_items(now)
    assert layout.skipped == []
    res = evaluate_scans(mean_reconstructor, layout.items, with_scale=True, crop_radius=95.0, batch_size=1)
    assert res["count"] == 1
    assert res["scan_to_mesh_median_mm"] < 0.05 and res["rmse_mm"] < 0.05
    with pytest.raises(ValueError, match="7 finite points"):
        bad = tmp_path / "bad.pp"
        bad.write_text("<PickedPoints><point x='1' y='2' z='3'/></PickedPoints>")
        read_pp(bad)


def test_scan_benchmarks_skip_bad_subjects_and_score_the_rest(tmp_path: Path, mean_reconstructor) -> None:  # type: ignore[no-untyped-def]
    """A MICC folder with one good subject beside broken ones: each broken one is left out with its reason
    (naming the file), the good one is scored exactly as alone; nothing ends the evaluation."""
    from skimage import data

    from msma.data.scans import load_scan

    fm = mean_reconstructor.face_model
    mean = fm.mean_shape.double().numpy()
    tri = fm.tri.numpy()
    lm68 = mean[fm.landmark_idx.numpy()]
    photo = Image.fromarray(data.astronaut())
    micc = tmp_path / "micc"

    def subject(name: str, verts: np.ndarray | None = None, landmarks: str | None = None, image: bool = True) -> Path:
        d = micc / name
        (d / "images").mkdir(parents=True)
        if image:
            photo.save(d / "images" / "frame0.png")
        if verts is not None:
            _write_scan(d / "scan.ply", verts, tri)
        if landmarks is None:
            np.savetxt(d / "scan_landmarks.txt", lm68)
        elif landmarks:
            (d / "scan_landmarks.txt").write_text(landmarks)
        return d

    subject("good", mean)
    subject("no_scan")
    subject("no_images", mean, image=False)
    subject("nan_landmarks", mean, landmarks="nan nan nan\n" * 68)
    subject("no_landmarks", mean, landmarks="")
    garbage = subject("garbage_scan", mean)
    (garbage / "scan.ply").unlink()
    (garbage / "scan.obj").write_bytes(b"v 1 2\nf 9 9 9\x00\xff" * 10)
    nan_scan = mean.copy()
    nan_scan[5] = np.nan
    subject("nan_scan", nan_scan)
    subject("far_landmarks", mean, landmarks="\n".join(" ".join(str(v + 5000.0) for v in p) for p in lm68))
    piped = subject("pipe_landmarks", mean, landmarks="")  # no landmarks file: a named pipe in its place
    os.mkfifo(piped / "scan_landmarks.txt")  # reading it blocked for ever

    found: list[ScanLayout] = []
    reader = threading.Thread(target=lambda: found.append(micc_items(micc)), daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert found, "reading the layout blocked on the named pipe"
    layout = found[0]
    left_out = {Path(r["image"]).name: r["reason"] for r in layout.skipped}
    assert set(left_out) == {"no_scan", "no_images", "nan_landmarks", "no_landmarks", "pipe_landmarks"}
    assert "a named pipe (FIFO), not a regular file" in left_out["pipe_landmarks"]
    assert left_out["no_scan"].startswith("no_scan: ") and left_out["no_images"].startswith("no_images: ")
    assert (
        left_out["nan_landmarks"].startswith("bad_annotation: ")
        and "68 of the 68 landmarks are not finite" in (left_out["nan_landmarks"])
    )
    assert "scan_landmarks.txt" in left_out["no_landmarks"]
    with pytest.raises(ValueError, match=r"nan_scan/scan\.ply: 1 of the scan's .* vertices are not finite"):
        load_scan(micc / "nan_scan" / "scan.ply")

    res = evaluate_scans(
        mean_reconstructor, layout.items, with_scale=False, crop_radius=95.0, batch_size=4, skipped=layout.skipped
    )
    reasons = {Path(r["image"]).parent.parent.name: r["reason"] for r in res["skipped"] if "images" in r["image"]}
    assert reasons["garbage_scan"].startswith("bad_scan: ") and "scan.obj" in reasons["garbage_scan"]
    assert reasons["nan_scan"].startswith("bad_scan: ") and "not finite" in reasons["nan_scan"]
    assert (
        reasons["far_landmarks"].startswith("scan_error: ") and "no vertex lies within 95" in reasons["far_landmarks"]
    )
    assert res["count"] == 1 and list(res["per_subject_rmse_mm"]) == ["good"]
    assert res["per_subject_rmse_mm"]["good"] < 0.05  # the mean face against itself, as when alone
    assert len(res["skipped"]) == 8

    # NoW: a listed image whose subject has no scan is left out; a list where none is usable raises nothing
    now = tmp_path / "now"
    now.mkdir()
    (now / "imagepathsvalidation.txt").write_text("FaMoS_1/multiview_neutral/IMG_0001.jpg\n")
    none = now_items(now)
    assert none.items == [] and none.skipped[0]["reason"].startswith("no_scan: ")
    with pytest.raises(FileNotFoundError, match="no MICC-layout subjects.*no_scan"):
        micc_items(micc / "no_scan")


def test_box_aligned_transform_maps_reference_box() -> None:
    from msma.evaluation.aflw2000 import box_aligned_transform

    ref = (50.0, 60.0, 150.0, 140.0)  # 100 x 80 in the crop
    m = box_aligned_transform((200.0, 100.0, 400.0, 260.0), ref)  # 200 x 160: scale 2
    corners = np.array([[50.0, 60.0, 1.0], [150.0, 140.0, 1.0]]) @ m.T
    np.testing.assert_allclose(corners[:, :2], [[200.0, 100.0], [400.0, 260.0]])
    # A narrow (profile) box is sized by its height.
    m2 = box_aligned_transform((0.0, 0.0, 50.0, 160.0), ref)
    assert m2[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="degenerate"):
        box_aligned_transform((0.0, 0.0, 0.0, 10.0), ref)


def test_cli_aflw2000_crop_modes(tmp_path: Path, testdata: Path) -> None:
    """box_aligned puts the mean face at the training crops' scale (lower frontal NME than the plain box);
    detect runs the package's own detector and says so in the report."""
    results = {}
    for crop in ("gt_box", "box_aligned", "detect"):
        out = tmp_path / f"{crop}.json"
        args = ["--ckpt", "mean", "--data", "aflw2000_3d", "--root", str(testdata / "aflw2000_3d"), "--recrop", "1"]
        assert cli_main([*args, "--crop", crop, "--out", str(out)]) == 0
        results[crop] = json.loads(out.read_text())["result"]
        assert results[crop]["protocol"]["crop"] == crop and results[crop]["count"] == 2
    assert results["box_aligned"]["bins"][0] < results["gt_box"]["bins"][0]
    assert "own detector" in results["detect"]["protocol"]["crop_detail"]
    # dlib misses the 55-degree profile; MediaPipe's chain (msma reconstruct's fallback) finds it: no gt_box crop
    assert results["detect"]["protocol"]["detect_fallbacks_to_gt_box"] == 0
    assert results["detect"]["protocol"]["detected_by_mediapipe_fallback"] == 1
    assert results["detect"]["bins"][1] < results["gt_box"]["bins"][1]
    # --recrop re-crops the photos cropped from a box only: both box modes, none of detect's aligned photos
    assert results["gt_box"]["protocol"]["recrop"].endswith("for the 2 photo(s) cropped from a box")
    assert results["detect"]["protocol"]["recrop"] == "none"


def test_aflw2000_bad_files_are_skipped_never_replaced(tmp_path: Path, testdata: Path) -> None:
    """A folder with an empty photo, a truncated photo and an unreadable ``.mat`` beside the two good samples:
    the bad ones are skipped with their reasons, and the two good ones are scored exactly as in a clean folder
    (no photo is scored in another's place, as the training datasets' substitution would do)."""
    import shutil

    from msma.cli.eval import load_model

    clean = testdata / "aflw2000_3d"
    for f in clean.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "image00444.jpg").write_bytes(b"")
    shutil.copy(clean / "image00050.mat", tmp_path / "image00444.mat")
    (tmp_path / "image00999.jpg").write_bytes((clean / "image00050.jpg").read_bytes()[:3000])
    shutil.copy(clean / "image00050.mat", tmp_path / "image00999.mat")
    shutil.copy(clean / "image00251.jpg", tmp_path / "image00777.jpg")
    (tmp_path / "image00777.mat").write_bytes(b"garbage")
    model = load_model("mean", torch.device("cpu"))
    ref = evaluate_aflw2000(model, clean, "gt_box", 64, torch.device("cpu"), 2, None)
    res = evaluate_aflw2000(model, tmp_path, "gt_box", 64, torch.device("cpu"), 2, None)
    assert res["count"] == 2 and res["counts"] == ref["counts"] == (1, 1, 0)
    np.testing.assert_allclose(res["bins"][:2], ref["bins"][:2], rtol=1e-6)
    reasons = {Path(r["image"]).name: r["skipped"] for r in res["skipped"]}
    assert set(reasons) == {"image00444.jpg", "image00999.jpg", "image00777.jpg"}
    assert reasons["image00444.jpg"].startswith("zero_byte")
    assert reasons["image00999.jpg"].startswith("truncated")
    assert reasons["image00777.jpg"].startswith("bad_annotation") and "image00777.mat" in reasons["image00777.jpg"]
    assert ref["skipped"] == []
    # no 60-90 degree photo: no balanced mean, and its stand-in over the bins present
    assert math.isnan(res["balanced"]) and res["balanced_present"] == pytest.approx(sum(ref["bins"][:2]) / 2)
