"""msma.face_model: linear 3D morphable face models (ICT-FaceKit default, BFM09 in Deep3D's format).

Public API: :class:`FaceModel`, :func:`load_face_model`, :class:`FaceParams`, :class:`CoeffLayout`,
:class:`PerspectiveCamera`, :class:`FaceOutput`, :func:`sh_shade`, :func:`euler_to_matrix`.
"""

from msma.face_model.assets import AssetError, load_face_model
from msma.face_model.camera import PerspectiveCamera
from msma.face_model.model import FaceModel, FaceModelArrays
from msma.face_model.output import FaceOutput
from msma.face_model.params import GROUPS, CoeffLayout, FaceParams
from msma.face_model.rotation import euler_to_matrix
from msma.face_model.shading import sh_shade

__all__ = [
    "GROUPS",
    "AssetError",
    "CoeffLayout",
    "FaceModel",
    "FaceModelArrays",
    "FaceOutput",
    "FaceParams",
    "PerspectiveCamera",
    "euler_to_matrix",
    "load_face_model",
    "sh_shade",
]
