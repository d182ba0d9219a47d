"""The ``t2lesion`` package imports without a cycle: its import graph, read from the source
with ``ast`` (module-level and function-level imports alike), is acyclic.

A function-level import hides a cycle from Python until the function runs; here it counts
like any other. Edges (only to ``t2lesion`` modules; nothing is imported to build the graph):

* ``import a.b.c``: to ``a.b.c``; ``from a.b import c``: to the submodule ``a.b.c`` when there
  is one, else to ``a.b`` (its ``__init__`` must provide ``c``); ``from a.b import *``: to
  ``a.b``. Relative imports are resolved against the importing module's package.
* The packages that Python initialises on the way (``a``, ``a.b`` for ``import a.b.c``), except
  those that enclose the importing module: they are already initialised, or being
  initialised, before it runs. So a submodule that imports a sibling through its package
  (``from t2lesion.evaluation import table2``) depends on the sibling, not on the package's
  ``__init__``; one that takes a name defined in its package's ``__init__`` depends on that
  ``__init__``, a real cycle if that ``__init__`` imports the submodule.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

from tests.conftest import REPO


def package_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of the package in folder ``root``: dotted name -> (file, is a package).

    The walk of :func:`pkgutil.walk_packages` over the source tree, without its import of
    each subpackage (which would run their ``__init__``)."""
    modules = {package: (root / "__init__.py", True)}
    for info in pkgutil.iter_modules([str(root)]):
        name = f"{package}.{info.name}"
        if info.ispkg:
            modules.update(package_modules(root / info.name, name))
        else:
            modules[name] = (root / f"{info.name}.py", False)
    return modules


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """The package's modules that module ``name`` (file ``path``) imports, anywhere in its body."""
    own_package = name if is_package else name.rpartition(".")[0]
    enclosing = {*_parents(name), name}
    targets: set[str] = set()

    def add(module: str) -> None:
        for parent in _parents(module):
            if parent in modules and parent not in enclosing:
                targets.add(parent)
        if module in modules:
            targets.add(module)

    def deepest(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(deepest(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = own_package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if alias.name != "*" and sub in modules else deepest(base))
    targets.discard(name)
    return targets


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imports_of(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), each as
    ``[m0, m1, ..., m0]`` following import edges, starting at the component's first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:
        start = min(comp)
        # Shortest path back to start inside the component (breadth first).
        prev: dict[str, str] = {}
        frontier = [start]
        while start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(prev[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


def test_t2lesion_has_no_import_cycle():
    graph = import_graph(REPO / "t2lesion", "t2lesion")
    # The walk and the parser see what they must: a top-level, a function-level and a
    # cross-package import of the evaluation stage.
    assert "t2lesion.evaluation.table2" in graph["t2lesion.evaluation.files"]
    assert "t2lesion.plots.segmentation_figs" in graph["t2lesion.evaluation.files"]  # inside run_dataset
    assert "t2lesion.evaluation.table2" in graph["t2lesion.tracking"]  # inside agreement_table
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in t2lesion:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_graph_resolves_relative_function_level_and_submodule_imports(tmp_path):
    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\nfrom .sub import c\n",
        "pkg/a.py": "import os\nfrom . import b\n\ndef f():\n    from .sub.c import h\n    return h\n",
        "pkg/b.py": "VALUE = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "def h():\n    import pkg.b\n    from .. import b\n    from ..b import VALUE\n",
        "pkg/sub/d.py": "from pkg.sub import *\nimport pkg.sub.c\n",
    })
    graph = import_graph(pkg, "pkg")
    assert graph == {
        "pkg": {"pkg.a", "pkg.sub", "pkg.sub.c"},  # pkg.sub: initialised on the way to pkg.sub.c
        "pkg.a": {"pkg.b", "pkg.sub", "pkg.sub.c"},
        "pkg.b": set(),
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.b"},
        "pkg.sub.d": {"pkg.sub", "pkg.sub.c"},  # the star import takes pkg.sub's __init__ names
    }
    assert find_cycles(graph) == []
    # A function-level import closes a cycle: pkg.a -> pkg.sub.c -> pkg.a.
    (pkg / "sub" / "c.py").write_text("def h():\n    from ..a import f\n    return f\n")
    assert find_cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.sub.c", "pkg.a"]]


def test_a_name_taken_from_the_parent_package_that_imports_the_module_back_is_a_cycle(tmp_path):
    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\nVALUE = 1\n",
        "pkg/a.py": "from pkg import b\n\ndef f():\n    return b.g()\n",
        "pkg/b.py": "def g():\n    from pkg import VALUE\n    return VALUE\n",
    })
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg"}}
    assert find_cycles(graph) == [["pkg", "pkg.a", "pkg.b", "pkg"]]
    # A submodule imported through the package is an edge to the submodule, not to the
    # package's __init__ (which imports pkg.a): pkg.b takes nothing from pkg's __init__.
    (pkg / "b.py").write_text("def g():\n    from pkg import c\n    return c.VALUE\n")
    (pkg / "c.py").write_text("VALUE = 1\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.c"} and find_cycles(graph) == []


def test_evaluation_imports_go_forward_only():
    """maths <- aggregation <- figures <- file-level entry points; nothing imports back."""
    graph = import_graph(REPO / "t2lesion", "t2lesion")
    ev = "t2lesion.evaluation"
    assert graph[f"{ev}.segmentation"] == {"t2lesion.errors"}
    assert graph[f"{ev}.table2"] == {f"{ev}.segmentation", "t2lesion.formatting"}
    assert graph["t2lesion.plots.segmentation_figs"] == {ev, f"{ev}.table2", "t2lesion.io", "t2lesion.formatting"}
    assert graph[f"{ev}.files"] == {"t2lesion.io", "t2lesion.errors", f"{ev}.segmentation", f"{ev}.table2",
                                    "t2lesion.plots", "t2lesion.plots.segmentation_figs"}
    assert graph[ev] == set()
    assert not [m for m, targets in graph.items() if f"{ev}.files" in targets and m != "t2lesion.tracking"]


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b", "a"], ["c", "d", "c"]]),
])
def test_find_cycles(graph, expected):
    assert find_cycles(graph) == expected
