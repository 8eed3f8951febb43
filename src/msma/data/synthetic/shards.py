"""The on-disk cache of generated synthetic samples: ``<cache_dir>/<key>/shard_<k>/``.

A shard holds ``images.npy`` uint8 (K, S, S, 3), ``skin.npy`` uint8 (K, S, S), ``params.npy`` float32 (K, P),
``landmarks.npy`` float32 (K, 68, 2) and ``done.json`` (count, settings key, each file's size and SHA-256). It is
written into a temporary directory and renamed into place, so a shard directory either is complete or does not
exist; a shard whose ``done.json`` is missing or does not match its files is reported invalid (and regenerated
by the dataset). ``settings.json`` next to the shards records the settings in readable form.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msma.utils.files import atomic_write_text, sha256_file

#: Files of one cache shard.
SHARD_FILES = ("images.npy", "skin.npy", "params.npy", "landmarks.npy")
DONE_FILE = "done.json"
#: Temporary shard directories older than this are leftovers of interrupted writers.
STALE_TMP_SECONDS = 3600


@dataclass(frozen=True)
class ShardCache:
    """Shards of one generation setting.

    Attributes:
        root: ``<cache_dir>/<key>``.
        key: the settings key (recorded in every ``done.json``).
        shard_size: samples per shard.
        num_samples: the dataset length (the last shard may be partial).
    """

    root: Path
    key: str
    shard_size: int
    num_samples: int

    @property
    def num_shards(self) -> int:
        return (self.num_samples + self.shard_size - 1) // self.shard_size

    def count(self, shard: int) -> int:
        """How many samples of ``shard`` the dataset needs."""
        return min(self.shard_size, self.num_samples - shard * self.shard_size)

    def shard_dir(self, shard: int) -> Path:
        return self.root / f"shard_{shard:05d}"

    def is_valid(self, shard: int, check_hashes: bool = True) -> bool:
        """Whether ``shard`` is complete on disk (``done.json`` present and matching its files)."""
        directory = self.shard_dir(shard)
        try:
            done = json.loads((directory / DONE_FILE).read_text())
            if int(done["count"]) < self.count(shard) or done.get("settings_key") != self.key:
                return False
            for name in SHARD_FILES:
                path = directory / name
                info = done["files"][name]
                if path.stat().st_size != int(info["size"]):
                    return False
                if check_hashes and sha256_file(path) != info["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def prepare(self, settings: dict[str, Any]) -> None:
        """Creates the cache directory and its human-readable ``settings.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        settings_file = self.root / "settings.json"
        if not settings_file.exists():
            atomic_write_text(settings_file, json.dumps(settings, indent=2, sort_keys=True))

    def remove_stale_tmp(self) -> None:
        """Deletes leftovers of interrupted writes (temporary shard directories older than an hour)."""
        now = time.time()
        for tmp in self.root.glob(".tmp_shard_*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass

    def write(self, shard: int, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
        """Writes ``arrays`` (one per :data:`SHARD_FILES` name) as shard ``shard``, atomically."""
        final = self.shard_dir(shard)
        self.prepare(settings)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp_shard_{shard:05d}_", dir=self.root))
        try:
            files: dict[str, dict[str, Any]] = {}
            for name in SHARD_FILES:
                path = tmp / name
                with open(path, "wb") as fh:
                    np.save(fh, arrays[name], allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            start = shard * self.shard_size
            done = {"count": self.count(shard), "start": start, "settings_key": self.key, "files": files}
            (tmp / DONE_FILE).write_text(json.dumps(done, indent=1))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must stay readable
            if final.is_dir() and not final.is_symlink():  # damaged or too small: replace it
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():  # a file or link where the shard belongs
                final.unlink()
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.is_valid(shard, check_hashes=False):  # not a concurrent writer's valid shard
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def load(self, shard: int) -> dict[str, np.ndarray]:
        """Shard ``shard``'s arrays as read-only memory maps, keyed ``images``, ``skin``, ``params``, ``landmarks``."""
        directory = self.shard_dir(shard)
        try:
            return {name[:-4]: np.load(directory / name, mmap_mode="r", allow_pickle=False) for name in SHARD_FILES}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{directory}: cannot read synthetic cache shard ({exc}); delete it") from exc
