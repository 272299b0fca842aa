import pytest
import torch

from wsol.cams import minmax_normalize, to_cam
from wsol.config import BackboneConfig, MethodConfig
from wsol.errors import ConfigError, MetricError
from wsol.methods.base import build_method
from wsol.nn.backbones import build_backbone
from wsol.nn.pooling import GAPHead


def test_gap_head_cam_equals_manual_weighted_sum():
    head = GAPHead(5, 3)
    feats = torch.randn(2, 5, 4, 4)
    logits, maps = head(feats)
    w, b = head.fc.weight, head.fc.bias
    for c in range(3):
        manual = sum(w[c, k] * feats[:, k] for k in range(5)) + b[c]  # survey Eq. 3
        torch.testing.assert_close(maps[:, c], manual)
    torch.testing.assert_close(logits, head.fc(feats.mean(dim=(2, 3))))  # Eq. 2: GAP then linear


def test_cam_method_localize_is_the_target_class_map():
    m = build_method(MethodConfig(name="cam"), BackboneConfig(name="resnet18"), 3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        cams = m.localize(x, torch.tensor([2, 0]))
    assert cams.shape == (2, 64, 64) and cams.min() >= 0 and cams.max() <= 1
    expected = to_cam(out.maps[[0, 1], [2, 0]], (64, 64))
    torch.testing.assert_close(cams, expected)
    # the class map is Σ_k W_ck F_k of the backbone's features
    f = out.extras["features"]
    manual = torch.einsum("k,bkhw->bhw", m.head.fc.weight[2], f) + m.head.fc.bias[2]
    torch.testing.assert_close(out.maps[:, 2], manual, rtol=1e-4, atol=1e-5)


def test_minmax_constant_map_is_zero_and_range():
    maps = torch.stack([torch.full((3, 3), 7.0), torch.arange(9.0).view(3, 3)])
    out = minmax_normalize(maps)
    assert out[0].abs().sum() == 0
    assert out[1].min() == 0 and out[1].max() == 1 and out[1][0, 1] == pytest.approx(1 / 8)


def test_to_cam_rejects_nan():
    with pytest.raises(MetricError, match="NaN"):
        to_cam(torch.tensor([[[0.0, float("nan")]]]))


@pytest.mark.parametrize("name, size, hw", [("resnet18", 64, 2), ("resnet50", 64, 2), ("vgg16", 64, 2)])
def test_backbone_feature_sizes(name, size, hw):
    bb = build_backbone(BackboneConfig(name=name, cam_friendly=False))  # the standard stride 32
    with torch.no_grad():
        f = bb(torch.rand(1, 3, size, size))
    assert f.shape == (1, bb.out_channels, hw, hw)


def test_cam_friendly_resnet50_gives_28x28_at_224():
    bb = build_backbone(BackboneConfig(name="resnet50", cam_friendly=True)).eval()
    with torch.no_grad():
        f = bb(torch.rand(1, 3, 224, 224))
    assert f.shape == (1, 2048, 28, 28)


def test_inception_v3_features():
    bb = build_backbone(BackboneConfig(name="inception_v3", cam_friendly=True)).eval()
    with torch.no_grad():
        f = bb(torch.rand(1, 3, 128, 128))
    # wsolevaluation's InceptionCam: Mixed_6e's 768 channels, then two 1024-channel 3×3 convs
    assert f.shape[1] == 1024 == bb.out_channels


def test_backbone_weights_from_local_file_and_errors(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone(BackboneConfig(name="resnet18", weights=str(path)))
    torch.testing.assert_close(bb.conv1.weight, ref.conv1.weight)
    with pytest.raises(ConfigError, match="not found"):
        build_backbone(BackboneConfig(name="resnet18", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ConfigError, match="unknown ResNet18_Weights member"):
        build_backbone(BackboneConfig(name="resnet18", weights="IMAGENET9K"))
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(ConfigError, match="match only|shape mismatch"):
        build_backbone(BackboneConfig(name="resnet18", weights=str(tmp_path / "vgg.pth")))
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone(BackboneConfig(name="resnet7"))
