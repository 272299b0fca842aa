"""Any dataset in the wsolevaluation metadata layout (Choe et al., 2020): ``wsoleval-mask``
(mask rows, e.g. OpenImages) and ``wsoleval-box`` (box rows, e.g. CUB, ILSVRC).

The layout itself is read and written by :mod:`wsol.data.metadata`. Options say where the
metadata, images and masks live, which metadata folder each wsol split reads
(``splits.valcl=val``) and the class names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from wsol.data.metadata import check_labels, metadata_dir, read_class_names, read_metadata
from wsol.data.options import ReaderOptions
from wsol.data.records import Record
from wsol.data.registry import DatasetSpec
from wsol.errors import ConfigError

PAPER = "Choe et al., Evaluating weakly supervised object localization methods right (CVPR 2020)"


class SplitFolders(ReaderOptions):
    """The metadata split folder each wsol split reads."""

    train: str = Field("train", description="metadata folder of the train split")
    valcl: str = Field("valcl", description="metadata folder of the valcl split (e.g. 'val')")
    valpx: str = Field("valpx", description="metadata folder of the valpx split (e.g. 'val')")
    test: str = Field("test", description="metadata folder of the test split")


class Options(ReaderOptions):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    metadata: str | None = Field(None, description="folder holding the split folders (default <root>/metadata; "
                                                   "relative paths are below root)")
    images: str | None = Field(None, description="root of the image paths (default root)")
    masks: str | None = Field(None, description="root of the mask paths (default root)")
    splits: SplitFolders = Field(default_factory=SplitFolders, description="metadata folder of each wsol split")
    class_names: list[str] | None = Field(None, description="class names (default metadata/class_names.txt, "
                                                            "else 0, 1, ...)")
    num_classes: int | None = Field(None, ge=1, description="number of classes when no class name is given "
                                                            "(default: largest label + 1)")

    @model_validator(mode="after")
    def _num_classes_applies(self) -> Options:
        if self.num_classes is not None and self.class_names:
            raise PydanticCustomError("wsoleval_unapplied", "num_classes is not applied: class_names are given (their "
                                                            "count is the number of classes); give one of them",
                                      {})
        return self


def _opt_path(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else root / p


def list_wsoleval(root: Path, split: str, opts: Options) -> list[Record]:
    mapped = opts.splits.model_dump().get(split, split)
    metadata = _opt_path(root, opts.metadata)
    records = read_metadata(root, mapped, images_root=_opt_path(root, opts.images),
                            masks_root=_opt_path(root, opts.masks), metadata_root=metadata)
    if opts.class_names or (metadata_dir(root, "", metadata) / "class_names.txt").is_file():
        check_labels(records, wsoleval_class_names(root, opts))
    return records


def wsoleval_class_names(root: Path, opts: Options) -> list[str]:
    if opts.class_names:
        return list(opts.class_names)
    names_file = metadata_dir(root, "", _opt_path(root, opts.metadata)) / "class_names.txt"
    if opts.num_classes is not None and names_file.is_file():
        raise ConfigError(f"data.options.num_classes: not applied, {names_file} lists the classes; remove the option "
                          "(or the file)")
    return read_class_names(root, _opt_path(root, opts.metadata), opts.num_classes)


MASK = DatasetSpec(
    name="wsoleval-mask", read_records=list_wsoleval, read_classes=wsoleval_class_names, loc="mask", Options=Options,
    description="any dataset in the wsolevaluation metadata layout with mask rows (e.g. OpenImages)", paper=PAPER,
)
BOX = DatasetSpec(
    name="wsoleval-box", read_records=list_wsoleval, read_classes=wsoleval_class_names, loc="box", Options=Options,
    description="any dataset in the wsolevaluation metadata layout with box rows (e.g. CUB, ILSVRC)", paper=PAPER,
)
