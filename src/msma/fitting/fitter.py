"""3DMM fitting by analysis-by-synthesis: identity, expression, pose, light and albedo against dense landmarks
and the photo, batched, on the device of the inputs (CPU or GPU).

Frame: a square *fit frame* of ``image_size`` pixels (the aligned crop the network sees, or any square crop), in
which the face model's camera (:class:`~msma.face_model.camera.PerspectiveCamera`) projects. Targets are
MediaPipe's 468 mesh points mapped into that frame; they are matched to the model's surface points of
:class:`~msma.fitting.correspondence.DenseCorrespondence`.

Energy (per face, summed over the batch):

* dense landmarks: robust (Geman-McClure) squared reprojection error (pixels of a 224 frame). Points on
  MediaPipe's face oval follow the visible silhouette, not fixed skin points: each oval point is held by its
  fixed surface point only as far as that point faces the camera, and otherwise pulls the nearest projected
  *silhouette* vertex of the model (|normal z| small; recomputed every step, contour ICP), so the model's jaw
  behind the face stays free and the model's silhouette meets MediaPipe's contour; MediaPipe's relative depth is matched up to an offset (a weak term that tells
  the two sides of a profile apart);
* photometric (stage 3, optional): Deep3D's masked colour distance between the photo and the rendering, on
  skin pixels (rendered coverage x skin probability), through :class:`~msma.render.renderer.MeshRenderer`;
* priors: squared Mahalanobis norms of identity and albedo, expression weights (blendshapes kept in [0, 1]),
  light close to ambient.

Stages: (1) rigid pose from the initial shape by PnP (OpenCV ``solvePnP`` with the model's camera), kept when it
reprojects better than the initial pose; (2) Adam on pose, identity and expression against the landmarks
(a sub-model of the needed vertices only, so a step costs well under a millisecond); (3) Adam on all groups with
the photometric term added, rendered at ``photo_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msma.data.mediapipe_mesh import FACE_OVAL, NUM_MESH
from msma.face_model.model import BLENDSHAPE_RANGE, FaceModel
from msma.face_model.params import FaceParams
from msma.face_model.rotation import euler_to_matrix, matrix_to_euler, rotate
from msma.fitting.correspondence import SKIN_THRESHOLD, DenseCorrespondence, oval_visibility
from msma.render.renderer import MeshRenderer

# An oval point is held by its fixed surface point as far as that point faces the camera (oval_visibility, shared
# with the training loss's dense term); the rest of its weight goes to the contour term.
#: Vertices whose posed normal has |z| below this are silhouette candidates of the contour term.
SILHOUETTE_NZ = 0.2
#: Subsampling of the silhouette candidates.
SILHOUETTE_STRIDE = 3


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_face_model` (defaults: 0.5-0.8 s per face on one core of this 2-core CPU).

    Attributes:
        landmark_steps: most Adam steps of stage 2.
        landmark_tol: stage 2 stops early once ``landmark_min_steps`` are done and no face's energy fell by more
            than this fraction over the last ``landmark_check_every`` steps (converged).
        landmark_min_steps / landmark_check_every: see ``landmark_tol``.
        photo_steps: Adam steps of stage 3 (0: no photometric term).
        photo_size: rendering size of stage 3, pixels.
        lr_pose / lr_shape / lr_color: Adam learning rates (radians and mm / coefficients / coefficients).
        w_photo: weight of the photometric term (per unit colour distance) relative to the landmark term.
        w_depth: weight of the relative-depth term.
        w_id / w_exp / w_tex / w_sh: prior weights.
        robust_px: Geman-McClure scale of the landmark residuals, pixels of a 224 frame.
        max_residual_mm: correspondence points further than this from MediaPipe's canonical vertex are ignored.
    """

    landmark_steps: int = 120
    landmark_tol: float = 2e-3
    landmark_min_steps: int = 50
    landmark_check_every: int = 10
    photo_steps: int = 8
    photo_size: int = 112
    lr_pose: float = 0.01
    lr_shape: float = 0.05
    lr_color: float = 0.075
    w_photo: float = 20.0
    w_depth: float = 0.05
    w_id: float = 0.02
    w_exp: float = 0.2
    w_tex: float = 0.002
    w_sh: float = 0.5
    robust_px: float = 6.0
    max_residual_mm: float = 6.0


@dataclass(frozen=True)
class FitResult:
    """Fitted faces.

    Attributes:
        params: (B rows) fitted coefficients in the fit frame.
        landmarks_2d: (B, 68, 2) the fitted model's own 68 landmark vertices projected, fit-frame pixels
            (AFLW2000-3D convention: 3D landmarks, hidden jaw points on the hidden side).
        dense_error: (B,) mean distance of the visible-weighted dense points after fitting, fit-frame pixels.
        initial_dense_error: (B,) the same for the initial parameters.
    """

    params: FaceParams
    landmarks_2d: Tensor
    dense_error: Tensor
    initial_dense_error: Tensor


_SUBMODELS: dict[tuple[int, int, str], _SubModel] = {}


class _SubModel:
    """The face model restricted to the vertices the landmark stage needs (correspondence + 68 landmarks)."""

    def __init__(self, model: FaceModel, corr: DenseCorrespondence, device: torch.device) -> None:
        tri = model.tri.cpu().numpy()
        skin = model.skin_mask.cpu().numpy()
        # silhouette candidates: every SILHOUETTE_STRIDE-th rendered skin vertex (ICT: ~2,000, a few mm apart)
        sil = np.unique(tri[(skin[tri] > SKIN_THRESHOLD).all(1)])[::SILHOUETTE_STRIDE]
        needed = np.unique(np.concatenate([corr.vertex_idx.reshape(-1), model.landmark_idx.cpu().numpy(), sil]))
        remap = {int(v): i for i, v in enumerate(needed.tolist())}
        sel = torch.as_tensor(needed, device=device)
        self.mean = model.mean_shape.to(device)[sel]
        # identity and expression bases side by side, one (3N, K_id + K_exp) matrix: one product per step
        basis = torch.cat([model.id_basis.to(device)[sel], model.exp_basis.to(device)[sel]], dim=-1)
        self.basis = basis.reshape(-1, basis.shape[-1]).contiguous()
        self.corr_idx = torch.as_tensor(np.searchsorted(needed, corr.vertex_idx), device=device)
        self.bary = torch.as_tensor(corr.bary, device=device)
        self.lmk_idx = torch.as_tensor([remap[int(v)] for v in model.landmark_idx.cpu().numpy()], device=device)
        # normals of the dense points: from the full mean mesh once (identity changes them little)
        normals = model.vertex_normals(model.mean_shape[None].cpu())[0].to(device)
        n = (normals[torch.as_tensor(corr.vertex_idx, device=device)] * self.bary[..., None]).sum(1)
        self.normals = torch.nn.functional.normalize(n, dim=-1)
        self.sil_idx = torch.as_tensor(np.searchsorted(needed, sil), device=device)
        self.model_ref, self.corr_ref = model, corr
        self.sil_normals = normals[torch.as_tensor(sil, device=device)]

    def shape(self, id: Tensor, exp: Tensor) -> Tensor:
        """(B, N, 3) unposed sub-model vertices, mm."""
        coeffs = torch.cat([id, exp], dim=1)
        return self.mean + (coeffs @ self.basis.T).view(coeffs.shape[0], -1, 3)

    def dense(self, verts: Tensor) -> Tensor:
        return (verts[:, self.corr_idx] * self.bary[None, :, :, None]).sum(2)


def _pnp_pose(
    model_pts: np.ndarray, image_pts: np.ndarray, weights: np.ndarray, focal: float, size: int, distance: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rigid pose (angles, trans in the model's conventions) from 3D-2D points with OpenCV's solvePnP."""
    import cv2

    keep = weights > 0.5
    if keep.sum() < 6:
        return None
    c = size / 2.0 - 0.5
    cam = np.array([[focal, 0, c], [0, focal, c], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(
        model_pts[keep].astype(np.float64), image_pts[keep].astype(np.float64), cam, None, flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        return None
    r_cv, _ = cv2.Rodrigues(rvec)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) <-> model frame (y up, z to camera)
    rot = flip @ r_cv
    trans = flip @ (tvec.reshape(3) - np.array([0.0, 0.0, distance]))
    angles = matrix_to_euler(torch.as_tensor(rot[None], dtype=torch.float64))[0].numpy()
    return angles, trans


def fit_face_model(
    face_model: FaceModel,
    corr: DenseCorrespondence,
    targets: Tensor,
    init: FaceParams,
    image_size: int,
    images: Tensor | None = None,
    renderer: MeshRenderer | None = None,
    config: FitConfig | None = None,
) -> FitResult:
    """Fits the face model to dense landmarks (and the photo) by analysis-by-synthesis.

    On CPU the fit runs with one intra-op thread (its tensors are small: a few thousand vertices, 112 px
    renderings): measured here, one thread is as fast as two on a quiet 2-core machine and 5x faster on a
    loaded one. The caller's thread setting is restored afterwards. Batch several faces to use more cores.

    Args:
        face_model: the model (moved to the targets' device for the fit).
        corr: MediaPipe mesh -> model surface correspondence.
        targets: (B, 468 or 478, 3) MediaPipe points in fit-frame pixels (x right, y down; z relative depth in
            pixels, smaller = nearer).
        init: (B rows) starting coefficients in the fit frame (the network's prediction, or zeros = mean face).
        image_size: side of the square fit frame, pixels.
        images: optional (B, 3, S, S) fit-frame photo crops in [0, 1] for the photometric stage (any S; resized
            to ``photo_size``).
        renderer: a :class:`~msma.render.renderer.MeshRenderer` (needed with ``images``).
        config: settings (default :class:`FitConfig`).

    Returns:
        :class:`FitResult` (on the targets' device).
    """
    threads = torch.get_num_threads()
    if targets.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _fit(face_model, corr, targets, init, image_size, images, renderer, config)
    finally:
        torch.set_num_threads(threads)


def _fit(
    face_model: FaceModel,
    corr: DenseCorrespondence,
    targets: Tensor,
    init: FaceParams,
    image_size: int,
    images: Tensor | None = None,
    renderer: MeshRenderer | None = None,
    config: FitConfig | None = None,
) -> FitResult:
    """:func:`fit_face_model` without the thread setting."""
    cfg = config or FitConfig()
    dev = targets.device
    if targets.ndim != 3 or targets.shape[1] < NUM_MESH or targets.shape[2] != 3:
        raise ValueError(f"targets must be (B, 468|478, 3), got {tuple(targets.shape)}")
    if init.batch_size != targets.shape[0]:
        raise ValueError(f"init has {init.batch_size} faces, targets {targets.shape[0]}")
    model = face_model.to(dev)
    key = (id(model), id(corr), str(dev))
    sub = _SUBMODELS.get(key)
    if sub is None or sub.model_ref is not model or sub.corr_ref is not corr:
        sub = _SubModel(model, corr, dev)
        _SUBMODELS.clear()  # one entry: the last model / correspondence / device
        _SUBMODELS[key] = sub
    cam = model.camera
    b = targets.shape[0]
    tgt = targets[:, :NUM_MESH].float()
    px = image_size / 224.0  # residuals are measured in pixels of a 224 frame
    base_w = torch.ones(NUM_MESH, device=dev)
    base_w[torch.as_tensor(corr.residual_mm > cfg.max_residual_mm, device=dev)] = 0.0
    oval = torch.zeros(NUM_MESH, dtype=torch.bool, device=dev)
    oval[list(FACE_OVAL)] = True
    blendshape = model.exp_kind == "blendshape"
    id_std = model.id_std.to(dev).clamp_min(1e-6)
    tex_std = model.tex_std.to(dev).clamp_min(1e-6)

    p = {k: v.detach().clone().float().to(dev) for k, v in init.items()}

    oval_idx = torch.as_tensor(FACE_OVAL, device=dev)

    def visibility(rot: Tensor) -> Tensor:
        nz = rotate(sub.normals[None].expand(b, -1, -1), rot)[..., 2]
        return base_w * oval_visibility(nz, oval)

    def contour(rot: Tensor, posed: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Oval points not held by a fixed vertex pull the nearest projected silhouette vertex (contour ICP)."""
        nz = rotate(sub.sil_normals[None].expand(b, -1, -1), rot)[..., 2]
        sil_px = cam.project(posed[:, sub.sil_idx], image_size)  # (B, S, 2)
        t = tgt[:, oval_idx, :2]  # (B, 36, 2)
        d2 = ((t[:, :, None, :] - sil_px[:, None, :, :]) ** 2).sum(-1) / px**2  # (B, 36, S)
        d2 = d2.masked_fill((nz.abs() > SILHOUETTE_NZ)[:, None, :], float("inf"))
        nearest = d2.min(dim=-1).values
        ok = torch.isfinite(nearest)
        nearest = torch.where(ok, nearest, torch.zeros_like(nearest))
        w_c = (1.0 - w[:, oval_idx] / base_w[oval_idx].clamp_min(1e-6)) * base_w[oval_idx] * ok
        return w_c * nearest / (1.0 + nearest / cfg.robust_px**2), w_c

    def dense_proj(pp: dict[str, Tensor], rot: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        shape = sub.shape(pp["id"], pp["exp"])
        rot = euler_to_matrix(pp["angles"]) if rot is None else rot
        posed = rotate(shape, rot) + pp["trans"][:, None]  # sub-model vertices
        pts = sub.dense(posed)
        return cam.project(pts, image_size), pts, posed

    def landmark_energy(pp: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        rot = euler_to_matrix(pp["angles"])
        proj, pts, posed = dense_proj(pp, rot)
        w = visibility(rot)
        r2 = ((proj - tgt[..., :2]) ** 2).sum(-1) / px**2
        rho = r2 / (1.0 + r2 / cfg.robust_px**2)  # Geman-McClure
        rho_c, w_c = contour(rot, posed, w)
        e_lm = ((w * rho).sum(1) + rho_c.sum(1)) / (w.sum(1) + w_c.sum(1)).clamp_min(1.0)
        # relative depth: model depth in frame pixels (nearer = larger z) vs -MediaPipe z, both centred
        zd = pts[..., 2] * cam.focal(image_size) / cam.distance / px
        zt = -tgt[..., 2] / px
        zd = zd - (w * zd).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        zt = zt - (w * zt).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        e_z = (w * (zd - zt) ** 2 / (1.0 + (zd - zt) ** 2 / (3 * cfg.robust_px) ** 2)).sum(1) / w.sum(1).clamp_min(1.0)
        with torch.no_grad():  # reported only
            err = (w * ((proj - tgt[..., :2]) ** 2).sum(-1).sqrt()).sum(1) / w.sum(1).clamp_min(1.0)
        return e_lm + cfg.w_depth * e_z, err

    def priors(pp: dict[str, Tensor]) -> Tensor:
        e = cfg.w_id * ((pp["id"] / id_std) ** 2).sum(1)
        e = e + cfg.w_exp * (pp["exp"] ** 2).sum(1)
        return e

    # ---- stage 1: rigid pose by PnP from the initial shape
    with torch.no_grad():
        _, init_err = landmark_energy(p)
        shape0 = sub.dense(sub.shape(p["id"], p["exp"])).cpu().numpy()
        w0 = visibility(euler_to_matrix(p["angles"])).cpu().numpy()
        tgt_np = tgt.cpu().numpy()
        for i in range(b):
            pose = _pnp_pose(
                shape0[i],
                tgt_np[i, :, :2],
                (base_w.cpu().numpy() > 0) & ~oval.cpu().numpy(),
                cam.focal(image_size),
                image_size,
                cam.distance,
            )
            if pose is None:
                continue
            cand = {k: v[i : i + 1].clone() for k, v in p.items()}
            cand["angles"] = torch.as_tensor(pose[0], dtype=torch.float32, device=dev)[None]
            cand["trans"] = torch.as_tensor(pose[1], dtype=torch.float32, device=dev)[None]
            # compare on the same points for both poses
            e_new = _err(dense_proj, cand, tgt[i : i + 1], w0[i])
            e_old = _err(dense_proj, {k: v[i : i + 1] for k, v in p.items()}, tgt[i : i + 1], w0[i])
            if e_new < e_old:
                p["angles"][i], p["trans"][i] = cand["angles"][0], cand["trans"][0]
        del shape0

    # ---- stage 2: pose, identity, expression against the landmarks
    _landmark_stage(p, cfg, landmark_energy, priors, blendshape)

    # ---- stage 3: photometric term on skin, all groups
    if images is not None and cfg.photo_steps > 0:
        if renderer is None:
            raise ValueError("the photometric stage needs a renderer")
        from msma.losses.photometric import photometric_loss
        from msma.losses.skin import skin_probability

        s = cfg.photo_size
        img = torch.nn.functional.interpolate(
            images.float().to(dev), size=(s, s), mode="bilinear", antialias=True, align_corners=False
        )
        skin = skin_probability(img)
        for k in ("tex", "sh"):
            p[k].requires_grad_(True)
        opt = torch.optim.Adam(
            [
                {"params": [p["angles"]], "lr": cfg.lr_pose * 0.3},
                {"params": [p["trans"]], "lr": cfg.lr_pose * 30.0},
                {"params": [p["id"], p["exp"]], "lr": cfg.lr_shape * 0.3},
                {"params": [p["tex"], p["sh"]], "lr": cfg.lr_color},
            ]
        )
        for _ in range(cfg.photo_steps):
            opt.zero_grad(set_to_none=True)
            params = FaceParams(**p)
            face = model(params, image_size=s)
            out = renderer.render(face, model.tri)
            e_photo = torch.stack(
                [
                    photometric_loss(img[i : i + 1], out.image[i : i + 1], out.mask[i : i + 1] * skin[i : i + 1])
                    for i in range(b)
                ]
            )
            e, _ = landmark_energy(p)
            reg = priors(p) + cfg.w_tex * ((p["tex"] / tex_std) ** 2).sum(1) + cfg.w_sh * (p["sh"] ** 2).sum(1)
            (e + cfg.w_photo * e_photo + reg).sum().backward()
            opt.step()
            if blendshape:
                with torch.no_grad():
                    p["exp"].clamp_(*BLENDSHAPE_RANGE)

    with torch.no_grad():
        final = FaceParams(**{k: v.detach() for k, v in p.items()})
        _, err = landmark_energy(p)
        _, _, posed = dense_proj(p)
        lm2d = cam.project(posed[:, sub.lmk_idx], image_size)
    return FitResult(params=final, landmarks_2d=lm2d, dense_error=err, initial_dense_error=init_err)


def _err(dense_proj, pp: dict[str, Tensor], tgt: Tensor, w: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    proj, _, _ = dense_proj(pp)
    d = ((proj - tgt[..., :2]) ** 2).sum(-1).sqrt()[0].cpu().numpy()
    return float((w * d).sum() / max(w.sum(), 1.0))


def _landmark_stage(p: dict[str, Tensor], cfg: FitConfig, landmark_energy, priors, blendshape: bool) -> None:  # type: ignore[no-untyped-def]
    """Stage 2: Adam on pose, identity and expression against the dense landmarks (in place on ``p``)."""
    geo = {k: p[k].requires_grad_(True) for k in ("id", "exp", "angles", "trans")}
    opt = torch.optim.Adam(
        [
            {"params": [geo["angles"]], "lr": cfg.lr_pose},
            {"params": [geo["trans"]], "lr": cfg.lr_pose * 100.0},
            {"params": [geo["id"], geo["exp"]], "lr": cfg.lr_shape},
        ]
    )
    previous: Tensor | None = None
    for step in range(cfg.landmark_steps):
        opt.zero_grad(set_to_none=True)
        e, _ = landmark_energy(p)
        total = e + priors(p)
        total.sum().backward()
        if cfg.landmark_check_every > 0 and step % cfg.landmark_check_every == 0:
            now = total.detach()
            if previous is not None and step >= cfg.landmark_min_steps:
                fell = (previous - now) / previous.abs().clamp_min(1e-6)
                if bool((fell < cfg.landmark_tol).all()):
                    break
            previous = now
        opt.step()
        if blendshape:
            with torch.no_grad():
                p["exp"].clamp_(*BLENDSHAPE_RANGE)
