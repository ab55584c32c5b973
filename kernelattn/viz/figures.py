"""Which figures the stores support, and drawing them to files, in worker processes when there are several CPUs.

:func:`figure_jobs` lists the figures a set of stores supports as
:class:`FigureJob` s (file stem, caption, plot function and the frames it
draws): nothing is drawn yet. :func:`figures_for` draws them here, one by one;
:func:`save_figures` writes each as PNG and PDF, spreading the figures over
this process and worker processes, one per CPU (:mod:`kernelattn.viz.workers`;
:func:`figure_tasks` to run them beside other tasks). A worker imports only
pandas, matplotlib and the figure modules, never JAX, receives each figure's
frames pickled, and draws on matplotlib's Agg and PDF canvases. A figure
drawn in a worker is the same file as one drawn here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kernelattn.viz.figures_attribution import plot_attribution
from kernelattn.viz.figures_malleability import (
    default_protocol,
    plot_adversarial_training,
    plot_epsilon_sweep,
    plot_flip_rates,
    plot_kappa_sweep,
    plot_remedies,
)
from kernelattn.viz.figures_sweeps import plot_condition_power, plot_convergence, plot_ntk_distance, plot_spectra
from kernelattn.viz.frames import Frames, is_kappa_sweep
from kernelattn.viz.style import model_colors, save_figure
from kernelattn.viz.workers import Task, run_tasks

__all__ = ["FigureJob", "figure_jobs", "figure_tasks", "figures_for", "save_figures"]


@dataclasses.dataclass(frozen=True)
class FigureJob:
    """One figure to draw: ``plot(**kwargs)`` (kwargs: frames of records, colours), saved as ``<stem>.png/.pdf``.

    Picklable (the plot functions are module-level), so a worker process can draw it.
    """

    stem: str
    caption: str
    plot: Callable[..., Figure]
    kwargs: Mapping[str, Any]

    def draw(self) -> Figure:
        """The figure."""
        return self.plot(**self.kwargs)


def _store_jobs(frames: Frames, store: str, colors: dict[str, str]) -> list[FigureJob]:
    """The figures of one store (or one setting ``<store>~<setting>`` of it)."""

    def rows(frame):
        return frame[frame["store"] == store] if not frame.empty else frame

    jobs = []
    c = rows(frames.conditions)
    if not c.empty:
        power = int(c["power"].iloc[0])
        jobs += [
            FigureJob(
                f"{store}_spectra",
                f"Normalized spectra of G and of the attention Gram G^{power} ({store}).",
                plot_spectra,
                {"conditions": c},
            ),
            FigureJob(
                f"{store}_kappa_power",
                f"κ_d(G)^{power} against the measured κ_d(G^{power}), with the identity ({store}).",
                plot_condition_power,
                {"conditions": c},
            ),
        ]
    k = rows(frames.kernel)
    if not k.empty:
        jobs.append(
            FigureJob(
                f"{store}_convergence",
                f"Distance of the empirical NTK to its limit against width "
                f"({store}): mean over seeds, min–max band, m^{{-1/2}} reference; cert = 1/2 "
                "extrapolated and m_theory marked.",
                plot_convergence,
                {"kernel": k, "colors": colors},
            )
        )
        if k["variant"].any():
            jobs.append(
                FigureJob(
                    f"{store}_remedies",
                    f"Remedies: rank-r truncated and depth-k attention ({store}).",
                    plot_remedies,
                    {"kernel": k, "colors": colors},
                )
            )
        if is_kappa_sweep(k):
            jobs.append(
                FigureJob(
                    f"{store}_kappa",
                    f"Certificate gap against κ(G), synthetic data ({store}).",
                    plot_kappa_sweep,
                    {"kernel": k, "colors": colors},
                )
            )
    t = rows(frames.training)
    if not t.empty:
        jobs.append(
            FigureJob(
                f"{store}_ntk_distance",
                f"Function-space distance to the NTK predictor after training ({store}).",
                plot_ntk_distance,
                {"training": t, "colors": colors},
            )
        )
    m = rows(frames.malleability)
    measured = default_protocol(m)
    if not measured.empty:
        on_m = {"malleability": m, "colors": colors}
        specific = []
        if measured["epsilon"].nunique() >= 2:
            specific.append(
                FigureJob(
                    f"{store}_epsilon", f"Flip rate against the attack radius ε ({store}).", plot_epsilon_sweep, on_m
                )
            )
        if measured["training_mode"].nunique() >= 2:
            specific.append(
                FigureJob(
                    f"{store}_adversarial_training",
                    f"Standard vs PGD adversarial training ({store}).",
                    plot_adversarial_training,
                    on_m,
                )
            )
        if m["variant"].any():
            specific.append(
                FigureJob(
                    f"{store}_remedies",
                    f"Remedies: flip rate of rank-r / depth-k attention ({store}).",
                    plot_remedies,
                    on_m,
                )
            )
        if is_kappa_sweep(m):
            specific.append(
                FigureJob(
                    f"{store}_kappa",
                    f"Malleability gap against κ(G), synthetic data ({store}).",
                    plot_kappa_sweep,
                    on_m,
                )
            )
        jobs += specific
        if measured["attack"].nunique() >= 2 or not specific:
            jobs.append(
                FigureJob(
                    f"{store}_flip_rates",
                    f"Influence flip rates per attack and model ({store}).",
                    plot_flip_rates,
                    on_m,
                )
            )
    a = rows(frames.attribution)
    if not a.empty:
        jobs.append(
            FigureJob(
                f"{store}_attribution",
                f"Attribution estimators against exact kernel LOO and retraining: Spearman ρ against width ({store}).",
                plot_attribution,
                {"attribution": a},
            )
        )
    return jobs


def figure_jobs(frames: Frames) -> list[FigureJob]:
    """The figures the stores in ``frames`` support, by store name; nothing is drawn.

    Per store: conditions → spectra and κ^{2k+1}; kernel sweep → convergence
    (+ remedies when it holds attention variants, + κ sweep when it spans
    synthetic κ); training sweep → NTK distance; malleability → flip-rate
    bars (several attacks, or nothing more specific), ε sweep (several ε),
    adversarial training (several training modes), remedies (variants),
    κ sweep (synthetic κ); attribution → Spearman ρ against width. Models keep one colour across all figures.
    """
    labels = []
    for frame in (frames.kernel, frames.training, frames.malleability):
        if not frame.empty:
            labels += list(frame["model"].unique())
    colors = model_colors(list(dict.fromkeys(labels)))
    stores: list[str] = []  # store names, or "<store>~<setting>" when a store holds several settings
    for frame in (frames.conditions, frames.kernel, frames.training, frames.malleability, frames.attribution):
        if not frame.empty:
            stores += [s for s in dict.fromkeys(frame["store"]) if s not in stores]
    return [job for store in sorted(stores) for job in _store_jobs(frames, store, colors)]


def figures_for(frames: Frames) -> Iterator[tuple[str, str, Figure]]:
    """(file stem, caption, Figure) of each of :func:`figure_jobs`, drawn here one at a time."""
    for job in figure_jobs(frames):
        yield job.stem, job.caption, job.draw()


def _save(job: FigureJob, stem: Path, precision: str | None) -> list[Path]:
    return save_figure(job.draw(), stem, precision=precision)


def figure_tasks(
    jobs: Sequence[FigureJob], directory: str | os.PathLike[str], precisions: Mapping[str, str] | None = None
) -> list[Task]:
    """One :class:`~kernelattn.viz.workers.Task` per job, writing ``<directory>/<stem>.png`` and ``.pdf``
    (``directory`` created) and returning their paths: :func:`save_figures`'s work, to run with
    :func:`kernelattn.viz.workers.run_tasks` beside other tasks (the report)."""
    directory = Path(directory)
    return [Task(job.stem, _save, (job, directory / job.stem, (precisions or {}).get(job.stem))) for job in jobs]


def save_figures(
    jobs: Sequence[FigureJob],
    directory: str | os.PathLike[str],
    precisions: Mapping[str, str] | None = None,
    *,
    workers: int | None = None,
) -> list[Path]:
    """Draw each job and write ``<directory>/<stem>.png`` and ``.pdf``; the paths written, in job order.

    Args:
      jobs: from :func:`figure_jobs`.
      directory: where the files go (created).
      precisions: stem → the matmul precision policy of its records, for the files' metadata
        (see ``style.save_figure``).
      workers: processes drawing at once, this one included (default
        :func:`kernelattn.viz.workers.default_workers`); 1 draws every figure here.

    Raises:
      The first exception a figure raised (in a worker: the same exception, raised here).
    """
    drawn = run_tasks(figure_tasks(jobs, directory, precisions), workers)
    return [path for paths in drawn for path in paths]
