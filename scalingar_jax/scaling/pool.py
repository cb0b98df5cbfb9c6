"""The pooled scheduler: continuous batching over a prompt set, a fixed pool of model rows that
prompts enter and leave, on the same `engine.Engine` as the batched strategies.

The batched scheduler (`strategies`) runs P prompts together from token 0 to T: rows that
ScalingAR prunes only pay off at the next compaction bucket, and the device runs at the width
of the slowest prompt. Here every device keeps a pool of M candidate rows (2M model rows: cond
rows 0..M-1, uncond rows M..2M-1) that runs without pause; a prompt enters when a pool has room
for its N candidates and a free lane, is prefilled into free rows (`Engine.insert`) and decodes;
the rows of pruned candidates and of finished prompts are reused by the next prompt, as LLM
servers do with continuous batching. Once no prompt waits, the drained pools shrink to buckets
of their occupied rows (`Engine.compact`, as the batched loop compacts).

Every row carries its own position (the model's decode step with per-row positions): a
prompt's candidates share their prompt's token index k, prompts in a pool are at different k.
A prompt's candidates stay in lock-step on one device, so the per-prompt ScalingAR state (pooled
statistics, quantile threshold, termination, winner) is the batched loop's: each prompt lives
in a lane advanced by `loop.candidate_step` under `vmap` (the engine's per-lane mode), while the
vocabulary-sized work of a step is done once per pool row (`loop.draw_rows`), each row at its
lane's token index. Keys come from (seed, prompt id, candidate id) and token k's draw from the
step, so per prompt the tokens, winners, token counts and termination steps are the batched
run's (floats such as C may differ in the last bits: XLA rounds the (1, N) per-lane math, and
a matmul over another number of rows, differently; tests/test_pool.py).

The host (`run_pool`) only admits, shrinks and harvests between loop calls: the loop leaves when
a pool has room for the next prompt, when the fullest pool fits a smaller bucket, or when every
lane is done (`loop.token_loop`; one compile per pool size and lane count). Importance sampling
is not pooled: its checkpoints would stop the pool whenever any prompt reaches one, to decode and
score that prompt's partial grid.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Callable

import jax
import numpy as np

from scalingar_jax.scaling.engine import Engine, Prompts, RunStats, run_stats
from scalingar_jax.scaling.loop import LoopSpec, StrategyResult, bucket, compaction_limit
from scalingar_jax.scaling.options import Pool, check_pool, check_shrink


def stack_results(parts: list[StrategyResult]) -> StrategyResult:
    """P = 1 results -> one result over all prompts (traj (T, P, ...): prompts on axis 1), on
    the default device."""
    parts = [jax.tree.map(np.asarray, p) for p in parts]
    cat = lambda xs, axis=0: jax.device_put(np.concatenate(xs, axis=axis))  # noqa: E731 (no compile, unlike jnp.asarray)
    traj = {name: cat([p.traj[name] for p in parts], 1) for name in parts[0].traj}
    fields = {f.name: cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(StrategyResult)
              if f.name != "traj"}
    return StrategyResult(**fields, traj=traj)


def run_pool(engine: Engine, spec: LoopSpec, prompts: Prompts, strategy: str, pool: Pool,
             on_prompt: Callable[[int], None] | None = None) -> tuple[StrategyResult, RunStats]:
    """Runs every prompt through one pool of `pool.rows` candidate rows and `pool.lanes` lanes
    per device of the engine's mesh. spec: the run's `LoopSpec` with lockstep False; strategy:
    "plain", "confidence_only" or "scalingar" (selection). on_prompt(i): called when prompt i
    is done. Returns (the `StrategyResult` over all P prompts, in input order, as the batched
    scheduler returns it; `RunStats`, rows summed over devices)."""
    N, T = spec.num_candidates, spec.T
    rows, lanes = check_pool(pool.rows, N, pool.lanes, spec.policy == "scalingar" and spec.scaling.use_termination)
    buckets = check_shrink(pool.shrink)
    cond = np.asarray(prompts.cond)  # admissions pick rows on the host
    mask = None if prompts.cond_mask is None else np.asarray(prompts.cond_mask)
    P, D = prompts.count, engine.devices
    s = engine.empty(spec, rows, lanes, prompts.key)
    pending, done = deque(range(P)), {}
    lane_prompt, lane_k, free = np.full((D, lanes), -1), np.full((D, lanes), T), np.full((D,), rows)
    cur, sizes = rows, [rows]
    while True:
        for d, q in zip(*np.nonzero((lane_prompt >= 0) & (lane_k >= T))):  # harvest the lanes that finished
            done[lane_prompt[d, q]] = engine.harvest(spec, s, [d * lanes + q], strategy)  # async: read at the end
            if on_prompt is not None:
                on_prompt(int(lane_prompt[d, q]))
            lane_prompt[d, q] = -1
        while pending:  # admit while a pool has room: at most one prompt per pool and call
            todo = []
            for d in range(D):
                if pending and free[d] >= N and (lane_prompt[d] < 0).any():
                    q = int(np.argmax(lane_prompt[d] < 0))
                    todo.append((d, q, pending.popleft()))
                    lane_prompt[d, q], lane_k[d, q], free[d] = todo[-1][2], 0, free[d] - N
            if not todo:
                break
            s = engine.insert(spec, s, cond, mask, prompts.key, prompts.prompt_ids, prompts.first_candidate, todo)
        if not pending and (lane_prompt < 0).all():
            break
        tail = buckets is not None and not pending and cur > 1
        s, info = engine.generate(spec, s, need=N if pending else cur + 1,
                                  shrink=compaction_limit(cur, buckets) if tail else -1)
        free, lane_k = info.free, info.k.reshape(D, lanes)
        if tail and (lane_k < T).any() and info.occupied <= compaction_limit(cur, buckets):
            new = bucket(max(1, info.occupied), buckets)
            s, free, cur = engine.compact(spec, s, new), free - (cur - new), new
            sizes.append(new)
    return stack_results([done[i] for i in range(P)]), run_stats(engine, s, rows, sizes)
