"""Typed, validated configuration shared by the node, replay and tools.

Every tunable is a field of a dataclass declared with :func:`param`, which carries the
description and the allowed range. From that one declaration:

* the ROS node declares its parameters (with descriptors) by walking :func:`iter_specs`;
* ``salad_replay`` and other plain-Python tools read the same ``config/salad_ros.yaml``
  with :func:`load_params_yaml` and build the same dataclasses with :func:`from_flat_dict`.

Nested dataclass fields become dotted parameter names (``detector.min_score``), which is
how ROS 2 flattens nested YAML maps. This module imports no rclpy.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: Name under which the node's parameters live in ``config/salad_ros.yaml``.
DEFAULT_NODE_NAME = "salad_loop_closure"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the parameter."""


def one_line(exc: BaseException) -> str:
    """An exception as one line (for start-up errors and service replies)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One flat parameter: dotted name, python type, default and documentation."""

    name: str
    type: type
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


def param(
    default: Any,
    description: str,
    *,
    range: tuple[float, float] | None = None,  # noqa: A002 - mirrors ROS's descriptor name
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare a dataclass field that is also a documented, validated parameter.

    ``range`` is inclusive ``(low, high)`` for numbers; ``choices`` restricts strings.
    """
    meta = {"description": description, "range": range, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(cls: type) -> Any:
    """A nested config whose parameters are prefixed with the field name (``detector.min_score``)."""
    return dataclasses.field(default_factory=cls)


def inline(cls: type) -> Any:
    """A nested config whose parameters keep their own names (no ``name.`` prefix)."""
    return dataclasses.field(default_factory=cls, metadata={"inline": True})


def _prefix(f: dataclasses.Field, prefix: str) -> str:
    return prefix if f.metadata.get("inline") else f"{prefix}{f.name}."


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_specs(cls: type, prefix: str = "") -> list[ParamSpec]:
    """Flatten a (nested) config dataclass into parameter specs, in declaration order."""
    hints = _field_types(cls)
    specs: list[ParamSpec] = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            specs.extend(iter_specs(ftype, _prefix(f, prefix)))
            continue
        if "description" not in f.metadata:
            continue  # internal field, not a parameter
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        specs.append(
            ParamSpec(
                name=name,
                type=_base_type(ftype),
                default=default,
                description=f.metadata["description"],
                range=f.metadata.get("range"),
                choices=f.metadata.get("choices"),
            )
        )
    return specs


def _base_type(t: Any) -> type:
    """``float``, ``int``, ``bool``, ``str`` or ``list`` for a field annotation."""
    origin = typing.get_origin(t)
    if origin in (list, tuple):
        return list
    if t in (float, int, bool, str):
        return t
    raise TypeError(f"unsupported parameter type {t!r}")


def check_value(spec: ParamSpec, value: Any) -> Any:
    """Coerce ``value`` to the spec's type and check range and choices.

    Raises :class:`ConfigError` naming the parameter on any problem.
    """
    name = spec.name
    t = spec.type
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"parameter '{name}': expected true/false, got {value!r}")
    elif t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"parameter '{name}': expected an integer, got {value!r}")
    elif t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"parameter '{name}': expected a number, got {value!r}")
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"parameter '{name}': NaN is not allowed")
    elif t is str:
        if not isinstance(value, str):
            raise ConfigError(f"parameter '{name}': expected a string, got {value!r}")
    elif t is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter '{name}': expected a list, got {value!r}")
        value = list(value)
    if spec.range is not None and t in (int, float):
        lo, hi = spec.range
        if not lo <= value <= hi:
            raise ConfigError(f"parameter '{name}': {value} is outside the allowed range [{lo}, {hi}]")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"parameter '{name}': {value!r} is not one of {', '.join(spec.choices)}")
    return value


def from_flat_dict(cls: type[T], values: Mapping[str, Any], prefix: str = "", *, strict: bool = True) -> T:
    """Build ``cls`` from ``{dotted_name: value}``; absent names keep their defaults.

    With ``strict``, names under ``prefix`` that ``cls`` does not know are refused, so a typo
    in a YAML file is an error instead of a silently ignored setting. After the fields are
    set, the dataclass's own ``validate()`` (if any) checks cross-field rules.
    """
    known = {s.name: s for s in iter_specs(cls, prefix)}
    if strict:
        unknown = sorted(k for k in values if k.startswith(prefix) and k not in known)
        if unknown:
            raise ConfigError(f"unknown parameter '{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return _build(cls, values, prefix, known)


def _build(cls: type[T], values: Mapping[str, Any], prefix: str, known: dict[str, ParamSpec]) -> T:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            kwargs[f.name] = _build(ftype, values, _prefix(f, prefix), known)
        elif name in values and name in known:
            kwargs[f.name] = check_value(known[name], values[name])
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate) and not hasattr(cls, "__post_init__"):  # check_fields already ran it
        validate()
    return obj


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`from_flat_dict`: ``{dotted_name: value}`` of every parameter."""
    out: dict[str, Any] = {}
    hints = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(to_flat_dict(getattr(obj, f.name), _prefix(f, prefix)))
        elif "description" in f.metadata:
            out[prefix + f.name] = getattr(obj, f.name)
    return out


def flatten_mapping(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (how ROS 2 flattens nested parameters)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_mapping(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_params_yaml(path: str | Path, node_name: str = DEFAULT_NODE_NAME) -> dict[str, Any]:
    """Read a ROS 2 parameters file and return the node's parameters as a flat dict.

    Accepts the standard ``node_name: {ros__parameters: {...}}`` layout (also with a
    namespace prefix or the ``/**`` wildcard) and, for convenience, a bare mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read parameters file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameters file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"parameters file {path}: expected a mapping at the top level")
    sections = [v["ros__parameters"] for k, v in data.items() if isinstance(v, Mapping) and "ros__parameters" in v
                and (k in ("/**", node_name) or str(k).rstrip("/").split("/")[-1] == node_name)]
    if not sections:
        if any(isinstance(v, Mapping) and "ros__parameters" in v for v in data.values()):
            raise ConfigError(f"parameters file {path} has no section for node '{node_name}' or '/**'")
        sections = [data]
    flat: dict[str, Any] = {}
    for section in sections:  # '/**' first in file order, node-specific later ones win
        flat.update(flatten_mapping(section))
    return flat


def check_fields(obj: Any) -> None:
    """Check every parameter field of a config instance (types, ranges, choices), then its
    ``validate()``. Call from ``__post_init__`` so direct construction is as safe as YAML."""
    specs = {s.name: s for s in iter_specs(type(obj))}
    for f in dataclasses.fields(obj):
        if f.name in specs:
            object.__setattr__(obj, f.name, check_value(specs[f.name], getattr(obj, f.name)))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
