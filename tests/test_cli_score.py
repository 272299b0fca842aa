"""`wsol score CAMS_DIR --dataset NAME --root ROOT`: CAMs made by any other code
(wsolevaluation's layout: CAMS_DIR/<image_id>.npy) scored with the exact protocol."""

import json

import cv2
import numpy as np
import pytest
import torch

from wsol.cams import to_cam
from wsol.cli import main
from wsol.data import synthesize
from wsol.data.records import load_mask
from wsol.data.registry import get_dataset
from wsol.metrics import pixel_metrics


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "glas"
    synthesize("synthetic-glas", root, n=16, size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cub"
    synthesize("synthetic-cub", root, n=10, size=32, seed=3)
    return root


def _records(name, root, split="test"):
    return get_dataset(name).list_records(root, split, {})


def _masks(root):
    return {r.image_id: load_mask(r, (32, 32)) for r in _records("synthetic-glas", root)}


def _write(cams_dir, cams: dict, suffix=True):
    for image_id, cam in cams.items():
        path = cams_dir / (f"{image_id}.npy" if suffix else image_id.rsplit(".", 1)[0] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, cam)
    return cams_dir


def _score(capsys, *args):
    rc = main(["score", *map(str, args)])
    io = capsys.readouterr()
    return rc, io.out, io.err


def test_perfect_and_constant_cams(glas, tmp_path, capsys):
    masks = _masks(glas)
    perfect = _write(tmp_path / "perfect", {i: (m == 1).astype(np.float32) for i, m in masks.items()})
    rc, out, _ = _score(capsys, perfect, "--dataset", "synthetic-glas", "--root", glas, "--out", tmp_path / "m.json")
    assert rc == 0 and "PxAP" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["pxap"] == pytest.approx(100.0) and m["n_images"] == len(masks)
    # a constant CAM gives the foreground fraction (the package's documented property);
    # CAMs named without the image's suffix (<id without .png>.npy) are found too
    const = _write(tmp_path / "const", {i: np.zeros((32, 32), np.float32) for i in masks}, suffix=False)
    assert _score(capsys, const, "--dataset", "synthetic-glas", "--root", glas, "--out", tmp_path / "c.json")[0] == 0
    c = json.loads((tmp_path / "c.json").read_text())
    fg = np.concatenate([(m == 1).ravel() for m in masks.values()]).mean()
    assert c["pxap"] == pytest.approx(100 * fg, abs=1e-6)


def test_cams_of_another_size_are_resized_bilinearly(glas, tmp_path, capsys):
    rng = np.random.default_rng(0)
    masks = _masks(glas)
    small = {i: rng.random((12, 20)).astype(np.float32) for i in masks}  # any size, any aspect
    _write(tmp_path / "small", small)
    assert _score(capsys, tmp_path / "small", "--dataset", "synthetic-glas", "--root", glas,
                  "--out", tmp_path / "s.json")[0] == 0
    got = json.loads((tmp_path / "s.json").read_text())["pxap"]
    # by hand: bilinear (align_corners=False) to 32×32, min-max, then the one PxAP
    cams = torch.cat([to_cam(torch.from_numpy(c)[None], (32, 32)) for c in small.values()])
    want = pixel_metrics(cams, torch.from_numpy(np.stack(list(masks.values()))))["pxap"]
    assert got == pytest.approx(want, abs=1e-9)


def _wsolevaluation_pxap(cams, masks, interval):
    """PxAP as wsolevaluation's MaskEvaluator computes it (histograms over
    np.arange(0, 1, interval) + [1, 2, 3], reversed cumulative sums), re-typed here."""
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    pos = sum(np.histogram(c[m == 1], bins=edges)[0] for c, m in zip(cams, masks)).astype(float)
    neg = sum(np.histogram(c[m == 0], bins=edges)[0] for c, m in zip(cams, masks)).astype(float)
    tp, fp = pos[::-1].cumsum(), neg[::-1].cumsum()
    fn = pos.sum() - tp
    nz = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 100 * (precision[1:] * np.diff(recall))[nz[1:]].sum()


@pytest.mark.parametrize("interval", [0.001, 0.01, 0.05])
def test_cam_curve_interval_matches_wsolevaluation(glas, tmp_path, capsys, interval):
    rng = np.random.default_rng(1)
    masks = _masks(glas)
    cams = {i: rng.random((32, 32)).astype(np.float32) for i in masks}
    _write(tmp_path / "r", cams)
    out = tmp_path / "r.json"
    assert _score(capsys, tmp_path / "r", "--dataset", "synthetic-glas", "--root", glas, "--cam-curve-interval",
                  interval, "--out", out)[0] == 0
    m = json.loads(out.read_text())
    assert m["cam_curve_interval"] == pytest.approx(interval)
    want = _wsolevaluation_pxap(list(cams.values()), list(masks.values()), interval)
    assert m["pxap"] == pytest.approx(want, abs=1e-6)


def _box_acc_reference(cams, gts, interval):
    """MaxBoxAcc (V1) the way wsolevaluation's BoxEvaluator loops (cv2 per threshold)."""
    taus = np.arange(0, 1, interval)
    hits = np.zeros(len(taus))
    for cam, gt in zip(cams, gts):
        q = (cam * 255).astype(np.uint8)
        for j, t in enumerate(taus):
            _, binary = cv2.threshold(q, int(t * q.max()), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            if not contours:
                box = np.array([0, 0, 0, 0])
            else:
                x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
                box = np.array([x, y, min(x + w, 31), min(y + h, 31)])
            g = np.asarray(gt, dtype=float).astype(int)
            ix = np.clip(np.minimum(box[2], g[:, 2]) - np.maximum(box[0], g[:, 0]) + 1, 0, None)
            iy = np.clip(np.minimum(box[3], g[:, 3]) - np.maximum(box[1], g[:, 1]) + 1, 0, None)
            inter = ix * iy
            union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - inter
            hits[j] += (inter / union).max() >= 0.5
    return 100 * hits.max() / len(cams)


def test_box_sets_give_maxboxacc(cub, tmp_path, capsys):
    recs = _records("synthetic-cub", cub)
    rng = np.random.default_rng(2)
    perfect, noisy, gts = {}, {}, []
    for r in recs:
        cam = np.zeros((32, 32), np.float32)
        for x1, y1, x2, y2 in np.asarray(r.boxes).astype(int):
            cam[y1:y2, x1:x2] = 1
        perfect[r.image_id] = cam
        noisy[r.image_id] = np.clip(cam * 0.6 + rng.random((32, 32)).astype(np.float32) * 0.5, 0, 1)
        gts.append(np.asarray(r.boxes))
    _write(tmp_path / "p", perfect)
    assert _score(capsys, tmp_path / "p", "--dataset", "synthetic-cub", "--root", cub, "--out", tmp_path / "p.json")[0] == 0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["max_box_acc"] == pytest.approx(100.0)
    assert "pxap" not in p  # a box set
    _write(tmp_path / "n", noisy)
    rc, out, _ = _score(capsys, tmp_path / "n", "--dataset", "synthetic-cub", "--root", cub, "--cam-curve-interval",
                        "0.01", "--out", tmp_path / "n.json")
    assert rc == 0 and "MaxBoxAccV2" in out
    n = json.loads((tmp_path / "n.json").read_text())
    assert n["max_box_acc"] == pytest.approx(_box_acc_reference(list(noisy.values()), gts, 0.01))


def test_missing_and_malformed_cams_are_named(glas, tmp_path, capsys):
    masks = _masks(glas)
    ids = sorted(masks)
    d = _write(tmp_path / "cams", {i: np.zeros((32, 32), np.float32) for i in ids[1:]})
    rc, _, err = _score(capsys, d, "--dataset", "synthetic-glas", "--root", glas)
    assert rc == 2 and "no CAM for 1 of the" in err and f"{ids[0]}.npy" in err
    bad = d / f"{ids[0]}.npy"
    for content, message in ((b"definitely not numpy", "not a readable .npy"),
                             (np.zeros((2, 4, 4), np.float32), "expected a 2-D CAM"),
                             (np.full((32, 32), np.nan, np.float32), "NaN/inf"),
                             (np.array(["a", "b"]), "expected a numeric array"),
                             (np.full((32, 32), 3.0, np.float32), "expected [0, 1]")):
        if isinstance(content, bytes):
            bad.write_bytes(content)
        else:
            np.save(bad, content)
        rc, _, err = _score(capsys, d, "--dataset", "synthetic-glas", "--root", glas)
        assert rc == 2 and str(bad) in err and message in err, err
    assert "--normalize" in err  # the out-of-range CAM says how to fix it
    assert _score(capsys, d, "--dataset", "synthetic-glas", "--root", glas, "--normalize")[0] == 0


def test_fixed_evaluation_size_like_wsolevaluation(glas, tmp_path, capsys):
    masks = _masks(glas)
    _write(tmp_path / "p", {i: (m == 1).astype(np.float32) for i, m in masks.items()})
    assert _score(capsys, tmp_path / "p", "--dataset", "synthetic-glas", "--root", glas, "--image-size", "64",
                  "--out", tmp_path / "m.json")[0] == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["eval_size"] == 64 and m["pxap"] == pytest.approx(100.0)  # CAM and mask both upsampled alike
