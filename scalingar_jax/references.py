"""Code named in data files: `"package.module:Name"` references, resolved by import.

A model checkpoint names its config class (`config.json`: `"config_class"`) and a model bundle
names its loader (`bundle.json`: `"loader"`) this way, so that low-level modules (`checkpoint`,
`pipeline`) never import the modules that define those classes and loaders (the shapes world,
later other model families): the data says where the code is.

By default only modules inside this package may be named: a folder downloaded from elsewhere
can then make Python import nothing outside `scalingar_jax`.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

PACKAGE = "scalingar_jax"
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def reference_of(obj) -> str:
    """The `"module:qualname"` reference of a class or function (what `resolve` imports back)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def resolve(ref: str, *, what: str, package: str | None = PACKAGE) -> Any:
    """Imports `ref` = `"package.module:Name"` (`Name` may be dotted) and returns the object.

    what: a description for error messages (e.g. "the loader named in /x/bundle.json").
    package: the top-level package the module must live in (None: any importable module).
    Raises ValueError (malformed reference, module outside `package`, module or name not
    found), naming `what` and the reference.
    """
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ValueError(f"{what}: {ref!r} is not a 'package.module:name' reference")
    module_name, _, attr = ref.partition(":")
    if package is not None and module_name != package and not module_name.startswith(package + "."):
        raise ValueError(f"{what}: {ref!r} names a module outside the {package} package, which is not allowed")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import module {module_name!r} of {ref!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}: module {module_name!r} has no {attr!r} (from {ref!r})")
        obj = getattr(obj, part)
    return obj
