"""The package's front door: lazy ``import kernelattn``, the version, ``python -m kernelattn``,
and a ``--help`` that answers without loading JAX."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kernelattn

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout of kernelattn."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _modules_after(code: str) -> dict:
    """Which heavy modules ``code`` left imported, and what it printed."""
    probe = (
        "import contextlib, io, json, sys\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'scipy', 'pandas', 'matplotlib', 'kernelattn.kernels')"
        " if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'out': out.getvalue()}))\n"
    )
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_version_is_the_one_in_pyproject():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kernelattn.__version__ == version
    init = (ROOT / "kernelattn" / "__init__.py").read_text()
    assert f'"{version}"' not in init  # read from the metadata, not repeated here


def test_citation_and_changelog_name_the_same_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^cff-version: 1\.2\.0$", citation, flags=re.M)
    assert re.findall(r"^version: (\S+)$", citation, flags=re.M) == [version]
    assert "arXiv:2603.13085" in citation
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{version}]" in changelog
    assert (ROOT / "kernelattn" / "py.typed").is_file()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"] == {
        "kernelattn": ["py.typed"]}


def test_import_and_help_load_no_jax():
    assert _modules_after("import kernelattn")["heavy"] == []
    probe = _modules_after(
        "from kernelattn import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code"
    )
    assert probe["heavy"] == []
    assert "usage: kernelattn" in probe["out"] and "reproduce" in probe["out"]


def test_python_dash_m_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    version = subprocess.run([sys.executable, "-m", "kernelattn", "--version"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert version.returncode == 0 and version.stdout.strip() == f"kernelattn {kernelattn.__version__}"
    usage = subprocess.run([sys.executable, "-m", "kernelattn"], capture_output=True, text=True, env=env, timeout=300)
    assert usage.returncode == 2 and "usage: kernelattn" in usage.stderr


def test_every_public_name_resolves_and_no_function_shadows_a_module():
    probe = _python(
        "import kernelattn as ka\n"
        "import pathlib, kernelattn.experiments.malleability.api, kernelattn.learning.model_influence\n"
        "package = pathlib.Path(ka.__file__).parent\n"
        "assert not [p for p in package.iterdir() if p.stem in ('influence', 'malleability')]\n"
        "assert callable(ka.influence) and ka.influence.__module__ == 'kernelattn.learning.model_influence'\n"
        "assert callable(ka.malleability) and ka.malleability.__module__ == 'kernelattn.experiments.malleability.api'\n"
        "from kernelattn.learning.influence import influence_scores\n"
        "assert ka.influence_scores is influence_scores\n"
        "missing = [name for name in ka.__all__ if getattr(ka, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert ka.kernels.guards.__name__ == 'kernelattn.kernels.guards' and set(ka.__all__) <= set(dir(ka))\n"
        "try:\n"
        "    ka.no_such_name\n"
        "except AttributeError as err:\n"
        "    assert 'no_such_name' in str(err)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    assert probe.returncode == 0, probe.stderr


def test_type_checking_imports_match_the_lazy_table():
    """The names type checkers see are exactly the names loaded at run time, from the same modules."""
    tree = ast.parse((ROOT / "kernelattn" / "__init__.py").read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            seen[alias.name] = node.module
    assert seen.pop("data") == "kernelattn"
    assert seen == kernelattn._ORIGIN


#: The layers, lowest first: a module may import its own layer and those before it, never a later one.
LAYERS = (
    ("errors", "_validation", "_precision"),
    ("data",),
    ("transforms",),
    ("registry",),
    ("models",),
    ("kernels",),
    ("learning",),
    ("analysis",),
    ("experiments",),
    ("viz",),
    ("reproduce",),
    ("cli", "__main__", "__init__"),
)
#: Deferred imports that climb, each with its reason: the registry is read (spec validation, labels)
#: without loading JAX, and builds its models and their generic NTK only when asked.
ALLOWED_DEFERRED = {("registry", "kernels"), ("registry", "models")}


def _layer_rank(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    return top, next(i for i, names in enumerate(LAYERS) if top in names)


def _package_imports():
    """(module, imported module, line, at module level) for every kernelattn import in the package."""
    for path in sorted((ROOT / "kernelattn").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body} | {
            id(child) for node in tree.body if isinstance(node, ast.If) for child in node.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kernelattn"):
                targets = [node.module] if node.module != "kernelattn" else [f"kernelattn.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("kernelattn")]
            else:
                continue
            for target in targets:
                yield module, target, node, id(node) in top_level


def test_imports_run_only_down_the_layers():
    climbing = []
    for module, target, node, top_level in _package_imports():
        if module == "kernelattn" or target == "kernelattn" or target.split(".")[1].startswith("__"):
            continue
        (mine, rank), (theirs, other) = _layer_rank(module), _layer_rank(target)
        if other > rank and (top_level or (mine, theirs) not in ALLOWED_DEFERRED):
            climbing.append(f"{module}:{node.lineno} imports {target}")
    assert not climbing, climbing


def test_no_private_name_is_imported_across_modules():
    private = [f"{module}:{node.lineno} imports {alias.name} from {target}"
               for module, target, node, _ in _package_imports()
               if isinstance(node, ast.ImportFrom) and target != "kernelattn"
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private, private


def test_every_module_is_at_most_about_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "kernelattn").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 650}
    assert not long, long


def test_readme_layout_names_every_folder_and_module_of_the_layers():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Adding a dataset or a model")]
    package = ROOT / "kernelattn"
    entries = [p for p in package.iterdir() if p.name != "__pycache__" and not p.name.endswith(".typed")]
    entries += [p for folder in ("kernels", "learning", "experiments") for p in (package / folder).iterdir()
                if p.name not in ("__init__.py", "__pycache__")]
    missing = sorted(str(p.relative_to(package)) for p in entries
                     if (f"{p.name}/" if p.is_dir() else p.name) not in layout)
    assert not missing, f"README's layout section does not name {missing}"
