"""Jitted decoding: sampling semantics, compile-once, determinism, candidate-keyed randomness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax import decode, gpt
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.sampling import (candidate_keys, filter_logits, first_argmax, guided_logits, kth_largest,
                                    sample_tokens)

CFG = GPTConfig(model_type="t2i", n_layer=2, n_head=4, n_kv_head=2, dim=32, vocab_size=48, cls_token_num=4,
                caption_dim=8, grid_size=4, multiple_of=16)


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(CFG, jax.random.key(0))


def _cond(P=2):
    rng = np.random.default_rng(0)
    mask = np.ones((P, CFG.cls_token_num), bool)
    mask[1:, :2] = False
    feats = rng.normal(size=(P, CFG.cls_token_num, CFG.caption_dim)).astype(np.float32) * mask[..., None]
    return jnp.asarray(feats), jnp.asarray(mask)


def test_generate_compiles_once_and_is_reproducible(params):
    cond, mask = _cond()
    s = SamplingConfig(cfg_scale=3.0, top_k=8, top_p=0.9)
    before = decode._generate._cache_size()
    a = decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(1), num_candidates=3, sampling=s)
    b = decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(1), num_candidates=3, sampling=s)
    c = decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(2), num_candidates=3, sampling=s)
    assert decode._generate._cache_size() == before + 1  # the second and third call compiled nothing
    assert a.shape == (2, 3, CFG.block_size) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < CFG.vocab_size


def test_decode_step_traces_once_across_steps(params):
    traces = []

    def step(cache, tok, k):
        traces.append(1)
        return decode.decode_step(params, CFG, cache, tok, k)

    jstep = jax.jit(step)
    cond, mask = _cond()
    _, cache = decode.prefill(params, CFG, cond, mask, use_cfg=True)
    tok = jnp.zeros((4,), jnp.int32)
    for k in range(CFG.block_size - 1):
        _, cache = jstep(cache, tok, jnp.int32(k))
    assert len(traces) == 1 and jstep._cache_size() == 1


def test_greedy_is_deterministic_and_key_independent(params):
    cond, mask = _cond()
    s = SamplingConfig(cfg_scale=2.0, top_k=1)
    a = decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(1), num_candidates=2, sampling=s)
    b = decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(7), num_candidates=2, sampling=s)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, 0], a[:, 1])


def test_candidate_results_do_not_depend_on_batch_position(params):
    cond, mask = _cond(3)
    s = SamplingConfig(cfg_scale=2.0)
    key = jax.random.key(3)
    full = decode.generate(params, CFG, cond, cond_mask=mask, key=key, num_candidates=2, sampling=s)
    # Prompt 2 alone, with its global prompt id, gives the same tokens.
    alone = decode.generate(params, CFG, cond[2:], cond_mask=mask[2:], key=key, num_candidates=2, sampling=s,
                            prompt_ids=[2])
    np.testing.assert_array_equal(full[2], alone[0])


def test_cfg_interval_semantics():
    s = SamplingConfig(cfg_interval=3)
    assert [bool(decode.guidance_active(s, k)) for k in range(7)] == [True] * 5 + [False] * 2
    assert bool(decode.guidance_active(SamplingConfig(), 10_000))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 40), st.floats(0.05, 1.0), st.floats(0.1, 3.0), st.integers(0, 2**31 - 1))
def test_filter_logits_keeps_top_k_and_top_p(V, k, p, temp, seed):
    k = min(k, V)
    logits = jax.random.normal(jax.random.key(seed), (V,)) * 3
    out = np.asarray(filter_logits(logits, temp, k, p))
    kept = np.isfinite(out)
    assert kept.any()
    assert kept[int(np.argmax(logits))]
    if 0 < k < V:
        assert kept.sum() <= k + np.sum(np.asarray(logits) == np.sort(np.asarray(logits))[-k]) - 1
    order = np.argsort(-np.asarray(logits))
    # Kept entries are a prefix of the sorted order (both filters keep the most likely tokens).
    assert np.all(np.diff(kept[order].astype(int)) <= 0)
    np.testing.assert_allclose(out[kept], np.asarray(logits)[kept] / max(temp, 1e-5), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_kth_largest_is_top_k_threshold_and_argmax_is_first(V, k, seed):
    """The sort-free k-th largest equals lax.top_k's k-th value (duplicates, -inf, +-0 included);
    first_argmax equals jnp.argmax (ties: first index; NaN: first NaN)."""
    k = min(k, V)
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-np.inf, -0.0, 0.0, 1.5, -2.25, 3e38, -1e-40], np.float32), size=(3, V))
    x[1] = rng.normal(size=V).astype(np.float32) * 10  # distinct values
    want = np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][:, -1:])
    got = np.asarray(kth_largest(jnp.asarray(x), k))
    np.testing.assert_array_equal(got == want, np.ones_like(got, bool))  # -0 == +0
    # jnp.argmax, not np.argmax: XLA:CPU flushes subnormals (-1e-40) to -0, a tie with +0 there
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), -1))
    x[2, V // 2] = np.nan
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), -1))
    with pytest.raises(ValueError, match="k must be"):
        kth_largest(jnp.asarray(x), V + 1)


def test_sample_tokens_are_jax_categorical_draws():
    """The materialised Gumbel-max draw picks exactly what jax.random.categorical picks."""
    keys = candidate_keys(jax.random.key(3), jnp.arange(2), jnp.arange(4))
    logits = filter_logits(jax.random.normal(jax.random.key(1), (2, 4, 500)) * 2, 1.0, 40, 1.0)
    for step in range(5):
        want = jax.vmap(jax.vmap(lambda k, l: jax.random.categorical(jax.random.fold_in(k, step), l)))(keys, logits)
        got = sample_tokens(keys, jnp.int32(step), logits)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, want)


def test_top_p_matches_numpy():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    out = filter_logits(logits, 1.0, 0, 0.75)
    assert np.isfinite(np.asarray(out[0])).tolist() == [True, True, False, False]
    out = filter_logits(logits, 1.0, 0, 0.4)
    assert np.isfinite(np.asarray(out[0])).tolist() == [True, False, False, False]


def test_guided_logits_formula():
    lc, lu = jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 0.0]])
    np.testing.assert_allclose(guided_logits(lc, lu, jnp.array([3.0])), [[2.0, 6.0]])


def test_sample_tokens_depend_on_candidate_key_only():
    keys = candidate_keys(jax.random.key(0), jnp.arange(2), jnp.arange(3))
    logits = jnp.zeros((2, 3, 100))
    a = sample_tokens(keys, jnp.int32(5), logits)
    b = sample_tokens(keys[:, ::-1], jnp.int32(5), logits[:, ::-1])[:, ::-1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad, match", [
    (dict(top_k=-1), "top_k"), (dict(top_k=49), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(cfg_interval=-2), "cfg_interval"),
])
def test_bad_sampling_raises_before_compile(params, bad, match):
    cond, mask = _cond()
    before = decode._generate._cache_size()
    with pytest.raises(ValueError, match=match):
        decode.generate(params, CFG, cond, cond_mask=mask, key=jax.random.key(0), sampling=SamplingConfig(**bad))
    assert decode._generate._cache_size() == before
