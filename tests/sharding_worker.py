"""Subprocess worker for tests/test_sharding.py: runs with 8 simulated CPU devices.

Usage: python tests/sharding_worker.py OUT.json [--fast-compile]

Runs every strategy single-device and sharded on several meshes and writes, per case, whether
tokens / winners / token counts / termination steps match exactly and the max float deviation
of scores and entropies. `--fast-compile` lowers XLA's optimization level (both the reference
and the sharded runs get the same compiler settings; it only shortens compile time).
"""
import json
import logging
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
FAST = "--fast-compile" in sys.argv
if FAST:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if FAST:
    jax.config.update("jax_disable_most_optimizations", True)


class _CompileLog(logging.Handler):
    """Collects jax's "Finished XLA compilation of jit(NAME)" log lines."""

    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Finished XLA compilation of jit("):
            self.names.append(msg[len("Finished XLA compilation of jit("):].split(")")[0])


COMPILES = _CompileLog()
logging.getLogger("jax").addHandler(COMPILES)
logging.getLogger("jax").setLevel(logging.WARNING)
jax.config.update("jax_log_compiles", True)

from strategy_runs import run as run_strategy  # noqa: E402

from scalingar_jax import decode, gpt  # noqa: E402
from scalingar_jax import sharding as SH  # noqa: E402
from scalingar_jax.config import GPTConfig, SamplingConfig  # noqa: E402
from scalingar_jax.scaling import ScalingARConfig  # noqa: E402

CFG = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=3, caption_dim=4,
                grid_size=4, multiple_of=16)
SAMPLING = SamplingConfig(cfg_scale=3.0)
AGGRESSIVE = ScalingARConfig(p=0.9, probation_steps=1, rebound_threshold=10.0, lam_theta=1.0)
EXACT = ("tokens", "winner", "tokens_used", "all_tokens", "terminated_at")


def fake_decode(tokens):
    t = np.asarray(tokens)
    return np.broadcast_to((t.sum(1) % 256).astype(np.uint8)[:, None, None, None], (t.shape[0], 4, 4, 3)).copy()


def fake_reward(images, prompts):
    return images.reshape(len(images), -1).mean(1).astype(np.float32)


def cond_of(P, seed=0):
    return jax.random.normal(jax.random.key(seed), (P, CFG.cls_token_num, CFG.caption_dim))


def run(strategy, params, cond, N, mesh=None, **extra):
    kw = dict(key=jax.random.key(3), num_candidates=N, sampling=SAMPLING, mesh=mesh, **extra)
    prompts = [f"p{i}" for i in range(cond.shape[0])]
    if strategy in ("plain", "confidence_only", "scalingar"):
        # the single-device reference is masked (== compacted, tests/test_strategies.py): one loop compile
        return run_strategy(params, CFG, cond, strategy=strategy, scaling=AGGRESSIVE, compaction=mesh is not None,
                            **kw)
    if strategy == "best_of_n":
        return run_strategy(params, CFG, cond, strategy=strategy, prompts=prompts, reward_fn=fake_reward,
                            decode_fn=fake_decode, **kw)
    return run_strategy(params, CFG, cond, strategy=strategy, prompts=prompts, reward_fn=fake_reward,
                        decode_fn=fake_decode, checkpoints=(0.5,), **kw)


def compare(ref, res):
    out = {f: bool(np.array_equal(np.asarray(getattr(ref, f)), np.asarray(getattr(res, f)))) for f in EXACT}
    out["shapes"] = bool(jax.tree.all(jax.tree.map(lambda a, b: np.shape(a) == np.shape(b), ref, res)))
    for f in ("score", "entropy"):
        a, b = np.asarray(getattr(ref, f), np.float64), np.asarray(getattr(res, f), np.float64)
        same_inf = np.array_equal(np.isinf(a), np.isinf(b))
        fin = np.isfinite(a) & np.isfinite(b)
        out[f"{f}_maxdiff"] = float(np.max(np.abs(a[fin] - b[fin]), initial=0.0)) if same_inf else float("inf")
    return out


def model_axis_check(params, ref_loop):
    """Logits with the weights split over a "model" axis vs unsharded (prefill + one step), and
    the (uncompacted) ScalingAR loop with split weights vs `ref_loop`."""
    cond = cond_of(4, seed=7)
    toks = jnp.arange(8, dtype=jnp.int32) % CFG.vocab_size

    ref = jax.jit(lambda prm, cd: logits_c(prm, cd, toks))(params, cond)
    out = {}
    for shape in ((1, 1, 8), (2, 1, 4)):
        mesh = SH.make_mesh(*shape[:2], model_shards=shape[2])
        sp = SH.shard_params(params, mesh, model_axis=SH.MODEL)
        split = sorted(SH.param_path(p) for p, x in jax.tree_util.tree_leaves_with_path(sp)
                       if SH.MODEL in tuple(x.sharding.spec))
        c = SH.put(np.asarray(cond), mesh, jax.sharding.PartitionSpec(SH.PROMPTS))
        compiled = jax.jit(lambda prm, cd: logits_c(prm, cd, toks)).lower(sp, c).compile()
        got = compiled(sp, c)
        hlo = compiled.as_text()
        diff = max(float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ref, got))
        out["x".join(map(str, shape))] = entry = {
            "logits_maxdiff": diff, "split_leaves": split,
            "hlo_collectives": sorted({op for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
                                       if op in hlo})}
        if shape == (2, 1, 4):  # the whole ScalingAR loop with model-split weights (manual over prompts/cands)
            res = run_strategy(sp, CFG, cond_of(2), mesh=mesh, key=jax.random.key(3), num_candidates=8,
                               sampling=SAMPLING, scaling=AGGRESSIVE, compaction=False)
            entry["loop_tokens_equal"] = bool(np.array_equal(res.tokens, ref_loop.tokens))
            entry["loop_winner_equal"] = bool(np.array_equal(res.winner, ref_loop.winner))
    return out


def logits_c(prm, cond, toks):
    lg, cache = decode.prefill(prm, CFG, cond, None, use_cfg=True)
    lg2, _ = decode.decode_step(prm, CFG, cache, toks, jnp.int32(0))
    return lg, lg2


def main():
    out_path = sys.argv[1]
    t0 = time.time()
    params = jax.jit(gpt.init_params, static_argnums=0)(CFG, jax.random.key(0))
    report = {"devices": jax.device_count(), "cases": {}, "fast_compile": FAST}
    strategies = ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling")
    # (mesh, P, N): N=6 on 4 candidate shards and P=3 on 2 prompt shards exercise both paddings
    setups = [((1, 8), 2, 8), ((2, 4), 2, 8), ((8, 1), 2, 8), ((2, 4), 3, 6)]
    refs = {}
    for (shape, P, N) in setups:
        mesh = SH.make_mesh(*shape)
        for strategy in strategies:
            key = (strategy, P, N)
            if key not in refs:
                t = time.time()
                refs[key] = run(strategy, params, cond_of(P), N)
                report.setdefault("timing", {})[f"ref/{strategy}/P{P}N{N}"] = round(time.time() - t, 2)
            t = time.time()
            seen = []
            COMPILES.names.clear()
            res = run(strategy, params, cond_of(P), N, mesh=mesh, on_progress=seen.append)
            case = compare(refs[key], res)
            case["loop_calls"] = len(seen)
            case["loop_compiles"] = COMPILES.names.count("loop_on_mesh")
            case["pruned"] = int(np.sum(np.asarray(refs[key].terminated_at) >= 0))
            report["cases"][f"{strategy}/{shape[0]}x{shape[1]}/P{P}N{N}"] = case
            report["timing"][f"{strategy}/{shape[0]}x{shape[1]}/P{P}N{N}"] = round(time.time() - t, 2)
    # compile once per bucket: a second ScalingAR run with other prompts compiles nothing new
    mesh = SH.make_mesh(2, 4)
    COMPILES.names.clear()
    run_strategy(params, CFG, cond_of(2, seed=5), mesh=mesh, key=jax.random.key(3), num_candidates=8,
                 sampling=SAMPLING, scaling=AGGRESSIVE)
    report["compiles_second_run"] = list(COMPILES.names)
    # "fine" buckets (3 * 2**k pools too) on the padded setup: same results, more loop calls
    seen = []
    res = run_strategy(params, CFG, cond_of(3), mesh=mesh, key=jax.random.key(3), num_candidates=6,
                       sampling=SAMPLING, scaling=AGGRESSIVE, compaction="fine", on_progress=seen.append)
    report["fine_buckets"] = dict(compare(refs[("scalingar", 3, 6)], res), loop_calls=len(seen),
                                  pow2_loop_calls=report["cases"]["scalingar/2x4/P3N6"]["loop_calls"])
    # first_candidate: candidates 4..7 of the 8 on a padded mesh (3 on 2 candidate shards + padding)
    part = run_strategy(params, CFG, cond_of(2), mesh=SH.make_mesh(1, 2), key=jax.random.key(3),
                        num_candidates=3, sampling=SAMPLING, strategy="plain", first_candidate=4)
    report["first_candidate"] = bool(np.array_equal(np.asarray(part.all_tokens),
                                                    np.asarray(refs[("plain", 2, 8)].all_tokens)[:, 4:7]))
    t = time.time()
    report["model_axis"] = model_axis_check(params, refs[("scalingar", 2, 8)])
    report["timing"]["model_axis"] = round(time.time() - t, 2)
    report["seconds"] = time.time() - t0
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
