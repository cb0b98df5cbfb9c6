"""Decoding as pure functions: `prefill`, `decode_step`, `next_tokens` and a fully jitted `generate`.

Batch layout with CFG (as LlamaGen): the R = B conditional rows first, then the B
unconditional rows. Candidates of a prompt are adjacent: row = prompt * N + candidate.
Image token k sits at sequence position `cls_token_num + k`; the cache holds
`cls_token_num + T - 1` positions because the last token is never fed back.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.config import GPTConfig, SamplingConfig, to_dtype
from scalingar_jax.gpt import KVCache, Transformer, decode_layout, init_cache, layers_stacked, validate_condition
from scalingar_jax.sampling import candidate_keys, filter_logits, greedy_tokens, guided_logits, sample_tokens


def with_cfg_rows(cfg: GPTConfig, cond, cond_mask, use_cfg: bool):
    """Stacks the unconditional half under the conditional one.

    cond: (B,) labels or (B, cls, C) features; cond_mask (B, cls) or None.
    Returns (cond (R,...), cond_mask (R, cls) or None, drop (R,) bool) with R = 2B if use_cfg.
    """
    B = cond.shape[0]
    if not use_cfg:
        return cond, cond_mask, jnp.zeros((B,), bool)
    cond2 = jnp.concatenate([cond, cond], axis=0)
    mask2 = None if cond_mask is None else jnp.concatenate([cond_mask, cond_mask], axis=0)
    return cond2, mask2, jnp.arange(2 * B) >= B


def prefill(params, cfg: GPTConfig, cond, cond_mask=None, *, use_cfg: bool = True, max_len: int | None = None):
    """Runs the condition positions. Returns (logits (R, V) predicting image token 0, cache).

    cond: (B,) int labels (c2i) or (B, cls, caption_dim) left-padded features (t2i);
    cond_mask: (B, cls) bool, False at padded caption positions (t2i only). R = 2B with CFG.
    The cache's layout follows the weights' (`gpt.decode_layout`): stacked layers get a stacked
    cache (layers scanned), per-layer trees one buffer per layer (unrolled).
    """
    cond_all, mask_all, drop = with_cfg_rows(cfg, cond, cond_mask, use_cfg)
    R = cond_all.shape[0]
    cache = init_cache(cfg, R, max_len, mask_all, stacked=layers_stacked(params))

    def run(m):
        logits, new_cache = m(m.embed_condition(cond_all, drop), cache, 0)
        return logits[:, -1], new_cache

    return nn.apply(run, Transformer(cfg))({"params": params})


def prefill_candidates(params, cfg: GPTConfig, cond, cond_mask=None, *, num_candidates: int, use_cfg: bool = True):
    """`prefill` for N candidates of every prompt: the P distinct condition rows (x2 with CFG) are
    run once and their logits and cache rows repeated, not N identical copies run (a t2i caption
    is 120 positions: prefilling the copies cost N times the compute). Returns (logits (R, V),
    cache) in `prefill`'s layout for cond repeated N times (R = 2PN with CFG: rows p*N + n, then
    the unconditional half in the same order). cond (P,) or (P, cls, C); cond_mask (P, cls)."""
    logits, cache = prefill(params, cfg, cond, cond_mask, use_cfg=use_cfg)
    N = int(num_candidates)
    if N == 1:
        return logits, cache
    rows = jnp.repeat(jnp.arange(logits.shape[0], dtype=jnp.int32), N)  # each half's row order: p*N + n
    return logits[rows], cache.map_rows(lambda x: x[rows])


def decode_step(params, cfg: GPTConfig, cache: KVCache, tokens: jax.Array, k: jax.Array):
    """Feeds image token k (tokens (R,) int32) at position cls + k. Returns (logits (R, V) f32, cache).
    k: int32 scalar (every row) or (R,) (each row its own token index)."""

    def run(m):
        logits, new_cache = m(m.embed_tokens(tokens[:, None]), cache, cfg.cls_token_num + k)
        return logits[:, 0], new_cache

    return nn.apply(run, Transformer(cfg))({"params": params})


def split_cfg(logits: jax.Array, use_cfg: bool):
    """(R, V) -> (lc (B, V), lu (B, V)); without CFG lu is lc."""
    if not use_cfg:
        return logits, logits
    B = logits.shape[0] // 2
    return logits[:B], logits[B:]


def guidance_active(sampling: SamplingConfig, k: jax.Array) -> jax.Array:
    """LlamaGen's cfg_interval: token k is guided unless k > cfg_interval + 1 (interval -1: always)."""
    if sampling.cfg_interval < 0:
        return jnp.bool_(True)
    return k <= sampling.cfg_interval + 1


def sampling_logits(sampling: SamplingConfig, lc, lu, scale, k, use_cfg: bool):
    """The distribution token k is drawn from, as filtered logits (B, V) float32.

    scale: per-row guidance scale (B,) (ScalingAR) or a scalar; k: int32 scalar or (B,) (each
    row its own token index).
    """
    if use_cfg:
        on = jnp.asarray(guidance_active(sampling, k))[..., None]
        logits = jnp.where(on, guided_logits(lc, lu, scale), lc.astype(jnp.float32))
    else:
        logits = lc.astype(jnp.float32)
    return filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)


def next_tokens(sampling: SamplingConfig, lc, lu, scale, keys, k, use_cfg: bool, greedy: bool = False):
    """Draws token k for every row: lc/lu (B, V), scale (B,) or scalar, keys (B,), k int32 scalar
    or (B,) -> (B,) int32."""
    logits = sampling_logits(sampling, lc, lu, scale, k, use_cfg)
    return greedy_tokens(logits) if greedy else sample_tokens(keys, k, logits)


def validate_generate_inputs(cfg: GPTConfig, sampling: SamplingConfig, cond, cond_mask, num_candidates: int):
    """Every user-facing check of `generate`, before anything is traced."""
    cfg.validate()
    sampling.validate(cfg.vocab_size)
    if int(num_candidates) < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    validate_condition(cfg, cond, cond_mask)



@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "num_candidates", "greedy"))
def _generate(params, key, cond, cond_mask, prompt_ids, *, cfg, sampling, num_candidates, greedy):
    P, N, T = cond.shape[0], num_candidates, cfg.block_size
    use_cfg = sampling.use_cfg
    keys = candidate_keys(key, prompt_ids, jnp.arange(N)).reshape(P * N)
    logits, cache = prefill_candidates(params, cfg, cond, cond_mask, num_candidates=N, use_cfg=use_cfg)
    scale = jnp.float32(sampling.cfg_scale)

    def body(k, carry):
        logits, cache, tokens = carry
        lc, lu = split_cfg(logits, use_cfg)
        tok = next_tokens(sampling, lc, lu, scale, keys, k, use_cfg, greedy)
        tokens = tokens.at[:, k].set(tok)
        fed = jnp.concatenate([tok, tok]) if use_cfg else tok
        logits, cache = decode_step(params, cfg, cache, fed, k)
        return logits, cache, tokens

    tokens = jnp.zeros((P * N, T), jnp.int32)
    logits, cache, tokens = jax.lax.fori_loop(0, T - 1, body, (logits, cache, tokens))
    lc, lu = split_cfg(logits, use_cfg)
    tokens = tokens.at[:, T - 1].set(next_tokens(sampling, lc, lu, scale, keys, T - 1, use_cfg, greedy))
    return tokens.reshape(P, N, T)


def generate(params, cfg: GPTConfig, cond, *, key: jax.Array, num_candidates: int = 1,
             sampling: SamplingConfig = SamplingConfig(), cond_mask=None, prompt_ids=None,
             greedy: bool = False) -> jax.Array:
    """Plain LlamaGen sampling of N candidates per prompt; the whole token loop is one jit.

    cond: (P,) class ids (c2i) or (P, cls, caption_dim) features (t2i, left padded);
    cond_mask: (P, cls) bool (t2i); prompt_ids: (P,) global prompt ids for key derivation
    (default arange(P)). Returns image tokens (P, N, T) int32, T = grid_size**2.
    """
    validate_generate_inputs(cfg, sampling, cond, cond_mask, num_candidates)
    P = np.shape(cond)[0]
    prompt_ids = jnp.arange(P, dtype=jnp.int32) if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32)
    if cfg.model_type == "t2i":
        cond = jnp.asarray(cond, to_dtype(cfg.dtype))
        cond_mask = None if cond_mask is None else jnp.asarray(cond_mask, bool)
    else:
        cond, cond_mask = jnp.asarray(cond, jnp.int32), None
    params = decode_layout(params)  # this backend's layout (a no-op if the loader laid them out)
    return _generate(params, key, cond, cond_mask, prompt_ids, cfg=cfg, sampling=sampling,
                     num_candidates=int(num_candidates), greedy=greedy)
