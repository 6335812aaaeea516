"""The public API is curated, and the layering rules of DESIGN.md hold."""

from __future__ import annotations

import ast
import pathlib

import lbclient

PKG = pathlib.Path(lbclient.__file__).parent


def test_all_is_sorted_and_importable() -> None:
    assert lbclient.__all__ == sorted(lbclient.__all__)
    for name in lbclient.__all__:
        assert hasattr(lbclient, name), name
    for name in ("insecure_channel", "secure_channel", "InvalidTargetError",
                 "ServiceConfigError", "Endpoint", "ResolverState", "register_policy",
                 "register_resolver"):
        assert name in lbclient.__all__
    assert issubclass(lbclient.InvalidTargetError, ValueError)
    assert issubclass(lbclient.ServiceConfigError, ValueError)
    assert (PKG / "py.typed").exists()


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.add(mod)
                if not node.module:
                    out.update(f"{mod}.{a.name}" for a in node.names)
            elif node.module:
                out.add(node.module)
    return out


def _files(sub: str) -> list[pathlib.Path]:
    p = PKG / sub
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


LEAVES = ("endpoint.py", "errors.py", "connectivity.py", "_validate.py")


def test_leaves_import_stdlib_only() -> None:
    for leaf in LEAVES:
        for mod in _imports(PKG / leaf):
            top = mod.split(".")[0]
            assert top not in ("grpc", "grpc_health", "google", "tenacity"), (leaf, mod)
            if top == "lbclient":
                assert mod.split(".")[1] + ".py" in LEAVES, (leaf, mod)


def test_resolvers_never_import_balancer_or_channel() -> None:
    for path in _files("resolver"):
        for mod in _imports(path):
            assert not mod.startswith(("lbclient.balancer", "lbclient.channel",
                                       "lbclient.policies", "lbclient.health",
                                       "lbclient._calls", "lbclient._invoke")), (path, mod)


def test_balancer_and_policies_have_no_grpc_threads_or_io() -> None:
    for sub in ("balancer", "policies"):
        for path in _files(sub):
            for mod in _imports(path):
                top = mod.split(".")[0]
                assert top not in ("grpc", "grpc_health", "socket", "asyncio"), (path, mod)
                assert not mod.startswith(("lbclient.channel", "lbclient._calls",
                                           "lbclient._invoke", "lbclient._subchannel",
                                           "lbclient.resolver", "lbclient.aio")), (path, mod)
    for path in _files("policies"):
        for mod in _imports(path):
            assert mod.split(".")[0] != "threading", (path, mod)
