"""Hugging Face model folders, torch-free: their JSON files, their weights, and a strict mapping
of a state dict onto a Flax parameter tree. Shared by the Flax T5 (`scalingar_jax.t5`) and the
Flax CLIP (`scalingar_jax.clip`).

A HF folder holds `config.json` and its weights as `model.safetensors`, sharded safetensors
(`model.safetensors.index.json` + shards), `pytorch_model.bin`, or sharded `pytorch_model.bin`
(`pytorch_model.bin.index.json` + shards). The `.bin` files are read with the package's safe
pickle reader (`torch_pickle`), never by running the pickle.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["read_json", "check_layer_count", "read_weights", "to_numpy_f32", "params_from_state_dict"]

MAX_JSON_BYTES = 8 << 20  # config.json, index files, vocab.json: real ones are a few hundred KB

# Flax param path -> (HF key, HF (torch) shape, layout change): False = none, True = transpose
# a 2-D Linear weight (out, in) -> (in, out), a tuple = np.transpose axes (e.g. a conv kernel).
KeyMap = Mapping[tuple[str, ...], tuple[str, tuple[int, ...], Any]]


def read_json(directory: str, name: str, *, required: bool = True, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """`directory/name` parsed as a JSON object (a regular file of at most `max_bytes`); None if
    absent and not `required`.

    Raises FileNotFoundError (a required file is missing) or ValueError (too large, not JSON,
    not an object, not a regular file), naming the file."""
    from scalingar_jax.inputs import read_json_object

    path = os.path.join(directory, name)
    if not os.path.lexists(path):
        if required:
            raise FileNotFoundError(f"{directory}: no {name}")
        return None
    return read_json_object(path, max_bytes, path)


def check_layer_count(names, pattern: str, declared: int, *, where: str, field: str) -> None:
    """Refuses (ValueError naming `where` and `field`) a config whose layer count `declared`
    differs from the number of layers the weights hold: the distinct indices the regex `pattern`
    (one group, the layer index) finds in the tensor `names`. Run before anything is built from
    the config's numbers (a key map of 10^9 layers would not fit in memory)."""
    import re

    rx = re.compile(pattern)
    found = {int(m.group(1)) for m in map(rx.match, names) if m}
    if declared != len(found) or (found and max(found) != len(found) - 1):
        raise ValueError(f"{where}: {field} is {str(declared)[:40]} but the weights hold {len(found)} layers"
                         + (f" (indices {min(found)}..{max(found)})" if found else ""))


def read_weights(directory: str, keep: Callable[[str], bool] = lambda k: True) -> dict[str, Any]:
    """The tensors (lazy, array-like) of a HF checkpoint folder whose names pass `keep`.

    Looks for `model.safetensors`, `model.safetensors.index.json`, `pytorch_model.bin`,
    `pytorch_model.bin.index.json`, in that order; shards holding no kept tensor are never
    opened. Raises FileNotFoundError (no weights, a named shard missing) or ValueError (a bad
    index file), naming the file.
    """
    from scalingar_jax.convert import safetensors as st
    from scalingar_jax.convert import torch_pickle as tp

    def j(name):
        return os.path.join(directory, name)

    def read_st(path):
        return st.load_file(path)[0]

    def read_pt(path):
        return tp.load_state_dict(path)[0]

    def from_index(index_name, reader):
        index = read_json(directory, index_name)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{j(index_name)}: no 'weight_map' dict")
        shards = sorted({v for k, v in weight_map.items() if keep(k)}, key=str)
        out: dict[str, Any] = {}
        for shard in shards:
            if not isinstance(shard, str) or os.path.basename(shard) != shard:
                raise ValueError(f"{j(index_name)}: shard name {shard!r} is not a plain file name")
            if not os.path.isfile(j(shard)):
                raise FileNotFoundError(f"{j(index_name)} names shard {shard!r}, which is missing")
            out.update({k: v for k, v in reader(j(shard)).items() if keep(k)})
        return out

    for single, index_name, reader in (("model.safetensors", "model.safetensors.index.json", read_st),
                                       ("pytorch_model.bin", "pytorch_model.bin.index.json", read_pt)):
        if os.path.isfile(j(single)):
            return {k: v for k, v in reader(j(single)).items() if keep(k)}
        if os.path.isfile(j(index_name)):
            return from_index(index_name, reader)
    raise FileNotFoundError(
        f"{directory}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin "
        "or pytorch_model.bin.index.json")


def to_numpy_f32(key: str, value) -> np.ndarray:
    """A floating-point tensor (numpy array or LazyTensor; float16/bfloat16/float64 too) as a
    float32 numpy array; TypeError naming `key` for any other dtype."""
    arr = value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) \
        else np.asarray(value)  # LazyTensor.numpy() reads just this tensor
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    raise TypeError(f"{key}: expected a floating-point tensor, got dtype {arr.dtype}")


def params_from_state_dict(state_dict: Mapping[str, Any], key_map: KeyMap, *, what: str = "HF checkpoint",
                           config: str = "the config", check_finite: bool = False) -> dict:
    """The nested float32 Flax params that `key_map` describes, taken from `state_dict`.

    Keys of `state_dict` not in the map are ignored. Raises KeyError listing the missing HF keys
    ("{what} is missing N key(s): [...]"), ValueError naming a key whose shape differs
    ("{key}: expected shape S for {config}, {what} has G") or, with `check_finite`, a key
    holding NaN or infinity; TypeError for a non-float tensor.
    """
    params: dict = {}
    missing = []
    for path, (key, shape, layout) in key_map.items():
        if key not in state_dict:
            missing.append(key)
            continue
        arr = state_dict[key]
        got = tuple(np.shape(arr))
        if got != tuple(shape):
            raise ValueError(f"{key}: expected shape {tuple(shape)} for {config}, {what} has {got}")
        arr = to_numpy_f32(key, arr)
        if check_finite and not np.all(np.isfinite(arr)):
            raise ValueError(f"{key}: {what} holds {int(np.size(arr) - np.isfinite(arr).sum())} "
                             "non-finite value(s) (NaN or infinity)")
        if layout is True:
            arr = np.ascontiguousarray(arr.T)
        elif layout:
            arr = np.ascontiguousarray(np.transpose(arr, layout))
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = arr
    if missing:
        raise KeyError(f"{what} is missing {len(missing)} key(s): "
                       f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return params
