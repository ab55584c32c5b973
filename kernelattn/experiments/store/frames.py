"""Records as a table: one row per record, cell and metric columns flattened to ``"outer.inner"``; tables as Parquet.

:func:`write_parquet` stores any such table (``ResultStore.to_frame``, a
``MalleabilityReport.to_frame(per_test=True)`` influence table, ...) so that
:func:`read_parquet` gives back an equal frame, dtypes included. Numeric, bool
and string columns are Arrow's own; an object column is too when Arrow gives
it back unchanged (lists come back as lists), and is otherwise stored as the
canonical JSON text of each value (mixed types, mappings, NaN beside None),
named in the file's ``kernelattn`` schema metadata. pyarrow is the optional
extra ``parquet``.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from kernelattn.errors import InputTypeError, InputValueError, import_optional
from kernelattn.experiments.provenance import canonical_json
from kernelattn.experiments.store.disk import fsync_dir, unlink_quiet
from kernelattn.experiments.store.fileformat import TEMP_PREFIX

__all__ = [
    "FRAME_COLUMNS",
    "PARQUET_METADATA_KEY",
    "flatten",
    "frame_row",
    "parquet_modules",
    "read_parquet",
    "records_frame",
    "write_parquet",
]

#: ``to_frame`` columns that precede the cell and metric columns.
FRAME_COLUMNS: tuple[str, ...] = ("key", "kind", "seed", "seconds")
#: Parquet schema-metadata key:
#: ``{"json": [columns stored as JSON text], "objects": [object columns stored natively]}``.
PARQUET_METADATA_KEY = b"kernelattn"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b": value}`` (``prefix`` before each name); lists and empty mappings stay
    values."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        column = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{column}."))
        else:
            flat[column] = value
    return flat


def _same_value(a: Any, b: Any) -> bool:
    """Equality for merging columns: NaN equals NaN, ``True`` does not equal ``1``."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def frame_row(record: Mapping[str, Any], *, prefix: bool = False) -> dict[str, Any]:
    """One ``to_frame`` row: key, kind, seed, seconds, then cell and metric columns.

    With ``prefix=False`` columns are the bare (dot-flattened) names; equal
    values merge, e.g. a cell parameter ``seed``. The cell may name a fixed
    column in its own terms (a kernel sweep's cell has ``kind`` "kernel", its
    record ``kind`` "kernel_sweep"): such a cell value goes to ``cell.<name>``.
    Any other name given two *different* values (by the cell and the metrics,
    or by the metrics and a fixed column) is a ``ValueError`` (use
    ``prefix=True`` for ``cell.``/``metrics.`` prefixed names).
    """
    row: dict[str, Any] = {
        "key": record["key"],
        "kind": record["kind"],
        "seed": record["seed"],
        "seconds": record["timing"]["seconds"],
    }
    sources = (
        ("cell", flatten(record["cell"], "cell." if prefix else "")),
        ("metrics", flatten(record["metrics"], "metrics." if prefix else "")),
    )
    for source, flat in sources:
        for column, value in flat.items():
            if source == "cell" and column in FRAME_COLUMNS and not _same_value(row[column], value):
                column = f"cell.{column}"
            if column in row and not _same_value(row[column], value):
                raise InputValueError(
                    f"record {record['key']}: column {column!r} from {source} ({value!r}) clashes with "
                    f"an earlier value ({row[column]!r}); use to_frame(prefix=True)"
                )
            row[column] = value
    return row


def records_frame(records: Iterable[Mapping[str, Any]], *, prefix: bool = False) -> pd.DataFrame:
    """``records`` as a DataFrame, one :func:`frame_row` per record in order.

    Columns: ``key, kind, seed, seconds`` (also when there are no records),
    then every other column in order of first appearance.
    """
    rows = [frame_row(r, prefix=prefix) for r in records]
    columns: dict[str, None] = dict.fromkeys(FRAME_COLUMNS)
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pd.DataFrame(rows, columns=list(columns))


def parquet_modules():
    """``pyarrow`` and ``pyarrow.parquet``, imported on first use: an optional extra of tens of MB.

    Raises:
      DependencyError: pyarrow is not installed (``pip install 'kernelattn[parquet]'``).
    """
    purpose = "reading or writing Parquet"
    return (
        import_optional("pyarrow", extra="parquet", purpose=purpose),
        import_optional("pyarrow.parquet", extra="parquet", purpose=purpose),
    )


def _plain(value: Any) -> Any:
    """``value`` with the numpy arrays Arrow returns for list cells turned back into lists, recursively."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _parquet_keeps(pa, pq, frame: pd.DataFrame, column: str) -> bool:
    """Whether the object ``column`` of ``frame`` comes back from Parquet equal, value by value, as canonical JSON."""
    try:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame[[column]], preserve_index=False), sink)
        back = pq.read_table(pa.BufferReader(sink.getvalue())).to_pandas()[column]
        return all(canonical_json(a) == canonical_json(_plain(b)) for a, b in zip(frame[column], back))
    except (pa.ArrowException, ValueError, TypeError):  # InputTypeError too: a value JSON has no form for
        return False


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike[str]) -> str:
    """Write ``frame`` to the Parquet file ``path`` atomically; :func:`read_parquet` reads it back equal.

    The file is written beside ``path`` under a temporary name, fsync'd and
    renamed over ``path``: a reader sees the old file or the whole new one,
    never a partial one. Parent directories are created.

    Args:
      frame: a DataFrame with ``str`` column names; cells of object columns
        must be JSON-storable (see ``provenance.to_jsonable``).
      path: the file to write (replaced if it exists).

    Returns:
      The absolute path written.

    Raises:
      DependencyError: pyarrow is not installed (``pip install 'kernelattn[parquet]'``).
      InputTypeError: ``frame`` is not a DataFrame, or holds a value JSON cannot store.
      InputValueError: a column name is not a ``str``, or appears twice.
      OSError: the file cannot be written (nothing is left behind).
    """
    pa, pq = parquet_modules()
    if not isinstance(frame, pd.DataFrame):
        raise InputTypeError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    named = [c for c in frame.columns if not isinstance(c, str)]
    if named or frame.columns.has_duplicates:
        raise InputValueError(f"frame: Parquet needs distinct str column names, got {list(frame.columns)!r}")
    objects = [c for c in frame.columns if frame[c].dtype == object]
    as_json = [c for c in objects if not _parquet_keeps(pa, pq, frame, c)]
    encoded = frame.assign(**{c: [canonical_json(v, c) for v in frame[c]] for c in as_json})
    table = pa.Table.from_pandas(encoded, preserve_index=None)
    ours = json.dumps({"json": as_json, "objects": [c for c in objects if c not in as_json]}).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_METADATA_KEY: ours})
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(target)}")
    try:
        with open(temp, "xb") as sink:
            pq.write_table(table, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, target)
    finally:
        unlink_quiet(temp)
    fsync_dir(directory)
    return target


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The DataFrame in the Parquet file ``path``; equal to what :func:`write_parquet` wrote, dtypes included.

    A Parquet file written by another tool is read as pyarrow reads it.

    Raises:
      DependencyError: pyarrow is not installed (``pip install 'kernelattn[parquet]'``).
      OSError: no such file; ValueError (``pyarrow.ArrowInvalid``): not a Parquet file.
    """
    _, pq = parquet_modules()
    table = pq.read_table(os.fspath(path))
    ours = json.loads((table.schema.metadata or {}).get(PARQUET_METADATA_KEY, b"{}"))
    frame = table.to_pandas()
    for column in ours.get("json", []):
        frame[column] = pd.Series([json.loads(text) for text in frame[column]], index=frame.index, dtype=object)
    for column in ours.get("objects", []):
        frame[column] = pd.Series([_plain(v) for v in frame[column]], index=frame.index, dtype=object)
    return frame
