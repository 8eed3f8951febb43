"""msma.utils.files: a file found in a folder is read only when it is a regular file (named pipes block on open,
devices never end); hashing a regular file is its SHA-256."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from msma.utils.files import NotARegularFileError, require_regular_file, sha256_file

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


def test_regular_file_passes_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc" * 1000)
    assert require_regular_file(path).st_size == 3000
    assert sha256_file(path, chunk_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    (tmp_path / "link.bin").symlink_to(path)  # links are followed
    assert sha256_file(tmp_path / "link.bin") == sha256_file(path)


def test_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zeros.jpg").symlink_to("/dev/zero")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(NotARegularFileError, match="pipe.jpg: a named pipe") as info:
        require_regular_file(tmp_path / "pipe.jpg")
    assert info.value.kind == "a named pipe (FIFO)" and isinstance(info.value, OSError)
    with pytest.raises(NotARegularFileError, match="a character device"):
        require_regular_file(tmp_path / "zeros.jpg")
    with pytest.raises(FileNotFoundError):
        require_regular_file(tmp_path / "dangling.jpg")
    with pytest.raises(IsADirectoryError):
        require_regular_file(tmp_path / "folder.jpg")


def test_hashing_a_named_pipe_or_device_fails_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zeros.jpg").symlink_to("/dev/zero")
    errors: list[BaseException] = []

    def hash_both() -> None:
        for name in ("pipe.jpg", "zeros.jpg"):
            try:
                sha256_file(tmp_path / name)
            except OSError as exc:
                errors.append(exc)

    worker = threading.Thread(target=hash_both, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "sha256_file blocked on a named pipe or read a device for ever"
    assert [type(e) for e in errors] == [NotARegularFileError, NotARegularFileError]
