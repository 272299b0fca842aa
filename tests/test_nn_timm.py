"""timm models as backbones (``timm:<name>``), on timm's tiny ``test_*`` models: the stages
and their features equal timm's own ``features_only`` model, local weight files (classifier
ignored), output_stride for CAM-friendly maps, decoders and a method on top, and the errors
(unknown name, transformer, missing timm)."""

from __future__ import annotations

import sys

import pytest
import torch

from wsol.config import BackboneConfig, MethodConfig
from wsol.errors import ConfigError
from wsol.nn.backbones import BACKBONES, build_backbone

timm = pytest.importorskip("timm")


def _timm_features(name: str, state: dict[str, torch.Tensor], **kw):
    """timm's own features_only model with the given weights (the reference)."""
    ref = timm.create_model(name, pretrained=False, features_only=True, **kw).eval()
    own = ref.state_dict()
    # FeatureListNet renames 'a.b' children to 'a_b' when it flattens; same tensors in order
    src = [v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier.", "conv_head.", "bn2."))]
    assert len(src) >= len(own)
    ref.load_state_dict({k: v for k, v in zip(own, src)})
    return ref


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet"])
def test_timm_stages_equal_timms_features_only_model(name):
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name=f"timm:{name}", cam_friendly=False)).eval()
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    assert bb.stage_names == info.module_name()
    assert bb.stage_channels == info.channels() and bb.stage_strides == info.reduction()
    assert (bb.out_channels, bb.stride, bb.family) == (info.channels()[-1], info.reduction()[-1], "timm")
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    ref = _timm_features(name, bb.state_dict())
    x = torch.rand(2, 3, 64, 64)  # wsol images live in [0, 1]; the backbone normalises them
    with torch.no_grad():
        ours = bb.forward_stages(x)
        theirs = ref((x - mean) / std)
        assert torch.equal(bb(x), ours[-1])
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_timm_weights_from_a_local_file_only_classifier_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    torch.manual_seed(1)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=7)  # another head size
    torch.save(src.state_dict(), tmp_path / "w.pth")
    bb = build_backbone(BackboneConfig(name="timm:test_resnet", weights=str(tmp_path / "w.pth"), cam_friendly=False))
    theirs = src.state_dict()
    ours = bb.state_dict()
    assert len(ours) > 10 and all(torch.equal(v, theirs[k]) for k, v in ours.items())  # same names, same tensors
    with pytest.raises(ConfigError, match="no torchvision weights"):
        build_backbone(BackboneConfig(name="timm:test_resnet", weights="IMAGENET1K_V1"))


def test_timm_cam_friendly_is_output_stride_8_and_decoders_work():
    from wsol.nn.decoders import UNetDecoder

    bb = build_backbone(BackboneConfig(name="timm:test_resnet", cam_friendly=True)).eval()
    assert bb.stage_strides == [2, 4, 8, 8, 8]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert bb(x).shape[-2:] == (8, 8)
        dec = UNetDecoder.for_backbone(bb, out_channels=2).eval()
        assert dec(bb.forward_stages(x), (64, 64)).shape == (1, 2, 64, 64)


def test_timm_backbone_under_a_wsol_method():
    from wsol.cams import check_cams
    from wsol.config import validate_plugins
    from wsol.methods import build_method

    method = build_method(MethodConfig(name="cam"), BackboneConfig(name="timm:test_resnet"), 3).eval()
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        cams = method.localize(images, torch.tensor([0, 2]))
    check_cams(cams)
    from wsol.config import RunConfig

    cfg = RunConfig.model_validate({"model": {"backbone": {"name": "timm:test_resnet"}}})
    validate_plugins(cfg)  # config validation resolves the prefix rule


def test_timm_names_and_errors(monkeypatch):
    assert "timm:test_resnet" in BACKBONES and "timm:" in BACKBONES and "nope:x" not in BACKBONES
    assert BACKBONES.get("timm:test_resnet") is BACKBONES.get("timm:test_resnet")  # resolved once
    assert "timm:test_resnet" not in BACKBONES.names()  # listing shows the named entries
    with pytest.raises(ConfigError, match=r"timm has no model 'test_resnt'.*test_resnet"):
        BACKBONES.get("timm:test_resnt")
    with pytest.raises(ConfigError, match="names no model"):
        BACKBONES.get("timm:")
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet7'.*or timm:<name>"):
        BACKBONES.get("resnet7")
    with pytest.raises(ConfigError, match="FeatureGetterNet"):
        build_backbone(BackboneConfig(name="timm:test_vit", cam_friendly=False))
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"pip install 'wsol\[timm\]'"):
        BACKBONES.get("timm:no_test_resolves_this_name")  # (resolved names are cached per process)
