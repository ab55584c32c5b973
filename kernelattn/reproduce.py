"""Reproduce the paper's tables and figures: run a tier of experiment specs, then draw and report.

``reproduce(tier)`` runs every spec of ``experiments/<tier>/`` (or the specs
given) into the results directory ``out`` — one result store per spec,
``<out>/<spec name>``, resumable: finished cells are skipped — and then calls
:func:`redraw`, which reads the stores **alone** (opened read-only; no
sweep, malleability or data-loading function runs) and writes

- the figures, PNG and PDF, into ``<out>/figures`` (or ``figures_dir``);
- the markdown report ``<out>/report.md`` with every table, each row carrying
  the key (or a reference to the keys) of the stored records it comes from.

Tiers (``experiments/<tier>/*.json``, one spec per paper artifact):

- ``quick``: scikit-learn digits and synthetic data, offline and tiny; the
  whole tier runs in 2-3 minutes on a 2-core CPU.
- ``real``: Fashion-MNIST (10 classes and T-shirt/top vs Shirt), as installed
  in ``/usr/share/datasets/fashion-mnist``; moderate sizes (≈ 12 minutes on
  2 cores).
- ``paper``: every MNIST experiment of the paper (condition numbers, NTK
  distance vs width and after training, FGSM/PGD/MIM flip rates with null
  baselines, 3 vs 8, PGD adversarial training, the ε sweep) on MNIST-5k, the
  5,000 real MNIST images of ``pip install 'kernelattn[mnist5k]'``
  (``kernelattn.data.mnist5k``), with Fashion-MNIST standing in for CIFAR-10
  and labelled so; offline, ≤ 20 minutes on 2 cores.
- ``full``: MNIST, CIFAR-10 and their binary subsets (3 vs 8, automobile vs
  airplane) at the paper's sizes; needs the data files (a missing file is a
  :class:`kernelattn.data.DatasetNotFoundError` that names every spec needing
  it and what to download) and hours of compute, or an accelerator.

Spec kinds, dispatched by their ``"kind"``:

- ``"kernel"``, ``"training"``: :func:`kernelattn.experiments.sweeps.run_sweep`
  (``kernelattn.experiments.specs`` format);
- ``"malleability"``: :func:`kernelattn.experiments.malleability.runner.run_malleability_spec`;
- ``"conditions"``: the condition-number table
  (:func:`kernelattn.experiments.conditions.run_conditions`, format in its docstring);
- ``"attribution"``: attribution estimators against exact kernel LOO and retraining
  (:func:`kernelattn.experiments.attribution.run_attribution`, format in its docstring).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import platformdirs

from kernelattn._precision import enable_x64, precision_policy, x64_enabled
from kernelattn.data import DatasetNotFoundError, dataset_info, load
from kernelattn.errors import InputValueError
from kernelattn.experiments.attribution import parse_attribution, run_attribution
from kernelattn.experiments.conditions import parse_conditions, run_conditions
from kernelattn.experiments.malleability.runner import FitCache, check_malleability_spec, run_malleability_spec
from kernelattn.experiments.resources import SMALL_N_BLAS, blas_single_thread
from kernelattn.experiments.specs import (
    SpecError,
    check_store_name,
    load_spec,
    parse_malleability_spec,
    read_spec_file,
)
from kernelattn.experiments.store import ResultStore, StoreNotFoundError
from kernelattn.experiments.sweeps import run_sweep
from kernelattn.viz import figures, report, workers
from kernelattn.viz.frames import load_frames

__all__ = [
    "KIND_ORDER",
    "TIERS",
    "ReproduceResult",
    "SpecRun",
    "experiments_dir",
    "list_specs",
    "redraw",
    "reproduce",
]

TIERS = ("quick", "real", "paper", "full")
#: Run order of spec kinds (cheap tables first, so a failure shows early).
KIND_ORDER = ("conditions", "kernel", "training", "malleability", "attribution")
_FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10")


# =========================================================================== specs


def experiments_dir() -> Path:
    """The ``experiments/`` directory of the source tree (``$KERNELATTN_EXPERIMENTS`` overrides it)."""
    env = os.environ.get("KERNELATTN_EXPERIMENTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "experiments"


@dataclasses.dataclass(frozen=True)
class _SpecEntry:
    name: str
    kind: str
    data: dict
    source: str | None

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))


def _entry(spec: Any, index: int) -> _SpecEntry:
    source = None
    if isinstance(spec, (str, os.PathLike)):
        source = str(spec)
        spec = read_spec_file(Path(spec))
    elif hasattr(spec, "to_dict") and hasattr(spec, "kind"):  # a kernelattn.experiments.specs.Spec
        source = getattr(spec, "source", None)
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise InputValueError(
            f"specs[{index}]: expected a path, a dict or a kernelattn.experiments.specs.Spec, got {type(spec).__name__}"
        )
    where = source or f"specs[{index}]"
    name, kind = spec.get("name"), spec.get("kind")
    if not isinstance(name, str) or not name:
        raise InputValueError(f'{where}: every spec needs a "name" (its store is <out>/<name>)')
    try:
        check_store_name(name)
    except SpecError as err:
        raise SpecError(err.path, err.problem, source) from None
    if kind not in KIND_ORDER:
        raise InputValueError(f'{where}: "kind" must be one of {list(KIND_ORDER)}, got {kind!r}')
    return _SpecEntry(name, kind, dict(spec), source)


def _tier_entries(tier: str, directory: Path | None) -> list[_SpecEntry]:
    if not isinstance(tier, str) or not tier:
        raise InputValueError(f"tier: expected one of {list(TIERS)}, got {tier!r}")
    root = Path(directory) if directory is not None else experiments_dir()
    folder = root / tier
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise InputValueError(
            f"tier: no experiment folder {folder} (tiers here: {known or 'none'}; expected one of {list(TIERS)})"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputValueError(f"tier: {folder} holds no *.json spec")
    return [_entry(path, i) for i, path in enumerate(files)]


def _sorted(entries: list[_SpecEntry]) -> list[_SpecEntry]:
    names = [e.name for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise InputValueError(f"specs: two specs are named {name!r}; names must be unique (they name the stores)")
    return sorted(entries, key=lambda e: (KIND_ORDER.index(e.kind), e.name))


def _artifact(name: str, tier: str | None) -> str:
    return name[len(tier) + 1 :] if tier and name.startswith(tier + "_") else name


def _select(entries: list[_SpecEntry], only: Any, tier: str | None) -> list[_SpecEntry]:
    if only is None:
        return entries
    patterns = [p.strip() for p in only.split(",")] if isinstance(only, str) else [str(p) for p in only]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise InputValueError("only: expected a spec name, an artifact name or a glob, got nothing")
    chosen = []
    for pattern in patterns:
        hits = [
            e
            for e in entries
            if fnmatch.fnmatchcase(e.name, pattern) or fnmatch.fnmatchcase(_artifact(e.name, tier), pattern)
        ]
        if not hits:
            available = ", ".join(e.name for e in entries)
            raise InputValueError(f"only: {pattern!r} matches no spec of this tier (available: {available})")
        chosen += [e for e in hits if e not in chosen]
    return [e for e in entries if e in chosen]


def list_specs(tier: str = "quick", experiments: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The specs of a tier in run order: ``name``, ``kind``, ``source`` and ``description`` of each."""
    return [
        {"name": e.name, "kind": e.kind, "source": e.source, "description": e.description}
        for e in _sorted(_tier_entries(tier, None if experiments is None else Path(experiments)))
    ]


# =========================================================================== pre-flight


def _validate(entries: list[_SpecEntry]) -> None:
    """Validate every spec before any work, so a typo in the last one does not waste the first ones."""
    for entry in entries:
        try:
            if entry.kind == "conditions":
                parse_conditions(entry.data, entry.source)
            elif entry.kind == "attribution":
                parse_attribution(entry.data, entry.source)
            elif entry.kind in ("kernel", "training"):
                load_spec(entry.source if entry.source is not None else entry.data)
            else:
                parse_malleability_spec(entry.data, source=entry.source)
        except SpecError:
            raise
        except ValueError as err:
            raise InputValueError(f"{entry.source or entry.name}: {err}") from err


def _file_datasets(entry: _SpecEntry) -> list[tuple[str, Any, bool, Any, Any]]:
    datasets = entry.data.get("datasets", entry.data.get("dataset", []))
    if isinstance(datasets, Mapping):
        datasets = [datasets]
    out = []
    for d in datasets if isinstance(datasets, list) else []:
        if isinstance(d, Mapping) and d.get("name") in _FILE_DATASETS:
            system_dirs = d.get("system_dirs")
            out.append(
                (
                    d["name"],
                    d.get("data_dir"),
                    bool(d.get("download", True)),
                    tuple(system_dirs) if isinstance(system_dirs, list) else system_dirs,
                    d.get("source"),
                )
            )
    return out


def _check_data(entries: list[_SpecEntry]) -> None:
    """Make sure every file dataset of the specs is on disk (downloading it when allowed) before any work.

    Raises:
      DatasetNotFoundError: listing, per missing dataset, the specs that need it
        and the data layer's message (file names, checksums, URLs, directory).
    """
    needs: dict[tuple[str, Any, bool, Any, Any], list[str]] = {}
    for entry in entries:
        for item in _file_datasets(entry):
            needs.setdefault(item, [])
            if entry.name not in needs[item]:
                needs[item].append(entry.name)
    problems = []
    for (name, data_dir, download, system_dirs, source), spec_names in needs.items():
        info = dataset_info(name, data_dir, system_dirs=system_dirs)
        if source in (None, "idx") and all(f.get("found") for f in info.get("files", [])):
            continue
        options = {} if system_dirs is None else {"system_dirs": system_dirs}
        options.update({} if source is None else {"source": source})  # mnist's other source (kernelattn.data.mnist5k)
        try:
            load(name, data_dir=data_dir, download=download, **options)  # downloads into the cache when allowed
        except DatasetNotFoundError as err:
            problems.append(
                f"- dataset {name!r}, needed by {', '.join(spec_names)}:\n"
                + "\n".join("    " + line for line in str(err).splitlines())
            )
    if problems:
        raise DatasetNotFoundError(
            "the experiments need data files that are not available:\n"
            + "\n".join(problems)
            + "\nDownload them (or copy them into the directory named), then rerun; finished cells are kept."
        )


# =========================================================================== running


@dataclasses.dataclass(frozen=True)
class SpecRun:
    """One spec of a reproduce run.

    Attributes:
      name, kind, source: the spec (``source`` is its file, if any).
      store: its result store ``<out>/<name>``.
      written: records written by this run (0 when everything was stored).
      stored: records in the store afterwards.
      seconds: wall time spent on it.
    """

    name: str
    kind: str
    source: str | None
    store: Path
    written: int
    stored: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class ReproduceResult:
    """What :func:`reproduce` did.

    Attributes:
      tier: the tier (or ``"custom"`` for explicit specs).
      out: the results directory.
      runs: a :class:`SpecRun` per spec, in run order.
      figures: the figure files written (PNG and PDF).
      report: the markdown report.
      seconds: total wall time; ``compute_seconds`` of the specs, ``draw_seconds`` of the redraw.
    """

    tier: str
    out: Path
    runs: tuple[SpecRun, ...]
    figures: tuple[Path, ...]
    report: Path
    seconds: float
    compute_seconds: float
    draw_seconds: float

    def summary(self) -> str:
        """A few lines: per spec records written / stored and seconds, then the outputs."""
        lines = [
            f"reproduce {self.tier!r} into {self.out}: {self.seconds:.1f} s "
            f"(compute {self.compute_seconds:.1f} s, figures and report {self.draw_seconds:.1f} s)"
        ]
        width = max((len(r.name) for r in self.runs), default=4)
        for r in self.runs:
            lines.append(
                f"  {r.name.ljust(width)}  {r.kind:12s} {r.written:5d} new / {r.stored:5d} stored  {r.seconds:7.1f} s"
            )
        lines.append(f"  {len(self.figures)} figure files in {self.figures[0].parent if self.figures else '-'}")
        lines.append(f"  report: {self.report}")
        return "\n".join(lines)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _setup_compile_cache(compile_cache: Any) -> None:
    """Point JAX's persistent compilation cache at a directory (unless one is set or ``compile_cache`` is off).

    Identical programs (same shapes and constants) are then read from disk
    instead of recompiled, within a run and across runs. Every program is
    kept, however fast it compiled (JAX keeps only those over 1 s by default):
    the quick tier's hundreds of small programs took 10 s to recompile on
    each run with a 0.3 s minimum.
    """
    if compile_cache is False or compile_cache is None:
        return
    if getattr(jax.config, "jax_compilation_cache_dir", None):
        return
    if compile_cache is True:
        directory = Path(platformdirs.user_cache_dir("kernelattn")) / "jax-compile"
    else:
        directory = Path(compile_cache)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        warnings.warn(f"compile_cache: cannot create {directory} ({err}); compiling without a cache", stacklevel=3)
        return
    try:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except (AttributeError, KeyError, ValueError) as err:  # a JAX without these options
        warnings.warn(f"compile_cache: JAX's persistent cache is not available ({err})", stacklevel=3)


def _largest_training_set(spec: Any) -> int | None:
    """The largest ``n_train`` a spec names (datasets, variants, lists of sizes), or None when a
    dataset entry names none (its full size)."""
    if isinstance(spec, dict):
        if "name" in spec and "n_train" not in spec and ("seed" in spec or "n_test" in spec):
            return None
        named = spec.get("n_train", [])
        sizes = list(named) if isinstance(named, list) else [named]
        children: Any = spec.values()
    elif isinstance(spec, list):
        sizes, children = [], spec
    else:
        return 0
    for child in children:
        size = _largest_training_set(child)
        if size is None:
            return None
        sizes.append(size)
    return max(sizes, default=0)


def _run_one(entry: _SpecEntry, out: Path, progress: bool, fits: FitCache) -> int:
    """Run one spec into ``<out>/<name>``; the number of records written. Malleability specs share
    the trained networks of ``fits``. Dense linear algebra runs on one thread when every training
    set is small (``kernelattn.experiments.resources.blas_single_thread``)."""
    largest = _largest_training_set(entry.data)
    with blas_single_thread(SMALL_N_BLAS + 1 if largest is None else largest):
        return _run_entry(entry, out, progress, fits)


def _run_entry(entry: _SpecEntry, out: Path, progress: bool, fits: FitCache) -> int:
    if entry.kind in ("conditions", "attribution"):
        run = run_conditions if entry.kind == "conditions" else run_attribution
        return len(
            run(
                entry.data if entry.source is None else entry.source,
                out,
                progress=(lambda msg: _say(True, f"    {msg}")) if progress else None,
            )
        )
    if entry.kind in ("kernel", "training"):
        spec = load_spec(entry.source if entry.source is not None else entry.data)
        result = run_sweep(spec, out, progress=progress)
        if result.n_missing:
            warnings.warn(
                f"{entry.name}: {result.n_missing} cell(s) missing (claimed by another process?); rerun to complete",
                stacklevel=3,
            )
        return int(result.n_computed)
    loaded = check_malleability_spec(entry.data)  # data and memory, before the store is created
    store = ResultStore.open(out / entry.name)
    t0 = time.perf_counter()

    def report(cell, rep) -> None:
        model = cell["model"] if isinstance(cell["model"], str) else json.dumps(cell["model"], sort_keys=True)
        _say(
            True,
            f"    {time.perf_counter() - t0:6.1f} s  {cell['dataset'].get('name')} {model} "
            f"{cell['training_mode']} {cell['intervention']} {cell['attack']} ε={cell['epsilon']:g} "
            f"seed {cell['seed']}: flip rate {rep.flip_rate:.3f}",
        )

    return len(
        run_malleability_spec(entry.data, store, progress=report if progress else None, loaded=loaded, fits=fits)
    )


def reproduce(
    tier: str = "quick",
    only: str | Sequence[str] | None = None,
    out: str | os.PathLike[str] = "results",
    figures_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    specs: Sequence[Any] | None = None,
    experiments: str | os.PathLike[str] | None = None,
    compile_cache: bool | str | os.PathLike[str] = True,
    precision: str | None = None,
    fits: FitCache | None = None,
) -> ReproduceResult:
    """Run a tier's experiments (resumably), then write the figures and the markdown report.

    Args:
      tier: "quick" (digits + synthetic, minutes on a CPU), "real"
        (Fashion-MNIST, ≈ 15 min on 2 cores), "paper" (MNIST-5k, ≤ 20 min on
        2 cores) or "full" (MNIST, CIFAR-10 and their binary subsets at the
        paper's sizes); the specs are ``experiments/<tier>/*.json``.
      only: run only these specs: a spec name ("quick_width"), an artifact
        name without the tier prefix ("width"), a glob ("*malleability*"),
        a comma-separated string or a list of those. Figures and the report
        still cover every store in ``out``.
      out: results directory; spec ``name`` is stored in ``<out>/<name>``.
      figures_dir: where the figures go (default ``<out>/figures``).
      progress: print per-spec and per-cell progress to stderr (sweeps show
        a tqdm bar when stderr is a terminal).
      specs: explicit specs instead of the tier's files: paths, dicts or
        ``kernelattn.experiments.specs.Spec`` objects (``tier`` then only labels the run).
      experiments: the folder holding the tier folders (default: the
        repository's ``experiments/``).
      compile_cache: JAX persistent compilation cache: True (default) uses
        ``<user cache>/kernelattn/jax-compile`` unless JAX already has one, a
        path uses that directory, False leaves JAX's settings alone.
      precision: matmul precision of every experiment whose spec names none,
        "highest" (``Precision.HIGHEST``) or "fast" (the device's default:
        TF32 on recent GPUs); None → the policy in force
        (``kernelattn.precision_policy``, the CLI's ``--precision``, else
        "highest"). Records and figures' metadata name the one used.
      fits: the :class:`~kernelattn.experiments.malleability.runner.FitCache` the malleability specs
        share their trained networks through (None: a new one); pass one to keep the networks, e.g.
        to inspect what a tier trained or to share them with a later call in the same process.

    Returns:
      A :class:`ReproduceResult`.

    Raises:
      kernelattn.data.DatasetNotFoundError: data files are missing (checked
        before any computation; the message names the specs that need them
        and what to download where).
      kernelattn.experiments.specs.SpecError, ValueError: an invalid spec or argument.
    """
    with precision_policy(precision):
        return _reproduce(
            tier,
            only,
            out,
            figures_dir,
            progress,
            specs=specs,
            experiments=experiments,
            compile_cache=compile_cache,
            fits=FitCache() if fits is None else fits,
        )


def _reproduce(tier, only, out, figures_dir, progress, *, specs, experiments, compile_cache, fits) -> ReproduceResult:
    start = time.perf_counter()
    out = Path(out)
    if specs is not None:
        entries = _sorted([_entry(s, i) for i, s in enumerate(specs)])
    else:
        entries = _sorted(_tier_entries(tier, None if experiments is None else Path(experiments)))
    entries = _select(entries, only, tier)
    if not x64_enabled():  # float64 for Θ_∞, κ and every metric (as the CLI does)
        enable_x64()
    _validate(entries)
    _check_data(entries)
    _setup_compile_cache(compile_cache)
    out.mkdir(parents=True, exist_ok=True)
    runs = []  # the specs of a tier share ``fits``: they train many of the same networks
    for i, entry in enumerate(entries, 1):
        _say(
            progress,
            f"[{i}/{len(entries)}] {entry.name} ({entry.kind})"
            + (f": {entry.description}" if entry.description else ""),
        )
        t0 = time.perf_counter()
        try:
            written = _run_one(entry, out, progress, fits)
        except DatasetNotFoundError as err:
            raise DatasetNotFoundError(f"experiment {entry.name!r} ({entry.source or 'given spec'}): {err}") from err
        seconds = time.perf_counter() - t0
        stored = _count_records(out / entry.name)
        runs.append(SpecRun(entry.name, entry.kind, entry.source, out / entry.name, written, stored, seconds))
        _say(progress, f"    {entry.name}: {written} new record(s), {stored} stored, {seconds:.1f} s")
    compute = time.perf_counter() - start
    t0 = time.perf_counter()
    written_files = redraw(out, figures_dir)
    draw = time.perf_counter() - t0
    figures = tuple(p for p in written_files if p.suffix in (".png", ".pdf"))
    report = next(p for p in written_files if p.suffix == ".md")
    result = ReproduceResult(
        tier if specs is None else "custom",
        out,
        tuple(runs),
        figures,
        report,
        time.perf_counter() - start,
        compute,
        draw,
    )
    _say(progress, result.summary())
    return result


def _count_records(path: Path) -> int:
    records = path / "records"
    if not records.is_dir():
        return 0
    return sum(1 for p in records.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


# =========================================================================== drawing


def redraw(out: str | os.PathLike[str] = "results", figures_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Redraw every figure and rewrite ``<out>/report.md`` from the result stores alone.

    Every store under ``out`` (a directory holding ``kernelattn-store.json``)
    is opened read-only and its records read; nothing is computed and no
    sweep or malleability code runs. Takes seconds.

    Args:
      out: the results directory of :func:`reproduce`.
      figures_dir: where the figures go (default ``<out>/figures``).

    Returns:
      The files written: the figures (each as ``.png`` and ``.pdf``), then
      the report ``<out>/report.md``.

    Raises:
      kernelattn.experiments.store.StoreNotFoundError (a FileNotFoundError): ``out`` holds no result store.
    """
    out = Path(out)
    figures_dir = out / "figures" if figures_dir is None else Path(figures_dir)
    frames = load_frames(out)
    if not frames.stores:
        raise StoreNotFoundError(f"{out}: no result store found (run kernelattn reproduce first)")
    jobs = figures.figure_jobs(frames)
    precisions = {job.stem: _figure_precision(frames, job.stem) for job in jobs}
    links = {job.stem: _relative(figures_dir / f"{job.stem}.png", out) for job in jobs}
    report_task = workers.Task(
        "report.md", report.write_report, (out / "report.md", frames, links, {job.stem: job.caption for job in jobs})
    )
    # The report first: this process, which has read the stores, writes it while the workers start drawing.
    report_path, *drawn = workers.run_tasks([report_task, *figures.figure_tasks(jobs, figures_dir, precisions)])
    written = [path for paths in drawn for path in paths]
    return [*written, report_path]


def _figure_precision(frames, stem: str) -> str:
    """The matmul precision policy recorded by the latest record of the store a figure is drawn from.

    "unrecorded" for stores written before records carried it (their CPU
    numbers are "highest"; GPU ones were the device's default).
    """
    stores = [name for name in frames.info if stem.startswith(f"{name}_")]
    if not stores:
        return "unrecorded"
    environment = frames.info[max(stores, key=len)].get("environment") or {}
    return environment.get("precision") or "unrecorded"


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive
        return str(path)
