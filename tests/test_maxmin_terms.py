"""MAXMIN loss terms (Eq. 7 + the localizer's cross-entropy) and mask computation (Eq. 12)
against hand computations on a 2-class, 4×4 example."""

import math

import pytest
import torch

from wsol.losses import absolute_size_constraint
from wsol.methods.maxmin import foreground_map, maxmin_terms, pseudo_binary

# 4 pixels at 1, 4 at 0.5, 8 at 0: s+ = 6/16 = 0.375, s- = 0.625
MASK = torch.tensor(
    [[1.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0]], dtype=torch.float64
)[None]
LABELS = torch.tensor([0])
P34 = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # softmax = (3/4, 1/4)
P14 = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # softmax = (1/4, 3/4)

CE_34 = 0.2876820724517809  # -ln 0.75
CE_14 = 1.3862943611198906  # -ln 0.25
H_34 = 0.5623351446188083  # entropy of (3/4, 1/4)
SEM_34 = 0.8369882167858358  # -(ln 0.75 + ln 0.25)/2
ASC_FG = 0.19616582060367177  # -(1/5)·ln 0.375
ASC_BG = 0.09400072584914713  # -(1/5)·ln 0.625


def test_full_eem_terms_by_hand():
    terms = maxmin_terms(LABELS, P34, P34, P14, MASK, t=5.0, regularizer="eem", reg_weight=0.1)
    assert terms["fg_ce"].item() == pytest.approx(CE_34)  # H(p, p̂+), Eq. 3
    assert terms["bg_reg"].item() == pytest.approx(-0.1 * H_34)  # λ·(-H(p̂-)), Eq. 8
    assert terms["size_fg"].item() == pytest.approx(ASC_FG)  # Eq. 7 barrier on s+
    assert terms["size_bg"].item() == pytest.approx(ASC_BG)
    assert terms["loc_ce"].item() == pytest.approx(CE_14)  # H(p, p̂_s)
    assert terms["total"].item() == pytest.approx(CE_34 - 0.1 * H_34 + ASC_FG + ASC_BG + CE_14)
    assert terms["fg_size"].item() == pytest.approx(0.375)


def test_sem_and_ablation_variants():
    sem = maxmin_terms(LABELS, P34, P34, P14, MASK, t=5.0, regularizer="sem", reg_weight=0.1)
    assert sem["bg_reg"].item() == pytest.approx(0.1 * SEM_34)  # λ·H(q, p̂-), Eq. 9
    no_asc = maxmin_terms(LABELS, P34, P34, P14, MASK, t=5.0, regularizer="sem", size_constraint=False)
    assert set(no_asc) == {"fg_ce", "bg_reg", "loc_ce", "total", "fg_size"}
    fg_only = maxmin_terms(LABELS, P34, None, P14, MASK, t=5.0, regularizer="none", size_constraint=False)
    assert set(fg_only) == {"fg_ce", "loc_ce", "total", "fg_size"}
    assert fg_only["total"].item() == pytest.approx(CE_34 + CE_14)
    with pytest.raises(ValueError, match="X−"):
        maxmin_terms(LABELS, P34, None, P14, MASK, t=5.0, regularizer="eem")


def test_size_terms_follow_t_and_push_both_regions():
    m = MASK.clone().requires_grad_(True)
    t10 = maxmin_terms(LABELS, P34, P34, P14, m, t=10.0, regularizer="none")
    assert t10["size_fg"].item() == pytest.approx(ASC_FG / 2)  # -(1/10)·ln s+
    fg_t, bg_t = absolute_size_constraint(m, 10.0)
    (g_fg,) = torch.autograd.grad(fg_t, m)
    (g_bg,) = torch.autograd.grad(bg_t, m)
    assert (g_fg < 0).all() and (g_bg > 0).all()  # M+ pushed up by one, M- = 1-M+ by the other


def test_foreground_map_and_pseudo_binary_by_hand():
    maps = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 8.0]]]], dtype=torch.float64)
    # posterior (3/4, 1/4): 0.75·map0 + 0.25·map1 = [[3, 0], [0, 2]] -> min-max [[1, 0], [0, 2/3]]
    fg = foreground_map(maps, P34, (2, 2))
    assert torch.allclose(fg, torch.tensor([[[1.0, 0.0], [0.0, 2.0 / 3.0]]], dtype=torch.float64))
    mask = pseudo_binary(fg, omega=5.0, sigma=0.15)
    expected = torch.sigmoid(5.0 * (torch.tensor([[[1.0, 0.0], [0.0, 2.0 / 3.0]]], dtype=torch.float64) - 0.15))
    assert torch.allclose(mask, expected)
    assert mask[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-4.25)))
    # gradients reach the localizer's logits (the differentiable class selection)
    z = P34.clone().requires_grad_(True)
    pseudo_binary(foreground_map(maps, z, (4, 4)), 5.0, 0.15).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_foreground_map_is_per_image():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    maps[1] = maps[1] * 50 + 7  # very different range in the second image
    logits = torch.randn(2, 2, generator=g, dtype=torch.float64)
    both = foreground_map(maps, logits, (12, 12))
    alone = torch.cat([foreground_map(maps[i : i + 1], logits[i : i + 1], (12, 12)) for i in range(2)])
    assert torch.allclose(both, alone)
    assert both.amin(dim=(1, 2)).tolist() == [0.0, 0.0] and both.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
