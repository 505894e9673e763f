"""Config loading: the one implementation of "mapping -> dataclass" and "YAML/JSON file -> mapping".

Used by stage configs (``suti.config``), training configs (``suti.training.config``) and the dataset
builder's config (``dataset_builder.config``). Errors name the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

__all__ = ["build_dataclass", "read_config_file", "looks_float"]


def looks_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _nested_dataclass(f: dataclasses.Field, owner: type):
    """The dataclass type a field holds, if it is one (a sub-section of the config)."""
    if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
        return f.default_factory
    try:
        hint = typing.get_type_hints(owner).get(f.name)
    except Exception:  # noqa: BLE001 - unresolvable forward references: no nesting
        return None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def build_dataclass(cls, data: Any, where: str, error: type[Exception] = ValueError):
    """``cls(**data)``, recursing into fields that are dataclasses themselves.

    - ``data`` must be a mapping (or already a ``cls``);
    - unknown keys raise ``error`` naming each one as ``where.key`` (a typo in a config file or override);
    - YAML 1.1 reads "1e-4" as a string: such strings given to float fields become floats.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise error(f"{where}: unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
                    f"valid keys are {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = _nested_dataclass(f, cls)
        if sub is not None and (isinstance(value, dict) or value is None and f.default is dataclasses.MISSING):
            value = build_dataclass(sub, value or {}, f"{where}.{name}" if where else name, error)
        elif "float" in str(f.type) and isinstance(value, str) and looks_float(value):
            value = float(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, error):
            raise
        raise error(f"{where}: {e}") from e


def read_config_file(path, what: str = "config", error: type[Exception] = ValueError) -> dict:
    """Read a YAML (.yaml/.yml, or any other suffix) or JSON (.json) file whose top level is a mapping.
    An empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise error(f"cannot parse {what} {path}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be a mapping at the top level, got {type(data).__name__}")
    return data
