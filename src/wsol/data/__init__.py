"""Data: the Sample contract, joint transforms, dataset registry, format readers and the
embedded (synthetic / small real) datasets."""

from wsol.data.records import Record, RecordDataset, load_sample
from wsol.data.registry import SPLITS, DatasetSpec, available_datasets, build_dataset, get_dataset, register_dataset
from wsol.data.sample import IGNORE, Sample, collate
from wsol.data.transforms import build_transform
from wsol.data.synthetic import ensure_dataset, synthesize

__all__ = [
    "IGNORE",
    "SPLITS",
    "DatasetSpec",
    "Record",
    "RecordDataset",
    "Sample",
    "available_datasets",
    "build_dataset",
    "build_transform",
    "collate",
    "ensure_dataset",
    "get_dataset",
    "load_sample",
    "register_dataset",
    "synthesize",
]
