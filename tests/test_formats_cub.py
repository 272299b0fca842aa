"""CUB-200-2011 / CUB5 readers on a tiny fixture in the official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.formats import cub
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import ConfigError, DataError

CLASSES = (1, 19, 99, 108, 171, 178)  # the 5 of CUB5 plus one other
N_TRAIN, N_TEST = 4, 1  # per class; val 0.2 * 4 -> 1 per class


def _seg(k: int) -> np.ndarray:
    s = np.zeros((16, 16), np.uint8)
    s[4:12, 3:10] = 200  # >= 0.5 * 255: bird
    s[0:2, :] = 100  # < 0.5: not bird
    s[4:6, 3 + k % 4] = 128  # exactly at 0.5 -> bird
    return s


def write_cub(root: Path, with_segmentations: bool = True) -> None:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    images, labels, split, boxes = [], [], [], []
    k = 0
    for c in CLASSES:
        d = f"{c:03d}.Bird_{c}"
        (root / "images" / d).mkdir()
        for j in range(N_TRAIN + N_TEST):
            k += 1
            rel = f"{d}/Bird_{c}_{j:04d}.jpg"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / rel)
            if with_segmentations:
                (root / "segmentations" / d).mkdir(parents=True, exist_ok=True)
                Image.fromarray(_seg(k)).save(root / "segmentations" / d / f"Bird_{c}_{j:04d}.png")
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
            split.append(f"{k} {int(j < N_TRAIN)}")
            boxes.append(f"{k} 1.0 2.0 {10 + k % 3}.0 8.5")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        (root / name).write_text("\n".join(lines) + "\n")


@pytest.fixture()
def cub_root(tmp_path: Path) -> Path:
    root = tmp_path / "CUB_200_2011"
    write_cub(root)
    return root


def test_cub_round_trip_boxes_and_masks(cub_root):
    spec = get_dataset("cub")
    recs = {s: spec.list_records(cub_root, s, {}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 18, "valcl": 6, "valpx": 6, "test": 6}
    names = spec.class_names(cub_root, {})
    assert len(names) == 200 and names[18] == "019.Bird_19"
    ds = RecordDataset(recs["test"] + recs["train"], class_names=names)
    for i in range(len(ds)):
        s = ds[i]
        rec = ds.records[i]
        k = int(rec.extra["cub_id"])
        assert s["image"].shape == (3, 16, 16)
        assert s["label"] == int(rec.image_id[:3]) - 1  # class id 1..200 -> label 0..199
        assert torch.equal(s["boxes"], torch.tensor([[1.0, 2.0, 1.0 + 10 + k % 3, 10.5]]))
        assert torch.equal(s["mask"], torch.from_numpy((_seg(k) >= 128).astype(np.uint8)))
    assert s["mask"].sum() == 8 * 7 + 0  # the 128 column lies inside the 200 block


def test_cub5_subset_labels_and_splits(cub_root):
    spec = get_dataset("cub5")
    recs = {s: spec.list_records(cub_root, s, {}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 15, "valcl": 5, "valpx": 5, "test": 5}
    assert spec.class_names(cub_root, {}) == [f"{c:03d}.Bird_{c}" for c in (19, 99, 108, 171, 178)]
    assert sorted({r.label for r in recs["test"]}) == [0, 1, 2, 3, 4]
    assert {r.image_id[:3] for r in recs["train"] if r.label == 2} == {"108"}
    assert (cub_root / "splits" / "cub5-val0.2-px5-c019_099_108_171_178_seed0" / "train.txt").is_file()


def test_without_segmentations_records_have_boxes_only(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_cub(root, with_segmentations=False)
    s = RecordDataset(cub.SPEC.list_records(root, "test", {}))[0]
    assert "mask" not in s and s["boxes"].shape == (1, 4)


def test_malformed_metadata_reports_lines(cub_root):
    lab = (cub_root / "image_class_labels.txt").read_text().splitlines()
    lab[2] = "3 300"
    (cub_root / "image_class_labels.txt").write_text("\n".join(lab) + "\n")
    box = (cub_root / "bounding_boxes.txt").read_text().splitlines()
    box[4] = "5 1.0 2.0 3.0"
    (cub_root / "bounding_boxes.txt").write_text("\n".join(box) + "\n")
    img = (cub_root / "images.txt").read_text().splitlines()
    img[6] = "7 ../../etc/passwd"
    (cub_root / "images.txt").write_text("\n".join(img) + "\n")
    with pytest.raises(DataError) as e:
        cub.SPEC.list_records(cub_root, "train", {})
    msg = str(e.value)
    assert "image_class_labels.txt:3: class id '300' is not listed" in msg
    assert "bounding_boxes.txt:5: expected '<image id> <x> <y> <width> <height>', found 4 column(s)" in msg
    assert "images.txt:7: path '../../etc/passwd' escapes the dataset folder" in msg


def test_box_outside_image_and_missing_segmentation(cub_root):
    box = (cub_root / "bounding_boxes.txt").read_text().splitlines()
    box[0] = "1 10 2 10 5"  # x2 = 20 > 16
    (cub_root / "bounding_boxes.txt").write_text("\n".join(box) + "\n")
    recs = {r.extra["cub_id"]: r for s in SPLITS for r in cub.SPEC.list_records(cub_root, s, {})}
    with pytest.raises(DataError, match=r"box \[10\.0, 2\.0, 20\.0, 7\.0\] is outside the 16×16 image.*"
                                        r"bounding_boxes\.txt:1"):
        RecordDataset([recs["1"]])[0]
    (cub_root / "segmentations" / recs["2"].image_id).with_suffix(".png").unlink()
    with pytest.raises(DataError, match=r"Bird_1_0001\.png: mask file not found \(listed at .*images\.txt:2\)"):
        RecordDataset([recs["2"]])[0]


def test_bad_classes_option(cub_root):
    with pytest.raises(ConfigError, match="not found: \\[999\\]"):
        cub.SPEC.list_records(cub_root, "train", {"classes": [1, 999]})
    recs = cub.SPEC.list_records(cub_root, "test", {"classes": [99, 1]})
    assert sorted((r.image_id[:3], r.label) for r in recs) == [("001", 1), ("099", 0)]
