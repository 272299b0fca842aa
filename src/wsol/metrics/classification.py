"""Classification accuracy and error, top-1 and top-5 (Eq. 13, survey; Eq. 13,
max-min-uncertainty), streaming and summable."""

from __future__ import annotations

from typing import Any

import torch

from wsol.errors import MetricError


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample bool: the label is among the ``k`` highest logits (k capped at #classes;
    ties broken by ``torch.topk``)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.view(-1, 1).to(top.device)).any(dim=1)


class ClassificationAccumulator:
    """``update(logits, labels)`` per batch, ``compute()`` → ``top1_acc``, ``top5_acc``,
    ``top1_err``, ``top5_err`` (all %), ``n_images``. State: three integers."""

    def __init__(self) -> None:
        self.counts = torch.zeros(3, dtype=torch.int64)  # n, top-1 correct, top-5 correct

    def update(self, logits: Any, labels: Any) -> None:
        logits = torch.as_tensor(logits)
        labels = torch.as_tensor(labels).long()
        if logits.dim() != 2 or labels.shape != (logits.shape[0],):
            raise MetricError(
                f"classification: expected logits B×C and labels B, got {tuple(logits.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise MetricError(
                f"classification: labels must lie in [0, {logits.shape[1] - 1}] (C = {logits.shape[1]} logits), "
                f"got [{int(labels.min())}, {int(labels.max())}]"
            )
        c1 = topk_correct(logits, labels, 1).sum()
        c5 = topk_correct(logits, labels, 5).sum()
        self.counts += torch.stack([torch.tensor(labels.numel()), c1.cpu(), c5.cpu()])

    def merge(self, other: ClassificationAccumulator) -> ClassificationAccumulator:
        self.counts += other.counts
        return self

    def __add__(self, other: ClassificationAccumulator) -> ClassificationAccumulator:
        return ClassificationAccumulator().merge(self).merge(other)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = state["counts"].detach().to("cpu", torch.int64).clone()

    def compute(self) -> dict[str, float]:
        n, c1, c5 = (int(v) for v in self.counts)
        if n == 0:
            raise MetricError("classification: no image was given; nothing to evaluate")
        top1, top5 = 100.0 * c1 / n, 100.0 * c5 / n
        return {"top1_acc": top1, "top5_acc": top5, "top1_err": 100.0 - top1, "top5_err": 100.0 - top5, "n_images": n}
