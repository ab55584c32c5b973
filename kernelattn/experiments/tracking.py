"""Optional MLflow logging of a result store: one MLflow run per store.

Off by default: nothing here runs unless :func:`log_store_to_mlflow` is called
(``kernelattn export STORE --mlflow URI``). mlflow is the optional extra
``mlflow`` (``pip install 'kernelattn[mlflow]'``; the light mlflow-skinny
suffices), imported on the first call only.

A run holds:

* **params** — the spec of the store's records, flattened to ``"outer.inner"``
  names, each value as text (strings as they are, the rest as canonical JSON;
  at most :data:`PARAM_VALUE_LIMIT` characters); a name whose value differs
  between records holds the list of its distinct values;
* **metrics** — every numeric metric of every record (and its ``seconds``),
  with step ``i`` for the ``i``-th record in key order; NaN (missing or
  undefined) is not logged;
* **tags** — ``kernelattn.store`` (the store's path), ``kernelattn.kinds``,
  ``kernelattn.records``, ``kernelattn.git_commit`` and ``kernelattn.git_dirty``
  (the records' provenance, distinct values joined by ``,``);
* **artifacts** — ``records.jsonl``, every record as stored, one per line in
  step order (so step ``i`` is line ``i + 1``), and the given figures under
  ``figures/``.

A ``file:`` URI or a plain path is MLflow's local file store, which MLflow 3
refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is true: asking for one here is that
opt-in, so the variable is set to true while logging (unless already set).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kernelattn.errors import InputTypeError, InputValueError, import_optional
from kernelattn.experiments.provenance import canonical_json
from kernelattn.experiments.store import ResultStore
from kernelattn.experiments.store.frames import flatten, records_frame

__all__ = [
    "DEFAULT_EXPERIMENT",
    "PARAM_VALUE_LIMIT",
    "figure_paths",
    "log_store_to_mlflow",
    "mlflow_module",
    "spec_params",
    "step_metrics",
]

#: The MLflow experiment runs are logged to unless another is named.
DEFAULT_EXPERIMENT = "kernelattn"
#: Longest param value MLflow (2.x and later) stores; longer values are cut.
PARAM_VALUE_LIMIT = 6000
#: MLflow's batch limits: params or tags, and metrics, per ``log_batch`` call.
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000
#: Characters MLflow refuses in param and metric names become ``_``.
_BAD_NAME_CHARS = re.compile(r"[^\w\-. /:]")
_FILE_STORE_VAR = "MLFLOW_ALLOW_FILE_STORE"


def _name(text: str) -> str:
    """``text`` as an MLflow param or metric name (at most 250 characters of ``[\\w\\-. /:]``)."""
    return _BAD_NAME_CHARS.sub("_", text)[:250]


def spec_params(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The params of a run: the records' specs, flattened, as MLflow param names and values.

    Returns:
      ``{name: the value's text}`` in first-seen order: a string as it is,
      anything else as canonical JSON; a name with several distinct values maps
      to ``"[" + their texts joined by "," + "]"`` (in first-seen order). Values
      are cut to :data:`PARAM_VALUE_LIMIT` characters.
    """
    seen: dict[str, list[str]] = {}
    for record in records:
        for name, value in flatten(record["spec"]).items():
            texts = seen.setdefault(_name(name), [])
            text = value if isinstance(value, str) else canonical_json(value, f"spec[{name!r}]")
            if text not in texts:
                texts.append(text)
    params = {name: texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]" for name, texts in seen.items()}
    return {
        name: text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."
        for name, text in params.items()
    }


def step_metrics(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """The metrics of a run: ``(name, value, step)`` for every numeric metric of every record.

    Step ``i`` is ``records[i]``; the names are the records' (flattened) metric
    names, and ``seconds``. Bool and text metrics and NaN values are left out.
    """
    frame = records_frame(records, prefix=True)
    columns = ["seconds", *(c for c in frame.columns if c.startswith("metrics."))]
    out: list[tuple[str, float, int]] = []
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        name = _name(column.removeprefix("metrics."))
        out.extend((name, float(v), step) for step, v in enumerate(values) if not pd.isna(v))
    return out


def _provenance_tags(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    def distinct(field: str) -> str:
        values = {str(((r.get("environment") or {}).get("git") or {}).get(field)) for r in records}
        return ",".join(sorted(values))

    return {"kernelattn.git_commit": distinct("commit"), "kernelattn.git_dirty": distinct("dirty")}


def mlflow_module():
    """The ``mlflow`` module, imported on first use: an optional extra, and heavy (seconds to import).

    Raises:
      DependencyError: mlflow is not installed (``pip install 'kernelattn[mlflow]'``).
    """
    return import_optional("mlflow", extra="mlflow", purpose="logging to MLflow")


def _tracking_uri(uri: str | os.PathLike[str]) -> str:
    """``uri`` itself, or the ``file:`` URI of a local path."""
    if not isinstance(uri, (str, os.PathLike)) or not os.fspath(uri):
        raise InputValueError(f"tracking_uri: expected an MLflow tracking URI or a directory, got {uri!r}")
    text = os.fspath(uri)
    if len(urllib.parse.urlparse(text).scheme) > 1:  # one letter: a Windows drive
        return text
    return Path(text).resolve().as_uri()


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """Set ``MLFLOW_ALLOW_FILE_STORE=true`` inside the block when ``uri`` is a file store and it is unset."""
    if not uri.startswith("file:") or _FILE_STORE_VAR in os.environ:
        yield
        return
    os.environ[_FILE_STORE_VAR] = "true"
    try:
        yield
    finally:
        os.environ.pop(_FILE_STORE_VAR, None)


def figure_paths(figures: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None) -> list[Path]:
    """``figures`` (one path, several, or None) as a list of paths, each checked to exist.

    Raises:
      InputValueError: a path does not exist.
    """
    if figures is None:
        return []
    if isinstance(figures, (str, os.PathLike)):
        figures = [figures]
    paths = [Path(f) for f in figures]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputValueError(f"figures: no such file or directory: {', '.join(missing)}")
    return paths


def _batches(items: list, size: int) -> Iterator[list]:
    return (items[i : i + size] for i in range(0, len(items), size))


def log_store_to_mlflow(
    store: ResultStore | str | os.PathLike[str],
    tracking_uri: str | os.PathLike[str],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    kind: str | None = None,
    figures: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
) -> str:
    """Log a result store to MLflow as one run (params, metrics, tags and artifacts: see the module docstring).

    Args:
      store: a :class:`ResultStore`, or the path of one (opened read-only).
      tracking_uri: where MLflow keeps runs: ``file:///abs/dir`` or a plain
        directory path (a local file store), or any URI MLflow takes.
      experiment: MLflow experiment name, created if absent.
      run_name: the run's name; default: the store directory's name.
      kind: log only the records of this kind (default: all).
      figures: files or directories logged under ``figures/`` (a directory's
        files keep their relative paths).

    Returns:
      The MLflow run id (32 hex characters). Each call makes a new run.

    Raises:
      DependencyError: mlflow is not installed (``pip install 'kernelattn[mlflow]'``).
      InputValueError: a figure path does not exist, or a bad URI or name.
      StoreError: the store cannot be read (nothing is logged).
    """
    if isinstance(store, (str, os.PathLike)):
        store = ResultStore.open(store, create=False, readonly=True)
    if not isinstance(store, ResultStore):
        raise InputTypeError(f"store: expected a ResultStore or its path, got {type(store).__name__}")
    if not isinstance(experiment, str) or not experiment.strip():
        raise InputValueError(f"experiment: expected a non-empty name, got {experiment!r}")
    uri = _tracking_uri(tracking_uri)
    paths = figure_paths(figures)
    records = list(store.records(kind))  # read (and verified) before any run exists
    params = spec_params(records)
    metrics = step_metrics(records)
    tags = {
        "kernelattn.store": store.path,
        "kernelattn.kinds": ",".join(sorted({r["kind"] for r in records})),
        "kernelattn.records": str(len(records)),
        **_provenance_tags(records),
    }
    mlflow = mlflow_module()
    entities = mlflow.entities
    with _file_store_allowed(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name=run_name or Path(store.path).name).info.run_id
        try:
            now = int(time.time() * 1000)
            for batch in _batches([entities.Param(k, v) for k, v in params.items()], _BATCH_PARAMS):
                client.log_batch(run_id, params=batch)
            for batch in _batches([entities.RunTag(k, v) for k, v in tags.items()], _BATCH_PARAMS):
                client.log_batch(run_id, tags=batch)
            for batch in _batches([entities.Metric(k, v, now, step) for k, v, step in metrics], _BATCH_METRICS):
                client.log_batch(run_id, metrics=batch)
            with tempfile.TemporaryDirectory(prefix="kernelattn-mlflow-") as scratch:
                lines = Path(scratch) / "records.jsonl"
                lines.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
                client.log_artifact(run_id, str(lines))
            for path in paths:
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), artifact_path="figures")
                else:
                    client.log_artifact(run_id, str(path), artifact_path="figures")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
    return run_id
