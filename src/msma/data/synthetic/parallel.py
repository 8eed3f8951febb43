"""Generating the missing shards of one or more synthetic splits, in several processes on the CPU.

A face is rendered from small tensors (64-224 px, one face model), so one process uses a second core poorly: on
a 2-core machine 3,328 faces at 64 px took 102 s with two intra-op threads and 70 s with two processes of one
thread each (docs/synthetic.md). The shards are independent (sample ``i`` depends only on ``(seed, i)`` and the
settings) and each is rendered in the same batches whichever process writes it. Every worker renders with one
intra-op thread, so the cache does not depend on the number of workers or of cores: it is byte-for-byte the one a
single process with one thread writes (tested). A process with several threads can round a few sums differently:
at 64 px the quickstart's 3,328 faces came out identical; one grey level separates about one value in a million at
80 px and seven in a million at 224 px (64 faces compared).

Processes are forked (Linux): each inherits the datasets (face model, settings) without pickling and writes its
shards through :class:`msma.data.synthetic.shards.ShardCache`, which renames a complete shard into place, so an
interrupted or failed generation leaves only complete shards behind and the next call regenerates the rest.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from msma.utils.cores import cpu_count
from msma.utils.progress import progress_bar

if TYPE_CHECKING:
    from msma.data.synthetic.dataset import SyntheticFaceDataset

log = logging.getLogger(__name__)

# (dataset index, shard index, samples in the shard)
_Task = tuple[int, int, int]

# What a forked worker inherits from the parent (set by the pool's initializer).
_WORKER: dict[str, Any] = {}


def can_fork() -> bool:
    """Whether generation may fork worker processes here: Linux (macOS forks unsafely once system frameworks are
    loaded; Windows cannot fork) and not inside a daemonic process (a DataLoader worker cannot have children)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def resolve_workers(workers: int | None, tasks: int, datasets: Sequence[SyntheticFaceDataset]) -> int:
    """Processes to generate ``tasks`` shards with.

    Args:
        workers: the setting (``data.synthetic_workers``): None picks one per usable core; 1 generates in this
            process.
        tasks: shards to generate.
        datasets: their datasets (a dataset that renders on a GPU is generated in this process: CUDA does not
            survive a fork).

    Returns:
        At least 1 and at most ``tasks``.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"data.synthetic_workers must be >= 1 (or null: one per core), got {workers}")
    wanted = cpu_count() if workers is None else workers
    if wanted <= 1 or tasks <= 1:
        return 1
    if any(ds.device.type != "cpu" for ds in datasets) or not can_fork():
        if workers is not None:
            log.warning("synthetic: %d generation workers asked for, generating in this process instead", workers)
        return 1
    return min(wanted, tasks)


def missing_shards(datasets: Sequence[SyntheticFaceDataset], check_hashes: bool = True) -> list[_Task]:
    """Prepares each dataset's cache (settings file, stale temporary folders removed) and lists the shards that are
    missing or damaged, as ``(dataset index, shard index, samples)``; datasets without a cache have none."""
    tasks: list[_Task] = []
    for d, ds in enumerate(datasets):
        cache = ds.cache
        if cache is None:
            continue
        cache.prepare(ds.settings_dict())
        cache.remove_stale_tmp()
        tasks += [
            (d, k, cache.count(k)) for k in range(ds.num_shards) if not cache.is_valid(k, check_hashes=check_hashes)
        ]
    return tasks


def generate_shards(
    datasets: Sequence[SyntheticFaceDataset],
    workers: int | None = 1,
    check_hashes: bool = True,
    progress: bool | None = None,
) -> int:
    """Generates every missing or damaged shard of ``datasets`` (datasets without a cache are skipped).

    Args:
        datasets: the splits to complete (e.g. training, validation and test of one run, generated together so
            that the processes stay busy across splits).
        workers: processes (see :func:`resolve_workers`; None: one per usable core).
        check_hashes: verify the SHA-256 of existing shards (else only their sizes and ``done.json``).
        progress: show a progress bar (None: when any dataset has ``progress`` set).

    Returns:
        The number of shards (re)generated.

    Raises:
        Whatever generating a shard raised, in this process (the shards completed before stay valid).
    """
    tasks = missing_shards(datasets, check_hashes)
    if not tasks:
        return 0
    total = sum(n for _, _, n in tasks)
    n_workers = resolve_workers(workers, len(tasks), datasets)
    names = ", ".join(sorted({str(datasets[d].cache_root) for d, _, _ in tasks}))
    log.info(
        "synthetic: generating %d samples (%d shards, %d process(es)) into %s", total, len(tasks), n_workers, names
    )
    show = any(ds.progress for ds in datasets) if progress is None else progress
    desc = f"synthetic {datasets[tasks[0][0]].cache_key()}" if len({d for d, _, _ in tasks}) == 1 else "synthetic"
    bar = progress_bar(total=total, desc=desc, unit="face", enabled=show)
    t0 = time.perf_counter()
    try:
        if n_workers == 1:
            for d, k, _ in tasks:
                datasets[d]._write_shard(k, bar)
        else:
            _generate_forked(datasets, tasks, n_workers, bar)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    log.info("synthetic: %d samples in %.1f s (%.3f s/sample)", total, dt, dt / total)
    return len(tasks)


class _QueueBar:
    """Stands in for the progress bar in a worker: forwards each update to the parent."""

    def __init__(self, updates: Any) -> None:
        self.updates = updates

    def update(self, n: int) -> None:
        self.updates.put(n)


def _init_worker(datasets: Sequence[SyntheticFaceDataset], updates: Any) -> None:
    torch.set_num_threads(1)  # the output must not depend on the machine (see the module docstring)
    _WORKER.update(datasets=datasets, bar=_QueueBar(updates))


def _write_task(task: _Task) -> int:
    d, k, n = task
    _WORKER["datasets"][d]._write_shard(k, _WORKER["bar"])
    return n


def _generate_forked(datasets: Sequence[SyntheticFaceDataset], tasks: list[_Task], n_workers: int, bar: Any) -> None:
    """Writes ``tasks`` in ``n_workers`` forked one-thread processes (largest shards first), updating ``bar`` as
    faces are rendered; a worker's exception is re-raised here after the pool is torn down."""
    ctx = mp.get_context("fork")
    updates = ctx.Queue()
    ordered = sorted(tasks, key=lambda t: -t[2])
    pool = ctx.Pool(n_workers, initializer=_init_worker, initargs=(datasets, updates))
    try:
        pending = pool.map_async(_write_task, ordered, chunksize=1)
        while not pending.ready():
            try:
                bar.update(updates.get(timeout=0.2))
            except queue.Empty:
                pass
        pending.get()  # re-raises a worker's exception
        pool.close()
        pool.join()  # workers exit normally, flushing their last progress updates
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    while True:
        try:
            bar.update(updates.get(timeout=0.05))
        except queue.Empty:
            break
    for d, k, _ in tasks:  # written by the workers: this process must not keep a stale copy
        datasets[d]._shards.pop(k, None)
