"""Pooling heads on hand-made 1×C×4×4 maps: scores equal values worked out by hand, and the
gradient reaches only the positions each pooling selects (survey §2.2, Eqs. 2-9)."""

from __future__ import annotations

import math

import pytest
import torch

from wsol.nn.pooling import DeepMILHead, GAPHead, LSEHead, MaxPoolHead, PRMHead, WildcatHead, resolve_k

# a 4×4 map with a single 8 and zeros elsewhere
SPIKE = torch.zeros(1, 1, 4, 4)
SPIKE[0, 0, 1, 1] = 8.0

# 4×4 map with two local maxima in a 3×3 window: 9 at (0, 0) and 6 at (3, 3)
TWO_PEAKS = torch.tensor(
    [[9.0, 7.0, 5.0, 3.0], [7.0, 5.0, 3.0, 4.0], [5.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0]]
).view(1, 1, 4, 4)

# values -5..10, each once, scattered by a fixed permutation
PERM = torch.tensor([7, 2, 12, 0, 15, 9, 4, 11, 1, 14, 6, 3, 10, 13, 5, 8])
RAMP = (torch.arange(16.0) - 5.0)[PERM].view(1, 1, 4, 4)


def grad_of(pool, maps: torch.Tensor) -> torch.Tensor:
    maps = maps.clone().requires_grad_(True)
    pool(maps).sum().backward()
    return maps.grad


# --- GAP (Eq. 2) ------------------------------------------------------------------------
def test_gap_score_and_gradient():
    head = GAPHead(2, 1)
    assert head.pool(RAMP).item() == 2.5  # (-5 + ... + 10) / 16
    assert torch.allclose(grad_of(head.pool, RAMP), torch.full_like(RAMP, 1 / 16))


# --- MAX-Pool -------------------------------------------------------------------------
def test_maxpool_score_and_gradient():
    head = MaxPoolHead(2, 1)
    assert head.pool(RAMP).item() == 10.0
    g = grad_of(head.pool, RAMP)
    expected = (RAMP == 10.0).float()
    assert torch.equal(g, expected)


# --- LSE (Eq. 4) ----------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.5, 1.0, 3.0, 10.0])
def test_lse_matches_hand_formula(q):
    # (1/q)·log((e^{8q} + 15·e^0)/16), evaluated in float64 by hand
    expected = math.log((math.exp(8 * q) + 15) / 16) / q
    got = LSEHead(2, 1, q=q).pool(SPIKE).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_lse_tends_to_max_and_mean():
    mean, mx = RAMP.mean().item(), RAMP.max().item()
    assert mean == pytest.approx(2.5)
    values = [LSEHead(2, 1, q=q).pool(RAMP).item() for q in (1e-4, 0.1, 1.0, 10.0, 1000.0)]
    assert values == sorted(values)  # monotone in q
    assert values[0] == pytest.approx(mean, abs=2e-3)  # q -> 0: the average
    assert values[-1] == pytest.approx(mx + math.log(1 / 16) / 1000, abs=1e-4)  # q -> inf: the max
    assert mean < values[2] < mx


def test_lse_no_overflow_at_large_q_and_activations():
    maps = SPIKE * 1000.0  # one activation of 8000: naive exp(q·8000) overflows
    s = LSEHead(2, 1, q=10.0).pool(maps)
    assert torch.isfinite(s).all()
    # the zeros contribute exp(-80000) = 0: s = 8000 + log(1/16)/10
    assert s.item() == pytest.approx(8000 + math.log(1 / 16) / 10, abs=1e-2)
    g = grad_of(LSEHead(2, 1, q=10.0).pool, maps)
    assert torch.isfinite(g).all()


def test_lse_gradient_is_softmax_weights():
    q = 0.7
    g = grad_of(LSEHead(2, 1, q=q).pool, RAMP)
    expected = torch.softmax(q * RAMP.flatten(), dim=0).view_as(RAMP)
    assert torch.allclose(g, expected, atol=1e-6)


# --- WILDCAT (Eq. 6) ------------------------------------------------------------------
def test_wildcat_one_pixel_no_alpha_is_maxpool():
    wild = WildcatHead(2, 1, modalities=3, kmax=1, kmin=1, alpha=0.0)
    assert wild.pool(RAMP).item() == MaxPoolHead(2, 1).pool(RAMP).item() == 10.0
    spike = WildcatHead(2, 1, kmax=1, alpha=0.0).pool(SPIKE).item()
    assert spike == 8.0


def test_wildcat_hand_values():
    # top-3: 10, 9, 8 -> mean 9; bottom-2: -5, -4 -> mean -4.5
    head = WildcatHead(2, 1, kmax=3, kmin=2, alpha=0.6)
    assert head.pool(RAMP).item() == pytest.approx(9 + 0.6 * -4.5)
    # fractions: 0.25 of 16 = 4 highest (10, 9, 8, 7 -> 8.5); kmin None = kmax
    head = WildcatHead(2, 1, kmax=0.25, kmin=None, alpha=1.0)
    assert head.pool(RAMP).item() == pytest.approx(8.5 + (-5 - 4 - 3 - 2) / 4)
    # kmin 0: no min term whatever alpha is
    assert WildcatHead(2, 1, kmax=3, kmin=0, alpha=0.6).pool(RAMP).item() == pytest.approx(9.0)


@pytest.mark.parametrize("alpha", [0.1, 0.6, 1.0])
def test_wildcat_alpha_term_counts(alpha):
    base = WildcatHead(2, 1, kmax=3, kmin=2, alpha=0.0).pool(RAMP).item()
    with_alpha = WildcatHead(2, 1, kmax=3, kmin=2, alpha=alpha).pool(RAMP).item()
    assert with_alpha - base == pytest.approx(alpha * -4.5)  # exactly α·mean of the k- lowest
    assert with_alpha != base


def test_wildcat_gradient_reaches_selected_pixels_only():
    head = WildcatHead(2, 1, kmax=3, kmin=2, alpha=0.6)
    g = grad_of(head.pool, RAMP)
    expected = torch.zeros_like(RAMP)
    expected[RAMP >= 8] = 1 / 3  # top-3
    expected[RAMP <= -4] = 0.6 / 2  # bottom-2
    assert torch.allclose(g, expected)


def test_wildcat_maps_are_mean_of_modalities():
    torch.manual_seed(0)
    head = WildcatHead(5, 2, modalities=3, kmax=0.5)
    feats = torch.randn(2, 5, 4, 4)
    logits, maps = head(feats)
    mods = head.conv(feats).view(2, 2, 3, 4, 4)
    assert torch.allclose(maps, mods.mean(2), atol=1e-6)
    assert torch.allclose(logits, head.pool(maps))
    assert logits.shape == (2, 2) and maps.shape == (2, 2, 4, 4)


def test_wildcat_dropout_only_in_training():
    torch.manual_seed(0)
    head = WildcatHead(2, 1, kmax=3, kmin=2, alpha=0.6, dropout=0.5)
    head.eval()
    assert head.pool(RAMP).item() == pytest.approx(9 - 0.6 * 4.5)
    head.train()
    outs = {round(head.pool(RAMP).item(), 5) for _ in range(20)}
    assert len(outs) > 1  # the map is dropped at random before scoring
    feats = torch.randn(1, 2, 4, 4)
    _, maps = head(feats)
    assert torch.equal(maps, head.class_maps(feats))  # the returned CAMs are never dropped


def test_resolve_k_forms():
    assert resolve_k(1, 16) == 1  # int: a count
    assert resolve_k(1.0, 16) == 16  # float: a fraction
    assert resolve_k(0.1, 16) == 2  # round(1.6)
    assert resolve_k(0.01, 16) == 1  # at least one position
    assert resolve_k(100, 16) == 16
    assert resolve_k(0, 16) == 0 and resolve_k(None, 16) == 0
    for bad in (1.5, -0.2, -1, True):
        with pytest.raises(ValueError):
            resolve_k(bad, 16)


# --- PRM (Eq. 5) ----------------------------------------------------------------------
def test_prm_single_peak_equals_peak():
    # an L1 cone: 7 at (1, 2), every other pixel has a higher neighbour
    ii, jj = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    cone = (7 - (ii - 1).abs() - (jj - 2).abs()).view(1, 1, 4, 4)
    head = PRMHead(2, 1, kernel=3)
    assert int(head.peaks(cone).sum()) == 1
    assert head.pool(cone).item() == 7.0


@pytest.mark.parametrize("kernel,expected", [(3, 7.5), (5, 7.5), (7, 9.0)])
def test_prm_multiple_peaks_mean(kernel, expected):
    # kernel 3 and 5: peaks 9 at (0,0) and 6 at (3,3) -> (9 + 6) / 2; kernel 7 sees both: only 9
    assert PRMHead(2, 1, kernel=kernel).pool(TWO_PEAKS).item() == expected


def test_prm_is_not_maxpool_then_gap():
    # 3×3 max-pool of TWO_PEAKS, rows: 9 9 7 5 / 9 9 7 5 / 7 7 6 6 / 5 5 6 6 -> mean 108/16
    mp = torch.nn.functional.max_pool2d(TWO_PEAKS, 3, stride=1, padding=1).mean().item()
    assert mp == 6.75
    assert PRMHead(2, 1, kernel=3).pool(TWO_PEAKS).item() == 7.5


def test_prm_gradient_reaches_peaks_only():
    g = grad_of(PRMHead(2, 1, kernel=3).pool, TWO_PEAKS)
    expected = torch.zeros_like(TWO_PEAKS)
    expected[0, 0, 0, 0] = expected[0, 0, 3, 3] = 0.5
    assert torch.equal(g, expected)


def test_prm_counts_one_peak_per_flat_plateau():
    # a 2×2 plateau of 9 (four local maxima of equal value) and a peak 6 at (3, 3): two peaks,
    # (9 + 6) / 2 (counting each plateau position would give (4·9 + 6) / 5 = 8.4)
    m = torch.tensor([[9.0, 9, 1, 0], [9, 9, 1, 0], [1, 1, 2, 1], [0, 0, 1, 6]]).view(1, 1, 4, 4)
    head = PRMHead(2, 1, kernel=3)
    assert head.peaks(m).sum().item() == 2 and head.pool(m).item() == 7.5
    g = grad_of(head.pool, m)
    expected = torch.zeros_like(m)
    expected[0, 0, 0, 0] = expected[0, 0, 3, 3] = 0.5  # the plateau's first position in raster order
    assert torch.equal(g, expected)
    # a U-shaped plateau (its arms are 2 apart) is one peak too; a second channel is independent
    ii, jj = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    u = torch.zeros(1, 2, 5, 5)
    u[0, 0] = -(ii + jj)  # a background without local maxima
    u[0, 0, :3, 0] = u[0, 0, 2, :3] = u[0, 0, :3, 2] = 5.0
    u[0, 1] = torch.arange(25.0).view(5, 5)  # a ramp: one peak at the bottom-right corner
    peaks = head.peaks(u)
    assert peaks[0, 0].sum().item() == 1 and bool(peaks[0, 0, 0, 0]) and peaks[0, 1].sum().item() == 1
    # kernel 1: every position is a local maximum; equal neighbours still form one plateau
    flat = torch.tensor([[1.0, 1.0, 2.0], [3.0, 1.0, 4.0]]).view(1, 1, 2, 3)
    assert PRMHead(2, 1, kernel=1).pool(flat).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    # a constant map is one plateau: its value
    assert PRMHead(2, 1, kernel=3).pool(torch.full((1, 1, 6, 7), -2.0)).item() == -2.0


def test_prm_rejects_even_kernel():
    with pytest.raises(ValueError, match="kernel"):
        PRMHead(2, 1, kernel=4)


# --- Deep MIL (Eqs. 7-9) -----------------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_deepmil_attention_sums_to_one_and_permutes(gated):
    torch.manual_seed(0)
    head = DeepMILHead(6, 3, mid_channels=8, gated=gated)
    feats = torch.randn(2, 6, 4, 4)
    scores, attn = head(feats)
    assert attn.shape == (2, 3, 4, 4) and scores.shape == (2, 3)
    assert (attn >= 0).all()
    assert torch.allclose(attn.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-6)
    perm = torch.randperm(16)
    feats_p = feats.flatten(2)[..., perm].view_as(feats)
    scores_p, attn_p = head(feats_p)
    assert torch.allclose(attn_p.flatten(2), attn.flatten(2)[..., perm], atol=1e-6)
    assert torch.allclose(scores_p, scores, atol=1e-5)


def test_deepmil_uniform_attention_is_gap():
    # w = 0: ψ is constant, attention is 1/16 everywhere, the bag is the mean feature and the
    # score equals GAP + the same linear layer (Eq. 2)
    torch.manual_seed(0)
    head = DeepMILHead(6, 3, mid_channels=8)
    torch.nn.init.zeros_(head.w.weight)
    torch.nn.init.zeros_(head.w.bias)
    gap = GAPHead(6, 3)
    gap.fc.load_state_dict(head.fc.state_dict())
    feats = torch.randn(2, 6, 4, 4)
    scores, attn = head(feats)
    assert torch.allclose(attn, torch.full_like(attn, 1 / 16))
    assert torch.allclose(scores, gap(feats)[0], atol=1e-5)


def test_deepmil_gated_uses_u():
    torch.manual_seed(0)
    plain = DeepMILHead(6, 2, mid_channels=4, gated=False)
    gated = DeepMILHead(6, 2, mid_channels=4, gated=True)
    assert plain.U is None and gated.U is not None
    gated.load_state_dict({**plain.state_dict(), **{k: v for k, v in gated.state_dict().items() if k.startswith("U.")}})
    feats = torch.randn(1, 6, 4, 4)
    # ψ2 = w·(tanh(Vf) ⊙ σ(Uf)) with U = 0, bias = 0: σ = 1/2 -> ψ2 = ψ1 / 2
    torch.nn.init.zeros_(gated.U.weight)
    torch.nn.init.zeros_(gated.U.bias)
    a_plain = plain.attention_logits(feats) - plain.w.bias[None, :, None, None]
    a_gated = gated.attention_logits(feats) - gated.w.bias[None, :, None, None]
    assert torch.allclose(a_gated, a_plain / 2, atol=1e-6)


# --- the family shares one interface ----------------------------------------------------
@pytest.mark.parametrize(
    "head",
    [
        GAPHead(6, 3),
        MaxPoolHead(6, 3),
        LSEHead(6, 3, q=2.0),
        WildcatHead(6, 3),
        PRMHead(6, 3, kernel=3),
        DeepMILHead(6, 3, mid_channels=4),
    ],
    ids=lambda h: type(h).__name__,
)
def test_head_interface(head):
    torch.manual_seed(0)
    logits, maps = head(torch.randn(2, 6, 5, 7))
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 5, 7)
    assert torch.isfinite(logits).all() and torch.isfinite(maps).all()
    assert head.in_channels == 6 and head.num_classes == 3
