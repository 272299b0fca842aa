"""Tiny-ImageNet reader on a tiny fixture in the published layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.formats import tinyimagenet
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import DataError

WNIDS = ["n02124075", "n01443537"]  # file order, not sorted: label = line order


def write_tiny(root: Path, n_train: int = 5) -> None:
    rng = np.random.default_rng(0)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n"
                                    "n99999999\tunused\n")
    for w in WNIDS:
        (root / "train" / w / "images").mkdir(parents=True)
        lines = []
        for k in range(n_train):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{k}.JPEG")
            lines.append(f"{w}_{k}.JPEG\t{k}\t1\t{8 + k}\t15")
        (root / "train" / w / f"{w}_boxes.txt").write_text("\n".join(lines) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k in range(4):
        img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{WNIDS[k % 2]}\t0\t{k}\t16\t16")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_round_trip_and_splits(tmp_path):
    write_tiny(tmp_path)
    spec = get_dataset("tinyimagenet")
    recs = {s: spec.list_records(tmp_path, s, {"val_fraction": 0.2, "valpx_per_class": 1}) for s in SPLITS}
    assert {s: len(r) for s, r in recs.items()} == {"train": 8, "valcl": 2, "valpx": 2, "test": 4}
    assert spec.class_names(tmp_path, {}) == ["Egyptian cat", "goldfish, Carassius auratus"]
    ds = RecordDataset(recs["train"] + recs["test"])
    for i in range(len(ds)):
        s = ds[i]
        name = s["image_id"].rsplit("/", 1)[1]
        if s["image_id"].startswith("train/"):
            wnid, k = name[:-5].split("_")
            k = int(k)
            assert s["label"] == WNIDS.index(wnid)
            assert torch.equal(s["boxes"], torch.tensor([[float(k), 1.0, 8.0 + k, 15.0]]))
        else:
            k = int(name[4:-5])
            assert s["label"] == k % 2 and torch.equal(s["boxes"], torch.tensor([[0.0, float(k), 16.0, 16.0]]))
        assert s["image"].shape == (3, 16, 16)


def test_malformed_files(tmp_path):
    write_tiny(tmp_path)
    val = (tmp_path / "val" / "val_annotations.txt").read_text().splitlines()
    val[1] = "val_1.JPEG\tn00000000\t0\t0\t4\t4"
    val[2] = "val_2.JPEG\tn01443537\t0\t0\t4"
    val[3] = "/etc/passwd\tn01443537\t0\t0\t4\t4"
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(val) + "\n")
    (tmp_path / "train" / WNIDS[1] / f"{WNIDS[1]}_boxes.txt").unlink()
    with pytest.raises(DataError) as e:
        tinyimagenet.SPEC.list_records(tmp_path, "test", {})
    msg = str(e.value)
    assert f"{WNIDS[1]}_boxes.txt: box file of class {WNIDS[1]}" in msg
    assert "val_annotations.txt:2: class 'n00000000' is not listed" in msg
    assert "val_annotations.txt:3: expected '<file>\\t<wnid>\\t<x1>\\t<y1>\\t<x2>\\t<y2>', found 5 column(s)" in msg
    assert "val_annotations.txt:4: path '/etc/passwd' escapes" in msg
    assert len(e.value.problems) == 4


def test_box_outside_and_missing_image(tmp_path):
    write_tiny(tmp_path)
    box = tmp_path / "train" / WNIDS[0] / f"{WNIDS[0]}_boxes.txt"
    lines = box.read_text().splitlines()
    lines[0] = f"{WNIDS[0]}_0.JPEG\t0\t0\t17\t4"
    lines[1] = f"{WNIDS[0]}_9.JPEG\t0\t0\t4\t4"
    box.write_text("\n".join(lines) + "\n")
    recs = {r.image_id: r for s in SPLITS for r in tinyimagenet.SPEC.list_records(tmp_path, s, {"val_fraction": 0.0})}
    with pytest.raises(DataError, match=rf"box \[0\.0, 0\.0, 17\.0, 4\.0\] is outside .*{WNIDS[0]}_boxes\.txt:1\)"):
        RecordDataset([recs[f"train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"]])[0]
    with pytest.raises(DataError, match=rf"{WNIDS[0]}_9\.JPEG: image file not found .*{WNIDS[0]}_boxes\.txt:2\)"):
        RecordDataset([recs[f"train/{WNIDS[0]}/images/{WNIDS[0]}_9.JPEG"]])[0]
