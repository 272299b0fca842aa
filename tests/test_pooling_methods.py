"""Every spatial-pooling method trains one step on a tiny random set and its localize()
output meets the CAM contract; configs/methods/*.yaml load; bad params name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsol.cams import check_cams
from wsol.config import BackboneConfig, MethodConfig, load_config
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods import TrainState, available_methods, build_method
from wsol.nn.pooling import DeepMILHead, GAPHead, LSEHead, MaxPoolHead, PRMHead, WildcatHead

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = BackboneConfig(name="resnet18", cam_friendly=True)  # higher-resolution maps on tiny inputs
SIZE = 32

POOLED = {
    "cam": ({}, GAPHead),
    "max_pool": ({}, MaxPoolHead),
    "lse": ({"q": 3.0}, LSEHead),
    "wildcat": ({"modalities": 2, "kmax": 0.3, "kmin": 0.2, "alpha": 0.6, "dropout": 0.1}, WildcatHead),
    "prm": ({"kernel": 3}, PRMHead),
    "deepmil": ({"mid_channels": 16, "gated": True}, DeepMILHead),
}


def tiny_batch(n: int = 8, size: int = SIZE) -> Batch:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)  # images live in [0, 1]
    labels = torch.tensor([0, 1] * (n // 2))
    return Batch(images=images, labels=labels, image_ids=[str(i) for i in range(n)])


def test_all_pooling_methods_registered():
    assert set(POOLED) <= set(available_methods())


@pytest.mark.parametrize("name", sorted(POOLED))
def test_method_trains_one_step_and_localizes(name):
    torch.manual_seed(0)
    params, head_cls = POOLED[name]
    method = build_method(MethodConfig(name=name, params=params), BACKBONE, num_classes=2)
    assert isinstance(method.head, head_cls)
    batch = tiny_batch()
    opt = torch.optim.SGD(method.param_groups(lr=0.01, head_lr_mult=10.0), lr=0.01, momentum=0.9)
    head_before = [p.detach().clone() for p in method.head.parameters()]
    method.train()
    losses = method.training_step(batch, TrainState(epoch=0, step=0, num_epochs=1))
    assert {"ce", "total"} <= set(losses)
    assert torch.isfinite(losses["total"]) and losses["total"].item() > 0
    opt.zero_grad()
    losses["total"].backward()
    grads = [p.grad for p in method.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(head_before, method.head.parameters()))

    method.eval()
    with torch.no_grad():
        out = method(batch.images)
        h = SIZE // method.backbone.stride
        assert h >= 2  # a real spatial map, so the pooling has something to select
        assert out.logits.shape == (8, 2) and out.maps.shape == (8, 2, h, h)
        cams = method.localize(batch.images, batch.labels)
        cams_pred = method.localize(batch.images)
    assert cams.shape == (8, SIZE, SIZE) and cams_pred.shape == (8, SIZE, SIZE)
    check_cams(cams)
    check_cams(cams_pred)
    # the CAM is the target class's own map (upsampled, min-max): swapping the target changes it
    other = method.localize(batch.images, 1 - batch.labels)
    assert not torch.allclose(cams, other)


def test_deepmil_cam_is_attention_map():
    torch.manual_seed(0)
    method = build_method(MethodConfig(name="deepmil", params={"mid_channels": 8}), BACKBONE, num_classes=2).eval()
    images = tiny_batch(2).images
    with torch.no_grad():
        out = method(images)
    assert torch.allclose(out.maps.sum(dim=(2, 3)), torch.ones(2, 2), atol=1e-5)


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("lse", {"q": 0}, "q"),
        ("lse", {"q": "big"}, "q"),
        ("wildcat", {"kmax": 1.5}, "kmax"),
        ("wildcat", {"kmax": 0}, "kmax"),
        ("wildcat", {"kmin": -1}, "kmin"),
        ("wildcat", {"dropout": 1.0}, "dropout"),
        ("wildcat", {"modalities": 0}, "modalities"),
        ("prm", {"kernel": 4}, "kernel"),
        ("deepmil", {"mid_channels": 0}, "mid_channels"),
        ("deepmil", {"gate": True}, "gate"),
        ("max_pool", {"k": 1}, "k"),
    ],
)
def test_bad_params_name_the_field(name, params, field):
    with pytest.raises(ConfigError) as err:
        build_method(MethodConfig(name=name, params=params), BACKBONE, num_classes=2)
    msg = str(err.value)
    assert f"model.method.params ({name})" in msg
    assert f"{field}:" in msg


def test_wildcat_k_count_vs_fraction():
    m1 = build_method(MethodConfig(name="wildcat", params={"kmax": 1, "alpha": 0.0}), BACKBONE, 2)
    m2 = build_method(MethodConfig(name="wildcat", params={"kmax": 1.0, "kmin": 0}), BACKBONE, 2)
    assert m1.head.kmax == 1 and isinstance(m1.head.kmax, int)
    assert m2.head.kmax == 1.0 and isinstance(m2.head.kmax, float) and m2.head.kmin == 0


EXPECTED_CONFIGS = {
    "cam.yaml": ("cam", {}),
    "max_pool.yaml": ("max_pool", {}),
    "lse.yaml": ("lse", {"q": 5.0}),
    "prm.yaml": ("prm", {"kernel": 3}),
    "deepmil.yaml": ("deepmil", {"mid_channels": 128, "gated": False}),
    "deepmil-gated.yaml": ("deepmil", {"mid_channels": 128, "gated": True}),
    "wildcat.yaml": ("wildcat", {"modalities": 4, "kmax": 0.1, "kmin": 0.1, "alpha": 0.6, "dropout": 0.0}),
    # max-min-uncertainty §3.3, GlaS and CAMELYON16; min-max-entropy B.2
    "wildcat-glas.yaml": ("wildcat", {"modalities": 5, "kmax": 0.3, "kmin": 0, "dropout": 0.1}),
    "wildcat-camelyon.yaml": ("wildcat", {"modalities": 4, "kmax": 0.1, "kmin": 0.1, "alpha": 0.6}),
    "wildcat-minmaxent.yaml": ("wildcat", {"modalities": 5, "kmax": 0.09, "kmin": 0.09, "alpha": 0.0}),
}


@pytest.mark.parametrize("fname", sorted(EXPECTED_CONFIGS))
def test_method_configs_load_with_paper_settings(fname):
    cfg = load_config(ROOT / "configs" / "methods" / fname)
    name, expected = EXPECTED_CONFIGS[fname]
    assert cfg.model.method.name == name
    method = build_method(cfg.model.method, BackboneConfig(name="resnet18"), num_classes=2)
    dumped = method.params.model_dump()
    for k, v in expected.items():
        assert dumped[k] == v, (fname, k)
