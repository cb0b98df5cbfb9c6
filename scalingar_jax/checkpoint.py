"""Model checkpoints: an orbax parameter tree plus the model config as JSON, written atomically.

Layout of a model directory:
  config.json   {"kind": "gpt" | "vq" | "t5" | "text" | "reward" | ..., "config": {...dataclass
                fields...}, "meta": {...}}
  params/       orbax StandardCheckpointer tree

"kind" names the model; its config dataclass is looked up in a table in code
(`scalingar_jax.registry`, table "config"; a model family outside the package registers its
kinds there), so the file names no code and this module imports no model family. Files of
earlier versions also record `"config_class": "module:Class"`: it is read only when it is
exactly the built-in class of the file's kind (and refused otherwise).

`save_model` writes into a temporary sibling directory and renames it into place only when
complete, so a crash or a bad input never leaves a half-written checkpoint behind.

Memory: orbax's `StandardCheckpointer.save` deep-copies every host (numpy) array before
writing (a guard for asynchronous saves) and zstd-compresses whole chunks in memory, about
two extra copies of the parameters at peak (GPT-XL: ~3.0x the checkpoint size end to end).
`save_model` writes synchronously through `PyTreeCheckpointHandler` with a numpy handler that
does not copy, and without compression by default (float weights shrink by only a few
percent), so saving adds almost nothing on top of the arrays. The directory layout is the
same, and `load_model` reads checkpoints written either way.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalingar_jax.atomic import atomic_dir

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def config_to_dict(config) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_class(kind: str, reference: str | None = None, *, where: str = "config") -> type:
    """The config dataclass of a saved model of `kind` (the registry's "config" table).
    reference: the "config_class" an earlier version recorded; accepted only when it is the
    built-in class of `kind`. ValueError naming `where` otherwise."""
    from scalingar_jax import registry

    if reference is not None and not registry.is_builtin_reference("config", kind, reference):
        raise ValueError(f"{where}: config_class {str(reference)[:80]!r} names code, which a model folder may not "
                         f"do; its kind {str(kind)[:40]!r} says which config it holds (remove config_class)")
    return registry.lookup("config", kind, where=f"{where}: 'kind'")


def config_from_dict(kind: str, fields: dict[str, Any], reference: str | None = None, *, where: str = "config"):
    """Rebuilds the config dataclass of `kind` (or of the class `reference` names, see
    `config_class`) from its fields; unknown or missing fields are errors."""
    cls = config_class(kind, reference, where=where)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"{kind} config has unknown fields {unknown}; expected a subset of {sorted(names)}")
    # JSON has no tuples: restore them where the default is a tuple.
    fixed = {}
    for k, v in fields.items():
        default = names[k].default
        fixed[k] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    config = cls(**fixed)
    return config.validate() if hasattr(config, "validate") else config


def _params_handler(compress: bool):
    """A PyTreeCheckpointHandler whose numpy arrays are written in place (no defensive deep
    copy: `save_model` is synchronous, so nothing can modify them mid-write). A private
    registry, so orbax's global handlers stay untouched."""
    import orbax.checkpoint as ocp

    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, th.ArrayHandler()),  # unused (leaves are numpy); orbax warns without it
    )
    return ocp.PyTreeCheckpointHandler(use_compression=compress, type_handler_registry=registry)


def save_model(path, params, config, *, kind: str, meta: dict | None = None, overwrite: bool = False,
               compress: bool = False) -> Path:
    """Saves `params` (pytree of arrays) and `config` under `path`, atomically. Returns the path.

    params are written as numpy arrays (jax arrays are viewed on the host first). Peak memory
    is the arrays plus a few MB (see the module docstring); `compress=True` zstd-compresses
    the tensors (smaller files by a few percent for float weights, ~1x the arrays in extra
    memory while saving).
    """
    import orbax.checkpoint as ocp

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a config dataclass instance, got {type(config).__name__}")
    expected = config_class(kind, where=f"save_model({str(path)!r})")
    if type(config) is not expected:
        raise TypeError(f"a {kind!r} model's config is a {expected.__name__}, got {type(config).__name__}")
    path = Path(path).absolute()
    with atomic_dir(path, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        record = {"kind": kind, "config": config_to_dict(config), "meta": meta or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2))
        params = jax.tree.map(np.asarray, params)  # every leaf an ndarray (the only registered type)
        with ocp.Checkpointer(_params_handler(compress)) as ckptr:
            ckptr.save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
        del params
    return path


MAX_CONFIG_BYTES = 1 << 20


def read_config(path) -> tuple[str, Any, dict]:
    """(kind, config dataclass, meta) of a saved model directory. Raises FileNotFoundError
    without a config.json, ValueError naming the problem for anything else (not JSON, not an
    object, missing keys, wrong field types or ranges)."""
    from scalingar_jax.inputs import read_json_object

    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not path.is_dir():
        what = "no such folder" if not os.path.lexists(path) else "not a folder"
        raise FileNotFoundError(f"{str(path)!r} is not a scalingar-jax model directory ({what})")
    if not os.path.lexists(cfg_file):
        raise FileNotFoundError(f"{str(path)!r} is not a scalingar-jax model directory (no {CONFIG_FILE})")
    record = read_json_object(cfg_file, MAX_CONFIG_BYTES, repr(str(cfg_file)))
    for key in ("kind", "config"):
        if key not in record:
            raise ValueError(f"{str(cfg_file)!r} is missing the key {key!r}")
    if not isinstance(record["kind"], str) or not isinstance(record["config"], dict):
        raise ValueError(f"{str(cfg_file)!r}: 'kind' must be a string and 'config' an object")
    meta = record.get("meta", {})
    try:
        config = config_from_dict(record["kind"], record["config"], record.get("config_class"), where=str(cfg_file))
    except TypeError as e:
        raise ValueError(f"{str(cfg_file)!r}: {e}") from None
    return record["kind"], config, meta if isinstance(meta, dict) else {}


def non_finite_leaves(params, chunk: int = 1 << 22) -> list[tuple[str, int]]:
    """[(leaf path, number of NaN/inf values)] of the floating-point leaves of `params` that
    hold any, in tree order; read in chunks of `chunk` elements (no full-size temporaries)."""
    bad = []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(leaf)
        if not (np.issubdtype(a.dtype, np.inexact) or a.dtype.kind == "V"):  # V: bfloat16 and friends
            continue
        flat = a.reshape(-1)
        n = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in
                (flat[i : i + chunk] for i in range(0, flat.size, chunk)))
        if n:
            bad.append(("/".join(str(getattr(k, "key", k)) for k in keypath), n))
    return bad


def _check_loaded(path: Path, kind: str, params, config, allow_non_finite: bool) -> None:
    """Parameter shapes against config.json (GPT and VQ) and finiteness, with one clear error."""
    if kind in ("gpt", "vq"):
        from scalingar_jax.convert import mapping as M

        expected = M.gpt_flax_shapes(config) if kind == "gpt" else M.vq_flax_shapes(config)
        try:
            M._check_flax_tree(params, expected, kind.upper())
        except ValueError as e:
            raise ValueError(f"{str(path)!r}: {CONFIG_FILE} does not describe the stored weights: "
                             f"{str(e).replace(chr(10) + '  ', '; ')}") from None
    if not allow_non_finite:
        bad = non_finite_leaves(params)
        if bad:
            raise ValueError(f"{str(path)!r}: {len(bad)} parameter(s) hold NaN or inf values "
                             f"({', '.join(f'{p}: {n}' for p, n in bad[:5])})")


def load_model(path, *, expect_kind: str | None = None, allow_non_finite: bool = False):
    """Loads (params, config) from a directory written by `save_model` (or `scalingar convert`).

    The parameter shapes of a GPT or VQ are checked against its config.json, and NaN/inf
    weights are refused unless `allow_non_finite`; both raise ValueError naming the problem.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    kind, config, _ = read_config(path)
    if expect_kind is not None and kind != expect_kind:
        raise ValueError(f"{str(path)!r} holds a {kind!r} model, expected {expect_kind!r}")
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{str(path)!r} has no {PARAMS_DIR}/ directory")
    params = ocp.StandardCheckpointer().restore(path / PARAMS_DIR)
    _check_loaded(path, kind, params, config, allow_non_finite)
    return params, config
