"""ScalingAR: confidence-driven test-time scaling (pure-function level).

`config`  -- `ScalingARConfig` (every hyperparameter, ablation switches, `ABLATIONS` presets).
`profile` -- Level 1: `ConfidenceState`, `init_state`, `token_stats`, `kl_divergence`,
             `update_profile` (from logits), `LogitStats` / `logit_stats` / `update_profile_stats`
             (from the per-candidate statistics the token loop computes once per model row).
`policy`  -- Level 2: `guidance_scale`, `update_termination`, `select_winner`,
             `tokens_per_prompt`, `masked_quantile`, and `scalingar_step` (one whole step; from
             `LogitStats`: `scalingar_update`).
The engine and its schedulers (imported on demand):
`loop`    -- the engine's traced pieces: `DecodeState`, `LoopSpec`, `step` (calls
             `scalingar_update`), `token_loop`, `prefill`, `insert`, `compact`, `harvest`, buckets.
`engine`  -- `Engine`: a `token_model.TokenModel` and its weights on a mesh (1 x 1 for one
             device), the pieces jitted under shard_map.
`strategies` -- the batched scheduler: plain, confidence-only, ScalingAR (+ compaction),
             Best-of-N, importance sampling.
`pool`    -- the pooled scheduler: continuous batching over a prompt set.
`options` -- `Strategy`, `Schedule`, `Pool`, `ImportanceSampling`: a run's options, checked.
`run`     -- `run_strategy`: the one entry (validates, picks one device or a mesh, batched or pooled).
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
