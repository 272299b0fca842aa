"""wsolevaluation metadata layout: round trips to the Sample contract and precise errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.config import DataConfig
from wsol.data.metadata import MetaEntry, read_class_names, read_metadata, write_class_names, write_metadata
from wsol.data.records import MaskFile, RecordDataset, load_sample
from wsol.data.registry import build_dataset
from wsol.errors import DataError


def png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def mask_root(tmp_path: Path) -> Path:
    """Three 8×6 images: a single mask, two OR-ed masks + an ignore region, an all-zero mask."""
    rng = np.random.default_rng(0)
    for i in range(3):
        png(tmp_path / f"img/a/{i}.png", rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    m0 = np.zeros((6, 8), np.uint8)
    m0[1:3, 2:5] = 255
    m1a = np.zeros((6, 8), np.uint8)
    m1a[0, 0] = 1
    m1b = np.zeros((6, 8), np.uint8)
    m1b[5, 7] = 255
    ign = np.zeros((6, 8), np.uint8)
    ign[3, :] = 255
    png(tmp_path / "mask/0.png", m0)
    png(tmp_path / "mask/1a.png", m1a)
    png(tmp_path / "mask/1b.png", m1b)
    png(tmp_path / "mask/1_ign.png", ign)
    png(tmp_path / "mask/2.png", np.zeros((6, 8), np.uint8))
    write_metadata(tmp_path, "test", [
        MetaEntry("img/a/0.png", 0, (8, 6), masks=[("mask/0.png", None)]),
        MetaEntry("img/a/1.png", 1, (8, 6), masks=[("mask/1a.png", "mask/1_ign.png"), ("mask/1b.png", None)]),
        MetaEntry("img/a/2.png", 1, (8, 6), masks=[("mask/2.png", None)]),
    ])
    return tmp_path


def test_mask_round_trip_to_sample_contract(mask_root: Path):
    recs = read_metadata(mask_root, "test")
    assert [r.image_id for r in recs] == ["img/a/0.png", "img/a/1.png", "img/a/2.png"]
    assert [r.label for r in recs] == [0, 1, 1]
    assert all(r.source.startswith(str(mask_root / "metadata/test/image_ids.txt")) for r in recs)
    s0, s1, s2 = (load_sample(r) for r in recs)
    for s in (s0, s1, s2):
        assert s["image"].shape == (3, 6, 8) and s["image"].dtype == torch.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["mask"].dtype == torch.uint8 and s["mask"].shape == (6, 8)
    assert s0["mask"].sum() == 6 and s0["mask"][1:3, 2:5].eq(1).all()
    # two mask rows OR-ed; the ignore row sets 255
    expect = torch.zeros(6, 8, dtype=torch.uint8)
    expect[0, 0] = 1
    expect[5, 7] = 1
    expect[3, :] = 255
    assert torch.equal(s1["mask"], expect)
    assert s2["mask"].sum() == 0  # an all-zero mask is a valid, evaluated answer
    raw = (mask_root / "metadata/test/localization.txt").read_text().splitlines()
    assert raw[0] == "img/a/0.png,mask/0.png,"  # empty ignore path


def test_box_round_trip_and_class_names(tmp_path: Path):
    png(tmp_path / "x/0.png", np.zeros((10, 20, 3), np.uint8))
    png(tmp_path / "x/1.png", np.zeros((10, 20, 3), np.uint8))
    write_metadata(tmp_path, "train", [
        MetaEntry("x/0.png", 2, (20, 10), boxes=[[1, 2, 5.5, 9], [0, 0, 20, 10]]),
        MetaEntry("x/1.png", 0, (20, 10), boxes=[[0.1, 3, 3.14159265, 4]]),
    ])
    recs = read_metadata(tmp_path, "train")
    s = load_sample(recs[0])
    assert s["boxes"].tolist() == [[1, 2, 5.5, 9], [0, 0, 20, 10]]
    assert (tmp_path / "metadata/train/localization.txt").read_text().splitlines()[2] == "x/1.png,0.1,3,3.14159265,4"
    assert recs[1].boxes.tolist() == [[np.float32(0.1), 3, np.float32(3.14159265), 4]]
    assert "mask" not in s
    assert read_class_names(tmp_path) == ["0", "1", "2"]  # inferred from the largest label
    write_class_names(tmp_path, ["a", "b", "c"])
    assert read_class_names(tmp_path) == ["a", "b", "c"]


def test_boxes_and_masks_together_use_masks_txt(tmp_path: Path):
    png(tmp_path / "i.png", np.zeros((4, 4, 3), np.uint8))
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    png(tmp_path / "m.png", m)
    d = write_metadata(tmp_path, "test", [MetaEntry("i.png", 0, (4, 4), boxes=[[1, 1, 3, 3]], masks=[("m.png", None)])])
    assert (d / "masks.txt").read_text() == "i.png,m.png,\n"
    s = load_sample(read_metadata(tmp_path, "test")[0])
    assert s["boxes"].tolist() == [[1, 1, 3, 3]] and int(s["mask"].sum()) == 4


def test_write_is_atomic_and_replaces(mask_root: Path):
    write_metadata(mask_root, "test", [MetaEntry("img/a/0.png", 1, masks=[("mask/0.png", None)])])
    recs = read_metadata(mask_root, "test")
    assert len(recs) == 1 and recs[0].label == 1 and recs[0].size is None
    assert sorted(p.name for p in (mask_root / "metadata").iterdir()) == ["test"]  # no temp folder left
    with pytest.raises(DataError, match="escap|relative"):
        write_metadata(mask_root, "test", [MetaEntry("../evil.png", 0)])
    assert len(read_metadata(mask_root, "test")) == 1  # the failed write left the old split intact


def test_registered_reader_with_split_map(mask_root: Path):
    write_class_names(mask_root, ["neg", "pos"])
    cfg = DataConfig(name="wsoleval-mask", root=str(mask_root), image_size=4, options={"splits": {"valpx": "test"}})
    ds = build_dataset(cfg, "valpx")
    assert isinstance(ds, RecordDataset) and len(ds) == 3 and ds.class_names == ["neg", "pos"]
    s = ds[1]
    assert s["image"].shape == (3, 4, 4) and set(s["mask"].unique().tolist()) <= {0, 1, 255}
    write_class_names(mask_root, ["only"])
    with pytest.raises(DataError, match=r"class_labels\.txt:2: class label 1 is out of range; expected 0\.\.0"):
        build_dataset(cfg, "valpx")


# ------------------------------------------------------------------------- malformed variants

def write_split(root: Path, files: dict[str, str], split: str = "val") -> Path:
    d = root / "metadata" / split
    d.mkdir(parents=True, exist_ok=True)
    base = {"image_ids.txt": "a.png\nb.png\n", "class_labels.txt": "a.png,0\nb.png,1\n"}
    base.update(files)
    for name, text in base.items():
        if text is not None:
            (d / name).write_text(text)
    return d


BAD = [
    ({"class_labels.txt": "a.png,0\nb.png\n"}, r"class_labels\.txt:2: expected 2 columns 'image_id,label', found 1"),
    ({"class_labels.txt": "a.png,0\nb.png,one\n"}, r"class_labels\.txt:2: class label must be an integer, found 'one'"),
    ({"class_labels.txt": "a.png,-1\nb.png,1\n"}, r"class_labels\.txt:1: class label must be >= 0, found -1"),
    ({"class_labels.txt": "a.png,0\nc.png,1\n"},
     r"class_labels\.txt:2: image id 'c.png' is not listed in .*image_ids\.txt"),
    ({"class_labels.txt": "a.png,0\n"},
     r"class_labels\.txt: no label for image id 'b.png' \(listed at .*image_ids\.txt:2\)"),
    ({"class_labels.txt": "a.png,0\nb.png,1\na.png,1\n"}, r"class_labels\.txt:3: duplicate label for image id 'a.png'"),
    ({"image_ids.txt": "a.png\nb.png\na.png\n"},
     r"image_ids\.txt:3: duplicate image id 'a.png' \(first at .*image_ids\.txt:1\)"),
    ({"image_ids.txt": "a.png\n../b.png\n"}, r"image_ids\.txt:2: image id '\.\./b\.png' must be a path relative"),
    ({"image_ids.txt": "a.png\n/etc/b.png\n"}, r"image_ids\.txt:2: image id '/etc/b\.png' must be a path relative"),
    ({"image_ids.txt": "a.png,x\nb.png\n"}, r"image_ids\.txt:1: expected one image id per line"),
    ({"image_ids.txt": "\n\n"}, r"image_ids\.txt: no image id listed"),
    ({"image_sizes.txt": "a.png,4\nb.png,4,4\n"}, r"image_sizes\.txt:1: expected 3 columns 'image_id,width,height'"),
    ({"image_sizes.txt": "a.png,4,4.5\n"}, r"image_sizes\.txt:1: height must be an integer, found '4\.5'"),
    ({"image_sizes.txt": "a.png,0,4\n"}, r"image_sizes\.txt:1: width must be >= 1, found 0"),
    ({"image_sizes.txt": "z.png,4,4\n"}, r"image_sizes\.txt:1: image id 'z.png' is not listed"),
    ({"localization.txt": "a.png,0,0,2\n"}, r"localization\.txt:1: expected 'image_id,x1,y1,x2,y2' \(boxes\) or"),
    ({"localization.txt": "a.png,0,0,2,x\nb.png,0,0,1,1\n"}, r"localization\.txt:1: y2 must be a number, found 'x'"),
    ({"localization.txt": "a.png,3,0,2,2\nb.png,0,0,1,1\n"},
     r"localization\.txt:1: box \(3\.0, 0\.0, 2\.0, 2\.0\) is inverted"),
    ({"image_sizes.txt": "a.png,4,4\nb.png,4,4\n", "localization.txt": "a.png,0,0,5,2\nb.png,0,0,1,1\n"},
     r"localization\.txt:1: box \(0\.0, 0\.0, 5\.0, 2\.0\) is outside the 4×4 image"),
    ({"localization.txt": "a.png,0,0,1,1\nb.png,m.png,\n"}, r"localization\.txt:2: a mask row in a file of box rows"),
    ({"localization.txt": "a.png,m.png,\nb.png,../m.png,\n"},
     r"localization\.txt:2: mask path '\.\./m\.png' must be a path relative"),
    ({"localization.txt": "a.png,m.png,/abs/ign.png\nb.png,m.png,\n"},
     r"localization\.txt:1: ignore path '/abs/ign\.png' must be"),
    ({"localization.txt": "a.png,m.png,\n"},
     r"localization\.txt: no row for image id 'b.png' \(listed at .*image_ids\.txt:2\)"),
    ({"localization.txt": "a.png,m.png,\nq.png,m.png,\n"}, r"localization\.txt:2: image id 'q.png' is not listed"),
    ({"class_labels.txt": None}, r"class_labels\.txt: file not found"),
]


@pytest.mark.parametrize("files,pattern", BAD, ids=[p[:40] for _, p in BAD])
def test_malformed_metadata_names_file_and_line(tmp_path: Path, files: dict, pattern: str):
    write_split(tmp_path, files)
    with pytest.raises(DataError, match=pattern):
        read_metadata(tmp_path, "val")


def test_empty_ignore_path_is_no_ignore_and_missing_mask_is_precise(tmp_path: Path):
    png(tmp_path / "a.png", np.zeros((3, 3, 3), np.uint8))
    png(tmp_path / "b.png", np.zeros((3, 3, 3), np.uint8))
    png(tmp_path / "m.png", np.eye(3, dtype=np.uint8))
    write_split(tmp_path, {"localization.txt": "a.png,m.png,\nb.png,missing.png,\n"})
    a, b = read_metadata(tmp_path, "val")
    assert a.mask == MaskFile(tmp_path / "m.png") and a.mask.ignore is None
    assert torch.equal(load_sample(a)["mask"], torch.eye(3, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"missing\.png: mask file not found \(listed at .*localization\.txt:2\)"):
        load_sample(b)


def test_mask_size_mismatch_in_or_masks(tmp_path: Path):
    png(tmp_path / "a.png", np.zeros((3, 3, 3), np.uint8))
    png(tmp_path / "b.png", np.zeros((3, 3, 3), np.uint8))
    png(tmp_path / "m.png", np.eye(3, dtype=np.uint8))
    png(tmp_path / "m4.png", np.eye(4, dtype=np.uint8))
    write_split(tmp_path, {"localization.txt": "a.png,m.png,\na.png,m4.png,\nb.png,m4.png,\n"})
    a, b = read_metadata(tmp_path, "val")
    with pytest.raises(DataError, match=r"m4\.png: mask is 4×4 but .*m\.png is 3×3"):
        load_sample(a)
    with pytest.raises(DataError, match=r"mask is 4×4 \(W×H\) but image .*b\.png is 3×3"):
        load_sample(b)


def test_missing_metadata_folder_says_how_to_fix(tmp_path: Path):
    with pytest.raises(DataError, match=r"image_ids\.txt: file not found.*wsol data synth"):
        read_metadata(tmp_path, "test")
