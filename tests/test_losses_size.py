"""Region sizes (Eqs. 10-11), absolute size constraints (Eq. 7) and Kervadec's quadratic
size penalty, on a 4×4 foreground mask worked out by hand."""

import math

import pytest
import torch

from wsol.losses import absolute_size_constraint, region_size, size_bounds_penalty, size_lower_barrier

# 4 pixels at 1, 4 at 0.5, 8 at 0: s+ = 6 (6/16 = 0.375), s- = 10 (0.625)
FG = torch.tensor(
    [[1.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0]], dtype=torch.float64
)[None]


def test_region_size_hand():
    assert region_size(FG, normalize=False).tolist() == [6.0]
    assert region_size(1 - FG, normalize=False).tolist() == [10.0]
    assert region_size(FG).tolist() == [0.375]
    assert region_size(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError):
        region_size(torch.ones(4))


def test_asc_hand_values():
    # t = 5: both sizes above 1/t² = 0.04, so ψ_5(-s) = -(1/5)·ln s
    fg_t, bg_t = absolute_size_constraint(FG, t=5.0)
    assert fg_t.item() == pytest.approx(-0.2 * math.log(0.375))  # 0.1961658
    assert bg_t.item() == pytest.approx(-0.2 * math.log(0.625))  # 0.0940007
    # un-normalised sizes (pixel counts) shift each term by the constant (1/t)·ln|Ω|
    fg_c, bg_c = absolute_size_constraint(FG, t=5.0, normalize=False)
    assert fg_c.item() == pytest.approx(-0.2 * math.log(6.0))
    assert (fg_t - fg_c).item() == pytest.approx(0.2 * math.log(16.0))
    assert (bg_t - bg_c).item() == pytest.approx(0.2 * math.log(16.0))


def test_asc_gradients_push_both_regions_to_grow():
    fg = FG.clone().requires_grad_(True)
    fg_t, bg_t = absolute_size_constraint(fg, t=5.0)
    (g_fg,) = torch.autograd.grad(fg_t, fg)
    (g_bg,) = torch.autograd.grad(bg_t, fg)
    # d/dM+(z) of -(1/t)·ln(s+/16) = -1/(t·s+·16) = -1/(5·0.375·16): descent grows the foreground
    assert torch.allclose(g_fg, torch.full_like(g_fg, -1.0 / (5 * 0.375 * 16)))
    # the background term pushes M+ down, i.e. grows M- = 1 - M+
    assert torch.allclose(g_bg, torch.full_like(g_bg, 1.0 / (5 * 0.625 * 16)))
    # together: the smaller region wins (here the foreground grows)
    assert ((g_fg + g_bg) < 0).all()


def test_asc_empty_region_finite_linear_extension():
    fg = torch.zeros(1, 4, 4, dtype=torch.float64, requires_grad=True)
    fg_t, bg_t = absolute_size_constraint(fg, t=5.0)
    # ψ_5(0) = -(1/5)·ln(1/25) + 1/5 ; ψ_5(-1) = 0
    assert fg_t.item() == pytest.approx(0.2 * math.log(25.0) + 0.2)
    assert bg_t.item() == pytest.approx(0.0)
    (g,) = torch.autograd.grad(fg_t + bg_t, fg)
    assert torch.isfinite(g).all() and (g < 0).all()
    # foreground on the linear branch: dψ_5(-s+)/dM+(z) = -t/16; background (s- = 1, log
    # branch): d[-(1/t)·ln s-]/dM+(z) = +1/(t·1·16)
    assert g[0, 0, 0].item() == pytest.approx(-5.0 / 16 + 1.0 / (5 * 16))


def test_size_lower_barrier_bound_and_reduction():
    s = torch.tensor([0.5, 0.3], dtype=torch.float64)
    v = size_lower_barrier(s, t=2.0, lower=0.25, reduction="none")
    # ψ_2(0.25-0.5) = -(1/2)·ln(0.25) ; ψ_2(-0.05): linear branch 2·(-0.05) - (1/2)·ln(1/4) + 1/2
    assert v[0].item() == pytest.approx(-0.5 * math.log(0.25))
    assert v[1].item() == pytest.approx(-0.1 + 0.5 * math.log(4.0) + 0.5)


def test_size_bounds_penalty_hand():
    sizes = torch.tensor([0.0, 3.0, 10.0, 20.0])
    lower = torch.tensor([1.0, 1.0, 0.0, 1.0])
    upper = torch.tensor([16.0, 16.0, 0.0, 16.0])
    v = size_bounds_penalty(sizes, lower, upper, reduction="none")
    assert v.tolist() == [1.0, 0.0, 100.0, 16.0]
    assert size_bounds_penalty(sizes, 1.0).tolist() == pytest.approx(0.25)  # only the empty one, mean
    with pytest.raises(ValueError):
        size_bounds_penalty(sizes, 2.0, 1.0)
