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
