"""MkDocs hooks (mkdocs.yml `hooks:`): pages quote sections of README.md instead of copying them.

A line ``<!-- readme: TITLE -->`` in a page is replaced, at build time, by the body
of the README section headed ``## TITLE``; links into docs/ are rewritten to the
site's pages. A missing section fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

DIRECTIVE = re.compile(r"^<!--\s*readme:\s*(.+?)\s*-->\s*$", re.MULTILINE)


def _section(readme: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\s*$", readme, re.MULTILINE)
    if match is None:
        raise PluginError(f"README.md has no section '## {title}' (quoted by a docs page); update the page")
    rest = readme[match.end():]
    end = re.search(r"^## ", rest, re.MULTILINE)
    body = rest[: end.start() if end else len(rest)].strip()
    return re.sub(r"\]\(docs/([^)]+)\)", r"](\1)", body)  # README's docs/x.md is the site's x.md


def on_page_markdown(markdown, page, config, files):
    if "<!-- readme:" not in markdown:
        return markdown
    readme = (Path(config.config_file_path).parent / "README.md").read_text(encoding="utf-8")
    return DIRECTIVE.sub(lambda m: _section(readme, m.group(1)), markdown)
