"""Dataset registry: a name -> how to list its records, its classes, and (for embedded
sets) how to synthesise it on disk.

Splits follow the survey protocol: ``train`` (image labels only), ``valcl`` (image labels,
B-CL selection), ``valpx`` (a few pixel/box-labelled images per class, B-LOC selection),
``test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from wsol.config import DataConfig
from wsol.data.records import Record, RecordDataset
from wsol.errors import ConfigError

SPLITS = ("train", "valcl", "valpx", "test")


@dataclass
class DatasetSpec:
    """``list_records(root, split, options) -> records``; ``class_names(root, options)``;
    ``loc``: what localisation labels the set has ("mask" or "box");
    ``synthesize(out, n, size, seed)``: writes the set to ``out`` (embedded sets only)."""

    name: str
    list_records: Callable[[Path, str, dict], list[Record]]
    class_names: Callable[[Path, dict], list[str]]
    loc: Literal["mask", "box"]
    description: str = ""
    synthesize: Callable[..., Path] | None = None
    paper: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def available_datasets() -> list[str]:
    import wsol.data.formats  # noqa: F401  (registers every reader)

    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    names = available_datasets()
    if name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; valid: {', '.join(names)}")
    return DATASETS[name]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def build_dataset(cfg: DataConfig, split: str, train: bool = False, keep_original: bool = False) -> RecordDataset:
    """The split as a torch Dataset of transformed Samples (training augmentation when
    ``train``; evaluation transform — a plain resize — otherwise). ``keep_original``: also
    carry the labels at each image's original size (see RecordDataset)."""
    from wsol.data.transforms import build_transform

    spec = get_dataset(cfg.name)
    root = Path(cfg.root)
    records = spec.list_records(root, check_split(split), dict(cfg.options))
    return RecordDataset(records, build_transform(cfg, train), spec.class_names(root, dict(cfg.options)),
                         keep_original=keep_original)
