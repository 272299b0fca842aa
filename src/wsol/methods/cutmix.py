"""CutMix (Yun et al., ICCV 2019; survey §2.2.1): during training, with probability
``prob``, a random box of another image of the batch is pasted into each image and the
label loss is mixed by area; the network and its CAM are the plain CAM method's (GAP +
linear layer, survey Eqs. 2-3). Evaluation is untouched.

As in wsolevaluation (``wsol/method/cutmix.py``, ``main.py``) and the CutMix code:

- one draw per batch: apply with probability ``prob``; ``λ ~ Beta(α, α)``; one permutation
  ``π`` of the batch; one box for the whole batch, side ``√(1-λ)`` times each image side,
  centre uniform over the image, clipped at the border;
- image ``i`` gets the box's pixels from image ``π(i)``; ``λ`` is re-computed from the box
  actually pasted, ``λ = 1 - box area / (H·W)``;
- loss ``λ·CE(f(x̃), y_i) + (1-λ)·CE(f(x̃), y_π(i))`` (CutMix Eq. 1's mixed label under CE).

Difference from wsolevaluation: its ``rand_bbox`` calls the height ``w`` and the width ``h``
(harmless on square images); here the box side and centre are drawn per axis, so
non-square images are handled. Randomness comes from torch's generator (seeded runs
repeat), not numpy's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from wsol.data.sample import Batch
from wsol.methods.base import MethodParams, TrainState, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import GAPHead


class CutMixParams(MethodParams):
    alpha: float = Field(1.0, gt=0, description="α of the Beta(α, α) law of the kept area λ. Survey Table 7: α = 1.0.")
    prob: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="probability that a training batch is cut-mixed (wsolevaluation's cutmix_prob). "
        "Survey Table 7 grid: λ in {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}.",
    )


def random_box(size: tuple[int, int], lam: float) -> tuple[int, int, int, int]:
    """A box ``(y1, x1, y2, x2)`` (end exclusive) covering about ``1-lam`` of an H×W image:
    sides ``int(H·√(1-lam))``, ``int(W·√(1-lam))``, centre uniform, clipped at the border."""
    h, w = size
    r = (1.0 - lam) ** 0.5
    ch, cw = int(h * r), int(w * r)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    return y1, x1, y2, x2


def cutmix(images: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float, tuple[int, int, int, int]]:
    """CutMix a batch: ``(mixed images, permutation π, λ, box)``. Image ``i`` holds image
    ``π(i)`` inside ``box`` (y1, x1, y2, x2); ``λ`` is the fraction of image ``i`` kept (its
    label weight), ``1-λ`` the pasted fraction (the weight of label ``π(i)``). The input is
    not modified. Draws from torch's global generator (CPU)."""
    b, _, h, w = images.shape
    a = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(b).to(images.device)
    y1, x1, y2, x2 = random_box((h, w), lam)
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)  # the area actually kept
    return mixed, perm, lam, (y1, x1, y2, x2)


@register
class CutMix(PooledMethod):
    """CutMix: CAM trained on batches where a random box of another image is pasted in and the labels are mixed by area."""

    name = "cutmix"
    Params = CutMixParams

    def build_head(self, in_channels: int, num_classes: int) -> GAPHead:
        return GAPHead(in_channels, num_classes)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        images, labels = batch.images, batch.labels
        p = self.params
        if self.training and p.prob > 0 and float(torch.rand(())) < p.prob:
            mixed, perm, lam, _ = cutmix(images, p.alpha)
            logits = self(mixed).logits
            # CutMix Eq. 1 under CE: λ·CE(y_i) + (1-λ)·CE(y_π(i))
            ce = lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, labels[perm])
            pasted = 1.0 - lam
        else:
            ce = F.cross_entropy(self(images).logits, labels)
            pasted = 0.0
        return {"ce": ce, "total": ce, "pasted_frac": torch.tensor(pasted, device=ce.device)}
