"""Provenance of stored results: the software/hardware environment and cell keys.

Two things every stored result needs besides its numbers:

* :func:`environment` — which Python, package versions, host and JAX devices
  produced it, the matmul precision policy in force (:func:`precision_info`)
  and the git commit of the kernelattn checkout with whether its tree was
  dirty (:func:`git_state`); recorded, never used to identify the result;
* :func:`cell_key` — a stable identifier of *what* was computed: the SHA-256
  hex digest of a canonical JSON form of the cell's defining parameters.

Canonical JSON (:func:`canonical_json`) is ``json.dumps`` of the value after
:func:`to_jsonable`, with sorted keys, no whitespace, ASCII only and Python's
``NaN``/``Infinity``/``-Infinity`` tokens for non-finite floats. Floats are
written with ``repr``, which round-trips IEEE-754 doubles exactly, so the
same parameters give the same bytes — and the same key — in every process,
run and host (``PYTHONHASHSEED`` plays no part).

Normalisation done by :func:`to_jsonable` (and therefore by the key):

* numpy/JAX scalars become Python ``int``/``float``/``bool``; float32/float16
  values are widened exactly to float64 (``np.float32(0.1)`` therefore keys
  differently from ``0.1``, as it is a different number);
* arrays (anything with ``__array__`` and a ``shape``) and tuples become lists;
* ``pathlib.Path`` becomes ``str``; ``datetime``/``date`` become ISO-8601 strings;
* mapping keys must be ``str`` (anything else is a ``TypeError``, so that no
  two distinct cells can collide after a silent ``str()``).

``1`` and ``1.0`` are *different* cells (``"1"`` vs ``"1.0"``): pass each
parameter with the type it has in the experiment spec.

Nothing here runs at import time; :func:`environment` imports JAX lazily and
runs ``git`` once per process.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelattn.errors import InputTypeError

__all__ = [
    "CELL_KEY_VERSION",
    "GIT_TIMEOUT",
    "PACKAGES",
    "PACKAGE_ROOT",
    "canonical_json",
    "cell_key",
    "environment",
    "git_state",
    "host_id",
    "package_versions",
    "precision_info",
    "to_jsonable",
]

#: Bumped only if the canonical form of a cell changes (it salts the digest).
CELL_KEY_VERSION = 1

#: Distributions whose versions every record carries.
PACKAGES: tuple[str, ...] = ("kernelattn", "jax", "jaxlib", "flax", "optax", "numpy", "scipy")

#: Seconds one ``git`` call of :func:`git_state` may take before its answer is None.
GIT_TIMEOUT = 5.0

#: The directory holding the ``kernelattn`` package: a checkout's root when run from one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_jsonable(value: Any, name: str = "value") -> Any:
    """Convert ``value`` into plain JSON types (dict/list/str/int/float/bool/None).

    Args:
      value: nested mappings, sequences, Python or numpy/JAX scalars and arrays.
      name: what ``value`` is called, for error messages (e.g. ``"cell"``).

    Returns:
      An equal value made of ``dict`` (str keys), ``list``, ``str``, ``int``,
      ``float``, ``bool`` and ``None`` only.

    Raises:
      TypeError: for a non-``str`` mapping key or an unsupported type; the
        message names where in the structure it was found.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
        if isinstance(value, np.str_):
            return str(value)
        raise InputTypeError(f"{name}: cannot store numpy scalar of dtype {value.dtype} as JSON")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputTypeError(
                    f"{name}: mapping keys must be str, got {type(k).__name__} {k!r}; "
                    "convert it explicitly (e.g. str(k))"
                )
            out[k] = to_jsonable(v, name=f"{name}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, name=f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if hasattr(value, "__array__") and hasattr(value, "shape"):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InputTypeError(f"{name}: cannot store an array of dtype {array.dtype} as JSON")
        return to_jsonable(array.tolist(), name=name)
    raise InputTypeError(f"{name}: cannot store {type(value).__name__} {value!r} as JSON")


def canonical_json(value: Any, name: str = "value") -> str:
    """The canonical JSON text of ``value`` (see the module docstring).

    Sorted keys, ``(",", ":")`` separators, ASCII only, floats by ``repr``,
    non-finite floats as ``NaN``/``Infinity``/``-Infinity``.
    """
    return json.dumps(
        to_jsonable(value, name), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    )


def cell_key(cell: Mapping[str, Any]) -> str:
    """A stable key for a cell: SHA-256 hex (64 chars) of its canonical JSON.

    Args:
      cell: the parameters that define the computation, e.g.
        ``{"dataset": "digits", "width": 512, "seed": 0, "model": "mlp_attn"}``.

    Returns:
      64 lowercase hex characters; equal for equal cells in any process/run,
      independent of key order and of numpy-vs-Python scalar types.

    Raises:
      TypeError: ``cell`` is not a mapping or holds an unstorable value.
    """
    if not isinstance(cell, Mapping):
        raise InputTypeError(f"cell: expected a mapping of parameters, got {type(cell).__name__} {cell!r}")
    text = f"kernelattn.cell.v{CELL_KEY_VERSION}\n" + canonical_json(cell, "cell")
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the distributions ``names`` (``None`` if missing)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def host_id() -> str:
    """This machine's identity for claim ownership: ``hostname`` plus boot id.

    The Linux boot id (``/proc/sys/kernel/random/boot_id``) distinguishes two
    containers that share a hostname, and a host before/after a reboot (after
    which no process of the old boot is alive).
    """
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    return socket.gethostname() + (f"/{boot}" if boot else "")


def _git(root: str, *args: str) -> str | None:
    """``git -C root ARGS``'s standard output, or None if git is missing, fails or times out.

    ``GIT_OPTIONAL_LOCKS=0``: ``git status`` must not take the index lock of a tree
    other processes may be committing in; ``GIT_DIR``/``GIT_WORK_TREE`` set by a
    caller's hook would point git at another repository.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        done = subprocess.run(
            ["git", "-C", root, *args],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def _cached_git_state(root: str) -> tuple[str | None, bool | None]:
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or os.path.realpath(top.strip()) != os.path.realpath(root):
        return None, None
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    status = _git(root, "status", "--porcelain")
    commit = head.strip() if head is not None else ""
    return commit or None, None if status is None else bool(status.strip())


def git_state(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The git commit of a checkout and whether its work tree was dirty; once per process and ``root``.

    Args:
      root: the checkout's top directory; default :data:`PACKAGE_ROOT`, the
        directory holding the running ``kernelattn`` package (an editable
        install or ``PYTHONPATH`` run from a checkout). A package installed in
        ``site-packages`` is no checkout's top, even inside one, and has none.

    Returns:
      ``{"commit": 40-hex HEAD | None, "dirty": bool | None}``: ``dirty`` is
      whether ``git status --porcelain`` listed anything (changed, staged or
      untracked files; ignored ones aside). Both None when ``root`` is not the
      top of a git work tree, or git is missing, fails or takes over
      :data:`GIT_TIMEOUT` seconds; ``commit`` None in a repository without commits.
    """
    commit, dirty = _cached_git_state(os.path.abspath(os.fspath(PACKAGE_ROOT if root is None else root)))
    return {"commit": commit, "dirty": dirty}


def _jax_environment() -> dict[str, Any]:
    """JAX backend, devices and x64 flag; ``None`` values if JAX is unusable."""
    info: dict[str, Any] = {
        "jax_backend": None,
        "device_kinds": None,
        "device_count": None,
        "process_index": None,
        "process_count": None,
        "x64": None,
    }
    try:
        import jax
    except Exception as err:  # noqa: BLE001 - provenance must never fail a run
        info["jax_error"] = f"{type(err).__name__}: {err}"
        return info
    try:
        devices = jax.devices()
        info["jax_backend"] = jax.default_backend()
        info["device_kinds"] = [str(d.device_kind) for d in devices]
        info["device_count"] = len(devices)
        info["process_index"] = int(jax.process_index())
        info["process_count"] = int(jax.process_count())
    except Exception as err:  # noqa: BLE001
        info["jax_error"] = f"{type(err).__name__}: {err}"
    try:
        info["x64"] = bool(jax.config.read("jax_enable_x64"))
    except Exception:  # noqa: BLE001 - older/newer config APIs
        flag = getattr(jax.config, "jax_enable_x64", None)
        info["x64"] = None if flag is None else bool(flag)
    return info


def precision_info() -> dict[str, Any]:
    """The matmul precision policy in force (``kernelattn.precision_policy``) and what it means here.

    Returns:
      ``{"policy": "highest" | "fast", "float32_eps": effective eps of float32
      matmuls under it on the default backend (TF32's 2^-10 for "fast" on a
      recent GPU), "jax_default_matmul_precision": JAX's setting or None}``;
      ``{"policy": None, "error": ...}`` when JAX is unusable.
    """
    try:
        import jax

        from kernelattn._precision import current_precision, effective_eps

        policy = current_precision()
        return {
            "policy": policy,
            "float32_eps": effective_eps("float32", policy),
            # A context-manager flag: ``jax.config.read`` refuses it, ``values`` holds it.
            "jax_default_matmul_precision": jax.config.values["jax_default_matmul_precision"],
        }
    except Exception as err:  # noqa: BLE001 - provenance must never fail a run
        return {"policy": None, "error": f"{type(err).__name__}: {err}"}


def environment() -> dict[str, Any]:
    """Describe the software and hardware that produced a result.

    Returns:
      A JSON-ready dict::

        {"python": "3.11.7", "implementation": "CPython",
         "packages": {"kernelattn": "0.1.0", "jax": ..., "jaxlib": ..., "flax": ...,
                      "optax": ..., "numpy": ..., "scipy": ...},   # None if missing
         "platform": "Linux-...", "machine": "x86_64", "hostname": "...", "pid": 123,
         "jax_backend": "gpu", "device_kinds": ["NVIDIA H100 80GB HBM3"],
         "device_count": 1, "process_index": 0, "process_count": 1, "x64": True,
         "precision": {"policy": "highest", "float32_eps": 1.19e-07,
                       "jax_default_matmul_precision": "float32"},
         "git": {"commit": "3f2c...", "dirty": False}}   # None, None: not a checkout

      JAX entries are ``None`` (and ``"jax_error"`` says why) when JAX cannot be
      imported or initialised. Calling this imports JAX and initialises its
      backend, like any JAX computation would.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "packages": package_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
    env.update(_jax_environment())
    env["precision"] = precision_info()
    env["git"] = git_state()
    return to_jsonable(env)
