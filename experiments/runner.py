"""The experiments' runner: builds the pipeline, runs strategies over prompt records through
`pipeline.generate`, times them (compile time excluded) and judges their images with the exact
judge, then summarizes the runs (accuracy with stratified bootstrap CIs, paired comparisons;
the statistics themselves are `scalingar_jax.stats`).

Every timing is carried by the value that measured it (`Clock`, `Run`): no module-level state.
`reproduce.py` holds the experiments, their output and the CLI.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax import stats
from scalingar_jax.pipeline import Pipeline, generate
from scalingar_jax.scaling import engine as E
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling import strategies as S
from scalingar_jax.scaling.options import TOKEN_STRATEGIES, ImportanceSampling, Pool, Schedule, Strategy
from scalingar_jax.timing import Clock
from scalingar_jax.world.pipeline import WORLD_SAMPLING, WORLD_SCALING, load_world_pipeline


# ----------------------------------------------------------------------------------------- pipelines
def random_params(init_fn: Callable, cfg, seed: int):
    """Random parameters with the tree of `init_fn(cfg, key)`, filled on the host with NumPy (norm
    scales 1, biases 0, kernels normal / sqrt(fan_in), anything else normal(0.02)). `jax.eval_shape`
    gives the tree without running Flax's initializers op by op (which costs ~30 s of tiny compiles)."""
    shapes = jax.eval_shape(functools.partial(init_fn, cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(leaf.shape)
        if name in ("scale", "weight"):
            x = np.ones(shape)
        elif name == "bias":
            x = np.zeros(shape)
        elif name == "kernel":
            x = rng.standard_normal(shape) / math.sqrt(max(1, int(np.prod(shape[:-1]))))
        else:
            x = 0.02 * rng.standard_normal(shape)
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_world_pipeline(seed: int = 0, grid_size: int = 4) -> Pipeline:
    """A TINY RANDOM shapes-world pipeline built in memory (no checkpoint): 16x16 images, a 4x4
    token grid (T = 16), a 1-layer GPT, random text encoder and reward. Its images are noise;
    it exercises every code path of the experiments in seconds (tests, --smoke)."""
    from scalingar_jax import gpt, vq
    from scalingar_jax.world.random_world import random_world_configs
    from scalingar_jax.world.reward import init_reward_params, reward_scores
    from scalingar_jax.world.text_encoder import encode_prompts, init_text_params

    cfgs = random_world_configs(grid_size)
    vq_params = random_params(vq.init_vq_params, cfgs["vq"], 4 * seed)
    gpt_params = gpt.decode_layout(random_params(gpt.init_params, cfgs["gpt"], 4 * seed + 1))  # as loaders do
    text_params = random_params(init_text_params, cfgs["text"], 4 * seed + 2)
    reward_params = random_params(init_reward_params, cfgs["reward"], 4 * seed + 3)
    text_cfg, reward_cfg = cfgs["text"], cfgs["reward"]

    def condition(prompts):
        return encode_prompts(text_params, text_cfg, list(prompts))

    def reward(images, prompts):
        return np.asarray(reward_scores(reward_params, reward_cfg, images, list(prompts)))

    return Pipeline(gpt_params=gpt_params, gpt_cfg=cfgs["gpt"], vq_params=vq_params, vq_cfg=cfgs["vq"],
                    condition=condition, reward=reward, sampling=WORLD_SAMPLING, scaling=WORLD_SCALING,
                    name=f"tiny random world (seed {seed}, untrained)")


def load_pipe(checkpoint: str | None) -> Pipeline:
    """`random` / `random:SEED`: the tiny random world; else the trained world at `checkpoint`
    (default checkpoints/shapes or $SCALINGAR_CHECKPOINT)."""
    if checkpoint is not None and checkpoint.startswith("random"):
        m = re.fullmatch(r"random(?::(\d+))?", checkpoint)
        if not m:
            raise ValueError(f"--checkpoint {checkpoint!r}: use 'random' or 'random:SEED' for the tiny random world")
        return tiny_world_pipeline(int(m.group(1) or 0))
    return load_world_pipeline(checkpoint)



# ----------------------------------------------------------------------------------------- timing
# ----------------------------------------------------------------------------------------- prompts
def prompt_set(split: str, per_tag: int, per_kind: int | None = None) -> list[dict]:
    """The prompt records of a split, split by SCENE (`world.scenes`: no evaluation scene is in any
    training data or in the development set, under any wording): eval (evaluation scenes, per_tag per
    tag), dev (development scenes) or hard (hard set, per_kind per kind, default per_tag)."""
    from scalingar_jax.world import prompts as W
    from scalingar_jax.world import scenes

    if split == "eval":
        return scenes.evaluation_set_v2(seed=0, per_tag=per_tag)
    if split == "dev":
        return scenes.development_set_v2(seed=1, per_tag=per_tag)
    if split == "hard":
        return W.hard_set(seed=2, per_kind=per_kind or per_tag)
    raise ValueError(f"unknown split {split!r}; use eval, dev or hard")


def group_of(record: dict, split: str) -> str:
    """Tag for eval/dev records; the hard kind for hard-set records."""
    if split == "hard":
        from scalingar_jax.world.prompts import hard_kind

        return hard_kind(record) or record["tag"]
    return record["tag"]


# ----------------------------------------------------------------------------------------- runs
@dataclasses.dataclass
class Run:
    """One strategy on one prompt set for one seed. correct (n,) bool, tokens (n,) int per record;
    seconds: generation wall clock (compile excluded) over `slots` prompt slots. per_candidate:
    arrays (n, N, ...) of the shared N-candidate set (not written to JSON): all_tokens, correct
    (the judge), reward (learned), mean_confidence (confidence-only's score)."""

    correct: np.ndarray
    tokens: np.ndarray
    seconds: float
    slots: int
    compile_s: float
    extra: dict = dataclasses.field(default_factory=dict)
    per_candidate: dict | None = None

    @property
    def s_per_image(self) -> float:
        return self.seconds / max(1, self.slots)


def batches(n: int, P: int):
    """Yields (real record indices, prompt ids of the P slots): the last batch padded with ids >= n."""
    P = max(1, min(P, n))
    for start in range(0, n, P):
        idx = list(range(start, min(start + P, n)))
        yield idx, idx + [n + j for j in range(P - len(idx))]


def slot_prompts(records: Sequence[dict], idx: Sequence[int], ids: Sequence[int]) -> list[str]:
    """The prompts of a batch's slots (`batches`): records idx, then the first one repeated as padding."""
    return [records[i]["prompt"] for i in idx] + [records[idx[0]]["prompt"]] * (len(ids) - len(idx))


def judge(images: np.ndarray, records: Sequence[dict]) -> np.ndarray:
    """The judge's verdicts: images (n, H, W, 3) uint8 and their n records -> (n,) bool."""
    return judge_detail(images, records)[0]


def judge_detail(images: np.ndarray, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """images (n, H, W, 3) uint8, n records -> the judge's verdicts (n,) bool and the drawn area (n,)
    int: pixels of all detected objects."""
    from scalingar_jax.world.judge import judge_image

    verdicts = [judge_image(im, r) for im, r in zip(images, records)]
    return (np.array([bool(v.correct) for v in verdicts]),
            np.array([sum(d.area for d in v.detected) for v in verdicts], np.int64))


class Runner:
    """Runs strategies on prompt sets, memoizing every (split, sizes, strategy, config, seed) run
    within this process, so experiments sharing a run (e.g. `all`) compute it once."""

    def __init__(self, pipe: Pipeline, batch: int, is_kwargs: dict | None = None, pool: int | None = None):
        """pool: None (batched calls of `batch` prompts) or the candidate rows of the prompt pool
        (`scaling.pool`) that plain / confidence_only / scalingar runs stream every record through."""
        self.pipe, self.batch, self.is_kwargs, self.pool = pipe, batch, dict(is_kwargs or {}), pool
        self.memo: dict = {}

    def _key(self, *parts):
        return json.dumps([str(p) for p in parts])

    # -- reward-free strategies and importance sampling, through `generate`
    def token(self, records, split, strategy, N, seed, scaling=None, sampling=None) -> Run:
        """`strategy` with N candidates on the n records (named `split` for the memo): a Run with the
        judge's verdict on each record's image and its tokens, (n,) each."""
        scaling = scaling or self.pipe.scaling
        sampling = sampling or self.pipe.sampling
        key = self._key("token", split, len(records), records[0]["prompt"], strategy, N, seed, self.batch,
                        scaling if strategy == "scalingar" else None, sampling, self.is_kwargs, self.pool)
        if key not in self.memo:
            self.memo[key] = self._token(records, strategy, N, seed, scaling, sampling)
        return self.memo[key]

    def _token(self, records, strategy, N, seed, scaling, sampling) -> Run:
        n = len(records)
        correct, tokens = np.zeros(n, bool), np.zeros(n, np.int64)
        seconds = compile_s = 0.0
        slots = 0
        term, pruned = [], []
        importance = ImportanceSampling(**self.is_kwargs) if strategy == "importance_sampling" else ImportanceSampling()
        st = Strategy(strategy, N, sampling=sampling, scaling=scaling, importance=importance)
        pooled = self.pool is not None and strategy in TOKEN_STRATEGIES
        schedule = Schedule(pool=Pool(self.pool)) if pooled else Schedule()  # pooled: every record in one call
        for idx, ids in ([(list(range(n)), list(range(n)))] if pooled else batches(n, self.batch)):
            prompts = slot_prompts(records, idx, ids)
            with Clock() as c:
                out = generate(self.pipe, prompts, st, seed=seed, schedule=schedule, prompt_ids=ids)
            seconds += c.seconds
            compile_s += c.compile
            slots += len(ids)
            m = len(idx)
            correct[idx] = judge(out.images[:m], [records[i] for i in idx])
            tokens[idx] = np.asarray(out.result.tokens_used)[:m]
            if strategy == "scalingar":
                t = np.asarray(out.result.terminated_at)[:m]
                pruned.append((t >= 0).mean(1))
                term.extend(t[t >= 0].tolist())
        extra = {}
        if strategy == "scalingar":
            extra = {"pruned_fraction": float(np.mean(np.concatenate(pruned))),
                     "mean_termination_step": float(np.mean(term)) if term else None}
        return Run(correct, tokens, seconds, slots, compile_s, extra)

    # -- the shared N-candidate set: confidence-only, Best-of-N (learned), Best-of-N (oracle)
    def candidates(self, records, split, N, seed, sampling=None) -> dict[str, Run]:
        """The shared N-candidate set on the n records, judged and scored: Runs of confidence-only,
        best_of_n (learned reward; its per_candidate holds the (n, N, ...) arrays), oracle_bon and
        plain_mean (each record's mean correctness over its N candidates)."""
        sampling = sampling or self.pipe.sampling
        key = self._key("cands", split, len(records), records[0]["prompt"], N, seed, self.batch, sampling)
        if key not in self.memo:
            self.memo[key] = self._candidates(records, N, seed, sampling)
        return self.memo[key]

    def _candidates(self, records, N, seed, sampling) -> dict[str, Run]:
        pipe = self.pipe
        n, T = len(records), pipe.gpt_cfg.block_size
        win = {k: np.zeros(n, bool) for k in ("confidence", "best_of_n", "oracle_bon")}
        cand_correct, cand_area = np.zeros((n, N), bool), np.zeros((n, N), np.int64)
        reward, mean_conf = np.zeros((n, N)), np.zeros((n, N))
        cand_tokens = np.zeros((n, N, T), np.int32)
        sec = {k: 0.0 for k in ("loop", "decode", "reward", "judge")}
        compile_s, slots = 0.0, 0
        for idx, ids in batches(n, self.batch):
            P, m = len(ids), len(idx)
            prompts = slot_prompts(records, idx, ids)
            with Clock() as c:
                out = generate(pipe, prompts, Strategy("confidence_only", N, sampling=sampling), seed=seed,
                               prompt_ids=ids)
            sec["loop"] += c.seconds
            compile_s += c.compile
            all_tokens = np.asarray(out.result.all_tokens)
            with Clock() as c:
                images = pipe.decode_images(all_tokens.reshape(P * N, T))
            sec["decode"] += c.seconds
            compile_s += c.compile
            with Clock() as c:
                r = S.check_reward(pipe.reward(images, [p for p in prompts for _ in range(N)]), P * N).reshape(P, N)
            sec["reward"] += c.seconds
            compile_s += c.compile
            images = images.reshape(P, N, *images.shape[1:])
            with Clock() as c:  # the oracle reward: the exact judge on every candidate
                cc, area = map(np.stack, zip(*(judge_detail(images[j], [records[i]] * N) for j, i in enumerate(idx))))
            sec["judge"] += c.seconds * P / m
            slots += P
            cand_correct[idx], cand_area[idx] = cc, area
            reward[idx] = r[:m]
            mean_conf[idx] = np.asarray(out.result.score)[:m]
            cand_tokens[idx] = all_tokens[:m]
            rows = np.arange(m)
            win["confidence"][idx] = cc[rows, np.asarray(out.result.winner)[:m]]
            win["best_of_n"][idx] = cc[rows, np.argmax(r[:m], axis=1)]
            win["oracle_bon"][idx] = cc[rows, np.argmax(cc, axis=1)]
        tokens = np.full(n, N * T)
        loop = sec["loop"]  # includes conditioning and decoding the selected image
        runs = {
            "confidence": Run(win["confidence"], tokens, loop, slots, compile_s),
            "best_of_n": Run(win["best_of_n"], tokens, loop + sec["decode"] + sec["reward"], slots, compile_s),
            "oracle_bon": Run(win["oracle_bon"], tokens, loop + sec["decode"] + sec["judge"], slots, compile_s),
            "plain_mean": Run(cand_correct.mean(1), np.full(n, T), loop / N, slots, compile_s),
        }
        # how well the learned reward agrees with the judge on this model's own samples
        runs["best_of_n"].extra = {"reward_judge_auroc": stats.auroc(reward, cand_correct),
                                   "seconds_split": dict(sec),
                                   "candidate_accuracy": float(cand_correct.mean()),
                                   "any_correct": float(cand_correct.any(1).mean())}
        runs["best_of_n"].per_candidate = {"all_tokens": cand_tokens, "correct": cand_correct, "reward": reward,
                                           "mean_confidence": mean_conf, "area": cand_area}
        return runs



    # -- selections among the first M candidates of a shared set (the same keys: Best-of-M's own set)
    @staticmethod
    def first_of(cands: dict[str, "Run"], M: int) -> dict[str, "Run"]:
        """Best-of-M (learned reward), the oracle's Best-of-M and confidence-only over the FIRST M
        candidates of a shared N-candidate set (`candidates`, M <= N). A candidate's key depends on
        (seed, prompt id, candidate id) only, so these are the candidates a Best-of-M run samples (up to
        the rounding of a matmul over another number of rows). Tokens: M * T per record; seconds: the
        set's token loop scaled by M / N (plus, for Best-of-M, its decode + reward time scaled alike)."""
        bon = cands["best_of_n"]
        pc = bon.per_candidate
        n, N, T = pc["all_tokens"].shape
        if not 1 <= M <= N:
            raise ValueError(f"M must be in [1, {N}], got {M}")
        rows, cc = np.arange(n), pc["correct"][:, :M]
        split = bon.extra["seconds_split"]
        loop = split["loop"] * M / N
        tokens = np.full(n, M * T)
        mk = lambda correct, seconds: Run(correct, tokens, seconds, bon.slots, 0.0, {"first_of": N})  # noqa: E731
        return {"best_of_n": mk(cc[rows, np.argmax(pc["reward"][:, :M], 1)],
                                loop + (split["decode"] + split["reward"]) * M / N),
                "oracle_bon": mk(cc.any(1), loop + (split["decode"] + split["judge"]) * M / N),
                "confidence": mk(cc[rows, np.argmax(pc["mean_confidence"][:, :M], 1)], loop)}

    # -- ScalingAR's confidence profile of every candidate (no memo: one experiment uses it)
    def profiles(self, records, N, seed, scaling) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`generate(strategy="scalingar")` with `scaling` over the records in batches: the candidates'
        tokens (n, N, T) int32 and the profile traj[c] (T, n, N) float32 for c in C, I, D."""
        n, T = len(records), self.pipe.gpt_cfg.block_size
        tokens = np.zeros((n, N, T), np.int32)
        curves = {c: np.zeros((T, n, N), np.float32) for c in "CID"}
        for idx, ids in batches(n, self.batch):
            m = len(idx)
            prompts = slot_prompts(records, idx, ids)
            res = generate(self.pipe, prompts, Strategy("scalingar", N, scaling=scaling), seed=seed,
                           prompt_ids=ids).result
            tokens[idx] = np.asarray(res.all_tokens)[:m]
            for c in "CID":
                curves[c][:, idx] = np.asarray(res.traj[c])[:, :m]
        return tokens, curves


# ----------------------------------------------------------------------------------------- token-loop cost
def loop_memory(pipe: Pipeline, spec: L.LoopSpec, P: int, rows: int) -> float:
    """Compiled peak bytes of the jitted token loop (arguments + outputs + temporaries - aliased) for P
    prompts with a pool of `rows` model rows (P * N: uncompacted) on one device, lowered on abstract
    inputs (nothing allocated)."""
    cfg = pipe.gpt_cfg
    engine = E.Engine(spec.model, pipe.gpt_params)
    local = engine.place(spec, P).spec
    cond = jax.ShapeDtypeStruct((P, cfg.cls_token_num, cfg.caption_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((P, cfg.cls_token_num), jnp.bool_)
    ids = jax.ShapeDtypeStruct((P,), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    data, impl = E.SH.split_key(jax.random.key(0))
    state = jax.eval_shape(functools.partial(E.run_prefill, spec=L.shape_key(local), mesh=engine.mesh, impl=impl),
                           engine.params, cond, mask, data, ids, scalar)
    if rows != P * spec.num_candidates:
        state = jax.eval_shape(functools.partial(E.run_compact, rows=rows, spec=L.shape_key(local), mesh=engine.mesh),
                               state)
    ma = E.run_loop.lower(engine.params, state, scalar, scalar, scalar, spec=L.loop_key(local),
                          mesh=engine.mesh).compile().memory_analysis()
    if ma is None:
        return float("nan")
    return float(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                 - ma.alias_size_in_bytes)


def loop_step_ms(pipe: Pipeline, spec: L.LoopSpec, records: Sequence[dict], W0: int) -> float:
    """Milliseconds per step of the jitted token loop on records[0] (P = 1) over its first W0 steps
    (before any pruning), one device: the best of 3 timed runs after one compiling run."""
    engine = E.Engine(spec.model, pipe.gpt_params)
    cond, mask = spec.model.check_condition(*pipe.condition([records[0]["prompt"]]))
    s0 = engine.prefill(spec, cond, mask, jax.random.key(0), np.zeros((1,), np.int32))
    local = L.loop_key(engine.place(spec, 1).spec)
    args = (engine.params, s0, np.int32(W0), np.int32(engine.rows(s0) + 1), np.int32(-1))
    jax.block_until_ready(E.run_loop(*args, spec=local, mesh=engine.mesh))  # compile
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(E.run_loop(*args, spec=local, mesh=engine.mesh))
        ts.append(time.perf_counter() - t)
    return 1e3 * min(ts) / W0


def sequential_best_of_n(pipe: Pipeline, rec: dict, N: int, seed: int) -> tuple[float, float, bool, np.ndarray]:
    """Best-of-N as the paper timed it (Table 5: its BoN took 218.44 s, 8.8x its base run, i.e. the N
    candidates one after another): N plain N = 1 runs of candidates 0..N-1 (first_candidate = c: the
    batched set's keys, prompt id 0 as in `Runner`; tokens equal up to batch-size rounding), then the
    learned reward on the N images. Returns (seconds of it all, seconds of the N generate calls, the
    judge's verdict on the reward's pick, the candidates' tokens (N, T) int)."""
    with Clock() as c:
        outs = [generate(pipe, [rec["prompt"]], Strategy("plain", 1, first_candidate=j), seed=seed, prompt_ids=[0])
                for j in range(N)]
        images = np.concatenate([o.images for o in outs])
        r = S.check_reward(pipe.reward(images, [rec["prompt"]] * N), N)
    tokens = np.stack([np.asarray(o.result.all_tokens)[0, 0] for o in outs])
    return c.seconds, sum(o.seconds for o in outs), bool(judge(images[[int(np.argmax(r))]], [rec])[0]), tokens


# ----------------------------------------------------------------------------------------- summaries
def mean_correct(runs: Sequence[Run]) -> np.ndarray:
    """Each record's correctness averaged over the runs (seeds): (n,) float."""
    return np.mean([r.correct.astype(float) for r in runs], axis=0)


def summarize(runs: dict[str, list[Run]], records: Sequence[dict], split: str, B: int,
              labels: Mapping[str, str] | None = None) -> tuple[dict, stats.StratifiedBootstrap]:
    """Per strategy (runs[name]: one Run per seed on the n records): overall (+ stratified bootstrap
    CI over records, grouped by `group_of`, per-seed values and their t-interval), per group accuracy
    (+ CI), tokens/image (+ CI), seconds/image (mean over seeds, range). Returns the summaries and the
    bootstrap (B resamples), whose draws `compare` reuses for paired differences."""
    labels = labels or {}
    bs = stats.StratifiedBootstrap.from_groups([group_of(r, split) for r in records], B)
    out = {}
    for name, rs in runs.items():
        x = mean_correct(rs)
        tok = np.mean([r.tokens for r in rs], axis=0).astype(float)
        seed_overall = [bs.point(r.correct.astype(float)) for r in rs]
        secs = [r.s_per_image for r in rs]
        out[name] = {
            "label": labels.get(name, name),
            "overall": bs.point(x), "overall_ci": stats.percentile_ci(bs.overall(x)),
            "overall_per_seed": seed_overall, "overall_t_interval": stats.t_interval(seed_overall),
            "per_group": {g: {"accuracy": bs.group_point(x, g), "ci": stats.percentile_ci(bs.group(x, g)),
                              "n": int(len(bs.index[g]))} for g in bs.names},
            "tokens_per_image": float(tok.mean()),
            "tokens_ci": stats.percentile_ci(stats.bootstrap_means(tok, B, 0)),
            "s_per_image": float(np.mean(secs)), "s_per_image_range": [float(min(secs)), float(max(secs))],
            "compile_s": float(sum(r.compile_s for r in rs)),
            "per_record_correct": [r.correct.astype(float).round(3).tolist() for r in rs],
            "extra": [r.extra for r in rs if r.extra],
        }
    return out, bs


def compare(runs: dict[str, list[Run]], bs: stats.StratifiedBootstrap, a: str, b: str) -> dict:
    """Paired difference a - b of the overall score, its bootstrap CI (the draws of `bs`) and the
    relative change: {"a", "b", **stats.paired_difference}."""
    return {"a": a, "b": b, **stats.paired_difference(mean_correct(runs[a]), mean_correct(runs[b]), bs)}
