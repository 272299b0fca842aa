"""The command line's small promises: --version, `--set` typos blamed on --set, README
config paths from any directory, plain progress lines without a terminal, top-5 only with
more than five classes, CAM-friendly backbones by default."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsol import __version__
from wsol.cli import main
from wsol.config import BackboneConfig, dump_config, load_config
from wsol.data import synthesize
from wsol.engine.callbacks import LogCallbacks
from wsol.fileio import atomic_write_text
from wsol.methods.base import build_method
from wsol.runs import RunInfo, checkpoint_path, save_checkpoint, write_run_info


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wsol {__version__}"
    out = subprocess.run([sys.executable, "-m", "wsol", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"wsol {__version__}"


def test_set_typo_is_blamed_on_set_not_on_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # README paths resolve from any directory (the shipped configs)
    rc = main(["train", "-c", "configs/datasets/synthetic-glas.yaml", "-c", "configs/methods/wildcat.yaml",
               "--set", "optim.lr=0.1", "--set", "optim.epoch=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--set optim.epoch=1: optim.epoch: unknown key" in err
    assert "wildcat.yaml" not in err and "optim.lr=0.1" not in err
    # a typo inside a YAML file is still blamed on that file
    (tmp_path / "bad.yaml").write_text("optim: {epoch: 3}\n")
    assert main(["train", "-c", "bad.yaml", "--set", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: optim.epoch: unknown key" in err and "--set" not in err
    # the demo too (its dataset is not generated: the config fails first)
    assert main(["demo", "--set", "model.method.name=wildcatt", "--data-root", str(tmp_path / "d")]) == 2
    assert "--set model.method.name=wildcatt:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_shipped_config_names_and_paths(tmp_path, monkeypatch):
    from wsol.config import CONFIGS
    from wsol.config import config_path as _config_path

    monkeypatch.chdir(tmp_path)
    for given in ("configs/methods/wildcat.yaml", "methods/wildcat", "methods/wildcat.yaml", "./configs/methods/wildcat"):
        assert _config_path(Path(given)) == CONFIGS / "methods" / "wildcat.yaml", given
    (tmp_path / "configs" / "methods").mkdir(parents=True)
    (tmp_path / "configs" / "methods" / "wildcat.yaml").write_text("{}\n")
    local = Path("configs/methods/wildcat.yaml")
    assert _config_path(local) == local  # a file of the user's own wins


def test_log_callbacks_one_line_per_epoch_and_evaluation_with_eta():
    t = [0.0]
    lines = []
    cb = LogCallbacks(epochs=4, emit=lines.append, heartbeat=0, clock=lambda: t[0])
    for epoch in (1, 2):
        cb.on_stage(f"epoch {epoch}/4", 100)
        t[0] += 8
        cb.on_advance(100)
        cb.on_stage("valpx", 10)
        t[0] += 2
        cb.on_advance(10)
        cb.on_epoch_end({"epoch": epoch, "train/total": 0.5, "valpx/pxap": 40.0 + epoch})
    assert lines == [
        "[0:00:10] valpx: 10/10 images in 2.0 s",
        "[0:00:10] epoch 1/4  train/total=0.5  valpx/pxap=41  ETA 0:00:30",  # 10 s per epoch, 3 to go
        "[0:00:20] valpx: 10/10 images in 2.0 s",
        "[0:00:20] epoch 2/4  train/total=0.5  valpx/pxap=42  ETA 0:00:20",
    ]


def test_log_callbacks_heartbeat_inside_a_long_stage():
    t = [0.0]
    lines = []
    cb = LogCallbacks(emit=lines.append, heartbeat=60, clock=lambda: t[0])
    cb.on_stage("best_loc: test", 1000)
    t[0] = 61
    cb.on_advance(250)  # a quarter in 61 s: 183 s to go
    assert lines == ["[0:01:01] best_loc: test: 250/1000 images, stage ETA 0:03:03"]


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "glas"
    synthesize("synthetic-glas", root, n=16, size=32, seed=0)
    return root


def test_train_without_a_terminal_prints_plain_progress_lines(glas, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--no-eval", "--set", "data.name=synthetic-glas", "--set", f"data.root={glas}",
                 "--set", "data.image_size=32", "--set", "model.backbone.cam_friendly=false", "--set", "optim.epochs=2",
                 "--set", "optim.batch_size=8", "--set", "data.num_workers=0", "--set", f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    epoch_lines = [ln for ln in out.splitlines() if " epoch " in ln]
    assert len(epoch_lines) == 2 and "epoch 1/2" in epoch_lines[0] and "ETA" in epoch_lines[0]
    assert any("valpx:" in ln and "images in" in ln for ln in out.splitlines())
    assert "━" not in out  # no progress bar drawn into a log


def _fake_run(path, data_root, n_classes):
    cfg = load_config(None, ["data.name=synthetic-glas", f"data.root={data_root}", "data.image_size=32",
                             f"run_dir={path}", "model.backbone.cam_friendly=false", "device=cpu",
                             "data.num_workers=0"])
    torch.manual_seed(0)
    method = build_method(cfg.model.method, cfg.model.backbone, n_classes)
    atomic_write_text(path / "config.yaml", dump_config(cfg))
    write_run_info(path, RunInfo(method="cam", class_names=[f"c{i}" for i in range(n_classes)], loc_kind="mask",
                                 image_size=32, data_root=str(data_root), dataset="synthetic-glas"))
    save_checkpoint(checkpoint_path(path, "best_loc"), {"model": method.state_dict(), "epoch": 0})
    return path


@pytest.mark.parametrize("n_classes,shown", [(2, False), (6, True)])
def test_top5_accuracy_only_with_more_than_five_classes(glas, tmp_path, capsys, n_classes, shown):
    run = _fake_run(tmp_path / "run", glas, n_classes)
    assert main(["evaluate", str(run), "--checkpoint", "best_loc", "--split", "valpx"]) == 0
    out = capsys.readouterr().out
    assert "accuracy (%)" in out and ("top-5 accuracy" in out) is shown


def test_cam_friendly_is_the_default():
    assert BackboneConfig().cam_friendly is True
    method = build_method(load_config(None, []).model.method, BackboneConfig(name="resnet18"), 2).eval()
    with torch.no_grad():
        out = method(torch.rand(1, 3, 64, 64))
    assert out.logits.shape == (1, 2)
    assert method.backbone(torch.rand(1, 3, 64, 64)).shape[-2:] == (8, 8)  # stride 8, not 32
