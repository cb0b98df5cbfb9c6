"""Strategies: compaction == masking, token accounting, compile-once per bucket, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategy_runs import run

from scalingar_jax import gpt
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.decode import GPTModel
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling import engine as E
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling import strategies as S

from exactness import FLOAT_TOL, assert_same_outcomes

CFG = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=3, caption_dim=4,
                grid_size=4, multiple_of=16)
SAMPLING = SamplingConfig(cfg_scale=3.0)
# Aggressive gate so that a 16-token run prunes enough to cross bucket boundaries.
AGGRESSIVE = ScalingARConfig(p=0.9, probation_steps=1, rebound_threshold=10.0, warmup_frac=0.125, lam_theta=1.0)


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(CFG, jax.random.key(0))


def _cond(P=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (P, CFG.cls_token_num, CFG.caption_dim))


def _fake_decode(tokens):
    t = np.asarray(tokens)
    return np.broadcast_to((t.sum(1) % 256).astype(np.uint8)[:, None, None, None], (t.shape[0], 4, 4, 3)).copy()


def _fake_reward(images, prompts):
    return images.reshape(len(images), -1).mean(1).astype(np.float32)


def _spec(scaling, N, strategy="scalingar"):
    return S.spec_of(GPTModel(CFG), SAMPLING, scaling, strategy, N)


@functools.partial(jax.jit, static_argnames=("spec",))
def _start(params, cond, key, prompt_ids, *, spec):
    """A one-device decode state at token 0 (the traced pieces without a mesh)."""
    return L.prefill(params, spec, cond, None, key, prompt_ids)


@functools.partial(jax.jit, static_argnames=("spec", "stop"))
def _run_to(params, s, *, spec, stop):
    """The one-device token loop up to token `stop` (no pool, no compaction exit)."""
    return L.token_loop(params, s, spec, stop, s.owner.shape[0] + 1, -1)


@pytest.mark.parametrize("strategy, compaction", [("scalingar", True), ("scalingar", False), ("plain", True)])
def test_progress_stops_change_no_token_and_compile_nothing(params, strategy, compaction):
    """progress_every=K stops the loop every K tokens (the CLI's per-row bar): the loop's `stop`
    is a traced scalar, so the same compiled loop runs, and the state goes on where it stopped:
    the same tokens, winners and token counts; the stops only add progress reports."""
    kw = dict(key=jax.random.key(3), num_candidates=8, sampling=SAMPLING, scaling=AGGRESSIVE, strategy=strategy,
              compaction=compaction)
    whole_seen, seen = [], []
    whole = run(params, CFG, _cond(), on_progress=whole_seen.append, **kw)
    compiled = E.run_loop_in_place._cache_size()
    stopped = run(params, CFG, _cond(), on_progress=seen.append, progress_every=3, **kw)
    assert E.run_loop_in_place._cache_size() == compiled  # no new loop compiled
    for name in ("tokens", "winner", "tokens_used", "all_tokens", "terminated_at"):
        np.testing.assert_array_equal(np.asarray(getattr(stopped, name)), np.asarray(getattr(whole, name)), name)
    T = CFG.block_size
    assert seen == sorted(seen) and seen[-1] == T and set(whole_seen) <= set(seen)
    assert set(range(3, T, 3)) <= set(seen)  # at least every 3 tokens
    assert len(seen) > len(whole_seen)


@pytest.mark.exactness
@pytest.mark.parametrize("buckets", [True, "fine"])
def test_compacted_run_equals_masked_run(params, buckets):
    """Compaction moves rows and never changes a decision: the same tokens, winners, token counts
    and termination steps; the trajectories and scores within float rounding (the matmuls run
    over 8 rows instead of 16: a logit may round differently by an ulp, D by 2.1e-5)."""
    kw = dict(key=jax.random.key(3), num_candidates=8, sampling=SAMPLING, scaling=AGGRESSIVE)
    masked = run(params, CFG, _cond(), compaction=False, **kw)
    seen = []
    compact = run(params, CFG, _cond(), compaction=buckets, on_progress=seen.append, **kw)
    assert len(seen) > 1, "the aggressive gate should have triggered at least one compaction"
    name = "pow2" if buckets is True else buckets
    # the loop left at exactly the steps the host-side replay of the rule says the pool shrank
    sched = L.pool_schedule(masked.traj["alive"], buckets=name)
    shrinks = [k for k in range(1, len(sched)) if sched[k] < sched[k - 1]]
    assert seen == shrinks + [CFG.block_size]
    assert_same_outcomes(compact, masked)


def test_pool_compaction_moves_exactly_the_alive_rows(params):
    # 3 prompts x 4 candidates = a pool of 12 rows; 5 alive spread unevenly over the prompts
    # (4, 1, 0 is impossible with min_survivors, but compaction itself does not care).
    spec = L.shape_key(_spec(AGGRESSIVE, 4))
    s = _start(params, _cond(P=3), jax.random.key(0), np.arange(3), spec=spec)
    s = _run_to(params, s, spec=spec, stop=3)  # a few tokens in the cache
    alive = np.array([[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    s = s.replace(conf=s.conf.replace(alive=jnp.asarray(alive)))
    c = L.compact(s, rows=8)
    assert c.owner.shape == (8,) and c.logits.shape == (16, CFG.vocab_size)
    ids = np.flatnonzero(alive)  # flat candidate ids p * N + n, in order
    np.testing.assert_array_equal(np.asarray(c.owner), np.r_[ids, [12, 12, 12]])
    np.testing.assert_array_equal(np.asarray(c.row).reshape(-1)[ids], np.arange(5))
    # every alive candidate reads the same logits and cache rows (cond and uncond) as before
    for before, after in zip(L.candidate_logits(s.logits, s.row), L.candidate_logits(c.logits, c.row)):
        np.testing.assert_array_equal(np.asarray(before)[alive], np.asarray(after)[alive])
    old_rows, new_rows = np.asarray(s.row)[alive], np.asarray(c.row)[alive]
    for half in (0, 1):
        for layer in range(CFG.n_layer):
            np.testing.assert_array_equal(np.asarray(s.cache.layer(layer)[0][old_rows + half * 12]),
                                          np.asarray(c.cache.layer(layer)[0][new_rows + half * 8]))
        np.testing.assert_array_equal(np.asarray(s.cache.valid[old_rows + half * 12]),
                                      np.asarray(c.cache.valid[new_rows + half * 8]))
    # the per-candidate state is untouched: it always keeps the (P, N) layout
    np.testing.assert_array_equal(np.asarray(s.conf.C), np.asarray(c.conf.C))
    # a second compaction of a compacted pool composes
    c2 = L.compact(c.replace(conf=c.conf.replace(alive=jnp.asarray(alive & (np.arange(4) < 2)))), rows=2)
    np.testing.assert_array_equal(np.asarray(c2.owner), [0, 1])
    np.testing.assert_array_equal(np.asarray(c2.logits[:2]), np.asarray(s.logits[:2]))
    np.testing.assert_array_equal(np.asarray(c2.logits[2:]), np.asarray(s.logits[12:14]))


def test_token_accounting_is_exact(params):
    T = CFG.block_size
    res = run(params, CFG, _cond(), key=jax.random.key(1), num_candidates=8, sampling=SAMPLING, scaling=AGGRESSIVE)
    term = np.asarray(res.terminated_at)
    per_cand = np.where(term >= 0, term + 1, T)  # a candidate pruned at step k sampled tokens 0..k
    np.testing.assert_array_equal(np.asarray(res.tokens_used), per_cand.sum(1))
    # Pruned candidates generated nothing after their termination step.
    all_tokens = np.asarray(res.all_tokens)
    for p, n in zip(*np.nonzero(term >= 0)):
        assert np.all(all_tokens[p, n, term[p, n] + 1 :] == -1) and np.all(all_tokens[p, n, : term[p, n] + 1] >= 0)
    # The winner survived and its tokens are complete.
    assert np.all(term[np.arange(2), np.asarray(res.winner)] == -1)
    assert np.all(np.asarray(res.tokens) >= 0)
    plain = run(params, CFG, _cond(), key=jax.random.key(1), num_candidates=4, strategy="plain", sampling=SAMPLING)
    np.testing.assert_array_equal(plain.tokens_used, [4 * T, 4 * T])


def test_loop_compiles_once_per_bucket(params):
    kw = dict(key=jax.random.key(3), num_candidates=8, sampling=SAMPLING, scaling=AGGRESSIVE)
    run(params, CFG, _cond(), **kw)
    before = E.run_loop_in_place._cache_size()
    run(params, CFG, _cond(seed=5), **kw)
    assert E.run_loop_in_place._cache_size() == before  # same shapes and buckets: nothing new compiled


@pytest.mark.exactness
def test_drive_updates_the_state_in_place(params):
    # drive donates the loop state to the jitted loop: the KV cache is written in place, so the
    # input buffers are consumed (and no second copy of the cache is allocated per loop call)
    spec = _spec(AGGRESSIVE, 4)
    engine = E.Engine(GPTModel(CFG), params)
    s0 = engine.prefill(spec, _cond(), None, jax.random.key(0), np.arange(2))
    local = E.L.loop_key(engine.place(spec, 2).spec)
    T = np.int32(CFG.block_size)
    ref = E.run_loop(engine.params, s0, T, T, np.int32(-1), spec=local, mesh=engine.mesh)[0]  # leaves s0 valid
    assert not jax.tree.leaves(s0.cache)[0].is_deleted()
    out = S.drive(engine, spec, s0)
    assert jax.tree.leaves(s0.cache)[0].is_deleted() and s0.tokens.is_deleted()
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))


def test_confidence_only_picks_highest_mean_confidence(params):
    res = run(params, CFG, _cond(), key=jax.random.key(2), num_candidates=4, strategy="confidence_only",
              sampling=SAMPLING)
    np.testing.assert_array_equal(res.winner, np.argmax(np.asarray(res.score), 1))
    assert np.all(np.asarray(res.terminated_at) == -1)


@pytest.mark.exactness
@pytest.mark.parametrize("strategy", ["plain", "confidence_only"])
def test_candidates_split_over_calls_are_the_same_tokens(params, strategy):
    """first_candidate: N = 4 candidates in one call == two calls of 2 == four calls of 1: the
    same tokens; confidence-only's mean-confidence scores within float rounding (a call of 2
    rows rounds its logits differently from a call of 8: 3.7e-9 on scores ~1e-3)."""
    kw = dict(key=jax.random.key(4), sampling=SAMPLING, strategy=strategy, prompt_ids=np.array([7, 3]))
    whole = run(params, CFG, _cond(), num_candidates=4, **kw)
    halves = [run(params, CFG, _cond(), num_candidates=2, first_candidate=c, **kw) for c in (0, 2)]
    before = E.run_prefill._cache_size()
    ones = [run(params, CFG, _cond(), num_candidates=1, first_candidate=c, **kw) for c in range(4)]
    assert E.run_prefill._cache_size() - before <= 1  # the offset is traced: one compile for every offset
    for parts in (halves, ones):
        np.testing.assert_array_equal(np.concatenate([np.asarray(r.all_tokens) for r in parts], 1), whole.all_tokens)
        np.testing.assert_allclose(np.concatenate([np.asarray(r.score) for r in parts], 1), whole.score, **FLOAT_TOL)
    # winner indexes the call's own candidates
    assert np.all((np.asarray(halves[1].winner) >= 0) & (np.asarray(halves[1].winner) < 2))
    with pytest.raises(ValueError, match="first_candidate must be an integer >= 0"):
        run(params, CFG, _cond(), num_candidates=1, first_candidate=-1, **kw)


def test_best_of_n_picks_highest_reward(params):
    res = run(params, CFG, _cond(), strategy="best_of_n", prompts=["a", "b"], key=jax.random.key(2), num_candidates=4,
              reward_fn=_fake_reward, decode_fn=_fake_decode, sampling=SAMPLING)
    scores = _fake_reward(_fake_decode(np.asarray(res.all_tokens).reshape(8, -1)), None).reshape(2, 4)
    np.testing.assert_array_equal(res.winner, scores.argmax(1))
    np.testing.assert_array_equal(res.tokens_used, [4 * CFG.block_size] * 2)


def test_importance_sampling_runs_and_counts_all_tokens(params):
    res = run(params, CFG, _cond(), strategy="importance_sampling", prompts=["a", "b"], key=jax.random.key(2),
              num_candidates=4, reward_fn=_fake_reward, decode_fn=_fake_decode, sampling=SAMPLING, checkpoints=(0.5,))
    assert np.all(np.asarray(res.all_tokens) >= 0)
    np.testing.assert_array_equal(res.tokens_used, [4 * CFG.block_size] * 2)


def test_bad_inputs(params):
    with pytest.raises(ValueError, match="num_candidates"):
        run(params, CFG, _cond(), key=jax.random.key(0), num_candidates=0)
    with pytest.raises(ValueError, match="block_size"):
        run(params, CFG, _cond(), key=jax.random.key(0), scaling=ScalingARConfig(block_size=5))
    with pytest.raises(ValueError):
        ScalingARConfig(p=1.5)
    with pytest.raises(ValueError, match="reward function must return shape"):
        run(params, CFG, _cond(), strategy="best_of_n", prompts=["a", "b"], key=jax.random.key(0), num_candidates=2,
            reward_fn=lambda im, pr: np.zeros(3), decode_fn=_fake_decode)
    with pytest.raises(ValueError, match="strategy"):
        run(params, CFG, _cond(), key=jax.random.key(0), strategy="best_of_n")


@given(st.integers(1, 5000))
def test_bucket_bounds(n):
    for name, slack in (("pow2", 2.0), ("fine", 1.5)):
        b, f = L.bucket(n, name), L.floor_bucket(n, name)
        assert n <= b < slack * n + 1 and f <= n < slack * f + 1
        assert L.bucket(b, name) == b == L.floor_bucket(b, name)  # sizes are fixed points
        if n <= 64:  # floor_bucket is the largest size <= n
            assert f == max(x for x in (L.bucket(m, name) for m in range(1, n + 1)) if x <= n)
    assert L.bucket(n, "fine") <= L.bucket(n, "pow2")


def test_fine_buckets_hand_values():
    assert [L.bucket(n, "fine") for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert [L.floor_bucket(n, "fine") for n in range(1, 14)] == [1, 2, 3, 4, 4, 6, 6, 8, 8, 8, 8, 12, 12]
    with pytest.raises(ValueError, match="unknown compaction buckets 'pow3'"):
        L.bucket(5, "pow3")
    with pytest.raises(ValueError, match="unknown compaction buckets"):
        run(gpt.init_params(CFG, jax.random.key(0)), CFG, _cond(), key=jax.random.key(0), compaction="pow3")


def test_pool_schedule_hand_case():
    alive = np.ones((6, 1, 8), bool)
    alive[2:, 0, 4:] = False  # 4 alive after step 2
    alive[4:, 0, 1:] = False  # 1 alive after step 4
    assert L.pool_schedule(alive) == [8, 8, 8, 4, 4, 1]
    assert L.pool_schedule(alive, compaction=False) == [8] * 6
    assert L.pool_schedule(alive, buckets="fine") == [8, 8, 8, 4, 4, 1]
    alive[2:, 0, 6:] = True  # 6 alive after step 2 (fine: 8 -> 6, pow2 keeps 8), 3 after step 4
    assert L.pool_schedule(alive) == [8, 8, 8, 8, 8, 4]
    assert L.pool_schedule(alive, buckets="fine") == [8, 8, 8, 6, 6, 3]
    # two prompts share one pool: 3 + 1 alive fit 4 rows, where per-prompt slots would need 2 x 4
    alive = np.ones((4, 2, 4), bool)
    alive[1:, 0, 3:] = False
    alive[1:, 1, 1:] = False
    assert L.pool_schedule(alive) == [8, 8, 4, 4]


@pytest.mark.exactness
def test_loop_step_is_policy_scalingar_step(params):
    """The loop's ScalingAR update is `policy.scalingar_step` on the candidates' logits, bit for bit
    (guided entropy source too, so `lg` is passed the same way)."""
    from scalingar_jax import decode
    from scalingar_jax.scaling import scalingar_step

    spec = _spec(AGGRESSIVE, 4)
    s = _start(params, _cond(), jax.random.key(5), np.arange(2), spec=L.shape_key(spec))
    s = _run_to(params, s, spec=L.loop_key(spec), stop=5)  # a ScalingAR state mid-run
    s = s.replace(scale=s.scale + jnp.arange(4, dtype=jnp.float32) * 0.25)  # per-candidate scales
    k = s.k[0]  # every lane at token 5 (lockstep)
    for scaling in (AGGRESSIVE, AGGRESSIVE.replace(entropy_source="guided", use_scheduler=False)):
        spec = _spec(scaling, 4)
        # op by op, so that no fusion difference between two compiled programs can hide a change
        with jax.disable_jit():
            after = L.step(params, spec, s)
            lc, lu = L.candidate_logits(s.logits, s.row)
            lg = (decode.sampling_logits(SAMPLING, lc, lu, s.scale, k, True)
                  if scaling.entropy_source == "guided" else None)
            conf, scale = scalingar_step(scaling, s.conf, lc, lu, k, CFG.block_size, CFG.grid_size,
                                         SAMPLING.cfg_scale, lg=lg)
        jax.tree.map(np.testing.assert_array_equal, after.conf, conf)
        np.testing.assert_array_equal(after.scale, scale)
        assert np.all(np.asarray(after.k) == int(k) + 1)


@pytest.mark.exactness
@pytest.mark.parametrize("model_type", ["t2i", "c2i"])
def test_plain_strategy_equals_decode_generate(model_type):
    """`decode.generate` and the strategy loop's plain sampling draw the same tokens (same keys,
    prompt ids, CFG, top-k): 3 prompts x 4 candidates."""
    from scalingar_jax import decode

    cfg = CFG if model_type == "t2i" else GPTConfig(model_type="c2i", n_layer=1, n_head=2, dim=16, vocab_size=32,
                                                    num_classes=10, grid_size=4, multiple_of=16)
    params = gpt.init_params(cfg, jax.random.key(1))
    sampling = SamplingConfig(cfg_scale=2.5, top_k=8)
    if model_type == "t2i":
        cond = _cond(P=3, seed=2)
        mask = jnp.asarray(np.arange(cfg.cls_token_num)[None] >= np.array([[0], [1], [2]]))  # left padding
    else:
        cond, mask = jnp.asarray([3, 7, 0], jnp.int32), None
    kw = dict(key=jax.random.key(9), num_candidates=4, sampling=sampling, prompt_ids=np.array([5, 0, 11]))
    ref = decode.generate(params, cfg, cond, cond_mask=mask, **kw)
    res = run(params, cfg, cond, mask, strategy="plain", **kw)
    np.testing.assert_array_equal(np.asarray(res.all_tokens), np.asarray(ref))
