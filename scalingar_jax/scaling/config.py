"""`ScalingARConfig`: every ScalingAR hyperparameter (spec Levels 1 and 2) as a static field.

The dataclass is frozen and made only of Python scalars/strings, so it is hashable and can be
passed as a `jax.jit` static argument. The constructor checks everything that does not need
the grid size; `validate(grid_size)` adds the grid-dependent checks. Both raise `ValueError`
(or `TypeError` for a wrong field type) with the offending field's name, before any trace.

Mixture weights and ablations (**decision**)
-------------------------------------------
Three convex mixtures appear in the profile:

    u = aH*Hn + aM*(1 - m)                      (token uncertainty)
    I = EMA(w_tok*s_tok + w_blk*B)              (intrinsic score)
    C = wI*I + wD*D                             (unified confidence)

The ablation switches zero exactly one term: `use_token_level=False` sets w_tok to 0,
`use_worst_block=False` sets w_blk to 0, `use_conditional=False` sets wD to 0. With
`renormalize=True` (default) each mixture's *effective* weights are then divided by the sum
of its active weights, so every mixture stays convex and `u, s_tok, B, I, D, C` stay in [0, 1]
(with the paper's defaults, which already sum to 1, renormalizing changes nothing). Hence
e.g. with `use_conditional=False` the confidence is exactly `C = I`, and with
`use_token_level=False` the intrinsic input is exactly `B`. With `renormalize=False` the raw
weights are used (the switch still zeroes its weight) and the [0, 1] ranges are no longer
guaranteed. A mixture whose active weights are all 0 is rejected.

`use_conditional=False` only removes D from C (the spec's `wD = 0`); D is still computed and
the scheduler's `alpha*(1 - D)` term is untouched (set `alpha=0` to drop it as well).
`conditional_ablation` says what `use_conditional=False` removes: "confidence" (default, the
spec's `wD = 0`) removes D from C only; "everywhere" also drops the scheduler's
`alpha*(1 - D)` term (equivalent to also setting `alpha=0`). Issue 21 measured both
(`experiments/scaling_questions.py`).

`use_termination=False` never prunes (theta is still tracked, for diagnostics);
`use_scheduler=False` makes `guidance_scale` return the fixed `s_base` (fixed CFG).

Open readings measured in issue 21 (defaults = the spec's literal reading)
------------------------------------------------------------------------
`rebound_window` is the window of the running minimum `Cmin` that the rebound
`R = (C - Cmin) / (|Cmin| + eps)` is measured from:
  * "all" (default, the spec read literally): every step of the candidate, warm-up included.
  * "probation": the steps of the current probation run (the minimum restarts at the current C
    whenever the candidate was not on probation at the previous step, so R = 0 there and a
    candidate below theta goes on probation at once; it is released only if C rebounds by
    `delta_rec` relative to its lowest point *during* probation). R is the state's one rebound, so
    the scheduler's `-gamma*R` then also reads it (0 off probation).
  * "trailing": the last `rebound_steps` profiled steps of the candidate (current one included).
`volatility` is the scheduler's `Var(I)` input: "raw" (default, the spec's EW variance of I,
~1e-4 on real models, so `beta*Var(I)` barely moves the scale) or "zscore" (the variance
z-scored with pooled per-prompt running statistics and squashed by a sigmoid exactly as D is,
so the term is in (0, 1) like `1 - D`).

Rates not given by the spec (**decision**)
-----------------------------------------
`lam_stat` is the EMA rate of the pooled per-prompt running statistics (mean and variance of
the worst-block entropy `e` for Nroll, and of the smoothed KL `K~` for D). The KL smoothing
itself uses `lam_tok` as the spec says.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Literal

ENTROPY_SOURCES = ("cond", "guided")
REBOUND_WINDOWS = ("all", "probation", "trailing")
VOLATILITIES = ("raw", "zscore")
CONDITIONAL_ABLATIONS = ("confidence", "everywhere")

# Paper Tables 2 and 4, as field overrides of the full method.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_conditional": {"use_conditional": False},
    "no_worst_block": {"use_worst_block": False},
    "no_token_level": {"use_token_level": False},
    "termination_only": {"use_scheduler": False},  # fixed CFG, adaptive termination
    "scheduler_only": {"use_termination": False},  # adaptive CFG, no pruning
}

# Upper bounds of the integer fields (a token grid has at most 256 x 256 steps, `config.MAX_SIZE`)
# and of every number: far above any use (rebound_threshold=1e9 is a way to write "never"), low
# enough that no field can ask for unbounded memory or overflow a 32-bit step counter.
MAX_INT = {"block_size": 256, "probation_steps": 1 << 16, "min_survivors": 1 << 16, "rebound_steps": 1 << 16}
MAX_VALUE = 1e12

_RATES = ("lam_tok", "lam_I", "lam_theta", "lam_stat")
_FRACTIONS = ("q", "p", "warmup_frac")
_WEIGHTS = ("aH", "aM", "w_tok", "w_blk", "wI", "wD", "alpha", "beta", "gamma")
_BOOLS = (
    "use_conditional",
    "use_worst_block",
    "use_token_level",
    "use_termination",
    "use_scheduler",
    "renormalize",
)


def exact_ceil(frac: float, n: int) -> int:
    """`ceil(frac * n)` computed on the decimal value of `frac` (so `ceil(0.1 * 30) == 3`)."""
    return math.ceil(Fraction(repr(float(frac))) * n)


@dataclasses.dataclass(frozen=True)
class ScalingARConfig:
    """All ScalingAR hyperparameters; defaults are the paper's / the spec's.

    Level 1 (confidence profile): `aH, aM` (token uncertainty weights), `lam_tok` (s_tok and
    K EMA rate), `block_size` (b), `q` (worst-block fraction), `w_tok, w_blk` (intrinsic
    weights), `lam_I` (I EMA rate and Var(I) rate), `wI, wD` (unified weights),
    `entropy_source` ("cond": softmax(lc); "guided": the guided logits passed as `lg`),
    `lam_stat` (pooled running-statistics rate), `eps`.
    Level 2 (policies): `alpha, beta, gamma` (scheduler gains), `s_min`, `s_max` (None:
    2*s_base), `warmup_frac`, `p` (threshold quantile), `lam_theta`, `rebound_threshold` (the paper's
    delta_rec: a candidate whose rebound R reaches it is not on probation), `probation_steps`
    (the paper's Delta_rec: consecutive probation steps before termination), `min_survivors`.
    Ablation switches: `use_conditional, use_worst_block, use_token_level, use_termination,
    use_scheduler`, and `renormalize` (see the module docstring).
    Open readings (module docstring, issue 21): `rebound_window` ("all" | "probation" |
    "trailing"), `rebound_steps` (trailing window length), `volatility` ("raw" | "zscore"),
    `conditional_ablation` ("confidence" | "everywhere"); defaults are the spec's reading.
    """

    # Level 1
    aH: float = 0.5
    aM: float = 0.5
    lam_tok: float = 0.2
    block_size: int = 4
    q: float = 0.1
    w_tok: float = 0.65
    w_blk: float = 0.35
    lam_I: float = 0.2
    wI: float = 0.75
    wD: float = 0.25
    entropy_source: Literal["cond", "guided"] = "cond"
    lam_stat: float = 0.2
    eps: float = 1e-6
    # Level 2
    alpha: float = 0.3
    beta: float = 0.4
    gamma: float = 0.4
    s_min: float = 1.0
    s_max: float | None = None
    warmup_frac: float = 0.125
    p: float = 0.2
    lam_theta: float = 0.2
    rebound_threshold: float = 0.05  # delta_rec
    probation_steps: int = 32  # Delta_rec
    min_survivors: int = 1
    # ablations
    use_conditional: bool = True
    use_worst_block: bool = True
    use_token_level: bool = True
    use_termination: bool = True
    use_scheduler: bool = True
    renormalize: bool = True
    # open readings (issue 21); defaults: the spec read literally
    rebound_window: Literal["all", "probation", "trailing"] = "all"
    rebound_steps: int = 32
    volatility: Literal["raw", "zscore"] = "raw"
    conditional_ablation: Literal["confidence", "everywhere"] = "confidence"

    def __post_init__(self):
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, hi in MAX_INT.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {str(v)[:40]!r}")
            if v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {str(v)[:40]}")
        floats = _RATES + _FRACTIONS + _WEIGHTS + ("eps", "s_min", "rebound_threshold")
        for name in floats + (("s_max",) if self.s_max is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
            if abs(v) > MAX_VALUE:
                raise ValueError(f"{name} must be in [-{MAX_VALUE:g}, {MAX_VALUE:g}], got {v:g}")
        for name in _RATES:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"EMA rate {name} must be in [0, 1], got {v}")
        for name in _FRACTIONS:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in _WEIGHTS:
            v = getattr(self, name)
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.entropy_source not in ENTROPY_SOURCES:
            raise ValueError(
                f"entropy_source must be one of {ENTROPY_SOURCES}, got {self.entropy_source!r}"
            )
        for name, allowed in (("rebound_window", REBOUND_WINDOWS), ("volatility", VOLATILITIES),
                              ("conditional_ablation", CONDITIONAL_ABLATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.rebound_steps < 1:
            raise ValueError(f"rebound_steps must be >= 1, got {self.rebound_steps}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.probation_steps < 1:
            raise ValueError(f"probation_steps (Delta_rec) must be >= 1, got {self.probation_steps}")
        if self.min_survivors < 1:
            raise ValueError(f"min_survivors must be >= 1, got {self.min_survivors}")
        if self.s_min < 0:
            raise ValueError(f"s_min must be >= 0, got {self.s_min}")
        if self.s_max is not None and self.s_max < self.s_min:
            raise ValueError(f"s_max={self.s_max} must be >= s_min={self.s_min}")
        if self.aH + self.aM <= 0:
            raise ValueError("aH + aM must be > 0 (token uncertainty has no term)")
        if self.w_tok * self.use_token_level + self.w_blk * self.use_worst_block <= 0:
            raise ValueError(
                "the intrinsic score has no active term: w_tok*use_token_level + "
                "w_blk*use_worst_block must be > 0"
            )
        if self.wI + self.wD * self.use_conditional <= 0:
            raise ValueError("the unified confidence has no active term: wI + wD*use_conditional must be > 0")

    # ------------------------------------------------------------------ construction
    @classmethod
    def ablation(cls, name: str, **overrides) -> "ScalingARConfig":
        """The config of a named ablation (`ABLATIONS`), with extra field overrides."""
        if name not in ABLATIONS:
            raise KeyError(f"unknown ablation {name!r}; available: {', '.join(ABLATIONS)}")
        return cls(**{**ABLATIONS[name], **overrides})

    def replace(self, **changes) -> "ScalingARConfig":
        return dataclasses.replace(self, **changes)

    def validate(self, grid_size: int, total_steps: int | None = None) -> "ScalingARConfig":
        """Grid-dependent checks (`block_size <= grid_size`); returns self."""
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"grid_size must be an int >= 1, got {grid_size!r}")
        if self.block_size > grid_size:
            raise ValueError(f"block_size={self.block_size} is larger than grid_size={grid_size}")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        return self

    # ------------------------------------------------------------------ derived (static)
    def blocks_per_side(self, grid_size: int) -> int:
        return -(-grid_size // self.block_size)

    def num_blocks(self, grid_size: int) -> int:
        return self.blocks_per_side(grid_size) ** 2

    def warmup_steps(self, total_steps: int) -> int:
        """W0 = ceil(warmup_frac * T)."""
        return exact_ceil(self.warmup_frac, total_steps)

    def worst_block_count(self, n_nonempty: int) -> int:
        """|W_t| = max(1, ceil(q * #non-empty blocks))."""
        return max(1, exact_ceil(self.q, n_nonempty))

    def resolved_s_max(self, s_base):
        return 2.0 * s_base if self.s_max is None else self.s_max

    @property
    def rebound_history(self) -> int:
        """Length of the per-candidate C history the state keeps (`rebound_steps` when the
        rebound window is "trailing", else 1)."""
        return self.rebound_steps if self.rebound_window == "trailing" else 1

    @staticmethod
    def _norm(ws: tuple[float, ...], renormalize: bool) -> tuple[float, ...]:
        if not renormalize:
            return tuple(float(w) for w in ws)
        total = float(sum(ws))
        return tuple(float(w) / total for w in ws)

    @property
    def token_weights(self) -> tuple[float, float]:
        """Effective (aH, aM)."""
        return self._norm((self.aH, self.aM), self.renormalize)

    @property
    def intrinsic_weights(self) -> tuple[float, float]:
        """Effective (w_tok, w_blk) after the token-level / worst-block switches."""
        return self._norm(
            (self.w_tok * self.use_token_level, self.w_blk * self.use_worst_block), self.renormalize
        )

    @property
    def unified_weights(self) -> tuple[float, float]:
        """Effective (wI, wD) after the conditional switch."""
        return self._norm((self.wI, self.wD * self.use_conditional), self.renormalize)
