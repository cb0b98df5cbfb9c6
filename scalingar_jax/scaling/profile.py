"""ScalingAR Level 1: the per-candidate confidence profile, as pure jit/vmap-friendly functions.

Shapes: `P` prompts, `N` candidates per prompt, `V` vocabulary, `g` grid side, `T = g*g`
tokens, `nb = ceil(g/b)**2` blocks. All arithmetic is float32 whatever the input dtype.

One call of `update_profile` consumes the logits that produced token `k` (raster index
`step`) and updates, for every *alive* candidate (dead ones are frozen and never contribute):

    Hn, m   = token_stats(src)                  src = lc ("cond") or lg ("guided")
    s_tok   = EMA_{lam_tok}(1 - (aH*Hn + aM*(1-m)))
    E_k     = block mean of Hn (block of token k gets Hn)
    e       = mean of the max(1, ceil(q*#nonempty)) highest E_k
    B       = 1 - sigmoid((e - mu_e) / (sd_e + eps))       pooled stats over alive, per prompt
    I       = EMA_{lam_I}(w_tok*s_tok + w_blk*B)
    Var(I)  = exponentially weighted variance of I (rate lam_I)
    K~      = EMA_{lam_tok}(KL(softmax(lc) || softmax(lu)))
    D       = sigmoid((K~ - mu_K) / (sd_K + eps))           pooled stats over alive, per prompt
    C       = wI*I + wD*D;   Cmin = running min of C;   R = (C - Cmin) / (|Cmin| + eps)
    V       = Var(I) ("raw") or sigmoid((Var(I) - mu_V) / (sd_V + eps)) ("zscore", pooled stats)

The window of Cmin is `scaling.rebound_window`: "all" (every step), "probation" (restarts at C
unless the candidate was on probation at the previous step: `state.probation > 0`) or
"trailing" (the last `rebound_steps` profiled steps, kept in the ring buffer `C_hist`).

Every EMA is initialised to its first value (the candidate's `initialized` flag).

Pooled running statistics (**decision**, spec "running z-score")
---------------------------------------------------------------
For a per-candidate quantity x (e or K~) and a prompt with alive set A (n = |A| > 0) the
per-prompt (mu, var) are updated with the batched form of the exponentially weighted
mean/variance recursion (Finch 2009), rate lam = `scaling.lam_stat`:

    first update:  mu = mean_A(x),  var = var_A(x)              (population variance)
    afterwards:    d2 = mean_A((x - mu)^2)                       (old mu)
                   mu <- mu + lam*(mean_A(x) - mu)
                   var <- (1 - lam)*(var + lam*d2)

so the spread combines the cross-candidate spread and the drift over time (with N = 1 it is a
plain temporal z-score). The z-score of the current step uses the statistics *after* the
update (so the first step is well defined: with one candidate z = 0, i.e. 0.5). A prompt with no
alive candidate keeps its statistics.

Candidate sharding (`axis_name`)
--------------------------------
With `axis_name` set, the candidate axis is split over a named mesh/vmap axis (shard_map or
`jax.vmap(..., axis_name=...)`); every per-prompt reduction over candidates (alive count,
sums for means and variances) is a local sum followed by `jax.lax.psum` over `axis_name`, so
the pooled statistics are those of all alive candidates of the prompt, as unsharded. Results
equal the unsharded run up to float32 rounding (summation order, per-shard fusion); they are
not guaranteed bit-identical.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .config import ScalingARConfig

F32 = jnp.float32
# log of the smallest normal float32: floor for log pu in the KL so that an entry with pu = 0
# (lu = -inf) where pc > 0 gives a large but finite KL.
_LOG_TINY = float(np.log(np.finfo(np.float32).tiny))


@struct.dataclass
class ConfidenceState:
    """The ScalingAR state, one pytree with fixed shapes; `P` prompts x `N` candidates.

    Level 1 (float32 unless noted):
      C, R, I, D, B          (P, N)  unified confidence, rebound, intrinsic, drift, block score
      s_tok                  (P, N)  EMA of token-level confidence 1 - u
      K                      (P, N)  EMA of KL(pc || pu)  (K~)
      Cmin                   (P, N)  running min of C (over `scaling.rebound_window`)
      C_hist                 (P, N, H) last H values of C, ring buffer at tokens_used % H
                                     (H = scaling.rebound_history: 1 unless "trailing")
      I_mean, I_var          (P, N)  EW mean / variance of I (Var(I) = I_var)
      V                      (P, N)  the scheduler's volatility input (I_var, or z-scored)
      V_mu, V_var            (P,)    pooled running stats of I_var (for "zscore")
      blk_sum                (P, N, nb) sum of Hn per block;  blk_cnt (P, N, nb) int32 counts
      e_mu, e_var            (P,)    pooled running stats of the worst-block entropy e
      K_mu, K_var            (P,)    pooled running stats of K~
      stats_initialized      (P,)    bool: pooled stats have seen at least one alive candidate
      initialized            (P, N)  bool: the candidate's EMAs hold a value
    Level 2:
      alive                  (P, N)  bool; never goes back to True
      probation              (P, N)  int32 consecutive steps with C < theta and R < rebound_threshold
      theta                  (P,)    termination threshold; theta_ready (P,) bool
      terminated_at          (P, N)  int32 step at which it was terminated, -1 while alive
      tokens_used            (P, N)  int32 tokens sampled while alive (see `update_profile`)
    """

    C: jax.Array
    R: jax.Array
    I: jax.Array
    D: jax.Array
    B: jax.Array
    s_tok: jax.Array
    K: jax.Array
    Cmin: jax.Array
    C_hist: jax.Array
    I_mean: jax.Array
    I_var: jax.Array
    V: jax.Array
    V_mu: jax.Array
    V_var: jax.Array
    blk_sum: jax.Array
    blk_cnt: jax.Array
    e_mu: jax.Array
    e_var: jax.Array
    K_mu: jax.Array
    K_var: jax.Array
    stats_initialized: jax.Array
    initialized: jax.Array
    alive: jax.Array
    probation: jax.Array
    theta: jax.Array
    theta_ready: jax.Array
    terminated_at: jax.Array
    tokens_used: jax.Array

    @property
    def num_prompts(self) -> int:
        return self.C.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.C.shape[1]


def num_blocks(grid_size: int, block_size: int) -> int:
    """nb = ceil(g/b)**2 (edge blocks are smaller when b does not divide g)."""
    return (-(-grid_size // block_size)) ** 2


def block_index(step, grid_size: int, block_size: int):
    """Block of raster token `step`: (row//b)*ceil(g/b) + col//b, row = k//g, col = k%g.

    `step`: int scalar or int32 array (traced is fine); returns the same shape, int32.
    """
    k = jnp.asarray(step, jnp.int32)
    per_side = -(-grid_size // block_size)
    row, col = k // grid_size, k % grid_size
    return (row // block_size) * per_side + col // block_size


def init_state(
    scaling: ScalingARConfig, num_prompts: int, num_candidates: int, grid_size: int
) -> ConfidenceState:
    """A fresh state: everything 0 (finite), all candidates alive, terminated_at = -1."""
    scaling.validate(grid_size)
    for name, v in (("num_prompts", num_prompts), ("num_candidates", num_candidates)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    P, N, nb = num_prompts, num_candidates, num_blocks(grid_size, scaling.block_size)
    zf = jnp.zeros((P, N), F32)
    zp = jnp.zeros((P,), F32)
    return ConfidenceState(
        C=zf, R=zf, I=zf, D=zf, B=zf, s_tok=zf, K=zf, Cmin=zf, I_mean=zf, I_var=zf, V=zf,
        C_hist=jnp.zeros((P, N, scaling.rebound_history), F32),
        V_mu=zp, V_var=zp,
        blk_sum=jnp.zeros((P, N, nb), F32),
        blk_cnt=jnp.zeros((P, N, nb), jnp.int32),
        e_mu=zp, e_var=zp, K_mu=zp, K_var=zp,
        stats_initialized=jnp.zeros((P,), bool),
        initialized=jnp.zeros((P, N), bool),
        alive=jnp.ones((P, N), bool),
        probation=jnp.zeros((P, N), jnp.int32),
        theta=zp,
        theta_ready=jnp.zeros((P,), bool),
        terminated_at=jnp.full((P, N), -1, jnp.int32),
        tokens_used=jnp.zeros((P, N), jnp.int32),
    )


# ---------------------------------------------------------------------------- token level
def _check_logits(logits, name="logits"):
    x = jnp.asarray(logits)
    if x.ndim < 1 or x.shape[-1] < 2:
        raise ValueError(f"{name} must have a last (vocabulary) axis of size >= 2, got shape {x.shape}")
    return x


def _log_softmax(x):
    """float32 log-softmax over the last axis; -inf entries allowed (probability 0).

    A row whose maximum is not finite (all -inf; or +inf/nan) is treated as uniform.
    """
    x = x.astype(F32)
    mx = jnp.max(x, axis=-1, keepdims=True)
    bad = ~jnp.isfinite(mx)
    x = jnp.where(bad, 0.0, x)
    mx = jnp.where(bad, 0.0, mx)
    z = x - mx
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))


def token_stats(logits):
    """Normalized entropy and top-1/top-2 margin of softmax(logits).

    logits: (..., V), any float dtype, V >= 2, entries may be -inf (top-k filtered).
    Returns (Hn, m), both (...) float32 in [0, 1]: Hn = H(p)/log V (V = full last-axis size),
    m = p(v1) - p(v2).
    """
    x = _check_logits(logits)
    V = x.shape[-1]
    logp = _log_softmax(x)
    p = jnp.exp(logp)
    H = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    Hn = jnp.clip(H / np.float32(np.log(V)), 0.0, 1.0)
    i1 = jnp.argmax(logp, axis=-1)
    p1 = jnp.max(p, axis=-1)
    second = jnp.where(jnp.arange(V) == i1[..., None], -jnp.inf, logp)
    p2 = jnp.exp(jnp.max(second, axis=-1))
    m = jnp.clip(p1 - p2, 0.0, 1.0)
    return Hn, m


def kl_divergence(lc, lu):
    """KL(softmax(lc) || softmax(lu)) over the last axis, float32, shape (...), >= 0.

    0 for identical inputs. log softmax(lu) is floored at log(float32 tiny) so the result is
    finite even where lu = -inf and lc is not.
    """
    lc = _check_logits(lc, "lc")
    lu = _check_logits(lu, "lu")
    if lc.shape != lu.shape:
        raise ValueError(f"lc and lu shapes differ: {lc.shape} vs {lu.shape}")
    lpc = _log_softmax(lc)
    lpu = jnp.maximum(_log_softmax(lu), _LOG_TINY)
    pc = jnp.exp(lpc)
    kl = jnp.sum(jnp.where(pc > 0, pc * (lpc - lpu), 0.0), axis=-1)
    return jnp.maximum(kl, 0.0)


# ---------------------------------------------------------------------------- pooled stats
def candidate_sum(x, axis_name: str | None = None):
    """Sum over the candidate axis (axis 1) of a (P, n, ...) array -> (P, ...).

    With `axis_name` (candidate axis split over that named axis) the local sums are psum'd.
    """
    s = jnp.sum(x, axis=1)
    if axis_name is not None:
        s = jax.lax.psum(s, axis_name)
    return s


def _ema(old, new, lam, initialized):
    return jnp.where(initialized, (1.0 - lam) * old + lam * new, new)


def _pooled_update(x, mask, mu, var, stats_init, lam, axis_name):
    """Batched EW mean/variance over the alive candidates of each prompt; see module doc."""
    m = mask.astype(F32)
    n = candidate_sum(m, axis_name)
    has = n > 0
    n_safe = jnp.maximum(n, 1.0)
    xm = jnp.where(mask, x, 0.0)
    bmean = candidate_sum(xm, axis_name) / n_safe
    bvar = candidate_sum(jnp.where(mask, jnp.square(x - bmean[:, None]), 0.0), axis_name) / n_safe
    d2 = candidate_sum(jnp.where(mask, jnp.square(x - mu[:, None]), 0.0), axis_name) / n_safe
    mu_upd = mu + lam * (bmean - mu)
    var_upd = (1.0 - lam) * (var + lam * d2)
    mu_new = jnp.where(stats_init, mu_upd, bmean)
    var_new = jnp.where(stats_init, var_upd, bvar)
    return (
        jnp.where(has, mu_new, mu),
        jnp.where(has, var_new, var),
        stats_init | has,
    )


def _zsig(x, mu, var, eps):
    return jax.nn.sigmoid((x - mu[:, None]) / (jnp.sqrt(var)[:, None] + eps))


def worst_block_entropy(scaling: ScalingARConfig, blk_sum, blk_cnt):
    """e = mean of the max(1, ceil(q*#nonempty)) highest block mean entropies.

    blk_sum: (..., nb) float32, blk_cnt: (..., nb) int32. Empty blocks are ignored; with no
    non-empty block e = 0. Returns (...) float32.
    """
    nb = blk_sum.shape[-1]
    nonempty = blk_cnt > 0
    E = blk_sum / jnp.maximum(blk_cnt, 1).astype(F32)
    n_ne = jnp.sum(nonempty, axis=-1)
    table = jnp.asarray([scaling.worst_block_count(n) for n in range(nb + 1)], jnp.int32)
    k = table[n_ne]
    desc = -jnp.sort(jnp.where(nonempty, -E, jnp.inf), axis=-1)  # highest first, empties -inf
    top = jnp.arange(nb) < k[..., None]
    e = jnp.sum(jnp.where(top & (jnp.arange(nb) < n_ne[..., None]), desc, 0.0), axis=-1)
    return jnp.where(n_ne > 0, e / k.astype(F32), 0.0)


# ---------------------------------------------------------------------------- the update
@struct.dataclass
class LogitStats:
    """What the profile reads from one token's logits, per candidate (any shape, float32):
    Hn, m = `token_stats` of lc (or of the guided logits lg with entropy_source "guided") and
    kl = KL(softmax(lc) || softmax(lu)). The token loop computes them once per model row and
    gathers them to its candidates (`loop.draw_rows`); `update_profile_stats` consumes them."""

    Hn: jax.Array
    m: jax.Array
    kl: jax.Array


def logit_stats(scaling: ScalingARConfig, lc, lu, lg=None) -> LogitStats:
    """`LogitStats` of lc, lu (and lg, read iff scaling.entropy_source == "guided"): (..., V) -> (...)."""
    Hn, m = token_stats(lg if scaling.entropy_source == "guided" else lc)
    return LogitStats(Hn=Hn, m=m, kl=kl_divergence(lc, lu))


def update_profile(
    scaling: ScalingARConfig,
    state: ConfidenceState,
    lc,
    lu,
    step,
    alive,
    grid_size: int,
    lg=None,
    axis_name: str | None = None,
) -> ConfidenceState:
    """Consumes the logits of raster token `step` for every candidate; returns the new state.

    scaling: static. state: `ConfidenceState` with (P, N) fields (N = the local candidate count
    when sharded). lc, lu: (P, N, V) conditional / unconditional logits at temperature 1,
    before top-k/top-p, any float dtype. step: int32 scalar, raster index k of the token just
    sampled (0 <= k < g*g). alive: (P, N) bool or None; the candidates updated are
    `state.alive & alive`. grid_size: static g. lg: (P, N, V) guided logits, required iff
    `scaling.entropy_source == "guided"` (then Hn and m are read from it instead of lc).
    axis_name: mesh/vmap axis over which the candidate axis is split, or None.
    `update_profile_stats` of `logit_stats(scaling, lc, lu, lg)`.
    """
    P, N = state.C.shape
    lc, lu = jnp.asarray(lc), jnp.asarray(lu)
    if lc.ndim != 3 or lc.shape[:2] != (P, N):
        raise ValueError(f"lc must have shape (P={P}, N={N}, V), got {lc.shape}")
    if lu.shape != lc.shape:
        raise ValueError(f"lu shape {lu.shape} differs from lc shape {lc.shape}")
    if scaling.entropy_source == "guided":
        if lg is None:
            raise ValueError("entropy_source='guided' needs the guided logits lg")
        lg = jnp.asarray(lg)
        if lg.shape != lc.shape:
            raise ValueError(f"lg shape {lg.shape} differs from lc shape {lc.shape}")
    return update_profile_stats(scaling, state, logit_stats(scaling, lc, lu, lg), step, alive, grid_size,
                                axis_name)


def update_profile_stats(
    scaling: ScalingARConfig,
    state: ConfidenceState,
    stats: LogitStats,
    step,
    alive,
    grid_size: int,
    axis_name: str | None = None,
) -> ConfidenceState:
    """`update_profile` from the token's `LogitStats` ((P, N) each) instead of its logits.

    Candidates outside the mask keep every field unchanged and are excluded from the pooled
    statistics. `tokens_used` grows by one for every candidate in the mask: a candidate is
    charged for token k when its logits for k are profiled, i.e. a candidate terminated at step
    t (`terminated_at == t`) has been charged for tokens 0..t, t+1 tokens in all.
    """
    P, N = state.C.shape
    nb = state.blk_sum.shape[-1]
    scaling.validate(grid_size)
    if nb != num_blocks(grid_size, scaling.block_size):
        raise ValueError(
            f"state has {nb} blocks but grid_size={grid_size}, block_size={scaling.block_size} "
            f"gives {num_blocks(grid_size, scaling.block_size)}"
        )
    if state.C_hist.shape[-1] != scaling.rebound_history:
        raise ValueError(
            f"state keeps {state.C_hist.shape[-1]} past C values but rebound_window="
            f"{scaling.rebound_window!r} needs {scaling.rebound_history} (build it with init_state(scaling, ...))"
        )
    for name in ("Hn", "m", "kl"):
        if jnp.shape(getattr(stats, name)) != (P, N):
            raise ValueError(f"stats.{name} must have shape (P={P}, N={N}), got {jnp.shape(getattr(stats, name))}")
    a = state.alive
    if alive is not None:
        alive = jnp.asarray(alive)
        if alive.shape != (P, N):
            raise ValueError(f"alive must have shape (P={P}, N={N}), got {alive.shape}")
        a = a & alive.astype(bool)
    init = state.initialized

    # token level
    Hn, m = stats.Hn, stats.m
    aH, aM = scaling.token_weights
    s_tok = _ema(state.s_tok, 1.0 - (aH * Hn + aM * (1.0 - m)), scaling.lam_tok, init)

    # worst block
    onehot = jnp.arange(nb) == block_index(step, grid_size, scaling.block_size)
    blk_sum = state.blk_sum + jnp.where(onehot, Hn[..., None], 0.0)
    blk_cnt = state.blk_cnt + onehot.astype(jnp.int32)
    e = worst_block_entropy(scaling, blk_sum, blk_cnt)
    e_mu, e_var, _ = _pooled_update(
        e, a, state.e_mu, state.e_var, state.stats_initialized, scaling.lam_stat, axis_name
    )
    B = 1.0 - _zsig(e, e_mu, e_var, scaling.eps)

    # intrinsic score and its volatility
    w_tok, w_blk = scaling.intrinsic_weights
    I = _ema(state.I, w_tok * s_tok + w_blk * B, scaling.lam_I, init)
    diff = I - state.I_mean
    I_mean = jnp.where(init, state.I_mean + scaling.lam_I * diff, I)
    I_var = jnp.where(init, (1.0 - scaling.lam_I) * (state.I_var + scaling.lam_I * jnp.square(diff)), 0.0)
    V_mu, V_var, _ = _pooled_update(
        I_var, a, state.V_mu, state.V_var, state.stats_initialized, scaling.lam_stat, axis_name
    )
    V = I_var if scaling.volatility == "raw" else _zsig(I_var, V_mu, V_var, scaling.eps)

    # conditional channel
    K = _ema(state.K, stats.kl, scaling.lam_tok, init)
    K_mu, K_var, stats_init = _pooled_update(
        K, a, state.K_mu, state.K_var, state.stats_initialized, scaling.lam_stat, axis_name
    )
    D = _zsig(K, K_mu, K_var, scaling.eps)

    # unified confidence and rebound
    wI, wD = scaling.unified_weights
    C = wI * I + wD * D
    C_hist = state.C_hist
    if scaling.rebound_window == "trailing":
        H = C_hist.shape[-1]
        slot = jnp.arange(H)
        C_hist = jnp.where(slot == (state.tokens_used % H)[..., None], C[..., None], C_hist)
        filled = slot < jnp.minimum(state.tokens_used + 1, H)[..., None]
        Cmin = jnp.min(jnp.where(filled, C_hist, jnp.inf), axis=-1)
    else:
        cont = init if scaling.rebound_window == "all" else init & (state.probation > 0)
        Cmin = jnp.where(cont, jnp.minimum(state.Cmin, C), C)
    R = (C - Cmin) / (jnp.abs(Cmin) + scaling.eps)

    def keep(new, old):
        mask = a.reshape(a.shape + (1,) * (new.ndim - a.ndim))
        return jnp.where(mask, new, old)

    return state.replace(
        C=keep(C, state.C),
        R=keep(R, state.R),
        I=keep(I, state.I),
        D=keep(D, state.D),
        B=keep(B, state.B),
        s_tok=keep(s_tok, state.s_tok),
        K=keep(K, state.K),
        Cmin=keep(Cmin, state.Cmin),
        C_hist=keep(C_hist, state.C_hist),
        I_mean=keep(I_mean, state.I_mean),
        I_var=keep(I_var, state.I_var),
        V=keep(V, state.V),
        V_mu=V_mu,
        V_var=V_var,
        blk_sum=keep(blk_sum, state.blk_sum),
        blk_cnt=keep(blk_cnt, state.blk_cnt),
        e_mu=e_mu,
        e_var=e_var,
        K_mu=K_mu,
        K_var=K_var,
        stats_initialized=stats_init,
        initialized=init | a,
        tokens_used=state.tokens_used + a.astype(jnp.int32),
    )
