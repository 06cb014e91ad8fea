"""The file tree is the architecture: arrows point one way, and no module imports in a cycle.

- ``voucherify_ingest`` (the kernel) imports neither ``producers`` nor ``worker``;
- ``producers`` and ``worker`` never import each other;
- nothing imports ``voucherify_ingest.cli`` or ``voucherify_ingest.standin`` except themselves
  (and the tests), since they sit above everything;
- no cycle between modules, counting imports inside functions too.

The graph is read from the source with ``ast``, so an import hidden in a function counts;
imports under ``if TYPE_CHECKING:`` (annotations only) do not.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("voucherify_ingest", "producers", "worker")
TOP = ("voucherify_ingest.cli", "voucherify_ingest.standin")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports (``from a.b import c`` counts ``a.b.c`` if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_top(name: str) -> bool:
    return any(_in(name, top) for top in TOP)


def test_the_graph_is_read():
    graph = _graph()
    assert "voucherify_ingest.settings" in graph["worker.delivery"]
    assert "producers.producer" in graph["producers.serve.app"]
    assert len(graph) > 60


@pytest.mark.parametrize(("lower", "forbidden"), [
    ("voucherify_ingest", ("producers", "worker")),
    ("producers", ("worker",)),
    ("worker", ("producers",)),
])
def test_arrows_point_one_way(lower, forbidden):
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _in(name, lower) and not _is_top(name)
        for target in targets
        if any(_in(target, f) for f in forbidden)
    )
    assert wrong == []


def test_nothing_below_imports_the_cli_or_the_standin():
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if not _is_top(name)
        for target in targets
        if _is_top(target)
    )
    assert wrong == []


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of meaning: leave out
    # edges from a package to its own submodules
    edges = {name: {t for t in targets if not _in(t, name)} for name, targets in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_producers_import_next_to_a_users_own_worker_py(tmp_path):
    """A web app folder with its own ``worker.py`` (common in Celery and RQ apps)."""
    (tmp_path / "worker.py").write_text("RAISE = 'this is the app own worker module'\n")
    script = textwrap.dedent("""
        import worker
        from producers import enqueue_event, Producer
        assert worker.RAISE.startswith('this is'), worker
        print('ok', enqueue_event.__module__)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok producers.producer")


def test_cli_help_imports_only_what_it_needs():
    """``--help`` and ``--version`` import no command module (celery, redis, requests)."""
    script = ("import sys; from voucherify_ingest.cli import main; "
              "heavy = [m for m in ('celery', 'redis', 'requests', 'marshmallow', 'kombu') "
              "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
