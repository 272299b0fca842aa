"""Oxford-102 flowers reader on a tiny fixture in the published layout (.mat via scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from wsol.data.formats import flowers
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import DataError

# 12 images, classes 1..3 (labels 1-based); official split by image number (1-based)
LABELS = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]
TRN, VAL, TST = [1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11, 12]


def _flower(n: int) -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[3:11, 4 + n % 3:12] = True
    return m


def write_flowers(root: Path, labels=LABELS, sets=(TRN, VAL, TST)) -> None:
    (root / "jpg").mkdir(parents=True)
    (root / "segmim").mkdir()
    rng = np.random.default_rng(0)
    for n in range(1, len(labels) + 1):
        img = np.clip(np.array([220, 180, 40]) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "jpg" / f"image_{n:05d}.jpg", quality=95)
        seg = img.copy()
        seg[~_flower(n)] = (0, 0, 254)
        Image.fromarray(seg).save(root / "segmim" / f"segmim_{n:05d}.jpg", quality=90)  # JPEG noise
    sio.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    sio.savemat(root / "setid.mat",
                {k: np.array([v], dtype=np.uint16) for k, v in zip(("trnid", "valid", "tstid"), sets)})


def test_round_trip_official_splits_and_trimap_masks(tmp_path):
    write_flowers(tmp_path)
    spec = get_dataset("flowers")
    recs = {s: spec.list_records(tmp_path, s, {"valpx_per_class": 1}) for s in SPLITS}
    assert [r.image_id for r in recs["train"]] == ["image_00001", "image_00002", "image_00003"]
    assert len(recs["valcl"]) == 6 and len(recs["test"]) == 3
    assert len(recs["valpx"]) == 3 and {r.label for r in recs["valpx"]} == {0, 1, 2}
    assert {r.image_id for r in recs["valpx"]} <= {r.image_id for r in recs["valcl"]}
    ds = RecordDataset(recs["valcl"] + recs["test"])
    for i in range(len(ds)):
        s = ds[i]
        n = int(s["image_id"][-5:])
        assert s["label"] == LABELS[n - 1] - 1 and s["image"].shape == (3, 16, 16)
        # JPEG bleeding may only move pixels next to the flower's border
        m = _flower(n)
        rim = binary_dilation(m) & ~binary_erosion(m)
        err = s["mask"].numpy().astype(bool) != m
        assert not (err & ~rim).any() and err.sum() < rim.sum() // 2
    assert len(spec.class_names(tmp_path, {})) == 102


def test_trimap_threshold_exact():
    rgb = np.array([[[0, 0, 254], [30, 20, 230], [80, 80, 150], [0, 0, 149], [81, 10, 250], [10, 81, 250]]],
                   np.uint8)
    assert flowers.trimap_to_mask(rgb).tolist() == [[0, 0, 0, 1, 1, 1]]


def test_malformed_mat_files(tmp_path):
    labels = list(LABELS)
    labels[4] = 0  # image 5: class 0 is outside 1..102
    write_flowers(tmp_path, labels=labels, sets=(TRN + [4], VAL, TST + [13]))
    with pytest.raises(DataError) as e:
        flowers.SPEC.list_records(tmp_path, "train", {})
    msg = str(e.value)
    assert "imagelabels.mat: labels[5] = 0 (image_00005); expected a class in 1..102" in msg
    assert "setid.mat:valid[1]: image number 4 is already in" in msg
    assert "setid.mat:tstid[4]: image number 13 has no label" in msg
    sio.savemat(tmp_path / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(DataError, match=r"setid\.mat: variable\(s\) valid, tstid missing"):
        flowers.SPEC.list_records(tmp_path, "train", {})
    (tmp_path / "imagelabels.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"imagelabels\.mat: cannot read the MATLAB file"):
        flowers.SPEC.list_records(tmp_path, "train", {})


def test_segmentation_of_another_size_and_missing(tmp_path):
    write_flowers(tmp_path)
    recs = flowers.SPEC.list_records(tmp_path, "train", {})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "segmim" / "segmim_00001.jpg")
    (tmp_path / "segmim" / "segmim_00002.jpg").unlink()
    ds = RecordDataset(recs)
    with pytest.raises(DataError, match=r"mask is 8×8 \(W×H\) but image .*image_00001\.jpg is 16×16 "
                                        r"\(listed at .*setid\.mat:trnid\[1\]\)"):
        ds[0]
    with pytest.raises(DataError, match=r"segmim_00002\.jpg: segmentation file not found"):
        ds[1]
    assert torch.is_tensor(ds[2]["mask"])
