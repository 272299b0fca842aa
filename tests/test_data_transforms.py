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


# --- issue 18 (5, 8): the reference's box and mask resampling --------------------------------


def _cv2_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    h, w = size
    return torch.from_numpy(cv2.resize(np.ascontiguousarray(mask.numpy()), (w, h), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("src,dst", [((500, 375), (224, 224)), ((333, 500), (224, 224)), ((224, 224), (224, 224)),
                                     ((48, 32), (128, 128)), ((97, 61), (50, 113)), ((7, 5), (224, 224)),
                                     ((1000, 999), (3, 2))])
def test_mask_resize_is_opencv_inter_nearest(src, dst):
    """wsolevaluation resizes masks with cv2.resize(..., INTER_NEAREST); so does Resize by default."""
    from wsol.data.transforms import resize_mask

    g = torch.Generator().manual_seed(sum(src) + sum(dst))
    mask = torch.randint(0, 256, src, generator=g).to(torch.uint8)
    assert torch.equal(resize_mask(mask, dst), _cv2_nearest(mask, dst))
    s = {"image": torch.rand(3, *src), "label": 0, "image_id": "m", "mask": mask}
    out = build_transform(DataConfig(image_size=dst[0], augment=AugmentConfig()), train=False)(s) if dst[0] == dst[1] \
        else Resize(dst)(s)
    assert torch.equal(out["mask"], _cv2_nearest(mask, dst))


def test_mask_resize_opencv_differs_from_centre_aligned_and_that_mode_remains():
    import torch.nn.functional as F

    from wsol.data.transforms import resize_mask

    mask = torch.zeros(10, 10, dtype=torch.uint8)
    mask[:, 5:] = 1
    # 10 -> 4: OpenCV picks source columns floor(x · 2.5) = 0, 2, 5, 7; centre-aligned 1, 3, 6, 8
    assert resize_mask(mask, (4, 4))[0].tolist() == [0, 0, 1, 1]
    g = torch.Generator().manual_seed(0)
    m = torch.randint(0, 3, (30, 30), generator=g).to(torch.uint8)
    exact = F.interpolate(m[None, None].float(), size=(13, 17), mode="nearest-exact")[0, 0].to(torch.uint8)
    assert torch.equal(resize_mask(m, (13, 17), "nearest-exact"), exact)
    assert not torch.equal(resize_mask(m, (13, 17)), exact)
    cfg = DataConfig(image_size=13, mask_resize="nearest-exact")
    out = build_transform(cfg, train=False)({"image": torch.rand(3, 30, 30), "label": 0, "image_id": "e", "mask": m})
    assert torch.equal(out["mask"], F.interpolate(m[None, None].float(), size=(13, 13), mode="nearest-exact")[0, 0]
                       .to(torch.uint8))
    with pytest.raises(ConfigError, match="mask_resize"):
        Resize(8, mask_mode="bilinear")  # type: ignore[arg-type]


def test_box_resize_truncates_to_wsolevaluation_resize_bbox():
    """Every integer coordinate 0..W of every width 100..600, resized to 224: truncating the
    resized box gives wsolevaluation's resize_bbox, int(x · 224 / W) in float64. The former
    float32 product x · float32(224 / W) is 1 px off for some (e.g. W = 166, x = 83 -> 111)."""
    from wsol.data.transforms import resize_boxes

    def resize_bbox(box, image_size, resize_size):  # wsolevaluation/util.py, verbatim arithmetic
        box_x0, box_y0, box_x1, box_y1 = map(float, box)
        image_w, image_h = map(float, image_size)
        new_image_w, new_image_h = map(float, resize_size)
        return (int(box_x0 * new_image_w / image_w), int(box_y0 * new_image_h / image_h),
                int(box_x1 * new_image_w / image_w), int(box_y1 * new_image_h / image_h))

    off_before = 0
    for w in range(100, 601):
        h = 700 - w
        x = torch.arange(w + 1, dtype=torch.float32)
        y = torch.arange(w + 1, dtype=torch.float32).clamp(max=h)
        boxes = torch.stack([x, y, x, y], 1)
        got = resize_boxes(boxes, (h, w), (224, 224)).double().trunc().long()
        ref = torch.tensor([resize_bbox(b, (w, h), (224, 224)) for b in boxes.tolist()])
        assert torch.equal(got, ref), w
        old = (boxes * torch.tensor([224 / w, 224 / h, 224 / w, 224 / h], dtype=torch.float32)).trunc().long()
        off_before += int((old != ref).any(1).sum())
    assert off_before > 0  # the float32 arithmetic this replaces did disagree
    s = {"image": torch.rand(3, 200, 166), "label": 0, "image_id": "b", "boxes": torch.tensor([[83.0, 0.0, 166.0, 100.0]])}
    assert Resize(224)(s)["boxes"].trunc().tolist() == [[112.0, 0.0, 224.0, 112.0]]


def test_per_call_generator_drives_the_augmentation_and_leaves_the_global_rng():
    cfg = DataConfig(image_size=16, crop_size=12, augment=AugmentConfig(color_jitter=0.3))
    t = build_transform(cfg, train=True)
    s = painted_sample(16, 16)
    state = torch.get_rng_state()
    a = t(s, torch.Generator().manual_seed(9))
    b = t(s, torch.Generator().manual_seed(9))
    c = t(s, torch.Generator().manual_seed(10))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])


def test_compose_runs_on_one_thread_and_restores_the_count():
    seen = []
    t = Compose([lambda s: seen.append(torch.get_num_threads()) or s])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t(painted_sample())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
