"""Typed fields of downloaded JSON configs: a field of the wrong type or out of range is a one-line UserError
naming the config and the field (a corrupt or foreign config is refused before anything is built from it).
JSON booleans are Python ints: a bool never passes for a number."""

from __future__ import annotations

from typing import Any

from .errors import UserError

REQUIRED: Any = ...  # `field`'s default when the key must be present


def field(
    d: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    default: Any = REQUIRED,
    *,
    what: str = "",
    none_is_missing: bool = False,
) -> Any:
    """`d[key]` checked against `kind` (a type or a tuple of types; `type(None)` allows null). Missing (or
    null with `none_is_missing`): `default`, or with REQUIRED "{where} lacks '{key}': not a {what}". An int
    passes for a float kind (as a float) when int is not a kind itself."""
    if key not in d or (none_is_missing and d[key] is None):
        if default is REQUIRED:
            raise UserError(f"{where} lacks '{key}': not a {what}")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and int not in kinds and type(value) is int:
        value = float(value)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise UserError(f"{where} field '{key}' must be {names}, got {value!r}")
    return value


def int_at_least(d: dict[str, Any], key: str, default: int | None, low: int, where: str) -> int:
    """`d.get(key, default)` as an int >= `low`, else "{where} {key}=... must be an integer >= {low}"."""
    v = d.get(key, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UserError(f"{where} {key}={v!r} must be an integer >= {low}")
    return v


def positive_int(value: Any, name: str) -> int:
    """`value` itself as a positive int, else "{name} must be a positive integer, got ..."."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value
