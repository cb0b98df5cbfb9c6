"""ScalingAR Level 1: config, token statistics, KL, blocks, the profile update."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax.scaling import (
    ABLATIONS,
    ConfidenceState,
    ScalingARConfig,
    block_index,
    init_state,
    kl_divergence,
    num_blocks,
    token_stats,
    update_profile,
    worst_block_entropy,
)

VOCABS = (2, 5, 1000, 16384)  # few shapes: each is one compile
_token_stats = jax.jit(token_stats)
_kl = jax.jit(kl_divergence)
_update = jax.jit(update_profile, static_argnames=("scaling", "grid_size", "axis_name"))


def _logits(seed, shape, scale=1.0, ninf_frac=0.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    if ninf_frac > 0:
        drop = rng.random(shape) < ninf_frac
        drop &= x != x.max(axis=-1, keepdims=True)  # keep at least the top entry finite
        x = np.where(drop, -np.inf, x)
    return jnp.asarray(x, dtype)


# ------------------------------------------------------------------------------ config
def test_config_defaults_are_the_spec_numbers():
    c = ScalingARConfig()
    assert (c.aH, c.aM, c.lam_tok, c.block_size, c.q) == (0.5, 0.5, 0.2, 4, 0.1)
    assert (c.w_tok, c.w_blk, c.lam_I, c.wI, c.wD) == (0.65, 0.35, 0.2, 0.75, 0.25)
    assert c.entropy_source == "cond"
    assert (c.alpha, c.beta, c.gamma, c.s_min, c.s_max) == (0.3, 0.4, 0.4, 1.0, None)
    assert (c.warmup_frac, c.p, c.lam_theta, c.rebound_threshold, c.probation_steps, c.min_survivors) == (
        0.125, 0.2, 0.2, 0.05, 32, 1)
    assert c.resolved_s_max(7.5) == 15.0
    assert c.warmup_steps(1024) == 128 and c.warmup_steps(256) == 32
    assert c.worst_block_count(64) == 7 and c.worst_block_count(30) == 3
    assert c.worst_block_count(1) == 1 and c.worst_block_count(0) == 1
    hash(c)  # usable as a jit static argument
    assert c == ScalingARConfig()


def test_ablation_presets():
    assert set(ABLATIONS) == {"full", "no_conditional", "no_worst_block", "no_token_level",
                              "termination_only", "scheduler_only"}
    assert ScalingARConfig.ablation("full") == ScalingARConfig()
    assert ScalingARConfig.ablation("no_conditional").unified_weights == (1.0, 0.0)
    assert ScalingARConfig.ablation("no_worst_block").intrinsic_weights == (1.0, 0.0)
    assert ScalingARConfig.ablation("no_token_level").intrinsic_weights == (0.0, 1.0)
    assert not ScalingARConfig.ablation("termination_only").use_scheduler
    assert not ScalingARConfig.ablation("scheduler_only").use_termination
    assert ScalingARConfig.ablation("no_conditional", renormalize=False).unified_weights == (0.75, 0.0)
    assert ScalingARConfig.ablation("full").intrinsic_weights == pytest.approx((0.65, 0.35))
    with pytest.raises(KeyError, match="unknown ablation"):
        ScalingARConfig.ablation("nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"q": 1.5}, "q must be in"),
        ({"p": -0.1}, "p must be in"),
        ({"warmup_frac": 2.0}, "warmup_frac"),
        ({"lam_tok": -0.2}, "lam_tok"),
        ({"lam_theta": 1.2}, "lam_theta"),
        ({"w_blk": -1.0}, "w_blk"),
        ({"alpha": -0.3}, "alpha"),
        ({"min_survivors": 0}, "min_survivors"),
        ({"probation_steps": 0}, "Delta_rec"),
        ({"block_size": 0}, "block_size"),
        ({"eps": 0.0}, "eps"),
        ({"s_min": 2.0, "s_max": 1.0}, "s_max"),
        ({"entropy_source": "both"}, "entropy_source"),
        ({"use_token_level": False, "use_worst_block": False}, "intrinsic"),
        ({"wI": 0.0, "use_conditional": False}, "unified"),
        ({"q": float("nan")}, "finite"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScalingARConfig(**kwargs)


def test_config_type_and_grid_checks():
    with pytest.raises(TypeError, match="probation_steps"):
        ScalingARConfig(probation_steps=3.0)
    with pytest.raises(TypeError, match="use_scheduler"):
        ScalingARConfig(use_scheduler=1)
    with pytest.raises(ValueError, match="larger than grid_size"):
        ScalingARConfig(block_size=8).validate(4)
    with pytest.raises(ValueError, match="larger than grid_size"):
        init_state(ScalingARConfig(block_size=8), 1, 2, 4)
    with pytest.raises(ValueError, match="num_candidates"):
        init_state(ScalingARConfig(), 1, 0, 4)
    ScalingARConfig(block_size=4).validate(4)


# ------------------------------------------------------------------------------ token level
def test_token_stats_hand_case_v2():
    lg = jnp.log(jnp.array([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]]))
    Hn, m = _token_stats(lg)
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    np.testing.assert_allclose(Hn, [h0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(m, [0.5, 0.0, 1.0], atol=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31 - 1),
    V=st.sampled_from(VOCABS),
    scale=st.sampled_from([0.1, 3.0, 1e4]),
    ninf=st.sampled_from([0.0, 0.5, 0.99]),
    bf16=st.booleans(),
)
def test_token_stats_ranges(seed, V, scale, ninf, bf16):
    x = _logits(seed, (3, V), scale, ninf, jnp.bfloat16 if bf16 else jnp.float32)
    Hn, m = _token_stats(x)
    chex.assert_shape([Hn, m], (3,))
    chex.assert_type([Hn, m], jnp.float32)
    chex.assert_tree_all_finite((Hn, m))
    assert np.all((Hn >= 0) & (Hn <= 1)) and np.all((m >= 0) & (m <= 1))
    # reference in float64
    x64 = np.asarray(x, np.float64)
    p = np.exp(x64 - x64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    H = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1) / np.log(V)
    ps = np.sort(p, -1)
    np.testing.assert_allclose(Hn, H, atol=2e-4)
    np.testing.assert_allclose(m, ps[:, -1] - ps[:, -2], atol=2e-5)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31 - 1),
    V=st.sampled_from(VOCABS),
    shift=st.floats(-50, 50),
    ninf=st.sampled_from([0.0, 0.5]),
)
def test_token_stats_shift_and_permutation_invariant(seed, V, shift, ninf):
    x = _logits(seed, (2, V), 3.0, ninf)
    Hn, m = _token_stats(x)
    Hs, ms = _token_stats(x + shift)
    perm = np.random.default_rng(seed).permutation(V)
    Hp, mp = _token_stats(x[:, perm])
    np.testing.assert_allclose(Hs, Hn, atol=2e-5)
    np.testing.assert_allclose(ms, m, atol=2e-5)
    np.testing.assert_allclose(Hp, Hn, atol=2e-5)
    np.testing.assert_allclose(mp, m, atol=2e-5)


def test_token_stats_edge_rows():
    V = 8
    rows = jnp.array([
        [0.0] * V,  # uniform
        [5.0] + [-jnp.inf] * (V - 1),  # one-hot after filtering
        [-jnp.inf] * V,  # degenerate: treated as uniform
        [3.0, 3.0] + [-jnp.inf] * (V - 2),  # tie
    ])
    Hn, m = _token_stats(rows)
    np.testing.assert_allclose(Hn, [1.0, 0.0, 1.0, math.log(2) / math.log(V)], atol=1e-6)
    np.testing.assert_allclose(m, [0.0, 1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="vocabulary"):
        token_stats(jnp.zeros((3, 1)))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31 - 1),
    V=st.sampled_from(VOCABS),
    scale=st.sampled_from([0.5, 5.0, 1e4]),
    bf16=st.booleans(),
    ninf=st.sampled_from([0.0, 0.5]),
)
def test_kl_properties(seed, V, scale, bf16, ninf):
    dt = jnp.bfloat16 if bf16 else jnp.float32
    a = _logits(seed, (3, V), scale, ninf, dt)
    b = _logits(seed + 1, (3, V), scale, ninf, dt)
    kab, kaa = _kl(a, b), _kl(a, a)
    chex.assert_shape([kab, kaa], (3,))
    chex.assert_type([kab, kaa], jnp.float32)
    chex.assert_tree_all_finite(kab)
    assert np.all(kab >= 0)
    np.testing.assert_allclose(kaa, 0.0, atol=1e-6)
    if ninf == 0.0 and scale < 100:
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        la = a64 - np.log(np.exp(a64 - a64.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a64.max(-1, keepdims=True)
        lb = b64 - np.log(np.exp(b64 - b64.max(-1, keepdims=True)).sum(-1, keepdims=True)) - b64.max(-1, keepdims=True)
        ref = np.sum(np.exp(la) * (la - lb), -1)
        np.testing.assert_allclose(kab, ref, rtol=1e-3, atol=1e-4)


def test_kl_hand_case():
    pc, pu = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    ref = float(np.sum(pc * np.log(pc / pu)))
    np.testing.assert_allclose(_kl(jnp.log(pc), jnp.log(pu)), ref, rtol=1e-6)


# ------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("g, b", [(4, 4), (5, 4), (8, 4), (6, 1), (7, 3)])
def test_block_index_and_count(g, b):
    per = math.ceil(g / b)
    assert num_blocks(g, b) == per * per
    ks = jnp.arange(g * g)
    got = np.asarray(block_index(ks, g, b))
    want = [(k // g // b) * per + (k % g) // b for k in range(g * g)]
    np.testing.assert_array_equal(got, want)
    assert set(got.tolist()) == set(range(per * per))  # every block, edge ones included


def test_worst_block_entropy_hand_case():
    cfg = ScalingARConfig(q=0.25)
    blk_sum = jnp.array([[0.9, 0.2 * 2, 0.5, 0.0, 0.7 * 3, 0.1, 0.0, 0.0]])
    blk_cnt = jnp.array([[1, 2, 1, 0, 3, 1, 0, 0]], jnp.int32)
    # 6 non-empty blocks with means .9 .2 .5 .7 .1 (+ block 0 .9): ceil(.25*6)=2 -> (.9+.7)/2
    np.testing.assert_allclose(worst_block_entropy(cfg, blk_sum, blk_cnt), [0.8], atol=1e-6)
    empty = worst_block_entropy(cfg, jnp.zeros((1, 8)), jnp.zeros((1, 8), jnp.int32))
    np.testing.assert_allclose(empty, [0.0])


# ------------------------------------------------------------------------------ profile
def test_profile_hand_case_v2():
    """P=N=1, V=2: u, s_tok EMA, K, D, I by hand for two steps."""
    cfg = ScalingARConfig(block_size=1)
    g = 2
    s = init_state(cfg, 1, 1, g)
    lc1, lu1 = jnp.log(jnp.array([[[0.75, 0.25]]])), jnp.log(jnp.array([[[0.5, 0.5]]]))
    s = _update(cfg, s, lc1, lu1, jnp.int32(0), None, grid_size=g)
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    u1 = 0.5 * h1 + 0.5 * (1 - 0.5)
    np.testing.assert_allclose(s.s_tok, [[1 - u1]], atol=1e-6)
    # single candidate, first step: pooled stats = the value, var 0 -> z = 0 -> B = D = 0.5
    np.testing.assert_allclose(s.B, [[0.5]], atol=1e-6)
    np.testing.assert_allclose(s.D, [[0.5]], atol=1e-6)
    I1 = 0.65 * (1 - u1) + 0.35 * 0.5
    np.testing.assert_allclose(s.I, [[I1]], atol=1e-6)
    np.testing.assert_allclose(s.C, [[0.75 * I1 + 0.25 * 0.5]], atol=1e-6)
    np.testing.assert_allclose(s.R, [[0.0]], atol=1e-6)
    np.testing.assert_allclose(s.I_var, [[0.0]])
    k1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    np.testing.assert_allclose(s.K, [[k1]], atol=1e-6)
    assert s.tokens_used.tolist() == [[1]] and s.initialized.tolist() == [[True]]

    s2 = _update(cfg, s, lu1, lu1, jnp.int32(1), None, grid_size=g)  # uniform, KL = 0
    np.testing.assert_allclose(s2.s_tok, [[0.8 * (1 - u1) + 0.2 * 0.0]], atol=1e-6)
    np.testing.assert_allclose(s2.K, [[0.8 * k1]], atol=1e-6)
    # block 1 got Hn = 1; worst block (ceil(0.1*2) = 1 block) e = 1.0 (was h1)
    e_mu = h1 + 0.2 * (1.0 - h1)
    e_var = 0.8 * (0 + 0.2 * (1.0 - h1) ** 2)
    B2 = 1 - 1 / (1 + math.exp(-(1.0 - e_mu) / (math.sqrt(e_var) + 1e-6)))
    np.testing.assert_allclose(s2.B, [[B2]], atol=1e-5)
    I2 = 0.8 * I1 + 0.2 * (0.65 * 0.8 * (1 - u1) + 0.35 * B2)
    np.testing.assert_allclose(s2.I, [[I2]], atol=1e-5)
    dI = I2 - I1
    np.testing.assert_allclose(s2.I_var, [[0.8 * 0.2 * dI * dI]], atol=1e-6)
    assert s2.blk_cnt.tolist() == [[[1, 1, 0, 0]]]


def _run_profile(cfg, state, seed, steps, g, alive=None):
    P, N = state.C.shape
    for t in range(steps):
        lc = _logits(seed * 1000 + 2 * t, (P, N, 16), 3.0)
        lu = _logits(seed * 1000 + 2 * t + 1, (P, N, 16))
        state = _update(cfg, state, lc, lu, jnp.int32(t), alive, grid_size=g)
    return state


def test_profile_shapes_and_dtypes():
    cfg, g = ScalingARConfig(), 5
    s0 = init_state(cfg, 2, 3, g)
    s = _run_profile(cfg, s0, 0, 4, g)
    assert isinstance(s, ConfidenceState)
    chex.assert_trees_all_equal_shapes_and_dtypes(s, s0)
    chex.assert_shape([s.C, s.R, s.I, s.D, s.B, s.alive, s.tokens_used], (2, 3))
    chex.assert_shape([s.blk_sum, s.blk_cnt], (2, 3, 4))
    chex.assert_shape([s.theta, s.e_mu, s.K_var], (2,))
    chex.assert_type([s.C, s.blk_sum, s.theta], jnp.float32)
    chex.assert_type([s.blk_cnt, s.probation, s.terminated_at, s.tokens_used], jnp.int32)
    chex.assert_type([s.alive, s.initialized, s.stats_initialized], bool)
    chex.assert_tree_all_finite(jax.tree.map(lambda x: x.astype(jnp.float32), s))


def test_profile_bad_inputs():
    cfg, g = ScalingARConfig(), 4
    s = init_state(cfg, 1, 2, g)
    x = jnp.zeros((1, 2, 8))
    with pytest.raises(ValueError, match="lc must have shape"):
        update_profile(cfg, s, jnp.zeros((1, 3, 8)), jnp.zeros((1, 3, 8)), 0, None, g)
    with pytest.raises(ValueError, match="lu shape"):
        update_profile(cfg, s, x, jnp.zeros((1, 2, 9)), 0, None, g)
    with pytest.raises(ValueError, match="blocks"):
        update_profile(cfg, s, x, x, 0, None, 8)
    with pytest.raises(ValueError, match="guided"):
        update_profile(cfg.replace(entropy_source="guided"), s, x, x, 0, None, g)


def test_guided_entropy_source_reads_lg():
    cfg, g = ScalingARConfig(entropy_source="guided"), 4
    s = init_state(cfg, 1, 2, g)
    lc = _logits(0, (1, 2, 8), 3.0)
    lu = _logits(1, (1, 2, 8), 3.0)
    lg = _logits(2, (1, 2, 8), 3.0)
    a = _update(cfg, s, lc, lu, jnp.int32(0), None, grid_size=g, lg=lg)
    b = _update(cfg, s, lg, lu, jnp.int32(0), None, grid_size=g, lg=lg)
    c = _update(ScalingARConfig(), s, lg, lu, jnp.int32(0), None, grid_size=g)
    np.testing.assert_allclose(a.s_tok, b.s_tok)  # s_tok from lg, not lc
    np.testing.assert_allclose(a.s_tok, c.s_tok)
    assert not np.allclose(a.K, b.K)  # KL still uses lc


def test_dead_candidates_frozen_and_excluded():
    cfg, g = ScalingARConfig(), 4
    P, N, V = 2, 4, 16
    s = _run_profile(cfg, init_state(cfg, P, N, g), 1, 3, g)
    dead = np.array([[False, True, False, False], [False, False, False, True]])
    s = s.replace(alive=~dead)
    lc, lu = _logits(5, (P, N, V), 3.0), _logits(6, (P, N, V))
    out = _update(cfg, s, lc, lu, jnp.int32(3), None, grid_size=g)
    # dead candidates: every per-candidate field unchanged
    for name in ("C", "R", "I", "D", "B", "s_tok", "K", "Cmin", "I_mean", "I_var", "blk_sum",
                 "blk_cnt", "tokens_used"):
        np.testing.assert_array_equal(np.asarray(getattr(out, name))[np.asarray(dead)],
                                      np.asarray(getattr(s, name))[np.asarray(dead)], err_msg=name)
    # their logits do not influence anything
    lc2, lu2 = np.array(lc), np.array(lu)
    lc2[0, 1], lc2[1, 3], lu2[0, 1] = _logits(7, (V,), 100.0), _logits(8, (V,), 0.01), _logits(9, (V,), 50.0)
    out2 = _update(cfg, s, lc2, lu2, jnp.int32(3), None, grid_size=g)
    chex.assert_trees_all_close(out, out2, atol=0, rtol=0)
    # the alive= argument masks the same way
    out3 = _update(cfg, s.replace(alive=jnp.ones((P, N), bool)), lc, lu, jnp.int32(3), ~dead, grid_size=g)
    chex.assert_trees_all_close(out3.replace(alive=out.alive), out, atol=0, rtol=0)


def _perturbed_C(cfg, field_fn=None, lu_fn=None):
    """C after one update, from a warmed-up state, with a perturbation of state or lu."""
    g, P, N, V = 4, 1, 3, 16
    s = _run_profile(cfg, init_state(cfg, P, N, g), 2, 5, g)
    lc, lu = _logits(10, (P, N, V), 3.0), _logits(11, (P, N, V))
    if field_fn is not None:
        s = field_fn(s)
    if lu_fn is not None:
        lu = lu_fn(lu)
    return np.asarray(_update(cfg, s, lc, lu, jnp.int32(5), None, grid_size=g).C), s


_PERTURB = {
    "use_conditional": dict(lu_fn=lambda lu: lu * 7.0 + 1.0),
    "use_worst_block": dict(field_fn=lambda s: s.replace(
        blk_sum=s.blk_sum * 0.1 + jnp.arange(s.blk_sum.shape[-1]) * 0.3,
        e_mu=s.e_mu + 0.2, e_var=s.e_var * 5 + 0.1)),
    "use_token_level": dict(field_fn=lambda s: s.replace(s_tok=1.0 - s.s_tok * 0.5)),
}


@pytest.mark.parametrize("switch", list(_PERTURB))
def test_each_ablation_removes_exactly_its_term(switch):
    full = ScalingARConfig()
    abl = full.replace(**{switch: False})
    base_full, _ = _perturbed_C(full)
    pert_full, _ = _perturbed_C(full, **_PERTURB[switch])
    assert np.max(np.abs(base_full - pert_full)) > 1e-4  # the term matters in the full method
    base_abl, _ = _perturbed_C(abl)
    pert_abl, _ = _perturbed_C(abl, **_PERTURB[switch])
    np.testing.assert_array_equal(base_abl, pert_abl)  # ... and is gone when switched off
    # the other terms are still there
    for other in _PERTURB:
        if other != switch:
            pert_other, _ = _perturbed_C(abl, **_PERTURB[other])
            assert np.max(np.abs(base_abl - pert_other)) > 1e-4, other


def test_ablation_renormalized_values():
    g = 4
    cfg = ScalingARConfig(use_conditional=False)
    s = _run_profile(cfg, init_state(cfg, 1, 3, g), 3, 4, g)
    np.testing.assert_allclose(s.C, s.I, atol=1e-7)  # C = I exactly (renormalized)
    cfg = ScalingARConfig(use_conditional=False, renormalize=False)
    s = _run_profile(cfg, init_state(cfg, 1, 3, g), 3, 4, g)
    np.testing.assert_allclose(s.C, 0.75 * s.I, atol=1e-7)


def _split(tree, S):
    """(P, N, ...) leaves -> (P, S, N/S, ...); (P,) leaves unchanged."""
    return jax.tree.map(
        lambda x: x.reshape(x.shape[:1] + (S, x.shape[1] // S) + x.shape[2:]) if x.ndim >= 2 else x, tree)


def _merge(tree):
    def f(x):
        if x.ndim == 2:  # a (P,) leaf replicated over shards -> (P, S)
            np.testing.assert_array_equal(x, np.repeat(np.asarray(x[:, :1]), x.shape[1], 1))
            return x[:, 0]
        return x.reshape(x.shape[:1] + (x.shape[1] * x.shape[2],) + x.shape[3:])
    return jax.tree.map(f, tree)


def test_axis_name_profile_equals_unsharded():
    cfg, g, P, N, S, V = ScalingARConfig(), 4, 2, 6, 3, 16
    dead = jnp.zeros((P, N), bool).at[0, 2].set(True).at[1, 5].set(True)
    ref = init_state(cfg, P, N, g).replace(alive=~dead)
    sh = ref
    axes = jax.tree.map(lambda x: 1 if x.ndim >= 2 else None, ref)
    fn = jax.jit(jax.vmap(
        lambda st, lc, lu, t: update_profile(cfg, st, lc, lu, t, None, g, axis_name="cand"),
        in_axes=(axes, 1, 1, None), out_axes=1, axis_name="cand"))
    for t in range(6):
        lc, lu = _logits(40 + 2 * t, (P, N, V), 3.0), _logits(41 + 2 * t, (P, N, V))
        ref = _update(cfg, ref, lc, lu, jnp.int32(t), None, grid_size=g)
        sh = _merge(fn(_split(sh, S), _split(lc, S), _split(lu, S), jnp.int32(t)))
    chex.assert_trees_all_close(sh, ref, atol=1e-6, rtol=1e-6)
    assert np.all(np.asarray(ref.e_var) > 0)  # pooled stats are actually exercised
