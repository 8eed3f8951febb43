"""Face-model assets: the converted-model cache, the local mirror, the upstream download, ``msma assets``.

Where the ICT model comes from, in order:

1. the cache file ``$MSMA_HOME/ict_<commit8>_v<format>.npz`` (default ``$MSMA_HOME`` = ``~/.cache/msma``),
   accepted only when its sha256 matches the sidecar ``<file>.sha256`` written with it (a half-written or
   corrupted file fails the check and is rebuilt); files are written atomically (temporary file + ``os.replace``);
2. the upstream archive in the local mirror directory ``$MSMA_ASSET_MIRROR`` (CI and offline machines);
3. a previous download in ``$MSMA_HOME/downloads/``, else the upstream download from GitHub (urllib, progress
   bar, short timeout), checksum-verified;
4. otherwise a :class:`AssetError` naming ``MSMA_ASSET_MIRROR`` and the upstream URL.

BFM (licence-restricted, never downloaded): ``load_face_model("bfm", path=...)`` or ``$MSMA_BFM_DIR`` holding
Deep3D's ``BFM_model_front.mat`` (or the files Deep3D converts it from), see :mod:`msma.face_model.bfm`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from msma.face_model.camera import PerspectiveCamera
from msma.face_model.ict import ICT_ARCHIVE_NAME, ICT_ARCHIVE_SHA256, ICT_COMMIT, ICT_URL, convert_ict
from msma.face_model.model import NPZ_FORMAT_VERSION, FaceModel, load_arrays, save_arrays
from msma.utils.files import atomic_write, sha256_file
from msma.utils.home import msma_home

# re-exported: the pinned-file machinery lives in a torch-free module
from msma.utils.pinned import ENV_MIRROR as ENV_MIRROR
from msma.utils.pinned import AssetError as AssetError
from msma.utils.pinned import find_pinned_file as find_pinned_file

ENV_BFM_DIR = "MSMA_BFM_DIR"
#: Version of the ICT conversion recipe; bump when :func:`convert_ict` changes its output.
#: 3: the context mesh (head, ears, neck, teeth, gums, tongue); 4: jaw sides re-selected; 5: brows re-selected.
ICT_RECIPE_VERSION = 5


def ict_cache_path(home: Path | None = None) -> Path:
    """Path of the converted ICT model in the cache."""
    home = msma_home() if home is None else home
    return home / f"ict_{ICT_COMMIT[:8]}_v{NPZ_FORMAT_VERSION}.{ICT_RECIPE_VERSION}.npz"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cache_is_valid(path: Path) -> bool:
    """True when ``path`` exists and its sha256 equals the one recorded in the sidecar file."""
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        return False
    recorded = side.read_text().strip().split()[0] if side.read_text().strip() else ""
    return recorded == sha256_file(path)


def write_cache(model_writer: Callable[[Path], None], path: Path) -> None:
    """Writes a cache file and its checksum sidecar, both atomically (the sidecar last)."""
    atomic_write(path, model_writer)
    digest = sha256_file(path)

    def write_sidecar(tmp: Path) -> None:
        tmp.write_text(f"{digest}  {path.name}\n")

    atomic_write(_sidecar(path), write_sidecar)


def find_ict_archive(allow_download: bool = True) -> Path:
    """Locates (or downloads) the pinned ICT-FaceKit archive and verifies its checksum.

    Raises:
        AssetError: when no verified archive is available, naming ``MSMA_ASSET_MIRROR`` and the upstream URL.
    """
    return find_pinned_file(
        ICT_ARCHIVE_NAME,
        ICT_ARCHIVE_SHA256,
        ICT_URL,
        "ICT-FaceKit archive not available. Put the upstream archive "
        f"{ICT_ARCHIVE_NAME} (sha256 {ICT_ARCHIVE_SHA256}, from {ICT_URL}) into a directory and set "
        f"{ENV_MIRROR} to it, or run `msma assets ict --source <zip or extracted folder>`.",
        allow_download,
    )


def build_ict_cache(
    source: Path | None = None, force: bool = False, progress: Callable[[str], None] | None = None
) -> Path:
    """Ensures a verified converted ICT model exists in the cache and returns its path.

    Args:
        source: the upstream zip or an extracted folder; default: mirror / download (:func:`find_ict_archive`).
        force: rebuild even when a valid cache file exists.
        progress: optional callback for status lines.
    """
    path = ict_cache_path()
    if not force and cache_is_valid(path):
        return path
    with _build_lock(path):
        # Another process may have finished the same conversion while this one waited for the lock.
        if not force and cache_is_valid(path):
            return path
        return _convert_into_cache(path, source, progress)


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``<path>.lock`` so concurrent processes convert once.

    Where ``fcntl`` is unavailable (Windows) the conversion simply runs; the atomic writes keep it safe.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert_into_cache(path: Path, source: Path | None, progress: Callable[[str], None] | None) -> Path:
    src = Path(source) if source is not None else find_ict_archive()
    if source is not None and Path(source).is_file() and sha256_file(Path(source)) != ICT_ARCHIVE_SHA256:
        if progress:
            progress(f"warning: {source} is not the pinned archive (sha256 differs); converting it anyway")
    arrays = convert_ict(src, progress=progress)
    write_cache(lambda tmp: save_arrays(arrays, tmp), path)
    return path


def load_ict(camera: PerspectiveCamera | None = None) -> FaceModel:
    """The ICT-FaceKit model from the cache, converting it first when needed (see the module docstring)."""
    path = build_ict_cache()
    try:
        return FaceModel(load_arrays(path), camera=camera)
    except ValueError:
        # Valid checksum but unreadable (e.g. written by an incompatible version): rebuild once.
        path = build_ict_cache(force=True)
        return FaceModel(load_arrays(path), camera=camera)


def load_face_model(
    name: str = "ict", path: str | os.PathLike[str] | None = None, camera: PerspectiveCamera | None = None
) -> FaceModel:
    """Loads a face model.

    Args:
        name: ``"ict"`` (ICT-FaceKit, the embedded default) or ``"bfm"`` (Deep3D's BFM09 front model).
        path: optional explicit file: a ``.npz`` written by :meth:`FaceModel.save` (any name); for ``"bfm"``
            also Deep3D's ``BFM_model_front.mat`` or a folder holding it / its source files; for ``"ict"``
            also the upstream zip or an extracted folder (converted without touching the cache).
        camera: camera override (default: Deep3D's).

    Returns:
        The :class:`FaceModel` (CPU, float32).

    Raises:
        AssetError / FileNotFoundError / ValueError: with the file and the problem.
    """
    key = name.lower()
    if key not in ("ict", "bfm"):
        raise ValueError(f"unknown face model {name!r}; expected 'ict' or 'bfm'")
    if path is not None and str(path).endswith(".npz"):
        return FaceModel.load(path, camera=camera)
    if key == "ict":
        if path is not None:
            return FaceModel(convert_ict(Path(path)), camera=camera)
        return load_ict(camera=camera)
    from msma.face_model.bfm import load_bfm

    return load_bfm(path, camera=camera)
