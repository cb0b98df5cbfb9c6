"""ScalingAR: confidence-driven test-time scaling (pure-function level).

`config`  -- `ScalingARConfig` (every hyperparameter, ablation switches, `ABLATIONS` presets).
`profile` -- Level 1: `ConfidenceState`, `init_state`, `token_stats`, `kl_divergence`,
             `update_profile` (from logits), `LogitStats` / `logit_stats` / `update_profile_stats`
             (from the per-candidate statistics the token loop computes once per model row).
`policy`  -- Level 2: `guidance_scale`, `update_termination`, `select_winner`,
             `tokens_per_prompt`, `masked_quantile`, and `scalingar_step` (one whole step; from
             `LogitStats`: `scalingar_update`).
`loop`    -- the token loop over the KV-cache decoder (imported on demand): `LoopState`,
             `LoopSpec`, `step` (calls `scalingar_update`), `run_loop`, compaction buckets, the
             `Executor` interface, `LocalExecutor`, `drive`.
`strategies` -- plain, confidence-only, ScalingAR, Best-of-N, importance sampling on an
             executor, and their entries `run_*(..., mesh=None)` (imported on demand).
"""
from .config import ABLATIONS, ENTROPY_SOURCES, ScalingARConfig
from .policy import (
    guidance_scale,
    masked_quantile,
    scalingar_step,
    scalingar_update,
    select_winner,
    tokens_per_prompt,
    update_termination,
)
from .profile import (
    ConfidenceState,
    LogitStats,
    block_index,
    candidate_sum,
    init_state,
    kl_divergence,
    logit_stats,
    num_blocks,
    token_stats,
    update_profile,
    update_profile_stats,
    worst_block_entropy,
)

__all__ = [
    "ABLATIONS",
    "ENTROPY_SOURCES",
    "ScalingARConfig",
    "ConfidenceState",
    "init_state",
    "token_stats",
    "kl_divergence",
    "update_profile",
    "LogitStats",
    "logit_stats",
    "update_profile_stats",
    "worst_block_entropy",
    "block_index",
    "num_blocks",
    "candidate_sum",
    "guidance_scale",
    "update_termination",
    "masked_quantile",
    "select_winner",
    "tokens_per_prompt",
    "scalingar_step",
    "scalingar_update",
]
