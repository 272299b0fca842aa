"""Typed dataset options (``data.options``): each reader declares a pydantic ``Options``
model, like a method's ``Params`` — typed fields with defaults and a ``description``,
unknown keys rejected.

- :func:`nest_options` turns dotted keys (``{"splits.valcl": "val"}``, as given by
  ``--option splits.valcl=val``) into nested dicts before validation;
- :func:`parse_options` validates a dict (or passes a ready model through) and raises one
  :class:`~wsol.errors.ConfigError` in the config's format
  ``data.options: field: message (got X)``;
- :func:`describe_options` lists (field, type, default, description) for ``wsol data show``.

Light: imports pydantic only (no reader, no OpenCV).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from wsol.config import format_validation_error
from wsol.errors import ConfigError

FIELD = "data.options"


class ReaderOptions(BaseModel):
    """Base of every reader's ``Options`` (unknown keys rejected, values re-checked on assignment)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(ReaderOptions):
    """A dataset without options: any key is an error."""


class OptionInfo(NamedTuple):
    """One row of :func:`describe_options`: dotted ``field`` name, ``type`` (with its bounds,
    e.g. ``float (>= 0, < 1)``), ``default`` value and ``description``."""

    field: str
    type: str
    default: Any
    description: str


def nest_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}`` (nested dicts are merged; a
    dotted key below a plain value is a ConfigError)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        parts = str(key).split(".")
        if any(not p for p in parts):
            raise ConfigError(f"{FIELD}: malformed key {key!r}; expected a name or a dotted path like splits.valcl")
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{FIELD}: {key!r} sets a key below {'.'.join(parts[:i + 1])!r}, which is a value "
                                  f"({nxt!r}), not a section")
            node = nxt
        last = parts[-1]
        if isinstance(value, Mapping):
            have = node.setdefault(last, {})
            if not isinstance(have, dict):
                raise ConfigError(f"{FIELD}: {key!r} is given both as a value and as a section")
            have.update(nest_options(value))
        elif isinstance(node.get(last), dict):
            raise ConfigError(f"{FIELD}: {key!r} is given both as a section and as a value ({value!r})")
        else:
            node[last] = value
    return out


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The options model of the (nested) section ``loc`` (None when it is not a model)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = _models_in(field.annotation) if field is not None else []
        if not sub:
            return None
        model = sub[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def parse_options(Options: type[BaseModel], options: Mapping[str, Any] | BaseModel | None,
                  dataset: str) -> BaseModel:
    """``options`` (a dict, dotted keys allowed, or an ``Options`` instance) validated against
    ``Options``; a ConfigError ``data.options: field: message (got X)`` otherwise (unknown keys
    also list the valid ones)."""
    if isinstance(options, Options):
        return options
    if isinstance(options, BaseModel):
        raise ConfigError(f"{FIELD}: options of type {type(options).__name__} given to dataset {dataset!r}, "
                          f"which takes {Options.__qualname__}")
    try:
        return Options.model_validate(nest_options(dict(options or {})))
    except ValidationError as e:
        # a check across fields (an option the others make inert) names its field in its text
        msg = format_validation_error(e, FIELD).replace(f"{FIELD}: <root>: ", f"{FIELD}: ")
        for err in e.errors():
            if err["type"] == "extra_forbidden":
                section = _model_at(Options, tuple(err["loc"][:-1]))
                if section is not None:
                    where = ".".join(str(p) for p in err["loc"][:-1])
                    keys = ", ".join(sorted(section.model_fields)) or "none"
                    msg += f"; valid keys for dataset {dataset!r}{' in ' + where if where else ''}: {keys}"
                break
        raise ConfigError(msg) from None


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="))


def _bounds(metadata: list) -> str:
    parts = [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in _BOUNDS if getattr(m, attr, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def describe_options(Options: type[BaseModel], prefix: str = "") -> list[OptionInfo]:
    """(field, type, default, description) of every option; nested sections are flattened
    into dotted names (``splits.valcl``), as ``--option`` takes them."""
    rows: list[OptionInfo] = []
    for name, field in Options.model_fields.items():
        sub = _models_in(field.annotation)
        if sub and typing.get_origin(field.annotation) is None:
            rows += describe_options(sub[0], f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(OptionInfo(prefix + name, _type_name(field.annotation) + _bounds(field.metadata), default,
                               field.description or ""))
    return rows
