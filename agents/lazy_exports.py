"""Public names of a package imported from their modules on first use (PEP 562), so that
importing the package, which every import of one of its modules runs, stays light."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for `package`, whose public names are `exports` ({name: module})."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        vars(importlib.import_module(package))[name] = value     # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))
    return __getattr__, __dir__
