"""Stanford Cars reader on a tiny fixture in the devkit layout (.mat via scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from wsol.data.formats import cars
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import DataError

DT = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]


def _annos(rows) -> np.ndarray:
    a = np.zeros((1, len(rows)), dtype=DT)
    for j, r in enumerate(rows):
        a[0, j] = r
    return a


def write_cars(root: Path, train_rows=None, test_rows=None) -> None:
    """3 classes; 5 training images per class, 1 test image per class."""
    (root / "devkit").mkdir(parents=True)
    rng = np.random.default_rng(0)
    if train_rows is None:
        train_rows = [(1 + k % 4, 2, 10 + k % 5, 12, 1 + k % 3, f"{k + 1:05d}.jpg") for k in range(15)]
    if test_rows is None:
        test_rows = [(0, 0, 16, 16, c, f"{c:05d}.jpg") for c in (1, 2, 3)]
    for folder, rows in (("cars_train", train_rows), ("cars_test", test_rows)):
        (root / folder).mkdir()
        for r in rows:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / folder / r[5])
    sio.savemat(root / "devkit" / "cars_meta.mat",
                {"class_names": np.array([["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 2012"]],
                                         dtype=object)})
    sio.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annos(train_rows)})
    sio.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _annos(test_rows)})


def test_round_trip_and_splits(tmp_path):
    write_cars(tmp_path)
    spec = get_dataset("cars")
    recs = {s: spec.list_records(tmp_path, s, {"valpx_per_class": 1}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 12, "valcl": 3, "valpx": 3, "test": 3}
    assert spec.class_names(tmp_path, {})[2] == "Audi R8 2012"
    ds = RecordDataset(recs["train"] + recs["test"])
    for i in range(len(ds)):
        s = ds[i]
        folder, fname = s["image_id"].split("/")
        k = int(fname[:5]) - 1
        if folder == "cars_train":
            assert s["label"] == k % 3
            assert torch.equal(s["boxes"], torch.tensor([[1.0 + k % 4, 2.0, 10.0 + k % 5, 12.0]]))
        else:
            assert s["label"] == k and torch.equal(s["boxes"], torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # test ids are distinct from train ids although the file names repeat
    assert {r.image_id for r in recs["test"]} == {"cars_test/00001.jpg", "cars_test/00002.jpg", "cars_test/00003.jpg"}


def test_malformed_annotations(tmp_path):
    train = [(1, 2, 10, 12, 1, "00001.jpg"), (1, 2, 10, 12, 7, "00002.jpg"), (1, 2, 10, 12, 2, "../x.jpg"),
             (1, 2, 30, 12, 2, "00004.jpg")]
    write_cars(tmp_path, train_rows=[train[0], train[3]])
    sio.savemat(tmp_path / "devkit" / "cars_train_annos.mat", {"annotations": _annos(train)})
    with pytest.raises(DataError) as e:
        cars.SPEC.list_records(tmp_path, "train", {})
    msg = str(e.value)
    assert "cars_train_annos.mat:annotations[2]: class 7; expected 1..3" in msg
    assert "cars_train_annos.mat:annotations[3]: path '../x.jpg' escapes" in msg
    sio.savemat(tmp_path / "devkit" / "cars_train_annos.mat", {"annotations": _annos([train[0], train[3]])})
    recs = {r.image_id: r for s in SPLITS for r in cars.SPEC.list_records(tmp_path, s, {"val_fraction": 0.0})}
    with pytest.raises(DataError, match=r"box \[1\.0, 2\.0, 30\.0, 12\.0\] is outside the 16×16 image or inverted "
                                        r"\(listed at .*cars_train_annos\.mat:annotations\[2\]\)"):
        RecordDataset([recs["cars_train/00004.jpg"]])[0]


def test_missing_test_labels_and_meta(tmp_path):
    write_cars(tmp_path)
    a = np.zeros((1, 1), dtype=[f for f in DT if f[0] != "class"])
    a[0, 0] = (0, 0, 4, 4, "00001.jpg")
    sio.savemat(tmp_path / "cars_test_annos_withlabels.mat", {"annotations": a})
    with pytest.raises(DataError, match=r"annotations lack field\(s\) class"):
        cars.SPEC.list_records(tmp_path, "test", {})
    (tmp_path / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DataError, match=r"cars_meta\.mat: Stanford Cars file not found"):
        cars.SPEC.class_names(tmp_path, {})
