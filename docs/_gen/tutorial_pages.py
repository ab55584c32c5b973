"""Tutorial pages: one per script in docs/tutorials/, written from the script itself.

The page is the script's module docstring (its explanation and how to run it)
followed by the whole source; the script is also published beside the page for
download. The scripts are run by tests/test_tutorials.py, so the code shown is
code that runs.
"""

from __future__ import annotations

import ast

from gen_common import REPO, DocsGenError

TUTORIALS = REPO / "docs" / "tutorials"


def _docstring_to_markdown(doc: str) -> str:
    """reST-ish docstring → markdown: ``code`` → `code`, ``text::`` + indented block → fenced block."""
    out: list[str] = []
    lines = doc.replace("``", "`").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-2].rstrip() + ":")
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            body = [b for b in block if b.strip()]
            indent = min((len(b) - len(b.lstrip()) for b in body), default=0)
            out += ["", "```bash", *[b[indent:] for b in "\n".join(block).strip("\n").splitlines()], "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def render_all() -> list[tuple[str, str]]:
    """(page path relative to docs/, markdown) for each tutorial script."""
    scripts = sorted(TUTORIALS.glob("*.py"))
    if not scripts:
        raise DocsGenError(f"no tutorial scripts in {TUTORIALS}")
    pages = []
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source))
        if not doc:
            raise DocsGenError(f"{script.relative_to(REPO)} has no module docstring to introduce it")
        title, _, rest = doc.partition("\n")
        text = [
            f"# {title.strip().rstrip('.')}",
            "",
            _docstring_to_markdown(rest),
            "",
            "From the repository root (with the package installed, e.g. `pip install -e .`); "
            "`--small` runs it at tiny sizes, as the test suite does (`tests/test_tutorials.py`).",
            "",
            f"## The script: [`docs/tutorials/{script.name}`]({script.name})",
            "",
            "```python",
            source.rstrip(),
            "```",
            "",
        ]
        pages.append((f"tutorials/{script.stem}.md", "\n".join(text)))
    return pages


if __name__ == "__main__":
    for path, text in render_all():
        print(f"=== {path}\n{text}")
