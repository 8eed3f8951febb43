"""3DMM fitting by analysis-by-synthesis to MediaPipe's dense landmarks and the photo.

* :mod:`msma.fitting.correspondence`: MediaPipe mesh -> face-model surface, registered once and cached;
* :mod:`msma.fitting.fitter`: :func:`fit_face_model` (batched, CPU/GPU), :class:`FitConfig`, :class:`FitResult`;
* :mod:`msma.cli.fit`: ``msma fit``.

Used by ``msma reconstruct --fit`` / ``Reconstructor(..., fit=True)``.
"""

from msma.fitting.correspondence import DenseCorrespondence, load_correspondence
from msma.fitting.fitter import FitConfig, FitResult, fit_face_model

__all__ = ["DenseCorrespondence", "FitConfig", "FitResult", "fit_face_model", "load_correspondence"]
