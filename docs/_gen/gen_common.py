"""Shared helpers of the build-time page generators in docs/_gen/.

Every generator reads what the code declares and raises ``DocsGenError`` when it
cannot find it, so that ``mkdocs build`` fails instead of publishing a stale page.
"""

from __future__ import annotations

import html
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class DocsGenError(RuntimeError):
    """The code no longer declares what a docs generator reads: update docs/_gen/."""


def kernelattn():
    """The package from this checkout (not another installed copy)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    package = importlib.import_module("kernelattn")
    where = Path(package.__file__).resolve().parent
    if where != REPO / "kernelattn":
        raise DocsGenError(f"imported kernelattn from {where}, not from this checkout ({REPO / 'kernelattn'})")
    return package


def module_of(obj, what: str):
    """The module that defines a public object (found at build time, so module moves need no docs edit)."""
    name = getattr(obj, "__module__", None)
    if not name or name not in sys.modules:
        raise DocsGenError(f"cannot find the module defining {what}")
    return sys.modules[name]


def require(module, name: str, what: str):
    """``module.name``, or a DocsGenError saying which generator reads it."""
    try:
        return getattr(module, name)
    except AttributeError:
        raise DocsGenError(f"{module.__name__} no longer defines {name} ({what}); update docs/_gen/") from None


def cell(text: object) -> str:
    """Docstring text for a markdown table cell: reST ``code`` → `code`, HTML escaped outside code spans."""
    parts = str(text).replace("``", "`").replace("\n", " ").split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        parts = ["'".join(parts)]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("`" + part.replace("|", "\\|") + "`")
        else:
            out.append(html.escape(part, quote=False).replace("|", "&#124;"))
    return "".join(out)


def code(text: object) -> str:
    """Inline code for a markdown table cell."""
    text = str(text).replace("|", "\\|")
    fence = "`` " if "`" in text else "`"
    return f"{fence}{text}{fence[::-1]}" if text else ""


def literal_block(doc: str, what: str, starts: str = "") -> tuple[str, str]:
    """(prose before, literal block) of the first reST ``::`` block of a docstring whose text starts with ``starts``."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        following_text = next((f.strip() for f in lines[i + 1:] if f.strip()), "")
        if line.rstrip().endswith("::") and following_text.startswith(starts):
            prose = "\n".join(lines[:i] + [line.rstrip()[:-1].rstrip() + ":"]).strip()
            body: list[str] = []
            for following in lines[i + 1:]:
                if following.strip() and not following.startswith((" ", "\t")):
                    break
                body.append(following)
            block = "\n".join(body).strip("\n")
            if not block.strip():
                continue
            indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            return prose, "\n".join(b[indent:] for b in block.splitlines())
    raise DocsGenError(f"no '::' literal block (the annotated example) in the docstring of {what}")


def attributes_section(doc: str) -> dict[str, str]:
    """Google-style ``Attributes:`` entries of a docstring, one per name (``a, b: text`` gives both).

    An entry starts at the section's indentation; deeper lines continue it. Its
    names are everything before the first ``": "`` when that is a comma-separated
    list of identifiers (a list of names may wrap onto the next line).
    """
    lines = (doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    entries: list[str] = []
    base = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        base = indent if base is None else base
        if indent < base:
            break
        if indent == base:
            entries.append(line.strip())
        elif entries:
            entries[-1] += " " + line.strip()
    out: dict[str, str] = {}
    for entry in entries:
        head, sep, text = entry.partition(": ")
        if not sep and entry.endswith(":"):
            head, text = entry[:-1], ""
        names = [n.strip() for n in head.split(",")]
        if all(n.isidentifier() for n in names):
            for n in names:
                out[n] = text.strip()
    return out
