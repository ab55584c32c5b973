"""Records as a table: one row per record, cell and metric columns flattened to ``"outer.inner"``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from kernelattn.errors import InputValueError

__all__ = ["FRAME_COLUMNS", "frame_row", "records_frame"]

#: ``to_frame`` columns that precede the cell and metric columns.
FRAME_COLUMNS: tuple[str, ...] = ("key", "kind", "seed", "seconds")


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b": value}``; lists stay as values."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        column = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, prefix=f"{column}."))
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
        ("cell", _flatten(record["cell"], "cell." if prefix else "")),
        ("metrics", _flatten(record["metrics"], "metrics." if prefix else "")),
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
