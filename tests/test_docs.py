"""The documentation generators (docs/_gen/) still read what the code declares.

``mkdocs build --strict`` (``scripts/docs.sh``, in CI) runs them too; these
tests run them without MkDocs so that a change to the CLI, the spec validators
or the public names that breaks a generated page shows up in the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "_gen"))

import api_page  # noqa: E402
import cli_page  # noqa: E402
import gen_common  # noqa: E402
import spec_page  # noqa: E402
import tutorial_pages  # noqa: E402

import kernelattn  # noqa: E402


def test_api_page_groups_every_public_name_once():
    grouped = [n for _, _, names in api_page.GROUPS for n in names]
    assert sorted(grouped) == sorted(kernelattn.__all__)
    text = api_page.render()
    for name in kernelattn.__all__:
        assert f"kernelattn.{name}" in text


def test_cli_page_has_every_subcommand():
    paths = cli_page.command_tree()
    assert ("sweep",) in paths and ("data", "info") in paths
    text = cli_page.render()
    for path in paths:
        assert f"`{' '.join(('kernelattn',) + path)}`" in text
    assert "usage: kernelattn sweep" in text


def test_spec_page_lists_every_key_the_validators_declare():
    text = spec_page.render()
    specs = sys.modules[kernelattn.load_spec.__module__]
    malleability = sys.modules[kernelattn.run_malleability_spec.__module__]
    for key in (*specs._TOP_KEYS, *specs._KERNEL_CHECKS, *specs._TRAINING_CHECKS, *malleability.SPEC_KEYS):
        assert f"`{key}`" in text, key
    assert "expected one of ['fixed', 'trained']" in text  # the validator's own words
    assert '| `width_chunk` | `1024` |' in text  # the default parse_spec fills in


def test_spec_page_fails_loudly_when_the_code_changes(monkeypatch):
    specs = sys.modules[kernelattn.load_spec.__module__]
    monkeypatch.delattr(specs, "_KERNEL_CHECKS")
    with pytest.raises(gen_common.DocsGenError, match="_KERNEL_CHECKS"):
        spec_page.render()


def test_attributes_section_reads_grouped_and_wrapped_names():
    doc = """Title.

    Attributes:
      a, b: shared text
        continued.
      c_long, d,
        e: wrapped names.
    """
    import inspect

    parsed = gen_common.attributes_section(inspect.cleandoc(doc))
    assert parsed == {"a": "shared text continued.", "b": "shared text continued.",
                      "c_long": "wrapped names.", "d": "wrapped names.", "e": "wrapped names."}


def test_tutorial_pages_show_each_script():
    pages = dict(tutorial_pages.render_all())
    for script in (REPO / "docs" / "tutorials").glob("*.py"):
        page = pages[f"tutorials/{script.stem}.md"]
        assert script.read_text(encoding="utf-8").rstrip() in page
        assert "```bash" in page and "::" not in page.split("```python")[0]
