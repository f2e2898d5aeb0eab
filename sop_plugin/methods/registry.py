"""The method registry: name -> method class, filled by the implementations themselves.

This module imports no implementation: each one registers itself with :func:`register_method`
(a :class:`~sop_plugin.registry.Registry`), and a second class under a taken name is an error.
"""

from __future__ import annotations

from collections.abc import Callable

from sop_plugin.registry import Registry

METHODS: Registry[type] = Registry("method")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a method implementation under ``name`` (unique)."""
    return METHODS.register(name)


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return METHODS.names()


def method_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    return METHODS.get(name)
