"""The documentation's tutorials (docs/tutorials/*.py) run, at tiny sizes, as a user would run them.

Each script is run in a fresh interpreter with ``--small``, the package found
through ``PYTHONPATH`` (no install needed), its working directory and outputs
in ``tmp_path``. The checks are on what each tutorial prints and writes, not
on its timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "docs" / "tutorials"

#: script → (lines its output must contain, files it must write under --out).
EXPECTED = {
    "own_model_ntk.py": (
        ["autodiff vs structured closed form", "raw inputs", "attention features", "log-log slope of rel_fro"],
        ["own_model_ntk.png"],
    ),
    "own_kernel_influence.py": (
        ["influence matrix (10, 60)", "refit f(x*) − f_-i(x*)", "RBF vs G^3: mean top-10% overlap"],
        ["own_kernel_influence.png"],
    ),
    "width_sweep.py": (
        ["12 cells", "computed 12 cells", "store.to_frame(): 12 records", "rerun: computed 0, already stored 12"],
        ["tutorial_width_sweep.png", "tutorial_width_sweep.csv", "tutorial_width_sweep"],
    ),
}


def test_every_tutorial_is_tested():
    assert sorted(p.name for p in TUTORIALS.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_small(script, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg"}
    env.pop("KERNELATTN_TUTORIAL_SMALL", None)
    done = subprocess.run([sys.executable, str(TUTORIALS / script), "--small", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    lines, files = EXPECTED[script]
    for line in lines:
        assert line in done.stdout, f"{script}: {line!r} not in its output:\n{done.stdout}"
    for name in files:
        assert (out / name).exists(), f"{script} did not write {name} (output:\n{done.stdout})"
    assert not (tmp_path / "results").exists()  # everything went under --out
