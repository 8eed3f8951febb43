"""Checksum-pinned upstream files: the local mirror, a previous download, a verified download.

Torch-free on purpose: :mod:`msma.data.mediapipe_asset` (``msma prepare --landmarks mediapipe``) finds its model
bundle through it without importing the face model (and torch, ~1.3 s of start-up).
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from msma.utils.files import atomic_write, sha256_file
from msma.utils.home import msma_home

#: Folder holding the upstream files on offline machines (CI: ``../shared/assets``).
ENV_MIRROR = "MSMA_ASSET_MIRROR"
DOWNLOAD_TIMEOUT_S = 20.0


class AssetError(RuntimeError):
    """A pinned asset (the ICT archive, the MediaPipe bundle, a converted model) cannot be found, fetched or verified."""


def _download(url: str, target: Path, sha256: str) -> Path:
    """Downloads ``url`` to ``target`` with a progress bar, verifying ``sha256``."""
    from msma.utils.progress import progress_bar

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = progress_bar(total=total, desc=target.name, unit="B", unit_scale=True, enabled=True)
            try:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
            finally:
                bar.close()
        got = sha256_file(tmp)
        if got != sha256:
            raise AssetError(f"download of {url} has sha256 {got}, expected {sha256}")

    atomic_write(target, fetch)
    return target


def find_pinned_file(name: str, sha256: str, url: str, unavailable: str, allow_download: bool = True) -> Path:
    """Locates a checksum-pinned upstream file: ``$MSMA_ASSET_MIRROR/<name>``, then ``$MSMA_HOME/downloads/<name>``,
    then (``allow_download``) a verified download from ``url`` into the latter.

    Args:
        name: the file's name in the mirror and the download folder.
        sha256: its pinned SHA-256.
        url: the upstream address.
        unavailable: the start of the error message (what is missing and how to provide it).
        allow_download: try ``url`` when no verified local copy exists.

    Raises:
        AssetError: no verified copy; the message is ``unavailable`` followed by every place tried and why.
    """
    tried: list[str] = []
    mirror = os.environ.get(ENV_MIRROR)
    candidates = []
    if mirror:
        candidates.append(Path(mirror).expanduser() / name)
    candidates.append(msma_home() / "downloads" / name)
    for cand in candidates:
        if cand.is_file():
            got = sha256_file(cand)
            if got == sha256:
                return cand
            tried.append(f"{cand} (sha256 {got} does not match {sha256})")
        else:
            tried.append(f"{cand} (missing)")
    if allow_download:
        try:
            return _download(url, msma_home() / "downloads" / name, sha256)
        except (OSError, AssetError) as exc:
            tried.append(f"{url} ({exc})")
    raise AssetError(f"{unavailable} Tried: " + "; ".join(tried))
