"""`run_strategy`: the one entry that runs a strategy on a prompt set. It checks every input once
(before anything compiles), builds the `engine.Engine` (one device or the schedule's mesh: the
only place that decides) and picks the scheduler (the only place that decides): the batched
strategies (`strategies`) or the continuous-batching pool (`pool`). `pipeline.generate` calls it
with a pipeline's model, conditioner, decoder and reward.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from scalingar_jax.config import SamplingConfig
from scalingar_jax.sampling import typed_key
from scalingar_jax.scaling import pool as pooled
from scalingar_jax.scaling import strategies as batched
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.engine import Engine, Prompts, RunStats
from scalingar_jax.scaling.loop import StrategyResult
from scalingar_jax.scaling.options import Schedule, Strategy, check_pool
from scalingar_jax.token_model import TokenModel


def run_strategy(model: TokenModel, params, cond, cond_mask=None, *, strategy: Strategy, key,
                 schedule: Schedule = Schedule(), prompt_ids=None, prompts: Sequence[str] | None = None,
                 reward_fn: batched.RewardFn | None = None, decode_fn: batched.DecodeFn | None = None,
                 on_progress: Callable[[int], None] | None = None, progress_every: int | None = None,
                 on_prompt: Callable[[int], None] | None = None) -> tuple[StrategyResult, RunStats]:
    """Runs `strategy` (`options.Strategy`; its sampling / scaling None: the library defaults)
    for P prompts on `model` (a `TokenModel`, e.g. `decode.GPTModel(cfg)`) with weights `params`.

    cond: P conditions as the model takes them (LlamaGen: (P,) class ids or (P, cls, caption_dim)
    features), cond_mask (P, S) or None; key: the base PRNG key, `jax.random.key(seed)` or
    `jax.random.PRNGKey(seed)` (the same tokens; a candidate's key comes from (key, prompt id,
    candidate id)); prompt_ids: (P,) global prompt ids (default 0..P-1).
    schedule: `options.Schedule` (one device or a mesh, compaction, or a pool). Best-of-N and
    importance sampling also take prompts (P strings, one per condition), decode_fn (tokens
    (B, T) -> uint8 images) and reward_fn (images, prompts -> (B,) scores). on_progress(k): the
    batched loop reached token k (after every loop call; progress_every=K: at least every K
    tokens too, the same compiled loop and tokens); on_prompt(i): the pool finished prompt i.

    Returns (`StrategyResult` on the default device, `RunStats`); `winner` indexes this call's
    candidates. Raises ValueError/TypeError naming the problem before anything compiles.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a scaling.options.Strategy, got {type(strategy).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a scaling.options.Schedule, got {type(schedule).__name__}")
    strategy = strategy.with_defaults(SamplingConfig(), ScalingARConfig())
    sampling, scaling, N = strategy.sampling, strategy.scaling, strategy.num_candidates
    sampling.validate(model.vocab_size)
    scaling.validate(model.grid_size, model.block_size)
    cond, cond_mask = model.check_condition(cond, cond_mask)
    key = typed_key(key)
    P = int(cond.shape[0])
    prompt_ids = np.arange(P, dtype=np.int32) if prompt_ids is None else np.asarray(prompt_ids, np.int32)
    if prompt_ids.shape != (P,):
        raise ValueError(f"prompt_ids must have shape ({P},), got {prompt_ids.shape}")
    if strategy.needs_reward:
        if reward_fn is None or decode_fn is None:
            raise ValueError(f"strategy {strategy.name!r} needs a reward function and a decoder")
        if prompts is None or len(prompts) != P:
            raise ValueError(f"got {None if prompts is None else len(prompts)} prompts for {P} conditions")
    if strategy.name == "importance_sampling":
        if strategy.importance.fill_code >= model.vocab_size:
            raise ValueError(f"ImportanceSampling.fill_code must be in [0, {model.vocab_size}), got "
                             f"{strategy.importance.fill_code}")
        strategy.importance.steps(model.block_size)
    pool = schedule.pool
    if pool is not None:
        if strategy.name == "importance_sampling":
            raise ValueError("the prompt pool runs plain, confidence_only, scalingar and best_of_n, not "
                             "importance_sampling (its checkpoints would stop every prompt in the pool)")
        check_pool(pool.rows, N, pool.lanes)

    engine = Engine(model, params, schedule.mesh)  # one device or a mesh: decided here only
    inputs = Prompts(cond, cond_mask, key, prompt_ids, strategy.first_candidate)
    selection = "plain" if strategy.needs_reward else strategy.name
    spec = batched.spec_of(model, sampling, scaling, selection, N, lockstep=pool is None)
    if strategy.name == "importance_sampling":
        return batched.importance_sampling(engine, spec, inputs, prompts, decode_fn, reward_fn, strategy.importance,
                                           on_progress)
    if pool is None:  # batched or pooled: decided here only
        res, stats = batched.token_strategy(engine, spec, inputs, selection,
                                            buckets=batched.compaction_buckets(spec, schedule.buckets),
                                            on_progress=on_progress, progress_every=progress_every)
    else:
        res, stats = pooled.run_pool(engine, spec, inputs, selection, pool, on_prompt)
    if strategy.name == "best_of_n":
        res = batched.pick_by_reward(res, batched.rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn))
    return res, stats

