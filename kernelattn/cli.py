"""The ``kernelattn`` command line: thin wrappers over the Python API.

Subcommands are registered below, one small ``_cmd_*`` function each; every
one validates at the edge (the library raises a ``KernelattnError`` naming
the bad argument) and ``main`` maps errors to a one-line message and exit
code 2: the whole ``kernelattn.errors.KernelattnError`` family, ``ValueError``
and ``TypeError``, ``OSError``, ``MemoryError`` and JAX's
``RESOURCE_EXHAUSTED`` (out of device memory). Exit code 1 means "ran, and
found problems": ``kernelattn store`` found corrupt files, ``kernelattn
sweep`` left cells missing. Anything else is a bug and keeps its traceback.

Imports of JAX and of the package's numerical modules are deferred into the
``_cmd_*`` handlers (and ``main`` after parsing): importing them takes seconds,
and ``kernelattn --help``, ``--version`` or a usage error must answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from kernelattn import __version__
from kernelattn.errors import InputValueError

EXIT_USAGE = 2
#: Exit code of a run that completed but found problems (``store``) or left cells missing (``sweep``).
EXIT_PROBLEMS = 1


def _kappa_rows(report, label: str) -> list[dict]:
    """Table rows (rank, κ(G), κ(G^{2k+1}), log10 m_theory) for a ConditionReport."""
    from kernelattn.kernels.gram import log10_width_threshold, safe_power  # deferred with the numerics (see above)

    power = 2 * report.depth + 1
    rows = [
        {
            "spectrum": f"{label}numerical rank",
            "rank": report.rank,
            "kappa_G": report.kappa_d,
            "kappa_attention": safe_power(report.kappa_d, power),
            "log10_m_theory": report.log10_m_theory,
        }
    ]
    for fraction, (rank, kappa) in report.energy.items():
        rows.append(
            {
                "spectrum": f"{label}energy {fraction:g}",
                "rank": rank,
                "kappa_G": kappa,
                "kappa_attention": safe_power(kappa, power),
                "log10_m_theory": log10_width_threshold(kappa, report.n),
            }
        )
    return rows


def _format_table(rows: list[dict]) -> str:
    """The spectra rows as a plain-text table (``kernelattn.analysis.formatting``)."""
    from kernelattn.analysis.formatting import fmt, fmt_log, text_table  # deferred with the numerics (see above)

    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    cells = [[fmt_log(row[c]) if c.startswith("log10") else fmt(row[c]) for c in columns] for row in rows]
    return text_table(columns, cells)


def _load_options(args) -> dict:
    options = {"seed": args.seed, "data_dir": args.data_dir}
    if args.classes:
        options["classes"] = tuple(int(c) if c.isdigit() else c for c in args.classes)
    if args.n_train is not None:
        options["n_train"] = args.n_train
    if args.kappa is not None:
        options["kappa"] = args.kappa
    return options


def _cmd_data_info(args) -> int:
    from kernelattn.data import load
    from kernelattn.kernels.gram import condition_report

    dataset = load(args.name, **_load_options(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reports = [condition_report(dataset.X_train, energy_fractions=tuple(args.energy), depth=args.depth)]
        if args.center:
            reports.append(
                condition_report(dataset.X_train, energy_fractions=tuple(args.energy), depth=args.depth, center=True)
            )
    report = reports[0]
    rows = [row for r in reports for row in _kappa_rows(r, "centered, " if r.centered else "")]
    summary = {
        "dataset": args.name,
        "n_train": dataset.n_train,
        "n_test": dataset.n_test,
        "n_features": dataset.n_features,
        "classes": list(dataset.class_names),
        "rank_bound": report.rank_bound,
        "kappa_G": report.kappa,
        "kappa_d_G": report.kappa_d,
        "kappa_attention": report.kappa_cubed_attention,
        "m_theory": report.m_theory,
        "log10_m_theory": report.log10_m_theory,
        "notes": sorted({str(w.message) for w in caught}),
        "spectra": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(
        f"{args.name}: X_train {dataset.n_train} x {dataset.n_features}, X_test {dataset.n_test}, "
        f"classes {', '.join(map(str, dataset.class_names))}"
    )
    print(
        f"kappa(G) = {report.kappa:.4g}   kappa_d(G) = {report.kappa_d:.4g} (rank {report.rank} of "
        f"min(n,d) = {report.rank_bound})   kappa(G^{2 * args.depth + 1}) = {report.kappa_cubed_attention:.4g}"
    )
    print(f"m_theory = kappa_d^6 n ln n = {report.m_theory:.4g} (log10 {report.log10_m_theory:.2f}; constant 1)")
    for note in summary["notes"]:
        print(f"note: {note}")
    print()
    print(_format_table(rows))
    return 0


def _cmd_data_files(args) -> int:
    from kernelattn.data import available_datasets, dataset_info

    names = [args.name] if args.name else list(available_datasets())
    print(
        json.dumps(
            {name: dataset_info(name, args.data_dir, verify=args.verify) for name in names}, indent=2, default=str
        )
    )
    return 0


def _cmd_store_verify(args) -> int:
    from kernelattn.experiments.store import ResultStore

    if args.release_claims and not args.repair:
        raise InputValueError("--release-claims: expected together with --repair (it removes claim files)")
    store = ResultStore.open(args.path, create=False, readonly=not args.repair)
    problems = store.repair(quarantine=True) if args.repair else store.verify()
    for problem in problems:
        print(f"{problem.kind}: {problem.path}: {problem.problem}")
    released = store.release_claims() if args.release_claims else []
    for claim in released:
        print(f"released: {claim.path}: {claim.describe()}")
    # Claims that are not problems (live, or of another host: cannot be checked) are listed too: a
    # forgotten claim of a host that is gone would otherwise hold its cell for the whole claim timeout.
    held = [c for c in store.claims() if c.state in ("live", "foreign", "unreadable")]
    for claim in held:
        print(f"claim: {claim.path}: {claim.describe()}")
    if any(c.state != "live" for c in held):
        print(
            f"note: if the owners of these claims are gone, `kernelattn store {args.path} --repair "
            "--release-claims` removes them"
        )
    summary = f"{len(store.keys())} record(s); {len(problems)} problem(s){' repaired' if args.repair else ''}"
    summary += f"; {len(held)} claim(s) held" + (f", {len(released)} released" if args.release_claims else "")
    print(summary)
    return EXIT_PROBLEMS if problems and not args.repair else 0


def _cmd_export(args) -> int:
    from kernelattn.experiments.store import ResultStore
    from kernelattn.experiments.store.frames import parquet_modules
    from kernelattn.experiments.tracking import DEFAULT_EXPERIMENT, figure_paths, log_store_to_mlflow, mlflow_module

    if not args.parquet and not args.mlflow:
        raise InputValueError("expected --parquet FILE and/or --mlflow URI: where to export the store")
    if args.figures and not args.mlflow:
        raise InputValueError("--figures: expected together with --mlflow (figures are logged as MLflow artifacts)")
    # Every check before anything is written: dependencies, figures, the store itself.
    if args.parquet:
        parquet_modules()
    if args.mlflow:
        mlflow_module()
    figures = figure_paths(args.figures)
    store = ResultStore.open(args.path, create=False, readonly=True)
    if args.parquet:
        path = store.to_parquet(args.parquet, args.kind, prefix=args.prefix)
        print(f"parquet: {path}")
    if args.mlflow:
        experiment = args.experiment or DEFAULT_EXPERIMENT
        run_id = log_store_to_mlflow(store, args.mlflow, experiment=experiment, kind=args.kind, figures=figures)
        print(f"mlflow: run {run_id} in experiment {experiment!r} at {args.mlflow}")
    return 0


def _cmd_sweep(args) -> int:
    # Multi-process runs (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
    # or SLURM / Open MPI): join before any JAX computation; a no-op for one process.
    from kernelattn.experiments.specs import load_spec, parse_devices
    from kernelattn.experiments.sweeps import format_summary, run_sweep
    from kernelattn.kernels.distributed import initialize_distributed

    spec = load_spec(args.spec, max_cells=args.max_cells)
    devices = None if args.devices is None else parse_devices(args.devices, "--devices")
    initialize_distributed()
    results = run_sweep(spec, args.out, progress=not args.no_progress, devices=devices)
    print(format_summary(results))
    print(f"store: {results.store_path}")
    if results.n_missing:
        print(f"kernelattn sweep: {_missing_note(results.n_missing, results.store_path)}", file=sys.stderr)
    return 0 if results.n_missing == 0 else EXIT_PROBLEMS


def _missing_note(n_missing: int, path) -> str:
    """One line on cells left missing: who holds their claims, and how to clear those of processes gone."""
    from kernelattn.experiments.store import ResultStore

    held = [
        c
        for c in ResultStore.open(path, create=False, readonly=True).claims()
        if c.state in ("live", "foreign", "unreadable")
    ]
    if not held:
        return f"{n_missing} cell(s) not computed (failed or given up); rerun to compute them"
    first = held[0]
    return (
        f"{n_missing} cell(s) not computed; {len(held)} claimed by other processes (e.g. {first.describe()}); "
        f"rerun later to collect them, or if those processes are gone: kernelattn store {path} --repair "
        "--release-claims"
    )


def _read_spec(path: str) -> dict:
    """A JSON spec file as a dict (read strictly: ``kernelattn.experiments.specs.read_spec_file``), its file stem as the
    default name."""
    from kernelattn.experiments.specs import read_spec_file  # deferred with the numerics (see above)

    spec = read_spec_file(path)
    spec.setdefault("name", Path(path).stem)
    return spec


def _cmd_malleability(args) -> int:
    from tqdm.auto import tqdm

    from kernelattn.experiments.malleability.runner import check_malleability_spec, run_malleability_spec, summary_frame
    from kernelattn.experiments.specs import parse_malleability_spec
    from kernelattn.experiments.store import ResultStore

    spec = _read_spec(args.spec)
    name = parse_malleability_spec(spec, source=args.spec, max_cells=args.max_cells).name  # the name too
    assert name is not None  # _read_spec names every spec
    spec.pop("name")
    spec.pop("kind", None)
    spec.pop("description", None)
    # Spec, data and memory of every fit, all before the store is created: a refusal leaves nothing behind.
    loaded = check_malleability_spec(spec, max_cells=args.max_cells)
    store = ResultStore.open(Path(args.out) / name)
    with tqdm(desc=name, unit="cell", disable=args.no_progress or not sys.stderr.isatty()) as bar:
        keys = run_malleability_spec(
            spec, store, progress=lambda *_: bar.update(), loaded=loaded, max_cells=args.max_cells
        )
    print(summary_frame(store).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{len(keys)} new cell(s); store: {store.path}")
    return 0


def _cmd_reproduce(args) -> int:
    from kernelattn.reproduce import reproduce

    tier = "quick" if args.quick else args.tier
    result = reproduce(tier, only=args.only, out=args.out, figures_dir=args.figures_dir, progress=not args.no_progress)
    print(result.summary())
    return 0


def _cmd_figures(args) -> int:
    from kernelattn.reproduce import redraw

    paths = redraw(args.out, figures_dir=args.figures_dir)
    for path in paths:
        print(path)
    return 0


def _add_max_cells(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-cells",
        type=int,
        default=None,
        metavar="N",
        help="refuse grids of more than N cells (default: $KERNELATTN_MAX_CELLS or 100000)",
    )


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", nargs="+", help="class subset by index or name, e.g. 3 8")
    parser.add_argument("--n-train", type=int, help="balanced number of training points")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--data-dir", help="directory holding the dataset files")
    parser.add_argument("--kappa", type=float, help="synthetic data: prescribed kappa(G)")


def _add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("highest", "fast"),
        default=None,
        help="matmul precision of every kernel, attention and training step: highest (default: "
        "true float32 products) or fast (the device's default: TF32 on recent GPUs, about "
        '1e-3 relative); a spec\'s own "precision" key wins',
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kernelattn``."""
    parser = argparse.ArgumentParser(prog="kernelattn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="dataset information").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    info = data.add_parser("info", help="shape, classes, condition numbers and the width threshold")
    info.add_argument(
        "name", help="mnist, fashion_mnist, cifar10, digits, synthetic, or the path of an .npz file with arrays X and y"
    )
    _add_data_options(info)
    info.add_argument(
        "--energy",
        nargs="*",
        type=float,
        default=[0.99, 0.999],
        help="also report kappa at ranks keeping these spectral-energy fractions",
    )
    info.add_argument("--center", action="store_true", help="also report the column-centered data")
    info.add_argument("--depth", type=int, default=1, help="attention depth k: kappa(G^(2k+1))")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=_cmd_data_info)
    files = data.add_parser("files", help="where each dataset's files are looked for and found")
    files.add_argument("name", nargs="?")
    files.add_argument("--data-dir")
    files.add_argument("--verify", action="store_true", help="hash the files found")
    files.set_defaults(handler=_cmd_data_files)

    sweep = commands.add_parser("sweep", help="run (or resume) a width sweep from a JSON spec")
    sweep.add_argument("spec", help="spec file, e.g. experiments/quick_width_sweep.json")
    sweep.add_argument("--out", default="results", help="results directory (store: OUT/<spec name>)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--devices",
        default=None,
        metavar="N|all",
        help="local devices to shard each finite-width kernel over (overrides the spec's "
        "kernel.devices; default: the spec's, 1)",
    )
    _add_max_cells(sweep)
    _add_precision_option(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    mall = commands.add_parser("malleability", help="run (or resume) an influence-malleability spec")
    mall.add_argument("spec", help="spec file, e.g. experiments/quick/quick_malleability.json")
    mall.add_argument("--out", default="results", help="results directory (store: OUT/<spec name>)")
    mall.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_max_cells(mall)
    _add_precision_option(mall)
    mall.set_defaults(handler=_cmd_malleability)

    repro = commands.add_parser("reproduce", help="run a tier of the paper's experiments, then figures and report")
    tier = repro.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="the offline quick tier (digits, synthetic)")
    tier.add_argument(
        "--tier",
        choices=("quick", "real", "paper", "full"),
        default="quick",
        help="quick (offline), real (Fashion-MNIST from Debian), paper (every MNIST experiment on "
        "MNIST-5k: pip install 'kernelattn[mnist5k]'), full (MNIST, CIFAR-10)",
    )
    repro.add_argument("--only", nargs="+", help="run only these experiments (names as in experiments/<tier>/)")
    repro.add_argument("--out", default="results", help="results directory (default: results)")
    repro.add_argument("--figures-dir", help="where figures go (default: OUT/figures)")
    repro.add_argument("--no-progress", action="store_true", help="no progress output")
    _add_precision_option(repro)
    repro.set_defaults(handler=_cmd_reproduce)

    figures = commands.add_parser("figures", help="redraw every figure and the report from a results directory")
    figures.add_argument("out", nargs="?", default="results", help="results directory (default: results)")
    figures.add_argument("--figures-dir", help="where figures go (default: OUT/figures)")
    figures.set_defaults(handler=_cmd_figures)

    store = commands.add_parser("store", help="check a results store (exit 1: problems found)")
    store.add_argument("path")
    store.add_argument("--repair", action="store_true", help="move corrupt records to quarantine/")
    store.add_argument(
        "--release-claims",
        action="store_true",
        help="with --repair: also remove every claim not held by a live process on this host "
        "(e.g. of another host that is gone)",
    )
    store.set_defaults(handler=_cmd_store_verify)

    export = commands.add_parser("export", help="write a results store to Parquet and/or log it to MLflow")
    export.add_argument("path", help="the store directory, e.g. results/quick_width_sweep")
    export.add_argument(
        "--parquet",
        metavar="FILE",
        help="write the records table (one row per record, as ResultStore.to_frame) to this Parquet "
        "file, atomically; needs pip install 'kernelattn[parquet]'",
    )
    export.add_argument("--kind", help="only the records of this kind (e.g. sweep, malleability)")
    export.add_argument("--prefix", action="store_true", help="cell./metrics. prefixed column names")
    export.add_argument(
        "--mlflow",
        metavar="URI",
        help="log the store as one MLflow run (spec as params, metrics per record as steps) to "
        "this tracking URI: file:///DIR or a directory is a local file store; off unless "
        "given; needs pip install 'kernelattn[mlflow]'",
    )
    export.add_argument("--experiment", help="MLflow experiment name (default: kernelattn)")
    export.add_argument(
        "--figures",
        nargs="+",
        metavar="PATH",
        help="with --mlflow: figure files or directories logged as artifacts under figures/",
    )
    export.set_defaults(handler=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kernelattn`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from kernelattn._precision import enable_x64, precision_policy

    enable_x64()
    try:
        with precision_policy(getattr(args, "precision", None)):  # None: "highest", or what a spec names
            return args.handler(args)
    except KeyboardInterrupt:
        print("kernelattn: interrupted; finished cells are kept in the store, rerun to resume", file=sys.stderr)
        return 130
    except Exception as err:
        message = error_message(err)
        if message is None:
            raise
        print(f"kernelattn {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _resource_exhausted(err: BaseException) -> bool:
    """Whether ``err`` is JAX/XLA running out of (device) memory.

    Matched by class name (``JaxRuntimeError``; ``XlaRuntimeError`` in older
    jax) and status, not imported: the class has no public home in every
    supported jax version.
    """
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"JaxRuntimeError", "XlaRuntimeError"}) and "RESOURCE_EXHAUSTED" in str(err)


def error_message(err: BaseException) -> str | None:
    """The one-line message the CLI prints for ``err``, or None when it is a bug (re-raised, with traceback).

    Mapped: the ``KernelattnError`` family, ``ValueError``, ``TypeError``,
    ``OSError``, ``MemoryError`` and XLA's ``RESOURCE_EXHAUSTED``.
    """
    from kernelattn.errors import KernelattnError

    if _resource_exhausted(err):
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        text = (
            f"out of device memory ({first}); the memory plan underestimated this computation: use a "
            "smaller width, n or width_chunk, or float32"
        )
    elif isinstance(err, (KernelattnError, ValueError, TypeError, OSError)):
        text = str(err) or type(err).__name__
    elif isinstance(err, MemoryError):
        text = str(err) or "out of memory"
    else:
        return None
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
