"""The U-Net decoder (wsol.nn.decoders): output at the image resolution for every
backbone (CAM-friendly strides, sizes that are not multiples of 32, Inception's odd
sizes), F-CAM's softmax pair, the weight map's sigmoid generator, gradients, and
parameter counts checked against F-CAM's Table F.4.

Parameter counts (default F-CAM decoder, ``fcam_decoder``, widths 256-128-64-32-16):
ResNet-18/34 3,151,842; ResNet-50 9,013,218 (Table F.4 "#PDEC ≈9" M); VGG-16 4,313,058
(4 blocks, CAM-friendly: 3,900,866); Inception-v3 8,063,970 (4 blocks, CAM-friendly:
3,734,978); EfficientNet-Lite0 4,451,298; on F-CAM's own Inception encoder widths
(64, 80, 288, 768, 1024): 5,704,674 (Table F.4 "≈5.7" M). The weight-map decoder
(``weight_map_decoder``) on ResNet-18: 3,148,866.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import pytest
import torch
import torch.nn as nn

from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.nn.backbones import FeatureBackbone, build_backbone
from wsol.nn.decoders import UNetDecoder, UpBlock, default_channels, fcam_decoder, weight_map_decoder

HAVE_TIMM = importlib.util.find_spec("timm") is not None
NAMES = ["resnet18", "resnet34", "resnet50", "vgg16", "inception_v3"] + (["efficientnet_lite0"] if HAVE_TIMM else [])
CASES = [(n, cf) for n in NAMES for cf in (False, True)]


@cache
def _backbone(name: str, cam_friendly: bool, device: str = "cpu") -> FeatureBackbone:
    torch.manual_seed(0)
    with torch.device(device):
        return build_backbone(BackboneConfig(name=name, cam_friendly=cam_friendly)).eval()


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,cam_friendly", CASES)
def test_output_has_the_image_size_for_every_backbone(name, cam_friendly):
    # shapes at 224², 128² and an odd size on the meta device (shapes only, no arithmetic)
    bb = _backbone(name, cam_friendly, "meta")
    with torch.device("meta"):
        decoders = [fcam_decoder(bb), weight_map_decoder(bb), fcam_decoder(bb, final="none")]
    for size in [(224, 224), (128, 128), (97, 83)]:
        feats = bb.forward_stages(torch.empty(2, 3, *size, device="meta"))
        for dec, c in zip(decoders, (2, 1, 2)):
            assert tuple(dec(feats, size).shape) == (2, c, *size), (name, size)


@pytest.mark.parametrize("name,cam_friendly", CASES)
def test_softmax_pair_sums_to_one_and_weight_map_lies_in_0_1(name, cam_friendly):
    bb = _backbone(name, cam_friendly)
    size = (97, 83)  # not a multiple of 32
    torch.manual_seed(0)
    fcam, wmap = fcam_decoder(bb).eval(), weight_map_decoder(bb).eval()
    with torch.no_grad():
        feats = bb.forward_stages(torch.rand(2, 3, *size))
        s = fcam(feats, size)
        g = wmap(feats, size)
    assert s.shape == (2, 2, *size) and g.shape == (2, 1, *size)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(2, *size))
    assert s.min() >= 0 and g.min() >= 0 and g.max() <= 1 and torch.isfinite(g).all()


def test_final_none_gives_the_logits_of_the_softmax_pair():
    bb = _backbone("resnet18", True)
    torch.manual_seed(0)
    a = fcam_decoder(bb).eval()
    b = fcam_decoder(bb, final="none").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        feats = bb.forward_stages(torch.rand(1, 3, 64, 64))
        torch.testing.assert_close(b(feats, (64, 64)).softmax(1), a(feats, (64, 64)))


def test_gradients_reach_every_decoder_parameter_and_not_a_frozen_encoder():
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="resnet18")).eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    for dec in (fcam_decoder(bb), weight_map_decoder(bb)):
        dec.train()
        with torch.no_grad():
            feats = bb.forward_stages(torch.rand(2, 3, 64, 64))
        out = dec(feats, (64, 64))
        target = torch.zeros_like(out[:, -1])
        target[:, 16:48, 16:48] = 1
        (out[:, -1] - target).pow(2).mean().backward()  # foreground map towards a square
        for name, p in dec.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in bb.parameters())


def test_the_decoder_trains_the_backbone_when_it_is_not_frozen():
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="resnet18")).train()
    dec = fcam_decoder(bb).train()
    out = dec(bb.forward_stages(torch.rand(2, 3, 64, 64)), (64, 64))
    out[:, 1].mean().backward()
    assert bb.conv1.weight.grad is not None and bb.layer4[1].conv2.weight.grad.abs().sum() > 0


def test_fcam_block_layout_and_table_f2_widths():
    bb = _backbone("resnet50", True, "meta")
    with torch.device("meta"):
        dec = fcam_decoder(bb)
    assert dec.channels == (256, 128, 64, 32, 16)  # Table F.2, ResNet
    # block i: input = previous width (first: 2048) + the skip of the next shallower stage
    ins = [blk.conv1.in_channels for blk in dec.blocks]
    assert ins == [2048 + 1024, 256 + 512, 128 + 256, 64 + 64, 32 + 0]
    assert all(isinstance(blk.bn1, nn.BatchNorm2d) and isinstance(blk.act, nn.ReLU) for blk in dec.blocks)
    assert dec.head.kernel_size == (3, 3) and dec.head.out_channels == 2
    assert default_channels("vgg", 3) == (256, 128, 64)  # Table F.2, VGG
    assert default_channels("vgg", 5) == (256, 128, 64, 32, 16)  # continued by halving
    assert default_channels("inception", 4) == (256, 128, 64, 32)


def test_weight_map_layout_follows_the_paper():
    """weight-map-wsol.txt §3: five upsampling blocks; two 3×3 convs with padding 1; BN after
    the last conv before the activation; ReLU in blocks 1-4, sigmoid at the end; one map."""
    bb = _backbone("resnet18", False, "meta")
    with torch.device("meta"):
        dec = weight_map_decoder(bb)
    assert len(dec.blocks) == 5 and isinstance(dec.head, nn.Identity)
    for i, blk in enumerate(dec.blocks):
        assert isinstance(blk, UpBlock)
        for conv in (blk.conv1, blk.conv2):
            assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert isinstance(blk.bn1, nn.Identity) and isinstance(blk.bn2, nn.BatchNorm2d)
        assert isinstance(blk.act, nn.ReLU if i < 4 else nn.Identity)  # block 5: sigmoid follows
    assert dec.blocks[-1].conv2.out_channels == 1 and dec.final == "sigmoid"
    assert [blk.skip_channels for blk in dec.blocks] == [256, 128, 64, 64, 0]  # ResNet-18 layer3..relu


def test_parameter_counts_match_f_cam_table_f4():
    def block(cin: int, skip: int, w: int) -> int:  # conv (no bias) + BN, twice
        return (cin + skip) * w * 9 + 2 * w + w * w * 9 + 2 * w

    widths = [256, 128, 64, 32, 16]
    head = 16 * 2 * 9 + 2  # 3×3 conv to two maps, with bias

    def expected(enc: list[int]) -> int:
        skips = list(reversed(enc[:-1])) + [0]
        ins = [enc[-1]] + widths[:-1]
        return sum(block(i, s, w) for i, s, w in zip(ins, skips, widths)) + head

    bb = _backbone("resnet50", False, "meta")
    with torch.device("meta"):
        n50 = _n_params(fcam_decoder(bb))
        n_inc = _n_params(UNetDecoder([64, 80, 288, 768, 1024], [2, 4, 8, 16, 16], family="inception"))
    assert n50 == expected([64, 256, 512, 1024, 2048]) == 9_013_218
    assert n_inc == expected([64, 80, 288, 768, 1024]) == 5_704_674
    assert abs(n50 / 1e6 - 9.0) < 0.05 and abs(n_inc / 1e6 - 5.7) < 0.05  # Table F.4 #PDEC


def test_free_blocks_double_up_to_an_odd_image_size():
    # shallowest stage at stride 4: one skip block, then two ×2 blocks, the last to (H, W)
    dec = UNetDecoder([8, 16], [4, 8], out_channels=1, channels=[8, 8, 4], final="none").eval()
    feats = [torch.rand(1, 8, 9, 7), torch.rand(1, 16, 5, 4)]  # an image of 35×27
    with torch.no_grad():
        out = dec(feats, (35, 27))
    assert out.shape == (1, 1, 35, 27)
    with pytest.raises(ConfigError, match="3 positive widths"):
        UNetDecoder([8, 16], [4, 8], channels=[8, 8])


def test_bad_configurations_are_config_errors():
    with pytest.raises(ConfigError, match="softmax2' needs out_channels=2"):
        UNetDecoder([8, 16], [2, 4], out_channels=1)
    with pytest.raises(ConfigError, match="powers of two"):
        UNetDecoder([8, 16], [4, 2])
    with pytest.raises(ConfigError, match="final must be"):
        UNetDecoder([8, 16], [2, 4], final="softmax")  # type: ignore[arg-type]
    dec = UNetDecoder([8, 16], [2, 4])
    with pytest.raises(ConfigError, match=r"built for stage channels \[8, 16\], got \[8, 32\]"):
        dec([torch.rand(1, 8, 4, 4), torch.rand(1, 32, 2, 2)], (8, 8))
