"""Names of a package imported from their submodules on first use (PEP 562), so importing the package is cheap."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping


def lazy_names(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `exports` maps each public name to the submodule that
    defines it; a name is imported when first asked for, then kept in the package's namespace."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    return __getattr__
