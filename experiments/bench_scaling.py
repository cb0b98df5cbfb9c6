"""ScalingAR cost, side by side in one run, on random LlamaGen weights (default GPT-B, N = 8).

1. Per-step time of the ScalingAR step (profile + policies + per-row CFG) vs the plain CFG step,
   both inside the same jitted while-loop over the same rows (steps before any pruning).
2. Whole-loop wall clock: ScalingAR with compaction vs Best-of-N's N full trajectories (token
   loops only: BoN's reward and image decoding are NOT included, which favours BoN), the tokens
   each spent, and the pool row-steps each ran (model rows per CFG half, summed over steps:
   compaction pads the alive candidates of all P prompts to a power-of-two pool, or with
   "fine" buckets to the next of 1, 2, 3, 4, 6, 8, 12, ...). Time saved
   follows row-steps only as far as the step cost is linear in the rows (it is not at small
   batches on a CPU: the weights are read once per step however few rows there are).

  python experiments/bench_scaling.py --preset GPT-B --grid 16 -n 8
  python experiments/bench_scaling.py --preset GPT-B --grid 16 -n 8 --prompts 8 --rounds 3 --skip-masked \
      --out bench_scaling_p8
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax import gpt  # noqa: E402
from scalingar_jax.config import SamplingConfig, gpt_config  # noqa: E402
from scalingar_jax.decode import GPTModel  # noqa: E402
from scalingar_jax.scaling import ScalingARConfig  # noqa: E402
from scalingar_jax.scaling import engine as E  # noqa: E402
from scalingar_jax.scaling import loop as L  # noqa: E402
from scalingar_jax.scaling import strategies as S  # noqa: E402
from scalingar_jax.scaling.options import Schedule, Strategy  # noqa: E402
from scalingar_jax.scaling.run import run_strategy  # noqa: E402


def _time_steps(engine, spec, cond, key, n_steps, repeat=3):
    """ms per step of the first n_steps of the one-device token loop (no compaction), compile seconds."""
    P = cond.shape[0]
    s0 = jax.block_until_ready(engine.prefill(spec, cond, None, key, np.arange(P, dtype=np.int32)))
    local = L.loop_key(engine.place(spec, P).spec)
    args = (engine.params, s0, np.int32(n_steps), np.int32(engine.rows(s0) + 1), np.int32(-1))
    t = time.perf_counter()
    jax.block_until_ready(E.run_loop(*args, spec=local, mesh=engine.mesh))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(E.run_loop(*args, spec=local, mesh=engine.mesh))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)) / n_steps, compile_s


def _gate(text: str) -> tuple[int, float]:
    """'DELTA_REC:P' -> (Delta_rec >= 1, p in [0, 1])."""
    try:
        d, p = text.split(":")
        d, p = int(d), float(p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gate must be DELTA_REC:P like 2:0.5, got {text!r}") from None
    if d < 1 or not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"gate needs Delta_rec >= 1 and 0 <= p <= 1, got {text!r}")
    return d, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-B", help="LlamaGen preset (random weights, c2i)")
    ap.add_argument("--grid", type=int, default=16, help="token grid side; T = grid^2")
    ap.add_argument("--layers", type=int, default=None,
                    help="override the preset's layer count (smoke runs; the results name it)")
    ap.add_argument("-n", "--num-candidates", type=int, default=8, help="candidates per prompt N")
    ap.add_argument("--prompts", type=int, default=1, help="prompts per batch P (rows = 2 P N)")
    ap.add_argument("--steps", type=int, default=16, help="steps timed for the per-step comparison")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved plain / ScalingAR rounds of the per-step comparison (overhead = median ratio)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--delta-rec", type=int, default=None,
                    help="probation length Delta_rec (default: 32 scaled to T, i.e. max(2, round(32*T/1024)))")
    ap.add_argument("--gates", nargs="*", type=_gate, default=[(2, 0.5)], metavar="DELTA_REC:P",
                    help="extra termination gates (probation length Delta_rec : quantile p) timed in the whole-loop "
                         "comparison besides the spec's default, to show how pruned tokens turn into saved time "
                         "at other pruning rates (random weights have no 'right' gate)")
    ap.add_argument("--buckets", nargs="+", default=["pow2", "fine"], choices=list(L.BUCKETS),
                    help="compaction pool sizes timed for every ScalingAR gate: pow2 (1, 2, 4, ...) and/or fine "
                         "(adds 3, 6, 12, ...); default both")
    ap.add_argument("--skip-loop", action="store_true", help="only the per-step comparison")
    ap.add_argument("--skip-masked", action="store_true",
                    help="leave out the masking-only ScalingAR loop (as slow as Best-of-N; saves time at large P)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_scaling", help="results name under experiments/results/")
    args = ap.parse_args(argv)

    overrides = {} if args.layers is None else {"n_layer": args.layers}
    cfg = gpt_config(args.preset, "c2i", grid_size=args.grid, param_dtype=args.dtype, dtype=args.dtype, **overrides)
    T = cfg.block_size
    params = gpt.decode_layout(jax.jit(functools.partial(gpt.init_params, cfg))(jax.random.key(args.seed)))
    cond = jnp.arange(args.prompts, dtype=jnp.int32)
    key = jax.random.key(args.seed)
    sampling = SamplingConfig(cfg_scale=4.0, top_k=2000 if cfg.vocab_size > 2000 else 0)
    delta = args.delta_rec or max(2, round(32 * T / 1024))
    scaling = ScalingARConfig(probation_steps=delta)
    N = args.num_candidates

    model = GPTModel(cfg)
    engine = E.Engine(model, params)
    plain = S.spec_of(model, sampling, scaling, "plain", N)
    sar = S.spec_of(model, sampling, scaling, "scalingar", N)
    rows = []
    # Interleave the two measurements round by round to share the machine's noise; the overhead
    # is the median over rounds of the per-round ratio.
    p_all, s_all = [], []
    for r in range(args.rounds):
        p_r, c_p = _time_steps(engine, plain, cond, key, args.steps)
        s_r, c_s = _time_steps(engine, sar, cond, key, args.steps)
        if r == 0:
            p_c, s_c = c_p, c_s
        p_all.append(p_r)
        s_all.append(s_r)
    ratio = float(np.median(np.asarray(s_all) / np.asarray(p_all)))
    p_ms, s_ms = float(np.median(p_all)), float(np.median(s_all))
    rows.append({"what": "per-step plain CFG", "ms": p_ms, "compile_s": p_c})
    rows.append({"what": "per-step ScalingAR", "ms": s_ms, "compile_s": s_c,
                 "ratio": ratio, "overhead_pct": 100 * (ratio - 1)})
    out = {"stamp": stamp(args.seed), "config": {"preset": args.preset, "grid": args.grid, "T": T, "N": N,
                                                 "P": args.prompts, "dtype": args.dtype, "Delta_rec": delta,
                                                 "n_layer": cfg.n_layer},
           "per_step": {"plain_ms": p_ms, "scalingar_ms": s_ms, "overhead_pct": 100 * (ratio - 1),
                        "rounds": {"plain_ms": p_all, "scalingar_ms": s_all}}}
    if not args.skip_loop:
        runs = {}
        gates = [(f"scalingar + compaction (spec gate Delta_rec={delta} p={scaling.p})", scaling)]
        for d, p in args.gates:
            gates.append((f"scalingar + compaction, gate Delta_rec={d} p={p}",
                          dataclasses.replace(scaling, probation_steps=d, p=p)))
        def tok(strategy="scalingar", scaling=scaling, compaction=True):
            return run_strategy(model, params, cond, key=key, strategy=Strategy(strategy, N, sampling=sampling,
                                                                                  scaling=scaling),
                                schedule=Schedule(compaction=compaction))[0]

        variants = [("best_of_n (token loop)", functools.partial(tok, strategy="plain"), False)]
        if not args.skip_masked:
            variants.append(("scalingar, masking only (spec gate)",
                             functools.partial(tok, scaling=scaling, compaction=False), False))
        for name, sc in gates:
            for b in args.buckets:
                variants.append((name + ("" if b == "pow2" else f" [{b} buckets]"),
                                 functools.partial(tok, scaling=sc, compaction=b), b))
        for name, fn, buckets in variants:
            jax.block_until_ready(fn().tokens)  # compile every bucket first
            t = time.perf_counter()
            res = fn()
            jax.block_until_ready(res.tokens)
            sec = time.perf_counter() - t
            pools = L.pool_schedule(res.traj["alive"], compaction=bool(buckets), buckets=buckets or "pow2")
            runs[name] = (sec, int(np.sum(res.tokens_used)) / args.prompts, sum(pools), sorted(set(pools)))
        bon_s = runs["best_of_n (token loop)"][0]
        full = N * T * args.prompts  # Best-of-N's row-steps
        out["loop"] = {k: {"seconds": sec, "tokens_per_image": tok, "tokens_pct_of_bon": 100 * tok / (N * T),
                           "pool_row_steps_pct_of_bon": 100 * rs / full, "pool_sizes": sizes,
                           "speedup_vs_bon": bon_s / sec}
                       for k, (sec, tok, rs, sizes) in runs.items()}
        for name, d in out["loop"].items():
            rows.append({"what": name, "s_per_prompt": d["seconds"] / args.prompts, **d})
    table = markdown_table(rows, ["what", "ms", "ratio", "overhead_pct", "s_per_prompt", "tokens_per_image",
                                  "tokens_pct_of_bon", "pool_row_steps_pct_of_bon", "speedup_vs_bon",
                                  "compile_s"])
    print(table)
    out["table"] = table
    print(f"wrote {write_json(args.out, out)}")


if __name__ == "__main__":
    main()
