"""ScalingAR Level 2: scheduler, masked quantile, termination, selection, full rollouts."""
import functools
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactness import worker_env

from scalingar_jax.scaling import (
    ScalingARConfig,
    guidance_scale,
    init_state,
    masked_quantile,
    scalingar_step,
    select_winner,
    tokens_per_prompt,
    update_termination,
)

P, N, V, G = 2, 5, 32, 6  # g=6 with b=4: edge blocks are smaller
T = G * G
S_BASE = 4.0

_quantile = jax.jit(masked_quantile, static_argnames="p")
_term = jax.jit(update_termination, static_argnames=("scaling", "total_steps", "axis_name"))
_step = jax.jit(scalingar_step, static_argnames=("scaling", "total_steps", "grid_size", "axis_name"))


def _logits_at(key, t, scale, ninf, temp, bf16):
    k = jax.random.fold_in(key, t)
    a, b, c, d = jax.random.split(k, 4)
    lc = jax.random.normal(a, temp.shape[:2] + (V,)) * scale * temp
    lu = jax.random.normal(b, temp.shape[:2] + (V,)) * scale

    def drop(x, kk):
        m = (jax.random.uniform(kk, x.shape) < ninf) & (x < x.max(-1, keepdims=True))
        return jnp.where(m, -jnp.inf, x)

    lc, lu = drop(lc, c), drop(lu, d)
    dt = jnp.bfloat16 if bf16 else jnp.float32
    return lc.astype(dt), lu.astype(dt)


@functools.partial(jax.jit, static_argnames=("cfg", "bf16"))
def _rollout(cfg, key, scale, ninf, bf16=False):
    """T steps of scalingar_step on synthetic logits; candidates differ in sharpness."""
    state = init_state(cfg, P, N, G)
    kt, key = jax.random.split(key)
    temp = jnp.exp(1.5 * jax.random.normal(kt, (P, N, 1)))

    def body(state, t):
        lc, lu = _logits_at(key, t, scale, ninf, temp, bf16)
        state, s = scalingar_step(cfg, state, lc, lu, t, T, G, S_BASE)
        hist = dict(alive=state.alive, s=s, C=state.C, D=state.D, B=state.B, R=state.R,
                    I_var=state.I_var, theta=state.theta)
        return state, hist

    return jax.lax.scan(body, state, jnp.arange(T, dtype=jnp.int32))


# name -> (cfg, bf16 inputs). Aggressive settings so that pruning and the min-survivor rule are
# exercised within 16 steps. Each entry is one compile of `_rollout`: keep the list short.
CFGS = {
    "default_fast": (ScalingARConfig(probation_steps=2), False),
    "aggressive": (ScalingARConfig(probation_steps=1, p=0.9, rebound_threshold=10.0, min_survivors=2), False),
    "aggr_no_tok_bf16": (ScalingARConfig.ablation(
        "no_token_level", probation_steps=1, p=1.0, rebound_threshold=1e6, warmup_frac=0.5, min_survivors=3), True),
    "aggr_sched_only": (ScalingARConfig.ablation(
        "scheduler_only", probation_steps=1, p=1.0, rebound_threshold=1e6), False),
}


# ------------------------------------------------------------------------------ quantile
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    x=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=6, max_size=6),
    mask=st.lists(st.booleans(), min_size=6, max_size=6),
    p=st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.77, 1.0]),
)
def test_masked_quantile_matches_numpy(x, mask, p):
    x, mask = np.asarray(x, np.float32), np.asarray(mask)
    got = _quantile(x[None], mask[None], p=p)
    chex.assert_shape(got, (1,))
    if mask.any():
        np.testing.assert_allclose(got[0], np.quantile(x[mask].astype(np.float64), p), atol=1e-5)
    else:
        assert got[0] == 0.0


# ------------------------------------------------------------------------------ scheduler
def _state_with(cfg, **fields):
    s = init_state(cfg, 1, 4, G)
    return s.replace(**{k: jnp.asarray(v, s.C.dtype if k not in ("initialized",) else bool)
                        for k, v in fields.items()})


def test_guidance_scale_hand_case_and_clipping():
    cfg = ScalingARConfig()
    s = _state_with(cfg, D=[[0.5, 1.0, 0.0, 0.5]], I_var=[[0.1, 0.0, 0.0, 0.0]],
                    R=[[0.0, 0.5, 0.0, 100.0]], initialized=[[True, True, True, False]])
    got = guidance_scale(cfg, s, 4.0)
    chex.assert_shape(got, (1, 4))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, [[4.0 + 0.15 + 0.04, 4.0 - 0.2, 4.3, 4.0]], atol=1e-6)
    # huge rebound -> s_min; explicit s_max
    s2 = s.replace(initialized=jnp.ones((1, 4), bool))
    np.testing.assert_allclose(guidance_scale(cfg, s2, 4.0)[0, 3], 1.0)
    np.testing.assert_allclose(guidance_scale(cfg.replace(s_max=4.1), s2, 4.0)[0, 2], 4.1)
    # fixed CFG when the scheduler is off
    np.testing.assert_array_equal(guidance_scale(cfg.replace(use_scheduler=False), s2, 7.5), 7.5)
    with pytest.raises(ValueError, match="s_min"):
        guidance_scale(cfg, s, 0.4)  # s_max = 0.8 < s_min


# ------------------------------------------------------------------------------ termination
def _term_state(cfg, C, alive=None, prob=None, R=None, theta=10.0):
    n = len(C)
    s = init_state(cfg, 1, n, G)
    return s.replace(
        C=jnp.asarray([C], jnp.float32),
        R=jnp.zeros((1, n)) if R is None else jnp.asarray([R], jnp.float32),
        alive=jnp.ones((1, n), bool) if alive is None else jnp.asarray([alive]),
        probation=jnp.zeros((1, n), jnp.int32) if prob is None else jnp.asarray([prob], jnp.int32),
        theta=jnp.asarray([theta], jnp.float32),
        theta_ready=jnp.ones((1,), bool),
    )


def test_min_survivors_keeps_highest_C_with_id_tie_break():
    cfg = ScalingARConfig(probation_steps=1, min_survivors=2)
    step = jnp.int32(10)
    # everyone reaches Delta_rec at once: keep the two highest C; tie at 0.5 -> lowest ids
    out = _term(cfg, _term_state(cfg, [0.5, 0.3, 0.5, 0.5]), step, total_steps=T)
    assert out.alive.tolist() == [[True, False, True, False]]
    assert out.terminated_at.tolist() == [[-1, 10, -1, 10]]
    # 2 of 4 want out but min_survivors=3: the higher-C one of the two survives
    cfg3 = cfg.replace(min_survivors=3)
    out = _term(cfg3, _term_state(cfg3, [0.1, 0.9, 0.4, 0.9], R=[0, 5, 0, 5]), step, total_steps=T)
    assert out.alive.tolist() == [[False, True, True, True]]
    # dead candidates stay dead and do not count as survivors
    out = _term(cfg, _term_state(cfg, [0.5, 0.9, 0.6, 0.2], alive=[True, False, True, True],
                                 R=[0, 0, 5, 0]), step, total_steps=T)
    assert out.alive.tolist() == [[True, False, True, False]]
    assert out.terminated_at.tolist() == [[-1, -1, -1, 10]]


def test_probation_hysteresis_counts_and_resets():
    cfg = ScalingARConfig(probation_steps=3)
    # cand 0: C<theta, R<delta -> probation; cand 1: rebounding (R >= delta) -> resets;
    # cand 2: above theta -> resets; cand 3: on probation, reaches Delta_rec -> terminated
    s = _term_state(cfg, [0.1, 0.1, 0.9, 0.1], R=[0.0, 0.06, 0.0, 0.01], prob=[0, 2, 2, 2],
                    theta=0.5)
    out = _term(cfg, s, jnp.int32(8), total_steps=T)
    assert out.probation.tolist() == [[1, 0, 0, 3]]
    assert out.alive.tolist() == [[True, True, True, False]]
    np.testing.assert_allclose(out.theta, 0.8 * 0.5 + 0.2 * np.quantile([0.1, 0.1, 0.9, 0.1], 0.2))


def test_warmup_timeline_and_theta_init():
    cfg = ScalingARConfig(probation_steps=1, rebound_threshold=10.0)  # W0 = ceil(0.125*16) = 2
    C = [0.1, 0.2, 0.3, 0.4]
    s = _term_state(cfg, C, theta=0.0).replace(theta_ready=jnp.zeros((1,), bool))
    out0 = _term(cfg, s, jnp.int32(0), total_steps=16)
    assert not out0.theta_ready[0] and out0.alive.all() and out0.probation.sum() == 0
    out1 = _term(cfg, out0, jnp.int32(1), total_steps=16)  # last warm-up step: theta = Q_p
    np.testing.assert_allclose(out1.theta, np.quantile(C, 0.2), atol=1e-6)
    assert out1.theta_ready[0] and out1.alive.all() and out1.probation.sum() == 0
    out2 = _term(cfg, out1, jnp.int32(2), total_steps=16)  # first step that may prune
    assert out2.alive.tolist() == [[False, True, True, True]]
    assert out2.terminated_at.tolist() == [[2, -1, -1, -1]]


def test_select_winner_and_tokens():
    s = init_state(ScalingARConfig(), 2, 4, G).replace(
        C=jnp.asarray([[0.2, 0.95, 0.9, 0.9], [0.3, 0.3, 0.1, 0.3]]),
        alive=jnp.asarray([[True, False, True, True], [False, True, True, True]]),
        tokens_used=jnp.asarray([[16, 3, 16, 16], [5, 16, 16, 16]], jnp.int32),
    )
    w = select_winner(s)
    chex.assert_shape(w, (2,))
    chex.assert_type(w, jnp.int32)
    assert w.tolist() == [2, 1]
    assert tokens_per_prompt(s).tolist() == [51, 53]


# ------------------------------------------------------------------------------ rollouts
def _check_rollout(cfg, state, hist, s_base=S_BASE):
    chex.assert_tree_all_finite(jax.tree.map(lambda x: x.astype(jnp.float32), (state, hist)))
    for name in ("C", "D", "B"):
        v = np.asarray(hist[name])
        assert v.min() >= 0 and v.max() <= 1, name
    assert np.asarray(hist["R"]).min() >= 0
    s = np.asarray(hist["s"])
    assert s.min() >= cfg.s_min and s.max() <= cfg.resolved_s_max(s_base) + 1e-6
    alive = np.asarray(hist["alive"])  # (T, P, N)
    assert not np.any(alive[1:] & ~alive[:-1]), "a candidate came back to life"
    assert np.all(alive.sum(-1) >= min(cfg.min_survivors, N))
    W0 = cfg.warmup_steps(T)
    assert alive[: W0 + cfg.probation_steps - 1].all(), "pruned during warm-up"
    term = np.asarray(state.terminated_at)
    final = alive[-1]
    assert np.all((term >= 0) == ~final)
    first_dead = np.where(final, -1, np.argmin(alive, axis=0))
    np.testing.assert_array_equal(term, first_dead)
    np.testing.assert_array_equal(state.tokens_used, np.where(final, T, term + 1))
    assert np.all(tokens_per_prompt(state) == np.asarray(state.tokens_used).sum(-1))
    w = np.asarray(select_winner(state))
    C = np.asarray(state.C)
    for i in range(P):
        assert final[i, w[i]] and C[i, w[i]] == C[i][final[i]].max()
    return alive


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(CFGS)),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.3, 3.0, 1e4]),
    ninf=st.sampled_from([0.0, 0.6]),
)
def test_rollout_invariants(name, seed, scale, ninf):
    cfg, bf16 = CFGS[name]
    state, hist = _rollout(cfg, jax.random.PRNGKey(seed), scale, ninf, bf16)
    alive = _check_rollout(cfg, state, hist)
    if not cfg.use_termination:
        assert alive.all()


def test_rollouts_do_prune():
    """The invariants above are not vacuous: pruning and the survivor floor both happen."""
    for name in ("aggressive", "aggr_no_tok_bf16"):
        cfg, bf16 = CFGS[name]
        state, hist = _rollout(cfg, jax.random.PRNGKey(1), 3.0, 0.0, bf16)
        alive = np.asarray(hist["alive"])
        assert (~alive[-1]).any(), name
        assert alive[-1].sum(-1).min() == cfg.min_survivors, name


def test_nothing_pruned_with_p_zero_or_termination_off():
    for cfg in (CFGS["aggressive"][0].replace(p=0.0), CFGS["aggr_sched_only"][0]):
        state, hist = _rollout(cfg, jax.random.PRNGKey(1), 3.0, 0.0)
        assert np.asarray(hist["alive"]).all() and np.all(np.asarray(state.terminated_at) == -1)
        assert np.all(np.asarray(state.tokens_used) == T)


def test_step_compiles_once():
    traces = []

    def counted(cfg, state, lc, lu, step, total_steps, grid_size, s_base):
        traces.append(1)
        return scalingar_step(cfg, state, lc, lu, step, total_steps, grid_size, s_base)

    f = jax.jit(counted, static_argnames=("cfg", "total_steps", "grid_size"))
    cfg = CFGS["default_fast"][0]
    state = init_state(cfg, P, N, G)
    rng = np.random.default_rng(0)
    for t in range(T):
        lc = rng.standard_normal((P, N, V)).astype(np.float32)
        lu = rng.standard_normal((P, N, V)).astype(np.float32)
        state, s = f(cfg, state, lc, lu, np.int32(t), T, G, np.float32(4.0 + 0.1 * t))
        chex.assert_shape(s, (P, N))
    assert len(traces) == 1 and f._cache_size() == 1


# ------------------------------------------------------------------------------ sharding
def _split(tree, S):
    return jax.tree.map(
        lambda x: x.reshape(x.shape[:1] + (S, x.shape[1] // S) + x.shape[2:]) if x.ndim >= 2 else x, tree)


def _merge(tree):
    def f(x):
        if x.ndim == 2:  # (P,) leaf, replicated over shards
            np.testing.assert_array_equal(x, np.repeat(np.asarray(x[:, :1]), x.shape[1], 1))
            return x[:, 0]
        return x.reshape(x.shape[:1] + (x.shape[1] * x.shape[2],) + x.shape[3:])
    return jax.tree.map(f, tree)


def test_axis_name_step_equals_unsharded():
    cfg = ScalingARConfig(probation_steps=1, p=0.9, rebound_threshold=10.0, min_survivors=2)
    Pn, Nn, S = 2, 6, 3
    ref = init_state(cfg, Pn, Nn, G)
    axes = jax.tree.map(lambda x: 1 if x.ndim >= 2 else None, ref)

    def one(st_, lc, lu, t):
        st_, s = scalingar_step(cfg, st_, lc, lu, t, T, G, S_BASE, axis_name="cand")
        return st_, s, select_winner(st_, "cand"), tokens_per_prompt(st_, "cand")

    sharded = jax.jit(jax.vmap(one, in_axes=(axes, 1, 1, None), out_axes=1, axis_name="cand"))
    sh = ref
    rng = np.random.default_rng(3)
    temp = np.exp(1.5 * rng.standard_normal((Pn, Nn, 1)))
    for t in range(T):
        lc = (rng.standard_normal((Pn, Nn, V)) * 3 * temp).astype(np.float32)
        lu = rng.standard_normal((Pn, Nn, V)).astype(np.float32)
        ref, s_ref = _step(cfg, ref, lc, lu, jnp.int32(t), total_steps=T, grid_size=G, s_base=S_BASE)
        sh, s_sh, w_sh, tok_sh = sharded(_split(sh, S), _split(lc, S), _split(lu, S), jnp.int32(t))
        sh, s_sh, w_sh, tok_sh = _merge((sh, s_sh, w_sh, tok_sh))
        np.testing.assert_array_equal(sh.alive, ref.alive)
        np.testing.assert_allclose(s_sh, s_ref, atol=1e-6)
        np.testing.assert_array_equal(w_sh, select_winner(ref))
        np.testing.assert_array_equal(tok_sh, tokens_per_prompt(ref))
    chex.assert_trees_all_close(sh, ref, atol=1e-6, rtol=1e-6)
    assert (~np.asarray(ref.alive)).any()  # terminations were exercised


_SHARD_MAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as PS
    from scalingar_jax.scaling import ScalingARConfig, init_state, scalingar_step
    assert jax.device_count() == 2
    cfg = ScalingARConfig(probation_steps=1, p=0.9, rebound_threshold=10.0, min_survivors=2)
    P, N, V, G = 2, 4, 16, 4
    mesh = Mesh(np.array(jax.devices()), ("cand",))
    st0 = init_state(cfg, P, N, G)
    specs = jax.tree.map(lambda x: PS(None, "cand") if x.ndim >= 2 else PS(), st0)
    f = jax.jit(jax.shard_map(
        lambda s, lc, lu, t: scalingar_step(cfg, s, lc, lu, t, G * G, G, 4.0, axis_name="cand"),
        mesh=mesh, in_specs=(specs, PS(None, "cand"), PS(None, "cand"), PS()),
        out_specs=(specs, PS(None, "cand")), check_vma=False))
    g = jax.jit(lambda s, lc, lu, t: scalingar_step(cfg, s, lc, lu, t, G * G, G, 4.0))
    rng = np.random.default_rng(0)
    temp = np.exp(1.5 * rng.standard_normal((P, N, 1)))
    a = b = st0
    for t in range(G * G):
        lc = (rng.standard_normal((P, N, V)) * 3 * temp).astype(np.float32)
        lu = rng.standard_normal((P, N, V)).astype(np.float32)
        a, sa = f(a, lc, lu, jnp.int32(t))
        b, sb = g(b, lc, lu, jnp.int32(t))
        assert (np.asarray(a.alive) == np.asarray(b.alive)).all()
        np.testing.assert_allclose(sa, sb, atol=1e-6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=1e-6)
    print("OK", int((~np.asarray(b.alive)).sum()))
""")


@pytest.mark.slow
def test_shard_map_on_two_cpu_devices_equals_unsharded():
    env = worker_env()
    env.update(XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("OK")
