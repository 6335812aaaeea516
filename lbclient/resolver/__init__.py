"""Service discovery: targets, resolver contract and the scheme registry."""

from .base import (
    Resolver,
    ResolverListener,
    ResolverState,
    Target,
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
