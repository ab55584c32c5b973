"""The CLI reference page: the output of ``kernelattn --help`` and of every subcommand's ``--help``.

The command tree is read from the argument parser the ``kernelattn`` command
builds (``python -m kernelattn`` → its ``main`` → that module's
``build_parser``); each help text is then produced by running the real command,
``python -m kernelattn <subcommand ...> --help``, at a fixed terminal width.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

from gen_common import REPO, DocsGenError, kernelattn, module_of, require

COLUMNS = "100"


def command_tree() -> list[tuple[str, ...]]:
    """Every command path, parents first: (), ("data",), ("data", "info"), …"""
    kernelattn()
    entry = importlib.import_module("kernelattn.__main__")
    main = require(entry, "main", "the function `python -m kernelattn` runs")
    build_parser = require(module_of(main, "the CLI's main"), "build_parser", "the CLI's argument parser")
    paths: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        paths.append(path)
        for action in parser._actions:  # argparse keeps subcommands only here
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + (name,))

    walk(build_parser(), ())
    if len(paths) < 2:
        raise DocsGenError("the kernelattn parser has no subcommands; the CLI page would be empty")
    return paths


def help_text(path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": COLUMNS, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, "-m", "kernelattn", *path, "--help"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise DocsGenError(f"`kernelattn {' '.join(path)} --help` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.rstrip()


def render() -> str:
    paths = command_tree()
    version = subprocess.run([sys.executable, "-m", "kernelattn", "--version"], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    out = [
        "# Command line",
        "",
        "The `kernelattn` command (also `python -m kernelattn`) wraps the Python API. This page is "
        "generated when the site is built, by running `kernelattn --help` and every subcommand's "
        f"`--help` ({version.stdout.strip() or 'kernelattn'}); it cannot drift from the code.",
        "",
        "Errors in the arguments or the inputs print one line naming the argument, what was expected "
        "and what came, and exit with code 2. Long commands are resumable: rerun the same command "
        "after an interruption.",
        "",
    ]
    for path in paths:
        title = " ".join(("kernelattn",) + path)
        out += [f"{'#' * min(2 + len(path) - (1 if path else 0), 4)} `{title}`" if path else "## `kernelattn`", "",
                "```text", help_text(path), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
