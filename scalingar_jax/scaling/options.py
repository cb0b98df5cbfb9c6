"""The options of a run, grouped and checked at construction (frozen, hashable).

* `Strategy`: what is searched: the strategy's name, N candidates, the sampling and ScalingAR
  settings (None: the pipeline's defaults), the first candidate id, importance sampling's knobs.
  Results depend on these.
* `Schedule`: how it runs: one device or a mesh, compaction buckets, or a continuous-batching
  `Pool`. Per prompt the results do not depend on these (tests/test_pool.py, test_sharding.py).

A bad value raises one ValueError (TypeError for a wrong type) naming the field, e.g.
"Strategy.num_candidates (N) must be an integer >= 1, got 0". Combinations that need both groups
or the model (a pool without room for N candidates, importance sampling in a pool, a fill code
outside the vocabulary) are checked by `run.run_strategy` before anything compiles.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from jax.sharding import Mesh

from scalingar_jax.config import SamplingConfig
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.loop import BUCKETS, check_buckets
from scalingar_jax.sharding import MODEL, check_mesh

STRATEGIES = ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling")
TOKEN_STRATEGIES = ("plain", "confidence_only", "scalingar")  # reward-free: select by the loop's own signals
REWARD_STRATEGIES = ("best_of_n", "importance_sampling")


def _is_int(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def check_count(name: str, value, minimum: int = 1) -> int:
    """int(value) if it is an integer >= minimum, else a ValueError naming `name`."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ImportanceSampling:
    """TTS-VAR's importance sampling adapted to next-token prediction: at each checkpoint
    fraction c of the T tokens, the partial grids (tokens >= c*T set to `fill_code`) are decoded
    and scored and the candidate slots resampled with probability ~ exp(reward / tau)."""

    checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75)
    tau: float = 0.1
    fill_code: int = 0

    def __post_init__(self):
        cps = self.checkpoints
        if isinstance(cps, (str, bytes)) or not hasattr(cps, "__iter__"):
            raise ValueError(f"ImportanceSampling.checkpoints must be fractions in (0, 1), got {cps!r}")
        cps = tuple(cps)
        if not cps or not all(isinstance(c, (int, float, np.floating)) and not isinstance(c, bool) and 0 < c < 1
                              for c in cps):
            raise ValueError(f"ImportanceSampling.checkpoints must be fractions in (0, 1), got {self.checkpoints!r}")
        object.__setattr__(self, "checkpoints", tuple(float(c) for c in cps))
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float, np.floating)) or not (
                self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"ImportanceSampling.tau must be > 0, got {self.tau!r}")
        object.__setattr__(self, "fill_code", check_count("ImportanceSampling.fill_code", self.fill_code, 0))

    def steps(self, T: int) -> list[int]:
        """The checkpoint token indices for T tokens (sorted, unique); ValueError if one rounds to
        0 or T."""
        cps = sorted({int(round(c * T)) for c in self.checkpoints})
        if any(c <= 0 or c >= T for c in cps):
            raise ValueError(f"ImportanceSampling.checkpoints {self.checkpoints} round to token {cps} of T = {T}; "
                             f"they must fall strictly inside (0, T)")
        return cps


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A search strategy and its settings.

    name: one of `STRATEGIES` (`scaling.strategies` describes them); num_candidates: N >= 1;
    sampling / scaling: `SamplingConfig` / `ScalingARConfig`, None for the pipeline's defaults
    (the library's defaults outside a pipeline); first_candidate: global id of the first of the N
    candidates (reward-free strategies): a candidate's key comes from (seed, prompt id, candidate
    id), so N can be split over calls or hosts; importance: importance sampling's knobs."""

    name: str = "scalingar"
    num_candidates: int = 8
    sampling: SamplingConfig | None = None
    scaling: ScalingARConfig | None = None
    first_candidate: int = 0
    importance: ImportanceSampling = ImportanceSampling()

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise ValueError(f"Strategy.name: unknown strategy {self.name!r}; available: {', '.join(STRATEGIES)}")
        object.__setattr__(self, "num_candidates", check_count("Strategy.num_candidates (N)", self.num_candidates))
        if not _is_int(self.first_candidate) or self.first_candidate < 0:
            raise ValueError(f"Strategy.first_candidate must be an integer >= 0, got {self.first_candidate!r}")
        object.__setattr__(self, "first_candidate", int(self.first_candidate))
        if self.first_candidate and self.name not in TOKEN_STRATEGIES:
            raise ValueError(f"Strategy.first_candidate applies to {', '.join(TOKEN_STRATEGIES)}, not {self.name!r}")
        for field, cls in (("sampling", SamplingConfig), ("scaling", ScalingARConfig)):
            value = getattr(self, field)
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"Strategy.{field} must be a {cls.__name__} or None, got {type(value).__name__}")
        if not isinstance(self.importance, ImportanceSampling):
            raise TypeError(f"Strategy.importance must be an ImportanceSampling, got {type(self.importance).__name__}")
        if self.importance != ImportanceSampling() and self.name != "importance_sampling":
            raise ValueError(f"Strategy.importance applies to importance_sampling, not {self.name!r}")

    @property
    def needs_reward(self) -> bool:
        return self.name in REWARD_STRATEGIES

    def with_defaults(self, sampling: SamplingConfig, scaling: ScalingARConfig) -> "Strategy":
        """This strategy with `sampling` / `scaling` wherever it has None."""
        return dataclasses.replace(self, sampling=self.sampling or sampling, scaling=self.scaling or scaling)


def check_pool(rows, num_candidates: int, lanes=None, prunes: bool = True) -> tuple[int, int]:
    """Validates a pool of `rows` candidate rows (2 model rows each: CFG) for N candidates per
    prompt and `lanes` prompt lanes. lanes None: rows // N, four times that if candidates are
    pruned (`prunes`: a prompt then holds fewer rows, ~0.4 N on average when ScalingAR spends
    40% of Best-of-N's tokens, so more prompts fit; a lane costs its (1, N) candidate updates
    and trajectory writes each step, small but not free). Returns (rows, lanes)."""
    if not _is_int(rows) or rows < 1:
        raise ValueError(f"pool rows must be an integer >= 1, got {rows!r}")
    if int(num_candidates) > int(rows):
        raise ValueError(f"the pool holds {rows} candidate rows ({2 * rows} model rows with CFG) but one prompt "
                         f"needs N = {num_candidates} ({2 * num_candidates} model rows): use a pool of at least "
                         f"{num_candidates} rows or fewer candidates")
    if lanes is None:
        lanes = max(1, (4 if prunes else 1) * (int(rows) // int(num_candidates)))
    if not _is_int(lanes) or lanes < 1:
        raise ValueError(f"pool lanes must be an integer >= 1, got {lanes!r}")
    return int(rows), int(lanes)


def check_shrink(shrink) -> str | None:
    """A pool's shrink option -> its bucket set name, or None for never."""
    if shrink is True:
        return "pow2"
    if shrink is False:
        return None
    if shrink not in BUCKETS:
        raise ValueError(f"Pool.shrink must be True, False or one of {BUCKETS}, got {shrink!r}")
    return shrink


@dataclasses.dataclass(frozen=True)
class Pool:
    """Continuous batching (`scaling.pool`): `rows` candidate rows per device (2 model rows each
    with CFG) that prompts enter as pruned or finished rows free up, `lanes` prompts in flight per
    device (None: `check_pool`'s default), and once no prompt waits the pool shrinks to buckets
    of its occupied rows: shrink True / "pow2", "fine" (also 3 * 2**k) or False."""

    rows: int = 64
    lanes: int | None = None
    shrink: bool | str = True

    def __post_init__(self):
        check_pool(self.rows, 1, self.lanes)
        check_shrink(self.shrink)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Where and how a strategy runs (results per prompt do not depend on it).

    mesh: None (one device) or a `sharding.make_mesh` mesh: the batched strategies split prompts
    and candidates over it; a pool keeps one pool per device. compaction (batched ScalingAR):
    False (masking only), True / "pow2" (the alive candidates of all prompts share a pool shrunk
    at power-of-two sizes) or "fine" (also 3 * 2**k). pool: None (batched) or a `Pool`."""

    mesh: Mesh | None = None
    compaction: bool | str = True
    pool: Pool | None = None

    def __post_init__(self):
        if self.mesh is not None:
            check_mesh(self.mesh)
            if self.pool is not None and MODEL in self.mesh.axis_names:
                raise ValueError("Schedule.pool keeps whole prompts on one device: use a mesh without a 'model' axis")
        if not isinstance(self.compaction, bool):
            check_buckets(self.compaction)
        if self.pool is not None and not isinstance(self.pool, Pool):
            raise TypeError(f"Schedule.pool must be a Pool or None, got {type(self.pool).__name__}")
        if self.pool is not None and self.buckets != "pow2":
            raise ValueError("Schedule.compaction applies to the batched loop; a pool shrinks by Pool.shrink")

    @property
    def buckets(self) -> str | None:
        """The batched loop's compaction bucket set, or None (masking only)."""
        return None if self.compaction is False else "pow2" if self.compaction is True else self.compaction
