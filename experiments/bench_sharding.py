"""Compile time and step time of the sharded ScalingAR loop for 1, 2, 4 and 8 devices.

One subprocess per device count D (simulated CPU devices via
XLA_FLAGS=--xla_force_host_platform_device_count=D, set before jax is imported). Each runs the
ScalingAR token loop (profile, pooled statistics and termination gathered over the candidate
axis, per-candidate CFG) on a small random t2i model under `shard_map` on a 1 x D mesh
(candidates split over D devices) and reports:

* compile_s: lowering + XLA compile of `sharding.run_loop` (one bucket);
* step_ms:   median wall time per token step of the whole loop (T steps, no compaction so that
             every step has the same rows), 3 runs after a warm-up;
* for D = 1 also the unsharded `scaling.loop.run_loop` (the shard_map overhead at one device).

THIS MEASURES OVERHEAD, NOT SPEED-UP: the simulated devices of one process share the same CPU
cores (2 on the development machine, shared with other jobs), so more devices means the same
work split into more XLA programs plus collectives (all-gathers over the candidate axis each
step), run on the same cores. Speed-up needs real accelerators (TPU/GPU); see
experiments/tpu_pod.md.

  python experiments/bench_sharding.py                # D = 1 2 4 8
  python experiments/bench_sharding.py --devices 1 8 --grid 8 -n 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTE = ("simulated CPU devices share the same cores: these numbers measure the overhead of "
        "sharding (more programs + collectives), not a speed-up")


def worker(args) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.worker}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scalingar_jax import gpt
    from scalingar_jax import sharding as SH
    from scalingar_jax.config import GPTConfig, SamplingConfig
    from scalingar_jax.scaling import ScalingARConfig
    from scalingar_jax.scaling import loop as L
    from scalingar_jax.scaling import strategies as S

    D = args.worker
    cfg = GPTConfig(model_type="t2i", n_layer=args.layers, n_head=4, dim=args.dim, vocab_size=args.vocab,
                    cls_token_num=8, caption_dim=32, grid_size=args.grid, multiple_of=32)
    sampling = SamplingConfig(cfg_scale=4.0)
    scaling = ScalingARConfig()
    params = jax.jit(gpt.init_params, static_argnums=0)(cfg, jax.random.key(args.seed))
    P, N = args.prompts, args.num_candidates
    cond = np.asarray(jax.random.normal(jax.random.key(1), (P, cfg.cls_token_num, cfg.caption_dim)))
    cond_, mask, pid = S.prepare(cfg, sampling, scaling, cond, None, N, None)
    spec = L.LoopSpec(cfg, sampling, scaling, "scalingar", N)  # no compaction: equal rows every step
    mesh = SH.make_mesh(1, D)
    ex = SH.ShardedExecutor(params, cond_, mask, jax.random.key(2), pid, mesh=mesh, num_candidates=N)
    lspec = L.loop_key(ex.local_spec(spec))
    s0 = jax.block_until_ready(ex.start(spec))
    stop = SH.put(np.int32(cfg.block_size), mesh, jax.sharding.PartitionSpec())
    t = time.perf_counter()
    compiled = SH.run_loop.lower(ex.params, s0, stop, spec=lspec, mesh=mesh).compile()
    compile_s = time.perf_counter() - t

    def timed(fn, repeat=3):
        jax.block_until_ready(fn())
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times)) / cfg.block_size

    row = {"devices": D, "mesh": f"1x{D}", "P": P, "N": N, "T": cfg.block_size, "rows_per_device": 2 * P * N // D,
           "compile_s": round(compile_s, 3), "step_ms": round(timed(lambda: compiled(ex.params, s0, stop)), 3)}
    if D == 1:
        lp = gpt.decode_layout(params)  # the executors' layout
        s1 = L.start_loop(lp, cond_, mask, jax.random.key(2), pid, spec=L.shape_key(spec))
        key = L.loop_key(spec)
        t = time.perf_counter()
        c1 = L.run_loop.lower(lp, s1, spec=key, stop=jnp.int32(cfg.block_size)).compile()
        row["unsharded_compile_s"] = round(time.perf_counter() - t, 3)
        row["unsharded_step_ms"] = round(timed(lambda: c1(lp, s1, stop=jnp.int32(cfg.block_size))), 3)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--grid", type=int, default=8, help="token grid side; T = grid^2")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("-n", "--num-candidates", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_sharding")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print("ROW " + json.dumps(worker(args)), flush=True)
        return
    for d in args.devices:
        if args.num_candidates % d:
            ap.error(f"--num-candidates {args.num_candidates} must be a multiple of every device count ({d})")
    sys.path.insert(0, str(HERE))
    from common import markdown_table, stamp, write_json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    rows = []
    passthrough = [f"--{k}={v}" for k, v in (("grid", args.grid), ("layers", args.layers), ("dim", args.dim),
                                              ("vocab", args.vocab), ("num-candidates", args.num_candidates),
                                              ("prompts", args.prompts), ("seed", args.seed))]
    for d in args.devices:
        proc = subprocess.run([sys.executable, __file__, f"--worker={d}", *passthrough], env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            sys.exit(f"worker with {d} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("ROW "))[4:]))
    cols = ["devices", "mesh", "P", "N", "T", "rows_per_device", "compile_s", "step_ms", "unsharded_compile_s",
            "unsharded_step_ms"]
    print(f"NOTE: {NOTE}.")
    print(markdown_table(rows, cols))
    path = write_json(args.out, {"stamp": stamp(args.seed), "note": NOTE, "config": vars(args) | {"worker": None},
                                 "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
