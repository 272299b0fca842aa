"""Joint transforms keep mask and boxes aligned with the image (wsol.data.transforms)."""

from __future__ import annotations

import pytest
import torch

from wsol.config import AugmentConfig, DataConfig
from wsol.data.transforms import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHFlip,
    RandomRot90,
    RandomVFlip,
    Resize,
    build_transform,
    crop,
    hflip,
    rot90,
    vflip,
)
from wsol.errors import ConfigError


def painted_sample(h: int = 12, w: int = 20, seed: int = 0) -> dict:
    """Random mask with 0/1/255; the image is red exactly at ROI pixels, green exactly at
    ignore pixels, and carries a pixel-unique code in the blue channel; one box = bbox of a
    rectangle of ROI."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 2, (h, w), generator=g).to(torch.uint8)
    mask[torch.rand(h, w, generator=g) < 0.1] = 255
    mask[2:7, 3:11] = 1
    img = torch.zeros(3, h, w)
    img[0] = (mask == 1).float()
    img[1] = (mask == 255).float()
    img[2] = torch.arange(h * w, dtype=torch.float32).reshape(h, w) / (h * w)
    boxes = torch.tensor([[3.0, 2.0, 11.0, 7.0]])
    return {"image": img, "label": 1, "image_id": "x", "mask": mask, "boxes": boxes}


def box_patch(sample: dict) -> torch.Tensor:
    """The blue-channel codes inside the (integer) box of a sample."""
    x1, y1, x2, y2 = (int(round(v)) for v in sample["boxes"][0].tolist())
    return sample["image"][2, y1:y2, x1:x2]


def assert_aligned(out: dict) -> None:
    img, mask = out["image"], out["mask"]
    assert mask.dtype == torch.uint8
    assert torch.equal(img[0] == 1, mask == 1)
    assert torch.equal(img[1] == 1, mask == 255)
    assert set(mask.unique().tolist()) <= {0, 1, 255}


@pytest.mark.parametrize("op", [hflip, vflip, lambda s: rot90(s, 1), lambda s: rot90(s, 2), lambda s: rot90(s, 3),
                                lambda s: crop(s, 1, 2, 8, 9)])
def test_pixel_exact_ops_keep_mask_under_same_pixel(op):
    s = painted_sample()
    out = op(s)
    assert_aligned(out)
    # the box still encloses the same pixels (same multiset of unique codes)
    assert torch.equal(box_patch(s).flatten().sort().values, box_patch(out).flatten().sort().values)
    # the input sample is not modified
    assert_aligned(s)
    assert torch.equal(s["boxes"], torch.tensor([[3.0, 2.0, 11.0, 7.0]]))


def test_flip_and_rotation_boxes_by_hand():
    s = painted_sample(h=12, w=20)  # box (3, 2, 11, 7)
    assert hflip(s)["boxes"].tolist() == [[9.0, 2.0, 17.0, 7.0]]
    assert vflip(s)["boxes"].tolist() == [[3.0, 5.0, 11.0, 10.0]]
    # one counter-clockwise quarter turn of a 20-wide image: x' = y, y' = 20 - x
    r = rot90(s, 1)
    assert r["image"].shape[-2:] == (20, 12)
    assert r["boxes"].tolist() == [[2.0, 9.0, 7.0, 17.0]]
    assert torch.equal(rot90(r, 3)["boxes"], s["boxes"])
    assert torch.equal(rot90(r, 3)["mask"], s["mask"])


def test_crop_clips_and_drops_boxes():
    s = painted_sample()
    s["boxes"] = torch.tensor([[3.0, 2.0, 11.0, 7.0], [15.0, 9.0, 19.0, 11.0]])
    out = crop(s, 4, 5, 6, 8)  # window x in [5, 13), y in [4, 10)
    assert out["boxes"].tolist() == [[0.0, 0.0, 6.0, 3.0]]  # second box is outside: dropped
    assert out["image"].shape[-2:] == (6, 8) and out["mask"].shape == (6, 8)


def block_sample(h: int, w: int, block: int) -> dict:
    """Block-constant mask (0/1/255 per block) painted into the image; box on block edges."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.randint(0, 3, (h // block, w // block), generator=g)
    coarse = torch.tensor([0, 1, 255])[coarse].to(torch.uint8)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    img = torch.stack([(mask == 1).float(), (mask == 255).float(), torch.full((h, w), 0.5)])
    boxes = torch.tensor([[block, block, 3 * block, 2 * block]], dtype=torch.float32)
    return {"image": img, "label": 0, "image_id": "b", "mask": mask, "boxes": boxes}


@pytest.mark.parametrize("new", [16, 64, 48])
def test_resize_integer_factors_exact(new):
    s = block_sample(32, 32, 8)
    out = Resize(new)(s)
    assert out["image"].shape == (3, new, new) and out["mask"].shape == (new, new)
    assert set(out["mask"].unique().tolist()) <= {0, 1, 255}
    f = new / 32
    assert torch.allclose(out["boxes"], s["boxes"] * f)
    # away from block edges (1 px band), image colour and mask agree exactly
    interior = torch.zeros(new, new, dtype=torch.bool)
    b = int(8 * f)
    idx = torch.arange(new)
    ok = ((idx % b) >= 1) & ((idx % b) <= b - 2)
    interior = ok[:, None] & ok[None, :]
    img, mask = out["image"], out["mask"]
    assert torch.equal((img[0] > 0.5)[interior], (mask == 1)[interior])
    assert torch.equal((img[1] > 0.5)[interior], (mask == 255)[interior])


def test_resize_non_integer_factor_mismatch_only_on_edges():
    s = block_sample(30, 30, 6)
    out = Resize((47, 41))(s)
    img, mask = out["image"], out["mask"]
    assert img.shape == (3, 47, 41)
    assert torch.allclose(out["boxes"], s["boxes"] * torch.tensor([41 / 30, 47 / 30, 41 / 30, 47 / 30]))
    bad = (img[0] > 0.5) != (mask == 1)
    # every disagreement sits next to a mask edge (a neighbour with another value)
    m = mask.int()
    pad = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    edge = torch.zeros_like(bad)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= pad[1 + dy:1 + dy + 47, 1 + dx:1 + dx + 41] != m
    assert not (bad & ~edge).any()
    assert bad.float().mean() < 0.1


def test_resize_same_size_is_identity_and_values_in_range():
    s = painted_sample()
    assert Resize((12, 20))(s) is s
    out = Resize(7)(s)
    assert out["image"].min() >= 0 and out["image"].max() <= 1


@pytest.mark.parametrize("seed", range(6))
def test_random_train_pipeline_keeps_alignment(seed):
    cfg = DataConfig(image_size=20, crop_size=14, augment=AugmentConfig(hflip=True, vflip=True, rot90=True,
                                                                        color_jitter=0.0))
    t = build_transform(cfg, train=True)
    s = painted_sample(h=20, w=20, seed=seed)
    torch.manual_seed(seed)
    out = t(s)
    assert out["image"].shape == (3, 14, 14)
    assert_aligned(out)
    # the surviving box is the bbox of the surviving part of the ROI rectangle (codes checked)
    if len(out["boxes"]):
        codes_in = set(box_patch(s).flatten().tolist())
        assert set(box_patch(out).flatten().tolist()) <= codes_in


def test_random_ops_with_generator_are_repeatable_and_cover_all_outcomes():
    s = painted_sample()
    outs = set()
    for i in range(40):
        t = Compose([RandomHFlip(generator=torch.Generator().manual_seed(i)),
                     RandomVFlip(generator=torch.Generator().manual_seed(100 + i)),
                     RandomRot90(generator=torch.Generator().manual_seed(200 + i))])
        a = t(s)
        t2 = Compose([RandomHFlip(generator=torch.Generator().manual_seed(i)),
                      RandomVFlip(generator=torch.Generator().manual_seed(100 + i)),
                      RandomRot90(generator=torch.Generator().manual_seed(200 + i))])
        b = t2(s)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
        outs.add(tuple(a["boxes"][0].tolist()))
    # h/v flips and 4 rotations of an off-centre box give 8 distinct boxes (the dihedral group)
    assert len(outs) == 8


def test_global_seed_makes_train_transform_repeatable():
    cfg = DataConfig(image_size=16, crop_size=12, augment=AugmentConfig(color_jitter=0.3))
    t = build_transform(cfg, train=True)
    s = painted_sample(16, 16)
    torch.manual_seed(5)
    a = t(s)
    torch.manual_seed(5)
    b = t(s)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_color_jitter_touches_image_only():
    s = painted_sample()
    s["image"] = s["image"] * 0.5 + 0.25
    out = ColorJitter(0.5, generator=torch.Generator().manual_seed(0))(s)
    assert out["mask"] is s["mask"] and out["boxes"] is s["boxes"]
    assert not torch.equal(out["image"], s["image"])
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert ColorJitter(0.0)(s) is s
    with pytest.raises(ConfigError):
        ColorJitter(1.5)


def test_eval_transform_is_resize_only():
    cfg = DataConfig(image_size=10, crop_size=8, augment=AugmentConfig(color_jitter=0.5))
    t = build_transform(cfg, train=False)
    s = painted_sample(20, 20)
    torch.manual_seed(0)
    a = t(s)
    torch.manual_seed(1)
    b = t(s)
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 10, 10)
    assert torch.equal(a["image"], Resize(10)(s)["image"])


def test_crop_larger_than_image_is_a_config_error():
    with pytest.raises(ConfigError, match="crop_size"):
        build_transform(DataConfig(image_size=16, crop_size=32), train=True)
    with pytest.raises(ConfigError, match="larger than"):
        RandomCrop(30)(painted_sample())


def test_samples_without_mask_or_boxes():
    s = {"image": torch.rand(3, 9, 13), "label": 0, "image_id": "n"}
    cfg = DataConfig(image_size=8, crop_size=6)
    torch.manual_seed(0)
    out = build_transform(cfg, train=True)(s)
    assert out["image"].shape == (3, 6, 6) and "mask" not in out and "boxes" not in out
