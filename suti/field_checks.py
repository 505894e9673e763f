"""Field validation for config dataclasses: each value's type and range, named, before anything is built.

``check_fields(obj, where)`` reads the dataclass's own annotations (``int``, ``float``, ``bool``, ``str``,
``tuple``, ``list``, ``dict`` and ``X | None``), so a field added to a config is checked without new code:
- ``int`` fields take integers only (``1e7`` or ``64.0`` from a file is an error, not a silent cast);
- ``float`` fields take real numbers (ints are widened) and must be finite: NaN and inf are refused;
- fields named ``*_prob`` must lie in [0, 1].
Range checks specific to a field use ``require``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os

__all__ = ["check_fields", "require", "is_int", "is_real"]


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _kinds(annotation) -> tuple[set[str], bool]:
    """'int | None' -> ({'int'}, True). Unknown annotations give an empty set (not checked)."""
    parts = {p.strip() for p in str(annotation).replace("Optional[", "").rstrip("]").split("|")}
    optional = "None" in parts
    return {p for p in parts if p in ("int", "float", "bool", "str", "tuple", "list", "dict")}, optional


def _describe(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def check_fields(obj, where: str, error: type[Exception] = ValueError) -> None:
    """Check (and normalise: int -> float, list -> tuple) every annotated field of dataclass ``obj``."""
    for f in dataclasses.fields(obj):
        kinds, optional = _kinds(f.type)
        if not kinds:
            continue
        name, v = f"{where}.{f.name}", getattr(obj, f.name)
        if v is None:
            if not optional:
                raise error(f"{name} must not be null")
            continue
        if "float" in kinds and is_real(v) and not ("int" in kinds and is_int(v)):
            if not math.isfinite(v):
                raise error(f"{name} must be a finite number, got {v!r}")
            setattr(obj, f.name, float(v))
            v = float(v)
        elif "int" in kinds and is_int(v):
            setattr(obj, f.name, int(v))
        elif "bool" in kinds and isinstance(v, bool):
            pass
        elif "str" in kinds and isinstance(v, str):
            pass
        elif "str" in kinds and isinstance(v, os.PathLike):  # paths given from Python: stored as text
            setattr(obj, f.name, os.fspath(v))
        elif "tuple" in kinds and isinstance(v, (tuple, list)):
            setattr(obj, f.name, tuple(v))
        elif "list" in kinds and isinstance(v, (list, tuple)):
            pass
        elif "dict" in kinds and isinstance(v, dict):
            pass
        else:
            want = " or ".join(sorted(kinds) + (["null"] if optional else []))
            raise error(f"{name} must be {want}, got {_describe(v)}")
        if f.name.endswith("_prob") and is_real(v) and not 0.0 <= v <= 1.0:
            raise error(f"{name} must be in [0, 1], got {v!r}")


def require(ok: bool, where: str, message: str, error: type[Exception] = ValueError) -> None:
    if not ok:
        raise error(f"{where} {message}")
