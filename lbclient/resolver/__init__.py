"""Service discovery: targets, resolver contract and the scheme registry.

:mod:`.base` is the contract (``Target``, ``ResolverState``, ``Resolver``,
``ResolverListener``), :mod:`.registry` the scheme registry built on it
(``register_resolver``, ``registered_schemes``, ``parse_target``, ``validate_target``,
``create_resolver``); one module per source (static, dns, file, etcd) registers its
schemes when imported, and this package imports them all, so the built-in schemes are
known as soon as anything from ``lbclient.resolver`` is.
"""

from . import dns, etcd, file, static  # noqa: F401 - registers the built-in schemes
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import (
    create_resolver,
    parse_target,
    register_resolver,
    registered_schemes,
    validate_target,
)

__all__ = [
    "Resolver",
    "ResolverListener",
    "ResolverState",
    "Target",
    "create_resolver",
    "parse_target",
    "register_resolver",
    "registered_schemes",
    "validate_target",
]
