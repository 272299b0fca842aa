"""TS-CAM: the coupled maps live on the patch grid (non-square and non-224 sizes included),
the class-token attention is a non-negative softmax row, our block loop is timm's block,
the CAM is token map ⊙ attention upsampled, local weights load (position embedding
resampled) and nothing else does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsol.cams import minmax_normalize
from wsol.config import BackboneConfig, MethodConfig
from wsol.errors import ConfigError
from wsol.methods import build_method
from wsol.methods.tscam import resample_pos_embed

ARCH = "deit_tiny_patch16_224"


def build(**params):
    params = {"arch": ARCH, "drop_path_rate": 0.0, **params}
    return build_method(MethodConfig(name="tscam", params=params), BackboneConfig(), 3)


def test_maps_on_the_patch_grid_and_cam_upsampled():
    method = build().eval()
    images, t = torch.rand(2, 3, 64, 48), torch.tensor([0, 2])
    with torch.no_grad():
        out = method(images)
        cams = method.localize(images, t)
    assert out.maps.shape == (2, 3, 4, 3)  # 64/16 × 48/16 patches
    assert out.extras["token_maps"].shape == (2, 3, 4, 3)
    attn = out.extras["attention"]
    assert attn.shape == (2, 4, 3)
    assert (attn >= 0).all()
    # a softmax row over class token + patches: the patches' share is in (0, 1]
    assert (attn.flatten(1).sum(1) > 0).all() and (attn.flatten(1).sum(1) <= 1 + 1e-6).all()
    assert torch.allclose(out.maps, out.extras["token_maps"] * attn[:, None])
    assert torch.allclose(out.logits, out.extras["token_maps"].mean(dim=(2, 3)))
    grid = out.maps[torch.arange(2), t]
    want = minmax_normalize(F.interpolate(grid[:, None], size=(64, 48), mode="bilinear", align_corners=False)[:, 0])
    assert cams.shape == (2, 64, 48) and torch.allclose(cams, want, atol=1e-6)


def test_block_loop_matches_timm_and_attention_is_the_class_row():
    method = build().eval()
    vit = method.vit
    x = torch.randn(2, 1 + 9, vit.embed_dim)
    with torch.no_grad():
        for blk in vit.blocks[:3]:
            ours, cls_attn = method._block(blk, x)
            assert torch.allclose(ours, blk(x), atol=1e-5)
            a = blk.attn  # the full attention matrix, by hand
            q, k, _ = a.qkv(blk.norm1(x)).reshape(2, 10, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
            full = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
            assert torch.allclose(cls_attn, full[:, :, 0].mean(1), atol=1e-6)
            assert torch.allclose(cls_attn.sum(-1), torch.ones(2))
            x = ours


def test_attention_is_the_mean_over_layers():
    method = build().eval()
    images = torch.rand(1, 3, 32, 32)
    vit = method.vit
    with torch.no_grad():
        _, attn = method.tokens(images)
        x = vit.patch_embed.proj(method.normalize(images)).flatten(2).transpose(1, 2)  # 2×2 patches
        x = torch.cat([vit.cls_token, x], 1) + resample_pos_embed(vit.pos_embed, (14, 14), (2, 2))
        rows = []
        for blk in vit.blocks:
            x, a = method._block(blk, x)
            rows.append(a[:, 1:])
    assert torch.allclose(attn, torch.stack(rows).mean(0).view(1, 2, 2), atol=1e-6)


def test_size_not_multiple_of_patch_is_a_clear_error():
    with pytest.raises(ConfigError, match="multiple of the DeiT patch size 16"):
        build().eval()(torch.rand(1, 3, 50, 64))


def test_resample_pos_embed():
    pe = torch.randn(1, 1 + 4, 8)
    assert resample_pos_embed(pe, (2, 2), (2, 2)) is pe
    out = resample_pos_embed(pe, (2, 2), (3, 5))
    assert out.shape == (1, 1 + 15, 8) and torch.equal(out[:, 0], pe[:, 0])
    const = torch.ones(1, 5, 8)
    assert torch.allclose(resample_pos_embed(const, (2, 2), (4, 4)), torch.ones(1, 17, 8), atol=1e-5)


def test_local_weights_load_and_errors(tmp_path):
    src = build().eval()
    sd = {f"module.{k}": v for k, v in src.vit.state_dict().items()}
    sd["head.weight"] = torch.zeros(1000, src.vit.embed_dim)  # a classifier head is ignored
    torch.save({"model": sd}, tmp_path / "deit.pth")
    torch.manual_seed(9)
    dst = build(weights=str(tmp_path / "deit.pth")).eval()
    for (k, a), b in zip(src.vit.state_dict().items(), dst.vit.state_dict().values()):
        assert torch.equal(a, b), k

    # weights trained at another size: the position embedding is resampled to the 14×14 grid
    small = {k.removeprefix("module."): v for k, v in sd.items()}
    small["pos_embed"] = resample_pos_embed(small["pos_embed"], (14, 14), (7, 7))
    torch.save(small, tmp_path / "deit112.pth")
    dst = build(weights=str(tmp_path / "deit112.pth"))
    assert dst.vit.pos_embed.shape == src.vit.pos_embed.shape
    assert torch.equal(dst.vit.pos_embed[:, 0], src.vit.pos_embed[:, 0])

    with pytest.raises(ConfigError, match="not found"):
        build(weights=str(tmp_path / "missing.pth"))
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        build(weights=str(tmp_path / "other.pth"))


def test_param_groups_split_transformer_and_head():
    method = build()
    groups = {g["name"]: g for g in method.param_groups(0.01, 10.0)}
    head = {id(p) for p in method.head.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head
    assert len(groups["backbone"]["params"]) == len(list(method.vit.parameters()))
    assert groups["head"]["lr"] == pytest.approx(0.1)
