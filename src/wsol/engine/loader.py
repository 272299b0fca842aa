"""Data loading for the engine: a pipeline that is never the bottleneck and never changes
the numbers.

- **Seeded per sample, not per worker.** The training sampler (:class:`EpochSampler`)
  shuffles with a generator seeded from (seed, epoch) and hands every index out with its
  own seed, derived from (seed, epoch, index); the dataset (:class:`LoaderDataset`) draws
  that sample's augmentation from a generator seeded with it. A run with 0 or N workers, and
  a run resumed at any epoch, therefore sees the same batches; the global RNG (the model's:
  dropout, erasing, CutMix) is never touched by data loading.
- **Single-threaded per-sample work.** Decoding and transforms are many tiny tensor ops,
  which torch's intra-op threads slow down by an order of magnitude; workers run with one
  thread, and the main process (``num_workers: 0``) drops to one thread around them.
- ``data.num_workers: auto`` (default): one worker per available core
  (``os.sched_getaffinity``), at most :data:`AUTO_WORKERS_CAP` and at most one per batch;
  workers persist across epochs; batches are pinned when training on CUDA.
- ``data.cache: true``: every decoded image of the split is kept in memory as uint8
  (decoded once, in parallel), for sets that fit.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import random
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wsol.config import RunConfig
from wsol.data.records import RecordDataset, load_sample
from wsol.data.registry import build_dataset
from wsol.data.sample import Batch, Sample, collate
from wsol.data.transforms import Compose, single_thread
from wsol.engine.distributed import ShardSampler, check_batch_size, eval_batch_size
from wsol.errors import DataError
from wsol.runs import resolve_device

log = logging.getLogger(__name__)

#: ``num_workers: auto`` never starts more workers than this
AUTO_WORKERS_CAP = 8

#: what the sampler yields: a dataset index and the seed of that sample's augmentation
Key = tuple[int, int]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(setting: int | str, n_batches: int | None = None) -> int:
    """``data.num_workers`` as a number: ``auto`` -> one per available core, capped at
    :data:`AUTO_WORKERS_CAP` and at ``n_batches`` (a worker loads whole batches), at least 1."""
    if setting == "auto":
        n = min(available_cores(), AUTO_WORKERS_CAP)
        if n_batches is not None:
            n = min(n, n_batches)
        return max(n, 1)
    return int(setting)


def _seed(seed: int, *key: int) -> int:
    """A 63-bit seed mixing ``seed`` with ``key`` (NumPy's SeedSequence hashing): distinct
    keys give independent streams, whatever process computes them."""
    state = np.random.SeedSequence(seed & (2**64 - 1), spawn_key=key).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch``."""
    return _seed(seed, 1, epoch, index)


class EpochSampler(Sampler[Key]):
    """The indices of an epoch, each with its sample seed: shuffled (training) by a generator
    seeded from (seed, epoch), so the order depends on the epoch only — not on how many
    epochs this process has run (resume) nor on the workers. Call :meth:`set_epoch` before
    iterating."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Key]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed(self.seed, 0, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in order:
            yield i, sample_seed(self.seed, self.epoch, i)


def _to_uint8(sample: Sample) -> Sample:
    """A decoded sample with its image stored as uint8 (exact: ``load_sample`` divides a
    uint8 image by 255 in float32, and ×255 then rounding recovers it)."""
    out = cast(Sample, dict(sample))
    out["image"] = sample["image"].mul(255.0).round_().to(torch.uint8)
    return out


def _from_uint8(sample: Sample) -> Sample:
    out = cast(Sample, dict(sample))
    out["image"] = sample["image"].float().div_(255.0)  # the same op as load_sample: identical values
    return out


class _Decode(Dataset):
    """Decoded, untransformed samples of records (fills the cache, in workers)."""

    def __init__(self, base: RecordDataset):
        self.records = base.records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        with single_thread():
            return _to_uint8(load_sample(self.records[i]))


def _identity(x: Any) -> Any:
    return x


def collate_single_thread(samples: list[Any]) -> Batch:
    """:func:`~wsol.data.sample.collate` on one torch thread (stacking a batch is a handful of
    memory copies; with torch's threads on a busy machine it was 6× slower than the loading)."""
    with single_thread():
        return collate(samples)


def worker_init(worker_id: int) -> None:
    """Workers: one torch thread; NumPy / random seeded from the worker's torch seed (for
    third-party code — wsol's own transforms draw from the per-sample generator)."""
    torch.set_num_threads(1)
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


class LoaderDataset(Dataset):
    """A split's :class:`RecordDataset` as the engine loads it: items are requested as an
    index or as ``(index, sample seed)`` (from :class:`EpochSampler`), the augmentation
    drawn from a generator seeded with the sample seed; per-sample work single-threaded;
    decoded images optionally cached (``cache``)."""

    def __init__(self, base: RecordDataset, cache: bool = False, workers: int = 0):
        self.base = base
        self.cache: list[Sample] | None = None
        if cache:
            self.fill_cache(workers)

    def __len__(self) -> int:
        return len(self.base)

    def fill_cache(self, workers: int = 0) -> None:
        """Decode every record once (``workers`` processes) and keep it as uint8."""
        dec = _Decode(self.base)
        if workers > 0 and len(dec) > 1:
            loader = DataLoader(dec, batch_size=None, num_workers=min(workers, len(dec)), collate_fn=_identity,
                                worker_init_fn=worker_init)
            # tensors from workers arrive in shared memory: private copies, so that a large
            # cache holds no shared-memory segment (nor file descriptor) per image
            items = [cast(Sample, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()})
                     for s in loader]
        else:
            items = [dec[i] for i in range(len(dec))]
        self.cache = items
        mb = sum(int(s["image"].numel()) + (int(s["mask"].numel()) if s.get("mask") is not None else 0)
                 for s in items) / 2**20
        log.info("data.cache: %d decoded images in memory (%.1f MiB)", len(items), mb)

    def _decoded(self, i: int) -> Sample:
        if self.cache is not None:
            return _from_uint8(self.cache[i])
        return load_sample(self.base.records[i])

    def _item(self, key: int | Key) -> Sample:
        i, seed = (key, None) if isinstance(key, int) else key
        g = None
        if seed is not None and isinstance(self.base.transform, Compose):
            g = torch.Generator().manual_seed(seed)
        return self.base.apply(self._decoded(i), g)

    def __getitem__(self, key: int | Key) -> Sample:
        with single_thread():
            return self._item(key)

    def __getitems__(self, keys: list[int | Key]) -> list[Sample]:
        """A whole batch under one thread switch (DataLoader calls this when it exists)."""
        with single_thread():
            return [self._item(k) for k in keys]


def _can_start_workers(base: RecordDataset) -> bool:
    """Workers started by ``spawn`` / ``forkserver`` (macOS, Windows, Python ≥ 3.14) receive
    the dataset pickled; a reader whose records hold closures cannot be. ``auto`` then loads
    in the main process, with a warning, instead of failing."""
    method = mp.get_start_method()
    if method == "fork":
        return True
    try:
        pickle.dumps(base)
    except Exception as e:  # what cannot be pickled varies: closures, locks, open files
        log.warning("data.num_workers auto: the dataset cannot be sent to %s workers (%s); loading in the main "
                    "process", method, e)
        return False
    return True


def split_size(cfg: RunConfig, split: str) -> int:
    """How many images ``split`` holds (lists the records; decodes nothing)."""
    from wsol.data.registry import get_dataset

    return len(get_dataset(cfg.data.name).list_records(cfg.data.root, split, cfg.data.options))


def make_loader(cfg: RunConfig, split: str, train: bool, seed: int = 0, keep_original: bool = False,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """The split's DataLoader of :class:`~wsol.data.sample.Batch` es: shuffled and augmented
    when ``train`` (call ``loader.sampler.set_epoch(epoch)`` each epoch), in order otherwise;
    ``data.num_workers`` persistent workers (``auto``: see :func:`resolve_workers`), pinned
    memory when the run's device is CUDA, ``data.cache``. ``world_size > 1`` (DDP): this
    ``rank``'s shard, with the global batch sizes split over the ranks
    (:mod:`wsol.engine.distributed`)."""
    base = build_dataset(cfg.data, split, train=train, keep_original=keep_original)
    if len(base) == 0:
        raise DataError(
            f"split {split!r} of {cfg.data.name} at {cfg.data.root} is empty; "
            f"check the dataset's split files ('wsol data verify {cfg.data.name} {cfg.data.root}')"
        )
    batch_size = cfg.optim.batch_size if train else cfg.eval.batch_size
    n_items = len(base)
    if world_size > 1:  # DDP (wsol.engine.distributed): global batch sizes, this rank's shard
        check_batch_size(cfg, world_size)
        batch_size = batch_size // world_size if train else eval_batch_size(batch_size, world_size)
        n_items = len(ShardSampler(EpochSampler(len(base), seed, shuffle=train), rank, world_size, pad=train))
    drop_last = train and n_items > batch_size
    n_batches = n_items // batch_size if drop_last else -(-n_items // batch_size)
    workers = resolve_workers(cfg.data.num_workers, n_batches)
    if cfg.data.num_workers == "auto" and workers > 0 and not _can_start_workers(base):
        workers = 0
    ds = LoaderDataset(base, cache=cfg.data.cache, workers=workers)
    sampler: EpochSampler | ShardSampler[Key] = EpochSampler(len(ds), seed, shuffle=train)
    if world_size > 1:  # DDP: padded strided shard for training, unpadded block for evaluation
        sampler = ShardSampler(sampler, rank, world_size, pad=train)
    g = torch.Generator()  # the loader's own (worker base seeds): never the global RNG
    g.manual_seed(seed)
    pin = resolve_device(cfg.device).type == "cuda"
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_single_thread,
        generator=g,
        worker_init_fn=worker_init,
        persistent_workers=workers > 0,
        pin_memory=pin,
        prefetch_factor=2 if workers > 0 else None,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a loader made by :func:`make_loader` which epoch it serves (its shuffle and
    sample seeds); other loaders are left alone."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, (EpochSampler, ShardSampler)):  # ShardSampler: DDP
        sampler.set_epoch(epoch)
