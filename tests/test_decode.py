"""Jitted decoding: sampling semantics, compile-once, determinism, candidate-keyed randomness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax import backend, decode, gpt, sampling
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.sampling import (candidate_keys, filter_logits, first_argmax, guided_logits, kth_largest,
                                    radix_kth_largest, sample_tokens)

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


def test_prefill_candidates_is_the_prefill_of_the_repeated_rows(params):
    """The P distinct rows prefilled once and repeated give the layout and values of prefilling
    every candidate's copy (rows p*N + n, then the unconditional half), left padding included."""
    cond, mask = _cond(2)
    N = 3
    logits, cache = decode.prefill_candidates(params, CFG, cond, mask, num_candidates=N, use_cfg=True)
    want, want_cache = decode.prefill(params, CFG, jnp.repeat(cond, N, 0), jnp.repeat(mask, N, 0), use_cfg=True)
    assert logits.shape == want.shape == (2 * 2 * N, CFG.vocab_size)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    for x, y in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache)):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[0], logits[N])  # prompts differ: the repeat is per prompt, not of row 0
    one, _ = decode.prefill_candidates(params, CFG, cond, mask, num_candidates=1, use_cfg=False)
    np.testing.assert_allclose(one, decode.prefill(params, CFG, cond, mask, use_cfg=False)[0], rtol=1e-6)


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


@pytest.mark.exactness
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
    for got in (radix_kth_largest(jnp.asarray(x), k), kth_largest(jnp.asarray(x), k)):
        np.testing.assert_array_equal(np.asarray(got) == want, np.ones_like(want, bool))  # -0 == +0
    # against jnp.argmax, not np.argmax: XLA:CPU flushes the denormal -1e-40 to -0, a tie with +-0
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), -1))
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x))[1], np.argmax(x[1]))  # distinct values
    x[2, V // 2] = np.nan
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), -1))
    with pytest.raises(ValueError, match="k must be"):
        kth_largest(jnp.asarray(x), V + 1)
    with pytest.raises(ValueError, match="k must be"):
        radix_kth_largest(jnp.asarray(x), 0)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_top_k_keeps_every_logit_tied_with_the_kth(platform):
    """LlamaGen's top-k filters `logits < k-th largest value`, so every logit tied with the k-th
    survives: k = 3 keeps five logits here (5, 4 and the three 3s), not three by rank. Both
    per-platform k-th largest methods (`backend`: the CPU's radix select, TPU/GPU's lax.top_k)
    return the tied value, and the draw reaches each tied logit."""
    x = jnp.array([[1.0, 5.0, 3.0, 0.0, 3.0, 4.0, 3.0, -2.0],
                   [2.0, 2.0, 2.0, 2.0, 2.0, -1.0, 7.0, 2.0]])  # row 1: the 2nd to 7th largest tie
    kth = sampling._kth_largest(backend.backend_config(platform), x, k=3)
    np.testing.assert_array_equal(kth, [[3.0], [2.0]])
    kept = np.isfinite(np.asarray(filter_logits(x, 1.0, 3, 1.0)))
    np.testing.assert_array_equal(kept, np.asarray(x) >= np.asarray(kth))
    assert kept.sum(1).tolist() == [5, 7]
    # 400 draws from row 0 with 3s shifted up to tie with 4: every kept logit is drawn
    flat = jnp.asarray([[1.0, 4.0, 4.0, 0.0, 4.0, 4.0, 4.0, -2.0]]).repeat(400, 0)
    toks = sample_tokens(candidate_keys(jax.random.key(0), jnp.arange(1), jnp.arange(400))[0], jnp.int32(0),
                         filter_logits(flat, 1.0, 2, 1.0))
    assert set(np.asarray(toks).tolist()) == {1, 2, 4, 5, 6}


@pytest.mark.exactness
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_a_draw_depends_only_on_its_key_step_and_logit_rows(seed):
    """`decode.next_tokens` (CFG combine at a per-row scale, temperature, top-k with ties, top-p,
    the Gumbel draw at a per-row step) of a row is a function of its key, step, scale and logit
    rows alone: the same rows drawn in other batches (reordered, fewer, among other rows, one)
    give the same tokens bit for bit. So compacted, pooled, split and sharded runs draw the same
    tokens wherever their logits are equal (README, "Exactness")."""
    rng = np.random.default_rng(seed)
    R, V = 12, 300
    lc = (rng.normal(size=(R, V)) * 3).astype(np.float32)
    lc[:, 10:20] = lc[:, 10:11]  # a run of tied logits, often around the k-th
    lu = (lc + rng.normal(size=(R, V))).astype(np.float32)
    scale = rng.uniform(1.0, 5.0, R).astype(np.float32)
    steps = rng.integers(0, 256, R).astype(np.int32)
    keys = candidate_keys(jax.random.key(seed), jnp.arange(3), jnp.arange(4)).reshape(R)
    s = SamplingConfig(cfg_scale=4.0, temperature=0.9, top_k=int(rng.integers(1, 60)), top_p=0.95)
    draw = jax.jit(lambda *a: decode.next_tokens(s, *a, use_cfg=True))
    full = np.asarray(draw(lc, lu, scale, keys, steps))
    other = rng.integers(0, R, 8)  # filler rows: other candidates' rows in the same batch
    perm = rng.permutation(R)
    for rows, pad in ((perm, []), (perm[:5], []), (perm[:1], []), (perm[:7], other)):
        idx = np.concatenate([rows, pad]).astype(int)
        got = np.asarray(draw(lc[idx], lu[idx], scale[idx], keys[idx], steps[idx]))
        np.testing.assert_array_equal(got[: len(rows)], full[rows])


@pytest.mark.exactness
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


@pytest.mark.exactness
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
