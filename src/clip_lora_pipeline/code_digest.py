"""The code part of a node's fingerprint: the function's source, the same-module
functions it calls, and the source of every project module its module imports,
transitively (``node_code``). Changes in installed libraries are not seen."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import sys
import types
from typing import Any

PACKAGE = "clip_lora_pipeline"


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _module_source(name: str) -> str:
    module = sys.modules.get(name) or importlib.import_module(name)
    try:
        return inspect.getsource(module)
    except (OSError, TypeError):
        return ""


@functools.cache
def _module_digest(name: str) -> str:
    return digest(_module_source(name))


@functools.cache
def _imported_modules(name: str) -> frozenset[str]:
    """``name`` and the project modules it imports, transitively."""
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        module = sys.modules.get(current) or importlib.import_module(current)
        for value in vars(module).values():
            dep = value.__name__ if isinstance(value, types.ModuleType) \
                else getattr(value, "__module__", None)
            # A package holds every submodule imported anywhere as an attribute: only
            # what a module imports itself is followed.
            child = dep is not None and dep.startswith(current + ".") \
                and hasattr(module, "__path__")
            if isinstance(dep, str) and dep.startswith(PACKAGE) and dep in sys.modules \
                    and not child:
                stack.append(dep)
    return frozenset(seen)


def _own_functions(func: types.FunctionType) -> list[types.FunctionType]:
    """``func`` and the functions of its module it calls, transitively."""
    found, stack = {}, [func]
    while stack:
        current = stack.pop()
        if current.__qualname__ in found:
            continue
        found[current.__qualname__] = current
        for name in current.__code__.co_names:
            value = current.__globals__.get(name)
            if isinstance(value, types.FunctionType) and value.__module__ == func.__module__:
                stack.append(value)
    return [found[k] for k in sorted(found)]


@functools.cache
def _code_of(func: types.FunctionType) -> str:
    own = [inspect.getsource(f) for f in _own_functions(func)]
    imported = sorted(_imported_modules(func.__module__) - {func.__module__})
    return digest(own, [(name, _module_digest(name)) for name in imported])


def node_code(func: Any) -> tuple[str, Any]:
    """(the code's fingerprint, the arguments bound by ``functools.partial``)."""
    bound: list[Any] = []
    while isinstance(func, functools.partial):
        bound.append([list(func.args), func.keywords])
        func = func.func
    if isinstance(func, types.FunctionType):
        return _code_of(func), bound
    return digest(_module_source(type(func).__module__), repr(func)), bound
