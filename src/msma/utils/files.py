"""File hashing, regular-file checks and atomic writes (temporary file in the target's folder, fsync,
``os.replace``).

An interrupted writer leaves either the old file or the new one, never a half-written file under the target
name; the temporary file is removed on any error. A file found in a user's folder is read only when it is a
regular file: opening a named pipe blocks until something writes to it, and a device such as ``/dev/zero`` never
ends (:func:`require_regular_file`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

NAME_MAX_BYTES = 255
"""The longest file name (one path component) the usual file systems take: 255 bytes on ext4, XFS and btrfs
(``NAME_MAX``), 255 UTF-16 units on APFS and NTFS."""

TEMP_PREFIX_BYTES = 100
"""How much of the target's name an :func:`atomic_write` temporary file repeats (``.<name>.<random>.tmp``)."""


def shorten_name(name: str, max_bytes: int) -> str:
    """``name`` if its UTF-8 encoding fits in ``max_bytes``, else its longest prefix (whole characters) that fits
    with ``~`` and 8 hex digits of the whole name's SHA-256 appended: two long names that share a prefix stay apart,
    and the same name always gives the same short name.

    Args:
        name: a file name or stem (any characters).
        max_bytes: the most UTF-8 bytes of the result (at least 10).

    Raises:
        ValueError: ``max_bytes`` below 10.
    """
    if max_bytes < 10:
        raise ValueError(f"shorten_name: max_bytes must be at least 10, got {max_bytes}")
    encoded = name.encode("utf-8")
    if len(encoded) <= max_bytes:
        return name
    tag = "~" + hashlib.sha256(encoded).hexdigest()[:8]
    head = encoded[: max_bytes - len(tag)].decode("utf-8", errors="ignore")  # drops a cut multi-byte character
    return head + tag


class NotARegularFileError(OSError):
    """The path exists but is not a regular file or a directory: a named pipe, a device or a socket.

    Attributes:
        kind: what it is, in words (``"a named pipe (FIFO)"``, ``"a character device"``, ...).
    """

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{path}: {kind}, not a regular file")
        self.kind = kind


def require_regular_file(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat`` of ``path`` (symbolic links followed) when it is a regular file.

    Raises:
        FileNotFoundError: nothing there (a dangling link included).
        IsADirectoryError: a directory.
        NotARegularFileError: a named pipe, device or socket (reading it could block forever or never end).
        OSError: the path cannot be examined.
    """
    st = os.stat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return st
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a directory, not a file", str(path))
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO)"
    elif stat.S_ISCHR(mode):
        kind = "a character device"
    elif stat.S_ISBLK(mode):
        kind = "a block device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "a special file"
    raise NotARegularFileError(path, kind)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a regular file's bytes, read in ``chunk_size`` blocks.

    Raises:
        OSError: as :func:`require_regular_file` (a named pipe or device is never opened), or a read error.
    """
    require_regular_file(path)
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

    The temporary file's name repeats at most :data:`TEMP_PREFIX_BYTES` of the target's name, so a target whose
    name is near the file system's limit can still be written.
    """
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{shorten_name(out.name, TEMP_PREFIX_BYTES)}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=out.parent)
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
