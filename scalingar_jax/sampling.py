"""LlamaGen's sampling semantics as pure functions, plus candidate-keyed randomness.

Order (as LlamaGen's generate.py): CFG on raw logits `lu + (lc - lu) * scale`, then
`/ max(temperature, 1e-5)`, then top-k, then top-p, then a categorical draw. A candidate's
key is derived from (prompt id, candidate id) and the step, never from its batch row or device,
so results do not depend on batch position, compaction or sharding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def guided_logits(lc: jax.Array, lu: jax.Array, scale: jax.Array) -> jax.Array:
    """CFG combine: lc, lu (..., V); scale broadcastable to (...) -> (..., V) float32."""
    scale = jnp.asarray(scale, jnp.float32)[..., None]
    return lu.astype(jnp.float32) + (lc.astype(jnp.float32) - lu.astype(jnp.float32)) * scale


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Temperature, then top-k (k = 0: off), then top-p (p = 1: off). (..., V) -> (..., V) float32.

    Filtered entries become -inf. Ties at the k-th value are kept (value threshold), as in
    LlamaGen's top_k_top_p_filtering. top_k/top_p/temperature are static Python numbers.
    """
    logits = logits.astype(jnp.float32) / max(float(temperature), 1e-5)
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cum > top_p
        remove_sorted = jnp.concatenate([jnp.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], axis=-1)
        remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def candidate_keys(key: jax.Array, prompt_ids: jax.Array, candidate_ids: jax.Array) -> jax.Array:
    """Per-candidate keys (P, N) from global prompt ids (P,) and candidate ids (N,)."""
    per_prompt = jax.vmap(lambda p: jax.random.fold_in(key, p))(prompt_ids)
    return jax.vmap(lambda kp: jax.vmap(lambda c: jax.random.fold_in(kp, c))(candidate_ids))(per_prompt)


def sample_tokens(keys: jax.Array, step: jax.Array, logits: jax.Array) -> jax.Array:
    """One categorical draw per row: keys (...,) candidate keys, step scalar, logits (..., V) -> (...,) int32.

    The draw for a row depends only on its candidate key, the step and its logits.
    """
    flat_keys = keys.reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    draw = jax.vmap(lambda k, l: jax.random.categorical(jax.random.fold_in(k, step), l))(flat_keys, flat_logits)
    return draw.reshape(logits.shape[:-1]).astype(jnp.int32)


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """argmax over the vocabulary: (..., V) -> (...,) int32."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
