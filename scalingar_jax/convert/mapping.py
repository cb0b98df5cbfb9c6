"""Strict PyTorch <-> Flax mapping of LlamaGen GPT and VQ weights, and config inference.

GPT (Flax tree = `scalingar_jax.gpt.init_params(cfg, key)`; per-layer weights stacked on a
leading `n_layer` axis; the model slices layer i statically):

  PyTorch key (shape)                                   Flax path (shape)
  tok_embeddings.weight (V, dim)                        tok_embeddings/embedding (V, dim)
  cls_embedding.embedding_table.weight (nc+1, dim)      cls_embedding/embedding_table/embedding   [c2i]
  cls_embedding.cap_proj.fc1.weight (dim, cap)          cls_embedding/cap_proj/fc1/kernel (cap, dim) [t2i]
  cls_embedding.cap_proj.fc2.weight (dim, dim)          cls_embedding/cap_proj/fc2/kernel (dim, dim) [t2i]
  cls_embedding.uncond_embedding (cls, cap)             cls_embedding/uncond_embedding (cls, cap)  [t2i]
  layers.{i}.attention.wqkv.weight ((H+2Hkv)hd, dim)    layers/attention/wqkv/kernel (L, dim, (H+2Hkv)hd)
  layers.{i}.attention.wo.weight (dim, H hd)            layers/attention/wo/kernel (L, H hd, dim)
  layers.{i}.feed_forward.w1|w3.weight (hidden, dim)    layers/feed_forward/w1|w3/kernel (L, dim, hidden)
  layers.{i}.feed_forward.w2.weight (dim, hidden)       layers/feed_forward/w2/kernel (L, hidden, dim)
  layers.{i}.attention_norm|ffn_norm.weight (dim,)      layers/attention_norm|ffn_norm/weight (L, dim)
  norm.weight (dim,)                                    norm/weight (dim,)
  output.weight (V, dim)                                output/kernel (dim, V)

PyTorch Linear weights are (out, in); a Flax kernel is (in, out) = W.T.

VQ: names map mechanically: a numeric path component joins its parent with "_"
(`encoder.conv_blocks.2.res.1.conv1.weight` -> encoder/conv_blocks_2/res_1/conv1/kernel); a 4-D
conv weight (out, in, kh, kw) becomes kernel (kh, kw, in, out); a 1-D GroupNorm weight
becomes `scale`; biases stay `bias`; `quantize.embedding.weight` -> quantize/embedding.

Everything is strict: every expected key must be present with its expected shape (errors name
the key and both shapes), unknown keys are errors (known training/inference buffers are
ignored), and a VQ file passed as a GPT (or vice versa) is reported as such. Conversions read
one tensor at a time into preallocated outputs, so the peak memory is about one copy of the
weights plus one tensor.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

from scalingar_jax.convert.torch_pickle import LazyTensor

__all__ = [
    "MappingError",
    "detect_model_kind",
    "match_gpt_preset",
    "infer_gpt_config",
    "gpt_torch_shapes",
    "gpt_flax_shapes",
    "torch_to_flax_gpt",
    "iter_flax_to_torch_gpt",
    "flax_to_torch_gpt",
    "infer_vq_config",
    "vq_torch_shapes",
    "vq_torch_key_to_flax",
    "vq_flax_path_to_torch",
    "torch_to_flax_vq",
    "iter_flax_to_torch_vq",
    "flax_to_torch_vq",
]


class MappingError(ValueError):
    """A state dict / parameter tree does not match the expected model layout."""


# Keys a LlamaGen GPT state dict may carry that are not weights (KV caches registered as
# persistent buffers by `setup_caches`, rotary tables, masks).
GPT_IGNORED = (
    re.compile(r"layers\.\d+\.attention\.kv_cache\.[kv]_cache"),
    re.compile(r"freqs_cis"),
    re.compile(r"causal_mask"),
)
# VQ training buffer (codebook usage statistics).
VQ_IGNORED = (re.compile(r"quantize\.codebook_used"),)

_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float64": np.dtype(np.float64),
}


def np_dtype(dtype) -> np.dtype | None:
    """The NumPy dtype of a parameter dtype name ("float32", "bfloat16", "float16") or dtype;
    None for None (keep the stored dtype); ValueError for an unknown name."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    return np.dtype(dtype)


def _shape(v) -> tuple[int, ...]:
    return tuple(int(s) for s in (v if isinstance(v, tuple) else v.shape))


def _read(v) -> np.ndarray:
    return v.numpy() if isinstance(v, LazyTensor) else np.asarray(v)


def _store(dst: np.ndarray, src: np.ndarray, transpose: bool) -> None:
    """dst[...] = src.T (2-D) or src, casting to dst.dtype. The transpose goes in blocks of rows
    so that reads and writes stay cache-resident (about 2x faster than one strided copy)."""
    if not transpose:
        np.copyto(dst, src, casting="unsafe")
        return
    step = 64
    for i in range(0, src.shape[0], step):
        np.copyto(dst[:, i : i + step], src[i : i + step].T, casting="unsafe")


def _ignored(key: str, patterns) -> bool:
    return any(p.fullmatch(key) for p in patterns)


def _fmt_list(items, limit=12) -> str:
    items = list(items)
    s = ", ".join(items[:limit])
    return s + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# Model kind
# --------------------------------------------------------------------------------------------


def detect_model_kind(keys) -> str | None:
    """'gpt', 'vq' or None from the key names of a LlamaGen state dict."""
    keys = list(keys)
    if any(k == "tok_embeddings.weight" or k.startswith("layers.") for k in keys):
        return "gpt"
    if any(k.startswith(("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")) for k in keys):
        return "vq"
    return None


def _expect_kind(keys, want: str) -> None:
    kind = detect_model_kind(keys)
    if kind == want:
        return
    names = {"gpt": "a LlamaGen GPT", "vq": "a LlamaGen VQ tokenizer"}
    sample = _fmt_list(sorted(keys), 6)
    if kind is None:
        raise MappingError(f"expected {names[want]} state dict, but its keys match neither a GPT nor a VQ ({sample})")
    hint = {
        "vq": "keys encoder.*, decoder.*, quantize.* and no tok_embeddings.weight",
        "gpt": "keys tok_embeddings.weight, layers.* and no encoder/decoder",
    }[kind]
    raise MappingError(
        f"expected {names[want]} checkpoint, but this is {names[kind]} checkpoint ({hint}); "
        f"convert it as a {kind.upper()} instead"
    )


# --------------------------------------------------------------------------------------------
# GPT
# --------------------------------------------------------------------------------------------

# torch suffix under layers.{i}., flax path under layers/, transposed?
_GPT_LAYER = (  # in LlamaGen's state-dict order
    ("attention.wqkv.weight", ("attention", "wqkv", "kernel"), True),
    ("attention.wo.weight", ("attention", "wo", "kernel"), True),
    ("feed_forward.w1.weight", ("feed_forward", "w1", "kernel"), True),
    ("feed_forward.w3.weight", ("feed_forward", "w3", "kernel"), True),
    ("feed_forward.w2.weight", ("feed_forward", "w2", "kernel"), True),
    ("attention_norm.weight", ("attention_norm", "weight"), False),
    ("ffn_norm.weight", ("ffn_norm", "weight"), False),
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    torch_key: str  # for stacked entries a template with "{i}"
    flax_path: tuple[str, ...]
    torch_shape: tuple[int, ...]  # per layer for stacked entries
    transpose: bool
    stacked: bool

    @property
    def flax_shape(self) -> tuple[int, ...]:
        s = self.torch_shape[::-1] if self.transpose else self.torch_shape
        return s


def as_gpt_config(cfg):
    """A validated `GPTConfig` from a GPTConfig or a mapping of its fields (unknown fields refused)."""
    from scalingar_jax.config import GPTConfig

    if isinstance(cfg, GPTConfig):
        return cfg.validate()
    if isinstance(cfg, Mapping):
        names = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown GPT config fields {unknown}")
        return GPTConfig(**cfg).validate()
    raise TypeError(f"expected a GPTConfig or a dict of its fields, got {type(cfg).__name__}")


def _gpt_entries(cfg) -> list[_Entry]:
    c = as_gpt_config(cfg)
    d, V, hd, H, Hkv, hid = c.dim, c.vocab_size, c.head_dim, c.n_head, c.kv_heads, c.ffn_hidden
    # LlamaGen's state-dict order: cls_embedding, tok_embeddings, layers (per layer), norm, output
    e = []
    if c.model_type == "c2i":
        e.append(_Entry("cls_embedding.embedding_table.weight", ("cls_embedding", "embedding_table", "embedding"),
                        (c.num_classes + 1, d), False, False))
    else:
        e += [  # a module's own buffers come before its children's parameters
            _Entry("cls_embedding.uncond_embedding", ("cls_embedding", "uncond_embedding"),
                   (c.cls_token_num, c.caption_dim), False, False),
            _Entry("cls_embedding.cap_proj.fc1.weight", ("cls_embedding", "cap_proj", "fc1", "kernel"),
                   (d, c.caption_dim), True, False),
            _Entry("cls_embedding.cap_proj.fc2.weight", ("cls_embedding", "cap_proj", "fc2", "kernel"), (d, d), True, False),
        ]
    e.append(_Entry("tok_embeddings.weight", ("tok_embeddings", "embedding"), (V, d), False, False))
    layer_shapes = {
        "attention.wqkv.weight": ((H + 2 * Hkv) * hd, d),
        "attention.wo.weight": (d, H * hd),
        "feed_forward.w1.weight": (hid, d),
        "feed_forward.w2.weight": (d, hid),
        "feed_forward.w3.weight": (hid, d),
        "attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
    }
    for suffix, path, tr in _GPT_LAYER:
        e.append(_Entry("layers.{i}." + suffix, ("layers",) + path, layer_shapes[suffix], tr, True))
    e += [
        _Entry("norm.weight", ("norm", "weight"), (d,), False, False),
        _Entry("output.weight", ("output", "kernel"), (V, d), True, False),
    ]
    return e


def gpt_torch_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every PyTorch key of a LlamaGen GPT state dict for `cfg` (GPTConfig or dict) and its shape."""
    return {key: shape for key, shape, _, _ in gpt_torch_order(as_gpt_config(cfg))}


def gpt_torch_order(c) -> Iterator[tuple[str, tuple[int, ...], "_Entry", int | None]]:
    """(torch key, torch shape, entry, layer index or None) in LlamaGen's state-dict order."""
    entries = _gpt_entries(c)
    stacked = [e for e in entries if e.stacked]
    head = entries[: entries.index(stacked[0])]
    tail = entries[entries.index(stacked[-1]) + 1 :]
    for e in head:
        yield e.torch_key, e.torch_shape, e, None
    for i in range(c.n_layer):
        for e in stacked:
            yield e.torch_key.format(i=i), e.torch_shape, e, i
    for e in tail:
        yield e.torch_key, e.torch_shape, e, None


def gpt_flax_shapes(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of the GPT parameter tree for `cfg` (stacked layers included)."""
    c = as_gpt_config(cfg)
    return {e.flax_path: ((c.n_layer,) if e.stacked else ()) + e.flax_shape for e in _gpt_entries(c)}


def _check_state_dict(sd: Mapping[str, Any], expected: Mapping[str, tuple], ignored, what: str, strict: bool):
    """Raises MappingError listing missing keys, shape mismatches and (if strict) unexpected keys."""
    problems = []
    missing = [k for k in expected if k not in sd]
    if missing:
        problems.append(
            "missing keys: " + _fmt_list(f"{k} (expected shape {expected[k]})" for k in missing)
        )
    for k, want in expected.items():
        if k in sd and _shape(sd[k]) != tuple(want):
            problems.append(f"shape mismatch for {k}: checkpoint has {_shape(sd[k])}, the config expects {tuple(want)}")
    unexpected = sorted(k for k in sd if k not in expected and not _ignored(k, ignored))
    if unexpected and strict:
        problems.append("unexpected keys: " + _fmt_list(f"{k} {_shape(sd[k])}" for k in unexpected))
    if problems:
        raise MappingError(f"the {what} state dict does not match the config:\n  " + "\n  ".join(problems))
    return unexpected


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def torch_to_flax_gpt(state_dict: Mapping[str, Any], cfg, dtype="float32", *, strict: bool = True) -> dict:
    """PyTorch LlamaGen GPT weights -> the Flax parameter tree of `scalingar_jax.gpt` (numpy).

    state_dict: PyTorch name -> LazyTensor or array. cfg: GPTConfig or dict of its fields (see
    `infer_gpt_config`). dtype: output dtype name/np.dtype ("float32", "bfloat16", "float16"),
    or None to keep each tensor's stored dtype. strict: unexpected keys are errors (known
    buffers such as KV caches are always ignored); with strict=False they are skipped.

    Returns a nested dict of np.ndarray laid out as in the module docstring (no "params"
    wrapper). Per-layer weights are written into one preallocated (n_layer, ...) array, layer by
    layer, so peak memory is the output plus one tensor. Raises MappingError naming each
    missing key, each shape mismatch (both shapes) and the unexpected keys, and a clear error if
    `state_dict` is a VQ tokenizer.
    """
    _expect_kind(state_dict.keys(), "gpt")
    c = as_gpt_config(cfg)
    found = ("c2i" if "cls_embedding.embedding_table.weight" in state_dict
             else "t2i" if "cls_embedding.uncond_embedding" in state_dict else None)
    if found is not None and found != c.model_type:
        raise MappingError(f"the checkpoint holds a {found} GPT but the config says model_type={c.model_type!r}")
    _check_state_dict(state_dict, gpt_torch_shapes(c), GPT_IGNORED, "GPT", strict)
    out_dt = np_dtype(dtype)
    params: dict = {}
    for e in _gpt_entries(c):
        if e.stacked:
            first = state_dict[e.torch_key.format(i=0)]
            dt = out_dt or np.dtype(first.dtype)
            arr = np.empty((c.n_layer,) + e.flax_shape, dt)
            for i in range(c.n_layer):
                a = _read(state_dict[e.torch_key.format(i=i)])
                _store(arr[i], a, e.transpose)
                del a
        else:
            a = _read(state_dict[e.torch_key])
            arr = np.empty(e.flax_shape, out_dt or a.dtype)
            _store(arr, a, e.transpose)
            del a
        _set(params, e.flax_path, arr)
    return params


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
    else:
        out[prefix] = tree
    return out


def _unwrap_params(params):
    if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def check_flax_tree(params, expected: Mapping[tuple[str, ...], tuple], what: str) -> dict:
    flat = _flatten(_unwrap_params(params))
    problems = []
    missing = [p for p in expected if p not in flat]
    if missing:
        problems.append("missing parameters: " + _fmt_list(f"{'/'.join(p)} (expected shape {expected[p]})" for p in missing))
    for p, want in expected.items():
        if p in flat and tuple(np.shape(flat[p])) != tuple(want):
            problems.append(
                f"shape mismatch for {'/'.join(p)}: tree has {tuple(np.shape(flat[p]))}, the config expects {tuple(want)}"
            )
    extra = sorted("/".join(p) for p in flat if p not in expected)
    if extra:
        problems.append("unexpected parameters: " + _fmt_list(extra))
    if problems:
        raise MappingError(f"the {what} parameter tree does not match the config:\n  " + "\n  ".join(problems))
    return flat


def iter_flax_to_torch_gpt(params, cfg, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (PyTorch key, C-contiguous np.ndarray) for a Flax GPT tree, one tensor at a time,
    in LlamaGen's state-dict order (feed it to `save_torch_state_dict` to stream an export).
    params: the tree of `gpt.init_params` (optionally under {"params": ...}); dtype: None keeps
    the parameter dtype. The tree is checked strictly first (MappingError)."""
    c = as_gpt_config(cfg)
    flat = check_flax_tree(params, gpt_flax_shapes(c), "GPT")
    out_dt = np_dtype(dtype)
    host: dict = {}
    for key, _, e, i in gpt_torch_order(c):
        if e.flax_path not in host:
            host[e.flax_path] = np.asarray(flat[e.flax_path])  # one host view per leaf
        a = host[e.flax_path] if i is None else host[e.flax_path][i]
        a = a.T if e.transpose else a
        yield key, np.ascontiguousarray(a, dtype=out_dt or a.dtype)


def flax_to_torch_gpt(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    """The PyTorch LlamaGen state dict (key -> np.ndarray) of a Flax GPT tree; see
    `iter_flax_to_torch_gpt`."""
    return dict(iter_flax_to_torch_gpt(params, cfg, dtype))


def match_gpt_preset(n_layer: int, dim: int) -> tuple[str, int] | None:
    """(preset name, n_head) of the LlamaGen preset with this depth and width, or None."""
    from scalingar_jax.config import GPT_PRESETS

    for name, (L, H, D) in GPT_PRESETS.items():
        if (L, D) == (n_layer, dim):
            return name, H
    return None


def _grid_from_name(file_name: str | None) -> int | None:
    if not file_name:
        return None
    import os

    base = os.path.basename(str(file_name))
    m = re.findall(r"(?<![0-9])(256|384|512)(?![0-9])", base)
    return int(m[-1]) // 16 if m else None


def _ffn_fields(dim: int, hidden: int) -> dict:
    """multiple_of / ffn_dim_multiplier reproducing `hidden` with LlamaGen's FFN size rule."""
    from scalingar_jax.config import GPTConfig

    if GPTConfig(dim=dim, n_head=1).ffn_hidden == hidden:
        return {}
    base = int(2 * 4 * dim / 3)
    for multiple in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if GPTConfig(dim=dim, n_head=1, multiple_of=multiple).ffn_hidden == hidden:
            return {"multiple_of": multiple}
    multiple = next(m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if hidden % m == 0)
    mult = (hidden + 0.5) / base
    fields = {"multiple_of": multiple, "ffn_dim_multiplier": mult}
    if GPTConfig(dim=dim, n_head=1, **fields).ffn_hidden != hidden:  # pragma: no cover - arithmetic guard
        raise MappingError(f"cannot express FFN hidden size {hidden} for dim {dim} with LlamaGen's rule")
    return fields


def infer_gpt_config(
    state_dict_or_shapes: Mapping[str, Any],
    *,
    file_name: str | None = None,
    args: Mapping[str, Any] | None = None,
    **overrides,
) -> dict:
    """Infers the GPTConfig fields of a LlamaGen GPT from its weight shapes.

    state_dict_or_shapes: PyTorch key -> LazyTensor / array / shape tuple.
    From the weights: model_type (c2i if cls_embedding.embedding_table, t2i if cap_proj /
    uncond_embedding), n_layer, dim, vocab_size, n_head (by matching (n_layer, dim) to a preset
    of `config.GPT_PRESETS`), n_kv_head (from the wqkv rows), the FFN hidden size (via
    multiple_of / ffn_dim_multiplier when not the default), num_classes (table rows - 1, c2i),
    cls_token_num and caption_dim (uncond_embedding shape, t2i).
    Not in the weights: grid_size, taken from `overrides`, else from `args` (the training
    Namespace: image_size // downsample_size), else from a 256/384/512 in `file_name` (VQ-16:
    image_size // 16); otherwise an error asks for it. Any GPTConfig field may be overridden.

    Returns a dict of GPTConfig fields (validated; `GPTConfig(**d)` works) whose expected
    shapes match the weights. Raises MappingError when the weights are not a GPT (e.g. a VQ),
    are inconsistent, or need an override that was not given (the message says which).
    """
    from scalingar_jax.config import GPTConfig, check_gpt_fields

    try:
        check_gpt_fields(overrides)
    except ValueError as e:
        raise MappingError(f"bad GPT config override: {e}") from None
    shapes = {k: _shape(v) for k, v in state_dict_or_shapes.items()}
    _expect_kind(shapes, "gpt")
    for k in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        if k not in shapes:
            raise MappingError(f"not a complete LlamaGen GPT state dict: missing {k}")
    V, dim = shapes["tok_embeddings.weight"]
    layer_ids = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))})
    if not layer_ids:
        raise MappingError("not a complete LlamaGen GPT state dict: no layers.{i}.* keys")
    n_layer = layer_ids[-1] + 1
    absent = sorted(set(range(n_layer)) - set(layer_ids))
    if absent:
        raise MappingError(f"GPT state dict has layers up to {n_layer - 1} but none for layer(s) {absent}")
    cfg: dict[str, Any] = {"n_layer": n_layer, "dim": dim, "vocab_size": V}

    if "cls_embedding.embedding_table.weight" in shapes:
        cfg["model_type"] = "c2i"
        cfg["num_classes"] = shapes["cls_embedding.embedding_table.weight"][0] - 1
        cfg["cls_token_num"] = 1
    elif "cls_embedding.uncond_embedding" in shapes or "cls_embedding.cap_proj.fc1.weight" in shapes:
        cfg["model_type"] = "t2i"
        if "cls_embedding.uncond_embedding" not in shapes:
            raise MappingError("t2i GPT state dict is missing cls_embedding.uncond_embedding")
        cfg["cls_token_num"], cfg["caption_dim"] = shapes["cls_embedding.uncond_embedding"]
    else:
        raise MappingError(
            "cannot tell c2i from t2i: neither cls_embedding.embedding_table.weight nor "
            "cls_embedding.uncond_embedding / cls_embedding.cap_proj.* is present"
        )

    n_head = overrides.get("n_head")
    preset = match_gpt_preset(n_layer, dim)
    if n_head is None:
        if preset is None:
            raise MappingError(
                f"cannot infer n_head: (n_layer={n_layer}, dim={dim}) matches no LlamaGen preset; pass n_head= "
                "(scalingar convert: --set n_head=N)"
            )
        n_head = preset[1]
    cfg["n_head"] = n_head
    if dim % n_head:
        raise MappingError(f"dim={dim} is not divisible by n_head={n_head}")
    hd = dim // n_head
    wqkv = shapes.get("layers.0.attention.wqkv.weight")
    if wqkv is None:
        raise MappingError("GPT state dict is missing layers.0.attention.wqkv.weight")
    rows = wqkv[0]
    if rows % hd or (rows // hd - n_head) % 2 or rows // hd <= n_head:
        raise MappingError(
            f"layers.0.attention.wqkv.weight has {rows} rows, which is not (n_head + 2*n_kv_head) * head_dim "
            f"for n_head={n_head}, head_dim={hd}; is n_head right?"
        )
    n_kv = (rows // hd - n_head) // 2
    cfg["n_kv_head"] = None if n_kv == n_head else n_kv

    w1 = shapes.get("layers.0.feed_forward.w1.weight")
    if w1 is None:
        raise MappingError("GPT state dict is missing layers.0.feed_forward.w1.weight")
    cfg.update(_ffn_fields(dim, w1[0]))

    grid = None
    if args:
        img, ds = args.get("image_size"), args.get("downsample_size")
        if isinstance(img, int) and isinstance(ds, int) and not isinstance(img, bool) and ds > 0:
            grid = img // ds  # checked with the other fields below (a bounded grid_size)
    if grid is None:
        grid = _grid_from_name(file_name)
    if grid is not None:
        cfg["grid_size"] = grid
    cfg.update(overrides)
    if "grid_size" not in cfg:
        raise MappingError(
            "grid_size is not stored in the weights and could not be read from the file name or training args; "
            "pass grid_size= / --grid-size (image_size / 16 for VQ-16: 16 for 256px, 24 for 384px, 32 for 512px)"
        )
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise MappingError(f"unknown GPT config fields in overrides: {unknown}")
    try:
        GPTConfig(**cfg).validate()
    except ValueError as e:
        raise MappingError(f"inferred GPT config is invalid: {e}") from None
    # every shape must agree (catches inconsistent files and bad overrides early)
    _check_state_dict(shapes, gpt_torch_shapes(cfg), GPT_IGNORED, "GPT", strict=False)
    return cfg


# --------------------------------------------------------------------------------------------
# VQ
# --------------------------------------------------------------------------------------------

def _vq_config(cfg):
    """A validated `scalingar_jax.vq.VQConfig` from a VQConfig or a dict of its fields."""
    from scalingar_jax.vq import VQConfig

    if isinstance(cfg, VQConfig):
        return cfg.validate()
    if isinstance(cfg, Mapping):
        names = {f.name for f in dataclasses.fields(VQConfig)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown VQ config fields {unknown}; expected a subset of {sorted(names)}")
        return VQConfig(**cfg).validate()
    raise TypeError(f"expected a VQConfig or a dict of its fields, got {type(cfg).__name__}")


def vq_torch_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every PyTorch key of a LlamaGen VQ state dict (except the ignored `quantize.codebook_used`)
    for `cfg` (`scalingar_jax.vq.VQConfig` or a dict of its fields) and its shape."""
    c = dataclasses.asdict(_vq_config(cfg))
    ch, z, emb = c["ch"], c["z_channels"], c["codebook_embed_dim"]
    out: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin, k):
        out[name + ".weight"] = (cout, cin, k, k)
        out[name + ".bias"] = (cout,)

    def norm(name, ch_):
        out[name + ".weight"] = (ch_,)
        out[name + ".bias"] = (ch_,)

    def res(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, ch_):
        norm(name + ".norm", ch_)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", ch_, ch_, 1)

    def mid(prefix, ch_):
        res(prefix + ".mid.0", ch_, ch_)
        attn(prefix + ".mid.1", ch_)
        res(prefix + ".mid.2", ch_, ch_)

    # encoder
    mult = c["ch_mult"]
    n = len(mult)
    conv("encoder.conv_in", ch, c["in_channels"], 3)
    block_in = ch
    for lvl in range(n):
        block_out = ch * mult[lvl]
        for j in range(c["num_res_blocks"]):
            res(f"encoder.conv_blocks.{lvl}.res.{j}", block_in, block_out)
            block_in = block_out
            if lvl == n - 1:
                attn(f"encoder.conv_blocks.{lvl}.attn.{j}", block_in)
        if lvl != n - 1:
            conv(f"encoder.conv_blocks.{lvl}.downsample.conv", block_in, block_in, 3)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", z, block_in, 3)
    # decoder: conv_blocks.0 is the lowest resolution (ch_mult[-1])
    block_in = ch * mult[-1]
    conv("decoder.conv_in", block_in, z, 3)
    mid("decoder", block_in)
    for k, lvl in enumerate(reversed(range(n))):
        block_out = ch * mult[lvl]
        for j in range(c["num_res_blocks"] + 1):
            res(f"decoder.conv_blocks.{k}.res.{j}", block_in, block_out)
            block_in = block_out
            if lvl == n - 1:
                attn(f"decoder.conv_blocks.{k}.attn.{j}", block_in)
        if lvl != 0:
            conv(f"decoder.conv_blocks.{k}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", c["out_channels"], block_in, 3)
    out["quantize.embedding.weight"] = (c["codebook_size"], emb)
    conv("quant_conv", emb, z, 1)
    conv("post_quant_conv", z, emb, 1)
    return out


_INDEXED = re.compile(r"^([A-Za-z_]*[A-Za-z])_(\d+)$")


def vq_torch_key_to_flax(key: str, ndim: int) -> tuple[tuple[str, ...], str]:
    """(Flax path, transform) of a VQ PyTorch key; transform is "conv" (OIHW -> HWIO) or "none".

    ndim is the tensor rank (a 4-D weight is a conv kernel, a 1-D weight a GroupNorm scale)."""
    if key == "quantize.embedding.weight":
        return ("quantize", "embedding"), "none"
    parts = key.split(".")
    path: list[str] = []
    for p in parts[:-1]:
        if p.isdigit():
            if not path:
                raise MappingError(f"VQ key {key!r} starts with an index")
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    leaf = parts[-1]
    if leaf == "bias":
        return tuple(path) + ("bias",), "none"
    if leaf == "weight" and ndim == 4:
        return tuple(path) + ("kernel",), "conv"
    if leaf == "weight" and ndim == 1:
        return tuple(path) + ("scale",), "none"
    raise MappingError(f"no Flax mapping for VQ key {key!r} of rank {ndim}")


def vq_flax_path_to_torch(path: tuple[str, ...]) -> tuple[str, str]:
    """Inverse of `vq_torch_key_to_flax`: (PyTorch key, transform) with transform "conv"
    (HWIO -> OIHW) or "none"."""
    path = tuple(path)
    if path == ("quantize", "embedding"):
        return "quantize.embedding.weight", "none"
    parts = []
    for p in path[:-1]:
        m = _INDEXED.match(p)
        parts += [m.group(1), m.group(2)] if m else [p]
    leaf = path[-1]
    if leaf == "kernel":
        return ".".join(parts + ["weight"]), "conv"
    if leaf == "scale":
        return ".".join(parts + ["weight"]), "none"
    if leaf == "bias":
        return ".".join(parts + ["bias"]), "none"
    raise MappingError(f"no PyTorch name for VQ parameter {'/'.join(path)}")


def vq_flax_shapes(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of the VQ parameter tree for `cfg`."""
    out = {}
    for k, s in vq_torch_shapes(cfg).items():
        path, tr = vq_torch_key_to_flax(k, len(s))
        out[path] = (s[2], s[3], s[1], s[0]) if tr == "conv" else s
    return out


def infer_vq_config(state_dict_or_shapes: Mapping[str, Any], **overrides) -> dict:
    """Infers `scalingar_jax.vq.VQConfig` fields from a LlamaGen VQ state dict's shapes:
    codebook_size / codebook_embed_dim (quantize.embedding), ch and in_channels
    (encoder.conv_in), z_channels (encoder.conv_out), ch_mult (first res block of each encoder
    level; the decoder must agree), num_res_blocks (encoder level 0; the decoder has one more),
    out_channels (decoder.conv_out). GroupNorm's group count is not in the weights: LlamaGen's
    32 unless overridden (`norm_groups=`). Any field may be overridden.

    Returns a dict (`VQConfig(**d)` validates) whose expected shapes match the weights. Raises
    MappingError for a GPT file, inconsistent shapes, or an impossible config.
    """
    from scalingar_jax.vq import VQConfig

    shapes = {k: _shape(v) for k, v in state_dict_or_shapes.items()}
    _expect_kind(shapes, "vq")
    need = ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise MappingError(f"not a complete LlamaGen VQ state dict: missing {', '.join(missing)}")
    cfg: dict[str, Any] = {}
    cfg["codebook_size"], cfg["codebook_embed_dim"] = shapes["quantize.embedding.weight"]
    ch, cfg["in_channels"] = shapes["encoder.conv_in.weight"][:2]
    cfg["ch"] = ch
    cfg["z_channels"] = shapes["encoder.conv_out.weight"][0]
    cfg["out_channels"] = shapes["decoder.conv_out.weight"][0]

    def mults(prefix):
        levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(prefix + r"\.conv_blocks\.(\d+)\.", k))})
        out = []
        for lvl in levels:
            k = f"{prefix}.conv_blocks.{lvl}.res.0.conv1.weight"
            if k not in shapes:
                raise MappingError(f"VQ state dict is missing {k}")
            cout = shapes[k][0]
            if cout % ch:
                raise MappingError(f"{k} has {cout} output channels, not a multiple of ch={ch}")
            out.append(cout // ch)
        return tuple(out)

    enc = mults("encoder")
    dec = mults("decoder")[::-1]  # decoder conv_blocks.0 is the lowest resolution
    if not enc:
        raise MappingError("VQ state dict has no encoder.conv_blocks")
    if enc != dec:
        raise MappingError(f"encoder ch_mult {enc} differs from decoder ch_mult {dec}; VQConfig has one ch_mult")
    cfg["ch_mult"] = enc
    cfg["num_res_blocks"] = len(
        {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
    )
    cfg.update(overrides)
    names = {f.name for f in dataclasses.fields(VQConfig)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise MappingError(f"unknown VQ config fields in overrides: {unknown}")
    try:
        VQConfig(**cfg).validate()
    except ValueError as e:
        hint = " (GroupNorm groups are not stored in the weights: pass norm_groups=; scalingar convert: --set norm_groups=N)" if "norm_groups" in str(e) else ""
        raise MappingError(f"inferred VQ config is invalid: {e}{hint}") from None
    _check_state_dict(shapes, vq_torch_shapes(cfg), VQ_IGNORED, "VQ", strict=False)
    return cfg


def torch_to_flax_vq(state_dict: Mapping[str, Any], cfg, dtype="float32", *, strict: bool = True) -> dict:
    """PyTorch LlamaGen VQ weights -> Flax VQ parameter tree (nested dict of np.ndarray).

    cfg: `scalingar_jax.vq.VQConfig` or a dict of its fields (see `infer_vq_config`). Conv weights (out, in, kh, kw)
    become kernels (kh, kw, in, out); GroupNorm weights become `scale`; `quantize.codebook_used`
    is ignored. Strict like `torch_to_flax_gpt` (MappingError naming keys and shapes; a GPT file
    is reported as such)."""
    _expect_kind(state_dict.keys(), "vq")
    expected = vq_torch_shapes(cfg)
    _check_state_dict(state_dict, expected, VQ_IGNORED, "VQ", strict)
    out_dt = np_dtype(dtype)
    params: dict = {}
    for key, shape in expected.items():
        path, tr = vq_torch_key_to_flax(key, len(shape))
        a = _read(state_dict[key])
        if tr == "conv":
            a = a.transpose(2, 3, 1, 0)
        _set(params, path, np.ascontiguousarray(a, dtype=out_dt or a.dtype))
        del a
    return params


def iter_flax_to_torch_vq(params, cfg, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (PyTorch key, np.ndarray) of a Flax VQ tree in LlamaGen's key order (strict check
    first). The training buffer `quantize.codebook_used` is not produced."""
    expected_torch = vq_torch_shapes(cfg)
    flat = check_flax_tree(params, vq_flax_shapes(cfg), "VQ")
    out_dt = np_dtype(dtype)
    for key, shape in expected_torch.items():
        path, tr = vq_torch_key_to_flax(key, len(shape))
        a = np.asarray(flat[path])
        if tr == "conv":
            a = a.transpose(3, 2, 0, 1)
        yield key, np.ascontiguousarray(a, dtype=out_dt or a.dtype)


def flax_to_torch_vq(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    """The PyTorch LlamaGen VQ state dict (key -> np.ndarray) of a Flax VQ tree."""
    return dict(iter_flax_to_torch_vq(params, cfg, dtype))
