"""The contract test: runs over every registered method, extractor, dataset, backbone and
selection criterion, so a new entry is tested the moment it is registered.

Methods: built with their default ``Params`` (plus ``contract_params`` when a method
declares it), one training step on a tiny batch gives finite named terms incl. ``total``
and gradients, ``localize`` obeys the CAM contract, and a state-dict round trip gives the
same CAMs."""

from __future__ import annotations

import math

import pytest
import torch

from wsol.cams import select_targets
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import collate
from wsol.methods import METHODS
from wsol.methods.base import TrainState, build_method

SIZE = 64


def _batch(n: int = 2, classes: int = 2):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        img = torch.rand(3, SIZE, SIZE, generator=g)
        mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
        mask[16:48, 16:48] = 1
        samples.append({"image": img, "label": i % classes, "image_id": f"im{i}", "mask": mask,
                        "boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]])})
    return collate(samples)


def _check_cam(cams: torch.Tensor, n: int) -> None:
    assert cams.shape == (n, SIZE, SIZE)
    assert torch.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1


def _build(name: str, classes: int = 2):
    cls = METHODS.get(name)
    params = dict(getattr(cls, "contract_params", {}) or {})
    return build_method(MethodConfig(name=name, params=params), BackboneConfig(name="resnet18"), classes)


@pytest.mark.parametrize("name", METHODS.names())
def test_contract_method(name):
    torch.manual_seed(0)
    method = _build(name)
    batch = _batch()
    method.train()
    method.on_epoch_start(0)
    for p in method.parameters():
        p.grad = None
    terms = method.training_step(batch, TrainState(epoch=0, step=0, num_epochs=1))
    assert "total" in terms
    for k, v in terms.items():
        assert v.dim() == 0 and math.isfinite(float(v.detach())), (k, v)
    if terms["total"].requires_grad:
        terms["total"].backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "a training step must produce gradients"
    method.eval()
    with torch.no_grad():
        out = method(batch.images)
        assert out.logits.shape == (2, 2)
        cams = method.localize(batch.images, batch.labels)
        _check_cam(cams, 2)
        _check_cam(method.localize(batch.images), 2)  # default target: the prediction
    # state-dict round trip (fresh instance, same CAMs)
    torch.manual_seed(1)
    again = _build(name)
    again.load_state_dict(method.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.localize(batch.images, batch.labels), cams)
    assert method.binary_threshold is None or 0 < float(method.binary_threshold) < 1


def _extractor_names():
    from wsol.explain.registry import EXTRACTORS

    return EXTRACTORS.names()


@pytest.mark.parametrize("name", _extractor_names())
def test_contract_extractor(name):
    from wsol.explain.registry import build_extractor

    torch.manual_seed(0)
    method = _build("cam")
    method.eval()
    batch = _batch()
    # the score family runs one forward per channel (×samples): keep the top 8 channels
    fast = {"scorecam": {"top_k": 8}, "ablationcam": {"top_k": 8}, "sscam": {"top_k": 8, "n_samples": 2},
            "iscam": {"top_k": 8, "n_samples": 2}}
    ex = build_extractor(name, method, "backbone.layer4", **fast.get(name, {}))
    cams = ex(batch.images, batch.labels)
    _check_cam(cams, 2)
    assert not any(m._forward_hooks or m._backward_hooks for m in method.modules()), "hooks left behind"


def test_contract_every_registry_entry_resolves():
    """Every lazy table line imports and names the right kind of object."""
    from wsol.data.registry import DATASETS, EMBEDDED
    from wsol.engine.selection import SELECTION
    from wsol.explain.registry import EXTRACTORS
    from wsol.methods.base import Method
    from wsol.nn.backbones import BACKBONES

    for name in METHODS.names():
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name
    for name in EXTRACTORS.names():
        assert callable(EXTRACTORS.get(name))
    for name in DATASETS.names():
        assert DATASETS.get(name).name == name
    for name in EMBEDDED.names():
        assert name in DATASETS, f"embedded set {name} has no reader"
        EMBEDDED.get(name)
    for name in BACKBONES.names():
        BACKBONES.get(name)
    for name in SELECTION.names():
        assert SELECTION.get(name).name == name


def test_contract_select_targets_is_the_one_copy():
    logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    assert select_targets(logits, None).tolist() == [1, 0]
    assert select_targets(logits, torch.tensor([0, 1])).tolist() == [0, 1]


# methods that run on the protocol's CAM-friendly VGG-16 / Inception-v3 (two-stage methods need a
# trained run and are covered by their own tests; TS-CAM has its own DeiT)
PROTOCOL_BACKBONE_METHODS = ["cam", "has", "acol", "spg", "adl", "cutmix", "wildcat", "maxmin", "minmax_entropy",
                             "deepmil", "prm", "pn", "erase", "unet"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "inception_v3"])
@pytest.mark.parametrize("name", PROTOCOL_BACKBONE_METHODS)
def test_method_on_protocol_backbones(name, backbone):
    """A training step and the CAM contract on wsolevaluation's VGG-16 (conv6) and InceptionCam."""
    torch.manual_seed(0)
    method = build_method(MethodConfig(name=name), BackboneConfig(name=backbone), 2).train()
    images = torch.rand(2, 3, 112, 112)
    from wsol.data.sample import Batch

    batch = Batch(images=images, labels=torch.tensor([0, 1]), image_ids=["a", "b"])
    method.on_epoch_start(0)
    terms = method.training_step(batch, TrainState())
    assert math.isfinite(float(terms["total"].detach()))
    if terms["total"].requires_grad:
        terms["total"].backward()
    method.eval()
    with torch.no_grad():
        cams = method.localize(images, batch.labels)
    assert cams.shape == (2, 112, 112) and float(cams.min()) >= 0 and float(cams.max()) <= 1
