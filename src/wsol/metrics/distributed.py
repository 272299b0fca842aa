"""Summing accumulators across DDP ranks (every accumulator's ``state_dict()`` is a dict
of tensors whose element-wise sum over disjoint shards is the state of the whole split)."""

from __future__ import annotations

from typing import Protocol, TypeVar

import torch
import torch.distributed as dist


class Summable(Protocol):
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


A = TypeVar("A", bound=Summable)


def all_reduce_accumulator(acc: A, device: torch.device | str | None = None) -> A:
    """In place: replace ``acc``'s state by its sum over all ranks (no-op outside an
    initialised process group). ``device``: where the reduction runs (default: CUDA for the
    NCCL backend, else CPU). Returns ``acc``."""
    if not (dist.is_available() and dist.is_initialized()):
        return acc
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    state = {k: v.to(device) for k, v in acc.state_dict().items()}
    for v in state.values():
        dist.all_reduce(v, op=dist.ReduceOp.SUM)
    acc.load_state_dict({k: v.cpu() for k, v in state.items()})
    return acc
