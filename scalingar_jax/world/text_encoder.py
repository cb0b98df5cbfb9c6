"""A small bidirectional text encoder for the shapes world, standing in for flan-t5.

LlamaGen's t2i GPT gives its condition positions zero rotary, so a query cannot select among
condition tokens: it sees their values averaged. Caption features must therefore be
CONTEXTUAL (each row carries the whole prompt's meaning, as T5's hidden states do). This
encoder is a pre-norm transformer with learned position embeddings and a key-padding mask;
its output rows at padded slots are exactly zero, matching LlamaGen's left-padded captions.

Shapes: word ids (B, L) int32, left padded (valid tokens at the END); mask (B, L) bool;
features (B, L, out_dim) float32.

Parameter tree: tok_emb/embedding (V, dim), pos_emb (L, dim), layers_{i}/{ln1,ln2,attn,mlp_*},
ln_f, proj/kernel (dim, out_dim).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """Static shape of the text encoder. Hashable, usable as a jit static argument."""

    vocab_size: int = 28
    max_len: int = 16
    dim: int = 128
    n_layer: int = 2
    n_head: int = 4
    out_dim: int = 128

    def validate(self) -> "TextEncoderConfig":
        for name in ("vocab_size", "max_len", "dim", "n_layer", "n_head", "out_dim"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TextEncoderConfig.{name} must be a positive int, got {v!r}")
        if self.dim % self.n_head:
            raise ValueError(f"TextEncoderConfig.dim={self.dim} is not divisible by n_head={self.n_head}")
        return self


def default_text_config(**overrides) -> TextEncoderConfig:
    """The shapes-world vocabulary and prompt length, with optional overrides."""
    from scalingar_jax.world.vocab import MAX_PROMPT_LEN, VOCAB_SIZE

    base = dict(vocab_size=VOCAB_SIZE, max_len=MAX_PROMPT_LEN)
    base.update(overrides)
    return TextEncoderConfig(**base).validate()


class _Layer(nn.Module):
    dim: int
    n_head: int

    @nn.compact
    def __call__(self, x, mask):
        # Key-padding mask; every query may attend to itself so no row is fully masked.
        L = x.shape[1]
        attn_mask = mask[:, None, None, :] | jnp.eye(L, dtype=bool)[None, None]
        h = nn.LayerNorm(name="ln1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.n_head, qkv_features=self.dim, out_features=self.dim,
                                            deterministic=True, name="attn")(h, h, mask=attn_mask)
        x = x + h
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.Dense(4 * self.dim, name="mlp_in")(h)
        h = nn.Dense(self.dim, name="mlp_out")(nn.gelu(h, approximate=True))
        return x + h


class TextEncoder(nn.Module):
    cfg: TextEncoderConfig

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.cfg
        x = nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=nn.initializers.normal(0.02), name="tok_emb")(ids)
        pos = self.param("pos_emb", nn.initializers.normal(0.02), (cfg.max_len, cfg.dim))
        x = x + pos[None, : ids.shape[1]]
        for i in range(cfg.n_layer):
            x = _Layer(cfg.dim, cfg.n_head, name=f"layers_{i}")(x, mask)
        x = nn.LayerNorm(name="ln_f")(x)
        x = nn.Dense(cfg.out_dim, use_bias=False, name="proj")(x)
        return jnp.where(mask[..., None], x, 0.0).astype(jnp.float32)


def init_text_params(cfg: TextEncoderConfig, key: jax.Array):
    """Random parameters of the text encoder (a pytree of float32 arrays)."""
    cfg.validate()
    ids = jnp.ones((1, cfg.max_len), jnp.int32)
    return TextEncoder(cfg).init(key, ids, jnp.ones((1, cfg.max_len), bool))["params"]


def encode_ids(params, cfg: TextEncoderConfig, ids, mask) -> jax.Array:
    """ids (B, L<=max_len) int32 left padded, mask (B, L) bool -> features (B, L, out_dim) float32.

    Rows where mask is False are exactly zero. Traceable (usable inside jit/grad).
    """
    return TextEncoder(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool))


_encode_jit = jax.jit(encode_ids, static_argnums=1)


def encode_prompts(params, cfg: TextEncoderConfig, prompts: list[str]):
    """Tokenizes and encodes prompts with the shapes-world tokenizer.

    Returns (features (B, max_len, out_dim) float32, mask (B, max_len) bool). Errors for an
    empty prompt, out-of-vocabulary words or a too-long prompt come from `vocab.tokenize`.
    """
    from scalingar_jax.world.vocab import tokenize

    cfg.validate()
    ids, mask = tokenize(prompts, cfg.max_len)
    if ids.size and ids.max() >= cfg.vocab_size:
        raise ValueError(f"token id {int(ids.max())} outside the encoder vocabulary of {cfg.vocab_size}")
    return _encode_jit(params, cfg, ids, mask), jnp.asarray(mask)
