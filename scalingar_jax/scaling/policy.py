"""ScalingAR Level 2: guidance scheduler, adaptive termination, selection, accounting.

Shapes: `P` prompts, `N` candidates (local count when the candidate axis is sharded over
`axis_name`). All functions are pure, jit-friendly, no Python control flow on traced values.

Termination timeline (**decision** where the spec is silent), with T = `total_steps`, steps
k = 0..T-1 and W0 = ceil(warmup_frac*T):
  * k < W0 - 1: nothing (warm-up; theta untouched, probation stays 0).
  * k == W0 - 1 (the last warm-up step; k == 0 when W0 == 0): theta = Q_p(C over alive).
  * k >= W0: theta <- (1 - lam_theta)*theta + lam_theta*Q_p(C over alive), then probation is
    counted against this theta and candidates whose counter reaches probation_steps (Delta_rec)
    are terminated.
  So the earliest possible termination is at step W0 + probation_steps - 1. Nothing is terminated at
  the last step k = T - 1: the candidate has produced all its tokens, pruning it would only drop
  a finished image from selection (issue 21; probation is still counted).
  Q_p is taken over the candidates alive *before* this step's terminations. A prompt with no
  alive candidate keeps its theta.
  * `p == 0` disables pruning (static): the 0-quantile is the minimum of the alive set, so no
    candidate can be strictly below it; only the EMA's lag could prune, which is not intended.
  * `use_termination=False`: theta is tracked, probation stays 0, nothing is pruned.

Minimum survivors: let n = alive count of a prompt and K the candidates whose counter reached
probation_steps this step. If n - |K| < min_survivors, the max(0, min_survivors - (n - |K|)) members of
K with the highest C survive (ties: lowest candidate id); their probation counters are kept (so
they are re-examined next step). If n < min_survivors nothing is pruned.

Masked quantile (`masked_quantile`): the alive values sorted ascending (dead ones pushed to
+inf), then numpy's default 'linear' rule over the alive count n: position h = p*(n-1),
Q = x[floor h] + (h - floor h)*(x[floor h + 1] - x[floor h]) (the upper index clipped to n-1).
With n = 0 it returns 0.

Sharding: with `axis_name`, C / R / alive / probation are all-gathered along the candidate axis
(`tiled=True`), the decision is made on the full (P, N) arrays exactly as unsharded, and each
shard keeps its own slice (offset `axis_index * N_local`): given the same C and R, every shard
takes exactly the unsharded decision (quantile, ranks and tie-breaks use global candidate ids).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ScalingARConfig
from .profile import ConfidenceState, LogitStats, candidate_sum, update_profile, update_profile_stats

F32 = jnp.float32


def masked_quantile(x, mask, p: float):
    """p-quantile of `x` over `mask` along the last axis (numpy 'linear' method).

    x: (..., N) float, mask: (..., N) bool, p: float in [0, 1]. Returns (...) float32; 0 where
    the mask is empty.
    """
    x = jnp.asarray(x, F32)
    N = x.shape[-1]
    n = jnp.sum(mask, axis=-1)
    xs = jnp.sort(jnp.where(mask, x, jnp.inf), axis=-1)
    h = p * (jnp.maximum(n, 1) - 1).astype(F32)
    lo = jnp.clip(jnp.floor(h).astype(jnp.int32), 0, N - 1)
    hi = jnp.clip(jnp.minimum(lo + 1, n - 1), 0, N - 1)
    frac = h - lo.astype(F32)
    x_lo = jnp.take_along_axis(xs, lo[..., None], axis=-1)[..., 0]
    x_hi = jnp.take_along_axis(xs, hi[..., None], axis=-1)[..., 0]
    qv = x_lo + frac * (x_hi - x_lo)
    qv = jnp.where(frac == 0, x_lo, qv)  # avoid 0*(inf - inf) style surprises
    return jnp.where(n > 0, qv, 0.0)


def guidance_scale(scaling: ScalingARConfig, state: ConfidenceState, s_base):
    """Per-candidate CFG scale for the next step, (P, N) float32.

    s = clip(s_base + alpha*(1 - D) + beta*Var(I) - gamma*R, s_min, s_max), s_max = scaling.s_max
    or 2*s_base. Var(I) is `state.V` (its z-score) when scaling.volatility == "zscore"; alpha is 0
    when use_conditional=False and conditional_ablation == "everywhere". A candidate whose profile
    has not been updated yet gets clip(s_base, ...).
    With `use_scheduler=False` the fixed `s_base` is returned everywhere (fixed CFG, no check).
    Otherwise a Python-float s_base with s_max < s_min raises ValueError; a traced one cannot be
    checked (jnp.clip then returns s_max).
    s_base: Python float or float32 scalar (traced is fine).
    """
    shape = state.C.shape
    if not scaling.use_scheduler:
        return jnp.broadcast_to(jnp.asarray(s_base, F32), shape).astype(F32)
    if isinstance(s_base, (int, float)):
        s_max = scaling.resolved_s_max(float(s_base))
        if s_max < scaling.s_min:
            raise ValueError(
                f"s_max={s_max} (2*s_base when scaling.s_max is None) is below s_min={scaling.s_min}"
            )
    s_base = jnp.asarray(s_base, F32)
    s_max = jnp.asarray(scaling.resolved_s_max(s_base), F32)
    # conditional_ablation="everywhere": use_conditional=False also drops alpha*(1 - D)
    alpha = scaling.alpha if scaling.use_conditional or scaling.conditional_ablation == "confidence" else 0.0
    vol = state.I_var if scaling.volatility == "raw" else state.V
    s = s_base + alpha * (1.0 - state.D) + scaling.beta * vol - scaling.gamma * state.R
    s = jnp.where(state.initialized, s, s_base)
    return jnp.clip(s, scaling.s_min, s_max).astype(F32)


def _gather(x, axis_name):
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, axis=1, tiled=True)


def _local(x, n_local: int, axis_name):
    if axis_name is None:
        return x
    start = jax.lax.axis_index(axis_name) * n_local
    return jax.lax.dynamic_slice_in_dim(x, start, n_local, axis=1)


def update_termination(
    scaling: ScalingARConfig,
    state: ConfidenceState,
    step,
    total_steps: int,
    axis_name: str | None = None,
) -> ConfidenceState:
    """Threshold update, probation and termination after the profile of token `step`.

    step: int32 scalar (raster index of the token just profiled). total_steps: static T.
    Updates theta (P,), theta_ready (P,), probation / alive / terminated_at (P, N); see the
    module docstring for the timeline and the min-survivor rule.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a static int >= 1, got {total_steps!r}")
    W0 = scaling.warmup_steps(total_steps)
    n_local = state.C.shape[1]
    step = jnp.asarray(step, jnp.int32)

    C = _gather(state.C, axis_name)
    R = _gather(state.R, axis_name)
    alive = _gather(state.alive, axis_name)
    prob = _gather(state.probation, axis_name)
    N = C.shape[1]

    n_alive = jnp.sum(alive, axis=1)
    qv = masked_quantile(C, alive, scaling.p)
    do_theta = (step >= W0 - 1) & (n_alive > 0)
    theta_new = jnp.where(
        state.theta_ready, (1.0 - scaling.lam_theta) * state.theta + scaling.lam_theta * qv, qv
    )
    theta = jnp.where(do_theta, theta_new, state.theta)
    theta_ready = state.theta_ready | do_theta

    if not scaling.use_termination or scaling.p == 0:
        return state.replace(theta=theta, theta_ready=theta_ready)

    active = step >= W0
    on = alive & (C < theta[:, None]) & (R < scaling.rebound_threshold) & active
    prob = jnp.where(alive, jnp.where(on, prob + 1, 0), prob)
    # a candidate that has produced all its tokens (step T-1) is complete: never pruned then
    want = alive & (prob >= scaling.probation_steps) & (step < total_steps - 1)

    # min survivors: rescue the r highest-C members of `want` (ties: lowest id).
    n_kill = jnp.sum(want, axis=1)
    r = jnp.maximum(scaling.min_survivors - (n_alive - n_kill), 0)
    ids = jnp.arange(N)
    Ci, Cj = C[:, :, None], C[:, None, :]
    beats = (Cj > Ci) | ((Cj == Ci) & (ids[None, None, :] < ids[None, :, None]))
    rank = jnp.sum(want[:, None, :] & beats, axis=2)
    kill = want & ~(rank < r[:, None])

    new_alive = alive & ~kill
    return state.replace(
        theta=theta,
        theta_ready=theta_ready,
        probation=_local(prob, n_local, axis_name),
        alive=_local(new_alive, n_local, axis_name),
        terminated_at=jnp.where(_local(kill, n_local, axis_name), step, state.terminated_at),
    )


def select_winner(state: ConfidenceState, axis_name: str | None = None):
    """(P,) int32: the alive candidate with the highest C (ties: lowest candidate id).

    With `axis_name` the ids are global candidate ids. If a prompt had no alive candidate the
    argmax is taken over all candidates.
    """
    C = _gather(state.C, axis_name)
    alive = _gather(state.alive, axis_name)
    any_alive = jnp.any(alive, axis=1, keepdims=True)
    score = jnp.where(alive | ~any_alive, C, -jnp.inf)
    return jnp.argmax(score, axis=1).astype(jnp.int32)


def tokens_per_prompt(state: ConfidenceState, axis_name: str | None = None):
    """(P,) int32: tokens generated by candidates while alive, summed per prompt."""
    return candidate_sum(state.tokens_used, axis_name).astype(jnp.int32)


def scalingar_step(
    scaling: ScalingARConfig,
    state: ConfidenceState,
    lc,
    lu,
    step,
    total_steps: int,
    grid_size: int,
    s_base,
    axis_name: str | None = None,
    lg=None,
):
    """One ScalingAR step after token `step` was sampled by every alive candidate.

    Order: (1) `update_profile` with the logits of token `step` (alive = state.alive, so the
    tokens are charged), (2) `update_termination` (may kill candidates at `step`),
    (3) `guidance_scale` of the updated state: the CFG scale to use for token `step + 1`.
    lc, lu (and lg): (P, N, V). Returns (state, scale (P, N) float32).
    Static: scaling, total_steps, grid_size, axis_name. The strategies' token loop (`loop.step`)
    calls `scalingar_update`, the same step from the logits' statistics.
    """
    state = update_profile(scaling, state, lc, lu, step, None, grid_size, lg=lg, axis_name=axis_name)
    return _decide(scaling, state, step, total_steps, s_base, axis_name)


def scalingar_update(
    scaling: ScalingARConfig,
    state: ConfidenceState,
    stats: LogitStats,
    step,
    total_steps: int,
    grid_size: int,
    s_base,
    axis_name: str | None = None,
):
    """`scalingar_step` from the token's `LogitStats` ((P, N) each) instead of its logits: what
    the token loop calls, having done the vocabulary-sized work once per model row
    (`loop.draw_rows`). Returns (state, scale (P, N) float32)."""
    state = update_profile_stats(scaling, state, stats, step, None, grid_size, axis_name=axis_name)
    return _decide(scaling, state, step, total_steps, s_base, axis_name)


def _decide(scaling, state, step, total_steps, s_base, axis_name):
    """Termination, then the next token's guidance scale (steps 2 and 3 of `scalingar_step`)."""
    state = update_termination(scaling, state, step, total_steps, axis_name=axis_name)
    return state, guidance_scale(scaling, state, s_base)
