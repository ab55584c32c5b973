"""Running picklable tasks in this process and in fresh worker interpreters at once: the figures and the report.

:func:`run_tasks` runs a list of :class:`Task` s over this process and
``n − 1`` workers, each taking the next task when free (this process, its
modules already imported, starts at once with the first task; a worker
after its interpreter has started). A worker is a fresh interpreter running
:func:`serve` — not a fork of this process, which may hold JAX's threads,
and not ``multiprocessing``, which would re-run the caller's main script —
and imports only what the tasks it receives need (the figure and report
modules import pandas and matplotlib, never JAX). A task's result is the
same wherever it ran.
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
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Task", "default_workers", "run_tasks", "serve"]


@dataclasses.dataclass(frozen=True)
class Task:
    """``function(*args)``, named for messages; picklable when ``function`` is module-level and ``args`` pickle."""

    name: str
    function: Callable[..., Any]
    args: tuple = ()

    def __call__(self) -> Any:
        return self.function(*self.args)


def default_workers(n_tasks: int) -> int:
    """Processes for ``n_tasks``, this one included: one per CPU this process may use, at most one per task."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no CPU affinity on macOS and Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_tasks))


#: A worker's command line: this interpreter, the parent's ``sys.path`` (as JSON, the next argument), then
#: :func:`serve`.
_WORKER = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from kernelattn.viz.workers import serve; serve()"


def serve() -> None:
    """A worker's loop: say it is ready (a pickled None on stdout), then read pickled :class:`Task` s from
    stdin, one at a time, and answer each with the pickled ``(True, its result)`` or ``(False, the exception
    raised)``; stop at the end of stdin. Anything a task prints goes to stderr."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    answers.write(pickle.dumps(None))
    answers.flush()
    while True:
        try:
            task = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        answer: tuple[bool, Any]
        try:
            answer = (True, task())
        except Exception as err:  # noqa: BLE001 - raised again in the parent
            answer = (False, err)
        try:
            data = pickle.dumps(answer)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))
        answers.write(data)
        answers.flush()


def run_tasks(tasks: Sequence[Task], workers: int | None = None) -> list[Any]:
    """Each task's result, in task order, the tasks run here and in worker processes at once.

    Tasks are taken in order, so put the longest first: this process takes the first at once.

    Args:
      tasks: picklable :class:`Task` s.
      workers: processes running tasks at once, this one included (default :func:`default_workers`);
        1 runs every task here, one after another.

    Raises:
      The first exception a task raised (in a worker: the same exception, raised here); a worker that
      cannot start leaves its tasks to the others, with a ``RuntimeWarning``.
    """
    n = default_workers(len(tasks)) if workers is None else max(1, min(workers, len(tasks)))
    if n == 1:
        return [task() for task in tasks]
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for index, task in enumerate(tasks):
        pending.put((index, task))
    results: list[Any] = [None] * len(tasks)
    errors: list[BaseException] = []  # raised by the workers
    stop = threading.Event()  # set on the first error: nobody takes another task

    def take() -> tuple[int, Task] | None:
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
            warnings.warn(f"no worker ({err}): its tasks are run by the others", RuntimeWarning, stacklevel=1)
            return  # (from a worker thread: no caller to point at)
        with worker:
            requests, answers = worker.stdin, worker.stdout
            assert requests is not None and answers is not None  # both opened as pipes
            try:
                pickle.load(answers)
            except Exception:  # noqa: BLE001 - not a worker speaking this protocol (e.g. no Python at sys.executable)
                worker.kill()
                warnings.warn(
                    f"a worker did not start (exit code {worker.wait()}): its tasks are run by the others",
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
                            f"a worker died running {task.name} (exit code {worker.wait()}; its messages are above)"
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
            results[index] = task()
    except BaseException:
        stop.set()  # the workers stop after their current task
        raise
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results
