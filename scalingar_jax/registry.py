"""What a data file names by kind, looked up in tables kept in code: a file never names code.

Three tables, each `name -> object`:

  "loader"      a bundle's `"kind"` (bundle.json) -> its model family's loader,
                `loader(bundle, **options) -> Pipeline`
  "config"      a saved model's `"kind"` (config.json) -> its config dataclass
  "preprocess"  a t2i bundle's option `"preprocess"` -> a text function str -> str

The built-in entries are written below as (module, attribute) pairs and imported on first use,
so `bundle`, `pipeline` and `checkpoint` never import a model family when they are imported. A
family outside this package adds its entries in code, never in a file: `register_loader(kind,
fn)` (likewise `register_config`, `register_preprocess`) or a package entry point in the group
`scalingar_jax.bundle_loaders` / `scalingar_jax.config_kinds` / `scalingar_jax.preprocess` (its
name the kind, its value `module:attribute` in that installed package's metadata). A name that
is in no table is a ValueError listing the known names.

Files written before these tables existed name their code: bundle.json a `"loader"`, config.json
a `"config_class"`, a t2i bundle's `"preprocess"` option a `"module:function"`. Exactly the values
this package itself wrote are still read (`is_builtin_reference`: the built-in entry of the kind
the file names, which is then used; `legacy_name`: the preprocessing such a reference meant);
any other reference is refused. Files written now hold names only.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Callable

__all__ = ["BUILTIN", "register_loader", "register_config", "register_preprocess", "lookup", "names",
           "is_builtin_reference", "legacy_name"]

BUILTIN: dict[str, dict[str, tuple[str, str]]] = {
    "loader": {
        "shapes-world": ("scalingar_jax.world.pipeline", "pipeline_from_bundle"),
        "llamagen-t2i": ("scalingar_jax.llamagen", "pipeline_from_bundle"),
        "llamagen-c2i": ("scalingar_jax.llamagen", "pipeline_from_bundle"),
    },
    "config": {
        "gpt": ("scalingar_jax.config", "GPTConfig"),
        "vq": ("scalingar_jax.vq", "VQConfig"),
        "t5": ("scalingar_jax.t5", "T5Config"),
        "text": ("scalingar_jax.world.text_encoder", "TextEncoderConfig"),
        "reward": ("scalingar_jax.world.reward", "RewardConfig"),
    },
    "preprocess": {
        "llamagen": ("scalingar_jax.caption", "llamagen_preprocess"),  # LlamaGen's default: clean_caption twice
        "lowercase": ("scalingar_jax.caption", "lowercase"),  # LlamaGen's use_text_preprocessing=False
    },
}

# A reference earlier versions wrote for a preprocessing that is not its built-in entry's own.
_LEGACY_ALIASES = {"preprocess": {"scalingar_jax.text_features:lowercase_prompt": "lowercase"}}

_GROUPS = {"loader": "scalingar_jax.bundle_loaders", "config": "scalingar_jax.config_kinds",
           "preprocess": "scalingar_jax.preprocess"}
_WHAT = {"loader": "bundle kind", "config": "model kind", "preprocess": "preprocessing"}
_REGISTERED: dict[str, dict[str, Any]] = {table: {} for table in BUILTIN}  # filled by register_* calls only


def _register(table: str, name: str, obj: Any) -> None:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a {_WHAT[table]} name must be a non-empty string without ':', got {name!r}")
    if name in BUILTIN[table]:
        raise ValueError(f"{_WHAT[table]} {name!r} is built in and cannot be replaced")
    held = _REGISTERED[table].get(name)
    if held is not None and held is not obj:
        raise ValueError(f"{_WHAT[table]} {name!r} is already registered to {held!r}")
    _REGISTERED[table][name] = obj


def register_loader(kind: str, loader: Callable) -> None:
    """Makes bundles of `kind` load with `loader(bundle, **options) -> Pipeline` (a model family
    outside this package). A built-in kind or one registered to another function is refused."""
    if not callable(loader):
        raise TypeError(f"the loader of kind {kind!r} must be callable, got {type(loader).__name__}")
    _register("loader", kind, loader)


def register_config(kind: str, cls: type) -> None:
    """Makes saved models of `kind` read their config.json into the dataclass `cls`."""
    import dataclasses

    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"the config of model kind {kind!r} must be a dataclass, got {cls!r}")
    _register("config", kind, cls)


def register_preprocess(name: str, fn: Callable[[str], str]) -> None:
    """Makes the bundle option `"preprocess": name` apply `fn` (str -> str) to every prompt."""
    if not callable(fn):
        raise TypeError(f"preprocessing {name!r} must be callable, got {type(fn).__name__}")
    _register("preprocess", name, fn)


def _entry_points(table: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=_GROUPS[table])}


def names(table: str) -> list[str]:
    """Every name `table` knows: built in, registered, installed entry points (sorted)."""
    return sorted(set(BUILTIN[table]) | set(_REGISTERED[table]) | set(_entry_points(table)))


def lookup(table: str, name: Any, *, where: str) -> Any:
    """The object `name` stands for in `table` ("loader", "config", "preprocess"); ValueError
    naming `where` (the file and key) and the known names when there is none."""
    if isinstance(name, str) and name in BUILTIN[table]:
        module, attr = BUILTIN[table][name]
        return getattr(importlib.import_module(module), attr)
    if isinstance(name, str) and name in _REGISTERED[table]:
        return _REGISTERED[table][name]
    eps = _entry_points(table) if isinstance(name, str) else {}
    if name in eps:
        return eps[name].load()
    raise ValueError(f"{where}: unknown {_WHAT[table]} {str(name)[:80]!r}; known: {', '.join(names(table))}")


def is_builtin_reference(table: str, name: str, value: Any) -> bool:
    """True when `value` is the "module:attribute" of the built-in entry `name` of `table` (what
    earlier versions wrote next to the kind, e.g. bundle.json's "loader" for "shapes-world")."""
    entry = BUILTIN[table].get(name)
    return entry is not None and value == f"{entry[0]}:{entry[1]}"


def legacy_name(table: str, value: Any, *, where: str) -> str:
    """The built-in name a "module:attribute" reference of an earlier version stands for; any
    other reference is a ValueError naming `where` (a file never names code)."""
    known = {f"{m}:{a}": name for name, (m, a) in BUILTIN[table].items()}
    known.update(_LEGACY_ALIASES.get(table, {}))
    if isinstance(value, str) and value in known:
        return known[value]
    raise ValueError(f"{where}: {str(value)[:80]!r} names code, which a data file may not do; give a "
                     f"{_WHAT[table]} name instead ({', '.join(names(table))})")
