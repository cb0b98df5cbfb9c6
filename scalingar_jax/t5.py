"""T5 v1.1 encoder (as used by flan-t5) in Flax linen, plus a torch-free HF weight loader.

LlamaGen's t2i models are conditioned on the last hidden state of the flan-t5-xl encoder
(120 x 2048). This module reproduces that encoder exactly (float32 on CPU):

- shared token embedding (no scaling);
- ``num_layers`` pre-norm blocks: ``h += attn(LN(h))``, ``h += ffn(LN(h))``;
- T5 LayerNorm = RMSNorm without mean subtraction and without bias, computed in float32,
  ``x * rsqrt(mean(x^2) + eps) * weight``;
- self-attention with q, k, v, o projections without biases and WITHOUT the 1/sqrt(d_kv)
  scaling (T5 folds it into the initialisation); a relative position bias, owned by the
  first block (``relative_attention_bias``, one scalar per (bucket, head)), is added to the
  logits of every layer; padded keys are masked;
- gated-GELU FFN for v1.1 (``feed_forward_proj = "gated-gelu"``):
  ``wo(gelu_tanh(wi_0 x) * wi_1 x)``; the legacy ``"relu"`` (T5 v1.0) form ``wo(relu(wi x))``
  is also supported;
- a final LayerNorm; dropout is always off (inference only).

Parameter tree (``params`` as returned by :func:`init_params` / :func:`load_hf_t5_encoder`)::

    shared/embedding                      (vocab_size, d_model)
    relative_attention_bias/embedding     (num_buckets, num_heads)
    block_{i}/attn_norm/scale             (d_model,)
    block_{i}/attn/{q,k,v}/kernel         (d_model, num_heads * d_kv)
    block_{i}/attn/o/kernel               (num_heads * d_kv, d_model)
    block_{i}/ffn_norm/scale              (d_model,)
    block_{i}/ffn/{wi_0,wi_1}/kernel      (d_model, d_ff)      (gated; ``wi`` when not gated)
    block_{i}/ffn/wo/kernel               (d_ff, d_model)
    final_layer_norm/scale                (d_model,)
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.convert.hf import check_layer_count, params_from_state_dict, read_json, read_weights

__all__ = [
    "T5Config",
    "T5_PRESETS",
    "T5Encoder",
    "relative_position_bucket",
    "init_params",
    "encode",
    "convert_hf_t5_encoder",
    "load_hf_t5_encoder",
    "read_hf_t5_folder",
]

_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Static configuration of a T5 encoder (hashable; usable as a jit static argument).

    ``feed_forward_proj`` follows HF: ``"gated-gelu"`` (T5 v1.1 / flan-t5: gelu with the tanh
    approximation, HF's ``gelu_new``), ``"relu"`` (T5 v1.0), or ``"[gated-]{relu,gelu,silu}"``
    (plain ``gelu`` is the exact erf form, as in HF).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {v!r}")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be even and >= 4 (bidirectional "
                f"buckets), got {self.relative_attention_num_buckets}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        self.activation  # validates feed_forward_proj

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        """Name of the FFN activation: one of relu, gelu (erf), gelu_new (tanh), silu."""
        parts = str(self.feed_forward_proj).split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"T5Config.feed_forward_proj must be '{{act}}' or 'gated-{{act}}', got "
                f"{self.feed_forward_proj!r}")
        act = parts[-1]
        if self.feed_forward_proj == "gated-gelu":  # HF: T5 v1.1 uses the tanh approximation
            act = "gelu_new"
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"T5Config.feed_forward_proj {self.feed_forward_proj!r}: unsupported activation "
                f"{act!r} (supported: {', '.join(_ACTIVATIONS)})")
        return act

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "T5Config":
        """Build from a HF T5 ``config.json`` dict (encoder part; decoder fields are ignored).

        Raises ``ValueError`` for a non-T5 ``model_type`` or a missing required field.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"from_hf_config expects a dict, got {type(config).__name__}")
        model_type = config.get("model_type", "t5")
        if model_type not in ("t5", "mt5", "umt5"):
            raise ValueError(f"not a T5 config: model_type={model_type!r}")
        required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"T5 config.json is missing required field(s): {missing}")
        defaults = cls()
        return cls(
            vocab_size=int(config["vocab_size"]),
            d_model=int(config["d_model"]),
            d_kv=int(config["d_kv"]),
            d_ff=int(config["d_ff"]),
            num_layers=int(config["num_layers"]),
            num_heads=int(config["num_heads"]),
            relative_attention_num_buckets=int(config.get(
                "relative_attention_num_buckets", defaults.relative_attention_num_buckets)),
            relative_attention_max_distance=int(config.get(
                "relative_attention_max_distance", defaults.relative_attention_max_distance)),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon",
                                                defaults.layer_norm_epsilon)),
            # HF's own default for a config.json without the field is "relu" (T5 v1.0).
            feed_forward_proj=str(config.get("feed_forward_proj", "relu")),
        )


T5_PRESETS: dict[str, T5Config] = {
    # google/flan-t5-xl: the text encoder of LlamaGen t2i (caption_dim 2048).
    "flan-t5-xl": T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                           num_heads=32, relative_attention_num_buckets=32,
                           relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                           feed_forward_proj="gated-gelu"),
}


# ----------------------------------------------------------------------------- modules

def relative_position_bucket(relative_position, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """Bidirectional T5 relative-position bucket of ``memory_pos - query_pos`` (host numpy).

    Args:
      relative_position: int array-like, any shape (key position minus query position).
      num_buckets, max_distance: ints (``num_buckets`` even).
    Returns:
      np.int32 array of the same shape with values in ``[0, num_buckets)``. Half of the
      buckets hold positive offsets (key after query). In each half (h = num_buckets / 2),
      offsets ``|r| < h/2`` get their own bucket; larger ones are binned logarithmically,
      ``h/2 + trunc(log(|r| / (h/2)) / log(max_distance / (h/2)) * h/2)`` in float32 as in
      the reference, capped at ``h - 1`` (so every ``|r|`` beyond about ``max_distance``
      shares the last bucket of its half).

    Runs on the host in numpy: sequence lengths are static, so the encoder computes its
    bucket table at trace time and the result cannot depend on a device's ``log``.
    """
    rp = np.asarray(relative_position)
    if not np.issubdtype(rp.dtype, np.integer):
        raise TypeError(f"relative_position must be integer, got dtype {rp.dtype}")
    rp = rp.astype(np.int64)
    half = int(num_buckets) // 2
    max_exact = half // 2
    base = np.where(rp > 0, half, 0)
    n = np.abs(rp)
    nf = np.maximum(n, 1).astype(np.float32)
    large = max_exact + (np.log(nf / np.float32(max_exact))
                         / np.float32(math.log(max_distance / max_exact))
                         * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (base + np.where(n < max_exact, n, large)).astype(np.int32)


class T5LayerNorm(nn.Module):
    """T5 LayerNorm: no mean subtraction, no bias; statistics in float32. (..., D) -> (..., D)."""

    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        var = jnp.mean(xf * xf, axis=-1, keepdims=True)
        y = xf * jax.lax.rsqrt(var + self.eps)
        return (y * scale).astype(self.dtype)


def _dense(features: int, name: str, dtype, precision):
    return nn.Dense(features, use_bias=False, name=name, dtype=dtype, param_dtype=jnp.float32,
                    precision=precision)


def _activation(name: str, x):
    if name == "relu":
        return jax.nn.relu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_new":
        return jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu(x)
    raise ValueError(f"unsupported activation {name!r}")


class T5Attention(nn.Module):
    cfg: T5Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias):
        """x (B, L, D); bias (B or 1, H, L, L) float32 (position bias + key mask) -> (B, L, D)."""
        c = self.cfg
        b, l, _ = x.shape
        q = _dense(c.inner_dim, "q", self.dtype, self.precision)(x)
        k = _dense(c.inner_dim, "k", self.dtype, self.precision)(x)
        v = _dense(c.inner_dim, "v", self.dtype, self.precision)(x)
        q, k, v = (t.reshape(b, l, c.num_heads, c.d_kv) for t in (q, k, v))
        # No 1/sqrt(d_kv): T5 folds the scale into the initialisation of q.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision)
        logits = logits.astype(jnp.float32) + bias
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v, precision=self.precision)
        o = o.reshape(b, l, c.inner_dim)
        return _dense(c.d_model, "o", self.dtype, self.precision)(o)


class T5FFN(nn.Module):
    cfg: T5Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        if c.is_gated:
            h = (_activation(c.activation, _dense(c.d_ff, "wi_0", self.dtype, self.precision)(x))
                 * _dense(c.d_ff, "wi_1", self.dtype, self.precision)(x))
        else:
            h = _activation(c.activation, _dense(c.d_ff, "wi", self.dtype, self.precision)(x))
        return _dense(c.d_model, "wo", self.dtype, self.precision)(h)


class T5Block(nn.Module):
    cfg: T5Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias):
        eps = self.cfg.layer_norm_epsilon
        h = T5LayerNorm(eps, self.dtype, name="attn_norm")(x)
        x = x + T5Attention(self.cfg, self.dtype, self.precision, name="attn")(h, bias)
        h = T5LayerNorm(eps, self.dtype, name="ffn_norm")(x)
        return x + T5FFN(self.cfg, self.dtype, self.precision, name="ffn")(h)


class T5Encoder(nn.Module):
    """T5 encoder stack. ``(input_ids (B, L) int, attention_mask (B, L)) -> (B, L, d_model)``.

    ``dtype`` is the compute dtype of the matmuls (params stay float32; LayerNorm statistics
    and softmax are float32); the output is always float32.
    """

    cfg: T5Config
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        c = self.cfg
        emb = nn.Embed(c.vocab_size, c.d_model, name="shared", param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(1.0))
        x = emb(input_ids).astype(self.dtype)
        l = input_ids.shape[1]
        pos = np.arange(l)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None],
                                           c.relative_attention_num_buckets,
                                           c.relative_attention_max_distance)  # (Lq, Lk) numpy
        rel = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                       name="relative_attention_bias", param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(1.0))
        # Computed once (HF: owned by block 0) and shared by every layer.
        pos_bias = jnp.transpose(rel(jnp.asarray(buckets)), (2, 0, 1))[None].astype(jnp.float32)
        key_ok = attention_mask.astype(bool)[:, None, None, :]
        bias = pos_bias + jnp.where(key_ok, 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_layers):
            x = T5Block(c, self.dtype, self.precision, name=f"block_{i}")(x, bias)
        x = T5LayerNorm(c.layer_norm_epsilon, jnp.float32, name="final_layer_norm")(x)
        return x.astype(jnp.float32)


# ----------------------------------------------------------------------------- functions

def init_params(key: jax.Array, cfg: T5Config) -> dict:
    """Random float32 params for ``cfg`` (for tests; real weights come from HF)."""
    ids = jnp.zeros((1, 4), jnp.int32)
    return jax.jit(T5Encoder(cfg).init)(key, ids, jnp.ones((1, 4), bool))["params"]


def _check_inputs(cfg: T5Config, input_ids, attention_mask):
    ids_shape = np.shape(input_ids)
    if len(ids_shape) != 2:
        raise ValueError(f"input_ids must have shape (B, L), got {ids_shape}")
    if attention_mask is not None and np.shape(attention_mask) != ids_shape:
        raise ValueError(f"attention_mask shape {np.shape(attention_mask)} != input_ids shape "
                         f"{ids_shape}")
    if not isinstance(input_ids, jax.core.Tracer):
        a = np.asarray(input_ids)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"input_ids must be integer, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= cfg.vocab_size):
            raise ValueError(f"input_ids out of range [0, {cfg.vocab_size}): "
                             f"min {a.min()}, max {a.max()}")


def encode(params, cfg: T5Config, input_ids, attention_mask=None, *, dtype=jnp.float32,
           precision=None) -> jax.Array:
    """Run the T5 encoder.

    Args:
      params: parameter tree (see module docstring).
      cfg: T5Config.
      input_ids: (B, L) int32 token ids (pad id 0 where masked).
      attention_mask: (B, L) bool/int, 1 = real token; None = all ones. Masked positions are
        hidden as keys; their own outputs are still computed (as in HF) and are NOT zeroed.
      dtype: matmul compute dtype (float32 default; bfloat16 for speed on accelerators).
      precision: jax.lax.Precision for matmuls (None = backend default; on GPU/TPU pass
        ``jax.lax.Precision.HIGHEST`` for exact float32).
    Returns:
      (B, L, d_model) float32 last hidden state (after the final LayerNorm).
    """
    _check_inputs(cfg, input_ids, attention_mask)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, bool)
    return _encode_jit(params, input_ids, jnp.asarray(attention_mask).astype(bool), cfg=cfg,
                       dtype=jnp.dtype(dtype), precision=precision)


def _encode_impl(params, input_ids, attention_mask, *, cfg, dtype, precision):
    return T5Encoder(cfg, dtype, precision).apply({"params": params}, input_ids,
                                                  attention_mask)


_encode_jit = jax.jit(_encode_impl, static_argnames=("cfg", "dtype", "precision"))


# ----------------------------------------------------------------------------- HF weights

def _hf_key_map(cfg: T5Config) -> dict[tuple[str, ...], tuple[str, tuple[int, ...], bool]]:
    """Flax param path -> (HF key, HF (torch) shape, transpose?)."""
    d, inner, ff, h = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.num_heads
    m: dict[tuple[str, ...], tuple[str, tuple[int, ...], bool]] = {
        ("shared", "embedding"): ("shared.weight", (cfg.vocab_size, d), False),
        ("relative_attention_bias", "embedding"): (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (cfg.relative_attention_num_buckets, h), False),
        ("final_layer_norm", "scale"): ("encoder.final_layer_norm.weight", (d,), False),
    }
    ffn_in = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
    for i in range(cfg.num_layers):
        p = f"encoder.block.{i}.layer"
        b = f"block_{i}"
        m[(b, "attn_norm", "scale")] = (f"{p}.0.layer_norm.weight", (d,), False)
        for n in ("q", "k", "v"):
            m[(b, "attn", n, "kernel")] = (f"{p}.0.SelfAttention.{n}.weight", (inner, d), True)
        m[(b, "attn", "o", "kernel")] = (f"{p}.0.SelfAttention.o.weight", (d, inner), True)
        m[(b, "ffn_norm", "scale")] = (f"{p}.1.layer_norm.weight", (d,), False)
        for n in ffn_in:
            m[(b, "ffn", n, "kernel")] = (f"{p}.1.DenseReluDense.{n}.weight", (ff, d), True)
        m[(b, "ffn", "wo", "kernel")] = (f"{p}.1.DenseReluDense.wo.weight", (d, ff), True)
    return m


def convert_hf_t5_encoder(state_dict: Mapping[str, Any], cfg: T5Config) -> dict:
    """Map a HF T5 / T5EncoderModel state dict to the Flax params of :class:`T5Encoder`.

    Only encoder keys are read (decoder / lm_head keys are ignored). The token embedding is
    taken from ``shared.weight`` or, if absent, ``encoder.embed_tokens.weight``. Torch Linear
    weights ``(out, in)`` are transposed to Flax kernels ``(in, out)``; everything becomes
    float32 numpy. Raises ``KeyError`` naming a missing key, ``ValueError`` naming a key whose
    shape differs from ``cfg``.
    """
    sd = dict(state_dict)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    if "shared.weight" not in sd:
        raise KeyError("HF T5 checkpoint has no token embedding: neither shared.weight nor "
                       "encoder.embed_tokens.weight")
    return params_from_state_dict(sd, _hf_key_map(cfg), what="HF T5 checkpoint (encoder)",
                                  config=str(cfg))


def _is_encoder_key(k: str) -> bool:
    return k.startswith("encoder.") or k == "shared.weight"


def load_hf_t5_encoder(directory: str | os.PathLike) -> tuple[dict, T5Config]:
    """Load the encoder of a local HF (flan-)T5 checkpoint directory, without torch.

    Reads ``config.json`` and the weights (``model.safetensors``, sharded
    ``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json``, or
    ``pytorch_model.bin`` [+ index]). Returns ``(params, cfg)`` with float32 numpy params
    (see the module docstring for the tree). Strict: a missing encoder key raises
    ``KeyError``; a wrong shape raises ``ValueError`` naming the key and both shapes.
    """
    cfg, weights = read_hf_t5_folder(directory)
    return convert_hf_t5_encoder(weights, cfg), cfg


def read_hf_t5_folder(directory: str | os.PathLike) -> tuple[T5Config, dict]:
    """(config, encoder weights as lazy tensors: nothing read) of a HF T5 folder, the config
    checked against the weights' names (`num_layers` = the encoder blocks they hold) before
    anything is built from it. FileNotFoundError / ValueError naming the folder otherwise."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"not a directory: {directory}")
    cfg = T5Config.from_hf_config(read_json(directory, "config.json"))
    weights = read_weights(directory, _is_encoder_key)
    check_layer_count(weights, r"encoder\.block\.(\d+)\.", cfg.num_layers,
                      where=os.path.join(directory, "config.json"), field="num_layers")
    return cfg, weights
