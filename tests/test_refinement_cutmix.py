"""CutMix: the pasted box comes from the permuted image, the label weights are the kept and
pasted area fractions, the loss mixes the two cross-entropies by them; training only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.methods import TrainState, build_method
from wsol.methods.cutmix import cutmix, random_box


def constant_images(n: int, h: int, w: int) -> torch.Tensor:
    return (torch.arange(1.0, n + 1) / 10).view(n, 1, 1, 1).expand(n, 3, h, w).clone()


@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_label_weights_are_the_area_fractions(size):
    h, w = size
    images = constant_images(4, h, w)
    seen_partial = False
    for seed in range(30):
        torch.manual_seed(seed)
        mixed, perm, lam, (y1, x1, y2, x2) = cutmix(images, alpha=1.0)
        box = torch.zeros(h, w, dtype=torch.bool)
        box[y1:y2, x1:x2] = True
        assert lam == pytest.approx(1.0 - box.float().mean().item())
        assert torch.equal(mixed, torch.where(box, images[perm], images))
        for i in range(4):  # the pasted fraction seen in the pixels = 1 - λ, the label weight of π(i)
            if perm[i] != i:
                pasted = (mixed[i, 0] != images[i, 0]).float().mean().item()
                assert pasted == pytest.approx(1.0 - lam)
                seen_partial |= 0 < pasted < 1
        assert torch.equal(images, constant_images(4, h, w))  # input untouched
    assert seen_partial


def test_box_sides_per_axis():
    torch.manual_seed(0)
    sides = set()
    for _ in range(50):
        y1, x1, y2, x2 = random_box((100, 40), lam=0.75)  # side ratio √0.25 = 0.5: at most 50 × 20
        assert 0 <= y1 <= y2 <= 100 and 0 <= x1 <= x2 <= 40
        assert y2 - y1 <= 50 and x2 - x1 <= 20
        sides.add((y2 - y1, x2 - x1))
    assert (50, 20) in sides  # unclipped boxes have the full sides


def build(**params):
    return build_method(
        MethodConfig(name="cutmix", params=params), BackboneConfig(name="resnet18", cam_friendly=True), 3
    )


def test_loss_mixes_cross_entropies_by_area():
    method = build(alpha=1.0, prob=1.0).train()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    batch = Batch(images=images, labels=labels, image_ids=list("abcd"))
    torch.manual_seed(3)
    terms = method.training_step(batch, TrainState())
    torch.manual_seed(3)
    assert float(torch.rand(())) < 1.0  # the probability draw
    mixed, perm, lam, _ = cutmix(images, 1.0)
    logits = method(mixed).logits  # train-mode BN: batch statistics, the same logits
    want = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[perm])
    assert torch.allclose(terms["ce"], want, atol=1e-6) and torch.allclose(terms["total"], want, atol=1e-6)
    assert terms["pasted_frac"].item() == pytest.approx(1 - lam)


def test_no_mixing_when_prob_zero_or_in_eval():
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    batch = Batch(images=images, labels=labels, image_ids=["a", "b"])
    for method in (build(prob=0.0).train(), build(prob=1.0).eval()):
        seen = []
        hook = method.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        terms = method.training_step(batch, TrainState())
        hook.remove()
        assert torch.equal(seen[0], images) and terms["pasted_frac"].item() == 0.0
        assert torch.allclose(terms["ce"], F.cross_entropy(method(images).logits, labels), atol=1e-6)
