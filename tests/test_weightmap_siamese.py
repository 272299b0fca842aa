"""Weight map, method II (weight-map-wsol.txt Eqs. 2-4): in-batch triplet mining, the triplet
loss by hand, the stage-1 ``siamese`` method, and the stage-2 inner / outer / R terms on
hand-made embeddings (a stand-in f that embeds an image as its mean colour)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods.base import TrainState, build_method, validate_params
from wsol.methods.siamese import Siamese, batch_triplet_loss, mine_triplets, triplet_loss
from wsol.methods.weightmap import SMALL_DECODER_CHANNELS
from wsol.methods.weightmap_siamese import WeightMapSiamese

SIZE = 32


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def rand_batch(labels: list[int], size: int = SIZE) -> Batch:
    g = torch.Generator().manual_seed(0)
    n = len(labels)
    return Batch(images=torch.rand(n, 3, size, size, generator=g), labels=torch.tensor(labels),
                 image_ids=[str(i) for i in range(n)])


# --- mining and Eq. 2 -----------------------------------------------------------------
def test_mining_pairs_each_anchor_with_its_class_and_another():
    labels = torch.tensor([0, 0, 1, 1, 2])
    seen_neg = set()
    for seed in range(30):
        torch.manual_seed(seed)
        a, p, n = mine_triplets(labels)
        assert a.tolist() == [0, 1, 2, 3]  # image 4 has no same-class partner
        assert p.tolist() == [1, 0, 3, 2]  # the only positive of each
        assert (labels[n] != labels[a]).all()
        seen_neg.add(int(n[0]))
    assert seen_neg == {2, 3, 4}  # drawn among all other-class images


@pytest.mark.parametrize("labels", [[0, 0, 0], [0, 1, 2], [3]])
def test_mining_without_triplets(labels):
    a, p, n = mine_triplets(torch.tensor(labels))
    assert a.numel() == p.numel() == n.numel() == 0


def test_triplet_loss_by_hand():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # ‖a−p‖ = 5, 1
    n = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # ‖a−n‖ = 1, 3
    assert val(triplet_loss(a, p, n)) == pytest.approx((max(5 - 1 + 1, 0) + max(1 - 3 + 1, 0)) / 2)  # 2.5
    assert val(triplet_loss(a, p, n, margin=2.5)) == pytest.approx((6.5 + 0.5) / 2)


def test_batch_without_triplets_gives_zero_with_a_graph():
    emb = torch.randn(3, 4, requires_grad=True)
    loss, count = batch_triplet_loss(emb, torch.tensor([1, 1, 1]))
    assert count == 0 and val(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) == 0.0


# --- stage 1: siamese -----------------------------------------------------------------
def build_siamese(classes: int = 3) -> Siamese:
    return build_method(MethodConfig(name="siamese"), BackboneConfig(name="resnet18"), classes)


def test_siamese_step_is_eq2_on_mined_triplets_plus_probe():
    method = build_siamese()
    method.train()
    b = rand_batch([0, 0, 1, 1, 2, 2])
    torch.manual_seed(5)
    terms = method.training_step(b, TrainState())
    assert set(terms) == {"triplet", "probe_ce", "anchor_frac", "total"}
    assert val(terms["anchor_frac"]) == 1.0
    torch.manual_seed(5)
    emb = method.embed(b.images)  # train-mode BN: the same batch gives the same embeddings
    a, p, n = mine_triplets(b.labels)
    assert val(terms["triplet"]) == pytest.approx(val(triplet_loss(emb[a], emb[p], emb[n], 1.0)), rel=1e-5)
    assert val(terms["total"]) == pytest.approx(val(terms["triplet"]) + val(terms["probe_ce"]), rel=1e-6)
    assert emb.shape == (6, 200)  # §3: 512 → 200


def test_probe_does_not_shape_the_embedding():
    method = build_siamese()
    method.train()
    method.training_step(rand_batch([0, 1, 2]), TrainState())["probe_ce"].backward()
    assert method.probe.weight.grad is not None
    assert method.projection.weight.grad is None
    assert all(p.grad is None for p in method.backbone.parameters())


def test_siamese_logits_are_the_mean_of_its_cams():
    """GAP, projection and probe are linear: logits = spatial mean of (P·W)F + P·b_W + b_P."""
    method = build_siamese().eval()
    x = rand_batch([0, 1]).images
    with torch.no_grad():
        out = method(x)
        const = method.probe.weight @ method.projection.bias + method.probe.bias
        torch.testing.assert_close(out.logits, out.maps.mean(dim=(2, 3)) + const, rtol=1e-4, atol=1e-5)
        cams = method.localize(x, torch.tensor([2, 2]))
    assert cams.shape == (2, SIZE, SIZE) and float(cams.min()) >= 0 and float(cams.max()) <= 1


# --- stage 2: method II ---------------------------------------------------------------
class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return torch.full(images.shape[:1] + images.shape[2:], self.value) + 0 * self.dummy


def build_ii(**params) -> WeightMapSiamese:
    params = {"siamese": None, "decoder_channels": SMALL_DECODER_CHANNELS, **params}
    return build_method(MethodConfig(name="weightmap_siamese", params=params), BackboneConfig(name="resnet18"), 2)


COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.0, 0.0], [0.5, 0.5, 0.0]])  # labels 0, 0, 1


def colour_batch() -> Batch:
    images = COLOURS[:, :, None, None].expand(3, 3, 8, 8).contiguous()
    return Batch(images=images, labels=torch.tensor([0, 0, 1]), image_ids=["a", "b", "c"])


def stand_in(method: WeightMapSiamese, m: float) -> list[int]:
    """g ≡ m and f(x) = the mean colour of x; returns the batch sizes f embeds."""
    calls: list[int] = []

    def embed(x):
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    method.generator = Constant(m)
    method.f.embed = embed
    return calls


# By hand, g ≡ 1: J^f = I, J^b = 0, embeddings c = the colours, ‖c‖ = 1, 0.8, √0.5.
INNER_1 = (0 + 0.2 + (1 - math.sqrt(0.5))) / 3  # Eq. 3: max{0 − ‖c‖ + 1, 0}
# Eq. 4, anchors 0 and 1 (image 2 has no positive), negative 2:
OUTER_1 = ((0.2 - math.sqrt(0.5) + 1) + (0.2 - math.sqrt(0.34) + 1)) / 2
# g ≡ 0.5: J^f = J^b = I/2, so Eq. 3 is the margin; Eq. 4's distances halve
OUTER_05 = ((0.1 - math.sqrt(0.5) / 2 + 1) + (0.1 - math.sqrt(0.34) / 2 + 1)) / 2


@pytest.mark.parametrize("m, inner, outer", [(1.0, INNER_1, OUTER_1), (0.5, 1.0, OUTER_05)])
def test_inner_outer_and_r_by_hand(m, inner, outer):
    method = build_ii()
    stand_in(method, m)
    terms = method.training_step(colour_batch(), TrainState())
    assert val(terms["inner"]) == pytest.approx(inner, abs=1e-6)
    assert val(terms["outer"]) == pytest.approx(outer, abs=1e-6)
    assert val(terms["reg"]) == pytest.approx(m)
    assert val(terms["total"]) == pytest.approx(inner + outer + m, abs=1e-6)


@pytest.mark.parametrize("drop", ["inner", "outer", "reg"])
def test_table6_ablations_drop_one_term(drop):
    method = build_ii(**{f"use_{drop}": False})
    calls = stand_in(method, 1.0)
    terms = method.training_step(colour_batch(), TrainState())
    kept = {"inner": INNER_1, "outer": OUTER_1, "reg": 1.0}
    kept.pop(drop)
    assert set(terms) == {*kept, "total"}
    assert val(terms["total"]) == pytest.approx(sum(kept.values()), abs=1e-6)
    # without L_inner neither f(I) nor the background is embedded
    assert calls == ([3] if drop == "inner" else [6, 3])


def test_outer_without_triplets_keeps_the_graph():
    method = build_ii()
    stand_in(method, 1.0)
    b = colour_batch()
    b.labels = torch.tensor([0, 1, 2])
    terms = method.training_step(b, TrainState())
    assert val(terms["outer"]) == 0.0 and terms["outer"].requires_grad


def test_both_triplet_terms_off_is_refused():
    with pytest.raises(ConfigError, match="use_inner and use_outer"):
        validate_params("weightmap_siamese", {"siamese": None, "use_inner": False, "use_outer": False})


def test_stage2_steps_leave_the_siamese_unchanged():
    method = build_ii()
    before = {k: v.clone() for k, v in method.f.state_dict().items()}
    g_before = {k: v.clone() for k, v in method.generator.state_dict().items()}
    method.train()
    assert not method.f.training
    opt = torch.optim.SGD(method.param_groups(0.1, 10.0), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        opt.zero_grad()
        method.training_step(rand_batch([0, 0, 1, 1]), TrainState())["total"].backward()
        opt.step()
    for k, v in method.f.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, g_before[k]) for k, v in method.generator.state_dict().items())
    with torch.no_grad():  # forward: the siamese probe's logits
        x = rand_batch([0, 1]).images
        torch.testing.assert_close(method.eval()(x).logits, method.f(x).logits)
