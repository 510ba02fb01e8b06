"""The code's layers hold: pure logic knows no reactor and no glue, and no import circles.

DESIGN.md §3: the pure core stays flat in ``dlba/`` (and ``dlba/http/``); each subsystem's
Twisted glue has its own package; arrows run from the glue to the logic, never back, and
no two modules import each other.  Imports are read from the source (``ast``), so an
import inside a function or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "dlba"

# The pure core: tables, hashing, policies, the loading controller, HTTP rules, and the
# decisions of dlba-ctl's probe and log statistics.
PURE = frozenset(
    {
        "dlba",
        "dlba.arpframes",
        "dlba.certs",
        "dlba.clienttable",
        "dlba.config",
        "dlba.election",
        "dlba.errors",
        "dlba.files",
        "dlba.frames",
        "dlba.hashing",
        "dlba.history",
        "dlba.jhash",
        "dlba.kernelpath",
        "dlba.interfaces",
        "dlba.labplan",
        "dlba.loading",
        "dlba.logstats",
        "dlba.policy",
        "dlba.probe",
        "dlba.reload",
        "dlba.routing",
        "dlba.report",
        "dlba.sessions",
        "dlba.sweep",
        "dlba.tables",
        "dlba.ticketkeys",
    }
)
PURE_PACKAGES = ("dlba.http",)

# Glue and faces: pure modules never import these.
GLUE_PREFIXES = (
    "dlba.proxy",
    "dlba.array",
    "dlba.packet",
    "dlba.admin",
    "dlba.lab",
    "dlba.node",
    "dlba.tap",
    "dlba.tls",
    "dlba.libssl",
    "dlba.demo",
    "dlba.logs",
    "dlba.ctl",
    "dlba.client",
)

# What pure code may take from Twisted: interfaces for type hints (IReactorTime), no more.
ALLOWED_TWISTED = ("twisted.internet.interfaces",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, by absolute name."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # "from dlba.http import request" imports the module dlba.http.request
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """dlba module -> the dlba modules it imports (and the outside modules, as they are)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        raw = imports_of(path, name)
        graph[name] = {m for m in raw if not m.startswith("dlba") or m in paths}
    return graph


def is_pure(name: str) -> bool:
    return name in PURE or any(name == p or name.startswith(p + ".") for p in PURE_PACKAGES)


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Pure modules that import the reactor, other Twisted glue, or dlba's glue."""
    out = []
    for name, imported in sorted(graph.items()):
        if not is_pure(name):
            continue
        for module in sorted(imported):
            if module.startswith("twisted") and not module.startswith(ALLOWED_TWISTED):
                out.append(f"{name} imports {module}")
            elif any(module == g or module.startswith(g + ".") for g in GLUE_PREFIXES):
                out.append(f"{name} (pure) imports glue {module}")
    return out


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles among dlba's modules (Tarjan's strongly connected components)."""
    nodes = [n for n in graph if n.startswith("dlba")]
    edges = {n: [m for m in graph[n] if m in graph and m != n] for n in nodes}
    # A package's __init__ importing its own modules is how packages work, not a circle.
    for n in nodes:
        edges[n] = [m for m in edges[n] if not m.startswith(n + ".")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return found


class LayeringTests(SynchronousTestCase):
    def test_the_pure_core_imports_no_reactor_and_no_glue(self) -> None:
        self.assertEqual(layer_violations(import_graph()), [])

    def test_no_import_circles(self) -> None:
        self.assertEqual(cycles(import_graph()), [])

    def test_the_glue_packages_exist_where_design_says(self) -> None:
        graph = import_graph()
        for name in ("dlba.proxy.front", "dlba.proxy.exchange", "dlba.proxy.upstream"):
            self.assertIn(name, graph)
        self.assertIn("dlba.array.status", graph)
        self.assertIn("dlba.http.request", graph)

    def test_the_daemon_never_imports_the_lab(self) -> None:
        graph = import_graph()
        for name, imported in graph.items():
            if not name.startswith("dlba.lab"):
                self.assertFalse(
                    [m for m in imported if m.startswith("dlba.lab")], f"{name} imports dlba.lab"
                )


class CheckerTests(SynchronousTestCase):
    """The checks catch what they are for (a test that could not fail proves nothing)."""

    def test_reactor_in_pure_code_is_caught(self) -> None:
        graph = {"dlba.tables": {"twisted.internet.reactor", "twisted.internet.interfaces"}}
        self.assertEqual(layer_violations(graph), ["dlba.tables imports twisted.internet.reactor"])

    def test_glue_in_pure_code_is_caught(self) -> None:
        graph = {"dlba.http.request": {"dlba.proxy.front"}, "dlba.proxy.front": set()}
        self.assertEqual(
            layer_violations(graph), ["dlba.http.request (pure) imports glue dlba.proxy.front"]
        )

    def test_a_prefix_is_not_a_package(self) -> None:
        # dlba.clienttable is pure; only dlba.client (and below) is glue.
        self.assertEqual(layer_violations({"dlba.report": {"dlba.clienttable"}}), [])
        self.assertEqual(
            layer_violations({"dlba.report": {"dlba.client"}}),
            ["dlba.report (pure) imports glue dlba.client"],
        )

    def test_glue_may_use_twisted(self) -> None:
        self.assertEqual(layer_violations({"dlba.proxy.front": {"twisted.internet.reactor"}}), [])

    def test_circle_is_caught(self) -> None:
        graph = {
            "dlba.a": {"dlba.b"},
            "dlba.b": {"dlba.c"},
            "dlba.c": {"dlba.a"},
            "dlba.d": {"dlba.a"},
        }
        self.assertEqual(cycles(graph), [["dlba.a", "dlba.b", "dlba.c"]])

    def test_relative_imports_resolve(self) -> None:
        # Not self.mktemp(): under pytest that lands in the working tree, not _trial_temp.
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        source = tmp / "front.py"
        source.write_text("from .upstream import X\nfrom ..http import request\n")
        found = imports_of(source, "dlba.proxy.front")
        self.assertIn("dlba.proxy.upstream", found)
        self.assertIn("dlba.http.request", found)
