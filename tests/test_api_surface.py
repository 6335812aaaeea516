"""The public API is curated (``__all__``); the import layering is in test_layering.py."""

from __future__ import annotations

import pathlib

import lbclient
import lbclient.resolver

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


def test_resolver_package_exports_the_contract_and_the_registry() -> None:
    """What channels and users import from ``lbclient.resolver``."""
    from lbclient.resolver import base, registry

    assert lbclient.resolver.__all__ == sorted(lbclient.resolver.__all__)
    assert set(lbclient.resolver.__all__) == {
        "Resolver", "ResolverListener", "ResolverState", "Target", "create_resolver",
        "parse_target", "register_resolver", "registered_schemes", "validate_target"}
    for name in ("Resolver", "ResolverListener", "ResolverState", "Target"):
        assert getattr(lbclient.resolver, name) is getattr(base, name)
    for name in ("create_resolver", "parse_target", "register_resolver",
                 "registered_schemes", "validate_target"):
        assert getattr(lbclient.resolver, name) is getattr(registry, name)
    assert lbclient.register_resolver is registry.register_resolver
    # the built-in schemes are registered as soon as the package is imported
    assert {"dns", "etcd", "file", "ipv4", "ipv6", "static"} <= set(
        lbclient.resolver.registered_schemes())
