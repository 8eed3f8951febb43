"""MediaPipe's face mesh topology facts: the 478 -> 68 index map and the canonical face inside the bundle.

* :data:`MEDIAPIPE_TO_68`: for each iBUG/Multi-PIE 68-point landmark (0-based, iBUG order) the MediaPipe
  face-mesh vertex that marks it. This is the map in common use (e.g. ByteDance's LatentSync 1.5, Apache-2.0,
  ``LM68_FROM_MP478``; also many MediaPipe-to-dlib converters). Its 17 jaw points (162 ... 389) lie on the
  mesh's face oval, i.e. MediaPipe's contour, not on AFLW2000-3D's 3D jaw.
* :func:`read_canonical_mesh`: MediaPipe's canonical face (468 vertices in cm, x to the viewer's right, y up, z
  towards the viewer, plus UVs and 898 triangles) parsed from ``geometry_pipeline_metadata_landmarks.binarypb``
  inside ``face_landmarker.task``. The protobuf is MediaPipe's ``GeometryPipelineMetadata``
  (``mediapipe/tasks/cc/vision/face_geometry/proto/geometry_pipeline_metadata.proto``: field 1 ``canonical_mesh``
  of type ``Mesh3d`` with field 3 ``vertex_buffer`` (repeated float, VERTEX_PT = x, y, z, u, v per vertex) and
  field 4 ``index_buffer`` (repeated uint32, triangles)); read here with a small wire-format reader so no
  generated proto code is needed.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: MediaPipe mesh vertex for each of the 68 iBUG points (see the module docstring for the source).
MEDIAPIPE_TO_68: tuple[int, ...] = (
    # jaw / face oval 0-16
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    # brows 17-21, 22-26
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # eyes 36-41, 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59, inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
#: Number of points MediaPipe's landmarker returns (468 mesh vertices + 10 iris points).
NUM_DENSE = 478
#: Number of vertices of the canonical mesh (the iris points are not part of it).
NUM_MESH = 468
#: MediaPipe's face-oval ring (``FACEMESH_FACE_OVAL``): the mesh boundary, which follows the silhouette.
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
    150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
METADATA_NAME = "geometry_pipeline_metadata_landmarks.binarypb"

#: ``MIRROR_468[i]`` is the mesh vertex that takes the role of vertex ``i`` after a horizontal flip
#: (``flipped = mirror_x(points)[MIRROR_468]``). Derived from the canonical face of ``face_landmarker.task``
#: (:func:`read_canonical_mesh`): the vertex nearest to each vertex's mirror image ``(-x, y, z)``. That mesh is
#: exactly symmetric (every mirror image coincides with a vertex, distance 0), the map is an involution with 28
#: fixed vertices (those on the plane x = 0), maps the 898 triangles onto themselves, the face oval onto itself and
#: agrees with :data:`MEDIAPIPE_TO_68` and the 68-point mirror (``tests/unit/test_mediapipe_asset.py`` re-derives
#: it from the bundle). The 10 iris points (468-477) have no canonical vertex: a flip drops them (NaN).
MIRROR_468: tuple[int, ...] = (
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
    250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269,
    270, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289,
    290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309,
    310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322, 323, 94, 324, 325, 326, 327, 328,
    329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340, 341, 342, 343, 344, 345, 346, 347, 348,
    349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365, 366, 367, 368,
    369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383, 384, 385, 386,
    387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175, 400, 401, 402, 403,
    404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 195, 419, 197, 420, 199,
    200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435, 436, 437, 438, 439,
    440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457, 458, 459,
    460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49,
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69,
    70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89,
    90, 91, 92, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110,
    111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130,
    131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150,
    153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172, 173, 174,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 196,
    198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219,
    220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247,
)  # fmt: skip


def mirror_dense(points: np.ndarray, width: float) -> np.ndarray:
    """Dense MediaPipe points of an image mirrored horizontally: ``x -> width - 1 - x``, re-indexed with
    :data:`MIRROR_468`; the iris points (468 onwards) become NaN (no verified mirror order).

    Args:
        points: (K, D) with K = 468 or 478, D >= 2 (x, y[, z]) pixel-index coordinates; other columns kept.
        width: image width in pixels.

    Returns:
        (K, D) float array.
    """
    out: np.ndarray = np.array(points, dtype=np.float64 if points.dtype == np.float64 else np.float32, copy=True)
    if out.ndim == 2 and out.shape[1] >= 1:
        out[:, 0] = float(width - 1) - np.asarray(out[:, 0], dtype=np.float64)
    return mirror_dense_order(out)


def mirror_dense_order(points: np.ndarray) -> np.ndarray:
    """Re-indexes dense points whose image was mirrored (coordinates already mirrored): rows permuted with
    :data:`MIRROR_468`, the iris rows (468 onwards) set to NaN. (K, D) -> (K, D), K = 468 or 478, D >= 2."""
    if points.ndim != 2 or points.shape[0] not in (NUM_MESH, NUM_DENSE) or points.shape[1] < 2:
        raise ValueError(f"dense points must be ({NUM_MESH} or {NUM_DENSE}, D>=2), got {points.shape}")
    out = np.array(points, copy=True)
    out[:NUM_MESH] = points[list(MIRROR_468)]
    out[NUM_MESH:] = np.nan
    return out


@dataclass(frozen=True)
class CanonicalMesh:
    """MediaPipe's canonical face.

    Attributes:
        vertices: (468, 3) float64 in cm, x to the viewer's right, y up, z towards the viewer.
        uv: (468, 2) float64 texture coordinates.
        triangles: (898, 3) int64 vertex indices.
    """

    vertices: np.ndarray
    uv: np.ndarray
    triangles: np.ndarray


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        c = buf[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return out, i


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Protobuf wire format -> (field number, wire type, value) in order; varints as int, others as bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf field")
        out.append((field, wire, value))
    return out


def _packed_or_single(values: list[tuple[int, int | bytes]], kind: str) -> list[float] | list[int]:
    """Repeated scalars, whether written packed (wire 2) or one field per value."""
    if kind == "float":
        floats: list[float] = []
        for wire, v in values:
            assert isinstance(v, bytes)
            floats += list(struct.unpack(f"<{len(v) // 4}f", v)) if wire in (2, 5) else []
        return floats
    ints: list[int] = []
    for wire, v in values:
        if wire == 0:
            assert isinstance(v, int)
            ints.append(v)
        elif wire == 2:
            assert isinstance(v, bytes)
            j = 0
            while j < len(v):
                x, j = _varint(v, j)
                ints.append(x)
    return ints


def parse_canonical_mesh(data: bytes, source: str = METADATA_NAME) -> CanonicalMesh:
    """Parses a serialized ``GeometryPipelineMetadata`` into the canonical mesh.

    Raises:
        ValueError: not the expected message (names ``source``).
    """
    try:
        mesh_fields = [v for f, w, v in _fields(data) if f == 1 and w == 2]
        if len(mesh_fields) != 1:
            raise ValueError(f"{len(mesh_fields)} canonical_mesh fields")
        mesh = mesh_fields[0]
        assert isinstance(mesh, bytes)
        inner = _fields(mesh)
        vb = np.asarray(_packed_or_single([(w, v) for f, w, v in inner if f == 3], "float"), dtype=np.float64)
        ib = np.asarray(_packed_or_single([(w, v) for f, w, v in inner if f == 4], "int"), dtype=np.int64)
    except (ValueError, AssertionError, struct.error) as exc:
        raise ValueError(f"{source}: not a MediaPipe geometry pipeline metadata file ({exc})") from exc
    if vb.size != NUM_MESH * 5 or ib.size % 3 or ib.size == 0 or ib.max() >= NUM_MESH:
        raise ValueError(f"{source}: canonical mesh has {vb.size} vertex floats and {ib.size} indices")
    vb = vb.reshape(NUM_MESH, 5)
    return CanonicalMesh(vertices=vb[:, :3].copy(), uv=vb[:, 3:].copy(), triangles=ib.reshape(-1, 3))


def read_canonical_mesh(task_path: str | os.PathLike[str]) -> CanonicalMesh:
    """The canonical face mesh stored in a ``face_landmarker.task`` bundle.

    Raises:
        ValueError: the file is not a bundle holding the metadata (names the file).
    """
    p = Path(task_path)
    try:
        with zipfile.ZipFile(p) as zf:
            data = zf.read(METADATA_NAME)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ValueError(f"{p}: cannot read {METADATA_NAME} from the bundle ({exc})") from exc
    return parse_canonical_mesh(data, source=f"{p}:{METADATA_NAME}")
