"""Plain class-per-folder reader (users' own data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.data.formats import folder
from wsol.data.records import RecordDataset
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import DataError


def _mask(k: int) -> np.ndarray:
    m = np.zeros((16, 16), np.uint8)
    m[k:k + 6, 2:9] = 255
    return m


def write_folder(root: Path, n: int = 10, masks: bool = True) -> None:
    """classes 'dog' and 'cat' (n images each, one nested); masks for every image but dog/img_0."""
    rng = np.random.default_rng(0)
    for cls in ("dog", "cat"):
        for k in range(n):
            rel = Path(cls) / ("sub" if k == n - 1 else "") / f"img_{k}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
            if masks and (cls, k) != ("dog", 0):
                (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_mask(k)).save((root / "masks" / rel).with_suffix(".png"))
    (root / "notes.txt").write_text("not an image folder entry\n")


def test_seeded_splits_round_trip(tmp_path):
    write_folder(tmp_path)
    spec = get_dataset("folder")
    assert spec.class_names(tmp_path, {}) == ["cat", "dog"]
    recs = {s: spec.list_records(tmp_path, s, {"valpx_per_class": 1}) for s in SPLITS}
    # per class: test round(0.2 * 10) = 2, valcl round(0.2 * 8) = 2, train 6; valpx 1 with a mask
    assert {s: len(r) for s, r in recs.items()} == {"train": 12, "valcl": 4, "valpx": 2, "test": 4}
    ids = {s: {r.image_id for r in rs} for s, rs in recs.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["valcl"] & ids["test"]) and ids["valpx"] <= ids["valcl"]
    assert all(r.has_mask for r in recs["valpx"])
    assert "cat/sub/img_9.png" in set.union(*ids.values())
    ds = RecordDataset([r for rs in recs.values() for r in rs])
    for i in range(len(ds)):
        s = ds[i]
        assert s["label"] == (0 if s["image_id"].startswith("cat/") else 1)
        k = int(s["image_id"].rsplit("_", 1)[1][:-4])
        if s["image_id"] == "dog/img_0.png":
            assert "mask" not in s
        else:
            assert torch.equal(s["mask"], torch.from_numpy((_mask(k) > 0).astype(np.uint8)))
    folder_dir = tmp_path / "splits" / "folder-test0.2-val0.2-px1_seed0"
    assert sorted((folder_dir / "test.txt").read_text().split()) == sorted(ids["test"])


def test_user_given_splits(tmp_path):
    write_folder(tmp_path, n=3)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("cat/img_0.png\ndog/img_1.png\n")
    (tmp_path / "splits" / "test.txt").write_text("cat/img_1.png\n")
    with pytest.raises(DataError, match=r"valcl\.txt.*split file\(s\) missing"):
        folder.SPEC.list_records(tmp_path, "train", {})
    (tmp_path / "splits" / "valcl.txt").write_text("dog/sub/img_2.png\n# a comment\n\ncat/nope.png\n")
    (tmp_path / "splits" / "valpx.txt").write_text("")
    with pytest.raises(DataError, match=r"valcl\.txt:4: unknown image id 'cat/nope\.png'"):
        folder.SPEC.list_records(tmp_path, "train", {})
    (tmp_path / "splits" / "valcl.txt").write_text("dog/sub/img_2.png\n")
    assert [r.image_id for r in folder.SPEC.list_records(tmp_path, "train", {})] == ["cat/img_0.png", "dog/img_1.png"]
    assert folder.SPEC.list_records(tmp_path, "valpx", {}) == []


def test_mask_of_another_size_and_empty_root(tmp_path):
    write_folder(tmp_path, n=3)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "cat" / "img_1.png")
    rec = next(r for s in SPLITS for r in folder.SPEC.list_records(tmp_path, s, {}) if r.image_id == "cat/img_1.png")
    with pytest.raises(DataError, match=r"masks/cat/img_1\.png: mask is 4×4 \(W×H\) but image .* is 16×16"):
        RecordDataset([rec])[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folder found"):
        folder.SPEC.list_records(tmp_path / "empty", "train", {})
