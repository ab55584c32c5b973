"""mkdocs-gen-files entry point (mkdocs.yml): writes the generated pages at build time.

- cli.md           `kernelattn --help` and every subcommand's `--help`     (cli_page.py)
- spec-format.md   the sweep and malleability spec formats, from the validators (spec_page.py)
- api.md           every public name of `kernelattn`, by topic, via mkdocstrings (api_page.py)
- tutorials/*.md   each docs/tutorials/*.py script with its explanation  (tutorial_pages.py)

Any generator that cannot read what it documents raises, and the build fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_page  # noqa: E402
import cli_page  # noqa: E402
import spec_page  # noqa: E402
import tutorial_pages  # noqa: E402

PAGES = {"cli.md": cli_page, "spec-format.md": spec_page, "api.md": api_page}

for page, generator in PAGES.items():
    with mkdocs_gen_files.open(page, "w") as handle:
        handle.write(generator.render())
    mkdocs_gen_files.set_edit_path(page, f"_gen/{Path(generator.__file__).name}")

for page, text in tutorial_pages.render_all():
    with mkdocs_gen_files.open(page, "w") as handle:
        handle.write(text)
    mkdocs_gen_files.set_edit_path(page, page.removesuffix(".md") + ".py")
