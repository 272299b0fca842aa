"""ADL: identity in eval(); in train() the drop mask zeroes the positions whose channel-mean
attention is >= γ·max, the importance map multiplies by sigmoid(attention); the layers act
after the chosen backbone units; walking the units is the backbone's forward."""

from __future__ import annotations

import pytest
import torch

from wsol.config import BackboneConfig, MethodConfig
from wsol.errors import ConfigError
from wsol.methods import build_method
from wsol.methods.adl import AttentionDropout, default_positions, run_units, trunk_units
from wsol.nn.backbones import FeatureBackbone, build_backbone


def features() -> torch.Tensor:
    # 2 channels on a 2×2 map; channel means [[1, 2], [3, 4]] (max 4)
    c0 = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    c1 = torch.tensor([[2.0, 3.0], [4.0, 5.0]])
    return torch.stack([c0, c1])[None]


def test_identity_in_eval():
    x = torch.randn(2, 4, 5, 5)
    adl = AttentionDropout(drop_rate=1.0, gamma=0.5).eval()
    assert adl(x) is x


def test_drop_mask_zeroes_the_right_positions():
    x = features()
    out = AttentionDropout(drop_rate=1.0, gamma=0.75).train()(x)  # threshold 0.75·4 = 3
    keep = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # means 3 and 4 are >= 3: dropped
    assert torch.equal(out, x * keep)
    out = AttentionDropout(drop_rate=1.0, gamma=0.9).train()(x)  # threshold 3.6: only the peak
    assert torch.equal(out, x * torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_importance_map_multiplies_by_sigmoid_attention():
    x = features()
    out = AttentionDropout(drop_rate=0.0, gamma=0.75).train()(x)
    assert torch.allclose(out, x * torch.sigmoid(torch.tensor([[1.0, 2.0], [3.0, 4.0]])))


def test_choice_is_one_draw_per_forward():
    x = features()
    adl = AttentionDropout(drop_rate=0.5, gamma=0.75).train()
    drop = x * torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        use_drop = float(torch.rand(())) < 0.5
        torch.manual_seed(seed)
        out = adl(x)
        assert torch.equal(out, drop) if use_drop else torch.allclose(out, x * torch.sigmoid(x.mean(1, keepdim=True)))
        seen.add(use_drop)
    assert seen == {True, False}


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "inception_v3"])
def test_units_in_order_are_the_backbone_forward_and_taps_see_them(name):
    bb = build_backbone(BackboneConfig(name=name, cam_friendly=True)).eval()
    x = torch.rand(1, 3, 96, 96)
    units = trunk_units(bb)
    with torch.no_grad():
        h, outs = bb.normalize(x), {}
        for unit, mod in units:  # the units run one after the other by hand
            h = mod(h)
            outs[unit] = h.clone()
        y, taps = run_units(bb, x, taps=[u for u, _ in units])
    assert torch.equal(y, bb(x)) and torch.equal(h, y)
    assert set(taps) == set(outs) and all(torch.equal(taps[u], outs[u]) for u in outs)


def test_layer_hooks_still_fire():
    """An extractor's hook on backbone.layer4 sees ADL's training forward."""
    params = {"drop_rate": 1.0, "gamma": 0.8}
    method = build_method(MethodConfig(name="adl", params=params), BackboneConfig(name="resnet18"), 3).train()
    seen = []
    handle = method.backbone.layer4.register_forward_hook(lambda m, a, out: seen.append(out))
    out = method(torch.rand(2, 3, 64, 64))
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out.extras["features"])
    assert all(not m._forward_hooks for m in method.modules())  # nothing left behind


def test_method_applies_adl_after_the_positions_in_train_only():
    params = {"drop_rate": 1.0, "gamma": 0.8, "positions": ["layer3.0", "layer4.1"]}
    method = build_method(
        MethodConfig(name="adl", params=params), BackboneConfig(name="resnet18", cam_friendly=True), 3
    )
    x = torch.rand(2, 3, 64, 64)
    method.eval()
    with torch.no_grad():
        plain = method.head(method.backbone(x))[0]
        assert torch.equal(method(x).logits, plain)  # eval: the CAM network untouched

    method.train()  # BN on batch statistics: the same trunk outputs on every call
    with torch.no_grad():
        out = method(x)
        drop = AttentionDropout(1.0, 0.8).train()
        pre, _ = run_units(method.backbone, x, after={"layer3.0": drop}, taps=())  # last unit without ADL
        a = pre.mean(1, keepdim=True)
        dropped = a >= 0.8 * a.flatten(1).max(1).values.view(-1, 1, 1, 1)
        assert dropped.any() and (~dropped).any()
        assert torch.equal(out.extras["features"], pre * (~dropped))
        assert (out.extras["features"][dropped.expand_as(pre)] == 0).all()
        no_adl, _ = run_units(method.backbone, x)
        assert not torch.allclose(no_adl, out.extras["features"])


def test_default_positions_and_errors():
    bb = BackboneConfig(name="resnet18", cam_friendly=True)
    assert build_method(MethodConfig(name="adl"), bb, 2).positions == ("layer3.0", "layer4.0", "layer4.1")
    r34 = build_backbone(BackboneConfig(name="resnet34"))  # ResNets by analogy with ResNet-50
    assert default_positions("resnet34", r34) == ("layer3.0", "layer4.0", "layer4.2")
    assert default_positions("tiny", FeatureBackbone({"conv": torch.nn.Conv2d(3, 4, 1)}, 4, 1)) is None
    with pytest.raises(ConfigError, match="not a unit of this backbone.*layer4.1"):
        build_method(MethodConfig(name="adl", params={"positions": ["layer9"]}), bb, 2)
    with pytest.raises(ConfigError, match="model.method.params"):
        build_method(MethodConfig(name="adl", params={"gamma": 1.5}), bb, 2)
