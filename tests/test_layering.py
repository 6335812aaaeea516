"""The import layering of DESIGN.md holds: no import cycle anywhere inside lbclient, few
loose private modules at the package root, and the layer arrows point one way.

Every module of the package is parsed with ``ast`` (nothing is imported), and *every*
import counts: top-level ones, those inside functions and those under
``if TYPE_CHECKING:``, plus ``importlib.import_module``/``__import__`` calls (a literal
name; an f-string such as ``f"lbclient.policies.{mod}"`` inside ``for mod in NAMES``, with
``NAMES`` a literal tuple of strings, names each of them; an f-string otherwise unknown
counts as importing every module of the package its constant prefix names). Relative
imports are resolved, and ``from pkg import name`` imports the module ``pkg.name`` when
there is one, else ``pkg``.

Importing a submodule runs its package's ``__init__`` too; that implicit step is *not* an
edge (a package's ``__init__`` may import its own submodules). A module that explicitly
imports its package (``from . import run``) does get an edge to the ``__init__``, so a
package ``__init__`` that imports that module back is a cycle.
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "lbclient"

# The modules of the call path (the lead engineer's rewrite; see _in_call_path): cycles
# among these alone fail test_no_import_cycle_inside_lbclient only.
CALL_PATH_PREFIXES = ("lbclient.channel", "lbclient.aio", "lbclient.balancer",
                      "lbclient.health", "lbclient.policies", "lbclient.metrics._")
LEAVES = ("lbclient.endpoint", "lbclient.errors", "lbclient.connectivity",
          "lbclient._validate")
MAX_LOOSE_PRIVATE_MODULES = 4
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


# ----------------------------------------------------------------------- the import graph
@dataclass(frozen=True)
class Import:
    source: str        # the importing module, e.g. "lbclient.resolver.static"
    target: str        # the imported module (absolute), e.g. "lbclient.resolver.base"
    path: str          # the importing file, relative to the repository
    line: int
    where: str         # "" (module level), "in a function", "under TYPE_CHECKING", "dynamic"

    def describe(self) -> str:
        how = f" ({self.where})" if self.where else ""
        return f"{self.path}:{self.line} imports {self.target}{how}"


def find_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Module name -> file for every ``.py`` file of the package at ``root``."""
    out: dict[str, pathlib.Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _strings(node: ast.expr) -> list[str] | None:
    """The values of a literal tuple/list of strings, else None."""
    if isinstance(node, ast.Tuple | ast.List) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return None


def _is_import_call(call: ast.Call) -> bool:
    func = call.func
    return bool(call.args) and (
        (isinstance(func, ast.Name) and func.id in ("__import__", "import_module"))
        or (isinstance(func, ast.Attribute) and func.attr == "import_module"))


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, path: str,
                 modules: dict[str, pathlib.Path]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.path = path
        self.modules = modules
        self.where: list[str] = []
        self.found: list[Import] = []
        self.constants: dict[str, list[str]] = {}     # NAME = ("a", "b") at module level
        self.loop_values: list[dict[str, list[str]]] = []   # for x in NAME: ...

    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(
                    stmt.targets[0], ast.Name):
                values = _strings(stmt.value)
                if values is not None:
                    self.constants[stmt.targets[0].id] = values
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        values = _strings(node.iter) if not isinstance(node.iter, ast.Name) else \
            self.constants.get(node.iter.id)
        if isinstance(node.target, ast.Name) and values is not None:
            self.loop_values.append({node.target.id: values})
            self.generic_visit(node)
            self.loop_values.pop()
        else:
            self.generic_visit(node)

    def _bound(self, name: str) -> list[str] | None:
        for scope in reversed(self.loop_values):
            if name in scope:
                return scope[name]
        return None

    def _dynamic_targets(self, arg: ast.expr) -> list[str]:
        """The modules an ``import_module``/``__import__`` argument can name: a string;
        an f-string over loop variables that run through literal strings; otherwise, for
        an f-string with a constant dotted prefix, every module directly in that package."""
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
        if not isinstance(arg, ast.JoinedStr) or not arg.values:
            return []
        names = [""]
        for part in arg.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                names = [n + part.value for n in names]
                continue
            values = (self._bound(part.value.id) if isinstance(part, ast.FormattedValue)
                      and isinstance(part.value, ast.Name) and part.format_spec is None
                      and part.conversion == -1 else None)
            if values is None:
                break
            names = [n + v for n in names for v in values]
        else:
            return names
        head = arg.values[0]
        if not (isinstance(head, ast.Constant) and isinstance(head.value, str)
                and "." in head.value):
            return []
        package = head.value.rpartition(".")[0]
        return [m for m in self.modules if m.rpartition(".")[0] == package]

    def _add(self, target: str, node: ast.stmt | ast.expr, where: str | None = None) -> None:
        context = where if where is not None else (self.where[-1] if self.where else "")
        self.found.append(Import(self.module, target, self.path, node.lineno, context))

    def _in(self, where: str, nodes: Iterable[ast.AST]) -> None:
        self.where.append(where)
        for node in nodes:
            self.visit(node)
        self.where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._in("in a function", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 - ast.NodeVisitor's naming

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._in("under TYPE_CHECKING", node.body)
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            if node.level - 1 >= len(parts):
                raise AssertionError(f"{self.path}:{node.lineno}: relative import beyond "
                                     "the top-level package")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_import_call(node):
            for target in self._dynamic_targets(node.args[0]):
                self._add(target, node, "dynamic")
        self.generic_visit(node)


def collect_imports(root: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[Import]]:
    """Every module of the package at ``root`` and every import each one makes."""
    modules = find_modules(root)
    found: list[Import] = []
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py",
                               str(path.relative_to(root.parent)), modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found.extend(collector.found)
    return modules, found


def internal_graph(modules: dict[str, pathlib.Path], imports: Iterable[Import]
                   ) -> dict[str, dict[str, Import]]:
    """Module -> {imported module of the package -> the first such import}."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.source:
            graph[imp.source].setdefault(imp.target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The groups of mutually reachable modules (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def _shortest_cycle(graph: dict[str, dict[str, Import]], start: str,
                    allowed: set[str]) -> list[str]:
    """The shortest chain start -> ... -> start within ``allowed`` (start excluded)."""
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in allowed:
                continue
            if child == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return [*reversed(chain), start]
            if child not in prev:
                prev[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[tuple[list[str], list[list[str]]]]:
    """For each group of mutually importing modules: the group, and the shortest cycle
    through each of its modules (duplicates removed), each as ``[a, b, ..., a]``."""
    out = []
    for group in strongly_connected(graph):
        members = set(group)
        cycles: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for module in group:
            chain = _shortest_cycle(graph, module, members)
            ring = chain[:-1]
            first = ring.index(min(ring))
            canonical = tuple(ring[first:] + ring[:first])
            if canonical not in seen:
                seen.add(canonical)
                cycles.append([*canonical, canonical[0]])
        out.append((group, sorted(cycles)))
    return out


def format_cycles(graph: dict[str, dict[str, Import]],
                  found: list[tuple[list[str], list[list[str]]]]) -> str:
    lines = []
    for group, cycles in found:
        lines.append(f"{len(group)} modules import each other: {', '.join(group)}")
        for chain in cycles:
            lines.append("  cycle: " + " -> ".join(chain))
            for a, b in zip(chain, chain[1:], strict=False):
                lines.append(f"      {graph[a][b].describe()}")
    return "\n".join(lines)


MODULES, IMPORTS = collect_imports(PKG)
GRAPH = internal_graph(MODULES, IMPORTS)


def _in_call_path(module: str) -> bool:
    """The lead's call path: lbclient's private root modules and subpackages (``_core``,
    ``_sync``...; not ``_validate``, a leaf, nor the generated ``_proto``), the channel,
    ``aio``, ``balancer``, ``health``, ``policies`` and ``metrics``' private modules."""
    parts = module.split(".")
    private_root = (len(parts) > 1 and parts[1].startswith("_")
                    and parts[1] not in ("_validate", "_proto", "__main__"))
    return private_root or module.startswith(CALL_PATH_PREFIXES)


def _violations(sources: Iterable[str], rule: str, bad: Callable[[str], bool]) -> list[str]:
    wanted = set(sources)
    out = []
    for imp in IMPORTS:
        if imp.source in wanted and bad(imp.target):
            out.append(f"{imp.describe()}: {rule}")
    return sorted(set(out))


def _under(prefix: str) -> list[str]:
    return [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]


def _top(module: str) -> str:
    return module.split(".")[0]


# ------------------------------------------------------------------- the rules themselves
def test_no_import_cycle_inside_lbclient() -> None:
    found = find_cycles(GRAPH)
    if found:
        pytest.fail(f"{len(found)} group(s) of lbclient modules import each other (every "
                    "import counts, also in functions and under TYPE_CHECKING):\n"
                    + format_cycles(GRAPH, found), pytrace=False)


def test_no_import_cycle_outside_the_call_path() -> None:
    """Resolvers, config, simulate, testing, cli...: no cycle touches them (cycles among
    the call-path modules alone are reported by the test above)."""
    found = [(group, cycles) for group, cycles in find_cycles(GRAPH)
             if not all(_in_call_path(m) for m in group)]
    if found:
        pytest.fail(format_cycles(GRAPH, found), pytrace=False)


def test_at_most_four_loose_private_modules() -> None:
    loose = sorted(p.name for p in PKG.glob("_*.py") if not p.name.startswith("__"))
    if len(loose) > MAX_LOOSE_PRIVATE_MODULES:
        pytest.fail(f"{len(loose)} private modules sit directly in lbclient/ (at most "
                    f"{MAX_LOOSE_PRIVATE_MODULES}; group the others in a subpackage): "
                    + ", ".join(loose), pytrace=False)


def test_leaves_import_the_standard_library_only() -> None:
    bad = _violations(LEAVES, "a leaf imports the standard library and other leaves only",
                      lambda t: t not in LEAVES and _top(t) not in STDLIB)
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


def test_resolvers_import_only_leaves_and_resolver_modules() -> None:
    """Resolvers never import the balancer, the channel, policies, health, metrics or the
    call path (lbclient's private root modules); grpc (etcd) and dnspython are fine."""
    def forbidden(target: str) -> bool:
        if _top(target) != "lbclient":
            return False
        return not (target in LEAVES or target == "lbclient.resolver"
                    or target.startswith(("lbclient.resolver.", "lbclient._proto.")))

    bad = _violations(_under("lbclient.resolver"),
                      "a resolver imports leaves, lbclient.resolver.* and generated "
                      "protobuf modules only", forbidden)
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


def test_balancer_and_policies_make_no_calls_and_no_io() -> None:
    def forbidden(target: str) -> bool:
        if _top(target) in ("grpc", "grpc_health", "socket", "asyncio"):
            return True
        return target.startswith(("lbclient.channel", "lbclient.aio", "lbclient.resolver",
                                  "lbclient.cli", "lbclient.testing", "lbclient.simulate",
                                  "lbclient.metrics")) or (
            _in_call_path(target) and not target.startswith(
                ("lbclient.balancer", "lbclient.policies", "lbclient.health")))

    sources = _under("lbclient.balancer") + _under("lbclient.policies")
    bad = _violations(sources, "balancer and policies use no grpc, asyncio or sockets and "
                      "import no channel, call-path or resolver module", forbidden)
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


def test_policies_take_no_locks_and_start_no_threads() -> None:
    bad = _violations(_under("lbclient.policies"), "a policy imports no threading",
                      lambda t: _top(t) in ("threading", "_thread", "concurrent"))
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


# ------------------------------------------------------------ the graph builder itself
def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_builder_counts_every_kind_of_import(tmp_path: pathlib.Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "from .sub import a\n",
        "sub/__init__.py": "",
        "sub/a.py": "import json\nfrom . import b\nfrom ..c import thing\n",
        "sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from pkg.sub.a import X\n",
        "c.py": "def f():\n    from .sub import b, name\n"
                "import importlib\nimportlib.import_module(f'pkg.sub.{x}')\n",
        "d.py": "import importlib\nNAMES = ('a', 'nope')\n"
                "for n in NAMES:\n    importlib.import_module(f'pkg.sub.{n}')\n"
                "__import__('pkg.c')\n",
    })
    modules, imports = collect_imports(root)
    assert sorted(modules) == ["pkg", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.a", "pkg.sub.b"]
    got = {(i.source, i.target, i.where) for i in imports}
    assert got == {
        ("pkg", "pkg.sub.a", ""),
        ("pkg.sub.a", "json", ""), ("pkg.sub.a", "pkg.sub.b", ""), ("pkg.sub.a", "pkg.c", ""),
        ("pkg.sub.b", "typing", ""), ("pkg.sub.b", "pkg.sub.a", "under TYPE_CHECKING"),
        ("pkg.c", "pkg.sub.b", "in a function"), ("pkg.c", "pkg.sub", "in a function"),
        ("pkg.c", "importlib", ""),
        ("pkg.c", "pkg.sub.a", "dynamic"), ("pkg.c", "pkg.sub.b", "dynamic"),
        ("pkg.d", "importlib", ""), ("pkg.d", "pkg.sub.a", "dynamic"),
        ("pkg.d", "pkg.sub.nope", "dynamic"), ("pkg.d", "pkg.c", "dynamic"),
    }
    graph = internal_graph(modules, imports)
    found = find_cycles(graph)
    assert [group for group, _ in found] == [["pkg.c", "pkg.sub.a", "pkg.sub.b"]]
    assert found[0][1] == [["pkg.c", "pkg.sub.a", "pkg.c"],
                           ["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]
    text = format_cycles(graph, found)
    assert "cycle: pkg.sub.a -> pkg.sub.b -> pkg.sub.a" in text
    assert "pkg/sub/b.py:3 imports pkg.sub.a (under TYPE_CHECKING)" in text


@pytest.mark.parametrize(("files", "cyclic"), [
    # a package __init__ importing its own submodules is fine
    ({"__init__.py": "from . import a\n", "a.py": "from .b import x\n", "b.py": ""}, []),
    # ...but a submodule importing the package back is a cycle
    ({"__init__.py": "from .a import x\n", "a.py": "from . import run\n"}, ["pkg", "pkg.a"]),
    # importing a sibling through the package names the sibling, not the __init__
    ({"__init__.py": "from .a import x\n", "a.py": "from . import b\n", "b.py": ""}, []),
    # a self-import is no cycle
    ({"__init__.py": "", "a.py": "import pkg.a\n"}, []),
])
def test_builder_package_rules(tmp_path: pathlib.Path, files: dict[str, str],
                               cyclic: list[str]) -> None:
    modules, imports = collect_imports(_package(tmp_path, files))
    found = find_cycles(internal_graph(modules, imports))
    assert [group for group, _ in found] == ([cyclic] if cyclic else [])


def test_the_real_package_is_parsed() -> None:
    """The rules above look at real modules and real edges (a broken parser would make
    every rule pass vacuously)."""
    assert {"lbclient", "lbclient.resolver.static", "lbclient.simulate.engine",
            "lbclient.config", "lbclient.policies.round_robin"} <= set(MODULES)
    assert "lbclient.endpoint" in GRAPH["lbclient.resolver.static"]
    assert "lbclient.balancer.balancer" in GRAPH["lbclient.simulate.engine"]
    assert len(IMPORTS) > 500


@pytest.mark.parametrize(("module", "call_path"), [
    ("lbclient._calls", True), ("lbclient._core.transport", True), ("lbclient._sync", True),
    ("lbclient.channel", True), ("lbclient.aio._channel", True), ("lbclient.aio", True),
    ("lbclient.balancer.policy", True), ("lbclient.metrics._core", True),
    ("lbclient._validate", False), ("lbclient._proto.orca_load_report_pb2", False),
    ("lbclient.metrics.prometheus", False), ("lbclient.resolver.base", False),
    ("lbclient.simulate.engine", False), ("lbclient.__main__", False), ("lbclient", False),
])
def test_call_path_membership(module: str, call_path: bool) -> None:
    assert _in_call_path(module) is call_path
