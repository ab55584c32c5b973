"""The condition-number table of the paper (docs/math.md §2-3): a ``"conditions"`` spec run into a store.

For each dataset: κ(G), κ_d(G) at the numerical rank, κ_d(G)^{2k+1} (the algebra) against the κ of
G^{2k+1} = Z Zᵀ measured from Z = G^k X (the check), the width m_theory it implies, and the spectra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernelattn._precision import enable_x64, x64_enabled
from kernelattn.data import load
from kernelattn.errors import InputValueError
from kernelattn.experiments import provenance
from kernelattn.experiments.specs import SpecError, parse_spec, spec_and_source
from kernelattn.experiments.store import ResultStore, make_record, store_exists, utc_now
from kernelattn.kernels.gram import condition_report
from kernelattn.transforms import linear_attention

__all__ = ["CONDITIONS_KEYS", "conditions_cell", "parse_conditions", "run_conditions"]

#: Keys of a "conditions" spec.
CONDITIONS_KEYS = ("name", "kind", "description", "datasets", "depth", "energy_fractions", "spectra")


def parse_conditions(data: Mapping[str, Any], source: str | None) -> tuple[tuple, dict[str, Any]]:
    """Validate a "conditions" spec: ``(datasets, normalized spec)``; datasets are checked by
    ``kernelattn.experiments.specs`` (same format, same errors)."""
    for key in data:
        if key not in CONDITIONS_KEYS:
            raise SpecError(key, f"unknown key for kind 'conditions' (allowed: {', '.join(CONDITIONS_KEYS)})", source)
    for key in ("name", "datasets"):
        if key not in data:
            raise SpecError(key, "required key is missing", source)
    parsed = parse_spec(
        {
            "name": data["name"],
            "kind": "kernel",
            "datasets": data["datasets"],
            "models": [{"name": "relu"}],
            "widths": [1],
        },
        source=source,
    )
    depth = data.get("depth", 1)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise SpecError("depth", f"expected an integer >= 1, got {depth!r}", source)
    fractions = data.get("energy_fractions", [0.99, 0.999])
    if not isinstance(fractions, list) or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions
    ):
        raise SpecError("energy_fractions", f"expected a list of numbers in (0, 1], got {fractions!r}", source)
    spectra = data.get("spectra", True)
    if not isinstance(spectra, bool):
        raise SpecError("spectra", f"expected true or false, got {spectra!r}", source)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {description!r}", source)
    normalized = {
        "name": parsed.name,
        "kind": "conditions",
        "description": description,
        "datasets": [d.to_dict() for d in parsed.datasets],
        "depth": depth,
        "energy_fractions": [float(f) for f in fractions],
        "spectra": spectra,
    }
    return parsed.datasets, normalized


def conditions_cell(name: str, dataset, depth: int, fractions: Sequence[float], spectra: bool) -> dict[str, Any]:
    """The cell definition (store key = its ``cell_key``) of one row of a conditions table."""
    return {
        "sweep": name,
        "kind": "conditions",
        "dataset": dataset.identity(),
        "depth": int(depth),
        "energy_fractions": [float(f) for f in fractions],
        "spectra": bool(spectra),
    }


def _condition_metrics(dataset, depth: int, fractions: Sequence[float], spectra: bool) -> dict[str, Any]:
    """κ(G), κ_d(G), κ_d(G)^{2k+1}, the measured κ of G^{2k+1} = Z Zᵀ, m_theory and the spectra (float64)."""
    ds = load(dataset.name, **dataset.load_kwargs())
    x = np.asarray(ds.X_train, np.float64)
    power = 2 * depth + 1
    report = condition_report(x, energy_fractions=tuple(fractions), depth=depth, warn_rank_deficient=False)
    # Z = G^k X (no re-normalization): Z Zᵀ = G^{2k+1} exactly; its spectrum from the singular values of Z.
    z = np.asarray(linear_attention(x, depth=depth, normalize=False))
    if z.dtype != np.float64:
        raise InputValueError("linear_attention returned float32: enable JAX's 64-bit mode (kernelattn.enable_x64())")
    attention = condition_report(z, warn_rank_deficient=False)
    features = condition_report(np.asarray(linear_attention(x, depth=depth), np.float64), warn_rank_deficient=False)
    metrics: dict[str, Any] = {
        "n": report.n,
        "d": report.d,
        "rank_bound": report.rank_bound,
        "rank_G": report.rank,
        "lambda_max_G": report.lambda_max,
        "lambda_min_G": report.lambda_min,
        "kappa_G": report.kappa,
        "kappa_d_G": report.kappa_d,
        "power": power,
        "kappa_d_G_power": report.kappa_d**power,
        "kappa_attention": attention.kappa,
        "kappa_d_attention": attention.kappa_d,
        "rank_attention": attention.rank,
        "kappa_d_features": features.kappa_d,
        "rank_features": features.rank,
        "log10_m_theory": report.log10_m_theory,
        "m_theory": report.m_theory,
        "energy": {str(f): {"rank": r, "kappa": k} for f, (r, k) in report.energy.items()},
        "n_classes": int(ds.n_classes),
        "class_names": [str(c) for c in ds.class_names],
        "data_source": ds.metadata.get("source", {}),
    }
    if spectra:
        s = np.linalg.svd(x, compute_uv=False)
        sz = np.linalg.svd(z, compute_uv=False)
        metrics["eigenvalues_G"] = ((s / s[0]) ** 2).tolist()
        metrics["eigenvalues_attention"] = ((sz / sz[0]) ** 2).tolist()
    return metrics


def run_conditions(
    spec: Mapping[str, Any] | str | os.PathLike[str],
    out: str | os.PathLike[str] = "results",
    *,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Compute the condition-number table of a ``"conditions"`` spec into ``<out>/<name>``, resumably.

    Spec format (JSON)::

        {"name": "quick_conditions", "kind": "conditions", "description": "...",
         "datasets": [...],              # kernelattn.experiments.specs dataset entries (load options + "label")
         "depth": 1,                     # attention depth k: G^(2k+1) (cubed for k = 1)
         "energy_fractions": [0.99, 0.999],  # also κ at the ranks keeping these fractions of Σλ
         "spectra": true}                # store the normalized spectra of G and G^(2k+1)

    One record (kind ``"conditions"``) per dataset, keyed by
    ``provenance.cell_key`` of (spec name, dataset identity, depth, fractions,
    spectra). Metrics, all float64 (docs/math.md §2-3): ``kappa_G`` = κ(G),
    ``kappa_d_G`` = κ_d(G) at the numerical rank ``rank_G``,
    ``kappa_d_G_power`` = κ_d(G)^{2k+1} (the algebra), ``kappa_attention`` /
    ``kappa_d_attention`` = κ / κ_d of G^{2k+1} = Z Zᵀ measured from the
    singular values of Z = G^k X (the check of the algebra; reliable while
    κ_d(G)^{2k+1} ≲ 1e26, beyond which round-off floors it), ``kappa_d_features``
    = κ_d of the re-normalized attention output (what the head sees),
    ``log10_m_theory`` = log10(κ_d(G)^6 n ln n) (constant 1), ``m_theory``,
    ``energy``, and with ``spectra`` the eigenvalues λ_i/λ_1 of G and of
    G^{2k+1} (``eigenvalues_G``, ``eigenvalues_attention``).

    Returns:
      The keys of the records written by this call.
    """
    data, source = spec_and_source(spec)
    datasets, normalized = parse_conditions(data, source)
    if not x64_enabled():
        enable_x64()
    path = Path(out) / normalized["name"]
    if not store_exists(path):  # a new store only once every dataset loads: a refused spec leaves nothing
        for dataset in datasets:
            load(dataset.name, **dataset.load_kwargs())
    store = ResultStore.open(path)
    written = []
    for dataset in datasets:
        cell = conditions_cell(
            normalized["name"], dataset, normalized["depth"], normalized["energy_fractions"], normalized["spectra"]
        )
        key = provenance.cell_key(cell)
        with store.claiming([key]) as held:
            if not held:
                continue
            started, t0 = utc_now(), time.perf_counter()
            metrics = _condition_metrics(
                dataset, normalized["depth"], normalized["energy_fractions"], normalized["spectra"]
            )
            record = make_record(
                "conditions",
                cell,
                metrics,
                spec=normalized,
                seed=dataset.seed,
                seconds=time.perf_counter() - t0,
                started=started,
                finished=utc_now(),
            )
            store.put(key, record, exist_ok=True)
            written.append(key)
            if progress is not None:
                progress(
                    f"{dataset.label}: κ_d(G) = {metrics['kappa_d_G']:.4g}, "
                    f"κ_d(G^{metrics['power']}) = {metrics['kappa_d_attention']:.4g}"
                )
    return written
