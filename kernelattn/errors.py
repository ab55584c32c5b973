"""The error contract: every error kernelattn raises on purpose is a :class:`KernelattnError`.

One family, so that a caller can tell "kernelattn refused this, and said
why" (``except kernelattn.KernelattnError``) from a bug or a failure of the
platform underneath (numpy, JAX, the operating system). Each class also keeps
the built-in base its users already catch:

==========================  ==============================  ==========================================
class                       also a                          raised for
==========================  ==============================  ==========================================
``InputValueError``         ``ValueError``                  a bad argument value, shape or range
``InputTypeError``          ``TypeError``                   an argument of the wrong type
``specs.SpecError``         ``ValueError``                  an invalid experiment spec (names the key path)
``store.StoreError``        —                               the result store (I/O, corrupt records, claims)
``data.DatasetError``       —                               dataset files (missing, checksum, format, hostile)
``guards.KernelError``      ``ValueError``                  a kernel unfit for the request (``guards.strict()``)
``memory.MemoryPlanError``  ``MemoryError``                 a computation that would not fit, refused before allocating
``training.UntrainedError`` ``ValueError``                  a fit that did not train
``DependencyError``         ``ImportError``                 an optional dependency missing or incompatible
==========================  ==============================  ==========================================

:func:`import_optional` imports an optional dependency (pyarrow, mlflow) or
raises ``DependencyError`` naming the extra that installs it.

Messages are one line: the argument (or key path, or file), what was
expected, what came. The ``kernelattn`` command prints that line after
``kernelattn <command>: error:`` and exits with status 2 (``kernelattn store``
exits 1 when it checked the store and found problems).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["DependencyError", "InputTypeError", "InputValueError", "KernelattnError", "import_optional"]


class KernelattnError(Exception):
    """Base class of every error kernelattn raises deliberately."""


class InputValueError(KernelattnError, ValueError):
    """An argument has the right type but a value, shape or range the function cannot take."""


class InputTypeError(KernelattnError, TypeError):
    """An argument has a type the function cannot take."""


class DependencyError(KernelattnError, ImportError):
    """An optional dependency (e.g. neural-tangents for ``kernels.nt_backend``) is missing or incompatible."""


def import_optional(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import the optional dependency ``module``, or say which extra of kernelattn installs it.

    Args:
      module: the module to import, e.g. ``"pyarrow.parquet"``.
      extra: the ``pyproject.toml`` extra that installs it, e.g. ``"parquet"``.
      purpose: what needs it, e.g. ``"writing Parquet"``.

    Raises:
      DependencyError: ``module`` is missing, or its import fails (e.g. a build
        for another numpy); the message names ``pip install 'kernelattn[<extra>]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DependencyError(
            f"{purpose} needs the optional dependency {module.split('.')[0]}, which does not "
            f"import in {sys.prefix} ({err}); install it with: pip install 'kernelattn[{extra}]'"
        ) from err
