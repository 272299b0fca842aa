"""Optimiser and LR-schedule factories (optim.name, sched.*), against torch's own schedulers."""

import math

import numpy as np
import pytest
import torch

from wsol.config import load_config
from wsol.engine.trainer import build_optimizer, build_scheduler, lr_factor
from wsol.methods.base import build_method


def _cfg(*sets):
    return load_config(None, ["model.method.name=cam", "optim.lr=0.1", "optim.head_lr_mult=10", "optim.epochs=10",
                              *sets])


def _method(cfg):
    return build_method(cfg.model.method, cfg.model.backbone, 2)


def _lrs(cfg, epochs):
    opt = build_optimizer(cfg, _method(cfg))
    sched = build_scheduler(cfg, opt)
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_default_is_constant_sgd_nesterov():
    cfg = _cfg()
    opt = build_optimizer(cfg, _method(cfg))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]  # backbone, head ×10
    assert build_scheduler(cfg, opt) is None


def test_step_schedule_equals_torch_steplr():
    cfg = _cfg("sched.name=step", "sched.step_size=3", "sched.gamma=0.5")
    ours = _lrs(cfg, 8)
    opt = build_optimizer(cfg, _method(cfg))
    ref = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    theirs = []
    for _ in range(8):
        theirs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        ref.step()
    assert np.allclose(ours, theirs, rtol=1e-12, atol=0)


def test_cosine_poly_multistep_warmup_and_floor():
    cos = _cfg("sched.name=cosine")
    assert lr_factor(cos, 0) == 1.0 and lr_factor(cos, 5) == pytest.approx(0.5) and lr_factor(cos, 10) == 0
    poly = _cfg("sched.name=poly", "sched.power=1.0")
    assert lr_factor(poly, 4) == pytest.approx(0.6)
    ms = _cfg("sched.name=multistep", "sched.milestones=[2, 5]", "sched.gamma=0.1")
    assert [round(lr_factor(ms, e), 6) for e in (0, 2, 4, 5, 9)] == [1, 0.1, 0.1, 0.01, 0.01]
    wu = _cfg("sched.name=cosine", "sched.warmup_epochs=2")
    assert lr_factor(wu, 0) == pytest.approx(1 / 3) and lr_factor(wu, 1) == pytest.approx(2 / 3)
    assert lr_factor(wu, 2) == 1.0
    floor = _cfg("sched.name=step", "sched.step_size=1", "sched.gamma=0.1", "sched.min_lr=1e-3")
    lrs = _lrs(floor, 5)
    assert lrs[-1] == pytest.approx([1e-3, 1e-3])  # both groups floored at min_lr
    assert math.isclose(lrs[1][0], 0.01)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family(name, cls):
    cfg = _cfg(f"optim.name={name}", "optim.betas=[0.8, 0.99]")
    opt = build_optimizer(cfg, _method(cfg))
    assert type(opt) is cls and opt.defaults["betas"] == (0.8, 0.99)


def test_strict_types_refuse_silent_coercion():
    from wsol.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.epochs"):
        _cfg("optim.epochs=true")
