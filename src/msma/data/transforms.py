"""Training-time augmentation of aligned face crops (albumentations), with the ground truth kept consistent.

:class:`FaceAugment` applies Deep3DFaceRecon's geometric augmentation (shift +-10 px, scale +-10 %, rotation
+-10 deg, horizontal flip; ``data/base_dataset.py`` of Deep3DFaceRecon_pytorch) plus colour jitter and blur to a
:class:`~msma.data.batch.FaceSample`. The 68 landmarks go through the same albumentations pipeline as keypoints,
a flip re-indexes them with :data:`msma.data.landmark_index.MIRROR_68`, and the skin mask is warped with the
image.

What happens to the ground truth (a transform never leaves a label silently wrong):

=====================  ===============================================================================
label                  after a geometric transform (shift/scale/rotate)   | after a horizontal flip
=====================  ===============================================================================
``landmarks``          transformed                                         | transformed + re-indexed
``skin_mask``          warped with the image (bilinear, zero outside)      | flipped
``crop_to_image``      updated: ``crop_to_image @ inv(M)``                  | updated (has det < 0)
``yaw``                kept (in-plane rotation does not change yaw)        | negated
``vertices``           dropped (None): they no longer project onto the crop | dropped
``landmarks_3d``       kept (it lives in the original image's frame)       | dropped
``dense``              transformed (x, y; z scaled)                        | transformed + re-indexed (MIRROR_468),
                                                                           | iris points NaN
``params``             **kept**, pose groups masked (see below)            | every group mirrored (with ``mirror``),
                                                                           | else the mirrored pose kept, the rest
                                                                           | masked (with ``layout``; else dropped)
=====================  ===============================================================================

Params after a geometric transform: the identity, expression and albedo coefficients still describe the face in
the crop; the pose groups (``angles``, ``trans``) and the lighting ``sh`` (colour jitter) describe the
*un-augmented* image. A moved sample's ``param_groups`` therefore leaves out ``angles``/``trans`` (the loss
supervises only the groups a sample has), and the convention of the package is that parameter supervision on
augmented samples uses the ``id``/``exp``/``tex`` groups only (see ``docs/synthetic.md``); :data:`POSE_INVALIDATED_GROUPS`
and :data:`PHOTOMETRIC_INVALIDATED_GROUPS` name the stale groups. Synthetic data already randomises pose,
translation and scale, so ``FaceAugment(geometric=False)`` keeps every coefficient exact there.

Params after a flip (given the coefficient ``layout``): mirroring the crop about its vertical centre line is
mirroring the model frame in x (the camera's principal point is the crop centre), ``M = diag(-1, 1, 1)``. With
``R = Rz(roll) Ry(yaw) Rx(pitch)``, ``M R M = Rz(-roll) Ry(-yaw) Rx(pitch)``, so the pose of the mirrored face is
``(pitch, -yaw, -roll)`` and ``(-tx, ty, tz)``: exact for the mirror image of the posed face. The identity,
expression and albedo of a mirrored face are not, in general, coefficients of the same model, and the lighting is
left out too, so a flipped sample supervises ``angles`` and ``trans`` only (when no geometric transform moved it;
then nothing). This makes flips usable on synthetic data: the network sees each face and its mirror image with
mirrored poses, which asks for a mirror-equivariant pose estimate. Given the face model's coefficient mirror
(:class:`msma.face_model.mirror.CoefficientMirror`, ``mirror=``), a flipped sample keeps every group it has instead:
the light's SH mirrored exactly, the identity, expression and albedo as the least-squares projection of the mirrored
face onto the model (on ICT-FaceKit within 0.4 / 1.9 / 0.5 % of the mirrored basis; the flip's landmarks, skin mask
and image are exact), so the flipped half of a synthetic batch supervises the shape and albedo too.
"""

from __future__ import annotations

import dataclasses
import os

# albumentations checks PyPI for a newer version at import unless told not to (no network at run time).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from msma.data.batch import FaceSample
from msma.data.landmark_index import mirror_permutation
from msma.face_model.mirror import CoefficientMirror
from msma.face_model.params import GROUPS, CoeffLayout, mirror_pose

#: Coefficient groups whose ground truth refers to the un-augmented image after a geometric transform.
POSE_INVALIDATED_GROUPS: tuple[str, ...] = ("angles", "trans")
#: Coefficient groups whose ground truth no longer matches the pixels after colour jitter.
PHOTOMETRIC_INVALIDATED_GROUPS: tuple[str, ...] = ("sh",)
#: Groups that stay valid under every transform except a flip (the default parameter-supervision set).
ALWAYS_VALID_GROUPS: tuple[str, ...] = ("id", "exp", "tex")

_BORDER_MODES: dict[str, int] = {
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
}


class FaceAugment:
    """Random geometric + photometric augmentation of a :class:`FaceSample`.

    Args:
        image_size: expected square crop size S in pixels (a sample of another size is an error).
        shift_px: maximum translation in pixels along x and y (uniform in ``[-shift_px, shift_px]``).
        scale: maximum relative scale change (uniform in ``[1 - scale, 1 + scale]``).
        rotate_deg: maximum in-plane rotation in degrees (uniform in ``[-rotate_deg, rotate_deg]``).
        flip: allow horizontal flips (probability ``p_flip``).
        color_jitter: apply brightness/contrast/saturation/hue jitter (probability ``p_color``).
        blur: apply a Gaussian or motion blur (probability ``p_blur``).
        geometric: apply the shift/scale/rotation at all (probability ``p_affine``); False keeps pose exact.
        p_affine: probability of the shift/scale/rotation.
        p_flip: probability of a horizontal flip.
        p_color: probability of colour jitter.
        p_blur: probability of a blur.
        brightness: brightness jitter amplitude (factor in ``[1 - b, 1 + b]``).
        contrast: contrast jitter amplitude.
        saturation: saturation jitter amplitude.
        hue: hue jitter amplitude (fraction of the hue circle, at most 0.5).
        border_mode: how pixels outside the source crop are filled: ``"constant"`` (black, as Deep3D's PIL affine),
            ``"reflect"`` or ``"replicate"``.
        layout: the coefficient layout of the samples' ``params``; with it a flipped sample keeps its mirrored
            pose as ground truth (module docstring), without it a flip drops ``params``.
        mirror: the face model's :class:`~msma.face_model.mirror.CoefficientMirror` (needs ``layout``); with it a
            flipped sample keeps *every* group it has, mapped to the mirror image (identity, expression and albedo
            up to the map's least-squares residual, pose and light exactly); without it the pose alone.
    """

    def __init__(
        self,
        image_size: int = 224,
        shift_px: float = 10.0,
        scale: float = 0.1,
        rotate_deg: float = 10.0,
        flip: bool = True,
        color_jitter: bool = True,
        blur: bool = True,
        geometric: bool = True,
        p_affine: float = 1.0,
        p_flip: float = 0.5,
        p_color: float = 0.8,
        p_blur: float = 0.2,
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.3,
        hue: float = 0.03,
        border_mode: str = "constant",
        layout: CoeffLayout | None = None,
        mirror: CoefficientMirror | None = None,
    ) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if shift_px < 0 or not 0 <= scale < 1 or rotate_deg < 0:
            raise ValueError(
                f"shift_px, rotate_deg must be >= 0 and 0 <= scale < 1, got {shift_px}, {rotate_deg}, {scale}"
            )
        for name, p in (("p_affine", p_affine), ("p_flip", p_flip), ("p_color", p_color), ("p_blur", p_blur)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if border_mode not in _BORDER_MODES:
            raise ValueError(f"border_mode must be one of {sorted(_BORDER_MODES)}, got {border_mode!r}")
        self.image_size = image_size
        self.geometric = geometric and (shift_px > 0 or scale > 0 or rotate_deg > 0)
        self.flip = flip
        self.layout = layout
        if mirror is not None and layout is None:
            raise ValueError("FaceAugment: a coefficient mirror needs the coefficient layout")
        self.mirror = mirror
        transforms: list[A.BasicTransform | A.BaseCompose] = []
        if self.geometric:
            frac = shift_px / image_size
            transforms.append(
                A.Affine(
                    scale=(1.0 - scale, 1.0 + scale),
                    translate_percent={"x": (-frac, frac), "y": (-frac, frac)},
                    rotate=(-rotate_deg, rotate_deg),
                    keep_ratio=True,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_LINEAR,
                    border_mode=_BORDER_MODES[border_mode],
                    fill=0.0,
                    fill_mask=0.0,
                    p=p_affine,
                )
            )
        if flip:
            transforms.append(A.HorizontalFlip(p=p_flip))
        if color_jitter:
            transforms.append(
                A.ColorJitter(
                    brightness=(1.0 - brightness, 1.0 + brightness),
                    contrast=(1.0 - contrast, 1.0 + contrast),
                    saturation=(1.0 - saturation, 1.0 + saturation),
                    hue=(-hue, hue),
                    p=p_color,
                )
            )
        if blur:
            transforms.append(
                A.OneOf(
                    [
                        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.3, 1.5), p=1.0),
                        A.MotionBlur(blur_limit=(3, 7), p=1.0),
                    ],
                    p=p_blur,
                )
            )
        # remove_invisible=False: landmarks pushed outside the crop stay (with their out-of-range coordinates).
        self._moves_pixels = self.geometric or flip
        self._compose = A.Compose(
            transforms,
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False) if self._moves_pixels else None,
            seed=0,
        )

    def __repr__(self) -> str:
        return f"FaceAugment(image_size={self.image_size}, transforms={self._compose.transforms!r})"

    def __call__(self, sample: FaceSample, seed: int | None = None) -> FaceSample:
        """Augments one sample.

        Args:
            sample: the sample; ``image`` (3, S, S) float in [0, 1] with S = ``image_size``.
            seed: makes the draw reproducible. None draws a seed from torch's global generator, which a
                ``DataLoader`` seeds differently per worker and per epoch.

        Returns:
            A new :class:`FaceSample` (the input is not modified); labels updated as in the module docstring.
        """
        image = sample.image
        s = self.image_size
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != s or image.shape[2] != s:
            raise ValueError(
                f"FaceAugment({s}) expects a (3, {s}, {s}) image, got {tuple(image.shape)} from {sample.source!r}"
            )
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self._compose.set_random_seed(seed)

        img_np = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32))
        lm = sample.landmarks.detach().cpu().numpy().astype(np.float64)
        nan_rows = np.asarray(np.isnan(lm).any(axis=1), dtype=bool)
        lm_in = np.where(nan_rows[:, None], 0.0, lm)
        # Three reference points recover the exact affine map the pipeline applied (flip included).
        ref = np.array([[0.0, 0.0], [s - 1.0, 0.0], [0.0, s - 1.0]])
        keypoints = np.concatenate([lm_in, ref], axis=0)
        inputs: dict[str, np.ndarray] = {"image": img_np}
        if self._moves_pixels:
            inputs["keypoints"] = keypoints
        if sample.skin_mask is not None:
            inputs["mask"] = np.ascontiguousarray(sample.skin_mask.detach().cpu()[0].numpy().astype(np.float32))
        out = self._compose(**inputs)

        kp = np.asarray(out["keypoints"], dtype=np.float64)[:, :2] if self._moves_pixels else keypoints
        if kp.shape[0] != keypoints.shape[0]:
            raise RuntimeError("albumentations dropped keypoints although remove_invisible=False")
        m = _affine_from_points(ref, kp[-3:])
        flipped = float(np.linalg.det(m[:2, :2])) < 0.0
        moved = not np.allclose(m[:2, :2], np.diag([-1.0 if flipped else 1.0, 1.0]), atol=1e-6) or not np.allclose(
            m[:2, 2], [(s - 1.0) if flipped else 0.0, 0.0], atol=1e-4
        )

        landmarks = torch.from_numpy(kp[:-3]).to(torch.float32)
        landmarks[torch.from_numpy(nan_rows)] = float("nan")
        out_image = torch.from_numpy(np.clip(out["image"], 0.0, 1.0)).permute(2, 0, 1).contiguous().to(torch.float32)
        skin_mask = None
        if sample.skin_mask is not None:
            skin_mask = torch.from_numpy(np.clip(out["mask"], 0.0, 1.0)).to(torch.float32)[None].contiguous()
        m_inv = torch.from_numpy(np.linalg.inv(m)).to(sample.crop_to_image.dtype)
        crop_to_image = sample.crop_to_image @ m_inv

        changes: dict[str, object] = {
            "image": out_image,
            "landmarks": landmarks,
            "skin_mask": skin_mask,
            "crop_to_image": crop_to_image,
        }
        if moved:
            changes["vertices"] = None
            if sample.params is not None:
                # The pose groups describe the un-augmented crop: mask them out of this sample's supervision.
                groups = tuple(g for g in (sample.param_groups or GROUPS) if g not in POSE_INVALIDATED_GROUPS)
                changes["param_groups"] = groups
                if not groups:
                    changes["params"] = None
                    changes["param_groups"] = None
        if sample.dense is not None:
            changes["dense"] = _transform_dense(sample.dense, m, flipped)
        if flipped:
            changes["landmarks"] = landmarks.index_select(0, mirror_permutation(landmarks.shape[0]))
            changes["params"], changes["param_groups"] = self._mirrored_params(sample, moved)
            changes["vertices"] = None
            changes["landmarks_3d"] = None
            changes["yaw"] = -sample.yaw
        return dataclasses.replace(sample, **changes)  # type: ignore[arg-type]

    def _mirrored_params(self, sample: FaceSample, moved: bool) -> tuple[Tensor | None, tuple[str, ...] | None]:
        """(params, param_groups) of a flipped sample, else (None, None): with the coefficient mirror every group the
        sample has (less the pose after a geometric move), mirrored; without it the mirrored pose where it is still
        exact."""
        have = sample.param_groups or GROUPS
        if self.mirror is not None:
            groups = tuple(g for g in have if not (moved and g in POSE_INVALIDATED_GROUPS))
        else:
            groups = tuple(g for g in ("angles", "trans") if g in have and not moved)
        if self.layout is None or sample.params is None or not groups:
            return None, None
        if sample.params.shape[-1] != self.layout.total:
            raise ValueError(
                f"{sample.source}: {sample.params.shape[-1]} coefficients, the augmentation's layout has "
                f"{self.layout.total}"
            )
        split = self.layout.split(sample.params[None])
        mirrored = self.mirror(split) if self.mirror is not None else mirror_pose(split)
        return self.layout.join(mirrored)[0], groups


def _transform_dense(dense: Tensor, m: np.ndarray, flipped: bool) -> Tensor:
    """(K, 3) dense MediaPipe points through the crop affine ``m`` (x, y mapped; z scaled by its scale); after a
    flip re-indexed with :data:`~msma.data.mediapipe_mesh.MIRROR_468` (iris rows NaN)."""
    from msma.data.mediapipe_mesh import mirror_dense_order

    pts = dense.detach().cpu().numpy().astype(np.float64)
    out = pts.copy()
    out[:, :2] = pts[:, :2] @ m[:2, :2].T + m[:2, 2]
    out[:, 2:] = pts[:, 2:] * float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    if flipped:
        out = mirror_dense_order(out)
    return torch.from_numpy(out).to(dense.dtype)


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 affine matrix mapping three (non-collinear) ``src`` points (3, 2) onto ``dst`` (3, 2)."""
    a = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3): rows [x, y, 1]
    sol = np.linalg.solve(a, dst)  # (3, 2): a @ sol = dst
    m = np.eye(3)
    m[:2, :] = sol.T
    return m


def apply_affine_to_points(matrix: Tensor, points: Tensor) -> Tensor:
    """Applies a (3, 3) affine pixel map to (..., 2) points (helper for tests and callers)."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]
