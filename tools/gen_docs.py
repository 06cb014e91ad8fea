"""Regenerate the docs' generated blocks from the code: ``python tools/gen_docs.py [--check]``.

Two blocks, each between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``:

- ``config`` in docs/workers-and-configuration.md: one row per field of
  ``voucherify_ingest.settings.Settings``, its variable (the field's ``env`` metadata) and its
  default read from the dataclass. The meaning column is prose: it is kept from the page, and a
  new variable gets ``TODO: describe`` (tests/unit/test_docs.py fails until someone does).
- ``modules`` in docs/architecture.md: one line per module of the three packages, from the first
  sentence of its docstring.

``--check`` changes nothing and exits 1 when a block is out of date.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PAGE = ROOT / "docs" / "workers-and-configuration.md"
ARCHITECTURE_PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("voucherify_ingest", "producers", "worker")
TODO = "TODO: describe"
_ROW = re.compile(r"^\| `(?P<env>[A-Z_]+)` \| (?P<default>.*?) \| (?P<meaning>.*) \|$")


def block(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the body of block ``name`` in ``text``."""
    begin, end = f"<!-- BEGIN generated: {name} -->\n", f"<!-- END generated: {name} -->"
    start = text.index(begin) + len(begin)
    return start, text.index(end, start)


def show_default(value: object) -> str:
    """A default as the environment would spell it."""
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if value in ("", ()):
        return "(empty)"
    return f"`{value}`"


def settings_defaults() -> dict[str, str]:
    """Environment variable -> its default as written in the docs, in declaration order."""
    sys.path.insert(0, str(ROOT))
    from voucherify_ingest.settings import Settings

    out = {}
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.metadata["env"]] = show_default(default)
    return out


def config_rows(page_text: str) -> dict[str, tuple[str, str]]:
    """The rows of the page's config block: variable -> (default, meaning)."""
    start, end = block(page_text, "config")
    rows = {}
    for line in page_text[start:end].splitlines():
        match = _ROW.match(line)
        if match:
            rows[match["env"]] = (match["default"], match["meaning"])
    return rows


def config_block(page_text: str) -> str:
    meanings = {env: meaning for env, (_, meaning) in config_rows(page_text).items()}
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default in settings_defaults().items():
        lines.append(f"| `{env}` | {default} | {meanings.get(env, TODO)} |")
    return "\n".join(lines) + "\n"


def first_sentence(docstring: str | None, path: Path) -> str:
    if not docstring:
        if path.name == "__main__.py":
            return f"`python -m {'.'.join(path.parent.relative_to(ROOT).parts)}`."
        return "(no docstring)"
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    return match[1] if match else paragraph


def module_paths() -> list[Path]:
    """Every module of the three packages, grouped by folder (a folder's own files first)."""
    found = (p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    return sorted(found, key=lambda p: (p.parent.relative_to(ROOT).parts, p.name))


def modules_block() -> str:
    lines, current = [], None
    for path in module_paths():
        rel = path.relative_to(ROOT)
        folder = rel.parent.as_posix() + "/"
        if folder != current:
            if current is not None:
                lines.append("")
            lines.append(f"**`{folder}`**")
            lines.append("")
            current = folder
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        lines.append(f"- `{rel.as_posix()}`: {first_sentence(doc, path)}")
    return "\n".join(lines) + "\n"


def refresh(path: Path, name: str, body: str, check: bool) -> bool:
    """Write ``body`` into block ``name`` of ``path``; return True when it was up to date."""
    text = path.read_text(encoding="utf-8")
    start, end = block(text, name)
    if text[start:end] == body:
        return True
    if not check:
        path.write_text(text[:start] + body + text[end:], encoding="utf-8")
    return False


def main(argv: list[str]) -> int:
    check = "--check" in argv
    fresh = [
        refresh(CONFIG_PAGE, "config", config_block(CONFIG_PAGE.read_text("utf-8")), check),
        refresh(ARCHITECTURE_PAGE, "modules", modules_block(), check),
    ]
    if check and not all(fresh):
        print("docs: generated blocks are out of date; run python tools/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
