"""End-to-end: synthesise a tiny set, train CAM, evaluate both selected checkpoints, report,
resume, CLI commands. Kept small (≤ 60 s on 2 cores)."""

import csv
import json
import shutil

import pytest

from wsol.cli import main
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.pipeline import train_and_evaluate
from wsol.engine.trainer import Trainer
from wsol.runs import load_checkpoint


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic-glas"
    synthesize("synthetic-glas", root, n=16, size=48, seed=1)
    return root


def _cfg(root, run_dir, epochs=2, extra=()):
    return load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=48", f"run_dir={run_dir}",
        "model.backbone.name=resnet18", "model.method.name=cam", f"optim.epochs={epochs}",
        "optim.batch_size=8", "optim.lr=0.01", "eval.batch_size=16", "eval.gallery=2", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cam"
    result, evals = train_and_evaluate(_cfg(tiny_data, run))
    return run, result, evals


def test_run_folder_is_complete(trained):
    run, result, evals = trained
    for f in ("config.yaml", "history.csv", "metrics.json", "report.html",
              "checkpoints/best_loc.pt", "checkpoints/best_cls.pt", "checkpoints/last.pt",
              "eval/best_loc/test/metrics.json", "eval/best_cls/test/curves.json"):
        assert (run / f).is_file(), f
    assert not list(run.rglob("*.tmp")), "no temp files left behind"
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert {"train/ce", "train/total", "valcl/top1_acc", "valpx/pxap", "lr"} <= set(rows[0])
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("best_loc", "best_cls"):
        m = metrics[name]
        assert 0 <= m["pxap"] <= 100 and 0 <= m["top1_acc"] <= 100
        assert 0 <= m["tau"] <= 1
    # the resolved config reproduces the run
    assert load_config(run / "config.yaml").optim.epochs == 2


def test_best_loc_is_the_epoch_with_best_valpx_pxap(trained):
    run, result, _ = trained
    ck = load_checkpoint(run, "best_loc")
    pxaps = [r["valpx/pxap"] for r in result.history]
    assert ck["epoch"] == pxaps.index(max(pxaps))
    assert ck["score"] == pytest.approx(max(pxaps))


def test_same_seed_same_metrics(tiny_data, trained, tmp_path):
    run, result, _ = trained
    again = Trainer(_cfg(tiny_data, tmp_path / "again")).fit()
    assert again.history == result.history


def test_resume_continues_identically(tiny_data, trained, tmp_path):
    run, result, _ = trained
    part = tmp_path / "part"
    Trainer(_cfg(tiny_data, part, epochs=1)).fit()
    # extend to 2 epochs from last.pt: same history as the uninterrupted 2-epoch run
    resumed = Trainer(_cfg(tiny_data, part, epochs=2)).fit(resume=True)
    assert resumed.history == result.history


def test_resume_with_another_config_is_refused(tiny_data, trained, tmp_path):
    run, _, _ = trained
    part = tmp_path / "p2"
    shutil.copytree(run, part)
    from wsol.errors import CheckpointError

    with pytest.raises(CheckpointError, match="another config"):
        Trainer(_cfg(tiny_data, part, extra=["optim.lr=0.5"])).fit(resume=True)


def test_cli_evaluate_and_cam(tiny_data, trained, tmp_path, capsys):
    run, _, _ = trained
    assert main(["evaluate", str(run), "--checkpoint", "last", "--split", "valpx"]) == 0
    m = json.loads((run / "eval/last/valpx/metrics.json").read_text())
    assert "pxap" in m
    # images are stored at the model input size (48), so evaluating at the original size
    # goes through the original-label path and must give the same numbers
    assert main(["evaluate", str(run), "--checkpoint", "last", "--split", "valpx", "--eval-size", "original"]) == 0
    m2 = json.loads((run / "eval/last/valpx/metrics.json").read_text())
    assert m2["pxap"] == pytest.approx(m["pxap"], abs=1e-6)
    img = next(p for p in sorted(tiny_data.rglob("*.png")) if "mask" not in p.parts[-2] and "mask" not in p.name)
    assert main(["cam", str(run), str(img), "--out", str(tmp_path / "cams")]) == 0
    assert (tmp_path / "cams" / f"{img.stem}_heatmap.png").is_file()
    assert (tmp_path / "cams" / f"{img.stem}_overlay.png").is_file()
    assert main(["cam", str(run), str(img), "--out", str(tmp_path / "c2"), "--target", "nope"]) == 2
    assert "unknown class 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_nan_loss_stops_with_a_clear_error(tiny_data, tmp_path):
    from wsol.errors import WSOLError

    with pytest.raises(WSOLError, match="lower optim.lr"):
        Trainer(_cfg(tiny_data, tmp_path / "nan", epochs=1, extra=["optim.lr=1e30"])).fit()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(trained, tmp_path):
    import subprocess

    import numpy as np
    from PIL import Image

    run, _, _ = trained
    html = (run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html, "report must be self-contained"
    # a copy with a probe script: after load, record what rendered into the DOM
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-probe',JSON.stringify({n:i.length,"
             "ok:i.filter(x=>x.complete&&x.naturalWidth>0).length,"
             "rows:document.querySelectorAll('#metrics tbody tr').length}));});"
             "window.onerror=(m)=>document.body.setAttribute('data-error',m);</script>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    import re

    m = re.search(r"data-probe=\"([^\"]+)\"", dom)
    assert m, "report did not finish loading"
    info = json.loads(m.group(1).replace("&quot;", '"'))
    assert 'data-error="' not in dom, "a script error occurred while rendering"
    assert info["rows"] >= 5  # metrics table rows
    assert info["n"] >= 4 and info["ok"] == info["n"]  # every inline image decoded
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,900", (run / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    arr = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert arr.std() > 5  # not a blank page


def test_run_is_self_contained_after_the_data_moves(tiny_data, trained, tmp_path, monkeypatch):
    """run.json records the class names, so `wsol cam` and `wsol report` need only the run
    folder: move the data away and change the working directory."""
    run, _, _ = trained
    info = json.loads((run / "run.json").read_text())
    assert info["class_names"] and info["loc_kind"] == "mask" and info["image_size"] == 48
    assert info["versions"]["torch"]
    img = next(p for p in sorted(tiny_data.rglob("*.png")) if "mask" not in str(p))
    copy = tmp_path / "elsewhere" / "img.png"
    copy.parent.mkdir()
    shutil.copy(img, copy)
    moved_run = tmp_path / "moved-run"
    shutil.copytree(run, moved_run)
    hidden = tmp_path / "hidden-data"
    shutil.copytree(tiny_data, hidden)
    shutil.rmtree(tiny_data)
    try:
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert main(["cam", str(moved_run), "img.png", "--out", "cams"]) == 0
        assert (tmp_path / "elsewhere" / "cams" / "img_heatmap.png").is_file()
        assert main(["report", str(moved_run)]) == 0
    finally:
        shutil.copytree(hidden, tiny_data)


def test_load_run_needs_no_dataset(trained, tmp_path):
    from wsol.runs import load_run

    run, _, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    loaded = load_run(copy, "best_cls", device="cpu")
    assert loaded.class_names == json.loads((run / "run.json").read_text())["class_names"]
    assert not loaded.method.training and loaded.checkpoint == "best_cls"
