"""The error of every spec, and the value checks and limits that every spec kind shares.

Each check takes ``(value, path)`` and returns the normalized value or raises a
:class:`SpecError` naming ``path`` (a key path such as ``"models[1].depth"``),
in the words the spec reference page quotes. Unknown keys are refused with a
did-you-mean (:func:`check_keys`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kernelattn.errors import KernelattnError

__all__ = [
    "DEFAULT_MAX_CELLS",
    "MAX_CELLS_ENV_VAR",
    "MAX_WIDTH",
    "FrozenMapping",
    "SpecError",
    "SpecFileNotFoundError",
    "check_bool",
    "check_cell_count",
    "check_choice",
    "check_int",
    "check_keys",
    "check_mapping",
    "check_real",
    "check_str",
    "freeze",
    "freeze_mapping",
    "int_text",
    "join_path",
    "naming_source",
    "nullable",
    "real_text",
    "resolve_max_cells",
    "show",
    "thaw",
]


class SpecError(KernelattnError, ValueError):
    """An invalid experiment spec.

    Attributes:
      path: the offending key path, e.g. ``"models[1].depth"`` (``""`` for the
        spec as a whole).
      problem: what is wrong with it.
      source: the file the spec came from, if any.
    """

    def __init__(self, path: str, problem: str, source: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {problem}" if path else f"{where}{problem}")


class SpecFileNotFoundError(SpecError, FileNotFoundError):
    """A spec file that does not exist (a ``SpecError`` and a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------- value checks
# Each check takes (value, path) and returns the normalized value or raises SpecError.


def show(value: Any) -> str:
    """A value as a message echoes it: JSON words (``true``, ``null``), long JSON cut at 60 characters."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


def int_text(minimum: int | None = None, maximum: int | None = None) -> str:
    """What :func:`check_int` accepts, in the words of its message."""
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    return "an integer" + (" " + " and ".join(bounds) if bounds else "")


def check_int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within the bounds (a float only if integral, never a bool)."""
    want = int_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {want}, got {show(value)}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise SpecError(path, f"expected {want}, got {show(value)}")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SpecError(path, f"expected {want}, got {value}")
    return value


def real_text(
    minimum: float | None = None, strict: bool = False, maximum: float | None = None, strict_max: bool = False
) -> str:
    """What :func:`check_real` accepts, in the words of its message."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if strict else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"{'<' if strict_max else '<='} {maximum:g}")
    return "a number" + (" " + " and ".join(bounds) if bounds else "")


def check_real(
    value: Any,
    path: str,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
    strict_max: bool = False,
) -> float:
    """A finite number within the bounds (``strict``/``strict_max``: excluding them), as a float."""
    want = real_text(minimum, strict, maximum, strict_max)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {want}, got {show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(path, f"expected a finite number, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise SpecError(path, f"expected {want}, got {value:g}")
    if maximum is not None and (value > maximum or (strict_max and value == maximum)):
        raise SpecError(path, f"expected {want}, got {value:g}")
    return value


def check_bool(value: Any, path: str) -> bool:
    """``true`` or ``false`` (never a string or a number)."""
    if not isinstance(value, bool):
        raise SpecError(path, f"expected true or false, got {show(value)}")
    return value


def check_str(value: Any, path: str) -> str:
    """A string."""
    if not isinstance(value, str):
        raise SpecError(path, f"expected a string, got {show(value)}")
    return value


def check_choice(value: Any, path: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """One of ``choices`` (with ``aliases``: any case, an alias resolved), else a did-you-mean."""
    if isinstance(value, str):
        canonical = (aliases or {}).get(value.lower(), value.lower() if aliases else value)
        if canonical in choices:
            return canonical
        hint = difflib.get_close_matches(value, list(choices) + list(aliases or {}), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise SpecError(path, f"expected one of {list(choices)}, got {show(value)}{suggestion}")
    raise SpecError(path, f"expected one of {list(choices)}, got {show(value)}")


def nullable(check: Callable[..., Any]) -> Callable[..., Any]:
    """``check`` that also accepts ``null`` (as ``None``)."""

    def check_or_null(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return check_or_null


def check_mapping(value: Any, path: str, what: str = "an object") -> Mapping[str, Any]:
    """A JSON object (a mapping with string keys), returned as given."""
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected {what} ({{...}}), got {show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"expected string keys, got {show(key)}")
    return value


def check_keys(
    mapping: Mapping[str, Any], path: str, allowed: Sequence[str], required: Sequence[str] = (), context: str = ""
) -> None:
    """Unknown keys are errors (with a did-you-mean); missing required keys too."""
    for key in mapping:
        if key not in allowed:
            hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            where = f" {context}" if context else ""
            raise SpecError(join_path(path, key), f"unknown key{where}{suggestion} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in mapping:
            raise SpecError(join_path(path, key), "required key is missing")


def join_path(path: str, key: str | int) -> str:
    """The key path of ``key`` (a name or a list index) inside ``path``: ``"models[1]"``, ``"kernel.sigma_w"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _json_value(value: Any, path: str) -> Any:
    """Any JSON value (no NaN/inf), returned with lists turned into tuples for hashing."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value}")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v, join_path(path, i)) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return freeze_mapping(value, path)
    raise SpecError(path, f"expected a JSON value, got {type(value).__name__}")


def thaw(value: Any) -> Any:
    """Frozen option value (tuples, ``FrozenMapping``) back to JSON lists and dicts."""
    if isinstance(value, FrozenMapping):
        return {k: thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


class FrozenMapping(tuple):
    """A sorted tuple of (key, value) pairs that thaws back into a dict."""


def freeze_mapping(value: Mapping[str, Any], path: str) -> FrozenMapping:
    """A JSON object as a hashable ``FrozenMapping`` (its values frozen too)."""
    check_mapping(value, path)
    return FrozenMapping(sorted((k, freeze(v, join_path(path, k))) for k, v in value.items()))


def freeze(value: Any, path: str) -> Any:
    """Any JSON value made hashable: lists as tuples, objects as ``FrozenMapping``s (no NaN/inf)."""
    if isinstance(value, Mapping):
        return freeze_mapping(value, path)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v, join_path(path, i)) for i, v in enumerate(value))
    return _json_value(value, path)


# --------------------------------------------------------------------------- limits

#: Largest width a spec may ask for (the streaming kernels run it in O(n² + n·chunk) memory).
MAX_WIDTH = 2**20
#: Largest grid a spec may describe unless the limit is raised: at ~1 s a cell, 100,000 cells
#: already take more than a day, and planning alone of a 4-million-cell grid takes an hour.
DEFAULT_MAX_CELLS = 100_000
#: Environment variable overriding ``DEFAULT_MAX_CELLS`` (the ``max_cells=`` argument wins over it).
MAX_CELLS_ENV_VAR = "KERNELATTN_MAX_CELLS"


def resolve_max_cells(value: Any = None) -> int:
    """The cell limit: ``value``, else ``$KERNELATTN_MAX_CELLS``, else ``DEFAULT_MAX_CELLS``."""
    if value is None:
        env = os.environ.get(MAX_CELLS_ENV_VAR)
        if not env:
            return DEFAULT_MAX_CELLS
        try:
            value = int(env)
        except ValueError:
            raise SpecError("", f"${MAX_CELLS_ENV_VAR}: expected an integer >= 1, got {env!r}") from None
        return check_int(value, f"${MAX_CELLS_ENV_VAR}", minimum=1)
    return check_int(value, "max_cells", minimum=1)


def check_cell_count(n_cells: int, limit: int, breakdown: str) -> None:
    """Refuse a grid of more than ``limit`` cells, with the count and how it arises."""
    if n_cells > limit:
        raise SpecError(
            "",
            f"the grid has {n_cells:,} cells ({breakdown}), more than the limit of {limit:,}; "
            f"split the spec, or raise the limit (max_cells=, --max-cells or ${MAX_CELLS_ENV_VAR})",
        )


def naming_source(parse: Callable[..., Any], data: Any, source: str | None, max_cells: int | None) -> Any:
    """``parse(data, source, limit)`` with the resolved cell limit; a ``SpecError`` that names no file gets
    ``source`` (the file the spec came from) when there is one."""
    try:
        return parse(data, source, resolve_max_cells(max_cells))
    except SpecError as err:
        if source and err.source is None:
            raise SpecError(err.path, err.problem, source) from None
        raise
