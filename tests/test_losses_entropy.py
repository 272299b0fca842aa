"""Entropy / KL-to-uniform terms (max-min-uncertainty Eqs. 1, 5, 6, 8, 9) against hand
computations on a 2-class example: p̂ = softmax([ln 3, 0]) = (3/4, 1/4)."""

import math

import pytest
import torch

from wsol.losses import (
    cross_entropy_to_uniform,
    entropy,
    kl_from_uniform,
    kl_to_uniform,
    negative_entropy,
    uncertainty_regularizer,
)

LOGITS = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64)  # (3/4, 1/4) and uniform
LN2 = 0.6931471805599453
# H(3/4, 1/4) = -(0.75·ln 0.75 + 0.25·ln 0.25) = 0.75·0.2876821 + 0.25·1.3862944
H_34 = 0.5623351446188083
# H(q, p̂) = -(1/2)(ln 0.75 + ln 0.25) = (0.2876821 + 1.3862944) / 2
CE_Q_34 = 0.8369882167858358


def test_entropy_hand_values():
    assert torch.allclose(entropy(LOGITS, reduction="none"), torch.tensor([H_34, LN2], dtype=torch.float64))
    assert entropy(LOGITS).item() == pytest.approx((H_34 + LN2) / 2)
    assert entropy(LOGITS, reduction="sum").item() == pytest.approx(H_34 + LN2)


def test_eem_is_kl_to_uniform_minus_log_c():
    # Eq. 5: -H(p̂) = KL(p̂‖q) - log c.  KL((3/4,1/4)‖(1/2,1/2)) = ln 2 - H = 0.1308120
    kl = kl_to_uniform(LOGITS, reduction="none")
    assert kl[0].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kl[0].item() == pytest.approx(0.13081203594113694)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-12)
    eem = negative_entropy(LOGITS, reduction="none")
    assert eem[0].item() == pytest.approx(-H_34)
    assert torch.allclose(eem, kl - LN2)
    # its minimum is -log c, at the uniform posterior
    assert eem[1].item() == pytest.approx(-LN2)


def test_sem_is_cross_entropy_to_uniform():
    sem = cross_entropy_to_uniform(LOGITS, reduction="none")
    assert sem[0].item() == pytest.approx(CE_Q_34)
    assert sem[1].item() == pytest.approx(LN2)
    # Eq. 6: KL(q‖p̂) = H(q, p̂) - log c = 0.5·ln(0.5/0.75) + 0.5·ln(0.5/0.25)
    klq = kl_from_uniform(LOGITS, reduction="none")
    assert klq[0].item() == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0))
    assert torch.allclose(sem, klq + LN2)


def test_regularizer_dispatch_and_uniform_is_stationary():
    z = torch.tensor([[0.3, 0.3]], dtype=torch.float64, requires_grad=True)
    for kind, fn in (("eem", negative_entropy), ("sem", cross_entropy_to_uniform)):
        r = uncertainty_regularizer(z, kind)
        assert r.item() == pytest.approx(fn(z).item())
        (g,) = torch.autograd.grad(r, z)
        assert torch.allclose(g, torch.zeros_like(g), atol=1e-12)
    with pytest.raises(ValueError, match="eem"):
        uncertainty_regularizer(z, "kl")


def test_minimising_moves_posterior_towards_uniform():
    for kind in ("eem", "sem"):
        z = LOGITS[:1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(uncertainty_regularizer(z, kind), z)
        # gradient descent lowers the winning logit and raises the other one
        assert g[0, 0] > 0 and g[0, 1] < 0


def test_extreme_logits_stay_finite_and_other_dims():
    z = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    for fn in (entropy, negative_entropy, kl_to_uniform, cross_entropy_to_uniform, kl_from_uniform):
        v = fn(z)
        (g,) = torch.autograd.grad(v, z)
        assert torch.isfinite(v) and torch.isfinite(g).all()
    # class axis last, batch shape 2×3
    zz = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(entropy(zz, dim=-1, reduction="none"), entropy(zz.reshape(6, 4), reduction="none").view(2, 3))
    with pytest.raises(ValueError, match="reduction"):
        entropy(zz, reduction="avg")
