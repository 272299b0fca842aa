"""Dataset registry: name -> how to list a split's records, the class names and the typed
reader options (and, for embedded sets, how to write the set to disk).

:data:`DATASETS` and :data:`EMBEDDED` are :class:`wsol.registry.Registry` instances filled
lazily from the tables below: a reader module (and OpenCV / SciPy with it) is imported only
when its name is first used. **Adding a dataset = one reader module defining a**
:class:`DatasetSpec` **(with its** ``Options`` **model) + one line in** :data:`READERS`
(an embedded set: an ``EmbeddedSpec`` + one line in :data:`EMBEDDED_SETS`). User code may
also call :func:`register_dataset`.

Splits follow the survey protocol: ``train`` (image labels only), ``valcl`` (image labels,
B-CL selection), ``valpx`` (a few pixel/box-labelled images per class, B-LOC selection),
``test``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from wsol.data.options import NoOptions, OptionInfo, describe_options, parse_options
from wsol.errors import ConfigError
from wsol.registry import Registry

if TYPE_CHECKING:
    from wsol.config import DataConfig
    from wsol.data.embedded.base import EmbeddedSpec
    from wsol.data.records import Record, RecordDataset

SPLITS = ("train", "valcl", "valpx", "test")

#: reader options as a caller gives them: a dict (dotted keys allowed), a validated model, or None
OptionsArg = Mapping[str, Any] | BaseModel | None

#: readers of on-disk formats (name -> "module:attribute" of its DatasetSpec)
READERS = {
    "camelyon16-p512": "wsol.data.formats.camelyon16:SPEC",
    "cars": "wsol.data.formats.cars:SPEC",
    "cub": "wsol.data.formats.cub:SPEC",
    "cub5": "wsol.data.formats.cub:SPEC5",
    "flowers": "wsol.data.formats.flowers:SPEC",
    "folder": "wsol.data.formats.folder:SPEC",
    "glas": "wsol.data.formats.glas:SPEC",
    "tinyimagenet": "wsol.data.formats.tinyimagenet:SPEC",
    "wsoleval-box": "wsol.data.formats.wsoleval:BOX",
    "wsoleval-mask": "wsol.data.formats.wsoleval:MASK",
}
#: embedded sets: wsol writes them itself (name -> "module:attribute" of its EmbeddedSpec)
EMBEDDED_SETS = {
    "ihc-dab": "wsol.data.embedded.ihc:IHC_DAB",
    "synthetic-camelyon": "wsol.data.embedded.synthetic:CAMELYON",
    "synthetic-cub": "wsol.data.embedded.synthetic:CUB",
    "synthetic-glas": "wsol.data.embedded.synthetic:GLAS",
}


@dataclass(eq=False)
class DatasetSpec:
    """A registered dataset.

    ``read_records(root, split, options) -> records`` and ``read_classes(root, options) ->
    names`` receive the reader's typed ``options`` (an instance of ``Options``, a pydantic
    model with ``extra="forbid"``); callers go through :meth:`list_records` /
    :meth:`class_names`, which validate a plain dict first. ``loc``: the localisation labels
    the set has ("mask" or "box")."""

    name: str
    read_records: Callable[[Path, str, Any], list[Record]]
    read_classes: Callable[[Path, Any], list[str]]
    loc: Literal["mask", "box"]
    description: str = ""
    paper: str = ""
    Options: type[BaseModel] = NoOptions

    #: ``synthesize(out, n=None, size=None, seed=0, overwrite=False) -> out`` for sets wsol writes itself
    #: (:class:`~wsol.data.embedded.base.EmbeddedSpec`); None for read-only formats
    synthesize: ClassVar[Callable[..., Path] | None] = None

    def validate(self, options: OptionsArg = None) -> BaseModel:
        """The typed options (ConfigError ``data.options: field: message (got X)`` otherwise)."""
        return parse_options(self.Options, options, self.name)

    def list_records(self, root: str | Path, split: str, options: OptionsArg = None) -> list[Record]:
        return self.read_records(Path(root), split, self.validate(options))

    def class_names(self, root: str | Path, options: OptionsArg = None) -> list[str]:
        return self.read_classes(Path(root), self.validate(options))


DATASETS: Registry[DatasetSpec] = Registry("dataset", {**READERS, **EMBEDDED_SETS}, field="data.name")
EMBEDDED: Registry[EmbeddedSpec] = Registry("embedded dataset", EMBEDDED_SETS, field="data.name")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset from user code (an embedded one in :data:`EMBEDDED` too); a name
    already taken is an error."""
    from wsol.data.embedded.base import EmbeddedSpec

    if spec.name in DATASETS and DATASETS.get(spec.name) is not spec:
        raise ValueError(f"dataset {spec.name!r} is already registered ({DATASETS.describe(spec.name) or 'no description'}); "
                         "choose another name")
    DATASETS.add(spec.name, spec)
    if isinstance(spec, EmbeddedSpec):
        EMBEDDED.add(spec.name, spec)
    return spec


def available_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def validate_options(name: str, options: OptionsArg) -> BaseModel:
    """The typed reader options of dataset ``name`` from a config dict (dotted keys allowed);
    ConfigError ``data.options: field: message (got X)`` otherwise."""
    return get_dataset(name).validate(options)


def describe_dataset(name: str) -> list[OptionInfo]:
    """(field, type, default, description) of every option of dataset ``name``; nested
    options flattened to dotted names (``splits.valcl``), as ``--option`` takes them."""
    return describe_options(get_dataset(name).Options)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def build_dataset(cfg: DataConfig, split: str, train: bool = False, keep_original: bool = False) -> RecordDataset:
    """The split as a torch Dataset of transformed Samples (training augmentation when
    ``train``; evaluation transform — a plain resize — otherwise). ``keep_original``: also
    carry the labels at each image's original size (see RecordDataset). Labels outside the
    class list are a DataError naming their line (:func:`wsol.data.records.check_labels`)."""
    from wsol.data.records import RecordDataset, check_labels
    from wsol.data.transforms import build_transform

    spec = get_dataset(cfg.name)
    root = Path(cfg.root)
    split = check_split(split)
    options = spec.validate(cfg.options)
    records = spec.list_records(root, split, options)
    class_names = spec.class_names(root, options)
    check_labels(records, len(class_names), split, class_names)  # before any batch: the same check as verify's
    return RecordDataset(records, build_transform(cfg, train), class_names, keep_original=keep_original)
