"""Reconstruction from photos: ``msma.Reconstructor`` (the ``msma reconstruct`` command is :mod:`msma.cli.reconstruct`).

Pipeline per photo (the training crops' preprocessing, so a trained network sees what it was trained on):
face detection (:mod:`msma.data.detect`), 68 landmarks (:mod:`msma.data.landmarks`, dlib by default),
Deep3D's 5-point alignment to the face model's own mean-face template (:mod:`msma.data.align`), the encoder on
the ``S x S`` crop (S = the checkpoint's training image size), the face model, and a rendering that is warped
back onto the photo for the overlay. Predicted landmarks are reported in the original photo's pixels.

``ckpt`` is a ``.ckpt`` written by ``msma train`` or ``"mean"`` / None: the untrained network, whose
zero-initialised heads give the mean face, frontal, centred in the aligned crop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from msma.data.align import (
    alignment_transform,
    apply_affine,
    box_crop_transform,
    recrop_transform,
    template_from_face_model,
    warp_crop,
)
from msma.data.detect import detect_faces, make_detector
from msma.data.io import BadImageError, array_to_float_rgb, load_image
from msma.face_model.mirror import CoefficientMirror
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams
from msma.pipeline import FacePipeline, treated_params
from msma.reconstruction import Reconstruction
from msma.reconstruction import save_reconstruction as save_reconstruction  # re-exported: msma.inference API
from msma.render.renderer import MeshRenderer

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike[str] | np.ndarray | Image.Image
#: Opacity of the rendered face in the overlay where the render covers the photo.
OVERLAY_ALPHA = 0.75
#: Longest side of the rendering used for overlays (it is warped onto the photo).
MAX_OVERLAY_RENDER = 768
#: Colour of the predicted landmarks in overlays (red).
LANDMARK_COLOR = (235, 40, 40)

# Skip reasons (stable codes in summaries).
SKIP_NO_FACE = "no_face"
SKIP_LANDMARKS = "landmarks_failed"
SKIP_DETECTOR = "detector_failed"


class NoFaceError(ValueError):
    """No face was found in an image (the message names the image)."""


@dataclass(frozen=True)
class _Input:
    """A decoded photo: (H, W, 3) float RGB in [0, 1] and the map loaded -> original pixels."""

    image: np.ndarray
    loaded_to_original: np.ndarray
    source: str


@dataclass(frozen=True)
class _Face:
    image_index: int
    face_index: int
    crop: np.ndarray  # (S, S, 3) float32
    crop_to_loaded: np.ndarray  # (3, 3)
    detected: np.ndarray  # (68, 2) loaded pixels
    box: tuple[float, float, float, float]  # loaded pixels
    dense: np.ndarray | None = None  # (478, 3) MediaPipe points, loaded pixels (z: relative depth, pixels)

    @property
    def box_only(self) -> bool:
        """Found as a box without landmarks (an extreme profile): cropped from the box, not aligned."""
        return self.dense is None and not bool(np.isfinite(self.detected).any())


def _pixel_rescale(src: int, dst: int) -> np.ndarray:
    """Affine from pixel-index coordinates of a ``dst``-px square image to those of a ``src``-px one."""
    k = src / dst
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])


def _replace_rows(params: FaceParams, rows: Tensor, new: FaceParams) -> FaceParams:
    """A copy of ``params`` (B faces) whose faces ``rows`` (K indices) are ``new`` (K faces), detached."""
    merged = {g: t.detach().clone() for g, t in params.items()}
    for g, t in new.items():
        merged[g][rows] = t.detach().to(merged[g].dtype)
    return FaceParams(**merged)


class Reconstructor:
    """Single-image 3D face reconstruction with a trained (or the untrained, mean-face) network.

    Args:
        ckpt: checkpoint path written by ``msma train``; ``None`` or ``"mean"`` for the untrained network
            (mean face).
        device: ``"cpu"``, ``"cuda"`` or a torch device.
        detector: face detector name (:func:`msma.data.detect.make_detector`).
        landmarks: 68-point backend for the alignment (``"dlib"`` or ``"fan"``).
        landmark_weights: optional model file of that backend.
        image_size: crop size S; default the checkpoint's training size (224 for ``"mean"``).
        renderer_backend: ``"auto"``, ``"torch"`` or ``"nvdiffrast"``.
        fit: refine the network's prediction by 3DMM fitting to MediaPipe's dense landmarks and the photo
            (:mod:`msma.fitting`); needs ``landmarks="mediapipe"``. Reported landmarks are then the fitted
            model's own 68 landmark vertices, projected.
        fit_config: fitting settings (:class:`msma.fitting.fitter.FitConfig`).
        texture: also bake a UV texture from the photo per face (:mod:`msma.texture`; needs a model with UVs).
        fallback: when the dlib / OpenCV detector finds no face (profiles beyond ~45 degrees), try MediaPipe's
            detection chain and its 68 points for the alignment (if MediaPipe and its bundle are available).
        flip_average: average the network's coefficients over the crop and its mirror image
            (:func:`msma.pipeline.predict_params`; crops and mirrors in one encoder batch): every group with the
            face model's :class:`~msma.face_model.mirror.CoefficientMirror`, the pose alone when its mesh is not
            mirror-symmetric; False: the crop's prediction alone.
        clamp_expressions: project the network's blendshape weights onto the face model's [0, 1]
            (:meth:`~msma.face_model.model.FaceModel.in_range`; after the flip average, before fitting); PCA
            expressions are left as they are. False: the network's raw output.
        recrop: passes of the two-step crop for box-only faces (below): the network's predicted landmarks,
            taken back to the photo, give Deep3D's 5-point-aligned crop for another pass
            (:func:`msma.data.align.recrop_transform`); 0: the box crop's prediction alone.

    ``detector=None`` picks the MediaPipe detection chain for ``landmarks="mediapipe"`` and dlib otherwise.
    With the ``mediapipe`` backend a face whose box is found but whose landmarks are not (an extreme profile)
    is cropped from its box for the network, re-cropped on the network's own landmarks (``recrop``) and not
    fitted.
    """

    def __init__(
        self,
        ckpt: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        detector: str | None = None,
        landmarks: str = "dlib",
        landmark_weights: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        renderer_backend: str = "auto",
        fit: bool = False,
        fit_config: Any = None,
        texture: bool = False,
        fallback: bool = True,
        flip_average: bool = True,
        clamp_expressions: bool = True,
        recrop: int = 1,
    ) -> None:
        from msma.checkpoint import load_inference_model, untrained_pipeline
        from msma.data.landmarks import make_landmark_backend

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        backend = None if renderer_backend == "auto" else renderer_backend
        if ckpt is None or str(ckpt) == "mean":
            self.checkpoint = "mean"
            model = untrained_pipeline(renderer_backend=renderer_backend)
        else:
            self.checkpoint = str(ckpt)
            # Encoder + face model + renderer only: a checkpoint trained with losses this machine cannot build
            # (e.g. the identity loss without its weights) still reconstructs.
            model = load_inference_model(Path(ckpt), map_location="cpu", renderer_backend=backend)
        self.model: FacePipeline = model.to(self.device).eval()
        self.image_size = int(image_size or self.model.image_size)
        self.face_model: FaceModel = self.model.face_model
        self.renderer: MeshRenderer = self.model.renderer
        self.template = template_from_face_model(self.face_model)
        if fit and landmarks != "mediapipe":
            raise ValueError("fitting needs MediaPipe's dense landmarks: use landmarks='mediapipe' with fit=True")
        self.landmark_backend = make_landmark_backend(landmarks, landmark_weights, device=str(self.device))
        if detector is None:
            detector = "mediapipe" if landmarks == "mediapipe" else "dlib"
        self.detector = make_detector(detector)
        self.fallback = bool(fallback) and detector != "mediapipe" and landmarks != "mediapipe"
        self._fallback_pair: tuple[Any, Any] | None = None
        self.fit = bool(fit)
        self.flip_average = bool(flip_average)
        self.clamp_expressions = bool(clamp_expressions)
        if int(recrop) < 0:
            raise ValueError(f"recrop must be >= 0, got {recrop}")
        self.recrop = int(recrop)
        self.mirror = CoefficientMirror.from_face_model(self.face_model) if self.flip_average else None
        self.texture = bool(texture)
        if self.texture and self.face_model.uv is None:
            raise ValueError(f"face model {self.face_model.name!r} has no UVs: texture export needs ICT-FaceKit")
        self.fit_config = fit_config
        self._corr: Any = None
        if self.fit:
            from msma.fitting.correspondence import load_correspondence

            self._corr = load_correspondence(self.face_model, landmark_weights)
        if not self.landmark_backend.needs_detector:
            raise ValueError("the 'gt' landmark backend needs annotation files; use 'dlib', 'fan' or 'mediapipe'")

    # ------------------------------------------------------------------------------------------ public
    def reconstruct(self, image: ImageInput) -> Reconstruction:
        """Reconstructs the largest face of one image.

        Args:
            image: a file path, an (H, W, 3) uint8 / float [0, 1] RGB array, or a PIL image.

        Raises:
            msma.data.io.BadImageError: an unreadable file.
            NoFaceError: no face found.
        """
        return self.reconstruct_faces(image, all_faces=False)[0]

    def reconstruct_faces(self, image: ImageInput, all_faces: bool = True) -> list[Reconstruction]:
        """Reconstructs every face (largest first) or only the largest; raises :class:`NoFaceError` if none."""
        inp = self._decode(image)
        faces, reason = self._faces(inp, 0, all_faces)
        if not faces:
            raise NoFaceError(reason)
        return self._run([inp], faces)

    def reconstruct_many(
        self, images: Sequence[ImageInput], all_faces: bool = False, batch_size: int = 8
    ) -> list[list[Reconstruction] | str]:
        """Reconstructs many images, batching the network over faces.

        Returns:
            One entry per input: its reconstructions, or a skip reason string
            (``"<code>: <detail>"``, codes: msma.data.io reasons, ``no_face``, ``landmarks_failed``,
            ``detector_failed``).
        """
        results: list[list[Reconstruction] | str] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + max(1, batch_size)]
            inputs: list[_Input] = []
            faces: list[_Face] = []
            slots: list[int] = []
            for item in chunk:
                try:
                    inp = self._decode(item)
                except BadImageError as exc:  # its message names the file, which the caller already has
                    results.append(f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)
                    continue
                except ValueError as exc:
                    results.append(f"unreadable: {exc}")
                    continue
                found, why = self._faces(inp, len(inputs), all_faces)
                if not found:
                    results.append(why)
                    continue
                slots.append(len(results))
                results.append([])
                inputs.append(inp)
                faces += found
            if faces:
                recs = self._run(inputs, faces, batch_size=batch_size)
                per_image: list[list[Reconstruction]] = [[] for _ in inputs]
                for face, rec in zip(faces, recs):
                    per_image[face.image_index].append(rec)
                for slot, recs_i in zip(slots, per_image):
                    results[slot] = recs_i
        return results

    # ------------------------------------------------------------------------------------------ steps
    def _decode(self, image: ImageInput) -> _Input:
        if isinstance(image, (str, os.PathLike)):
            loaded = load_image(image)
            return _Input(loaded.image, loaded.loaded_to_original(), str(image))
        return _Input(array_to_float_rgb(image, "<array>"), np.eye(3), "<array>")

    def _faces(self, inp: _Input, image_index: int, all_faces: bool) -> tuple[list[_Face], str]:
        from msma.data.landmarks import LandmarkError

        u8 = np.ascontiguousarray(np.clip(np.rint(inp.image * 255.0), 0, 255).astype(np.uint8))
        try:
            boxes = detect_faces(self.detector, u8, all_faces)
            backend = self.landmark_backend
            if not boxes:
                why = getattr(self.detector, "last_reason", "") or "the face detector found no face"
                pair = self._mediapipe_fallback() if self.fallback else None
                if pair is not None:
                    boxes = detect_faces(pair[0], u8, all_faces)
                    backend = pair[1]
                    if not boxes:
                        why += "; MediaPipe's detection chain found none either"
                if not boxes:
                    return [], f"{SKIP_NO_FACE}: {why} in {inp.source}"
        except RuntimeError as exc:  # a detector library aborting on one odd image must not end a folder's run
            log.warning("%s: the face detector failed: %s", inp.source, exc)
            return [], f"{SKIP_DETECTOR}: {inp.source}: {type(exc).__name__}: {str(exc).strip()[:300]}"
        faces: list[_Face] = []
        errors: list[str] = []
        dense_fn = getattr(backend, "dense", None)
        for box in boxes:
            dense = None
            try:
                if dense_fn is not None:
                    dense_face = dense_fn(u8, box)
                    dense = np.asarray(dense_face.points, dtype=np.float64)
                    lm = np.asarray(dense_face.landmarks68, dtype=np.float64)
                else:
                    lm = np.asarray(backend.detect(u8, box), dtype=np.float64)
            except LandmarkError as exc:
                if dense_fn is None:
                    errors.append(str(exc))
                    continue
                # a box without landmarks (extreme profile): the network sees the box crop, no fitting
                m = box_crop_transform((box.left, box.top, box.right, box.bottom), self.image_size, 1.6)
                crop = warp_crop(inp.image, m, self.image_size)
                nan68 = np.full((68, 2), np.nan)
                faces.append(_Face(image_index, len(faces), crop, m, nan68, (box.left, box.top, box.right, box.bottom)))
                continue
            if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
                errors.append(f"landmark backend returned {lm.shape} / non-finite points")
                continue
            m = alignment_transform(lm, self.template, self.image_size)
            crop = warp_crop(inp.image, m, self.image_size)
            faces.append(_Face(image_index, len(faces), crop, m, lm, (box.left, box.top, box.right, box.bottom), dense))
        if not faces:
            return [], f"{SKIP_LANDMARKS}: {inp.source}: {'; '.join(errors)}"
        return faces, ""

    def _mediapipe_fallback(self) -> tuple[Any, Any] | None:
        """MediaPipe's detection chain and landmark backend, built on first use; None when unavailable."""
        if self._fallback_pair is None:
            from msma.data.landmarks import mediapipe_fallback

            self._fallback_pair = mediapipe_fallback("faces the detector misses")
            if self._fallback_pair is None:
                self.fallback = False
        return self._fallback_pair

    def _run(self, inputs: list[_Input], faces: list[_Face], batch_size: int = 8) -> list[Reconstruction]:
        out: list[Reconstruction] = []
        for start in range(0, len(faces), max(1, batch_size)):
            group = faces[start : start + max(1, batch_size)]
            crops = self._stack_crops(group)
            params = self._predict(crops)
            rows = [i for i, f in enumerate(group) if f.box_only]
            for _ in range(self.recrop if rows else 0):
                group, crops, params = self._recrop(inputs, group, rows, crops, params)
            if self.fit:
                params = self._fit(group, crops, params)
            with torch.no_grad():
                face = self.face_model(params, image_size=self.image_size)
            for i, f in enumerate(group):
                out.append(self._finish(inputs[f.image_index], f, params[i], face, i))
        return out

    def _stack_crops(self, group: Sequence[_Face]) -> Tensor:
        """(B, 3, S, S) float32 crops of the faces on the reconstructor's device."""
        return torch.stack([torch.from_numpy(f.crop.transpose(2, 0, 1).copy()) for f in group]).to(self.device)

    @torch.no_grad()
    def _predict(self, crops: Tensor) -> FaceParams:
        """The network's coefficients of (B, 3, S, S) crops with the test-time treatment."""
        return treated_params(
            self.model.encoder, self.face_model, crops, self.flip_average, self.mirror, self.clamp_expressions
        )

    @torch.no_grad()
    def _recrop(
        self, inputs: list[_Input], group: list[_Face], rows: list[int], crops: Tensor, params: FaceParams
    ) -> tuple[list[_Face], Tensor, FaceParams]:
        """One pass of the two-step crop: faces ``rows`` re-cropped on their predicted landmarks and predicted again."""
        idx = torch.as_tensor(rows, device=self.device)
        lm = self.face_model(params[idx], image_size=self.image_size).landmarks_2d.double().cpu().numpy()
        group = list(group)
        for j, i in enumerate(rows):
            f = group[i]
            m = recrop_transform(lm[j], f.crop_to_loaded, self.template, self.image_size)
            crop = warp_crop(inputs[f.image_index].image, m, self.image_size)
            group[i] = dataclasses.replace(f, crop=crop, crop_to_loaded=m)
        sub = self._stack_crops([group[i] for i in rows])
        crops = crops.clone()
        crops[idx] = sub
        return group, crops, _replace_rows(params, idx, self._predict(sub))

    def _fit(self, group: list[_Face], crops: Tensor, params: FaceParams) -> FaceParams:
        """Refines the network's coefficients of the faces with dense landmarks (crop frame) by fitting."""
        from msma.fitting.fitter import fit_face_model

        rows = [i for i, f in enumerate(group) if f.dense is not None]
        if not rows:
            return params
        targets = []
        for i in rows:
            f = group[i]
            m = np.linalg.inv(f.crop_to_loaded)
            assert f.dense is not None
            xy = apply_affine(m, f.dense[:, :2])
            z = f.dense[:, 2:] * math.sqrt(abs(np.linalg.det(m[:2, :2])))
            targets.append(np.concatenate([xy, z], axis=1))
        tgt = torch.as_tensor(np.stack(targets), dtype=torch.float32, device=self.device)
        idx = torch.as_tensor(rows, device=self.device)
        res = fit_face_model(
            self.face_model,
            self._corr,
            tgt,
            params[idx].detach(),
            self.image_size,
            crops[idx],
            self.renderer,
            self.fit_config,
        )
        return _replace_rows(params, idx, res.params)

    @torch.no_grad()
    def _finish(self, inp: _Input, f: _Face, params: FaceParams, face: Any, i: int) -> Reconstruction:
        to_orig = inp.loaded_to_original
        crop_to_image = to_orig @ f.crop_to_loaded
        lm_crop = face.landmarks_2d[i].detach().cpu().double().numpy()
        landmarks = apply_affine(crop_to_image, lm_crop)
        overlay, mask = self._overlay(inp.image, f.crop_to_loaded, params, apply_affine(f.crop_to_loaded, lm_crop))
        box = tuple(float(v) for v in apply_affine(to_orig, np.array([f.box[:2], f.box[2:]])).reshape(-1))
        texture = None
        if self.texture:
            from msma.texture import bake_face_texture

            texture = bake_face_texture(self.face_model, params, inp.image, f.crop_to_loaded, self.image_size)
        return Reconstruction(
            params=params.detach().to("cpu"),
            vertices=face.vertices[i].detach().cpu(),
            vertices_canonical=face.vertices_canonical[i].detach().cpu(),
            colors=face.color[i].detach().clamp(0.0, 1.0).cpu(),
            albedo=face.albedo[i].detach().clamp(0.0, 1.0).cpu(),
            triangles=self.face_model.tri.detach().cpu().long(),
            landmarks=landmarks,
            detected_landmarks=apply_affine(to_orig, f.detected),
            box=(box[0], box[1], box[2], box[3]),
            crop=torch.from_numpy(f.crop.transpose(2, 0, 1).copy()),
            crop_to_image=crop_to_image,
            overlay=overlay,
            render_mask=mask,
            source=inp.source,
            face_index=f.face_index,
            texture=texture,
        )

    def _overlay(
        self, image: np.ndarray, crop_to_loaded: np.ndarray, params: FaceParams, landmarks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Renders the face at about the photo's resolution and blends it on the (loaded) photo."""
        h, w = image.shape[:2]
        s = self.image_size
        zoom = math.sqrt(abs(np.linalg.det(crop_to_loaded[:2, :2])))  # photo px per crop px
        res = int(min(MAX_OVERLAY_RENDER, max(s, round(s * zoom))))
        face = self.face_model(params.to(self.device), image_size=res)
        rendered = self.renderer.render(face, self.face_model.tri)
        rgb = rendered.image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy().astype(np.float32)
        cov = rendered.mask[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
        render_to_image = crop_to_loaded @ _pixel_rescale(s, res)
        m = render_to_image[:2].astype(np.float64)
        rgb_img = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0.0, 0.0, 0.0))
        cov_img = cv2.warpAffine(cov, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
        alpha = (OVERLAY_ALPHA * cov_img)[..., None]
        blended = np.clip(rgb_img * alpha + image * (1.0 - alpha), 0.0, 1.0)
        pil = Image.fromarray((blended * 255.0 + 0.5).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        extent = float(np.ptp(landmarks[:, 0]) + np.ptp(landmarks[:, 1])) / 2.0
        r = float(np.clip(extent / 70.0, 1.0, 6.0))
        for x, y in landmarks:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=LANDMARK_COLOR)
        return np.asarray(pil), cov_img
