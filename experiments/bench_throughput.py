"""Images per second over a prompt set, side by side in one run: plain, Best-of-N (batched) and
ScalingAR (batched with compaction, and through the prompt pool `scaling.pool`).

Two workloads: the shapes world (its evaluation prompts, 120 = 20 per tag by default; the
bundle's sampling/ScalingAR settings) and random LlamaGen weights (GPT-B c2i, class ids as
prompts, probation scaled to T as in bench_scaling.py). Batched runs take `--batch` prompts a
call (rows = 2 * batch * N); the pool holds the same rows (`--pool`, default batch * N
candidate rows) and lets a prompt in as soon as pruned or finished rows make room. Plain runs
batch * N prompts a call (the same rows, one image each). Every strategy is run once on a few
prompts first (compiles), then timed over the whole set (wall clock, compile excluded).
Best-of-N is timed three times: its token loop alone, batched and through the pool (favours
it), and with its image decoding and reward (what it costs); the criterion of issue 20 uses the
faster token loop alone:

    ScalingAR (pool) images/s >= 0.8 x (BoN tokens / ScalingAR tokens) x BoN images/s

Timing: after a warm-up call per variant, `--repeat` rounds run every variant once each,
interleaved; a variant's figure is its fastest round.

  python experiments/bench_throughput.py                                   # both workloads, defaults
  python experiments/bench_throughput.py --workload shapes --per-tag 20 --batch 8 --repeat 2 --out bench_throughput_shapes
  python experiments/bench_throughput.py --workload gpt-b --grid 8 --layers 2 --prompts 64 --batch 4 --repeat 2 \
      --out bench_throughput_gptb
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import jsonable, markdown_table, stamp, write_json  # noqa: E402
from runner import Clock, load_pipe, prompt_set, random_params  # noqa: E402

from scalingar_jax import gpt  # noqa: E402
from scalingar_jax.config import SamplingConfig, gpt_config  # noqa: E402
from scalingar_jax.decode import GPTModel  # noqa: E402
from scalingar_jax.scaling import ScalingARConfig  # noqa: E402
from scalingar_jax.scaling.options import Pool, Schedule, Strategy, check_pool  # noqa: E402
from scalingar_jax.scaling.run import run_strategy  # noqa: E402


def shapes_workload(args):
    pipe = load_pipe(args.checkpoint)
    records = prompt_set("eval", args.per_tag)
    prompts = [r["prompt"] for r in records]
    cond, mask = pipe.condition(prompts)
    return dict(name="shapes world" if args.checkpoint is None else f"shapes world ({args.checkpoint})",
                params=pipe.gpt_params, cfg=pipe.gpt_cfg, cond=np.asarray(cond),
                mask=None if mask is None else np.asarray(mask), prompts=prompts, sampling=pipe.sampling,
                scaling=pipe.scaling, reward=pipe.reward, decode=pipe.decode_images)


def gptb_workload(args):
    overrides = {} if args.layers is None else {"n_layer": args.layers}
    cfg = gpt_config(args.preset, "c2i", grid_size=args.grid, **overrides)
    params = gpt.decode_layout(random_params(gpt.init_params, cfg, args.seed))
    T = cfg.block_size
    n = args.prompts
    return dict(name=f"random {args.preset} c2i grid {args.grid} ({cfg.n_layer} layers)", params=params, cfg=cfg,
                cond=np.arange(n, dtype=np.int32) % cfg.num_classes, mask=None, prompts=[str(i) for i in range(n)],
                sampling=SamplingConfig(cfg_scale=4.0, top_k=2000 if cfg.vocab_size > 2000 else 0),
                scaling=ScalingARConfig(probation_steps=max(2, round(32 * T / 1024))), reward=None, decode=None)


def _batched(w, strategy, N, batch, key):
    """A function of a prompt index list running `strategy` over it in calls of `batch` prompts
    (the last call padded with copies of its first prompt, as experiments/runner.py does, so every
    call has the compiled shapes); returns (tokens used per prompt, None)."""
    def run(idx):
        used = []
        for i in range(0, len(idx), batch):
            real = np.asarray(idx[i:i + batch])
            sl = np.concatenate([real, np.full(batch - len(real), real[0])])
            ids = np.concatenate([real, len(w["prompts"]) + np.arange(batch - len(real))])
            cond = w["cond"][sl]
            mask = None if w["mask"] is None else w["mask"][sl]
            name = "best_of_n" if strategy == "best_of_n+reward" else strategy
            res, _ = run_strategy(GPTModel(w["cfg"]), w["params"], cond, mask, key=key, prompt_ids=ids,
                                  strategy=Strategy(name, N, sampling=w["sampling"], scaling=w["scaling"]),
                                  prompts=[w["prompts"][j] for j in sl], reward_fn=w["reward"], decode_fn=w["decode"])
            used.append(np.asarray(res.tokens_used)[:len(real)])
        return np.concatenate(used), None
    return run


def _pooled(w, strategy, N, rows, lanes, key):
    def run(idx):
        idx = np.asarray(idx)
        mask = None if w["mask"] is None else w["mask"][idx]
        res, stats = run_strategy(GPTModel(w["cfg"]), w["params"], w["cond"][idx], mask, key=key, prompt_ids=idx,
                                  strategy=Strategy(strategy, N, sampling=w["sampling"], scaling=w["scaling"]),
                                  schedule=Schedule(pool=Pool(rows, lanes)))
        return np.asarray(res.tokens_used), stats
    return run


def bench(w, args) -> dict:
    N, batch = args.num_candidates, args.batch
    rows = args.pool or batch * N
    key = jax.random.key(args.seed)
    n = len(w["prompts"])
    # (name, N, run, prompts of the warm-up call: one batch, or a few prompts through the pool)
    variants = [("plain (N=1, batched)", 1, _batched(w, "plain", 1, batch * N, key), batch * N),
                ("best_of_n token loop (batched)", N, _batched(w, "plain", N, batch, key), batch)]
    if w["reward"] is not None:
        variants.append(("best_of_n + decode + reward (batched)", N, _batched(w, "best_of_n+reward", N, batch, key),
                         batch))
    variants += [("scalingar (batched, compaction)", N, _batched(w, "scalingar", N, batch, key), batch),
                 ("scalingar (pool)", N, _pooled(w, "scalingar", N, rows, args.lanes, key), 2),
                 ("best_of_n token loop (pool)", N, _pooled(w, "plain", N, rows, args.lanes, key), 2)]
    out, warm = {}, {}
    for name, n_cand, fn, n_warm in variants:
        with Clock() as c0:
            fn(list(range(min(n, n_warm))))  # compiles (the pool: once for its size)
        warm[name] = c0.compile
    # --repeat rounds, every variant once per round (interleaved, so a slow spell of a shared
    # machine hits all of them); a variant's time is its fastest round (compiles of pool sizes
    # the warm-up did not reach fall in the first round)
    for r in range(args.repeat):
        for name, n_cand, fn, n_warm in variants:
            with Clock() as c:
                used, stats = fn(list(range(n)))
            d = out.setdefault(name, {"rounds_s": [], "compile_s": warm[name], "N": n_cand})
            d["rounds_s"].append(c.seconds)
            d["compile_s"] += c.compile
            d.update(seconds=min(d["rounds_s"]), tokens_per_image=float(np.mean(used)))
            d["images_per_s"] = n / d["seconds"]
            if stats is not None:
                d.update(pool_steps=stats.steps, pool_rows=stats.rows, utilization=stats.utilization,
                         pool_sizes=list(stats.sizes))
            print(f"  round {r}: {name}: {c.seconds:.2f} s", flush=True)
    # the criterion against the faster of Best-of-N's two token loops (batched, pool)
    bon_name = max(("best_of_n token loop (batched)", "best_of_n token loop (pool)"),
                   key=lambda k: out[k]["images_per_s"])
    bon, sar = out[bon_name], out["scalingar (pool)"]
    ratio = bon["tokens_per_image"] / sar["tokens_per_image"]
    need = 0.8 * ratio * bon["images_per_s"]
    crit = {"best_of_n": bon_name, "bon_over_scalingar_tokens": ratio, "required_images_per_s": need,
            "scalingar_pool_images_per_s": sar["images_per_s"], "met": bool(sar["images_per_s"] >= need),
            "speedup_over_bon": sar["images_per_s"] / bon["images_per_s"],
            "scalingar_batched_met": bool(out["scalingar (batched, compaction)"]["images_per_s"] >= need)}
    return {"workload": w["name"], "prompts": n, "N": N, "batch": batch, "pool_rows": rows, "runs": out,
            "criterion": crit}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["shapes", "gpt-b", "both"], default="both")
    ap.add_argument("--checkpoint", default=None, help="shapes-world bundle (default the embedded one; 'random')")
    ap.add_argument("--per-tag", type=int, default=20, help="shapes world: evaluation prompts per tag (6 tags)")
    ap.add_argument("--preset", default="GPT-B", help="random-weights workload: LlamaGen preset (c2i)")
    ap.add_argument("--grid", type=int, default=16, help="random-weights workload: token grid side")
    ap.add_argument("--layers", type=int, default=None, help="random-weights workload: override the layer count")
    ap.add_argument("--prompts", type=int, default=120, help="random-weights workload: prompts (class ids)")
    ap.add_argument("-n", "--num-candidates", type=int, default=8)
    ap.add_argument("--batch", type=int, default=20, help="prompts per batched call")
    ap.add_argument("--pool", type=int, default=None, help="pool candidate rows (default batch * N)")
    ap.add_argument("--lanes", type=int, default=None,
                    help="pool lanes (default pool // N, 4x that for pruning ScalingAR)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="timed rounds (every variant once per round); a variant's time is its fastest round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_throughput", help="results name under experiments/results/")
    args = ap.parse_args(argv)
    check_pool(args.pool or args.batch * args.num_candidates, args.num_candidates, args.lanes)

    loads = {"shapes": [shapes_workload], "gpt-b": [gptb_workload],
             "both": [shapes_workload, gptb_workload]}[args.workload]
    results, rows = [], []
    for make in loads:
        w = make(args)
        print(f"{w['name']}: {len(w['prompts'])} prompts, N = {args.num_candidates}", flush=True)
        r = bench(w, args)
        results.append(r)
        for name, d in r["runs"].items():
            rows.append({"workload": r["workload"], "strategy": name, **d})
        c = r["criterion"]
        rows.append({"workload": r["workload"], "strategy": "criterion: 0.8 x BoN/SAR tokens x BoN img/s",
                     "images_per_s": c["required_images_per_s"], "tokens_per_image": c["bon_over_scalingar_tokens"],
                     "met": c["met"]})
    table = markdown_table(rows, ["workload", "strategy", "images_per_s", "tokens_per_image", "seconds", "compile_s",
                                  "pool_steps", "utilization", "met"])
    print(table)
    payload = {"stamp": stamp(args.seed), "args": vars(args), "results": jsonable(results), "table": table}
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
