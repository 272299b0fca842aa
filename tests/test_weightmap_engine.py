"""Both weight-map methods through the engine on a tiny synthetic-cub set: a stage-1 run
(``cam`` / ``siamese``) trained in a fixture, then stage 2 for one or two epochs; the stage-2
run keeps a ``best_s`` checkpoint (the epoch with the highest mean S on valpx), carries f
unchanged, and loads back with :func:`wsol.runs.load_run`."""

from __future__ import annotations

import pytest
import torch

import wsol.methods.siamese  # noqa: F401  (registers the methods until the METHODS table lists them)
import wsol.methods.weightmap  # noqa: F401
import wsol.methods.weightmap_siamese  # noqa: F401
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.trainer import Trainer
from wsol.errors import ConfigError
from wsol.runs import load_checkpoint, load_run

SIZE = 32


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic-cub"
    synthesize("synthetic-cub", root, n=20, size=SIZE, seed=0)  # 10 classes × 2 training images
    return root


def cfg(root, run_dir, method: str, params: dict | None = None, epochs: int = 1, lr: float = 0.01):
    sets = [
        "data.name=synthetic-cub", f"data.root={root}", f"data.image_size={SIZE}", f"run_dir={run_dir}",
        "model.backbone.name=resnet18", f"model.method.name={method}", f"optim.epochs={epochs}",
        "optim.batch_size=20", f"optim.lr={lr}", "eval.batch_size=40", "device=cpu",
    ]
    for k, v in (params or {}).items():
        sets.append(f"model.method.params.{k}={v}")
    return load_config(None, sets)


@pytest.fixture(scope="module")
def cam_run(cub, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "stage1-cam"
    Trainer(cfg(cub, run, "cam")).fit()
    return run


@pytest.fixture(scope="module")
def siamese_run(cub, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "stage1-siamese"
    result = Trainer(cfg(cub, run, "siamese")).fit()
    # a full batch of 20 images, two per class: every image is an anchor
    assert result.history[0]["train/anchor_frac"] == 1.0
    return run


def _f_weights(state: dict, prefix: str = "f.") -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _assert_f_is_stage1(run2, run1):
    f_trained = _f_weights(load_checkpoint(run2, "last")["model"])
    f_stage1 = load_checkpoint(run1, "best_cls")["model"]
    assert f_trained.keys() == f_stage1.keys()
    for k, v in f_stage1.items():
        assert torch.equal(f_trained[k], v), k  # weights and BN buffers, through the engine


def test_method_i_through_the_engine(cub, cam_run, tmp_path):
    run = tmp_path / "weightmap"
    ref = f"{{run: '{cam_run}', checkpoint: best_cls}}"
    result = Trainer(cfg(cub, run, "weightmap", {"classifier": ref, "decoder_channels": "[16, 16, 8, 8, 8]"},
                         epochs=2)).fit()
    rows = result.history
    assert {"train/d", "train/reg", "train/ce", "train/total", "valpx/weight_map_score_s"} <= set(rows[0])
    for r in rows:
        assert 0.0 < r["train/reg"] < 1.0 and r["train/d"] >= 0.0
        assert 0.0 < r["valpx/weight_map_score_s"] <= 1.0
    # best_s: the epoch with the highest mean S on valpx (ties: the later one)
    scores = [r["valpx/weight_map_score_s"] for r in rows]
    ck = load_checkpoint(run, "best_s")
    assert ck["epoch"] == max(range(len(scores)), key=lambda i: (scores[i], i))
    assert ck["score"] == pytest.approx(max(scores))
    _assert_f_is_stage1(run, cam_run)
    # the run loads back without its dataset; the CAMs are M, normalised
    loaded = load_run(run, "best_s", device="cpu")
    assert loaded.method.name == "weightmap" and not loaded.method.f.training
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        cams = loaded.method.localize(x)
        assert cams.shape == (2, SIZE, SIZE) and float(cams.max()) <= 1.0
        torch.testing.assert_close(loaded.method(x).logits, load_run(cam_run, "best_cls", "cpu").method(x).logits)


def test_method_ii_through_the_engine(cub, siamese_run, tmp_path):
    run = tmp_path / "weightmap-siamese"
    ref = f"{{run: '{siamese_run}', checkpoint: best_cls}}"
    result = Trainer(cfg(cub, run, "weightmap_siamese",
                         {"siamese": ref, "decoder_channels": "[16, 16, 8, 8, 8]"})).fit()
    row = result.history[0]
    assert {"train/inner", "train/outer", "train/reg", "valpx/weight_map_score_s"} <= set(row)
    assert row["train/total"] == pytest.approx(row["train/inner"] + row["train/outer"] + row["train/reg"], rel=1e-5)
    assert (run / "checkpoints" / "best_s.pt").is_file()
    _assert_f_is_stage1(run, siamese_run)


def test_stage1_run_must_fit(cub, cam_run, tmp_path):
    from wsol.config import BackboneConfig, MethodConfig
    from wsol.methods.base import build_method

    ref = {"run": str(cam_run), "checkpoint": "best_cls"}
    with pytest.raises(ConfigError, match="needs a `siamese` run"):
        build_method(MethodConfig(name="weightmap_siamese", params={"siamese": ref}), BackboneConfig(), 10)
    with pytest.raises(ConfigError, match="10 classes, this dataset has 3"):
        build_method(MethodConfig(name="weightmap", params={"classifier": ref}), BackboneConfig(), 3)


def test_method_i_on_a_mask_set_selects_by_s(tmp_path):
    root = synthesize("synthetic-glas", tmp_path / "glas", n=16, size=SIZE, seed=1)

    def glas(run, method, extra=()):
        return load_config(None, [
            "data.name=synthetic-glas", f"data.root={root}", f"data.image_size={SIZE}", f"run_dir={run}",
            f"model.method.name={method}", "optim.epochs=1", "optim.batch_size=8", "device=cpu", *extra])

    Trainer(glas(tmp_path / "cam", "cam")).fit()
    result = Trainer(glas(tmp_path / "wm", "weightmap", [
        f"model.method.params.classifier={{run: '{tmp_path / 'cam'}'}}",
        "model.method.params.decoder_channels=[16, 16, 8, 8, 8]"])).fit()
    s = result.history[0]["valpx/weight_map_score_s"]
    assert 0.0 < s <= 1.0
    assert load_checkpoint(tmp_path / "wm", "best_s")["score"] == pytest.approx(s)
