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
    specs = spec_page.specs_package()
    for key in (*specs.SWEEP_KEYS, *specs.KERNEL_CHECKS, *specs.TRAINING_CHECKS, *specs.MALLEABILITY_KEYS):
        assert f"`{key}`" in text, key
    assert "expected one of ['fixed', 'trained']" in text  # the validator's own words
    assert '| `width_chunk` | `1024` |' in text  # the default parse_spec fills in
    # malleability keys: the schema's rows, whose defaults and words the generator checked against the validator
    assert "| `tau` | `0.1` | a number &gt; 0 and &lt;= 1 |" in text
    assert "| `widths` / `width` | `[1024]` | a list, each an integer &gt;= 1" in text
    assert "| `precision` | `null` | one of ['highest', 'fast']; or null |" in text
    assert "| `datasets` / `dataset` | **required** |" in text


def test_spec_page_reads_public_names_only():
    source = (REPO / "docs" / "_gen" / "spec_page.py").read_text(encoding="utf-8")
    assert "getsource" not in source and "import ast" not in source
    for name in ("_TOP_KEYS", "_KERNEL_CHECKS", "_TRAINING_CHECKS", "_DATASET_COMMON", "_MODEL_OPTIONS",
                 "_source_options", "_PLURALS", "_VARIANT_FIXED", "_HEAD_KEYS"):
        assert f'"{name}"' not in source, name


@pytest.mark.parametrize("name", ["KERNEL_CHECKS", "SWEEP_KEYS", "MALLEABILITY_SCHEMA", "malleability_choices"])
def test_spec_page_fails_loudly_when_the_code_changes(monkeypatch, name):
    specs = spec_page.specs_package()
    monkeypatch.delattr(specs, name)
    with pytest.raises(gen_common.DocsGenError, match=name):
        spec_page.render()


def test_spec_page_fails_loudly_when_the_schema_and_the_validator_disagree(monkeypatch):
    import dataclasses

    specs = spec_page.specs_package()
    schema = specs.MALLEABILITY_SCHEMA

    def changed(name, **changes):
        return tuple(dataclasses.replace(k, **changes) if k.name == name else k for k in schema)

    monkeypatch.setattr(specs, "MALLEABILITY_SCHEMA", changed("tau", default=0.2))
    with pytest.raises(gen_common.DocsGenError, match="'tau': declared default 0.2"):
        spec_page.render()
    # declared bounds the validator does not use (its lookup was built from the real schema at import)
    monkeypatch.setattr(specs, "MALLEABILITY_SCHEMA", changed("ridge", minimum=1.0))
    with pytest.raises(gen_common.DocsGenError, match="'ridge' is declared as 'a number > 1'"):
        spec_page.render()
    monkeypatch.setattr(specs, "MALLEABILITY_SCHEMA", tuple(k for k in schema if k.name != "retrain"))
    with pytest.raises(gen_common.DocsGenError, match="MALLEABILITY_SCHEMA declares"):
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
