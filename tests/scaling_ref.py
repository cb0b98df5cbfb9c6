"""An independent float64 NumPy reference of ScalingAR, written from ../shared/specs/scalingar.md
(and the decisions it names: pooled EW running statistics, the termination timeline, the
min-survivor rule), never from the JAX code. Used by the fault-catching tests.

`Ref(cfg, P, N, g, s_base)` holds the state as plain float64/bool/int arrays; `step(lc, lu, k)`
consumes the (P, N, V) logits of raster token k and returns the (P, N) scale for token k+1.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def _ceil_frac(frac: float, n: int) -> int:
    return math.ceil(Fraction(repr(float(frac))) * n)


def softmax64(x):
    x = np.asarray(x, np.float64)
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def token_confidence(lc, aH=0.5, aM=0.5):
    """(Hn, m, 1 - u) of softmax(lc), float64."""
    pc = softmax64(lc)
    V = pc.shape[-1]
    Hn = -(pc * np.log(np.maximum(pc, 1e-300))).sum(-1) / math.log(V)
    top = np.sort(pc, -1)
    m = top[..., -1] - top[..., -2]
    return Hn, m, 1.0 - (aH * Hn + aM * (1.0 - m))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class Ref:
    def __init__(self, cfg, P, N, g, s_base):
        self.cfg, self.P, self.N, self.g, self.T, self.s_base = cfg, P, N, g, g * g, float(s_base)
        self.per_side = -(-g // cfg.block_size)
        nb = self.per_side**2
        z = lambda: np.zeros((P, N))  # noqa: E731
        self.C, self.R, self.I, self.D, self.B, self.s_tok, self.K, self.Cmin = (z() for _ in range(8))
        self.I_mean, self.I_var, self.V = z(), z(), z()
        self.hist = [[[] for _ in range(N)] for _ in range(P)]  # C values of each candidate, in order
        self.blk_sum, self.blk_cnt = np.zeros((P, N, nb)), np.zeros((P, N, nb), int)
        self.stats = {name: np.zeros((P, 2)) for name in ("e", "K", "V")}  # (mu, var) per prompt
        self.stats_init = np.zeros(P, bool)
        self.init = np.zeros((P, N), bool)
        self.alive = np.ones((P, N), bool)
        self.prob = np.zeros((P, N), int)
        self.theta, self.theta_ready = np.zeros(P), np.zeros(P, bool)
        self.terminated_at = np.full((P, N), -1)
        self.tokens_used = np.zeros((P, N), int)

    # ----------------------------------------------------------------- Level 1
    def _pooled(self, name, x, p, alive_p):
        """Running (mu, var) of x over the alive candidates of prompt p; returns (mu, sd)."""
        st = self.stats[name][p]
        xs = x[alive_p]
        if not self.stats_init[p]:
            st[0], st[1] = xs.mean(), xs.var()
        else:
            d2 = np.mean((xs - st[0]) ** 2)
            st[0] = st[0] + self.cfg.lam_stat * (xs.mean() - st[0])
            st[1] = (1 - self.cfg.lam_stat) * (st[1] + self.cfg.lam_stat * d2)
        return st[0], math.sqrt(st[1])

    def profile(self, lc, lu, k):
        c = self.cfg
        ema = lambda old, new, lam, init: np.where(init, (1 - lam) * old + lam * new, new)  # noqa: E731
        tw = np.array([c.aH, c.aM]) / (c.aH + c.aM)
        Hn, _, conf = token_confidence(lc, *tw)
        wt, wb = c.w_tok * c.use_token_level, c.w_blk * c.use_worst_block
        wt, wb = wt / (wt + wb), wb / (wt + wb)
        wI, wD = c.wI, c.wD * c.use_conditional
        wI, wD = wI / (wI + wD), wD / (wI + wD)
        row, col = divmod(k, self.g)
        blk = (row // c.block_size) * self.per_side + col // c.block_size
        pc, pu = softmax64(lc), softmax64(lu)
        kl = (pc * (np.log(pc) - np.log(pu))).sum(-1)
        for p in range(self.P):
            a = self.alive[p].copy()
            if not a.any():
                continue
            init = self.init[p]
            s_tok = ema(self.s_tok[p], conf[p], c.lam_tok, init)
            bsum, bcnt = self.blk_sum[p].copy(), self.blk_cnt[p].copy()
            bsum[:, blk] += Hn[p]
            bcnt[:, blk] += 1
            e = np.zeros(self.N)
            for n in range(self.N):
                E = bsum[n][bcnt[n] > 0] / bcnt[n][bcnt[n] > 0]
                w = max(1, _ceil_frac(c.q, len(E)))
                e[n] = np.sort(E)[::-1][:w].mean()
            mu, sd = self._pooled("e", e, p, a)
            B = 1 - sigmoid((e - mu) / (sd + c.eps))
            I = ema(self.I[p], wt * s_tok + wb * B, c.lam_I, init)
            dI = I - self.I_mean[p]
            I_mean = np.where(init, self.I_mean[p] + c.lam_I * dI, I)
            I_var = np.where(init, (1 - c.lam_I) * (self.I_var[p] + c.lam_I * dI**2), 0.0)
            Kt = ema(self.K[p], kl[p], c.lam_tok, init)
            mu, sd = self._pooled("K", Kt, p, a)
            D = sigmoid((Kt - mu) / (sd + c.eps))
            mu, sd = self._pooled("V", I_var, p, a)
            V = I_var if c.volatility == "raw" else sigmoid((I_var - mu) / (sd + c.eps))
            self.stats_init[p] = True
            C = wI * I + wD * D
            Cmin = np.empty(self.N)
            for n in range(self.N):
                if not a[n]:
                    continue
                self.hist[p][n].append(C[n])
                h = self.hist[p][n]
                if c.rebound_window == "all":
                    Cmin[n] = min(h)
                elif c.rebound_window == "trailing":
                    Cmin[n] = min(h[-c.rebound_steps:])
                else:  # since the current probation run began
                    Cmin[n] = min(self.Cmin[p, n], C[n]) if self.prob[p, n] > 0 else C[n]
            R = (C - Cmin) / (np.abs(Cmin) + c.eps)
            for name, val in (("s_tok", s_tok), ("blk_sum", bsum), ("blk_cnt", bcnt), ("B", B), ("I", I),
                              ("I_mean", I_mean), ("I_var", I_var), ("K", Kt), ("D", D), ("V", V), ("C", C),
                              ("Cmin", Cmin), ("R", R)):
                getattr(self, name)[p][a] = val[a]
            self.init[p] |= a
            self.tokens_used[p] += a

    # ----------------------------------------------------------------- Level 2
    def terminate(self, k):
        c = self.cfg
        W0 = _ceil_frac(c.warmup_frac, self.T)
        for p in range(self.P):
            a = self.alive[p].copy()
            if not a.any():
                continue
            if k >= W0 - 1:
                Q = np.quantile(self.C[p][a], c.p)  # numpy 'linear', over the alive only
                self.theta[p] = (1 - c.lam_theta) * self.theta[p] + c.lam_theta * Q if self.theta_ready[p] else Q
                self.theta_ready[p] = True
            if not c.use_termination or c.p == 0 or k < W0:
                continue
            on = (self.C[p] < self.theta[p]) & (self.R[p] < c.rebound_threshold)
            self.prob[p] = np.where(a, np.where(on, self.prob[p] + 1, 0), self.prob[p])
            want = a & (self.prob[p] >= c.probation_steps) & (k < self.T - 1)
            r = max(0, c.min_survivors - (a.sum() - want.sum()))
            order = sorted(np.flatnonzero(want), key=lambda n: (-self.C[p, n], n))
            for n in order[r:]:
                self.alive[p, n] = False
                self.terminated_at[p, n] = k

    def scale(self):
        c = self.cfg
        alpha = c.alpha if (c.use_conditional or c.conditional_ablation == "confidence") else 0.0
        s = self.s_base + alpha * (1 - self.D) + c.beta * self.V - c.gamma * self.R
        s = np.where(self.init, s, self.s_base)
        if not c.use_scheduler:
            s = np.full_like(s, self.s_base)
        return np.clip(s, c.s_min, 2 * self.s_base if c.s_max is None else c.s_max)

    def step(self, lc, lu, k):
        self.profile(lc, lu, k)
        self.terminate(k)
        return self.scale()
