"""Run configuration: pydantic schemas, YAML loading and ``--set a.b=c`` overrides.

Every run is one validated YAML (data, model, optim, eval) saved next to its outputs so
the run can be reproduced from its folder. Errors name the field and what was expected,
in one line (see :func:`format_validation_error`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wsol.errors import ConfigError


class _Strict(BaseModel):
    # strict: no silent coercion (``epochs: true`` is not 1, ``"3"`` is not 3)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class AugmentConfig(_Strict):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="strength of brightness/contrast/saturation jitter")


class DataConfig(_Strict):
    name: str = "synthetic-glas"
    root: str = "data/synthetic-glas"
    image_size: int = Field(128, gt=0, description="images are resized to this square size")
    crop_size: int | None = Field(None, gt=0, description="random crop size at training (None: no crop)")
    augment: AugmentConfig = AugmentConfig()
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; 'auto': one per available core (at most 8, at most one "
        "per batch); 0: load in the main process. Never changes results (each sample is seeded from "
        "(seed, epoch, index))")
    cache: bool = Field(False, description="keep every decoded image of a split in memory (sets that fit: GlaS, "
                                           "the embedded sets); decoded once, before the first epoch")
    mask_resize: Literal["opencv", "nearest-exact"] = Field(
        "opencv", description="mask resampling: 'opencv' = cv2 INTER_NEAREST as wsolevaluation; 'nearest-exact' = "
        "centre-aligned nearest")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific reader options")


class BackboneConfig(_Strict):
    name: str = "resnet18"
    weights: str = Field("none", description="'none', a torchvision weights enum name, or a local file path")
    cam_friendly: bool = Field(
        True, description="the WSOL protocol's CAM architectures (wsolevaluation's large_feature_map, f-cam Table "
        "F.2): stride 8, 28×28 maps at 224² — ResNet layer3/layer4 at stride 1; VGG-16 without pool4/pool5 plus "
        "conv6 (3×3, 1024) + ReLU; Inception-v3 as wsolevaluation's InceptionCam (Mixed_6a at stride 1, two "
        "1024-channel 3×3 convs); EfficientNet-Lite0 stride 16; timm models output_stride=8. false: the standard "
        "strides (stride 32)")


class MethodConfig(_Strict):
    name: str = "cam"
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    backbone: BackboneConfig = BackboneConfig()
    method: MethodConfig = MethodConfig()


class OptimConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimiser")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD Nesterov momentum (when momentum > 0)")
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2, description="Adam/AdamW betas")
    weight_decay: float = Field(1e-4, ge=0)
    head_lr_mult: float = Field(10.0, gt=0, description="LR multiplier of the classifier head / new layers")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="mixed precision of the training step: autocast to bfloat16, or float16 with a "
        "GradScaler (not for methods that backpropagate inside training_step)")
    channels_last: bool = Field(False, description="model and images in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager, with a warning, "
                                             "where unsupported)")
    sync_bn: bool = Field(False, description="distributed training (torchrun): BatchNorm as SyncBatchNorm, "
                          "statistics over the global batch (CUDA only); false: each rank's batch")


class SchedConfig(_Strict):
    """Learning-rate schedule, stepped once per epoch; the factor multiplies each parameter
    group's initial LR and never takes it below ``min_lr``."""

    name: Literal["none", "step", "multistep", "cosine", "poly"] = "none"
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which the LR decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step/multistep: decay factor")
    power: float = Field(0.9, gt=0, description="poly: (1 - epoch/epochs) ** power")
    min_lr: float = Field(0.0, ge=0, description="floor of every group's LR")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/(warmup+1) over these epochs")


class EvalConfig(_Strict):
    batch_size: int = Field(32, ge=1)
    every: int = Field(1, ge=1, description="validate every N epochs")
    gallery: int = Field(8, ge=0, description="test images shown in the report gallery")
    selection_metric: str | None = Field(
        None, description="B-LOC metric on valpx (default: pxap on mask sets, max_box_acc_v2 on box sets; "
        "F-CAM's protocol uses max_box_acc)")
    cam_curve_interval: float = Field(
        0.001, ge=1e-5, le=0.5, description="step of the CAM threshold sweeps of PxAP / MaxBoxAcc "
        "(wsolevaluation's cam_curve_interval; 0.001 = its training-time grid of 1000 thresholds)")


class RunConfig(_Strict):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    run_dir: str = "runs/default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    eval: EvalConfig = EvalConfig()


MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2; PyYAML's 1.1 rules need
    ``1.0e-3``), since strict types no longer coerce the string, and that refuses alias
    bombs (a few hundred bytes of nested ``*alias`` expanding to gigabytes): the document's
    size with every alias expanded is computed on the node graph (memoised, so cheap) and
    bounded by ``MAX_YAML_NODES``."""

    def compose_document(self):  # type: ignore[no-untyped-def]
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n: yaml.Node) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 1  # a cycle counts once
                if isinstance(n, yaml.SequenceNode):
                    sizes[id(n)] = 1 + sum(size(c) for c in n.value)
                elif isinstance(n, yaml.MappingNode):
                    sizes[id(n)] = 1 + sum(size(k) + size(v) for k, v in n.value)
            return sizes[id(n)]

        if node is not None and size(node) > MAX_YAML_NODES:
            raise ConfigError(f"config: the YAML expands to more than {MAX_YAML_NODES} values through its aliases "
                              "(*name); write the values out instead of nesting aliases")
        return node


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str):
    """``yaml.safe_load`` with the float rule and the alias bound above (never constructs
    Python objects)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"config: {len(text)} characters of YAML; a config is at most {MAX_YAML_BYTES}")
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 — a SafeLoader subclass


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One readable line per problem: ``source: field.path: message (got value)``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
        got = e.get("input")
        shown = repr(got)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."  # never print a huge (expanded) value
        got_s = "" if isinstance(got, dict) else f" (got {shown})"
        parts.append(f"{loc}: {msg}{got_s}")
    return f"{source}: " + "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML: numbers, booleans, lists...)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: malformed key {key!r}, expected dotted path like optim.lr")
    try:
        value = yaml_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(data: dict, source: str = "config") -> RunConfig:
    """Validate a config: the schema here, then the chosen method's ``Params`` and the
    chosen dataset's ``Options`` through their registries (one place, one error format)."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    validate_plugins(cfg, source)
    return cfg


def validate_plugins(cfg: RunConfig, source: str = "config") -> None:
    """Check ``model.method.params`` and ``data.options`` against the registered method's
    and dataset's typed schemas (imported lazily: only the chosen entries load)."""
    from wsol.data.registry import validate_options
    from wsol.methods.base import validate_params
    from wsol.nn.backbones import BACKBONES

    try:
        BACKBONES.get(cfg.model.backbone.name)
        validate_params(cfg.model.method.name, cfg.model.method.params)
        validate_options(cfg.data.name, cfg.data.options)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (later values win)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


#: the shipped configs (the repository's configs/ links here)
CONFIGS = Path(__file__).parent / "configs"


def config_path(path: str | Path) -> Path:
    """A config file, or a shipped one: ``methods/wildcat`` -> the shipped
    configs/methods/wildcat.yaml, and ``configs/methods/wildcat.yaml`` (the README's paths)
    from any working directory. A file of the user's at that path wins."""
    path = Path(path)
    if path.is_file():
        return path
    rel = path if path.suffix else path.with_suffix(".yaml")
    if rel.parts and rel.parts[0] == "configs" and not rel.is_absolute():
        rel = Path(*rel.parts[1:])
    shipped = CONFIGS / rel
    return shipped if not path.is_absolute() and shipped.is_file() else path


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Load and validate a run config from one or several YAML files merged in order (e.g. a
    dataset file then a method file), then apply ``--set a.b=c`` overrides."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    for p in paths:
        data = deep_merge(data, load_yaml(p))
    data = apply_overrides(data, overrides or [])
    return build_config(data, " + ".join(str(p) for p in paths) or "config")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(cfg))
    tmp.replace(path)
