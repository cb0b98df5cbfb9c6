"""Janus-Pro's released folder, torch-free: its config.json, its weights, strictly mapped onto
`scalingar_jax.janus` and `scalingar_jax.vq` parameter trees.

The folder (deepseek-ai/Janus-Pro-1B, -7B) holds `config.json` with nested blocks
(`language_config`: Hugging Face LlamaConfig fields, LlamaConfig's defaults where absent;
`gen_vision_config` / `gen_aligner_config` / `gen_head_config` / `vision_config` /
`aligner_config`: `{"cls": ..., "params": {...}}`) and its weights: `pytorch_model.bin` (a
`torch.save` zip, read by the safe pickle reader `torch_pickle`, never unpickled) or shards
named by `pytorch_model.bin.index.json` (`model.safetensors` [+ index] too).

Order of work, for hostile folders: the JSON files are read as regular files within bounds
(`convert.hf.read_json`, `MAX_JSON_BYTES`; `inputs`), every
number is range-checked, the tensor index is read (names and shapes only, from every shard, each
shard checked against the index) and every config number is checked against it before anything
is built from those numbers; then every expected tensor's shape is compared; only then is any
tensor data read, one tensor at a time, cast straight into its slot of the output tree.

Keys: `language_model.model.*` (the LLaMA decoder), `gen_embed`, `gen_aligner.layers.{0,2}`,
`gen_head.{output_mlp_projector,vision_head}` and `gen_vision_model.*` (the VQ) are converted;
`vision_model.*`, `aligner.*` (image understanding), `language_model.lm_head.*` (text output),
the VQ's `quantize.codebook_used` statistics and rotary `inv_freq` buffers are ignored; any other
key is an error. Every error is one line naming the file.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from scalingar_jax.config import check_float, check_int
from scalingar_jax.convert.hf import read_json

__all__ = ["MAX_JSON_BYTES", "IGNORED", "LLAMA_DEFAULTS", "read_tensors", "Released", "read_released",
           "convert_released"]

MAX_JSON_BYTES = 1 << 20  # config.json and the tokenizer's small JSON files
MAX_INDEX_BYTES = 64 << 20  # a weight index (Janus-Pro-7B's is ~100 KB)
IGNORED = tuple(re.compile(p) for p in (
    r"vision_model\..*", r"aligner\..*", r"language_model\.lm_head\..*",
    r"gen_vision_model\.quantize\.codebook_used", r"language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"))
# Hugging Face LlamaConfig's defaults (transformers 4.x): Janus-Pro-7B's language_config leaves
# hidden_size, intermediate_size and num_attention_heads at them.
LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu",
                  "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                  "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "head_dim": None}
_LM = "language_model.model."
_LAYER = re.compile(re.escape(_LM) + r"layers\.(\d+)\.")
_VQ = "gen_vision_model."


# ------------------------------------------------------------------------------ files
def _torch_reader(path: str) -> dict:
    from scalingar_jax.convert.torch_pickle import load_state_dict

    return load_state_dict(path)[0]


def _safetensors_reader(path: str) -> dict:
    from scalingar_jax.convert.safetensors import load_file

    return load_file(path)[0]


WEIGHT_FILES: tuple[tuple[str, str, Callable[[str], dict]], ...] = (
    ("pytorch_model.bin", "pytorch_model.bin.index.json", _torch_reader),
    ("model.safetensors", "model.safetensors.index.json", _safetensors_reader))


def _from_index(folder: Path, index_name: str, reader) -> tuple[dict, dict]:
    """Tensors of every shard an index names; each shard must hold exactly the keys the index
    assigns to it."""
    where = folder / index_name
    index = read_json(str(folder), index_name, max_bytes=MAX_INDEX_BYTES)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{where}: no 'weight_map' object naming the shard of every tensor")
    shards: dict[str, set] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise ValueError(f"{where}: shard {shard!r} of {key!r} is not a plain file name in the folder")
        shards.setdefault(shard, set()).add(key)
    tensors, source = {}, {}
    for shard, keys in sorted(shards.items()):
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{where} names shard {shard!r}, which is missing from {folder}")
        held = reader(str(folder / shard))
        extra, missing = sorted(set(held) - keys), sorted(keys - set(held))
        if extra:
            other = weight_map.get(extra[0])
            raise ValueError(f"{folder / shard} holds {len(extra)} tensor(s) the index does not assign to it, e.g. "
                             f"{extra[0]!r} ({'not in ' + index_name if other is None else 'assigned to ' + other})")
        if missing:
            raise ValueError(f"{where} assigns {len(missing)} tensor(s) to {shard} that it lacks, e.g. {missing[0]!r}")
        tensors.update(held)
        source.update({k: shard for k in held})
    return tensors, source


def read_tensors(folder) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor (lazy: name, dtype and shape; data read on `.numpy()`) of a released folder and
    the file holding it: `pytorch_model.bin`, `pytorch_model.bin.index.json` + shards,
    `model.safetensors` or its index, the first present. Raises FileNotFoundError (no weights, a
    shard missing) or ValueError (a bad index, a shard that disagrees with it), naming the file."""
    folder = Path(folder)
    for single, index_name, reader in WEIGHT_FILES:
        if (folder / single).is_file():
            tensors = reader(str(folder / single))
            return tensors, {k: single for k in tensors}
        if (folder / index_name).is_file():
            return _from_index(folder, index_name, reader)
    raise FileNotFoundError(f"{folder}: no weights (pytorch_model.bin, pytorch_model.bin.index.json, "
                            "model.safetensors or model.safetensors.index.json)")


# ------------------------------------------------------------------------------ config.json
def _block(config: Mapping, name: str, where, cls: str | None) -> dict:
    """The `params` of block `name` ({"cls": cls, "params": {...}}), or the block itself (language_config)."""
    block = config.get(name)
    if not isinstance(block, dict):
        raise ValueError(f"{where}: no {name!r} object (a Janus config.json has language_config, gen_vision_config, "
                         "gen_aligner_config and gen_head_config)")
    if cls is None:
        return block
    if block.get("cls") != cls:
        raise ValueError(f"{where}: {name}.cls is {block.get('cls')!r}; Janus-Pro's generation uses {cls!r}")
    params = block.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{where}: {name}.params must be an object")
    return params


def _int(block: Mapping, key: str, owner: str, hi: int, default=None) -> int:
    value = block.get(key, default)
    if value is None:
        raise ValueError(f"{owner}.{key} is missing")
    return check_int(owner, key, value, 1, hi)


def _config_numbers(config: Mapping, where) -> dict:
    """Every number generation needs from config.json, range-checked (no cross-checks yet)."""
    lang = _block(config, "language_config", where, None)
    owner = f"{where}: language_config"
    if lang.get("model_type", "llama") != "llama":
        raise ValueError(f"{owner}.model_type is {lang.get('model_type')!r}, not 'llama'")
    get = lambda k: lang.get(k, LLAMA_DEFAULTS[k])  # noqa: E731
    if get("hidden_act") != "silu":
        raise ValueError(f"{owner}.hidden_act is {get('hidden_act')!r}; only LLaMA's 'silu' is supported")
    if get("rope_scaling") is not None:
        raise ValueError(f"{owner}.rope_scaling is set ({str(get('rope_scaling'))[:60]}); only plain RoPE is supported")
    for flag in ("attention_bias", "mlp_bias"):
        if not isinstance(get(flag), bool):
            raise ValueError(f"{owner}.{flag} must be true or false, got {get(flag)!r:.60}")
    n = {
        "text_vocab_size": _int(lang, "vocab_size", owner, 1 << 22, LLAMA_DEFAULTS["vocab_size"]),
        "dim": _int(lang, "hidden_size", owner, 65536, LLAMA_DEFAULTS["hidden_size"]),
        "ffn_hidden": _int(lang, "intermediate_size", owner, 1 << 20, LLAMA_DEFAULTS["intermediate_size"]),
        "n_layer": _int(lang, "num_hidden_layers", owner, 512, LLAMA_DEFAULTS["num_hidden_layers"]),
        "n_head": _int(lang, "num_attention_heads", owner, 1024, LLAMA_DEFAULTS["num_attention_heads"]),
        "norm_eps": check_float(owner, "rms_norm_eps", get("rms_norm_eps"), 0.0, 1.0, open_lo=True),
        "rope_base": check_float(owner, "rope_theta", get("rope_theta"), 1.0, 1e12, open_lo=True),
        "attention_bias": get("attention_bias"), "mlp_bias": get("mlp_bias"),
        "max_positions": _int(lang, "max_position_embeddings", owner, 1 << 24,
                              LLAMA_DEFAULTS["max_position_embeddings"]),
    }
    n["n_kv_head"] = _int(lang, "num_key_value_heads", owner, 1024, n["n_head"])
    if n["dim"] % n["n_head"]:
        raise ValueError(f"{owner}: hidden_size {n['dim']} is not divisible by num_attention_heads {n['n_head']}")
    if lang.get("head_dim") is not None and lang["head_dim"] != n["dim"] // n["n_head"]:
        raise ValueError(f"{owner}.head_dim {lang['head_dim']!r} differs from hidden_size / num_attention_heads "
                         f"= {n['dim'] // n['n_head']}; not supported")
    vis = _block(config, "gen_vision_config", where, "VQ-16")
    al = _block(config, "gen_aligner_config", where, "MlpProjector")
    head = _block(config, "gen_head_config", where, "vision_head")
    if al.get("projector_type") != "mlp_gelu" or al.get("depth") != 2:
        raise ValueError(f"{where}: gen_aligner_config.params must be projector_type 'mlp_gelu' with depth 2 (Janus-Pro's "
                         f"Linear-GELU-Linear), got {al.get('projector_type')!r} depth {al.get('depth')!r}")
    n.update({
        "vocab_size": _int(vis, "image_token_size", f"{where}: gen_vision_config.params", 1 << 22),
        "image_embed_dim": _int(vis, "n_embed", f"{where}: gen_vision_config.params", 4096),
        "aligner_in": _int(al, "input_dim", f"{where}: gen_aligner_config.params", 4096),
        "aligner_out": _int(al, "n_embed", f"{where}: gen_aligner_config.params", 65536),
        "head_in": _int(head, "n_embed", f"{where}: gen_head_config.params", 65536),
        "gen_head_dim": _int(head, "image_token_embed", f"{where}: gen_head_config.params", 65536),
        "head_vocab": _int(head, "image_token_size", f"{where}: gen_head_config.params", 1 << 22),
    })
    for key, want, what in (("aligner_in", "image_embed_dim", "gen_aligner_config.params.input_dim"),
                            ("aligner_out", "dim", "gen_aligner_config.params.n_embed"),
                            ("head_in", "dim", "gen_head_config.params.n_embed"),
                            ("head_vocab", "vocab_size", "gen_head_config.params.image_token_size")):
        if n[key] != n[want]:
            raise ValueError(f"{where}: {what} is {n[key]} but must equal {n[want]} (the {want} it feeds or reads)")
    return n


# ------------------------------------------------------------------------------ the key map
def _key_map(n: Mapping) -> dict[tuple[str, ...], tuple[str, tuple[int, ...], bool, bool]]:
    """Flax path -> (released key with '{}' for the layer index or None, torch shape, transpose,
    per-layer). Per-layer paths are stored stacked over n_layer."""
    d, hd = n["dim"], n["dim"] // n["n_head"]
    q, kv, ff = n["n_head"] * hd, n["n_kv_head"] * hd, n["ffn_hidden"]
    m: dict = {("embed_tokens", "embedding"): (_LM + "embed_tokens.weight", (n["text_vocab_size"], d), False, False),
               ("norm", "weight"): (_LM + "norm.weight", (d,), False, False)}
    layer = _LM + "layers.{}."
    for name in ("input_layernorm", "post_attention_layernorm"):
        m[("layers", name, "weight")] = (layer + name + ".weight", (d,), False, True)
    for name, out, inp, bias in (("q_proj", q, d, "attention_bias"), ("k_proj", kv, d, "attention_bias"),
                                 ("v_proj", kv, d, "attention_bias"), ("o_proj", d, q, "attention_bias")):
        m[("layers", "self_attn", name, "kernel")] = (layer + f"self_attn.{name}.weight", (out, inp), True, True)
        if n[bias]:
            m[("layers", "self_attn", name, "bias")] = (layer + f"self_attn.{name}.bias", (out,), False, True)
    for name, out, inp in (("gate_proj", ff, d), ("up_proj", ff, d), ("down_proj", d, ff)):
        m[("layers", "mlp", name, "kernel")] = (layer + f"mlp.{name}.weight", (out, inp), True, True)
        if n["mlp_bias"]:
            m[("layers", "mlp", name, "bias")] = (layer + f"mlp.{name}.bias", (out,), False, True)
    m[("gen_embed", "embedding")] = ("gen_embed.weight", (n["vocab_size"], n["image_embed_dim"]), False, False)
    for path, key, out, inp in ((("gen_aligner", "fc1"), "gen_aligner.layers.0", d, n["image_embed_dim"]),
                                (("gen_aligner", "fc2"), "gen_aligner.layers.2", d, d),
                                (("gen_head", "proj"), "gen_head.output_mlp_projector", n["gen_head_dim"], d),
                                (("gen_head", "out"), "gen_head.vision_head", n["vocab_size"], n["gen_head_dim"])):
        m[path + ("kernel",)] = (key + ".weight", (out, inp), True, False)
        m[path + ("bias",)] = (key + ".bias", (out,), False, False)
    return m


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _fail_shape(key, got, want, source, why: str):
    raise ValueError(f"{source}: {key} has shape {got}, but {why} needs {want}")


# ------------------------------------------------------------------------------ reading and converting
@dataclasses.dataclass(frozen=True)
class Released:
    """A checked released folder: `fields` the `JanusConfig` fields its files fix (sizes, eps,
    rope base, biases), `max_positions` (language_config.max_position_embeddings), `vq_config`,
    `tensors` name -> lazy tensor of every converted key, `source` name -> file."""

    folder: Path
    fields: dict
    max_positions: int
    vq_config: Any
    tensors: dict
    source: dict


def read_released(folder, *, vq_norm_groups: int = 32) -> Released:
    """Reads and checks a Janus-Pro folder without converting anything: config.json's numbers,
    the tensor index, the config against the index (layer count first), every expected shape,
    the VQ's config from its shapes (`vq_norm_groups`: its GroupNorm group count, which the
    weights do not hold; Janus hard-codes 32), the VQ codebook against gen_embed / gen_head.
    Raises FileNotFoundError, ValueError or KeyError, one line naming the file."""
    from scalingar_jax.convert.mapping import MappingError, infer_vq_config
    from scalingar_jax.vq import VQConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected Janus-Pro's released files)")
    where = folder / "config.json"
    n = _config_numbers(read_json(str(folder), "config.json", max_bytes=MAX_JSON_BYTES), where)
    tensors, source = read_tensors(folder)
    unknown = sorted(k for k in tensors if not any(p.fullmatch(k) for p in IGNORED)
                     and not k.startswith((_LM, _VQ, "gen_embed.", "gen_aligner.", "gen_head.")))
    if unknown:
        raise ValueError(f"{folder / source[unknown[0]]}: {len(unknown)} tensor(s) that are not Janus-Pro's, e.g. "
                         f"{unknown[0]!r}")
    kept = {k: v for k, v in tensors.items() if not any(p.fullmatch(k) for p in IGNORED)}
    # the layer count against the index before anything is sized by it
    layers = {int(m.group(1)) for k in kept if (m := _LAYER.match(k))}
    if layers != set(range(n["n_layer"])):
        have = f"layers {min(layers)}..{max(layers)} ({len(layers)})" if layers else "no decoder layers"
        raise ValueError(f"{where}: language_config.num_hidden_layers is {n['n_layer']} but the weights hold {have}")
    key_map = _key_map(n)
    expected = {}
    for path, (key, shape, _, per_layer) in key_map.items():
        for i in (range(n["n_layer"]) if per_layer else (None,)):
            expected[key.format(i) if per_layer else key] = shape
    model_keys = {k for k in kept if not k.startswith(_VQ)}
    missing = sorted(set(expected) - model_keys)
    if missing:
        raise KeyError(f"{folder}: the weights lack {len(missing)} tensor(s) config.json implies, e.g. {missing[0]!r}")
    extra = sorted(model_keys - set(expected))
    if extra:
        raise ValueError(f"{folder / source[extra[0]]}: {len(extra)} tensor(s) config.json does not account for, "
                         f"e.g. {extra[0]!r} (biases need attention_bias / mlp_bias)")
    for key, shape in expected.items():
        if _shape(kept[key]) != shape:
            _fail_shape(key, _shape(kept[key]), shape, folder / source[key], f"{where.name}")
    vq_shapes = {k[len(_VQ):]: _shape(v) for k, v in kept.items() if k.startswith(_VQ)}
    if not vq_shapes:
        raise KeyError(f"{folder}: the weights hold no gen_vision_model.* (the VQ decoder)")
    try:
        vq_fields = infer_vq_config(vq_shapes, norm_groups=vq_norm_groups)
    except (MappingError, ValueError) as e:
        raise ValueError(f"{folder}: gen_vision_model: {e}") from None
    vq_cfg = VQConfig(**vq_fields).validate()
    if (vq_cfg.codebook_size, vq_cfg.codebook_embed_dim) != (n["vocab_size"], n["image_embed_dim"]):
        raise ValueError(f"{folder}: the VQ codebook is {vq_cfg.codebook_size} x {vq_cfg.codebook_embed_dim} but "
                         f"gen_embed / gen_head use {n['vocab_size']} x {n['image_embed_dim']}: the VQ does not belong "
                         "to this model")
    fields = {k: n[k] for k in ("text_vocab_size", "dim", "n_layer", "n_head", "ffn_hidden", "norm_eps", "rope_base",
                                "attention_bias", "mlp_bias", "vocab_size", "image_embed_dim", "gen_head_dim")}
    fields["n_kv_head"] = n["n_kv_head"] if n["n_kv_head"] != n["n_head"] else None
    return Released(folder=folder, fields=fields, max_positions=n["max_positions"], vq_config=vq_cfg,
                    tensors=kept, source=source)


def _read(released: Released, key: str) -> np.ndarray:
    """One tensor as float32, refusing NaN / infinity."""
    from scalingar_jax.convert.hf import to_numpy_f32

    arr = to_numpy_f32(key, released.tensors[key])
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{released.folder / released.source[key]}: {key} holds "
                         f"{int(arr.size - np.isfinite(arr).sum())} non-finite value(s)")
    return arr


def convert_released(released: Released, cfg, *, dtype: str = "float32") -> tuple[dict, dict]:
    """(Janus params, VQ params): numpy trees in `dtype` (float32, bfloat16, float16), the decoder
    layers stacked on a leading axis, read one tensor at a time. cfg: the `JanusConfig` built
    from `released.fields` (its sizes must be those)."""
    import ml_dtypes

    from scalingar_jax.convert.mapping import torch_to_flax_vq

    dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    out_dt = np.dtype(dtypes[dtype])
    mismatch = {k: (v, getattr(cfg, k)) for k, v in released.fields.items() if getattr(cfg, k) != v}
    if mismatch:
        raise ValueError(f"the JanusConfig differs from {released.folder}: {mismatch}")
    n = dict(released.fields, n_kv_head=cfg.kv_heads)
    params: dict = {}
    for path, (key, shape, transpose, per_layer) in _key_map(n).items():
        flax_shape = shape[::-1] if transpose else shape
        dst = np.empty(((cfg.n_layer,) if per_layer else ()) + flax_shape, out_dt)
        for i in (range(cfg.n_layer) if per_layer else (None,)):
            arr = _read(released, key.format(i) if per_layer else key)
            np.copyto(dst[i] if per_layer else dst, arr.T if transpose else arr, casting="unsafe")
            del arr
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = dst
    vq_sd = {k[len(_VQ):]: _read(released, k) for k in released.tensors if k.startswith(_VQ)}
    vq_params = torch_to_flax_vq(vq_sd, released.vq_config, dtype=dtype)
    return params, vq_params

