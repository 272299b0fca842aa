"""The CAM-refinement methods (HaS, ACoL, SPG, ADL, CutMix, TS-CAM) against the Method
contract: one training step on a tiny batch gives finite named loss terms whose ``total`` is
their sum, backward reaches backbone and head, ``localize`` obeys the CAM contract, the
param groups cover every parameter once, a state-dict round trip reproduces the outputs,
the shipped configs hold the Params defaults, and the protocol backbones give maps of the
expected size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wsol.methods.acol  # noqa: F401  (the @register decorators register the methods)
import wsol.methods.adl  # noqa: F401
import wsol.methods.cutmix  # noqa: F401
import wsol.methods.has  # noqa: F401
import wsol.methods.spg  # noqa: F401
import wsol.methods.tscam  # noqa: F401
from wsol.cams import check_cams
from wsol.config import BackboneConfig, MethodConfig, load_yaml
from wsol.data.sample import Batch
from wsol.methods import TrainState, build_method
from wsol.methods.base import get_method_class

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = BackboneConfig(name="resnet18", cam_friendly=True)
SIZE = 64

CASES = {
    "has": ({"grid_size": 16, "drop_rate": 0.5}, {"ce", "total"}),
    "acol": ({"mid_channels": 16, "delta": 0.7}, {"ce_a", "ce_b", "total"}),
    "spg": ({"branch_channels": 16}, {"ce", "spg_b1", "spg_b2", "spg_c", "total"}),
    "adl": ({"drop_rate": 0.75, "gamma": 0.9}, {"ce", "total"}),
    "cutmix": ({"alpha": 1.0, "prob": 1.0}, {"ce", "total", "pasted_frac"}),
    "tscam": ({"arch": "deit_tiny_patch16_224", "drop_path_rate": 0.0}, {"ce", "total"}),
}
#: terms that are diagnostics, not part of ``total``
DIAGNOSTICS = {"pasted_frac"}


def build(name: str, backbone: BackboneConfig = BACKBONE, num_classes: int = 3):
    return build_method(MethodConfig(name=name, params=CASES[name][0]), backbone, num_classes)


def tiny_batch(size: int | tuple[int, int] = SIZE) -> Batch:
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(1)
    return Batch(images=torch.rand(2, 3, h, w, generator=g), labels=torch.tensor([0, 2]), image_ids=["a", "b"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_step_backward_localize(name):
    method = build(name)
    batch = tiny_batch()
    groups = method.param_groups(lr=0.01, head_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in method.parameters() if p.requires_grad)
    assert {g["name"] for g in groups} == {"backbone", "head"}
    opt = torch.optim.SGD(groups, lr=0.01)

    method.train()
    terms = method.training_step(batch, TrainState(epoch=0, step=0, num_epochs=1))
    assert set(terms) == CASES[name][1]
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    parts = [v for k, v in terms.items() if k not in DIAGNOSTICS | {"total"}]
    assert torch.allclose(terms["total"], torch.stack(parts).sum())
    assert terms["total"].item() > 0

    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    opt.zero_grad()
    terms["total"].backward()
    for g in groups:  # gradients reach both the pretrained part and the new layers
        grads = [p.grad for p in g["params"] if p.grad is not None]
        assert grads and all(torch.isfinite(x).all() for x in grads)
        assert any(x.abs().sum() > 0 for x in grads), g["name"]
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in method.named_parameters())

    method.eval()
    with torch.no_grad():
        out = method(batch.images)
        cams = method.localize(batch.images, batch.labels)
        cams_pred = method.localize(batch.images)
    assert out.logits.shape == (2, 3) and out.maps.shape[:2] == (2, 3)
    for c in (cams, cams_pred):
        assert c.shape == (2, SIZE, SIZE)
        check_cams(c)
        assert torch.allclose(c.flatten(1).amax(1), torch.ones(2))  # min-max normalised, not constant
        assert torch.allclose(c.flatten(1).amin(1), torch.zeros(2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip(name):
    a = build(name).eval()
    torch.manual_seed(123)  # a different random init
    b = build(name).eval()
    x = tiny_batch().images
    with torch.no_grad():
        assert not torch.allclose(a(x).logits, b(x).logits)
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.allclose(a(x).logits, b(x).logits, atol=1e-5)
        assert torch.allclose(a.localize(x, torch.tensor([1, 2])), b.localize(x, torch.tensor([1, 2])), atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_config_holds_the_defaults(name):
    data = load_yaml(ROOT / "src/wsol/configs/methods" / f"{name}.yaml")
    assert set(data) == {"model"} and data["model"]["method"]["name"] == name
    cls = get_method_class(name)
    assert cls.Params.model_validate(data["model"]["method"]["params"]) == cls.Params()
    for field in cls.Params.model_fields.values():  # every hyper-parameter is documented
        assert field.description


# SPG and ADL use backbone-specific units (taps, positions): always run; the others are the
# CAM network with a different training step or head (a few s each): slow
PROTOCOL = [
    pytest.param(name, backbone, marks=() if name in ("spg", "adl") else pytest.mark.slow)
    for name in ("has", "acol", "spg", "adl", "cutmix")
    for backbone in ("resnet50", "vgg16", "inception_v3")
]


@pytest.mark.parametrize("name,backbone", PROTOCOL)
def test_protocol_backbones(name, backbone):
    """The survey's CAM-friendly backbones: one training step and a contract CAM."""
    size = 96
    method = build(name, BackboneConfig(name=backbone, cam_friendly=True), num_classes=3)
    batch = tiny_batch(size)
    method.train()
    terms = method.training_step(batch, TrainState())
    assert set(terms) == CASES[name][1] and all(torch.isfinite(t) for t in terms.values())
    terms["total"].backward()
    method.eval()
    with torch.no_grad():
        out = method(batch.images)
        cams = method.localize(batch.images, batch.labels)
    if backbone != "inception_v3":  # (Inception's valid convolutions shrink the map a little more)
        assert out.maps.shape[-2:] == (size // method.backbone.stride,) * 2
    assert cams.shape == (2, size, size)
    check_cams(cams)
