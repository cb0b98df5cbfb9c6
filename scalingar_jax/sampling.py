"""LlamaGen's sampling semantics as pure functions, plus candidate-keyed randomness.

Order (as LlamaGen's generate.py): CFG on raw logits `lu + (lc - lu) * scale`, then
`/ max(temperature, 1e-5)`, then top-k, then top-p, then a categorical draw. A candidate's
key is derived from (prompt id, candidate id) and the step, never from its batch row or device:
a row's draw is a function of its key, step and logits alone, so wherever the logits are equal
the tokens are, whatever the batch, compaction or sharding (README, "Exactness": the logits
themselves are equal only to float rounding across row counts and CPUs).
Backend-specific ways to compute the same thing (the k-th largest logit, a fusion barrier) are
chosen per platform in `scalingar_jax.backend`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from scalingar_jax.backend import BackendConfig, cpu_only, per_platform


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
        logits = jnp.where(logits < kth_largest(logits, top_k), -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cum > top_p
        remove_sorted = jnp.concatenate([jnp.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], axis=-1)
        remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def _sortable_bits(x: jax.Array) -> jax.Array:
    """float32 -> uint32 whose unsigned order is the float order (-inf < ... < -0 < +0 < ... < inf)."""
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


def _check_k(x, k: int) -> None:
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"k must be in [1, {x.shape[-1]}], got {k}")


def kth_largest(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row, duplicates counted: x (..., V) float32 -> (..., 1),
    by the method `backend.backend_config` names for the platform the program is lowered for:
    `radix_kth_largest` on CPU, `jax.lax.top_k` on TPU/GPU (the same value either way; NaN-free
    x). k: static, 1 <= k <= V."""
    _check_k(x, k)
    return per_platform(_kth_largest, x.astype(jnp.float32), k=int(k))


def _kth_largest(backend: BackendConfig, x, *, k: int):
    if backend.top_k == "radix":
        with cpu_only("radix_select"):
            return radix_kth_largest(x, k)
    return jax.lax.top_k(x, k)[0][..., -1:]


def radix_kth_largest(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row, duplicates counted: x (..., V) float32 -> (..., 1).

    Equal to `jax.lax.top_k(x, k)[0][..., -1:]` (NaN-free x; a +-0 tie may come back with the
    other sign, which no comparison sees) without sorting: a bitwise radix select over the
    order-preserving integer image of the floats, 32 passes of compare-and-count over the row.
    XLA:CPU lowers top_k to a full comparator sort of the row (tens of ms per decode step for
    V = 16384 on a 2-core Xeon); this is ~1 ms. k: static, 1 <= k <= V.
    """
    _check_k(x, k)
    u = _sortable_bits(x.astype(jnp.float32))

    def body(i, t):  # t: the largest threshold with >= k entries at or above it, built from the top bit down
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        count = jnp.sum(u >= cand, axis=-1, keepdims=True, dtype=jnp.int32)
        return jnp.where(count >= k, cand, t)

    t = jax.lax.fori_loop(0, 32, body, jnp.zeros((*x.shape[:-1], 1), jnp.uint32))
    bits = jnp.where((t >> 31) == 1, t & jnp.uint32(0x7FFFFFFF), ~t)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def candidate_keys(key: jax.Array, prompt_ids: jax.Array, candidate_ids: jax.Array) -> jax.Array:
    """Per-candidate keys (P, N) from global prompt ids (P,) and candidate ids (N,)."""
    per_prompt = jax.vmap(lambda p: jax.random.fold_in(key, p))(prompt_ids)
    return jax.vmap(lambda kp: jax.vmap(lambda c: jax.random.fold_in(kp, c))(candidate_ids))(per_prompt)


def sample_tokens(keys: jax.Array, step: jax.Array, logits: jax.Array) -> jax.Array:
    """One categorical draw per row: keys (...,) candidate keys, step an int32 scalar or (...,)
    (each row its own token index), logits (..., V) -> (...,) int32.

    The draw for a row depends only on its candidate key, its step and its logits.
    """
    flat_keys = keys.reshape(-1)
    flat_steps = jnp.broadcast_to(jnp.asarray(step, jnp.int32), keys.shape).reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    # jax.random.categorical's Gumbel-max draw (the same noise, so the same tokens); on CPU the
    # noisy logits are materialised before the argmax (`backend`: fused into the argmax's
    # (value, index) reduction, XLA:CPU evaluates the noise's logs element by element).
    noise = jax.vmap(lambda k, t, l: jax.random.gumbel(jax.random.fold_in(k, t), l.shape, l.dtype))(
        flat_keys, flat_steps, flat_logits)
    draw = first_argmax(per_platform(_sample_barrier, noise + flat_logits))
    return draw.reshape(logits.shape[:-1])


def _sample_barrier(backend: BackendConfig, x):
    if backend.sample_barrier:
        with cpu_only("sample_barrier"):
            return jax.lax.optimization_barrier(x)
    return x


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (first maximum; first NaN if any) as a max and a masked index-min,
    two plain reductions that XLA:CPU vectorises. (..., V) -> (...,) int32."""
    m = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == m) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """argmax over the vocabulary: (..., V) -> (...,) int32."""
    return first_argmax(logits)
