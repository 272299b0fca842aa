"""Distributed data-parallel training: the engine runs unchanged under ``torchrun``.

``torchrun --nproc_per_node N -m wsol train -c run.yaml`` (or several nodes with
``--nnodes``/``--rdzv-endpoint``) starts N copies of the same command; each finds its rank in
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
With ``WORLD_SIZE > 1`` the :class:`~wsol.engine.trainer.Trainer` (:func:`setup`):

- joins the process group (``nccl`` when the run's device is CUDA, one GPU per process,
  ``cuda:LOCAL_RANK``; ``gloo`` on CPU) — or uses the one the caller already initialised —
  and leaves it at the end of ``fit`` when it created it;
- **data**: ``optim.batch_size`` is the *global* batch: each rank loads
  ``batch_size / world_size`` samples per step (a :class:`~wsol.errors.ConfigError` if it does
  not divide). Every rank draws the same global permutation of the epoch
  (:class:`~wsol.engine.loader.EpochSampler`: a function of seed and epoch only) and takes
  positions ``rank::world_size`` of it (:class:`ShardSampler`), padded by wrapping around like
  ``DistributedSampler`` so that every rank runs the same number of steps. Step k's batches
  of all ranks together are step k's batch of a one-process run whenever the global batch
  divides the split (otherwise the last, padded, batch repeats a few samples). Per-sample
  augmentation seeds are unchanged: sample i at epoch e is augmented alike whatever the
  world size. Validation splits are cut into contiguous blocks without padding (no sample
  is scored twice); ``eval.batch_size`` is global too (``ceil(eval.batch_size / world_size)``
  per rank);
- **gradients** are averaged across ranks (:class:`DistributedStep`): the model is wrapped
  in ``DistributedDataParallel`` around the method's whole ``training_step`` (every forward
  of a step runs inside DDP's forward, so multi-pass methods — CutMix, erasing, F-CAM — are
  synchronised by DDP's bucketed all-reduce overlapped with the backward);
  ``find_unused_parameters`` is on, since methods leave parts unused on some steps;
- **metrics**: every rank evaluates its shard; the accumulators of :mod:`wsol.metrics` are
  summed across ranks (pooled histograms and counters add up exactly; per-image region
  sizes are gathered in rank order, which is the split's order) before ``compute``, so all
  ranks hold the same metrics and select the same checkpoints;
- **losses**: the epoch's loss sums are all-reduced: rank 0's ``history.csv`` holds the
  global sample-weighted means (padded duplicates included, as DDP trains on them);
- **files**: rank 0 alone prepares and locks the run folder and writes ``config.yaml``,
  ``run.json``, checkpoints, ``history.csv`` and TensorBoard; other ranks log warnings only
  and have no progress callbacks. Checkpoints hold the bare method's weights (no DDP
  ``module.`` prefix), so they are world-size independent: ``--resume`` works with any
  world size (rank 0 reads ``last.pt`` and broadcasts it: other nodes need no access to the
  run folder). Every rank uses the same seed (same initial weights, same model RNG stream).

Methods whose loss needs batch-global quantities behave per rank under DDP (each rank sees
its ``batch_size / world_size`` samples):

- **BatchNorm** (ResNet, Inception, EfficientNet backbones): batch statistics per rank; the
  running statistics are rank 0's (DDP broadcasts buffers at each forward). ``optim.sync_bn:
  true`` converts BatchNorm to ``torch.nn.SyncBatchNorm`` (CUDA only: torch's SyncBatchNorm
  has no CPU kernel), giving the global batch's statistics. GroupNorm / LayerNorm backbones
  (ViT, ``timm:`` models with gn/ln) are exact.
- **CutMix** mixes images within the rank's batch (the partner of a sample comes from the
  same rank); every rank draws the same box and λ (same RNG stream).
- ``minmax_entropy: normalize: batch`` normalises T over the rank's batch; the default
  ``normalize: image`` is per sample, hence exact.
- **Methods that backpropagate inside ``training_step``** (min-max entropy's recursion, one
  backward per erasing step, a data-dependent number of them per rank): DDP's reducer cannot
  synchronise those (its hooks only run in the backward that follows its forward, and its
  ``find_unused_parameters`` would leave the localizer's gradients unsynchronised). The
  first step of every run is therefore run under ``no_sync`` and its gradients averaged
  explicitly after the backward (one flat all-reduce per dtype); a method seen to
  backpropagate inside that step keeps this mode for the whole run (exact, not overlapped
  with the backward), any other switches to DDP's reducer. A method that starts
  backpropagating inside ``training_step`` later on is refused with a clear error.
- Losses that are means over the batch (cross-entropy, entropy, size terms) give the global
  batch's gradient once averaged over ranks; a loss normalised by a batch-global count
  other than the batch size would differ slightly.

``optim.amp`` (bf16 autocast, fp16 with a GradScaler: scaled gradients are averaged, and all
ranks see the same inf checks), ``optim.channels_last`` and ``optim.compile`` work under DDP.
A rank that fails ends the job through ``torchrun`` (its other workers are stopped).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from wsol.config import RunConfig
from wsol.errors import ConfigError, WSOLError
from wsol.metrics import BoxAccumulator, ClassificationAccumulator, PixelAccumulator, all_reduce_accumulator
from wsol.runs import resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", covariant=True)

__all__ = ["DistContext", "DistributedStep", "ShardSampler", "check_batch_size", "eval_batch_size", "get_rank",
           "get_world_size", "is_main", "reduce_evaluation", "reduce_loss_means", "setup"]


# --- rank helpers ---------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not an integer; "
                          "start distributed runs with torchrun") from None


def active() -> bool:
    """A process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank: the process group's, else ``RANK`` from the environment (so
    that it stays known after the group is left), else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def get_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on rank 0 (and in a one-process run): the process that writes files and prints.
    Code that runs after training (test evaluation, report) checks this."""
    return get_rank() == 0


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- the process group ----------------------------------------------------------------------


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``; ``owns_group``:
    :func:`setup` initialised the process group (and :meth:`close` leaves it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    _log_level: int | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result (or its exception, raised on every rank) broadcast
        to all ranks: e.g. preparing the run folder, reading the checkpoint to resume from."""
        if not self.active:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # re-raised below on every rank, rank 0's own traceback kept
                box[0] = ("error", _portable(e))
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Leave the process group if :func:`setup` joined it (no barrier: after an error on
        one rank the others may not come; the engine calls :meth:`barrier` on success)."""
        if self._log_level is not None:
            logging.getLogger("wsol").setLevel(self._log_level)
            self._log_level = None
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _portable(e: Exception) -> Exception:
    """``e`` if it survives pickling (wsol's errors do), else a WSOLError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return WSOLError(f"rank 0: {type(e).__name__}: {e}")


def setup(device_setting: str) -> DistContext:
    """Join the process group when this process is one of several (``WORLD_SIZE > 1`` in the
    environment, as torchrun sets it) or use the group the caller initialised; pick this
    rank's device (``cuda:LOCAL_RANK`` on CUDA). One process: a context of world size 1 on
    ``resolve_device(device_setting)``."""
    device = resolve_device(device_setting)
    if dist.is_available() and dist.is_initialized():
        owns = False
    elif _env_int("WORLD_SIZE", 1) > 1:
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
        owns = True
    else:
        return DistContext(device=device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if not owns else (_env_int("RANK", 0),
                                                                             _env_int("WORLD_SIZE", 1))
    local_rank = _env_int("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1) if device.type == "cuda" else 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); start at most one "
                "process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"distributed training runs on CUDA (nccl) or CPU (gloo), not {device.type}; "
                          "set device: cuda or cpu")
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
        log.info("joined the %s process group: rank %d of %d on %s", backend, rank, world, device)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)
    if world > 1 and rank != 0:  # one process speaks for the job; the others only warn
        root = logging.getLogger("wsol")
        ctx._log_level = root.level
        root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))
    return ctx


# --- data ----------------------------------------------------------------------------------


def check_batch_size(cfg: RunConfig, world_size: int) -> None:
    """``optim.batch_size`` is the global batch: it must split evenly over the ranks."""
    b = cfg.optim.batch_size
    if world_size > 1 and b % world_size:
        raise ConfigError(
            f"optim.batch_size={b} is the global batch and must be divisible by the number of processes "
            f"({world_size}); set optim.batch_size to a multiple of {world_size} "
            f"(e.g. {max(world_size, b // world_size * world_size)}) or change --nproc_per_node"
        )


def eval_batch_size(batch_size: int, world_size: int) -> int:
    """Per-rank batch of the (global) ``eval.batch_size``."""
    return max(1, -(-batch_size // world_size))


class _SizedSampler(Protocol[K]):
    def __iter__(self) -> Iterator[K]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class ShardSampler(Sampler[T]):
    """This rank's part of a sampler's epoch (the same on every rank: it depends on seed and
    epoch only). ``pad=True`` (training): positions ``rank::world_size`` of the order padded by
    wrapping around to a multiple of ``world_size`` (``DistributedSampler``'s rule: every rank
    has ``ceil(n / world_size)`` items). ``pad=False`` (evaluation): the contiguous block
    ``[rank·n/W, (rank+1)·n/W)``, no sample twice, blocks in rank order = the split's order."""

    def __init__(self, base: _SizedSampler[T], rank: int, world_size: int, pad: bool):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside [0, {world_size}); check RANK / WORLD_SIZE")
        self.base, self.rank, self.world_size, self.pad = base, rank, world_size, pad

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def _bounds(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def __len__(self) -> int:
        n = len(self.base)
        if self.pad:
            return math.ceil(n / self.world_size) if n else 0
        lo, hi = self._bounds(n)
        return hi - lo

    def __iter__(self) -> Iterator[T]:
        items = list(self.base)
        n = len(items)
        if not self.pad:
            lo, hi = self._bounds(n)
            return iter(items[lo:hi])
        if n == 0:
            return iter([])
        total = math.ceil(n / self.world_size) * self.world_size
        padded = items + (items * math.ceil(total / n))[: total - n]
        return iter(padded[self.rank :: self.world_size])


# --- gradients -----------------------------------------------------------------------------


class _StepModule(nn.Module):
    """What DDP wraps: its forward is the method's ``training_step``, so every forward pass
    of a step runs inside DDP's forward (a method calls ``self(...)`` itself)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: Any, state: Any) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch, state)  # type: ignore[operator]


class DistributedStep:
    """A method's training step with gradients averaged across ranks. The engine calls
    ``with ds.step(): terms = ds.training_step(batch, state); <backward>`` then
    :meth:`sync_gradients` before the optimiser step. See the module doc for the two modes
    (DDP's reducer; explicit all-reduce for methods that backpropagate inside
    ``training_step``), chosen at the first step."""

    def __init__(self, method: nn.Module, ctx: DistContext, method_name: str = ""):
        self.method, self.ctx, self.method_name = method, ctx, method_name or type(method).__name__
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(_StepModule(method), device_ids=device_ids,
                                                       find_unused_parameters=True)
        self.params = [p for p in method.parameters() if p.requires_grad]
        #: None until the first step; then True for a method that backpropagates inside training_step
        self.manual: bool | None = None
        self._reducer_step = False
        self.steps = 0

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around a whole step (forward, the method's own backwards, the engine's backward)."""
        self._reducer_step = self.manual is False
        if self._reducer_step:
            yield
        else:
            with self.ddp.no_sync():
                yield

    def training_step(self, batch: Any, state: Any) -> dict[str, torch.Tensor]:
        terms = self.ddp(batch, state)
        inner = any(p.grad is not None for p in self.params)  # after zero_grad: grads from inside the step
        if self.manual is None:
            self.manual = inner
            if inner:
                log.info("%s backpropagates inside training_step: gradients are averaged after each step "
                         "(not overlapped by DDP)", self.method_name)
        elif inner and self._reducer_step:
            raise WSOLError(
                f"method {self.method_name!r} backpropagated inside training_step at step {self.steps + 1} but not "
                "at the first step; under DDP such a method must do so from the first step on (or train it with "
                "one process)"
            )
        self.steps += 1
        return terms

    def sync_gradients(self) -> None:
        """After the backward: average the gradients across ranks unless DDP's reducer did.
        A gradient that no rank has stays ``None`` (the optimiser skips it, as in one process)."""
        if self._reducer_step:
            return
        average_gradients(self.params, self.ctx.world_size)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """In place: every parameter's ``.grad`` becomes its mean over the ranks (a rank without a
    gradient counts as zeros); one flat all-reduce per (device, dtype)."""
    if not params:
        return
    comm = _comm_device()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=comm)
    dist.all_reduce(has)
    anywhere = has.tolist()
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        if anywhere[i]:
            groups.setdefault((p.device, p.dtype), []).append(i)
    for idx in groups.values():
        grads = [params[i].grad if params[i].grad is not None else torch.zeros_like(params[i]) for i in idx]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(comm)  # type: ignore[union-attr]
        flat /= world_size  # divided before the sum, as DDP's reducer does
        dist.all_reduce(flat)
        offset = 0
        for i in idx:
            p = params[i]
            chunk = flat[offset : offset + p.numel()].view(p.shape).to(p.device)
            offset += p.numel()
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)


def convert_sync_bn(method: nn.Module, ctx: DistContext) -> nn.Module:
    """``optim.sync_bn``: BatchNorm layers as ``SyncBatchNorm`` (global batch statistics);
    CUDA only. A no-op in a one-process run."""
    if not ctx.active:
        return method
    if ctx.device.type != "cuda":
        raise ConfigError(
            "optim.sync_bn needs CUDA: torch's SyncBatchNorm has no CPU kernel; under gloo on CPU set "
            "optim.sync_bn=false (BatchNorm then uses each rank's batch statistics)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(method)


# --- reductions ----------------------------------------------------------------------------


def reduce_loss_means(names: list[str], sums: torch.Tensor, n: int) -> dict[str, float]:
    """The epoch means of the loss terms over all ranks' samples: ``Σ_ranks sums / Σ_ranks n``
    (term names aligned across ranks: a method may return other terms on other ranks)."""
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(names))
    union: list[str] = []
    for rank_names in gathered:
        union += [k for k in rank_names or [] if k not in union]
    comm = _comm_device()
    vec = torch.zeros(len(union) + 1, dtype=torch.float64, device=comm)
    if names:
        vec[torch.tensor([union.index(k) for k in names], device=comm)] = sums.detach().to(comm, torch.float64)
    vec[-1] = float(n)
    dist.all_reduce(vec)
    values = vec.tolist()
    total_n = max(values[-1], 1.0)
    return {k: v / total_n for k, v in zip(union, values[:-1])}


def reduce_evaluation(cls_acc: ClassificationAccumulator, pix: PixelAccumulator | None, box: BoxAccumulator | None,
                      s_acc: list[float]) -> PixelAccumulator | None:
    """Sum the accumulators of every rank's shard (in place: ``cls_acc``, ``box``, ``s_acc`` —
    the label-free S's [sum, count]); returns the pixel accumulator of the whole split (the
    ranks' accumulators merged in rank order, so its per-image region sizes keep the split's
    order)."""
    all_reduce_accumulator(cls_acc)
    if box is not None:
        all_reduce_accumulator(box)
    s = torch.tensor(s_acc, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(s)
    s_acc[:] = s.tolist()
    if pix is None:
        return None
    parts: list[PixelAccumulator | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pix)
    merged = PixelAccumulator(pix.ignore_index, pix.region_tau, pix.track_regions, pix.f1_tau,
                              pix.cam_curve_interval, pix.threads)
    for part in parts:
        assert part is not None
        merged.merge(part)
    return merged

