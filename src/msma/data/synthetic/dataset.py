"""``SyntheticFaceDataset``: faces rendered from the face model with exact ground truth, cached in shards.

Generation (sampling, rendering, compositing) happens per batch of indices in :meth:`SyntheticFaceDataset.generate`;
storage is :class:`msma.data.synthetic.shards.ShardCache`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from msma.data.batch import FaceSample
from msma.data.synthetic.backgrounds import procedural_background, value_noise
from msma.data.synthetic.camera_effects import EFFECTS, apply_camera_effects
from msma.data.synthetic.clothing import clothing_layer
from msma.data.synthetic.clutter import clutter
from msma.data.synthetic.compositing import head_context, mouth_cavity, to_uint8
from msma.data.synthetic.creases import creased_albedo
from msma.data.synthetic.head import hair_layers, render_head
from msma.data.synthetic.jitter import jitter_params
from msma.data.synthetic.lighting import sample_extra_light, shade
from msma.data.synthetic.occluders import OCCLUDER_KINDS, occluder_layers
from msma.data.synthetic.parallel import generate_shards
from msma.data.synthetic.sampling import (
    SYNTHETIC_VERSION,
    SamplingSettings,
    check_expression_settings,
    sample_params_with,
    sample_seed,
)
from msma.data.synthetic.shards import ShardCache
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams
from msma.face_model.rotation import euler_to_matrix
from msma.render.renderer import MeshRenderer


@dataclass(frozen=True)
class RenderedFaces:
    """A batch of generated samples before storage.

    Attributes:
        images: (B, S, S, 3) uint8 RGB composites.
        skin: (B, S, S) uint8 skin mask (rendered coverage x per-vertex skin weight) x 255.
        params: (B, P) float32 flat coefficients in the face model's layout.
        landmarks: (B, 68, 2) float32 projected landmarks in pixels (x right, y down).
    """

    images: np.ndarray
    skin: np.ndarray
    params: np.ndarray
    landmarks: np.ndarray


#: Domain-randomisation layers of the generator (``SyntheticFaceDataset(effects=...)``).
DOMAIN_EFFECTS = ("head", "hair", "clothing", "occluders", "light", "camera", "clutter", "jitter")


# ------------------------------------------------------------------------------------------------ dataset
class SyntheticFaceDataset(Dataset[FaceSample]):
    """Faces rendered from a face model with random coefficients, pose, light and background.

    Args:
        face_model: the model to sample and render (its layout defines ``FaceSample.params``).
        num_samples: dataset length.
        seed: dataset seed; sample ``i`` depends only on ``(seed, i)`` and the settings.
        image_size: square crop size S in pixels.
        cache_dir: where generated shards are stored (``cache_dir/<key>/``); None generates on the fly.
        renderer_backend: ``"torch"`` (CPU reference), ``"nvdiffrast"`` (CUDA) or ``"auto"`` (nvdiffrast when
            generating on a CUDA device, else torch; see ``MeshRenderer``). The backends differ slightly
            (nvdiffrast antialiases silhouettes), so the backend is part of the cache key. Generate a GPU cache
            with :meth:`ensure_generated` in the main process: on-the-fly generation inside forked ``DataLoader``
            workers must render on the CPU (``device="cpu"``, ``renderer_backend="torch"``).
        max_yaw_deg: most samples have ``|yaw| <= max_yaw_deg``.
        extreme_yaw_fraction: fraction of samples beyond ``max_yaw_deg`` (up to ``extreme_yaw_limit_deg``).
        extreme_yaw_limit_deg: the largest |yaw|.
        shard_size: samples per cache shard (and per rendering batch).
        render_batch: faces rendered at once when generating.
        device: where generation renders (None: CUDA for ``"nvdiffrast"``, and for ``"auto"`` with a
            ``cache_dir`` when CUDA is available; else CPU).
        return_vertices: compute ``FaceSample.vertices`` (N, 3) from the stored coefficients.
        progress: show a tqdm progress bar while generating.
        head_context: paint a rough skull/hair and neck behind most faces (see :func:`msma.data.synthetic.compositing.head_context`), so the
            network does not learn that a face ends where the background starts.
        effects: the domain-randomisation layers to apply, a subset of :data:`DOMAIN_EFFECTS` (default all):
            ``head`` (the context mesh: skull, ears, neck, teeth, gums), ``hair``, ``clothing``, ``occluders``,
            ``light`` (extra directional/point light, cast shadows, specular), ``camera`` (blur, noise, JPEG,
            exposure, colour casts), ``clutter`` (structured background), ``jitter`` (alignment jitter).
            ``()`` gives plain renders over procedural backgrounds.
        jitter_std: detector error of each of the 5 alignment points (fraction of the inter-ocular distance).
        **sampling: further keyword arguments of :func:`sample_params` (``pitch_std_deg``, ``id_scale``, ...).
    """

    def __init__(
        self,
        face_model: FaceModel,
        num_samples: int,
        seed: int = 0,
        image_size: int = 224,
        cache_dir: str | Path | None = None,
        renderer_backend: str = "torch",
        max_yaw_deg: float = 60.0,
        extreme_yaw_fraction: float = 0.1,
        extreme_yaw_limit_deg: float = 90.0,
        shard_size: int = 256,
        render_batch: int = 8,
        device: str | torch.device | None = None,
        return_vertices: bool = True,
        progress: bool = True,
        head_context: bool = True,
        effects: tuple[str, ...] | list[str] | None = None,
        jitter_std: float = 0.04,
        **sampling: Any,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if shard_size < 1 or render_batch < 1:
            raise ValueError(f"shard_size and render_batch must be >= 1, got {shard_size}, {render_batch}")
        unknown = set(sampling) - {f.name for f in dataclasses.fields(SamplingSettings)}
        if unknown:
            raise TypeError(f"SyntheticFaceDataset got unknown sampling settings {sorted(unknown)}")
        # A private CPU copy: the caller's model may later move to a GPU (Lightning moves the module's model in
        # place), and DataLoader workers must not touch CUDA tensors.
        self.face_model: FaceModel = copy.deepcopy(face_model).to("cpu").eval()
        self._device_model: FaceModel | None = None
        self._shape_basis: Tensor | None = None
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.renderer_backend = renderer_backend
        self.shard_size = int(shard_size)
        self.render_batch = int(render_batch)
        self.return_vertices = return_vertices
        self.progress = progress
        self.head_context = head_context
        chosen = DOMAIN_EFFECTS if effects is None else tuple(effects)
        unknown_fx = set(chosen) - set(DOMAIN_EFFECTS)
        if unknown_fx:
            raise ValueError(f"unknown synthetic effects {sorted(unknown_fx)}; known: {DOMAIN_EFFECTS}")
        self.effects = tuple(e for e in DOMAIN_EFFECTS if e in chosen)
        if jitter_std < 0:
            raise ValueError(f"jitter_std must be >= 0, got {jitter_std}")
        self.jitter_std = float(jitter_std)
        if "pitch_mean_deg" not in sampling:
            # Centre the pitch on the pose photos show faces in, in this model's frame (ICT: about 12 degrees).
            from msma.face_model.landmark_convention import photo_pitch

            sampling["pitch_mean_deg"] = photo_pitch(
                self.face_model.mean_shape.numpy(), self.face_model.landmark_idx.numpy()
            )[0]
        self.settings = SamplingSettings(
            max_yaw_deg=max_yaw_deg,
            extreme_yaw_fraction=extreme_yaw_fraction,
            extreme_yaw_limit_deg=extreme_yaw_limit_deg,
            **sampling,
        )
        check_expression_settings(self.face_model, self.settings)
        if renderer_backend not in ("torch", "nvdiffrast", "auto"):
            raise ValueError(f"renderer_backend must be 'torch', 'nvdiffrast' or 'auto', got {renderer_backend!r}")
        if device is None:
            # On-the-fly generation runs in DataLoader workers (forked: no CUDA there), so "auto" stays on the CPU.
            wants_gpu = renderer_backend == "nvdiffrast" or (
                renderer_backend == "auto" and cache_dir is not None and torch.cuda.is_available()
            )
            device = "cuda" if wants_gpu else "cpu"
        self.device = torch.device(device)
        # "auto" resolves by device (as MeshRenderer does): the cache key names the backend that renders.
        self.resolved_backend = (
            renderer_backend
            if renderer_backend != "auto"
            else ("nvdiffrast" if self.device.type == "cuda" else "torch")
        )
        self._renderer: MeshRenderer | None = None
        self._shards: dict[int, dict[str, np.ndarray]] = {}
        self._model_id: str | None = None
        self.cache_root = None if cache_dir is None else Path(cache_dir) / self.cache_key()

    # ------------------------------------------------------------------------------------- identity / cache
    def face_model_id(self) -> str:
        """:meth:`FaceModel.fingerprint` (name, layout, coefficient names, buffers), the camera and the context mesh
        (16 hex digits)."""
        if self._model_id is None:
            ctx = self.face_model.context
            ctx_id = "none" if ctx is None else ctx.digest()
            h = hashlib.sha256(f"{self.face_model.fingerprint()}|{self.face_model.camera}|{ctx_id}".encode())
            self._model_id = h.hexdigest()[:16]
        return self._model_id

    def settings_dict(self) -> dict[str, Any]:
        """Every setting the generated content depends on (what the cache key hashes)."""
        return {
            "version": SYNTHETIC_VERSION,
            "face_model": self.face_model.name,
            "face_model_id": self.face_model_id(),
            "seed": self.seed,
            "image_size": self.image_size,
            "shard_size": self.shard_size,
            "renderer_backend": self.resolved_backend,
            "head_context": self.head_context,
            "effects": list(self.effects),
            "jitter_std": self.jitter_std,
            "sampling": _sampling_key(self.settings),
        }

    def cache_key(self) -> str:
        """``<model name>_s<seed>_<size>px_<hash>``: the cache sub-directory of these settings."""
        blob = json.dumps(self.settings_dict(), sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        return f"{self.face_model.name}_s{self.seed}_{self.image_size}px_{digest}"

    @property
    def cache(self) -> ShardCache | None:
        """The shard cache of these settings (None without ``cache_dir``)."""
        if self.cache_root is None:
            return None
        return ShardCache(self.cache_root, self.cache_key(), self.shard_size, self.num_samples)

    @property
    def num_shards(self) -> int:
        return (self.num_samples + self.shard_size - 1) // self.shard_size

    def shard_is_valid(self, shard: int, check_hashes: bool = True) -> bool:
        """Whether shard ``shard`` is complete on disk (``done.json`` present and matching its files)."""
        cache = self.cache
        return cache is not None and cache.is_valid(shard, check_hashes)

    def ensure_generated(self, check_hashes: bool = True, workers: int | None = 1) -> int:
        """Generates every missing or damaged shard (no-op without ``cache_dir``).

        Args:
            check_hashes: verify the SHA-256 of existing shards (else only their sizes and ``done.json``).
            workers: processes to generate in (:func:`msma.data.synthetic.parallel.generate_shards`; None: one
                per usable core); the shards are the same whichever number.

        Returns:
            The number of shards (re)generated.
        """
        return generate_shards([self], workers=workers, check_hashes=check_hashes)

    def _write_shard(self, shard: int, bar: Any = None) -> None:
        cache = self.cache
        assert cache is not None
        start = shard * self.shard_size
        count = cache.count(shard)
        parts: list[RenderedFaces] = []
        for b0 in range(start, start + count, self.render_batch):
            idx = list(range(b0, min(b0 + self.render_batch, start + count)))
            parts.append(self.generate(idx))
            if bar is not None:
                bar.update(len(idx))
        arrays = {
            "images.npy": np.concatenate([p.images for p in parts]),
            "skin.npy": np.concatenate([p.skin for p in parts]),
            "params.npy": np.concatenate([p.params for p in parts]),
            "landmarks.npy": np.concatenate([p.landmarks for p in parts]),
        }
        cache.write(shard, arrays, self.settings_dict())
        self._shards.pop(shard, None)

    # ------------------------------------------------------------------------------------- generation
    def _generation_model(self) -> FaceModel:
        """The face model on the generation device (the CPU copy itself when generating on the CPU)."""
        if self.device.type == "cpu":
            return self.face_model
        if self._device_model is None:
            self._device_model = copy.deepcopy(self.face_model).to(self.device)
        return self._device_model

    def _get_renderer(self) -> MeshRenderer:
        if self._renderer is None:
            self._renderer = MeshRenderer(backend=self.renderer_backend, antialias=True)
        return self._renderer

    @torch.no_grad()
    def generate(self, indices: list[int]) -> RenderedFaces:
        """Generates the samples ``indices`` (rendered together as one batch).

        Per sample, in this order (each from the sample's own generator): coefficients (with population
        albedo), background, alignment jitter, extra light, head/hair/clothing/occluder/camera draws, clutter.
        See docs/synthetic.md for the layers and their order.

        Returns:
            :class:`RenderedFaces` (uint8 images and masks, float32 coefficients and landmarks).
        """
        size = self.image_size
        fx = set(self.effects)
        params_list: list[FaceParams] = []
        draws: list[dict[str, Any]] = []
        for i in indices:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, i))
            p = sample_params_with(self.face_model, 1, gen, self.settings)
            d: dict[str, Any] = {"background": procedural_background(size, gen)}
            d["extras"] = torch.rand(6, generator=gen)  # mouth cavity colour and (legacy) sensor noise
            d["context"] = (torch.rand(12, generator=gen), value_noise(gen, max(16, size // 2), 1, octaves=3))
            jittered = jitter_params(  # always draws its numbers (determinism); "jitter" off: sampled placement
                self.face_model,
                p,
                size,
                gen,
                point_std=self.jitter_std if "jitter" in fx else 0.0,
                align="jitter" in fx,
            )
            params_list.append(jittered)
            d["light"] = sample_extra_light(gen, self.settings.light_strength)
            d["head"] = torch.rand(4, generator=gen)
            d["hair"] = (torch.rand(10, generator=gen), value_noise(gen, max(16, size // 2), 1, octaves=4))
            d["cloth"] = (torch.rand(10, generator=gen), value_noise(gen, max(16, size // 4), 1, octaves=3))
            d["occluders"] = torch.rand(len(OCCLUDER_KINDS), 11, generator=gen)
            d["camera"] = (torch.rand(len(EFFECTS), 4, generator=gen), torch.randn(3, size, size, generator=gen))
            d["clutter_bg"] = clutter(d["background"], gen) if "clutter" in fx else d["background"]
            draws.append(d)
        params = FaceParams.cat(params_list)
        model = self._generation_model()
        face = model(params.to(self.device), size)
        if "head" not in fx or model.context is None:
            model_for_render = model
            saved_context = model.context
            model.context = None
        else:
            model_for_render, saved_context = model, model.context
        try:
            head = render_head(
                model_for_render, params, face, size, self._get_renderer(), torch.stack([d["head"] for d in draws])
            )
        finally:
            model.context = saved_context
        landmarks = face.landmarks_2d.float().cpu()
        sh = params.sh.float().cpu()

        out_images, out_skin = [], []
        for b in range(len(indices)):
            d = draws[b]
            cov = head.coverage[b]
            colour, irradiance = shade(
                creased_albedo(
                    head.albedo[b],
                    head.skin[b],
                    landmarks[b],
                    self.settings.skin_creases,
                    sample_seed(self.seed, indices[b]),
                ),
                head.normals[b],
                head.depth[b],
                cov,
                sh[b],
                d["light"] if "light" in fx else None,
                model.camera,
                head.ambient_occlusion[b],
                head.specular[b],
            )
            render = colour.clamp(0.0, 1.0) * cov  # premultiplied
            skin = head.skin[b].clone()
            bg = d["clutter_bg"]
            if self.head_context and ("head" not in fx or model.context is None):
                face_px = skin[0] > 0.5
                skin_rgb = render[:, face_px].mean(dim=1) if bool(face_px.any()) else torch.tensor([0.5, 0.38, 0.32])
                bg = head_context(bg, landmarks[b], skin_rgb, *d["context"])
            # Behind the head: clothing under the neck is drawn after it (in front of the neck, not the face).
            if "hair" in fx:
                h_rgb, h_alpha, back_rgb, back_alpha = hair_layers(
                    head.hair[b], head.face[b], head.normals[b], irradiance, landmarks[b], *d["hair"]
                )
                bg = bg * (1.0 - back_alpha) + back_rgb * back_alpha
            cavity = mouth_cavity(landmarks[b], size)  # (S, S) in [0, 1]
            e = d["extras"]
            cavity_colour = torch.tensor([0.25, 0.08, 0.08]) * (0.3 + 0.9 * e[:3])
            behind = bg * (1.0 - cavity) + cavity_colour[:, None, None] * cavity
            composite = render + (1.0 - cov) * behind
            if "hair" in fx:
                composite = composite * (1.0 - h_alpha) + h_rgb * h_alpha
                skin = skin * (1.0 - h_alpha)
            if "clothing" in fx:
                c_rgb, c_alpha = clothing_layer(landmarks[b], size, *d["cloth"])
                c_alpha = c_alpha * (1.0 - head.face[b])  # the face stays in front of the collar
                composite = composite * (1.0 - c_alpha) + c_rgb * c_alpha
                skin = skin * (1.0 - c_alpha)
            if "occluders" in fx:
                for _kind, o_rgb, o_alpha in occluder_layers(landmarks[b], size, d["occluders"]):
                    composite = composite * (1.0 - o_alpha) + o_rgb * o_alpha
                    skin = skin * (1.0 - o_alpha)
            if "camera" in fx:
                composite = apply_camera_effects(composite, *d["camera"])
            else:
                noise_sigma = 0.015 * float(e[3]) ** 2
                if noise_sigma > 0:
                    gen = torch.Generator().manual_seed(sample_seed(self.seed, indices[b]) ^ 0x5EED)
                    composite = composite + torch.randn(composite.shape, generator=gen) * noise_sigma
            out_images.append(to_uint8(composite.permute(1, 2, 0)))
            out_skin.append(to_uint8(skin[0]))
        layout = model.layout
        return RenderedFaces(
            images=np.stack(out_images),
            skin=np.stack(out_skin),
            params=layout.join(params).numpy().astype(np.float32),
            landmarks=landmarks.numpy().astype(np.float32),
        )

    # ------------------------------------------------------------------------------------- Dataset API
    def __len__(self) -> int:
        return self.num_samples

    def _load_shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._shards:
            cache = self.cache
            assert cache is not None
            if not cache.is_valid(shard, check_hashes=False):
                self._write_shard(shard)
            self._shards[shard] = cache.load(shard)
        return self._shards[shard]

    def raw(self, index: int) -> RenderedFaces:
        """Sample ``index`` as stored (uint8 image and mask, float32 coefficients and landmarks), batch of 1."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a synthetic dataset of {self.num_samples}")
        if self.cache_root is None:
            return self.generate([index])
        shard, row = divmod(index, self.shard_size)
        data = self._load_shard(shard)
        return RenderedFaces(
            images=np.array(data["images"][row : row + 1]),
            skin=np.array(data["skin"][row : row + 1]),
            params=np.array(data["params"][row : row + 1]),
            landmarks=np.array(data["landmarks"][row : row + 1]),
        )

    def __getitem__(self, index: int) -> FaceSample:
        """Sample ``index`` as a :class:`FaceSample` (image (3, S, S) float in [0, 1], ground truth attached)."""
        index = int(index)
        if index < 0:
            index += self.num_samples
        raw = self.raw(index)
        flat = torch.from_numpy(raw.params[0].copy())
        params = self.face_model.layout.split(flat[None])
        vertices = None
        if self.return_vertices:
            vertices = self._posed_vertices(params)
        return FaceSample(
            image=torch.from_numpy(raw.images[0].copy()).permute(2, 0, 1).float().div_(255.0),
            landmarks=torch.from_numpy(raw.landmarks[0].copy()),
            crop_to_image=torch.eye(3),
            params=flat,
            vertices=vertices,
            yaw=float(torch.rad2deg(params.angles[0, 1])),
            skin_mask=torch.from_numpy(raw.skin[0].copy()).float().div_(255.0)[None],
            source=f"synthetic:{self.seed}:{index}",
        )

    @torch.no_grad()
    def _posed_vertices(self, params: FaceParams) -> Tensor:
        """(N, 3) posed vertices in mm of one sample, ``R (mean + id_basis id + exp_basis exp) + trans``.

        Same as ``face_model.transform(face_model.shape(id, exp), angles, trans)`` but through one matrix-vector
        product with a cached, contiguous ``(3N, n_id + n_exp)`` basis and one (N, 3) x (3, 3) product (the
        einsum path copies the bases on each call, which dominated the loading time of a cached sample).
        """
        model = self.face_model
        if self._shape_basis is None:
            n = model.n_vertices
            self._shape_basis = torch.cat([model.id_basis, model.exp_basis], dim=2).reshape(3 * n, -1).contiguous()
        coeffs = torch.cat([params.id[0], params.exp[0]])
        shape = model.mean_shape + (self._shape_basis @ coeffs).view(-1, 3)
        rot = euler_to_matrix(params.angles)[0]  # (3, 3), v' = R v
        return torch.addmm(params.trans[0][None, :], shape, rot.T).float()

    def __getstate__(self) -> dict[str, Any]:
        """Pickling for DataLoader workers: memory maps and the renderer are reopened in the worker."""
        state = self.__dict__.copy()
        state["_shards"] = {}
        state["_renderer"] = None
        state["_device_model"] = None
        state["_shape_basis"] = None
        return state


#: Sampling settings added after :data:`SYNTHETIC_VERSION` 5, with the value that reproduces the generator as it was:
#: at that value they stay out of the cache key, so caches made before they existed stay valid.
_LATER_SETTINGS: dict[str, Any] = {"expression_prototypes": 0.0, "skin_creases": 0.0}


def _sampling_key(settings: SamplingSettings) -> dict[str, Any]:
    """The sampling settings as the cache key hashes them (later settings only where they change the output)."""
    out = dataclasses.asdict(settings)
    for name, neutral_value in _LATER_SETTINGS.items():
        if out[name] == neutral_value:
            del out[name]
    return out
