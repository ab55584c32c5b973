"""Which figures the stores support, and drawing them to files, in worker processes when there are several CPUs.

:func:`figure_jobs` lists the figures a set of stores supports as
:class:`FigureJob` s (file stem, caption, plot function and the frames it
draws): nothing is drawn yet. :func:`figures_for` draws them here, one by one;
:func:`save_figures` writes each as PNG and PDF, spreading the figures over
this process and worker processes, one per CPU. A worker is a fresh
interpreter running :func:`serve` (not a fork of this process, which may hold JAX's threads, and
not ``multiprocessing``, which would re-run the caller's main script): it
imports only pandas, matplotlib and the figure modules, never JAX, receives
each figure's frames pickled, and draws on matplotlib's Agg and PDF canvases.
A figure drawn in a worker is the same file as one drawn here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import queue
import subprocess
import sys
import threading
import warnings
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

__all__ = ["FigureJob", "default_workers", "figure_jobs", "figures_for", "save_figures", "serve"]


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


def default_workers(n_figures: int) -> int:
    """Worker processes for ``n_figures``: one per CPU this process may use, at most one per figure."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no CPU affinity on macOS and Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_figures))


def _save(job: FigureJob, stem: Path, precision: str | None) -> list[Path]:
    return save_figure(job.draw(), stem, precision=precision)


#: A worker's command line: this interpreter, the parent's ``sys.path`` (as JSON, the next argument), then
#: :func:`serve`. No ``multiprocessing``: it would re-run the parent's main script in every worker.
_WORKER = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from kernelattn.viz.figures import serve; serve()"


def serve() -> None:
    """A worker's loop: say it is ready (a pickled None on stdout), then read pickled ``(job, stem,
    precision)`` tasks from stdin, one at a time, and answer each with the pickled ``(True, paths written)``
    or ``(False, the exception raised)``; stop at the end of stdin. Anything the drawing prints goes to stderr."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    answers.write(pickle.dumps(None))
    answers.flush()
    while True:
        try:
            task = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        answer: tuple[bool, list[Path] | Exception]
        try:
            answer = (True, _save(*task))
        except Exception as err:  # noqa: BLE001 - raised again in the parent
            answer = (False, err)
        try:
            data = pickle.dumps(answer)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))
        answers.write(data)
        answers.flush()


def _draw_in_workers(tasks: Sequence[tuple], n: int) -> list[list[Path]]:
    """The paths written for each task, drawn here and by ``n − 1`` worker processes, each of the ``n``
    taking the next task when free (this process, its modules already imported, starts at once)."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for index, task in enumerate(tasks):
        pending.put((index, task))
    results: list[list[Path]] = [[] for _ in tasks]
    errors: list[BaseException] = []  # raised by the workers
    stop = threading.Event()  # set on the first error: nobody takes another task

    def take() -> tuple[int, tuple] | None:
        try:
            return None if stop.is_set() else pending.get_nowait()
        except queue.Empty:
            return None

    def fail(error: BaseException) -> None:
        errors.append(error)
        stop.set()

    def drive() -> None:  # one worker process, fed by one thread of this process once it is ready
        try:
            worker = subprocess.Popen(
                [sys.executable, "-c", _WORKER, json.dumps(list(map(os.fsdecode, sys.path)))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as err:
            warnings.warn(
                f"no figure worker ({err}): the figures are drawn by the others", RuntimeWarning, stacklevel=1
            )  # from a worker thread: no caller to point at
            return
        with worker:
            requests, answers = worker.stdin, worker.stdout
            assert requests is not None and answers is not None  # both opened as pipes
            try:
                pickle.load(answers)
            except Exception:  # noqa: BLE001 - not a worker speaking this protocol (e.g. no Python at sys.executable)
                worker.kill()
                warnings.warn(
                    f"a figure worker did not start (exit code {worker.wait()}): the figures are drawn by the others",
                    RuntimeWarning,
                    stacklevel=1,
                )
                return
            while (item := take()) is not None:
                index, task = item
                try:
                    pickle.dump(task, requests)
                    requests.flush()
                    ok, value = pickle.load(answers)
                except (EOFError, OSError):
                    fail(
                        RuntimeError(
                            f"a figure worker died drawing {task[0].stem} (exit code {worker.wait()}; "
                            "its messages are above)"
                        )
                    )
                    return
                if ok:
                    results[index] = value
                else:
                    fail(value)

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(n - 1)]
    for thread in threads:
        thread.start()
    try:
        while (item := take()) is not None:
            index, task = item
            results[index] = _save(*task)
    except BaseException:
        stop.set()  # the workers stop after their current figure
        raise
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results


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
      workers: processes drawing at once, this one included (default :func:`default_workers`); 1 draws
        every figure here.

    Raises:
      The first exception a figure raised (in a worker: the same exception, raised here).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tasks = [(job, directory / job.stem, (precisions or {}).get(job.stem)) for job in jobs]
    n = default_workers(len(tasks)) if workers is None else max(1, min(workers, len(tasks)))
    drawn = [_save(*task) for task in tasks] if n == 1 else _draw_in_workers(tasks, n)
    return [path for paths in drawn for path in paths]
