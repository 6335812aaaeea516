"""Service discovery: targets, resolver contract and the scheme registry.

:mod:`.base` is the contract (``Target``, ``ResolverState``, ``Resolver``,
``ResolverListener``), :mod:`.registry` the scheme registry built on it
(``register_resolver``, ``registered_schemes``, ``parse_target``, ``validate_target``,
``create_resolver``); one module per source (static, dns, file, etcd) registers its
schemes when imported, and this package imports them all, so the built-in schemes are
known as soon as anything from ``lbclient.resolver`` is.
"""

from . import base
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import (
    create_resolver,
    parse_target,
    register_resolver,
    registered_schemes,
    validate_target,
)

# TRANSITIONAL: the registry's functions used to live in .base, and the call path before
# its rewrite (channel.py, _channel_common.py, aio/__init__.py, aio/_channel.py) imports
# them from there. .base must not import .registry (that was the import cycle), so the
# package lends them to it until no module imports them from .base any more; then delete
# this loop. It runs before the resolver modules below are imported.
for _name in ("create_resolver", "parse_target", "register_resolver", "registered_schemes",
              "validate_target"):
    setattr(base, _name, globals()[_name])
del _name

from . import dns, etcd, file, static  # noqa: E402,F401 - registers the built-in schemes

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
