"""``verify_dataset``: check everything a reader relies on, for every split of any registered
dataset, and report all problems at once (each with its file and line) plus a count table.

Checks: the class list and every split list without error (metadata problems are reported
line by line), image ids unique within a split, train / valcl / test (and valpx against
train and test) disjoint, labels in ``[0, number of classes)``, and per record: the image
(and mask, ignore mask) files exist and fully decode, the mask has the image's size, the
boxes lie inside the image, the size declared by the metadata matches. Missing localisation
labels in ``valpx`` / ``test`` and empty splits are warnings (evaluation needs them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from wsol.data.problems import LocatedError, located
from wsol.data.records import MaskFile, Record, bomb_error, label_errors, load_sample
from wsol.data.registry import SPLITS, get_dataset
from wsol.errors import ConfigError, WSOLError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One thing wrong: ``severity`` ("error" | "warning"), ``split`` ("" when dataset-wide),
    ``where`` ("file:line", a file, or ``data.options``), ``message`` (what was wrong, what
    was expected, how to fix); ``image_id`` when it is about one image."""

    severity: Literal["error", "warning"]
    split: str
    where: str
    message: str
    image_id: str = ""

    def __str__(self) -> str:
        loc = f"[{self.split}] " if self.split else ""
        return f"{self.severity}: {loc}{self.message}"


@dataclass
class CountRow:
    """Images of one class in one split; ``class_id`` -1 is the split's total."""

    split: str
    class_id: int
    class_name: str
    images: int = 0
    with_mask: int = 0
    with_boxes: int = 0


@dataclass
class VerifyReport:
    name: str
    root: Path
    problems: list[Problem] = field(default_factory=list)
    rows: list[CountRow] = field(default_factory=list)
    checked: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def split_counts(self) -> dict[str, int]:
        return {r.split: r.images for r in self.rows if r.class_id == -1}


def _problems(e: WSOLError, split: str, default: str) -> list[Problem]:
    """The problems a reader's error carries, each at the place it names (``default`` for
    an error that names none; option errors are at ``data.options``)."""
    if isinstance(e, ConfigError):
        default = "data.options"
    return [Problem("error", split, where, msg) for where, msg in located(e, default)]


def _check_record(rec: Record) -> None:
    """Decode everything the record points to (PIL ``verify`` first: CRC / structure)."""
    for p in rec.files():
        if Path(p).is_file():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(p) as im:
                        im.verify()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise bomb_error(Path(p), e, "image" if p == rec.image_path else "mask", rec) from None
            except Exception as e:  # PIL raises many types on corrupt files
                raise LocatedError(p, f"corrupt file ({type(e).__name__}: {e}) (listed at {rec.source}); "
                                      "re-download it or remove it from the split") from None
    load_sample(rec)


def verify_dataset(name: str, root: Path, options: dict | None = None, *, decode: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check dataset ``name`` at ``root`` for every split (see module doc). ``decode=False``
    skips opening the files (metadata checks only); ``progress(done, total)`` is called per
    record."""
    spec = get_dataset(name)
    root = Path(root)
    report = VerifyReport(name=name, root=root)
    add = report.problems.append
    per_split: dict[str, list[Record]] = {s: [] for s in SPLITS}
    failed: set[str] = set()
    classes: list[str] = []
    try:
        opts = spec.validate(options)
    except ConfigError as e:  # wrong options: nothing can be listed
        report.problems += _problems(e, "", "data.options")
        opts, failed = None, set(SPLITS)
    if opts is not None:
        try:
            classes = list(spec.class_names(root, opts))
        except WSOLError as e:
            report.problems += _problems(e, "", str(root))
        listed: dict[str, Problem] = {}  # a metadata problem usually breaks every split: report it once
        for split in SPLITS:
            try:
                per_split[split] = list(spec.list_records(root, split, opts))
            except WSOLError as e:
                for p in _problems(e, split, str(root)):
                    if p.message in listed:
                        listed[p.message].split = ""
                    else:
                        listed[p.message] = p
                        add(p)
                failed.add(split)

    # ids: unique within a split, disjoint across splits (valpx may overlap valcl)
    id_sets: dict[str, set[str]] = {}
    for split, recs in per_split.items():
        seen: dict[str, Record] = {}
        for r in recs:
            if r.image_id in seen:
                add(Problem("error", split, r.source, f"{r.source}: image id {r.image_id!r} appears twice in split "
                            f"{split} (also at {seen[r.image_id].source}); remove the duplicate", r.image_id))
            seen.setdefault(r.image_id, r)
        id_sets[split] = set(seen)
    for a, b in (("train", "valcl"), ("train", "test"), ("valcl", "test"), ("train", "valpx"), ("valpx", "test")):
        common = sorted(id_sets[a] & id_sets[b])
        if common:
            shown = ", ".join(common[:5]) + (f" (+{len(common) - 5} more)" if len(common) > 5 else "")
            add(Problem("error", b, "", f"{len(common)} image(s) in both {a} and {b}: {shown}; splits must not overlap"))

    total = sum(len(r) for r in per_split.values())
    done = 0
    decoded: set[tuple[str, str, str]] = set()
    for split, recs in per_split.items():
        rows = {c: CountRow(split, c, classes[c] if c < len(classes) else "?") for c in range(len(classes))}
        total_row = CountRow(split, -1, "(all)")
        if not recs and split not in failed:
            add(Problem("warning", split, "", f"split {split} is empty"))
        for r in recs:
            done += 1
            # the same check as training's (wsol.data.records.check_labels)
            for bad in label_errors([r], len(classes), class_names=classes) if classes else []:
                add(Problem("error", split, r.source, str(bad), r.image_id))
            mask_file = r.mask.path if isinstance(r.mask, MaskFile) else None
            key = (r.image_id, str(r.image_path), str(mask_file))
            if decode and key not in decoded:  # valpx usually repeats valcl: decode (and report) once
                decoded.add(key)
                try:
                    _check_record(r)
                except WSOLError as e:  # at the record's line (else at the file the error names)
                    for where, msg in located(e, ""):
                        add(Problem("error", split, r.source or where, msg, r.image_id))
                except Exception as e:  # a reader's MaskDecoder may fail in its own way
                    add(Problem("error", split, r.source, f"{r.source}: {r.image_id!r}: {type(e).__name__}: {e}",
                                r.image_id))
            has_loc = r.has_mask or r.boxes is not None
            if split in ("valpx", "test") and not has_loc:
                add(Problem("warning", split, r.source, f"{r.source}: {r.image_id!r} has neither mask nor box; "
                            f"{split} images are used for localisation", r.image_id))
            for row in ([rows[int(r.label)]] if int(r.label) in rows else []) + [total_row]:
                row.images += 1
                row.with_mask += int(r.has_mask)
                row.with_boxes += int(r.boxes is not None)
            if progress is not None:
                progress(done, total)
        report.rows += [rows[c] for c in sorted(rows) if rows[c].images] + [total_row]
    report.checked = done
    log.info("verified %s at %s: %d record(s), %d error(s), %d warning(s)",
             name, root, done, len(report.errors), len(report.warnings))
    return report
