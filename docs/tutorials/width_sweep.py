"""A width sweep, to a DataFrame and a figure.

Describe the experiment as a spec (the same JSON format ``kernelattn sweep``
reads; see the spec-format page), run it with ``kernelattn.run_sweep`` into a
result store, read the results back as pandas DataFrames — the sweep's own
tables and ``ResultStore.to_frame()``, one row per stored record — and plot how
the empirical NTK of 2L-ReLU and MLP-Attn approaches its infinite-width limit
as the width grows (docs/math.md §8).

The sweep is resumable: every (dataset, model, width, seed) cell is stored
atomically as soon as it is computed, and running the same spec again computes
only the cells that are missing (here: none).

Run it::

    python docs/tutorials/width_sweep.py --out DIR            # full size, ~15 s on a 2-core CPU
    python docs/tutorials/width_sweep.py --out DIR --small    # tiny sizes
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import kernelattn as ka


def make_spec(small: bool) -> dict:
    """The sweep as a spec dict (``json.dump`` it to get a file for ``kernelattn sweep``)."""
    return {
        "name": "tutorial_width_sweep",
        "kind": "kernel",  # Θ_m vs Θ_∞ at initialization
        "description": "2L-ReLU vs MLP-Attn on digits: NTK convergence with width",
        "datasets": [{"name": "digits", "n_train": 40 if small else 200, "n_test": 10 if small else 50}],
        "models": [{"name": "relu"}, {"name": "mlp-attn"}],
        "widths": [16, 64, 256] if small else {"log2": [4, 16], "step": 2},
        "seeds": 2 if small else 5,
        "metrics": ["rel_fro", "cert", "spectrum"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=bool(os.environ.get("KERNELATTN_TUTORIAL_SMALL")),
                        help="tiny sizes (also: KERNELATTN_TUTORIAL_SMALL=1)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results directory (default: results)")
    args = parser.parse_args(argv)

    # --- 1. Validate the spec: every key is checked, errors name the key path.
    spec = ka.load_spec(make_spec(args.small))
    print(f"spec {spec.name!r}: {spec.n_cells} cells = {len(spec.datasets)} dataset x {len(spec.models)} models x "
          f"{len(spec.widths)} widths {list(spec.widths)} x {len(spec.seeds)} seeds")

    # --- 2. Run it into <out>/<name> (a result store). progress=True shows a progress bar.
    results = ka.run_sweep(spec, out=args.out, progress=False)
    print(f"computed {results.n_computed} cells in {results.seconds:.1f} s; store: {results.store_path}")

    # --- 3. DataFrames: one row per cell, and mean/std over seeds per (dataset, model, width).
    cells, summary = results.cells, results.summary
    print("\nper cell:", cells.shape, "columns", list(cells.columns)[:8], "...")
    columns = ["model", "width", "rel_fro_mean", "rel_fro_std", "cert_mean", "n_seeds"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))

    # The raw records, straight from the store (any kind of store works the same way).
    store = ka.ResultStore.open(results.store_path, readonly=True)
    records = store.to_frame()
    print(f"\nstore.to_frame(): {records.shape[0]} records x {records.shape[1]} columns")
    csv = args.out / "tutorial_width_sweep.csv"
    summary.to_csv(csv, index=False)
    print(f"summary table: {csv}")

    # --- 4. Rerun: everything is in the store, nothing is recomputed.
    again = ka.run_sweep(spec, out=args.out, progress=False)
    print(f"rerun: computed {again.n_computed}, already stored {again.n_skipped}")

    # --- 5. The figure: mean ± std over seeds, log-log.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for model, rows in summary.groupby("model"):
        for ax, metric in zip(axes, ("rel_fro", "cert")):
            ax.errorbar(rows["width"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0.0),
                        marker="o", capsize=3, label=model)
    axes[0].set(xscale="log", yscale="log", xlabel="width m", ylabel="‖Θ_m − Θ_∞‖_F / ‖Θ_∞‖_F")
    axes[1].set(xscale="log", yscale="log", xlabel="width m", ylabel="‖Θ_m − Θ_∞‖₂ / λ_min(Θ_∞)")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    fig.tight_layout()
    figure = args.out / "tutorial_width_sweep.png"
    fig.savefig(figure, dpi=120)
    print(f"figure: {figure}")
    return {"results": results, "records": records, "rerun": again, "figure": figure}


if __name__ == "__main__":
    main()
