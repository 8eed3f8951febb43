"""File hashing and atomic writes (temporary file in the target's folder, fsync, ``os.replace``).

An interrupted writer leaves either the old file or the new one, never a half-written file under the target
name; the temporary file is removed on any error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk_size`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary path next to ``target``, then moves it onto ``target``.

    Args:
        target: the final path (parent folders are created).
        write: writes the complete content to the path it is given (e.g. ``np.savez`` or ``Image.save``).

    Returns:
        ``target`` as a Path.
    """
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return out


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``target`` atomically (see :func:`atomic_write`)."""
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(target, text.encode("utf-8"))
