"""Two-stage F-CAM / NEGEV through the engine: a tiny ``cam`` run trained by the Trainer on
synthetic-glas, F-CAM built from it with ``load_run``, one F-CAM epoch through the Trainer,
NEGEV's separate seed classifier."""

import pytest
import torch

import wsol.methods.fcam  # noqa: F401  (registers fcam)
import wsol.methods.negev  # noqa: F401  (registers negev)
from wsol.config import BackboneConfig, MethodConfig, load_config
from wsol.data import synthesize
from wsol.data.registry import build_dataset
from wsol.data.sample import collate
from wsol.engine.trainer import Trainer
from wsol.errors import CheckpointError, ConfigError
from wsol.methods.base import TrainState, build_method
from wsol.runs import load_checkpoint, load_run

SIZE = 32
DECODER = "model.method.params.decoder_channels=[32, 16, 16, 8, 8]"


def _cfg(root, run_dir, method="cam", extra=()):
    return load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", f"data.image_size={SIZE}", f"run_dir={run_dir}",
        "model.backbone.name=resnet18", f"model.method.name={method}", "optim.epochs=1", "optim.batch_size=4",
        "optim.lr=0.01", "eval.batch_size=8", "eval.gallery=0", "device=cpu", *extra,
    ])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic-glas"
    synthesize("synthetic-glas", root, n=8, size=SIZE, seed=1)
    return root


@pytest.fixture(scope="module")
def cam_run(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cam"
    Trainer(_cfg(data_root, run)).fit()
    return run


def _batch(data_root, n=4):
    ds = build_dataset(_cfg(data_root, "unused").data, "train", train=False)
    return collate([ds[i] for i in range(n)])


def _build(name, params, backbone="resnet18", classes=2):
    params = {"decoder_channels": [32, 16, 16, 8, 8], **params}
    return build_method(MethodConfig(name=name, params=params), BackboneConfig(name=backbone), classes)


def test_fcam_from_a_run_folder(cam_run, data_root):
    m = _build("fcam", {"classifier": {"run": str(cam_run)}})  # checkpoint: best_loc by default
    ck = load_checkpoint(cam_run, "best_loc")["model"]
    for k, v in m.classifier.state_dict().items():
        assert torch.equal(v, ck[k]), k
    assert m.class_names == ["benign", "malignant"]
    b = _batch(data_root)
    ref = load_run(cam_run, "best_loc", device="cpu").method
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(b.images).logits, ref(b.images).logits)
        torch.testing.assert_close(m.seed_cams(b.images, b.labels), ref.localize(b.images, b.labels))


def test_fcam_epoch_through_the_engine(cam_run, data_root, tmp_path):
    run = tmp_path / "fcam"
    cfg = _cfg(data_root, run, "fcam", [f"model.method.params.classifier.run={cam_run}", DECODER])
    result = Trainer(cfg).fit()
    row = result.history[0]
    for key in ("train/seed_ce", "train/crf", "train/size_bg", "train/size_fg", "train/total", "valpx/pxap"):
        assert key in row, key
    assert "train/cls_ce" not in row  # the classifier is frozen
    # frozen classifier: weights and BN statistics in the F-CAM checkpoint are the cam run's
    theirs = load_checkpoint(cam_run, "best_loc")["model"]
    ours = load_checkpoint(run, "last")["model"]
    for k, v in theirs.items():
        assert torch.equal(ours[f"classifier.{k}"], v), k
    loaded = load_run(run, "last", device="cpu")
    b = _batch(data_root, n=2)
    with torch.no_grad():
        cams = loaded.method.localize(b.images)
    assert cams.shape == (2, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1


def test_negev_with_a_separate_seed_classifier(cam_run, data_root):
    m = _build("negev", {"classifier": {"run": str(cam_run)}, "seed_checkpoint": "last",
                         "negative_classes": ["benign"]})
    assert m.seed_classifier is not None and m.seed_source is m.seed_classifier
    assert m.negative(torch.tensor([0, 1])).tolist() == [True, False]
    seed_before = {k: v.clone() for k, v in m.seed_classifier.state_dict().items()}
    cls_before = {k: v.clone() for k, v in m.classifier.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.train()
    assert m.classifier.training and not m.seed_classifier.training
    b = _batch(data_root)
    for step in range(2):
        opt.zero_grad()
        m.training_step(b, TrainState(step=step))["total"].backward()
        opt.step()
    for k, v in seed_before.items():
        assert torch.equal(v, m.seed_classifier.state_dict()[k]), k
    assert any(not torch.equal(v, m.classifier.state_dict()[k]) for k, v in cls_before.items())
    # same checkpoint and a frozen classifier: no second copy
    same = _build("negev", {"classifier": {"run": str(cam_run), "checkpoint": "last"}, "seed_checkpoint": "last",
                            "freeze_classifier": True})
    assert same.seed_classifier is None


def test_classifier_run_mismatches_are_clear_errors(cam_run, tmp_path):
    with pytest.raises(ConfigError, match="3 classes|has 2 classes"):
        _build("fcam", {"classifier": {"run": str(cam_run)}}, classes=3)
    with pytest.raises(ConfigError, match="model.backbone.name=resnet18"):
        _build("fcam", {"classifier": {"run": str(cam_run)}}, backbone="resnet34")
    with pytest.raises(CheckpointError, match="not a run folder"):
        _build("fcam", {"classifier": {"run": str(tmp_path / "nothing")}})
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _build("fcam", {"classifier": {"run": str(cam_run), "checkpoint": "best_nothing"}})
