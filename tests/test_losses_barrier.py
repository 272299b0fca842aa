"""Extended log-barrier ψ_t (Kervadec et al. 2019) and its epoch schedule."""

import math

import pytest
import torch

from wsol.losses import BarrierSchedule, extended_log_barrier


def psi(z: float, t: float) -> float:
    return extended_log_barrier(torch.tensor([z], dtype=torch.float64), t).item()


def test_hand_values_t2():
    # t = 2: threshold -1/t² = -0.25; log branch -(1/2)·ln(-z); linear 2z - (1/2)·ln(1/4) + 1/2
    assert psi(-1.0, 2.0) == pytest.approx(0.0)
    assert psi(-0.5, 2.0) == pytest.approx(-0.5 * math.log(0.5))  # 0.3465736
    assert psi(-0.25, 2.0) == pytest.approx(math.log(2.0))  # (2/t)·ln t
    assert psi(0.0, 2.0) == pytest.approx(math.log(2.0) + 0.5)
    assert psi(1.0, 2.0) == pytest.approx(math.log(2.0) + 2.5)


@pytest.mark.parametrize("t", [1.0, 5.0, 10.0, 30.0])
def test_continuous_with_continuous_derivative_at_switch(t):
    thr = -1.0 / t**2
    eps = 1e-9
    z = torch.tensor([thr - eps, thr, thr + eps], dtype=torch.float64, requires_grad=True)
    v = extended_log_barrier(z, t)
    (g,) = torch.autograd.grad(v.sum(), z)
    assert v[0].item() == pytest.approx(v[2].item(), abs=1e-6)
    assert v[1].item() == pytest.approx(2.0 / t * math.log(t))
    # derivative of the log branch -1/(t z) equals the linear slope t at the switch
    assert g[0].item() == pytest.approx(t, rel=1e-6)
    assert g[2].item() == pytest.approx(t)


def test_monotone_finite_everywhere_and_grad_no_nan():
    z = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    v = extended_log_barrier(z, 5.0)
    (g,) = torch.autograd.grad(v.sum(), z)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()
    assert (v[1:] > v[:-1]).all()  # strictly increasing: infeasible z costs more
    assert (g > 0).all()
    with pytest.raises(ValueError):
        extended_log_barrier(z, 0.0)


def test_schedule_paper_settings():
    glas = BarrierSchedule(t0=5.0, factor=1.01, t_max=10.0)
    assert glas.t_at(0) == 5.0
    assert glas.t_at(1) == pytest.approx(5.05)
    assert glas.t_at(69) == pytest.approx(5 * 1.01**69)  # 9.934, still below t_max
    assert glas.t_at(70) == 10.0  # 5·1.01^70 = 10.03 -> capped
    assert glas.t_at(10**6) == 10.0  # no overflow
    cam16 = BarrierSchedule(t0=10.0, factor=1.1, t_max=30.0)
    assert cam16.t_at(11) == pytest.approx(10 * 1.1**11)  # 28.53
    assert cam16.t_at(12) == 30.0
    for bad in (dict(t0=0.0), dict(factor=0.9), dict(t0=5.0, t_max=1.0)):
        with pytest.raises(ValueError):
            BarrierSchedule(**bad)
