"""Spec files, read strictly, and the store names specs give.

- :func:`read_spec_file`: UTF-8, no duplicate keys, no NaN/Infinity, a regular
  file (a directory or a FIFO is refused unopened), at most ``MAX_SPEC_BYTES``;
- :func:`check_store_name`: ``name`` is one directory name (the store is
  ``<out>/<name>``, so separators, ``..`` and absolute paths are refused).
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from kernelattn.experiments.specs.checks import SpecError, SpecFileNotFoundError, check_str, show

__all__ = ["MAX_NAME_LENGTH", "MAX_SPEC_BYTES", "check_store_name", "read_spec_file", "spec_and_source"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Longest store name (one directory name; filesystems allow 255 bytes).
MAX_NAME_LENGTH = 200
#: Largest spec file read: a spec is a few KB.
MAX_SPEC_BYTES = 16 * 2**20


def check_store_name(value: Any, path: str = "name") -> str:
    """A store name: one directory name of letters, digits, ``_ . -`` not starting with ``.``.

    The store of a spec is ``<out>/<name>``, so a name with a separator, a
    ``..`` or an absolute path would write outside ``out``: refused, for
    every kind of spec.
    """
    name = check_str(value, path)
    if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            path,
            f"expected a store directory name (letters, digits, '_', '.', '-', not starting with "
            f"'.', at most {MAX_NAME_LENGTH} characters: no path separators, no '..', not "
            f"absolute), got {show(name)}",
        )
    return name


class _BadJSONError(ValueError):
    """Raised from inside ``json.loads`` hooks; turned into a ``SpecError`` naming the file."""


def _reject_constant(name: str) -> Any:
    raise _BadJSONError(f"{name} is not a JSON number (use a finite number or null)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _BadJSONError(f"duplicate key {key!r} in one JSON object (the later value would silently win)")
        seen[key] = value
    return seen


def spec_and_source(spec: Any) -> tuple[Any, str | None]:
    """A spec given as a file path (read by :func:`read_spec_file`) or as data: ``(data, source)``,
    ``source`` the path, or None for data (passed on as given, for its parser to check)."""
    if isinstance(spec, (str, os.PathLike)):
        return read_spec_file(spec), os.fspath(spec)
    return spec, None


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a spec file, read strictly.

    A regular file (a directory or a FIFO is refused without being opened)
    of at most ``MAX_SPEC_BYTES``, UTF-8, valid JSON without NaN/Infinity or
    duplicate keys, holding an object.

    Raises:
      SpecFileNotFoundError: no such file.
      SpecError: anything else, naming the file (and line/column for JSON errors).
    """
    source = os.fspath(path)
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise SpecFileNotFoundError("spec", f"no such file {source!r}") from None
    except OSError as err:
        raise SpecError("", f"cannot read the spec file ({err.strerror or err})", source) from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError(
            "", "is a directory; expected a JSON spec file (e.g. experiments/quick_width_sweep.json)", source
        )
    if not stat.S_ISREG(st.st_mode):
        raise SpecError("", "is not a regular file (a FIFO or a device); expected a JSON spec file", source)
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError("", f"is {st.st_size:,} bytes; a spec file has at most {MAX_SPEC_BYTES:,}", source)
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise SpecError("", f"cannot read the spec file ({err.strerror or err})", source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            "", f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save the spec as UTF-8", source
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise SpecError("", f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", source) from None
    except _BadJSONError as err:
        raise SpecError("", f"invalid JSON: {err}", source) from None
    except RecursionError:
        raise SpecError("", "invalid JSON: nested too deeply", source) from None
    if not isinstance(data, dict):
        raise SpecError("", f"expected a JSON object ({{...}}) at the top, got {type(data).__name__}", source)
    return data
