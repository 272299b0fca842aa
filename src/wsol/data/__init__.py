"""Data: the Sample / Batch contract, joint transforms, the dataset registry, format readers
(``formats/``), embedded sets (``embedded/``) and the WSI patch protocol (``wsi/``).

Importing this package is cheap: the names below are loaded on first use (PEP 562), and a
reader, OpenCV or SciPy only when a dataset needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # the contract
    "IGNORE": "wsol.data.sample",
    "Batch": "wsol.data.sample",
    "Sample": "wsol.data.sample",
    "collate": "wsol.data.sample",
    # records and decoding
    "EMPTY_MASK": "wsol.data.records",
    "EmptyMask": "wsol.data.records",
    "MaskDecoder": "wsol.data.records",
    "MaskFile": "wsol.data.records",
    "MaskSource": "wsol.data.records",
    "Record": "wsol.data.records",
    "RecordDataset": "wsol.data.records",
    "check_labels": "wsol.data.records",
    "label_errors": "wsol.data.records",
    "load_sample": "wsol.data.records",
    # registry
    "DATASETS": "wsol.data.registry",
    "EMBEDDED": "wsol.data.registry",
    "SPLITS": "wsol.data.registry",
    "DatasetSpec": "wsol.data.registry",
    "available_datasets": "wsol.data.registry",
    "build_dataset": "wsol.data.registry",
    "check_split": "wsol.data.registry",
    "describe_dataset": "wsol.data.registry",
    "get_dataset": "wsol.data.registry",
    "register_dataset": "wsol.data.registry",
    "validate_options": "wsol.data.registry",
    # transforms
    "build_transform": "wsol.data.transforms",
    # embedded sets
    "embedded_datasets": "wsol.data.embedded",
    "ensure_dataset": "wsol.data.embedded",
    "synthesize": "wsol.data.embedded",
}

__all__ = [
    "Batch",
    "DATASETS",
    "DatasetSpec",
    "EMBEDDED",
    "EMPTY_MASK",
    "EmptyMask",
    "IGNORE",
    "MaskDecoder",
    "MaskFile",
    "MaskSource",
    "Record",
    "RecordDataset",
    "SPLITS",
    "Sample",
    "available_datasets",
    "build_dataset",
    "build_transform",
    "check_labels",
    "check_split",
    "collate",
    "describe_dataset",
    "embedded_datasets",
    "ensure_dataset",
    "get_dataset",
    "label_errors",
    "load_sample",
    "register_dataset",
    "synthesize",
    "validate_options",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsol.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what static checkers see
    from wsol.data.embedded import embedded_datasets, ensure_dataset, synthesize
    from wsol.data.records import (
        EMPTY_MASK,
        EmptyMask,
        MaskDecoder,
        MaskFile,
        MaskSource,
        Record,
        RecordDataset,
        check_labels,
        label_errors,
        load_sample,
    )
    from wsol.data.registry import (
        DATASETS,
        EMBEDDED,
        SPLITS,
        DatasetSpec,
        available_datasets,
        build_dataset,
        check_split,
        describe_dataset,
        get_dataset,
        register_dataset,
        validate_options,
    )
    from wsol.data.sample import IGNORE, Batch, Sample, collate
    from wsol.data.transforms import build_transform
