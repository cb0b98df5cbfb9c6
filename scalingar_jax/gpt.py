"""The LlamaGen GPT (c2i and t2i, every preset) in Flax linen, weight compatible with PyTorch.

Sequence layout: `cls_token_num` condition positions, then image tokens in raster order;
position `cls_token_num + k` holds image token k and its logits predict token k + 1. The
condition positions get zero rotary (cos = sin = 0), image token k the 2D rotary of grid cell
(k // g, k % g): the first hd/4 adjacent pairs rotate with the row, the last hd/4 with the
column.

Per-layer parameters are stored stacked on a leading `n_layer` axis (one tree, as `nn.scan`
lays them out: checkpoints, conversion and training use this). Decoding runs the layers in the
layout `decode_layout` gives for the backend (`scalingar_jax.backend`): on a CPU a tuple of
per-layer trees, run unrolled, each layer reading its weights in place (slicing a stacked weight
inside the loop copies it every step on XLA:CPU); on TPU/GPU the stacked tree, run under
`lax.scan` (one layer body to compile instead of n_layer). The KV cache follows the weights:
`prefill` makes a stacked cache for stacked weights. `forward` (training, teacher-forced
scoring) runs stacked weights unrolled and has no KV cache: each layer attends over the keys
and values it has just computed (`Transformer.sequence`).

The KV cache is an explicit pytree `KVCache(k, v, valid)` with fixed shapes: one buffer per
layer (unrolled) or one stacked buffer with a layer axis after the rows (scanned). A call writes
its new keys/values at `start` in place (`dynamic_update_slice`) and attends over the layer's
whole preallocated buffer under a mask, so every decode step has the same shapes. (A stacked
cache read with a dynamic layer index is copied every step on XLA:CPU:
`experiments/bench_attention_layout.py`.)

Parameter tree (PyTorch `a.b` names map to `a/b`, Linear `(out,in)` to kernel `(in,out)`):
  tok_embeddings/embedding (V, dim)
  cls_embedding/embedding_table/embedding (num_classes+1, dim)              [c2i]
  cls_embedding/cap_proj/{fc1,fc2}/kernel, cls_embedding/uncond_embedding   [t2i]
  layers/attention/{wqkv,wo}/kernel, layers/feed_forward/{w1,w2,w3}/kernel,
  layers/{attention_norm,ffn_norm}/weight                                  [stacked over layers]
  norm/weight (dim,), output/kernel (dim, V)
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.backend import backend_config, cpu_only
from scalingar_jax.config import GPTConfig, to_dtype


class KVCache(NamedTuple):
    """k, v: a tuple of n_layer arrays (B, n_kv_head, S, head_dim), one buffer per layer (the
    unrolled layout), or one array (B, n_layer, n_kv_head, S, head_dim) (the scanned layout);
    valid: (B, S) bool, key positions that may be attended to (False for left-padding of the
    caption). Causality comes from positions. Every array has the batch (row) axis first."""

    k: tuple | jax.Array
    v: tuple | jax.Array
    valid: jax.Array

    @property
    def stacked(self) -> bool:
        """True for the scanned layout (one stacked buffer for all layers)."""
        return not isinstance(self.k, (tuple, list))

    def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
        """Layer i's (k, v) buffers (B, n_kv_head, S, head_dim), in either layout."""
        if self.stacked:
            return self.k[:, i], self.v[:, i]
        return self.k[i], self.v[i]

    def map_rows(self, fn) -> KVCache:
        """Applies fn to every array of the cache (each with the row axis first), e.g. a gather
        of rows `lambda x: x[rows]` or a reshape of the row axis."""
        return jax.tree.map(fn, self)


def key_valid(cfg: GPTConfig, batch: int, length: int, cond_mask=None) -> jax.Array:
    """(batch, length) bool: the key positions that may be attended to, False at the padded
    caption positions of `cond_mask` (batch, cls_token_num) (None: all valid)."""
    valid = jnp.ones((batch, length), bool)
    if cond_mask is not None:
        valid = valid.at[:, : cfg.cls_token_num].set(jnp.asarray(cond_mask, bool))
    return valid


def init_cache(cfg: GPTConfig, batch: int, max_len: int | None = None, cond_mask=None, *,
               stacked: bool = False) -> KVCache:
    """Zeroed cache for `batch` rows and `max_len` positions (default `cfg.max_seq_len - 1`):
    one buffer per layer, or with `stacked` one (B, n_layer, ...) buffer (the scanned layout).

    cond_mask: optional (batch, cls_token_num) bool, False at padded caption positions.
    """
    max_len = cfg.max_seq_len - 1 if max_len is None else max_len
    # Heads before positions: attention then reads each head's keys contiguously (on CPU the
    # (S, H) order costs ~4x in the decode step's attention).
    shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
    dt = to_dtype(cfg.dtype)
    valid = key_valid(cfg, batch, max_len, cond_mask)
    if stacked:
        zeros = lambda: jnp.zeros((batch, cfg.n_layer, *shape[1:]), dt)  # noqa: E731
    else:
        zeros = lambda: tuple(jnp.zeros(shape, dt) for _ in range(cfg.n_layer))  # noqa: E731
    return KVCache(zeros(), zeros(), valid)


def layers_stacked(params) -> bool:
    """True if `params["layers"]` is one tree stacked on a leading n_layer axis (the checkpoint
    layout, and the scanned decode layout), False for a tuple of per-layer trees."""
    return not isinstance(params["layers"], (tuple, list))


def rope_2d(cfg: GPTConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (..., S, head_dim // 2) for absolute sequence positions (..., S): (S,)
    shared by all rows or (B, S) per row."""
    quarter = cfg.head_dim // 4
    freqs = 1.0 / (cfg.rope_base ** (jnp.arange(quarter, dtype=jnp.float32) * 2.0 / (cfg.head_dim // 2)))
    k = positions - cfg.cls_token_num
    is_img = k >= 0
    row = jnp.where(is_img, k // cfg.grid_size, 0).astype(jnp.float32)
    col = jnp.where(is_img, k % cfg.grid_size, 0).astype(jnp.float32)
    angles = jnp.concatenate([row[..., None] * freqs, col[..., None] * freqs], axis=-1)
    cos = jnp.where(is_img[..., None], jnp.cos(angles), 0.0)
    sin = jnp.where(is_img[..., None], jnp.sin(angles), 0.0)
    return cos, sin


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent pairs (x[2j], x[2j+1]) of x: (B, S, H, hd) by angles with cos/sin (S, hd/2)
    (shared by all rows) or (B, S, hd/2) (per row)."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[..., None, :], sin[..., None, :]  # (.., S, 1, hd/2): broadcast over heads (and rows)
    out = jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * weight.astype(x.dtype)


class Linear(nn.Module):
    """x @ kernel without bias: nn.Dense's parameter (`kernel` (in, out), normal(0.02) init) and
    arithmetic, but the stored kernel may also be a tuple of column blocks (`split_columns`),
    whose products are independent matmuls that XLA:CPU runs on different cores at once."""

    features: int
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        if self.has_variable("params", "kernel"):
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.param_dtype)
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        dot = lambda b: jax.lax.dot_general(x.astype(self.dtype), b.astype(self.dtype), dims)  # noqa: E731
        if not isinstance(kernel, (tuple, list)):
            return dot(kernel)
        with cpu_only("column_split"):
            return jnp.concatenate([dot(b) for b in kernel], axis=-1)


def _dense(features: int, cfg: GPTConfig, name: str) -> Linear:
    return Linear(features, to_dtype(cfg.dtype), to_dtype(cfg.param_dtype), name=name)


def write_cache(buf: jax.Array, new: jax.Array, start, layer=None) -> jax.Array:
    """Writes new (B, Hkv, S, hd) into buf (B, Hkv, T, hd) at positions start.. in place: start an
    int32 scalar (all rows) or (B,) (each row at its own position). With `layer` (int32 scalar),
    buf is the stacked (B, n_layer, Hkv, T, hd) buffer and the write goes to that layer."""
    new = new.astype(buf.dtype)
    if layer is not None:
        new, lead = new[:, None], (layer,)
    else:
        lead = ()
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice(buf, new, (0, *lead, 0, start, 0))
    return jax.vmap(lambda b, x, t: jax.lax.dynamic_update_slice(b, x, (*lead, 0, t, 0)))(buf, new, start)


def read_cache(buf: jax.Array, layer=None) -> jax.Array:
    """This layer's (B, Hkv, T, hd) buffer: buf itself, or layer `layer` of a stacked buffer."""
    return buf if layer is None else jax.lax.dynamic_index_in_dim(buf, layer, axis=1, keepdims=False)


class Attention(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x, cos, sin, cache_k, cache_v, mask, start, layer=None):
        """x (B, S, dim) at positions start.. (start: scalar or (B,)); cache_k/v: this layer's
        (B, Hkv, T, hd) buffers, or with `layer` (int32 scalar) the stacked (B, L, Hkv, T, hd)
        buffers of all layers, or None (no cache: the keys are x's own S positions, T = S, and
        None is returned for the buffers); mask (B, S, T)."""
        cfg = self.cfg
        B, S, _ = x.shape
        H, Hkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv = _dense((H + 2 * Hkv) * hd, cfg, "wqkv")(x)
        q = qkv[..., : H * hd].reshape(B, S, H, hd)
        k = qkv[..., H * hd : (H + Hkv) * hd].reshape(B, S, Hkv, hd)
        v = qkv[..., (H + Hkv) * hd :].reshape(B, S, Hkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # With a cache: write the new keys/values into this layer's buffer in place, then read the
        # whole buffer. Without (a full sequence): attend over these S positions.
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, Hkv, S, hd)
        if cache_k is None:
            keys, values = k, v
        else:
            cache_k, cache_v = write_cache(cache_k, k, start, layer), write_cache(cache_v, v, start, layer)
            keys, values = read_cache(cache_k, layer), read_cache(cache_v, layer)
        # Query head h uses kv head h // (H // Hkv), as PyTorch's repeat_interleave does.
        qg = q.reshape(B, S, Hkv, H // Hkv, hd)
        scores = jnp.einsum("bsgrd,bgtd->bgrst", qg, keys.astype(q.dtype), preferred_element_type=jnp.float32)
        scores = scores / np.sqrt(hd)
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("bgrst,bgtd->bsgrd", probs, values.astype(q.dtype)).reshape(B, S, H * hd)
        return _dense(cfg.dim, cfg, "wo")(out), cache_k, cache_v


class FeedForward(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x):
        h = self.cfg.ffn_hidden
        return _dense(self.cfg.dim, self.cfg, "w2")(
            nn.silu(_dense(h, self.cfg, "w1")(x)) * _dense(h, self.cfg, "w3")(x)
        )


class Block(nn.Module):
    """One pre-norm transformer block on its own layer's cache buffers."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, x, cos, sin, cache_k, cache_v, mask, start, layer=None):
        pdt = to_dtype(self.cfg.param_dtype)
        h, cache_k, cache_v = Attention(self.cfg, name="attention")(
            RMSNorm(self.cfg.norm_eps, pdt, name="attention_norm")(x), cos, sin, cache_k, cache_v, mask, start, layer
        )
        x = x + h
        x = x + FeedForward(self.cfg, name="feed_forward")(RMSNorm(self.cfg.norm_eps, pdt, name="ffn_norm")(x))
        return x, cache_k, cache_v


def _init_layers(cfg: GPTConfig, key: jax.Array):
    """Stacked parameters of the n_layer blocks (each from its own split of `key`), leading axis n_layer."""
    x = jnp.zeros((1, 1, cfg.dim), to_dtype(cfg.dtype))
    cs = jnp.zeros((1, cfg.head_dim // 2), jnp.float32)
    kv = jnp.zeros((1, cfg.kv_heads, 1, cfg.head_dim), to_dtype(cfg.dtype))
    mask = jnp.ones((1, 1, 1), bool)
    init = lambda k: Block(cfg, parent=None).init(k, x, cs, cs, kv, kv, mask, 0)["params"]  # noqa: E731
    return jax.vmap(init)(jax.random.split(key, cfg.n_layer))


def layer_params(layers, i: int):
    """Layer i's parameter tree: from the stacked tree (leading n_layer axis; a static slice) or
    from a tuple of per-layer trees (`unstack_layers`)."""
    if isinstance(layers, (tuple, list)):
        return layers[i]
    return jax.tree.map(lambda p: p[i], layers)


def unstack_layers(params):
    """params with `layers` as a tuple of n_layer per-layer trees (decode-time layout: no slicing
    of stacked weights inside the token loop). Inverse: `stack_layers`."""
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(layer_params(layers, i) for i in range(n))}


# The decode step's weight matmuls (per layer, and the output projection): what `split_columns` splits.
_SPLIT = (("attention", "wqkv"), ("attention", "wo"), ("feed_forward", "w1"), ("feed_forward", "w2"),
          ("feed_forward", "w3"))


def _map_kernels(params, fn):
    """params with fn applied to the kernel of every `_SPLIT` linear of every layer and of `output`."""
    def layer(t):
        t = {**t}
        for mod, name in _SPLIT:
            t[mod] = {**t[mod], name: {**t[mod][name], "kernel": fn(t[mod][name]["kernel"])}}
        return t

    return {**params, "layers": tuple(layer(t) for t in params["layers"]),
            "output": {**params["output"], "kernel": fn(params["output"]["kernel"])}}


def split_columns(params, n: int):
    """Decode-time layout for XLA:CPU: per-layer params (`unstack_layers` first, if stacked) with
    every weight-matmul kernel (in, out) stored as n column blocks (in, out / n).

    XLA:CPU runs each skinny decode matmul (16 rows) on one core; n independent blocks run on n
    cores at once, so a memory-bound step streams its weights with all of them. Each output
    column is the same dot product as before (bit-identical on the 2-core Xeon of
    experiments/results/step_speed.md). A kernel whose width n does not divide stays whole;
    n = 1 or already split: unchanged. Inverse: `merge_columns`."""
    params = unstack_layers(params)
    if n <= 1:
        return params

    def split(k):
        if isinstance(k, (tuple, list)) or k.shape[-1] % n:
            return k
        w = k.shape[-1] // n
        return tuple(k[:, i * w:(i + 1) * w] for i in range(n))

    return _map_kernels(params, split)


def merge_columns(params):
    """Inverse of `split_columns`: every kernel one (in, out) array again."""
    if not isinstance(params["layers"], (tuple, list)):
        return params
    return _map_kernels(params, lambda k: jnp.concatenate(k, axis=-1) if isinstance(k, (tuple, list)) else k)


def decode_splits(platform: str | None = None) -> int:
    """Column blocks for `split_columns` on `platform` (default: the default backend): 2 on a
    multi-core CPU, else 1 (`backend.backend_config`)."""
    return backend_config(platform).column_splits


def decode_layout(params, platform: str | None = None):
    """The decode loops' parameter layout for `platform` (default: the default backend; the
    choice is `backend.backend_config`'s): stacked layers (`stack_layers`, run under lax.scan)
    where `scan_layers`, else per-layer trees with `split_columns(params, column_splits)`.
    Called outside jit: loaders call it once, so the loops find their layout ready and copy no
    weights; on an already-converted tree it returns it unchanged."""
    backend = backend_config(platform)
    if backend.scan_layers:
        return stack_layers(params)
    return split_columns(params, backend.column_splits)


def stack_layers(params):
    """Inverse of `unstack_layers` (and of `split_columns`): `layers` as one tree stacked on a
    leading n_layer axis, every kernel whole."""
    params = merge_columns(params)
    layers = params["layers"]
    if not isinstance(layers, (tuple, list)):
        return params
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


class LabelEmbedder(nn.Module):
    """c2i: class id -> (B, 1, dim); id `num_classes` is the null class."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, labels, drop):
        labels = jnp.where(drop, self.cfg.num_classes, labels)
        table = nn.Embed(self.cfg.num_classes + 1, self.cfg.dim, dtype=to_dtype(self.cfg.dtype),
                         param_dtype=to_dtype(self.cfg.param_dtype), embedding_init=nn.initializers.normal(0.02),
                         name="embedding_table")
        return table(labels)[:, None, :]


class CaptionMLP(nn.Module):
    """Linear(caption_dim -> dim) -> GELU(tanh) -> Linear(dim -> dim), no biases."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, x):
        x = _dense(self.cfg.dim, self.cfg, "fc1")(x)
        return _dense(self.cfg.dim, self.cfg, "fc2")(nn.gelu(x, approximate=True))


class CaptionEmbedder(nn.Module):
    """t2i: caption features (B, cls, caption_dim) -> (B, cls, dim); dropped rows use uncond_embedding."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, feats, drop):
        cfg = self.cfg
        uncond = self.param("uncond_embedding", nn.initializers.normal(cfg.caption_dim**-0.5),
                            (cfg.cls_token_num, cfg.caption_dim), to_dtype(cfg.param_dtype))
        feats = jnp.where(drop[:, None, None], uncond[None].astype(feats.dtype), feats)
        return CaptionMLP(cfg, name="cap_proj")(feats)


def _attention_mask(positions, valid):
    """(S, T) or (B, S, T) bool: query positions (S,) or (B, S) may attend to key positions
    0..T-1 at or before them where `valid` (B, T) holds, and always to their own position."""
    key_pos = jnp.arange(valid.shape[1])
    causal = key_pos <= positions[..., None]
    return (causal & valid[:, None, :]) | (key_pos == positions[..., None])


class Transformer(nn.Module):
    """LlamaGen GPT. Call `embed_condition`, `embed_tokens`, then `__call__` on embeddings."""

    cfg: GPTConfig

    def setup(self):
        cfg = self.cfg
        self.tok_embeddings = nn.Embed(cfg.vocab_size, cfg.dim, dtype=to_dtype(cfg.dtype),
                                       param_dtype=to_dtype(cfg.param_dtype),
                                       embedding_init=nn.initializers.normal(0.02))
        self.cls_embedding = LabelEmbedder(cfg) if cfg.model_type == "c2i" else CaptionEmbedder(cfg)
        # stacked (n_layer, ...) or, after `unstack_layers`, a tuple of per-layer trees: read as stored
        self.layers = (self.get_variable("params", "layers") if self.has_variable("params", "layers")
                       else self.param("layers", lambda key: _init_layers(cfg, key)))
        self.norm = RMSNorm(cfg.norm_eps, to_dtype(cfg.param_dtype))
        self.output = _dense(cfg.vocab_size, cfg, "output")

    def embed_condition(self, cond, drop):
        """cond: c2i labels (B,) int | t2i features (B, cls, caption_dim); drop (B,) bool -> (B, cls, dim)."""
        return self.cls_embedding(cond, drop).astype(to_dtype(self.cfg.dtype))

    def embed_tokens(self, tokens):
        """tokens (B, S) int32 -> (B, S, dim)."""
        return self.tok_embeddings(tokens)

    def __call__(self, h, cache: KVCache, start):
        """h (B, S, dim) at positions start..start+S-1 -> (logits (B, S, V) float32, cache).
        start: int32 scalar (every row) or (B,) (each row at its own position: rotary, causal
        mask and cache writes per row). The layers run under lax.scan when both the weights and
        the cache are stacked, else unrolled (any other combination)."""
        S = h.shape[1]
        positions = jnp.asarray(start)[..., None] + jnp.arange(S)  # (S,) or (B, S)
        cos, sin = rope_2d(self.cfg, positions)
        mask = _attention_mask(positions, cache.valid)
        block = Block(self.cfg, parent=None)
        if cache.stacked and not isinstance(self.layers, (tuple, list)):  # scanned: one layer body

            def body(carry, layer):
                h, ck, cv = carry
                p, i = layer
                return block.apply({"params": p}, h, cos, sin, ck, cv, mask, start, i), None

            ids = jnp.arange(self.cfg.n_layer, dtype=jnp.int32)
            (h, ks, vs), _ = jax.lax.scan(body, (h, cache.k, cache.v), (self.layers, ids))
        elif cache.stacked:  # per-layer weights over a stacked cache: unrolled, layer i of the buffers
            ks, vs = cache.k, cache.v
            for i in range(self.cfg.n_layer):
                h, ks, vs = block.apply({"params": self.layers[i]}, h, cos, sin, ks, vs, mask, start, i)
        else:  # unrolled: each layer reads and writes its own cache buffers
            ks, vs = [], []
            for i in range(self.cfg.n_layer):
                h, k, v = block.apply({"params": layer_params(self.layers, i)}, h, cos, sin, cache.k[i],
                                      cache.v[i], mask, start)
                ks.append(k)
                vs.append(v)
            ks, vs = tuple(ks), tuple(vs)
        logits = self.output(self.norm(h)).astype(jnp.float32)
        return logits, KVCache(ks, vs, cache.valid)

    def sequence(self, h, valid):
        """h (B, S, dim) at positions 0..S-1 -> logits (B, S, V) float32, without a KV cache
        (training and teacher-forced scoring). valid: (B, S) bool, False at caption padding.
        The logits of `__call__` on an empty cache of S positions (within float rounding)."""
        S = h.shape[1]
        positions = jnp.arange(S)
        cos, sin = rope_2d(self.cfg, positions)
        mask = _attention_mask(positions, valid)
        block = Block(self.cfg, parent=None)
        for i in range(self.cfg.n_layer):
            h, _, _ = block.apply({"params": layer_params(self.layers, i)}, h, cos, sin, None, None, mask, 0)
        return self.output(self.norm(h)).astype(jnp.float32)

    def init_all(self, cond, tokens, cache):
        h = jnp.concatenate([self.embed_condition(cond, jnp.zeros(tokens.shape[0], bool)), self.embed_tokens(tokens)], 1)
        return self(h, cache, 0)


def dummy_condition(cfg: GPTConfig, batch: int):
    """A zero condition of the right shape/dtype: labels (B,) int32 or features (B, cls, caption_dim)."""
    if cfg.model_type == "c2i":
        return jnp.zeros((batch,), jnp.int32)
    return jnp.zeros((batch, cfg.cls_token_num, cfg.caption_dim), to_dtype(cfg.dtype))


def init_params(cfg: GPTConfig, key: jax.Array):
    """Random LlamaGen parameters (normal(0.02) linears/embeddings, ones for norms)."""
    cfg.validate()
    model = Transformer(cfg)
    cache = init_cache(cfg, 1, cfg.cls_token_num + 1)
    variables = model.init(key, dummy_condition(cfg, 1), jnp.zeros((1, 1), jnp.int32), cache, method="init_all")
    return variables["params"]


def param_shapes(cfg: GPTConfig):
    """Parameter ShapeDtypeStructs via `jax.eval_shape` (no memory is allocated)."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def validate_condition(cfg: GPTConfig, cond, cond_mask=None) -> None:
    """Raises a ValueError/TypeError naming the problem if `cond` does not fit `cfg`."""
    shape, dtype = tuple(np.shape(cond)), np.asarray(cond).dtype if not hasattr(cond, "dtype") else cond.dtype
    if cfg.model_type == "c2i":
        if len(shape) != 1:
            raise ValueError(f"c2i condition must be class ids of shape (batch,), got shape {shape}")
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"c2i condition must be integer class ids, got dtype {dtype}")
        if not isinstance(cond, jax.core.Tracer):
            c = np.asarray(cond)
            if c.size and (c.min() < 0 or c.max() >= cfg.num_classes):
                raise ValueError(f"class ids must be in [0, {cfg.num_classes}), got range [{c.min()}, {c.max()}]")
    else:
        want = (cfg.cls_token_num, cfg.caption_dim)
        if len(shape) != 3 or shape[1:] != want:
            raise ValueError(f"t2i condition must have shape (batch, {want[0]}, {want[1]}), got {shape}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"t2i condition must be floating point features, got dtype {dtype}")
        if cond_mask is not None and tuple(np.shape(cond_mask)) != (shape[0], cfg.cls_token_num):
            raise ValueError(
                f"cond_mask must have shape ({shape[0]}, {cfg.cls_token_num}), got {tuple(np.shape(cond_mask))}"
            )
    if shape[0] < 1:
        raise ValueError("condition batch is empty")


def forward(params, cfg: GPTConfig, cond, tokens, cond_mask=None, drop=None):
    """Teacher-forced forward without a KV cache (training, scoring): logits (B, T, V) float32
    predicting tokens (B, T).

    The input is the condition followed by tokens[:, :-1]; logits[:, k] predicts tokens[:, k].
    cond_mask: optional (B, cls_token_num) bool, False at caption padding. drop: optional (B,)
    bool, rows that use the null condition (CFG dropout).
    """
    B, T = tokens.shape
    model = Transformer(cfg)
    drop = jnp.zeros((B,), bool) if drop is None else drop
    valid = key_valid(cfg, B, cfg.cls_token_num + T - 1, cond_mask)

    def run(m):
        h = jnp.concatenate([m.embed_condition(cond, drop), m.embed_tokens(tokens[:, :-1])], axis=1)
        return m.sequence(h, valid)

    logits = nn.apply(run, model)({"params": params})
    return logits[:, cfg.cls_token_num - 1 :]
