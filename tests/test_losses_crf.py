"""CRF loss (f-cam Eq. B.1) and the shared Gaussian filters (wsol.losses.bilateral)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsol.errors import ConfigError
from wsol.losses import bilateral
from wsol.losses.bilateral import BilateralGrid, ExactGaussian, PermutohedralLattice, pixel_features
from wsol.losses.crf import crf_loss

METHODS = ["exact", "fast", "lattice"]


def smooth(g: torch.Generator, b: int, c: int, size: int, knots: int = 6) -> torch.Tensor:
    """Random smooth maps in [0, 1]: uniform noise on a knots×knots grid, bicubic upsampling."""
    z = torch.rand(b, c, knots, knots, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_exact_matches_two_pixels_by_hand():
    # Pixels 1 px apart (σ_xy = 2) whose red differs by 15/255 (σ_rgb = 15):
    # W = [[1, w], [w, 1]], w = exp(−(1/2)² /2 − 1²/2) = exp(−0.625).
    images = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    images[0, 0, 0, 1] = 15 / 255
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64).reshape(1, 2, 1, 2)
    w = math.exp(-0.625)
    # k=0: (0.8, 0.3)·W·(0.2, 0.7) = 0.37 + 0.62w; k=1: (0.2, 0.7)·W·(0.8, 0.3) = 0.37 + 0.62w.
    expected = 0.74 + 1.24 * w
    got = crf_loss(images, probs, sigma_rgb=15.0, sigma_xy=2.0, method="exact")
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_constant_hard_labelling_costs_nothing_and_soft_maps_cost_more(method):
    g = torch.Generator().manual_seed(0)
    images = smooth(g, 2, 3, 16)
    hard = torch.zeros(2, 2, 16, 16)
    hard[:, 1] = 1.0
    assert crf_loss(images, hard, sigma_xy=10.0, method=method).item() == 0.0
    soft = smooth(g, 2, 2, 16).softmax(1)
    assert crf_loss(images, soft, sigma_xy=10.0, method=method).item() > 0.0


def test_tang_form_differs_by_a_constant_and_has_the_same_logit_gradient():
    # DenseCRFLoss (Tang et al., F-CAM's code) computes −Σ_k S_kᵀ W S_k; Eq. B.1 is
    # Σ_k S_kᵀ W (1 − S_k) = 1ᵀW1 − Σ_k S_kᵀ W S_k when Σ_k S_k = 1.
    g = torch.Generator().manual_seed(1)
    images = smooth(g, 1, 3, 12).double()
    logits = torch.randn(1, 3, 12, 12, generator=g, dtype=torch.float64, requires_grad=True)
    ours = crf_loss(images, logits.softmax(1), sigma_xy=8.0, method="exact")
    (g_ours,) = torch.autograd.grad(ours, logits)
    op = ExactGaussian(pixel_features(images, 8.0, 15.0))
    s = logits.softmax(1).flatten(2).transpose(1, 2)
    tang = -(s * op(s)).sum()
    (g_tang,) = torch.autograd.grad(tang, logits)
    w1 = op(torch.ones(1, 144, 1, dtype=torch.float64)).sum()
    assert ours.item() == pytest.approx((w1 + tang).item(), rel=1e-10)
    torch.testing.assert_close(g_ours, g_tang, rtol=1e-9, atol=1e-12)


def test_batch_is_averaged():
    g = torch.Generator().manual_seed(2)
    images, probs = smooth(g, 2, 3, 10), smooth(g, 2, 2, 10).softmax(1)
    both = crf_loss(images, probs, sigma_xy=5.0, method="exact")
    each = [crf_loss(images[i : i + 1], probs[i : i + 1], sigma_xy=5.0, method="exact") for i in range(2)]
    assert both.item() == pytest.approx((each[0] + each[1]).item() / 2, rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    # exact through plain autograd; fast and lattice through their own backward, Wᵀ g: the
    # grid's W is symmetric, the lattice's transpose blurs the directions in reverse order
    # (without that, gradcheck fails: sparse-lattice blurs do not commute).
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(z):
        return crf_loss(images, z.softmax(1), sigma_rgb=40.0, sigma_xy=3.0, method=method)

    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigmas", [(15.0, 100.0), (30.0, 50.0)])
def test_fast_is_within_2_percent_of_exact_at_48px(sigmas):
    # Stated bound: |R_fast − R_exact| ≤ 2 % of R_exact and ‖∇_logits fast − ∇ exact‖ ≤ 5 %
    # of ‖∇ exact‖ (measured over seeds 0–3: ≤ 0.6 % and ≤ 3.4 %).
    sigma_rgb, sigma_xy = sigmas
    g = torch.Generator().manual_seed(4)
    images = smooth(g, 4, 3, 48)
    logits = smooth(g, 4, 2, 48) * 8 - 4
    results = {}
    for method in ("exact", "fast"):
        z = logits.clone().requires_grad_()
        r = crf_loss(images, z.softmax(1), sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, method=method)
        r.backward()
        results[method] = (r.item(), z.grad)
    (r_exact, g_exact), (r_fast, g_fast) = results["exact"], results["fast"]
    assert abs(r_fast - r_exact) <= 0.02 * r_exact
    assert (g_fast - g_exact).norm() <= 0.05 * g_exact.norm()


def test_lattice_is_about_half_the_gaussian_at_48px():
    # Documented property of the authors' operator (module docstrings): in 5-D the
    # permutohedral lattice gives 0.4–0.65 × the exact Gaussian (≈ 0.5 here).
    g = torch.Generator().manual_seed(5)
    images, probs = smooth(g, 2, 3, 48), (smooth(g, 2, 2, 48) * 8 - 4).softmax(1)
    ratio = crf_loss(images, probs, method="lattice") / crf_loss(images, probs, method="exact")
    assert 0.4 <= ratio.item() <= 0.6


def test_scale_factor_is_tangs_downscaling():
    g = torch.Generator().manual_seed(6)
    images, probs = smooth(g, 1, 3, 24), smooth(g, 1, 2, 24).softmax(1)
    got = crf_loss(images, probs, sigma_xy=20.0, scale_factor=0.5, method="exact")
    small_images = F.interpolate(images, scale_factor=0.5, mode="nearest")
    small_probs = F.interpolate(probs, scale_factor=0.5, mode="bilinear", align_corners=False)
    expected = crf_loss(small_images, small_probs, sigma_xy=10.0, method="exact")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_lattice_hash_fallback_gives_the_same_filter(monkeypatch):
    g = torch.Generator().manual_seed(7)
    feats = pixel_features(smooth(g, 2, 3, 12), 4.0, 20.0)
    values = torch.rand(2, 144, 3, generator=g)
    fast_path = PermutohedralLattice(feats)(values)
    monkeypatch.setattr(bilateral, "_MAX_CODE", 1)  # force torch.unique(dim=0) hashing
    torch.testing.assert_close(PermutohedralLattice(feats)(values), fast_path)


def test_grid_matches_exact_on_position_only_features():
    # 2-D Gaussian over a 20×20 pixel grid, σ = 3 px: the grid filter of a random map.
    feats = pixel_features(None, 3.0, size=(20, 20))
    values = torch.rand(1, 400, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    exact = ExactGaussian(feats)(values)
    grid = BilateralGrid(feats.double())(values)
    assert ((grid - exact).abs().max() / exact.abs().max()).item() < 0.03


def test_errors_say_what_to_do():
    images, probs = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8).softmax(1)
    with pytest.raises(ConfigError, match="choose one of"):
        crf_loss(images, probs, method="permuto")
    with pytest.raises(ValueError, match="same H×W"):
        crf_loss(images, probs[..., :4])
    with pytest.raises(ConfigError, match="scale_factor"):
        crf_loss(images, probs, scale_factor=2.0)
    with pytest.raises(ConfigError, match="lattice"):  # grid refuses narrow kernels
        crf_loss(torch.rand(1, 3, 64, 64), torch.rand(1, 2, 64, 64), sigma_rgb=1.0, sigma_xy=1.0)
    big = torch.zeros(1, 3, 310, 310)
    with pytest.raises(ConfigError, match="method='fast'"):
        crf_loss(big, torch.zeros(1, 2, 310, 310), method="exact")
    with pytest.raises(ConfigError, match="> 0"):
        crf_loss(images, probs, sigma_rgb=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    g = torch.Generator().manual_seed(9)
    images, logits = smooth(g, 2, 3, 32), smooth(g, 2, 2, 32) * 6 - 3
    grads = []
    for device in ("cpu", "cuda"):
        z = logits.to(device).detach().requires_grad_()
        r = crf_loss(images.to(device), z.softmax(1), sigma_xy=30.0, method=method)
        r.backward()
        grads.append((r.detach().cpu(), z.grad.cpu()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-3, atol=1e-3)
