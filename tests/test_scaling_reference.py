"""ScalingAR against an independent float64 NumPy reference of the spec (tests/scaling_ref.py).

Several prompts with different logit statistics (so per-prompt pooling matters) and candidates of
different sharpness (so some are pruned mid-run), T = 36 (W0 = ceil(4.5) = 5, not floor 4), a 6x6
grid with 4x4 blocks (edge blocks smaller): every `ConfidenceState` field and the scale are
compared at every one of the 36 steps. Also: the termination timeline with such a T and dead
candidates, by hand; the config fields of issue 21; the last-step pruning rule.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scaling_ref import Ref

from scalingar_jax.scaling import ScalingARConfig, init_state
from scalingar_jax.scaling.policy import guidance_scale, scalingar_step, update_termination

P, N, V, G = 3, 6, 50, 6
T = G * G
S_BASE = 3.0
# A gate aggressive enough to prune on 36 steps, scheduler gains large enough that every term moves s.
GATE = dict(p=0.35, probation_steps=4, rebound_threshold=0.2, lam_theta=0.4, alpha=1.0, beta=5.0, gamma=1.0)
_step = jax.jit(scalingar_step, static_argnames=("scaling", "total_steps", "grid_size", "axis_name"))
_term = jax.jit(update_termination, static_argnames=("scaling", "total_steps", "axis_name"))

FIELDS = ("C", "R", "I", "D", "B", "s_tok", "K", "Cmin", "I_mean", "I_var", "V", "blk_sum")
EXACT = ("blk_cnt", "initialized", "alive", "probation", "theta_ready", "terminated_at", "tokens_used")


def _logits(seed):
    """(P, N, T, V) lc, lu: prompt p has sharpness (1, 3, 6)[p], candidates 0.4x..1.6x of it."""
    rng = np.random.default_rng(seed)
    sharp = np.array([1.0, 3.0, 6.0])[:, None] * rng.uniform(0.4, 1.6, (1, N))
    lc = sharp[..., None, None] * rng.standard_normal((P, N, T, V))
    lu = 0.6 * lc + 0.8 * sharp[..., None, None] * rng.standard_normal((P, N, T, V))
    return lc, lu


def _run_both(cfg, seed=0):
    lc, lu = _logits(seed)
    ref, st = Ref(cfg, P, N, G, S_BASE), init_state(cfg, P, N, G)
    for k in range(T):
        s_ref = ref.step(lc[:, :, k], lu[:, :, k], k)
        st, scale = _step(cfg, st, jnp.asarray(lc[:, :, k], jnp.float32), jnp.asarray(lu[:, :, k], jnp.float32),
                          jnp.int32(k), total_steps=T, grid_size=G, s_base=S_BASE)
        yield k, ref, st, s_ref, np.asarray(scale)


@pytest.mark.parametrize("variant", [
    {},  # the spec's readings
    {"rebound_window": "probation"},
    {"rebound_window": "trailing", "rebound_steps": 5},
    {"volatility": "zscore"},
    {"use_conditional": False, "conditional_ablation": "everywhere"},
    {"use_conditional": False},
])
def test_every_state_field_matches_the_float64_reference(variant):
    cfg = ScalingARConfig(**GATE, **variant)
    for k, ref, st, s_ref, scale in _run_both(cfg):
        where = f"step {k}, variant {variant}"
        for name in FIELDS:
            np.testing.assert_allclose(np.asarray(getattr(st, name)), getattr(ref, name), rtol=1e-4, atol=2e-5,
                                       err_msg=f"{name} at {where}")
        for name in EXACT:
            ref_name = {"initialized": "init", "probation": "prob", "theta_ready": "theta_ready"}.get(name, name)
            np.testing.assert_array_equal(np.asarray(getattr(st, name)), getattr(ref, ref_name),
                                          err_msg=f"{name} at {where}")
        np.testing.assert_array_equal(np.asarray(st.stats_initialized), ref.stats_init, err_msg=where)
        for name in ("e", "K", "V"):
            np.testing.assert_allclose(np.asarray(getattr(st, f"{name}_mu")), ref.stats[name][:, 0], rtol=1e-4,
                                       atol=2e-5, err_msg=f"{name}_mu at {where}")
            np.testing.assert_allclose(np.asarray(getattr(st, f"{name}_var")), ref.stats[name][:, 1], rtol=1e-3,
                                       atol=1e-7, err_msg=f"{name}_var at {where}")
        np.testing.assert_allclose(np.asarray(st.theta), ref.theta, rtol=1e-4, atol=2e-5, err_msg=f"theta at {where}")
        np.testing.assert_allclose(scale, s_ref, rtol=1e-4, atol=2e-5, err_msg=f"scale at {where}")
    # the run is a meaningful test: candidates died mid-run in every prompt, others survived
    term = ref.terminated_at
    assert np.all((term >= 0).sum(1) >= 1) and (term >= 0).sum() >= 6 and np.all((term < 0).sum(1) >= 1), term
    assert len(set(term[term >= 0].tolist())) >= 2, term  # at several different steps


def test_reference_run_exercises_every_scheduler_term():
    """The scale moves by more than float error through each of alpha, beta, gamma, so a dropped or
    mis-signed term fails the comparison above."""
    cfg = ScalingARConfig(**GATE)
    spans = {"D": 0.0, "V": 0.0, "R": 0.0}
    for _, ref, _, _, _ in _run_both(cfg):
        for name in spans:
            x = getattr(ref, name)[ref.alive & ref.init]
            spans[name] = max(spans[name], float(x.max() - x.min()) if x.size else 0.0)
    assert spans["D"] > 0.3 and spans["R"] > 0.05 and GATE["beta"] * spans["V"] > 1e-3, spans


def _state(cfg, C, R, alive, theta=None, prob=None):
    C = jnp.asarray(C, jnp.float32)
    s = init_state(cfg, C.shape[0], C.shape[1], 4)
    s = s.replace(C=C, R=jnp.asarray(R, jnp.float32), alive=jnp.asarray(alive), initialized=jnp.ones(C.shape, bool))
    if theta is not None:
        s = s.replace(theta=jnp.asarray(theta, jnp.float32), theta_ready=jnp.ones(C.shape[0], bool))
    if prob is not None:
        s = s.replace(probation=jnp.asarray(prob, jnp.int32))
    return s


def test_warmup_uses_ceil_and_quantile_ignores_dead_candidates():
    """T = 36: W0 = ceil(0.125*36) = 5 (floor would be 4). theta is first set at step W0-1 = 4, as
    the 0.25-quantile of the *alive* C only (two dead candidates with C = 0 sit among them)."""
    cfg = ScalingARConfig(p=0.25, lam_theta=0.5, probation_steps=1, rebound_threshold=1.0)
    C = [[0.9, 0.0, 0.5, 0.7, 0.0, 0.3]]
    alive = np.array([[True, False, True, True, False, True]])
    s = _state(cfg, C, np.zeros((1, 6)), alive)
    s3 = _term(cfg, s, jnp.int32(3), total_steps=36)
    assert not bool(s3.theta_ready[0]) and float(s3.theta[0]) == 0.0  # still warm-up at step 3
    s4 = _term(cfg, s3, jnp.int32(4), total_steps=36)
    q = np.quantile([0.9, 0.5, 0.7, 0.3], 0.25)  # 0.45; over all six it would be 0.075
    assert bool(s4.theta_ready[0]) and float(s4.theta[0]) == pytest.approx(q)
    assert np.all(np.asarray(s4.alive) == alive)  # step 4 < W0: no pruning yet
    # step 5: theta <- 0.5*0.45 + 0.5*Q(alive); C = 0.3 < theta -> probation 1 = Delta_rec -> pruned
    s5 = _term(cfg, s4, jnp.int32(5), total_steps=36)
    assert float(s5.theta[0]) == pytest.approx(q)
    np.testing.assert_array_equal(np.asarray(s5.alive), [[True, False, True, True, False, False]])
    np.testing.assert_array_equal(np.asarray(s5.terminated_at), [[-1, -1, -1, -1, -1, 5]])
    # with the dead candidates counted the threshold would have been 0.075 and nobody pruned


def test_nothing_is_pruned_at_the_last_step():
    """A candidate on probation long enough at step T-1 has produced all its tokens: kept."""
    cfg = ScalingARConfig(p=0.5, probation_steps=2, rebound_threshold=1.0)
    s = _state(cfg, [[0.9, 0.1, 0.8, 0.7]], np.zeros((1, 4)), np.ones((1, 4), bool), theta=[0.5], prob=[[0, 1, 0, 0]])
    last = _term(cfg, s, jnp.int32(35), total_steps=36)
    assert np.all(np.asarray(last.alive)) and int(last.probation[0, 1]) == 2
    before = _term(cfg, s, jnp.int32(34), total_steps=36)  # one step earlier it is pruned
    np.testing.assert_array_equal(np.asarray(before.alive), [[True, False, True, True]])


def test_conditional_ablation_scope_in_the_scheduler():
    s = _state(ScalingARConfig(), [[0.5, 0.5]], [[0.0, 0.0]], np.ones((1, 2), bool))
    s = s.replace(D=jnp.asarray([[0.2, 0.9]], jnp.float32))
    conf = ScalingARConfig(use_conditional=False)
    every = conf.replace(conditional_ablation="everywhere")
    np.testing.assert_allclose(guidance_scale(conf, s, 4.0), [[4.0 + 0.3 * 0.8, 4.0 + 0.3 * 0.1]], rtol=1e-6)
    np.testing.assert_allclose(guidance_scale(every, s, 4.0), [[4.0, 4.0]], rtol=1e-6)
    # with the conditional channel on, "everywhere" changes nothing
    np.testing.assert_allclose(guidance_scale(ScalingARConfig(conditional_ablation="everywhere"), s, 4.0),
                               guidance_scale(ScalingARConfig(), s, 4.0))


def test_new_config_fields_validate():
    c = ScalingARConfig()
    assert (c.rebound_window, c.volatility, c.conditional_ablation) == ("all", "raw", "confidence")
    assert c.rebound_history == 1 and c.replace(rebound_window="trailing", rebound_steps=7).rebound_history == 7
    with pytest.raises(ValueError, match="rebound_window must be one of"):
        ScalingARConfig(rebound_window="window")
    with pytest.raises(ValueError, match="volatility must be one of"):
        ScalingARConfig(volatility="scaled")
    with pytest.raises(ValueError, match="conditional_ablation must be one of"):
        ScalingARConfig(conditional_ablation="both")
    with pytest.raises(ValueError, match="rebound_steps must be >= 1"):
        ScalingARConfig(rebound_steps=0)
    with pytest.raises(TypeError, match="rebound_steps must be an int"):
        ScalingARConfig(rebound_steps=2.0)
    trailing = ScalingARConfig(rebound_window="trailing", rebound_steps=3)
    with pytest.raises(ValueError, match="past C values"):  # a state built for another window
        scalingar_step(trailing, init_state(ScalingARConfig(), 1, 2, 4), jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 5)),
                       jnp.int32(0), total_steps=16, grid_size=4, s_base=2.0)
