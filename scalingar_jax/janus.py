"""Janus-Pro's text-to-image generator in Flax linen, weight compatible with DeepSeek's release.

What generation uses of `MultiModalityCausalLM` (deepseek-ai/Janus, `janus/models/`):

  language_model.model   a LLaMA decoder as Hugging Face's `LlamaModel` computes it: token
                         embedding, `n_layer` pre-norm blocks (RMSNorm -> attention with GQA and
                         rotate-half RoPE at `rope_base` -> residual; RMSNorm -> SiLU-gated MLP ->
                         residual), a final RMSNorm; Linear layers without biases unless the config
                         says (`attention_bias`, `mlp_bias`). Its `lm_head` is never used.
  gen_embed              Embedding(vocab_size, image_embed_dim): image token -> codebook-sized vector
  gen_aligner            Linear(image_embed_dim -> dim), GELU, Linear(dim -> dim): the next input
  gen_head               Linear(dim -> gen_head_dim), GELU, Linear(-> vocab_size): image logits
  gen_vision_model       LlamaGen's VQ-16 (`scalingar_jax.vq`), a separate model here

GELU is the exact (erf) one, as `torch.nn.GELU()`.

Sequence layout (one row): the prompt's text tokens, LEFT padded to `prompt_len` slots (the
mask marks the real ones; Janus's prompt is BOS ... `<begin_of_image>`), then image tokens in
raster order: slot `prompt_len + k` holds image token k, fed as `gen_aligner(gen_embed(k))`,
and its hidden state predicts token k + 1. Rotary positions count from the row's first real
token (position = slot - left padding), Hugging Face's `position_ids` of the unpadded prompt: a
batch of prompts of different lengths gives each the logits and cached keys it gets alone (RoPE
is relative, so the offset shows in the keys and in float rounding, not in exact logits).
CFG rows: the unconditional row is the same ids with every real token strictly between the
first (BOS) and the last (`<begin_of_image>`) replaced by `pad_id`, attended to (no mask), as
Janus's generation_inference.py builds it.

The engine's model
------------------
`JanusModel(cfg)` is Janus-Pro as the engine's `token_model.TokenModel` (as `decode.GPTModel` is
LlamaGen's): `scaling.engine` runs every strategy, the prompt pool and a mesh through its
`check_condition`, `prefill` (the P conditional rows, then the P unconditional ones), `decode_step`
(feeds image token k of every row: tokens (R,) int32, k an int32 scalar or (R,)), `init_cache` and
`decode_layout` (per-layer trees on every platform); the "janus-pro" bundle loader
(`janus_bundle.pipeline_from_bundle`) hands it to the pipeline. `JanusConfig` is static
configuration only, with the fields `resources.run_memory` and the CLI read (`vocab_size` V,
`grid_size` g, `block_size` T = g*g, `n_layer`, `kv_heads`, `head_dim`, `max_seq_len`,
`cls_token_num` (the condition slots), `dtype`, `model_type` "t2i": text prompts). The cache is the
shared `gpt.KVCache` (per layer (rows, kv_heads, max_len, head_dim) k and v, valid (rows,
max_len)). `MODEL_RULES`: the name rules that split Janus's weights over a model-parallel axis
(`sharding.shard_params(params, mesh, model_axis="model", rules=MODEL_RULES)`; the CLI shards
prompts x candidates only).

Sampling (CFG combine, temperature, top-k/p, draws) works on the logits and is shared:
`decode.next_tokens`. Janus's condition is (ids (P, prompt_len) int32, mask (P, prompt_len)
bool), left padded (`janus_bundle.JanusTokenizer` makes it from text).

Parameter tree (Hugging Face `language_model.model.a.b` -> `a/b`, Linear (out, in) -> kernel
(in, out); `convert.janus` maps the released weights):
  embed_tokens/embedding (text_vocab_size, dim)
  layers/{input_layernorm,post_attention_layernorm}/weight
  layers/self_attn/{q_proj,k_proj,v_proj,o_proj}/kernel [+ bias]
  layers/mlp/{gate_proj,up_proj,down_proj}/kernel [+ bias]          [stacked over layers]
  norm/weight (dim,)
  gen_embed/embedding (vocab_size, image_embed_dim)
  gen_aligner/{fc1,fc2}/{kernel,bias}, gen_head/{proj,out}/{kernel,bias}
Layers are stored stacked on a leading `n_layer` axis (checkpoints, conversion); `decode_layout`
turns them into a tuple of per-layer trees for the token loop, as `gpt.unstack_layers` does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.config import AttentionHeads, check_float, check_int, to_dtype
from scalingar_jax.gpt import KVCache, RMSNorm, layer_params, unstack_layers, write_cache
from scalingar_jax.gpt import init_cache as _gpt_init_cache
from scalingar_jax.token_model import SizesFromConfig

__all__ = ["JanusConfig", "JanusModel", "JANUS_PRESETS", "janus_config", "init_params", "param_shapes", "init_cache",
           "check_condition", "validate_condition", "uncond_ids", "prefill", "prefill_candidates", "decode_step",
           "decode_layout", "rope_cos_sin", "MODEL_RULES"]

# Bounds of the size fields: far above Janus-Pro-7B, low enough that arithmetic on them cannot
# ask for terabytes before a clear error.
_MAX = {"text_vocab_size": 1 << 22, "dim": 65536, "n_layer": 512, "n_head": 1024, "n_kv_head": 1024,
        "ffn_hidden": 1 << 20, "vocab_size": 1 << 22, "image_embed_dim": 4096, "gen_head_dim": 65536,
        "grid_size": 256, "prompt_len": 8192}


@dataclasses.dataclass(frozen=True)
class JanusConfig(AttentionHeads):
    """Janus-Pro's generation path (the defaults are Janus-Pro-1B's; `janus_config("Janus-Pro-7B")`).

    Language model (Hugging Face LlamaConfig name in brackets): text_vocab_size [vocab_size],
    dim [hidden_size], n_layer [num_hidden_layers], n_head [num_attention_heads], n_kv_head
    [num_key_value_heads; None = n_head], ffn_hidden [intermediate_size], norm_eps [rms_norm_eps],
    rope_base [rope_theta], attention_bias, mlp_bias. Generation heads: vocab_size (image codes:
    gen_embed rows, gen_head outputs, the VQ codebook), image_embed_dim (gen_embed width, the
    codebook dimension), gen_head_dim (gen_head's hidden width, `image_token_embed`). Sequence:
    grid_size (T = grid_size**2 image tokens), prompt_len (text slots, prompts left padded),
    pad_id (the tokenizer's pad token, for the unconditional rows)."""

    text_vocab_size: int = 102400
    dim: int = 2048
    n_layer: int = 24
    n_head: int = 16
    n_kv_head: int | None = None
    ffn_hidden: int = 5632
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    vocab_size: int = 16384
    image_embed_dim: int = 8
    gen_head_dim: int = 2048
    grid_size: int = 24
    prompt_len: int = 128
    pad_id: int = 0
    param_dtype: str = "float32"
    dtype: str = "float32"  # activation / compute dtype; logits are always float32
    model_type: ClassVar[str] = "t2i"  # what it is conditioned on: text (not a field; the CLI reads it)

    @property
    def block_size(self) -> int:
        """Image tokens T = grid_size**2."""
        return self.grid_size * self.grid_size

    @property
    def cls_token_num(self) -> int:
        """Condition slots before image token 0: `prompt_len`, as the shared `gpt.init_cache` reads it."""
        return self.prompt_len

    @property
    def max_seq_len(self) -> int:
        """Prompt slots plus image tokens (the last image token is never fed back)."""
        return self.prompt_len + self.block_size

    def validate(self) -> "JanusConfig":
        """Type- and range-checks every field (sizes bounded); returns self."""
        for name, hi in _MAX.items():
            value = getattr(self, name)
            if name != "n_kv_head" or value is not None:
                check_int("JanusConfig", name, value, 1, hi)
        check_int("JanusConfig", "pad_id", self.pad_id, 0, self.text_vocab_size - 1)
        check_float("JanusConfig", "norm_eps", self.norm_eps, 0.0, 1.0, open_lo=True)
        check_float("JanusConfig", "rope_base", self.rope_base, 1.0, 1e12, open_lo=True)
        for name in ("attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"JanusConfig.{name} must be true or false, got {getattr(self, name)!r:.60}")
        if self.dim % self.n_head:
            raise ValueError(f"JanusConfig: dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"JanusConfig: head_dim={self.head_dim} must be even (rotate-half RoPE)")
        if self.n_head % self.kv_heads:
            raise ValueError(f"JanusConfig: n_head={self.n_head} is not divisible by n_kv_head={self.kv_heads}")
        if self.prompt_len < 2:
            raise ValueError(f"JanusConfig.prompt_len must be >= 2 (BOS and <begin_of_image>), got {self.prompt_len}")
        to_dtype(self.param_dtype), to_dtype(self.dtype)
        return self


# Janus-Pro's released language models (config.json `language_config`; the 7B one leaves hidden
# size, width and heads at LlamaConfig's defaults 4096 / 11008 / 32) and generation heads
# (gen_head_config `image_token_embed` = the hidden size; image vocabulary 16384 x 8).
JANUS_PRESETS: dict[str, dict] = {
    "Janus-Pro-1B": dict(dim=2048, n_layer=24, n_head=16, ffn_hidden=5632, gen_head_dim=2048),
    "Janus-Pro-7B": dict(dim=4096, n_layer=30, n_head=32, ffn_hidden=11008, gen_head_dim=4096),
}


def janus_config(name: str, **overrides) -> JanusConfig:
    """A validated `JanusConfig` for "Janus-Pro-1B" or "Janus-Pro-7B" (sizes as released; 24 x 24
    tokens), with field overrides."""
    if name not in JANUS_PRESETS:
        raise ValueError(f"unknown Janus preset {name!r}; available: {', '.join(JANUS_PRESETS)}")
    return JanusConfig(**{**JANUS_PRESETS[name], **overrides}).validate()


# ------------------------------------------------------------------------------ modules
def _linear(features: int, cfg: JanusConfig, name: str, bias: bool) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype),
                    kernel_init=nn.initializers.normal(0.02), name=name)


def rope_cos_sin(cfg: JanusConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Hugging Face Llama's default rotary tables: positions (B, S) int -> cos, sin (B, S, head_dim)
    float32, frequencies rope_base**(-2i/hd) repeated over the two halves."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (jnp.float32(cfg.rope_base) ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin (rotate_half(x) = [-x2, x1] over the halves of the head
    dimension): x (B, S, H, hd), cos/sin (B, S, hd)."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xf * cos[:, :, None] + rotated * sin[:, :, None]
    return out.astype(x.dtype)


class Attention(nn.Module):
    cfg: JanusConfig

    @nn.compact
    def __call__(self, x, cos, sin, cache_k, cache_v, mask, start):
        """x (B, S, dim) at slots start.. (scalar or (B,)); cache_k/v (B, Hkv, T, hd); mask (B, S, T)."""
        cfg = self.cfg
        B, S, _ = x.shape
        H, Hkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        q = _linear(H * hd, cfg, "q_proj", cfg.attention_bias)(x).reshape(B, S, H, hd)
        k = _linear(Hkv * hd, cfg, "k_proj", cfg.attention_bias)(x).reshape(B, S, Hkv, hd)
        v = _linear(Hkv * hd, cfg, "v_proj", cfg.attention_bias)(x).reshape(B, S, Hkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys = cache_k = write_cache(cache_k, k.transpose(0, 2, 1, 3), start)
        values = cache_v = write_cache(cache_v, v.transpose(0, 2, 1, 3), start)
        # query head h reads kv head h // (H // Hkv), as Hugging Face's repeat_kv
        qg = q.reshape(B, S, Hkv, H // Hkv, hd)
        scores = jnp.einsum("bsgrd,bgtd->bgrst", qg, keys.astype(q.dtype), preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, None], scores / np.sqrt(hd), -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("bgrst,bgtd->bsgrd", probs, values.astype(q.dtype)).reshape(B, S, H * hd)
        return _linear(cfg.dim, cfg, "o_proj", cfg.attention_bias)(out), cache_k, cache_v


class MLP(nn.Module):
    cfg: JanusConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _linear(cfg.ffn_hidden, cfg, "gate_proj", cfg.mlp_bias)(x)
        up = _linear(cfg.ffn_hidden, cfg, "up_proj", cfg.mlp_bias)(x)
        return _linear(cfg.dim, cfg, "down_proj", cfg.mlp_bias)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """One LLaMA block on its own layer's cache buffers."""

    cfg: JanusConfig

    @nn.compact
    def __call__(self, x, cos, sin, cache_k, cache_v, mask, start):
        cfg = self.cfg
        pdt = to_dtype(cfg.param_dtype)
        h, cache_k, cache_v = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.norm_eps, pdt, name="input_layernorm")(x), cos, sin, cache_k, cache_v, mask, start)
        x = x + h
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, pdt, name="post_attention_layernorm")(x))
        return x, cache_k, cache_v


class TwoLayerMLP(nn.Module):
    """Linear -> GELU (exact) -> Linear, with biases: gen_aligner (fc1, fc2) and gen_head (proj, out)."""

    cfg: JanusConfig
    hidden: int
    features: int
    names: tuple[str, str]

    @nn.compact
    def __call__(self, x):
        x = _linear(self.hidden, self.cfg, self.names[0], True)(x)
        return _linear(self.features, self.cfg, self.names[1], True)(nn.gelu(x, approximate=False))


def _init_layers(cfg: JanusConfig, key: jax.Array):
    """Stacked parameters of the n_layer blocks (each from its own split of `key`), leading axis n_layer."""
    x = jnp.zeros((1, 1, cfg.dim), to_dtype(cfg.dtype))
    cs = jnp.zeros((1, 1, cfg.head_dim), jnp.float32)
    kv = jnp.zeros((1, cfg.kv_heads, 1, cfg.head_dim), to_dtype(cfg.dtype))
    mask = jnp.ones((1, 1, 1), bool)
    init = lambda k: DecoderLayer(cfg, parent=None).init(k, x, cs, cs, kv, kv, mask, 0)["params"]  # noqa: E731
    return jax.vmap(init)(jax.random.split(key, cfg.n_layer))


class JanusGenerator(nn.Module):
    """Janus-Pro's generation path. `embed_text` / `embed_image` make input embeddings, `__call__`
    runs the decoder on them, `image_logits` maps its output to the image vocabulary."""

    cfg: JanusConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        emb = functools.partial(nn.Embed, dtype=dt, param_dtype=pdt, embedding_init=nn.initializers.normal(1.0))
        self.embed_tokens = emb(cfg.text_vocab_size, cfg.dim)
        # stacked (n_layer, ...) or, after `decode_layout`, a tuple of per-layer trees: read as stored
        self.layers = (self.get_variable("params", "layers") if self.has_variable("params", "layers")
                       else self.param("layers", lambda key: _init_layers(cfg, key)))
        self.norm = RMSNorm(cfg.norm_eps, pdt)
        self.gen_embed = emb(cfg.vocab_size, cfg.image_embed_dim)
        self.gen_aligner = TwoLayerMLP(cfg, cfg.dim, cfg.dim, ("fc1", "fc2"))
        self.gen_head = TwoLayerMLP(cfg, cfg.gen_head_dim, cfg.vocab_size, ("proj", "out"))

    def embed_text(self, ids):
        """ids (B, S) int32 -> (B, S, dim)."""
        return self.embed_tokens(ids)

    def embed_image(self, tokens):
        """Image tokens (B, S) int32 -> the decoder's input (B, S, dim): gen_aligner(gen_embed(tokens))."""
        return self.gen_aligner(self.gen_embed(tokens)).astype(to_dtype(self.cfg.dtype))

    def image_logits(self, h):
        """Final hidden states (B, ..., dim) -> image logits (B, ..., vocab_size) float32."""
        return self.gen_head(h).astype(jnp.float32)

    def __call__(self, h, cache: KVCache, start):
        """h (B, S, dim) at slots start..start+S-1 (start: int32 scalar, or (B,) per row) ->
        (final-normed hidden states (B, S, dim), cache). Rotary positions are the slots minus
        each row's left padding (the False entries of cache.valid[:, :prompt_len])."""
        cfg = self.cfg
        S = h.shape[1]
        slots = jnp.asarray(start)[..., None] + jnp.arange(S)  # (S,) or (B, S)
        pad = cfg.prompt_len - jnp.sum(cache.valid[:, : cfg.prompt_len], axis=1, dtype=jnp.int32)  # (B,)
        cos, sin = rope_cos_sin(cfg, slots - pad[:, None])
        key_slot = jnp.arange(cache.valid.shape[1])
        causal = key_slot <= slots[..., None]  # (S, T) or (B, S, T)
        mask = (causal & cache.valid[:, None, :]) | (key_slot == slots[..., None])  # a slot always sees itself
        block, ks, vs = DecoderLayer(cfg, parent=None), [], []
        for i in range(cfg.n_layer):  # unrolled: each layer reads and writes its own cache buffers
            h, k, v = block.apply({"params": layer_params(self.layers, i)}, h, cos, sin, cache.k[i], cache.v[i],
                                  mask, start)
            ks.append(k)
            vs.append(v)
        return self.norm(h), KVCache(tuple(ks), tuple(vs), cache.valid)

    def init_all(self, ids, tokens, cache):
        h = jnp.concatenate([self.embed_text(ids), self.embed_image(tokens)], axis=1)
        return self.image_logits(self(h, cache, 0)[0])


# ------------------------------------------------------------------------------ parameters
def init_params(cfg: JanusConfig, key: jax.Array):
    """Random parameters (normal(0.02) linears, zero biases, normal(1) embeddings, unit norms) in
    the stored layout (layers stacked)."""
    return _init(cfg.validate(), key)


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: JanusConfig, key: jax.Array):
    cache = init_cache(cfg, 1, 2)
    ids, toks = jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)
    return JanusGenerator(cfg).init(key, ids, toks, cache, method="init_all")["params"]


def param_shapes(cfg: JanusConfig):
    """Parameter ShapeDtypeStructs via `jax.eval_shape` (no memory is allocated)."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def decode_layout(params):
    """The token loops' parameter layout: `layers` as a tuple of per-layer trees (no slicing of
    stacked weights inside the loop). Unchanged if already converted."""
    return unstack_layers(params)


# name pattern -> the dimension split over a model-parallel axis (`sharding.param_specs(params,
# axis, size, rules=MODEL_RULES)`): column-parallel q/k/v and gate/up (output features), row-parallel
# o and down (input features), embeddings and the image head over the vocabulary.
MODEL_RULES: tuple[tuple[str, int], ...] = (
    (r"layers/(\d+/)?self_attn/[qkv]_proj/kernel$", -1),
    (r"layers/(\d+/)?self_attn/o_proj/kernel$", -2),
    (r"layers/(\d+/)?mlp/(gate|up)_proj/kernel$", -1),
    (r"layers/(\d+/)?mlp/down_proj/kernel$", -2),
    (r"embed_tokens/embedding$", 0),
    (r"gen_head/out/kernel$", -1),
    (r"gen_head/out/bias$", -1),
)


# ------------------------------------------------------------------------------ decoding
def init_cache(cfg: JanusConfig, batch: int, max_len: int | None = None, cond_mask=None) -> KVCache:
    """Zeroed cache for `batch` rows and `max_len` slots (default prompt_len + T - 1); cond_mask
    (batch, prompt_len) bool marks the real prompt tokens (False: left padding)."""
    return _gpt_init_cache(cfg, batch, max_len, cond_mask)


def check_condition(cfg: JanusConfig, cond, cond_mask):
    """`validate_condition`, then (ids (P, prompt_len) int32, mask (P, prompt_len) bool) as device arrays."""
    validate_condition(cfg, cond, cond_mask)
    return jnp.asarray(cond, jnp.int32), jnp.asarray(cond_mask, bool)


def validate_condition(cfg: JanusConfig, cond, cond_mask) -> None:
    """Raises ValueError / TypeError naming the problem unless cond is (P, prompt_len) integer
    token ids in [0, text_vocab_size) and cond_mask (P, prompt_len) bool a left padding (False
    then True) with at least two real tokens (BOS ... <begin_of_image>)."""
    shape = tuple(np.shape(cond))
    if len(shape) != 2 or shape[1] != cfg.prompt_len or shape[0] < 1:
        raise ValueError(f"a Janus condition is token ids of shape (prompts, {cfg.prompt_len}), got shape {shape}")
    if not jnp.issubdtype(np.asarray(cond).dtype if not hasattr(cond, "dtype") else cond.dtype, jnp.integer):
        raise TypeError("a Janus condition must be integer token ids")
    if cond_mask is None or tuple(np.shape(cond_mask)) != shape:
        raise ValueError(f"a Janus condition needs its mask of shape {shape} (left padding), got "
                         f"{None if cond_mask is None else tuple(np.shape(cond_mask))}")
    if isinstance(cond, jax.core.Tracer) or isinstance(cond_mask, jax.core.Tracer):
        return
    ids, mask = np.asarray(cond), np.asarray(cond_mask, bool)
    if ids.min() < 0 or ids.max() >= cfg.text_vocab_size:
        raise ValueError(f"token ids must be in [0, {cfg.text_vocab_size}), got [{ids.min()}, {ids.max()}]")
    n = mask.sum(axis=1)
    left_padded = np.all(mask == (np.arange(shape[1]) >= (shape[1] - n)[:, None]), axis=1)
    if not left_padded.all() or n.min() < 2:
        bad = int(np.argmin(left_padded & (n >= 2)))
        raise ValueError(f"prompt {bad}: the mask must be a left padding (False, then True) with at least 2 real "
                         "tokens (BOS ... <begin_of_image>)")


def uncond_ids(cfg: JanusConfig, ids, mask):
    """The unconditional rows of prompts ids / mask (B, prompt_len): every real token strictly
    between the first (BOS) and the last (<begin_of_image>) replaced by `pad_id` (traced)."""
    slot = jnp.arange(ids.shape[1])
    first = ids.shape[1] - jnp.sum(mask, axis=1, dtype=jnp.int32)
    inner = (slot[None] > first[:, None]) & (slot[None] < ids.shape[1] - 1)
    return jnp.where(inner, cfg.pad_id, ids)


def prefill(params, cfg: JanusConfig, cond, cond_mask, *, use_cfg: bool = True, max_len: int | None = None):
    """Runs the prompt slots. Returns (logits (R, vocab_size) float32 predicting image token 0,
    cache). cond: (B, prompt_len) int32 ids, left padded; cond_mask (B, prompt_len) bool.
    R = 2B with CFG (the B conditional rows, then their unconditional rows)."""
    ids, mask = jnp.asarray(cond, jnp.int32), jnp.asarray(cond_mask, bool)
    if use_cfg:
        ids, mask = jnp.concatenate([ids, uncond_ids(cfg, ids, mask)]), jnp.concatenate([mask, mask])
    cache = init_cache(cfg, ids.shape[0], max_len, mask)

    def run(m):
        h, new_cache = m(m.embed_text(ids), cache, 0)
        return m.image_logits(h[:, -1]), new_cache

    return nn.apply(run, JanusGenerator(cfg))({"params": params})


def prefill_candidates(params, cfg: JanusConfig, cond, cond_mask, *, num_candidates: int, use_cfg: bool = True):
    """`prefill` of the P distinct prompts (x2 with CFG), its logits and cache rows repeated for
    N candidates: R = 2PN rows p*N + n, then the unconditional half in the same order."""
    logits, cache = prefill(params, cfg, cond, cond_mask, use_cfg=use_cfg)
    N = int(num_candidates)
    if N == 1:
        return logits, cache
    rows = jnp.repeat(jnp.arange(logits.shape[0], dtype=jnp.int32), N)
    return logits[rows], cache.map_rows(lambda x: x[rows])


def decode_step(params, cfg: JanusConfig, cache: KVCache, tokens: jax.Array, k: jax.Array):
    """Feeds image token k (tokens (R,) int32) at slot prompt_len + k as gen_aligner(gen_embed(token)).
    Returns (logits (R, vocab_size) float32 for token k + 1, cache). k: int32 scalar or (R,)."""

    def run(m):
        h, new_cache = m(m.embed_image(tokens[:, None]), cache, cfg.prompt_len + k)
        return m.image_logits(h[:, 0]), new_cache

    return nn.apply(run, JanusGenerator(cfg))({"params": params})


@dataclasses.dataclass(frozen=True)
class JanusModel(SizesFromConfig):
    """Janus-Pro's generator (`JanusGenerator`) as a `token_model.TokenModel`: the engine's
    prefill, decode step and cache on `cfg` (validated at construction). Hashable: a static
    argument of the engine's jitted pieces. Its decode layout is the same on every platform
    (per-layer trees, the cache one buffer per layer)."""

    cfg: JanusConfig

    def __post_init__(self):
        if not isinstance(self.cfg, JanusConfig):
            raise TypeError(f"JanusModel.cfg must be a JanusConfig, got {type(self.cfg).__name__}")
        self.cfg.validate()

    def check_condition(self, cond, cond_mask):
        """(ids (P, prompt_len) integer, mask (P, prompt_len) bool, left padded) -> device arrays
        (int32, bool); ValueError / TypeError naming the problem (`validate_condition`)."""
        return check_condition(self.cfg, cond, cond_mask)

    def prefill(self, params, cond, cond_mask):
        return prefill(params, self.cfg, cond, cond_mask, use_cfg=True)

    def decode_step(self, params, cache, tokens, k):
        return decode_step(params, self.cfg, cache, tokens, k)

    def init_cache(self, rows: int) -> KVCache:
        return init_cache(self.cfg, rows)  # per-layer buffers, the layout `prefill` gives

    def decode_layout(self, params):
        return decode_layout(params)
