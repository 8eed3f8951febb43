"""Synthetic training faces rendered from the face model, with exact ground truth.

Modules: ``sampling`` (coefficients, pose, light), ``backgrounds``, ``compositing`` (head context, mouth
cavity), ``shards`` (the on-disk cache), ``dataset`` (:class:`SyntheticFaceDataset`), ``preview`` (grids and
``python -m msma.data.synthetic``).

Each sample is a face drawn from the face model's prior (identity, expression, albedo), posed, lit with random
spherical-harmonics light, rendered with :class:`msma.render.renderer.MeshRenderer` and composited over a random
procedural background. Ground truth: the flat coefficients (``face_model.layout``), the posed vertices (mm), the
projected 68 landmarks (pixels), the rendered skin mask and the yaw. The sampling distributions are documented in
``docs/synthetic.md`` and in :func:`sample_params`.

Determinism: sample ``index`` of a dataset with ``seed`` is generated from its own random generator, seeded from
``(seed, index)`` only, so it does not depend on worker order, batch composition or how many samples the dataset
has. Rendering in batches and rendering alone agree up to float rounding (the stored uint8 image may differ by one
grey level in a few pixels).

Caching: with a ``cache_dir`` the samples are generated once, in batches, into
``cache_dir/<key>/shard_<k>/`` (``images.npy`` uint8 (K, S, S, 3), ``skin.npy`` uint8 (K, S, S),
``params.npy`` float32 (K, P), ``landmarks.npy`` float32 (K, 68, 2) and ``done.json`` with the count and the
files' sizes and SHA-256). A shard is written into a temporary directory and renamed into place, so a shard
directory either is complete or does not exist; a shard whose ``done.json`` is missing or does not match its
files (a copy interrupted, a disk full, a file edited) is detected by :meth:`SyntheticFaceDataset.ensure_generated`
and regenerated. ``<key>`` hashes every setting that changes the pixels or the labels (generator version, face
model content, image size, shard size, renderer backend, sampling settings); ``num_samples`` is not part of it,
so a larger dataset reuses the shards of a smaller one with the same settings.
"""

from msma.data.synthetic.backgrounds import procedural_background
from msma.data.synthetic.compositing import visible_landmarks
from msma.data.synthetic.dataset import RenderedFaces, SyntheticFaceDataset
from msma.data.synthetic.preview import main, sample_grid
from msma.data.synthetic.sampling import (
    SYNTHETIC_VERSION,
    SamplingSettings,
    sample_params,
    sample_params_with,
    sample_pose,
    sample_seed,
    sample_sh,
)

__all__ = [
    "SYNTHETIC_VERSION",
    "RenderedFaces",
    "SamplingSettings",
    "SyntheticFaceDataset",
    "main",
    "procedural_background",
    "sample_grid",
    "sample_params",
    "sample_params_with",
    "sample_pose",
    "sample_seed",
    "sample_sh",
    "visible_landmarks",
]
