"""Pseudo-labelling a folder of photos into its label cache (the library behind ``msma prepare``,
:mod:`msma.cli.prepare`).

:func:`prepare_folder` detects faces and 68 landmarks in every photo under a folder (recursive), stores them in
the label cache (:mod:`msma.data.cache`) with a progress bar, and returns a :class:`LabelRun` whose summary counts
the images found, labelled now and read from the cache, the usable images and faces, and the skipped images by
reason. Rerunning skips finished images; an
interrupted run loses nothing already written.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msma.data.cache import ImageLabels, LabelCache, PathIndex, cached_labels, label_image, labeller_key
from msma.data.detect import FaceDetector, FaceSelection, make_detector
from msma.data.io import IMAGE_EXTENSIONS, REASON_MISSING, REASON_UNREADABLE, list_images
from msma.data.landmarks import LandmarkBackend, make_landmark_backend
from msma.utils.cores import cpu_count
from msma.utils.files import sha256_file
from msma.utils.home import msma_home
from msma.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: Most labelling threads chosen automatically (``workers=None``); more rarely pays off against the disk.
MAX_AUTO_THREADS = 4


def default_cache_dir(root: str | os.PathLike[str]) -> Path:
    """``$MSMA_HOME/labels/<folder name>-<hash of its absolute path>`` (MSMA_HOME defaults to ~/.cache/msma)."""
    base = Path(root).resolve()
    home = msma_home()
    tag = hashlib.sha1(str(base).encode()).hexdigest()[:10]
    return home / "labels" / f"{base.name or 'root'}-{tag}"


@dataclass
class LabelRun:
    """What one labelling pass found.

    Attributes:
        images: photos found.
        computed: entries computed in this run.
        cached: entries read from the cache.
        usable: images with at least one usable face.
        faces: usable faces in all images.
        skipped: images without a usable face, by reason code.
        invalid_entries: cache entries found corrupt or stale (and recomputed).
        labels: ``(path, labels)`` per photo in file order; labels is None when the file could not be read.
        seconds: wall time of the labelling pass in seconds (hashing, detection, landmarks, cache reads and
            writes, worker start-up; the models' loading in this process and the interpreter's start excluded);
            0 where not measured.
    """

    images: int = 0
    computed: int = 0
    cached: int = 0
    usable: int = 0
    faces: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)
    invalid_entries: int = 0
    labels: list[tuple[Path, ImageLabels | None]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float | None:
        """Photos per second of the labelling pass (None when not measured)."""
        return self.images / self.seconds if self.seconds > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "computed": self.computed,
            "cached": self.cached,
            "usable": self.usable,
            "faces": self.faces,
            "skipped": dict(sorted(self.skipped.items())),
            "invalid_entries": self.invalid_entries,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
        }

    def summary(self) -> str:
        lines = [
            f"images: {self.images}  labelled now: {self.computed}  from cache: {self.cached}",
            f"usable images: {self.usable}  faces: {self.faces}  skipped: {sum(self.skipped.values())}",
        ]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason}: {n}  (e.g. {self.skip_examples.get(reason, '')})")
        if self.invalid_entries:
            lines.append(f"corrupt or stale cache entries recomputed: {self.invalid_entries}")
        if self.images_per_s is not None:
            lines.append(f"labelling pass: {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)")
        return "\n".join(lines)


def label_files(
    files: Sequence[Path],
    backend: LandmarkBackend,
    detector: FaceDetector | None,
    cache_dir: str | os.PathLike[str] | None,
    faces: FaceSelection = "largest",
    progress: bool = False,
) -> LabelRun:
    """Labels photos through the cache (or in memory when ``cache_dir`` is None, e.g. for ``gt``).

    Args:
        files: photos.
        backend: landmark backend.
        detector: face detector (None for backends that supply faces).
        cache_dir: the dataset's cache directory, or None for no caching.
        faces: which faces count as samples (``"largest"`` per image or ``"all"``); the cache stores all.
        progress: show a tqdm progress bar on stderr.

    Returns:
        Counts and per-file labels.
    """
    key = labeller_key(backend, detector)
    cache = LabelCache(cache_dir, key) if cache_dir is not None else None
    index = PathIndex(Path(cache_dir) / "paths.json") if cache_dir is not None else None
    if cache is not None:
        cache.clean_temporaries()
    run = LabelRun(images=len(files))
    iterator: Sequence[Path] = files
    bar = None
    if progress:
        bar = progress_bar(files, desc=f"labelling ({backend.name})", unit="img", enabled=True)
        iterator = bar
    try:
        for n, path in enumerate(iterator):
            try:
                sha = index.sha256(path) if index is not None else sha256_file(path)
            except FileNotFoundError:
                _skip(run, path, REASON_MISSING, "the file disappeared")
                continue
            except OSError as exc:
                _skip(run, path, REASON_UNREADABLE, str(exc))
                continue
            if cache is not None:
                labels, status = cached_labels(path, sha, cache, backend, detector)
            else:
                labels, status = label_image(path, sha, backend, detector, key), "computed"
            if status == "cached":
                run.cached += 1
            else:
                run.computed += 1
            run.labels.append((path, labels))
            if labels.ok:
                run.usable += 1
                run.faces += len(labels.select(faces))
            else:
                _count_skip(run, path, labels.skip_reason or "unknown")
            if index is not None and n % 200 == 199:
                index.save()
    finally:
        if index is not None:
            index.save()
        if bar is not None:
            bar.close()
    if cache is not None:
        run.invalid_entries = cache.invalid
    return run


def _count_skip(run: LabelRun, path: Path, reason: str) -> None:
    run.skipped[reason] += 1
    run.skip_examples.setdefault(reason, str(path))


def _skip(run: LabelRun, path: Path, reason: str, detail: str) -> None:
    log.info("skip %s: %s (%s)", path, reason, detail)
    run.labels.append((path, None))
    _count_skip(run, path, reason)


_WORKER: dict[str, Any] = {}


def _init_worker(landmarks: str, weights: str | None, device: str, detector: str, cache_dir: str, key: str) -> None:
    """Process-pool initializer: each worker builds its own backend and detector (not picklable)."""
    backend = make_landmark_backend(landmarks, weights, device=device)
    _WORKER["backend"] = backend
    _WORKER["detector"] = make_detector(detector) if backend.needs_detector else None
    _WORKER["cache"] = LabelCache(cache_dir, key)


def _label_one(item: tuple[str, str]) -> str:
    path, sha = item
    _, status = cached_labels(Path(path), sha, _WORKER["cache"], _WORKER["backend"], _WORKER["detector"])
    return status


def _cache_misses(files: Sequence[Path], cache: LabelCache, index: PathIndex) -> dict[str, str]:
    """``{sha256: path}`` of the files whose entry is missing or invalid (identical files once; unreadable files
    are left to the sequential pass, which counts them)."""
    todo: dict[str, str] = {}
    for path in files:
        try:
            sha = index.sha256(path)
        except OSError:
            continue
        if sha not in todo and cache.get(sha) is None:
            todo[sha] = str(path)
    index.save()
    return todo


def _fill_threaded(
    todo: dict[str, str],
    cache: LabelCache,
    pairs: list[tuple[LandmarkBackend, FaceDetector | None]],
    progress: bool,
) -> int:
    """Labels ``todo`` with one thread per (backend, detector) pair (each pair used by one thread only); returns
    the entries computed. For backends whose model releases the GIL (MediaPipe): no process start-up, no second
    interpreter, the decoding of the next photo overlaps the landmarker."""
    free = list(pairs)
    lock = threading.Lock()
    local = threading.local()

    def label(item: tuple[str, str]) -> str:
        pair = getattr(local, "pair", None)
        if pair is None:
            with lock:
                pair = local.pair = free.pop()
        _, status = cached_labels(Path(item[1]), item[0], cache, pair[0], pair[1])
        return status

    desc = f"labelling ({pairs[0][0].name}, {len(pairs)} threads)"
    with ThreadPoolExecutor(len(pairs)) as pool:
        return _count(pool.map(label, list(todo.items())), len(todo), desc, progress)


def _count(results: Iterator[str], total: int, desc: str, progress: bool) -> int:
    """Consumes a pool's results (one per labelled photo) with an optional progress bar; returns how many."""
    bar = progress_bar(total=total, desc=desc, unit="img", enabled=True) if progress else None
    done = 0
    try:
        for _ in results:
            done += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done


def _fill_parallel(
    files: Sequence[Path],
    cache: LabelCache,
    index: PathIndex,
    workers: int,
    init_args: tuple[str, str | None, str, str, str, str],
    progress: bool,
) -> tuple[int, int]:
    """Labels the cache misses of ``files`` with a process pool; returns (entries computed, invalid entries).

    Entries are written by the workers with the same atomic writes, so this is as safe to interrupt as the
    sequential pass; identical files (same hash) are labelled once.
    """
    todo = _cache_misses(files, cache, index)
    if not todo:
        return 0, cache.invalid
    device = init_args[2]
    # CUDA and MediaPipe need fresh processes: a MediaPipe graph anywhere in this process runs threads whose locks a
    # forked child inherits held (it then hangs, whatever backend it runs).
    fresh = device.startswith("cuda") or init_args[0].startswith("mediapipe") or "mediapipe" in sys.modules
    ctx = multiprocessing.get_context("spawn" if fresh else None)
    desc = f"labelling ({init_args[0]}, {workers} workers)"
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init_args) as pool:
        items = [(p, sha) for sha, p in todo.items()]
        done = _count(pool.map(_label_one, items, chunksize=4), len(todo), desc, progress)
    return done, cache.invalid


def prepare_folder(
    root: str | os.PathLike[str],
    landmarks: str = "dlib",
    detector: str | None = "dlib",
    cache_dir: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    faces: FaceSelection = "largest",
    progress: bool = False,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    workers: int | None = None,
) -> LabelRun:
    """Fills the label cache of a folder of photos (what ``msma prepare`` and ``FaceDataModule.prepare_data`` run).

    Args:
        root: folder of photos (searched recursively).
        landmarks: backend name (``"dlib"``, ``"fan"``, ``"mediapipe"``, ``"mediapipe+fit"``, ``"gt"``).
        detector: face detector name (``"dlib"``, ``"opencv"``, ``"dlib+opencv"``, ``"mediapipe"``; None: the
            MediaPipe chain for the mediapipe backends, else dlib).
        cache_dir: cache directory (default :func:`default_cache_dir`); unused for ``gt``.
        weights: model file of the backend (dlib predictor / FAN weights).
        device: torch device of the FAN backend.
        faces: ``"largest"`` or ``"all"`` (only changes the face count; the cache stores every face).
        progress: show a progress bar.
        extensions: photo suffixes.
        workers: labelling workers (each loads its own model): threads in this process for backends that offer
            :meth:`~msma.data.landmarks.LandmarkBackend.thread_copy` (``mediapipe``), else processes; 1 labels in
            this process; None: threads on the usable CPUs (at most :data:`MAX_AUTO_THREADS`) where the backend
            offers them, else 1.
    """
    files = list_images(root, extensions, unsupported=True)  # unreadable formats are skipped as "unsupported"
    if detector is None:
        detector = "mediapipe" if landmarks.startswith("mediapipe") else "dlib"
    backend = make_landmark_backend(landmarks, weights, device=device)
    det = make_detector(detector) if backend.needs_detector else None
    cache = None if not backend.needs_detector else Path(cache_dir) if cache_dir else default_cache_dir(root)
    extra: list[tuple[LandmarkBackend, FaceDetector | None]] = []
    if workers is None:  # threads on the usable cores where the backend can be copied into threads, else 1
        first = backend.thread_copy(det) if cache is not None else None
        workers = 1 if first is None else min(MAX_AUTO_THREADS, cpu_count())
        if first is not None and workers > 1:
            extra.append(first)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    if workers == 1 or cache is None:
        run = label_files(files, backend, det, cache, faces=faces, progress=progress)
    else:
        key = labeller_key(backend, det)
        label_cache = LabelCache(cache, key)
        label_cache.clean_temporaries()
        init_args = (landmarks, None if weights is None else str(weights), device, detector, str(cache), key)
        index = PathIndex(cache / "paths.json")
        pairs: list[tuple[LandmarkBackend, FaceDetector | None]] = [(backend, det), *extra]
        while len(pairs) < workers and (copy := backend.thread_copy(det)) is not None:
            pairs.append(copy)
        if len(pairs) == workers:  # threads: the backend runs outside the GIL
            filled = _fill_threaded(_cache_misses(files, label_cache, index), label_cache, pairs, progress)
            invalid = label_cache.invalid
        else:
            filled, invalid = _fill_parallel(files, label_cache, index, workers, init_args, progress)
        run = label_files(files, backend, det, cache, faces=faces, progress=False)
        run.computed += filled
        run.cached -= filled
        run.invalid_entries += invalid
    run.seconds = time.perf_counter() - start
    return run


@dataclass
class SourceReport:
    """What :func:`prepare_sources` found in one configured source.

    Attributes:
        name: the source's name.
        kind: its kind.
        root: its folder (None for synthetic).
        samples: usable samples (faces of photo folders, annotated images of 300W-LP / AFLW2000-3D, synthetic
            faces to generate).
        skipped: files left out, by reason.
        detail: the labelling summary of a photo folder, or a note.
    """

    name: str
    kind: str
    root: str | None
    samples: int
    skipped: dict[str, int]
    detail: str = ""

    def summary(self) -> str:
        where = f" ({self.root})" if self.root else ""
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        lines = [f"[{self.name}] {self.kind}{where}: {self.samples} samples, skipped: {skipped}"]
        if self.detail:
            lines += ["  " + line for line in self.detail.splitlines()]
        return "\n".join(lines)


def prepare_sources(
    sources: Sequence[Any],
    names: Sequence[str],
    default_landmarks: str = "dlib",
    detector: str | None = "dlib",
    cache_dir: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    faces: FaceSelection = "largest",
    num_samples: int = 0,
    progress: bool = False,
    workers: int | None = None,
    w300lp_landmarks: str | None = "landmarks",
) -> list[SourceReport]:
    """Labels every photo-folder source once (one pass per folder and backend) and counts every source.

    Args:
        sources: :class:`~msma.data.config.SourceConfig` entries (``data.sources``).
        names: their names (:meth:`~msma.data.config.DataConfig.source_names`).
        default_landmarks: backend of folder sources without their own ``landmarks``.
        detector: face detector (see :func:`prepare_folder`).
        cache_dir: label cache directory (None: one per folder under ``$MSMA_HOME/labels``).
        weights: model file of the landmark backend.
        faces: ``"largest"`` or ``"all"``.
        num_samples: synthetic samples of sources without their own ``num_samples``.
        progress: progress bars.
        workers: labelling workers (see :func:`prepare_folder`; None: automatic).
        w300lp_landmarks: 300W-LP's 3D-convention landmarks folder (``data.w300lp_landmarks``).

    Returns:
        One :class:`SourceReport` per source, in order.
    """
    from msma.data.datasets import AFLW2000Dataset, FolderDataset, W300LPDataset

    reports: list[SourceReport] = []
    done: dict[tuple[str, str], LabelRun] = {}
    for src, name in zip(sources, names):
        kind, root = str(src.kind), None if src.root is None else str(src.root)
        if kind == "synthetic":
            n = int(src.num_samples or num_samples)
            reports.append(SourceReport(name, kind, None, n, {}, "rendered and cached when training starts"))
            continue
        if root is None:
            raise ValueError(f"source {name!r} ({kind}) has no root folder")
        if kind == "folder":
            backend = str(src.landmarks or default_landmarks)
            if backend == "gt":
                ds = FolderDataset(root, landmarks="gt", faces=faces)
                reports.append(SourceReport(name, kind, root, len(ds), dict(ds.skip_counts), "ground-truth landmarks"))
                continue
            key = (root, backend)
            first = key not in done
            if first:
                done[key] = prepare_folder(
                    root,
                    landmarks=backend,
                    detector=detector,
                    cache_dir=cache_dir,
                    weights=weights,
                    faces=faces,
                    progress=progress,
                    workers=workers,
                )
            run = done[key]
            detail = run.summary() if first else "same folder and backend as an earlier source: labelled once"
            reports.append(SourceReport(name, kind, root, run.faces, dict(run.skipped), detail))
        elif kind in ("300w_lp", "aflw2000_3d"):
            if kind == "300w_lp":
                lp = W300LPDataset(root, landmarks_dir=w300lp_landmarks)
                counts = lp.landmark_counts
                detail = f"landmarks: pts_3d (3D convention) {counts['pts_3d']}, pt2d (2D contour) {counts['pt2d']}"
                reports.append(SourceReport(name, kind, root, len(lp), dict(lp.skip_counts), detail))
            else:
                mat = AFLW2000Dataset(root)
                reports.append(SourceReport(name, kind, root, len(mat), dict(mat.skip_counts)))
        else:
            raise ValueError(f"source {name!r}: unknown kind {kind!r}")
    return reports
