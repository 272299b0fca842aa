"""minmax_entropy: the equations on hand-made tensors (Eqs. 3, 5, 7, 9-12 of
min-max-entropy-recursive-erasing.txt) and the recursion of Alg. 1 driven by a scripted
localizer whose posteriors and maps are written out by hand."""

import math

import pytest
import torch

from wsol.config import BackboneConfig
from wsol.methods.minmax_entropy import (
    MinMaxEntropy,
    MinMaxEntropyParams,
    accumulate_mask,
    minmax_entropy_terms,
    pseudo_binary,
    sample_ce,
    scale_map,
    trust_coefficients,
    upscaled_map,
)


def logits_of(*probs):
    """Logits whose softmax is the given rows of probabilities."""
    return torch.tensor(probs, dtype=torch.float64).log()


# --- Eqs. 3, 5, 7, 8 -------------------------------------------------------------------
def test_classifier_terms_by_hand():
    labels = torch.tensor([0, 1])
    pos = logits_of([0.75, 0.25], [0.5, 0.5])
    neg = logits_of([0.2, 0.8], [0.5, 0.5])
    terms = minmax_entropy_terms(labels, pos, neg)
    # Eq. 3: mean of −log p̂(y_i|X+) = (−log 0.75 − log 0.5) / 2
    assert terms["fg_ce"].item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2)
    # Eq. 5: −(1/c) Σ_y log p̂(y|X−), averaged: sample 0 −(log .2 + log .8)/2, sample 1 log 2
    eq5 = (-(math.log(0.2) + math.log(0.8)) / 2 + math.log(2)) / 2
    assert terms["bg_ce"].item() == pytest.approx(eq5)
    # its minimum, log c, is reached at the uniform posterior (sample 1)
    assert minmax_entropy_terms(labels[1:], pos[1:], neg[1:])["bg_ce"].item() == pytest.approx(math.log(2))


def test_localizer_cross_entropy_eq7_by_hand():
    ce = sample_ce(logits_of([0.75, 0.25], [0.1, 0.9], [0.6, 0.4]), torch.tensor([0, 0, 1]))
    assert ce.tolist() == pytest.approx([-math.log(0.75), -math.log(0.1), -math.log(0.4)])


# --- Eq. 9 and the scaling of T ----------------------------------------------------------
def test_mask_by_hand():
    maps = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 8.0]]]], dtype=torch.float64)
    t_up = upscaled_map(maps, logits_of([0.75, 0.25]), (2, 2))
    # T = 0.75·A(0) + 0.25·A(1) = [[3, 0], [0, 2]]
    assert torch.allclose(t_up, torch.tensor([[[3.0, 0.0], [0.0, 2.0]]], dtype=torch.float64))
    t_hat = scale_map(t_up, "image")
    assert torch.allclose(t_hat, torch.tensor([[[1.0, 0.0], [0.0, 2 / 3]]], dtype=torch.float64))
    r = pseudo_binary(t_hat, omega=8.0, sigma0=0.5)  # Eq. 9
    assert r[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-8 * 0.5)))
    assert r[0, 1, 1].item() == pytest.approx(1 / (1 + math.exp(-8 * (2 / 3 - 0.5))))
    assert r[0, 0, 1].item() == pytest.approx(1 / (1 + math.exp(4.0)))


def test_scale_per_image_and_per_batch():
    t = torch.tensor([[[0.0, 1.0]], [[2.0, 4.0]]])
    assert scale_map(t, "image").tolist() == [[[0.0, 1.0]], [[0.0, 1.0]]]
    assert scale_map(t, "batch").tolist() == [[[0.0, 0.25]], [[0.5, 1.0]]]  # (T − 0) / (4 − 0)
    assert scale_map(torch.ones(1, 2, 2), "batch").abs().sum() == 0  # constant: all zeros, no NaN


# --- Eqs. 10-12 ------------------------------------------------------------------------
def test_trust_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    ce0 = torch.tensor([-math.log(0.75), -math.log(0.75), -math.log(0.6), -math.log(0.6)])
    logits = logits_of(
        [0.8, 0.2],  # right class, more confident than at t = 0: trusted, Γ = 0.8
        [0.3, 0.7],  # wrong prediction: 0
        [0.45, 0.55],  # right class but H_t = −log .55 > H_0 = −log .6: 0
        [0.1, 0.9],  # right and confident, but its trust was 0 earlier: 0
    )
    alive = torch.tensor([True, True, True, False])
    psi, gamma = trust_coefficients(2, logits, labels, ce0, sigma=10.0, alive=alive)
    assert gamma.tolist() == pytest.approx([0.8, 0.0, 0.0, 0.0])
    assert psi.tolist() == pytest.approx([math.exp(-0.2) * 0.8, 0.0, 0.0, 0.0])  # Eq. 11: exp(−t/σ)·Γ
    # at t = 0 (H_0 ≤ H_0 holds): Ψ = Γ = p̂_s(y|X) for a right prediction
    psi0, _ = trust_coefficients(0, logits_of([0.75, 0.25]), labels[:1], ce0[:1], sigma=10.0)
    assert psi0.item() == pytest.approx(0.75)


def test_accumulated_mask_is_the_running_max():
    g = torch.Generator().manual_seed(0)
    r_star = torch.zeros(2, 4, 4)
    seen = []
    for t in range(4):
        r_t = torch.rand(2, 4, 4, generator=g)
        psi = torch.tensor([math.exp(-t / 10), 0.5])
        r_star = accumulate_mask(r_star, psi, r_t)  # Eq. 10
        seen.append(psi[:, None, None] * r_t)
        assert torch.equal(r_star, torch.stack(seen).amax(dim=0))


# --- Alg. 1 with a scripted localizer -----------------------------------------------------
S = 8  # image and map side: the upsampling is the identity


def region(rows: slice) -> torch.Tensor:
    m = torch.zeros(S, S)
    m[rows] = 1.0
    return m


class Scripted:
    """A localizer M whose posterior and map at step t are given per sample. The sample a row
    of the input belongs to is read from the image: channel 1 / channel 0 = (i + 1) / 8 at
    every pixel, a ratio erasing (a common factor) keeps."""

    def __init__(self, probs, maps):
        self.probs = torch.tensor(probs, dtype=torch.float32)  # steps × B × C
        self.maps = maps  # steps × B × S × S (the same map for every class: T = that map)
        self.w = torch.ones((), requires_grad=True)  # gives the steps' terms a gradient
        self.calls: list[tuple[list[int], torch.Tensor]] = []

    def __call__(self, x):
        flat = x.flatten(2)
        j = flat[:, 0].argmax(dim=1)
        ids = (8 * flat[torch.arange(len(x)), 1, j] / flat[torch.arange(len(x)), 0, j]).round().long() - 1
        t = len(self.calls)
        self.calls.append((ids.tolist(), x.detach().clone()))
        logits = self.w * self.probs[t, ids].log()
        maps = self.maps[t][ids][:, None].expand(-1, self.probs.shape[-1], -1, -1)
        return logits, self.w * maps


def images_for(b):
    x = torch.empty(b, 3, S, S)
    x[:, 0] = 1.0
    x[:, 1] = ((torch.arange(b) + 1) / 8.0)[:, None, None]
    x[:, 2] = 0.5
    return x


def scripted_method(u, probs, maps, monkeypatch):
    torch.manual_seed(0)
    m = MinMaxEntropy(MinMaxEntropyParams(u=u, dropout=0.0), BackboneConfig(name="resnet18"), 2)
    fake = Scripted(probs, maps)
    monkeypatch.setattr(m, "localizer", fake)
    return m, fake


LABELS = torch.tensor([0, 0, 1])
# steps t = 0..4 for three samples (labels 0, 0, 1):
PROBS = [
    [[0.75, 0.25], [0.7, 0.3], [0.4, 0.6]],  # t=0: all right
    [[0.8, 0.2], [0.9, 0.1], [0.5, 0.5]],  # t=1: sample 2 ties (argmax 0, wrong) -> stops
    [[0.85, 0.15], [0.3, 0.7], [0.1, 0.9]],  # t=2: sample 1 wrong -> stops
    [[0.75, 0.25], [0.99, 0.01], [0.1, 0.9]],  # t=3: sample 0 as confident as at t=0 (H_3 = H_0): trusted
    [[0.9, 0.1], [0.99, 0.01], [0.1, 0.9]],  # t=4
]
MAPS = [torch.stack([region(slice(t, t + 2))] * 3) for t in range(5)]  # each step a new band of rows


def test_recursion_by_hand(monkeypatch):
    m, fake = scripted_method(4, PROBS, MAPS, monkeypatch)
    x = images_for(3)
    rec = m.erase_recursively(x, LABELS, trace=True)
    # who is forwarded at each step: sample 2 loses its trust at t = 1, sample 1 at t = 2; a
    # zero trust stops a sample for good (sample 1 is right again at t = 3, 4 but is not
    # forwarded any more)
    assert [ids for ids, _ in fake.calls] == [[0, 1, 2], [0, 1, 2], [0, 1], [0], [0]]
    assert rec.steps == 5 and rec.passes == pytest.approx((3 + 3 + 2 + 1 + 1) / 3)
    # Ψ by hand (Eqs. 11-12)
    psi = {
        0: [0.75, 0.7, 0.6],
        1: [math.exp(-0.1) * 0.8, math.exp(-0.1) * 0.9, 0.0],
        2: [math.exp(-0.2) * 0.85, 0.0],
        3: [math.exp(-0.3) * 0.75],
        4: [math.exp(-0.4) * 0.9],
    }
    for t, step in enumerate(rec.trace):
        assert step["psi"].tolist() == pytest.approx(psi[t], rel=1e-6)
    # R+,★ is the running max of Ψ·R+,t (Eq. 10), and the input at step t is X⊙(1 − R+,★)
    r = [pseudo_binary(MAPS[t][0], 8.0, 0.5) for t in range(5)]
    expected = torch.zeros(3, S, S)
    for t, (ids, inputs) in enumerate(fake.calls):
        assert torch.allclose(inputs, x[ids] * (1 - expected[ids])[:, None], atol=1e-6), t
        for k, i in enumerate(ids):
            expected[i] = torch.maximum(expected[i], psi[t][k] * r[t])
    assert torch.allclose(rec.r_star, expected, atol=1e-6)
    # M's term: every sample at t = 0 (Eq. 7), then the trusted ones (Alg. 1 line 12), / B
    ce = lambda p: -math.log(p)  # noqa: E731
    assert rec.loc_ce.item() == pytest.approx((ce(0.75) + ce(0.7) + ce(0.6)) / 3, rel=1e-6)
    erased = (ce(0.8) + ce(0.9)) + ce(0.85) + ce(0.75) + ce(0.9)
    assert rec.loc_ce_erased.item() == pytest.approx(erased / 3, rel=1e-6)
    # it was backpropagated step by step: d/dw of Σ_t term_t with logits = w·log p
    # (d/dw −log softmax(w·log p)_y at w = 1 = −log p_y + Σ_k p_k log p_k)
    def dterm(p, y):
        return -math.log(p[y]) + sum(q * math.log(q) for q in p)
    grad = sum(dterm(PROBS[0][i], int(LABELS[i])) for i in range(3))
    grad += dterm(PROBS[1][0], 0) + dterm(PROBS[1][1], 0) + dterm(PROBS[2][0], 0)
    grad += dterm(PROBS[3][0], 0) + dterm(PROBS[4][0], 0)
    assert fake.w.grad.item() == pytest.approx(grad / 3, rel=1e-5)


def test_recursion_stops_when_no_sample_is_trusted(monkeypatch):
    wrong = [[[0.3, 0.7], [0.2, 0.8], [0.9, 0.1]]] * 5  # every prediction wrong at t = 0
    m, fake = scripted_method(4, wrong, MAPS, monkeypatch)
    rec = m.erase_recursively(images_for(3), LABELS)
    assert len(fake.calls) == 1 and rec.steps == 1
    assert rec.r_star.abs().sum() == 0  # Ψ = 0: nothing accumulated, X+ = 0, X− = X


def test_u0_is_one_pass_of_section_3(monkeypatch):
    wrong = [[[0.3, 0.7], [0.2, 0.8], [0.9, 0.1]]]
    m, fake = scripted_method(0, wrong, MAPS, monkeypatch)
    rec = m.erase_recursively(images_for(3), LABELS)
    assert len(fake.calls) == 1 and rec.steps == 1 and rec.passes == 1.0
    # no trust weighting: R+,★ = R+,0 even for misclassified samples (Eq. 9 alone)
    assert torch.allclose(rec.r_star, pseudo_binary(MAPS[0], 8.0, 0.5))
    assert rec.loc_ce_erased.item() == 0.0


def test_erasing_starts_at_its_epoch():
    m = MinMaxEntropy(MinMaxEntropyParams(u=4, erase_start_epoch=1), BackboneConfig(name="resnet18"), 2)
    assert m.depth == 0
    m.on_epoch_start(1)
    assert m.depth == 4
    m.on_epoch_start(0)
    assert m.depth == 0
