"""wsol.engine.infer: inputs (files, folders, globs), EXIF orientation, output names, and the
full classifier of a backbone built from a local weights file."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.engine.infer import (
    build_pretrained_classifier,
    collect_images,
    imagenet_class_names,
    output_stems,
    read_image,
)
from wsol.errors import ConfigError, DataError


def _png(path: Path, h: int = 6, w: int = 9) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return path


def test_folders_globs_and_files_in_order_without_duplicates(tmp_path):
    a = _png(tmp_path / "d" / "b.png")
    b = _png(tmp_path / "d" / "a.jpg")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    c = _png(tmp_path / "e" / "sub" / "z.png")
    got = collect_images([str(a), tmp_path / "d", str(tmp_path / "e" / "**" / "*.png")])
    assert got == [a, b, c]  # a first (given), the folder adds b (a already there), the glob adds c


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.png: no such file"):
        collect_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image file in this folder"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(DataError, match=r"\*.jpg: no image file matches"):
        collect_images([str(tmp_path / "*.jpg")])


def test_exif_orientation_is_applied(tmp_path):
    # a 4×8 (H×W) landscape picture stored with EXIF orientation 6 ("rotate 90° clockwise
    # to display"): viewers show it 8×4 (portrait), and so must wsol
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=100)
    img = read_image(path)
    assert img.shape == (8, 4, 3)
    # rotating clockwise puts the left half (white) on top
    assert img[:4].mean() > 200 and img[4:].mean() < 50


def test_undecodable_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        read_image(bad)


def test_output_stems_keep_same_named_inputs_apart():
    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("c/y.png")]) == ["a_x", "b_x", "y"]
    assert output_stems([Path("a/x.png"), Path("a/x.jpg")]) == ["a_x_0", "a_x_1"]


def test_imagenet_class_names_ship_with_torchvision():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"


def test_full_classifier_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=1000).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    clf = build_pretrained_classifier("resnet18", str(path))
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():  # the same network: [0, 1] images normalised inside, the head included
        assert torch.allclose(clf(x), ref((x - mean) / std), atol=1e-5)
    assert "backbone.layer4" in dict(clf.named_modules())  # target layers named as in a wsol method


def test_weights_without_a_head_are_refused(tmp_path):
    import torchvision

    sd = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "trunk.pth"
    torch.save(sd, path)
    with pytest.raises(ConfigError, match="has no classifier head"):
        build_pretrained_classifier("resnet18", str(path))
    with pytest.raises(ConfigError, match="needs a trained classifier"):
        build_pretrained_classifier("resnet18", "none")
