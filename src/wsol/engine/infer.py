"""CAMs of arbitrary image files (``wsol cam``): with a trained run, or with any registered
backbone's full classifier from a local weights file (e.g. EfficientNet-Lite0 with the
packaged ImageNet weights) — no training run needed.

Each image is read with its EXIF orientation applied, resized to the model's square input
size, classified (top-k printed by the CLI), and its CAM (for ``target`` or the predicted
class) is upsampled bilinearly to the image's original size and aspect ratio. Written per
image: ``<stem>_heatmap.png``, ``<stem>_overlay.png`` (CAM over the original image) and
``<stem>_cam.npy`` (float32 H×W in [0, 1], the same map).
"""

from __future__ import annotations

import glob
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from wsol.cams import model_logits, to_cam
from wsol.data.sample import Sample
from wsol.data.transforms import Resize, Transform, build_transform
from wsol.engine.evaluate import Localizer
from wsol.errors import ConfigError, DataError
from wsol.fileio import atomic_write_bytes
from wsol.nn.backbones import FeatureBackbone
from wsol.report.overlay import heatmap, overlay, save_png

#: builds a localiser for a loaded model (e.g. an extractor on its backbone)
LocalizerFactory = Callable[[Any], Localizer]

#: files a folder or a glob contributes (a file named explicitly may have any suffix)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})


# --- inputs ------------------------------------------------------------------------------
def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (their image files, sorted, not recursive) and glob
    patterns (``photos/*.jpg``, ``data/**/*.png``), in the order given, without duplicates."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no image file in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        elif p.is_file():
            found = [p]
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(item), recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{item}: no image file matches this pattern")
        else:
            raise DataError(f"{p}: no such file or folder")
        out += [f for f in found if f not in out]
    if not out:
        raise DataError("no input image given; pass image files, folders or glob patterns")
    return out


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 H×W×3 with the EXIF orientation applied (a phone photo taken upright comes
    out upright, as image viewers show it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); pass a PNG/JPEG/TIFF/... image file") from None


def output_stems(images: list[Path]) -> list[str]:
    """One distinct output name per input: the file stem, prefixed by its folder (then an
    index) when two inputs share a stem — ``a/x.png`` and ``b/x.png`` never overwrite."""
    stems = [Path(p).stem for p in images]
    out = [s if stems.count(s) == 1 else f"{Path(p).parent.name}_{s}" for p, s in zip(images, stems)]
    return [s if out.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(out)]


# --- classifiers ---------------------------------------------------------------------------
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (shipped in torchvision's weights metadata; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class PretrainedClassifier(nn.Module):
    """A registered backbone's full classifier (trunk + its own head) taking [0, 1] images.
    ``backbone`` is the :class:`~wsol.nn.backbones.FeatureBackbone` sharing the network's
    modules, registered first so target layers are named ``backbone.<layer>`` as in a wsol
    method (``backbone.layer4``)."""

    backbone: FeatureBackbone

    def __init__(self, net: nn.Module, backbone: FeatureBackbone):
        super().__init__()
        self.backbone = backbone
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.backbone.normalize(x))


def build_pretrained_classifier(name: str, weights: str) -> PretrainedClassifier:
    """The full classifier of backbone ``name`` with ``weights``: a backbone's special value
    (``imagenet-offline`` for efficientnet_lite0), a local state-dict file of the whole
    network (head included; torchvision / timm key names) or a torchvision weights name.
    Standard strides (not CAM-friendly): the head sees what it was trained on."""
    from wsol.nn.backbones import BACKBONES, _state_dict_from_weights

    spec = BACKBONES.get(name)
    w = weights.strip()
    if w.lower() == "none":
        choices = "".join(f"'{k}', " for k in spec.weights)
        raise ConfigError(f"--weights none: `wsol cam --model {name}` needs a trained classifier; give {choices}"
                          "a local state-dict file of the full network, or a torchvision weights name")
    special = spec.weights.get(w.lower())
    if special is not None:
        full, trunk = special(False)
    else:
        full, trunk = spec.build(False)
        sd = _state_dict_from_weights(name, spec, w)
        own = full.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        if missing:
            head = [k for k in missing if k.startswith(("fc.", "classifier.", "head.", "heads."))]
            what = (f"has no classifier head ({', '.join(head[:2])} missing)" if head
                    else f"misses {len(missing)} of the network's {len(own)} tensors (e.g. {missing[0]})")
            raise ConfigError(f"--weights {w}: {what}; `wsol cam --model` needs the state dict of the full "
                              f"{name} classifier, or use a run folder (`wsol cam RUN images...`)")
        _fit_linear_head(full, sd)
        own = full.state_dict()
        bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ConfigError(f"--weights {w}: shape mismatch for {bad[:3]} (weights of another architecture?)")
        full.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)
    return PretrainedClassifier(full, trunk).eval()


def _fit_linear_head(net: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """A classifier trained for another number of classes: each ``nn.Linear`` whose weight in
    ``sd`` has the same input size but another output size is replaced by one of that size."""
    for name, mod in list(net.named_modules()):
        w = sd.get(f"{name}.weight")
        if isinstance(mod, nn.Linear) and w is not None and w.dim() == 2 and w.shape[1] == mod.in_features \
                and w.shape[0] != mod.out_features:
            parent_name, _, leaf = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, leaf, nn.Linear(mod.in_features, int(w.shape[0]), bias=mod.bias is not None))


@dataclass
class CamModel:
    """What ``wsol cam`` needs: a classifier taking [0, 1] images (``model(x)`` gives logits
    or an object with ``.logits``), its class names, the transform to its input (square
    resize), the localiser (``(images, targets) -> CAM``) and the device."""

    model: nn.Module
    class_names: list[str]
    transform: Transform
    localize: Localizer
    device: torch.device


def default_layer(model: nn.Module) -> str:
    """The last stage of the model's backbone (the layer CAMs are usually taken from)."""
    from wsol.nn.backbones import FeatureBackbone

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, FeatureBackbone):
        raise ConfigError("--layer is required for this model (no standard backbone found)")
    return f"backbone.{backbone.default_layer}"


def pretrained_cam_model(name: str, weights: str, *, extractor: str = "gradcam", layer: str | None = None,
                         image_size: int = 224, class_names: list[str] | None = None,
                         device: torch.device | str | None = None) -> CamModel:
    """A :class:`CamModel` from a backbone's full classifier (see
    :func:`build_pretrained_classifier`): CAMs from ``extractor`` on ``layer`` (default: the
    backbone's last stage). Class names: ``class_names``, else ImageNet's for a 1000-way
    head, else ``class 0``, ``class 1``, ..."""
    from wsol.explain import build_extractor
    from wsol.runs import resolve_device

    dev = torch.device(device) if device is not None else resolve_device("auto")
    model = build_pretrained_classifier(name, weights).to(dev)
    with torch.no_grad():
        n_out = model_logits(model(torch.zeros(1, 3, image_size, image_size, device=dev))).shape[1]
    if class_names is None:
        class_names = imagenet_class_names() if n_out == 1000 else [f"class {i}" for i in range(n_out)]
    if len(class_names) != n_out:
        raise ConfigError(f"--classes: {len(class_names)} names for a classifier with {n_out} outputs")
    ex = build_extractor(extractor, model, layer or default_layer(model))
    return CamModel(model, class_names, Resize(image_size), ex, dev)


def run_cam_model(run_dir: Path | str, checkpoint: str = "best_loc",
                  localizer_factory: LocalizerFactory | None = None) -> CamModel:
    """A :class:`CamModel` from a trained run folder (its dataset is not needed): the
    method's own ``localize`` unless ``localizer_factory`` gives another (an extractor)."""
    from wsol.runs import load_run

    run = load_run(Path(run_dir), checkpoint)
    method = run.method
    localize = localizer_factory(method) if localizer_factory is not None else method.localize
    return CamModel(method, run.class_names, build_transform(run.config.data, train=False), localize, run.device)


# --- CAMs ----------------------------------------------------------------------------------
def _target_id(target: str | None, class_names: list[str]) -> int | None:
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    shown = ", ".join(class_names[:20]) + (f", ... ({len(class_names)} classes)" if len(class_names) > 20 else "")
    raise ConfigError(f"--target: unknown class {target!r}; valid: {shown} (or an id)")


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def cam_files(cm: CamModel, images: Sequence[str | Path], out: Path, *, target: str | None = None,
              topk: int = 5) -> list[dict[str, Any]]:
    """For every image (files, folders, globs; see :func:`collect_images`): classify, compute
    the CAM of ``target`` (default: the predicted class) at the original resolution, write
    its heatmap, overlay and ``.npy``. Returns one row per image: ``image``, ``size``
    (W, H), ``predicted``, ``prob``, ``topk`` [(class, p)], ``target``, ``heatmap``,
    ``overlay``, ``cam``."""
    paths = collect_images(images)
    tid = _target_id(target, cm.class_names)
    cm.model.eval()
    rows = []
    for path, stem in zip(paths, output_stems(paths)):
        img = read_image(path)
        h, w = img.shape[:2]
        sample: Sample = {"image": torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0), "label": 0,
                          "image_id": path.name}
        x = cm.transform(sample)["image"][None].to(cm.device)
        with torch.no_grad():
            prob = model_logits(cm.model(x)).float().softmax(1)[0]
        pred = int(prob.argmax())
        t = torch.tensor([pred if tid is None else tid], device=cm.device)
        cam = to_cam(cm.localize(x, t).detach().float(), (h, w))[0].cpu().numpy().astype(np.float32)
        p, idx = prob.topk(min(topk, prob.numel()))
        files = {k: Path(out) / f"{stem}_{k}.{ext}" for k, ext in (("heatmap", "png"), ("overlay", "png"), ("cam", "npy"))}
        save_png(files["heatmap"], heatmap(cam))
        save_png(files["overlay"], overlay(img, cam))
        save_npy(files["cam"], cam)
        rows.append({"image": str(path), "size": (w, h), "predicted": cm.class_names[pred], "prob": float(prob[pred]),
                     "topk": [(cm.class_names[int(i)], float(v)) for v, i in zip(p, idx)],
                     "target": cm.class_names[int(t)], **{k: str(v) for k, v in files.items()}})
    return rows


def cam_images(run_dir: Path, images: Sequence[str | Path], out: Path, *, checkpoint: str = "best_loc",
               target: str | None = None, localizer_factory: LocalizerFactory | None = None,
               topk: int = 5) -> list[dict[str, Any]]:
    """:func:`cam_files` with a trained run folder (needs only the run folder, not its dataset)."""
    return cam_files(run_cam_model(run_dir, checkpoint, localizer_factory), images, out, target=target, topk=topk)
