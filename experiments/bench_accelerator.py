"""One command for the day a TPU or GPU is lent: LlamaGen t2i XL at 512 px on whatever
`jax.devices()` holds, random weights in the real shapes, bf16, in at most ~10 minutes.

  scalingar bench accelerator                 # = python experiments/bench_accelerator.py
  scalingar bench accelerator -- --out runs/h100 --prompts 32
  python experiments/bench_accelerator.py --tiny --out /tmp/smoke      # CPU smoke run (tests)

What it measures, in order (each phase's wall time is in the JSON; phases after `--budget-s` are
skipped and say so):

1. step     seconds per token step of the jitted token loop (`loop.run_loop`, `--steps` steps from
            a prefilled state, median of 3) for plain N = 1, plain N = 8 (Best-of-N's loop) and
            ScalingAR N = 8, one prompt with CFG (the paper's Table 5: 0.029 s/step, H200), and
            each program's compile time (trace, lower and compile) and compiled memory (XLA).
2. layouts  the ScalingAR loop again with the layers unrolled and scanned (`backend.py`'s
            `scan_layers` choice): compile time and s/step of each on this device.
3. top-k    the k-th largest logit (k = 1000 of the vocabulary, 16 rows) by `lax.top_k` and by the
            CPU's radix select (`backend.py`'s `top_k` choice), ms per call.
4. images/s over `--prompts` random prompts (caption features of the real shape, left padded):
            plain (N = 1, all prompts in one call), Best-of-N (N = 8, `--batch` prompts a call, VQ
            decode of every candidate, a stand-in reward: mean pixel value) and ScalingAR through
            the prompt pool (`--batch` x N candidate rows), VQ decode of the winners; each timed
            on its second run of the prompt set (the first compiles: reported as compile + run).
            Random weights do not prune as trained ones do: ScalingAR's speed here is its cost
            per token, not its savings (tokens per image are reported beside it).
5. memory   the device's peak bytes in use over the whole run (`memory_stats`; not on CPU) against
            `experiments/memory_table.py`'s estimate for the largest run's rows (its fit in
            `experiments/results/memory_table.json`: XLA:CPU, sharded executor, bf16 GPT-XL).

Writes `bench_accelerator.json` and `bench_accelerator.md` into `--out` (default: the current
folder) and nothing anywhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, jsonable, markdown_table, stamp  # noqa: E402

GB = 1e9
PAPER_S_PER_STEP = 0.029  # ScalingAR, LlamaGen t2i XL, H200 (paper Table 5)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-XL", help="GPT preset (t2i; default GPT-XL, LlamaGen's t2i)")
    ap.add_argument("--grid", type=int, default=32, help="token grid (32 = 512 px with the ds16 VQ)")
    ap.add_argument("--dtype", default="bfloat16", help="parameter and compute dtype of GPT and VQ")
    ap.add_argument("-n", type=int, default=8, help="candidates N of Best-of-N and ScalingAR")
    ap.add_argument("--steps", type=int, default=64, help="token steps per step-time measurement")
    ap.add_argument("--prompts", type=int, default=16, help="prompts of the images/s runs")
    ap.add_argument("--batch", type=int, default=4, help="prompts per Best-of-N call (and pool of batch*N rows)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip the phases that start after this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny random config (a CPU smoke run)")
    ap.add_argument("--out", default=".", help="folder for bench_accelerator.{json,md} (default: here)")
    args = ap.parse_args(argv)
    for name in ("grid", "n", "steps", "prompts", "batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    return args


def configs(args):
    """(GPTConfig, VQConfig): LlamaGen t2i `--preset` with its VQ-16 (or a tiny pair)."""
    from scalingar_jax.config import GPTConfig, gpt_config
    from scalingar_jax.vq import VQConfig

    dt = dict(param_dtype=args.dtype, dtype=args.dtype)
    if args.tiny:
        gpt = GPTConfig(model_type="t2i", n_layer=2, n_head=2, dim=32, vocab_size=64, cls_token_num=8,
                        caption_dim=16, grid_size=4, multiple_of=16, **dt)
        vq = VQConfig(codebook_size=64, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8, num_res_blocks=1,
                      norm_groups=4, **dt)
        return gpt.validate(), vq
    return gpt_config(args.preset, "t2i", grid_size=args.grid, **dt), VQConfig(**dt)


def _ready(x):
    import jax

    return jax.block_until_ready(x)


def _timed(fn, repeat: int = 3) -> float:
    """Median wall seconds of fn() over `repeat` calls (fn blocks)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _compiled_peak(compiled):
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes


def conditions(gpt_cfg, P: int, seed: int):
    """Random caption features (P, cls, caption_dim) in the model dtype, left padded to random
    lengths (mask (P, cls) bool), as a T5 encoder's output is laid out."""
    import jax.numpy as jnp

    from scalingar_jax.config import to_dtype

    rng = np.random.default_rng(seed)
    cls = gpt_cfg.cls_token_num
    lengths = rng.integers(max(1, cls // 8), cls + 1, P)
    mask = np.arange(cls)[None] >= (cls - lengths)[:, None]
    feats = rng.normal(0.0, 0.2, (P, cls, gpt_cfg.caption_dim)).astype(np.float32) * mask[..., None]
    return jnp.asarray(feats, to_dtype(gpt_cfg.dtype)), jnp.asarray(mask)


# ------------------------------------------------------------------------------ phases
def step_time(params, gpt_cfg, sampling, scaling, args, key, strategy: str, n: int) -> dict:
    """Seconds per token step of the jitted token loop for one prompt with CFG (2n model rows),
    `--steps` steps from a prefilled state, median of 3; its compile time and compiled memory."""
    import jax.numpy as jnp

    from scalingar_jax.scaling import loop as L
    from scalingar_jax.scaling.strategies import token_spec

    cond, mask = conditions(gpt_cfg, 1, args.seed)
    steps = min(args.steps, gpt_cfg.block_size)
    spec = token_spec(gpt_cfg, sampling, scaling, strategy, n, False)
    s0 = _ready(L.start_loop(params, cond, mask, key, jnp.zeros((1,), jnp.int32), spec=L.shape_key(spec)))
    stop = jnp.int32(steps)
    t = time.perf_counter()
    compiled = L.run_loop.lower(params, s0, spec=L.loop_key(spec), stop=stop).compile()
    compile_s = time.perf_counter() - t
    _ready(compiled(params, s0, stop=stop))
    secs = _timed(lambda: _ready(compiled(params, s0, stop=stop)))
    row = {"what": f"{strategy} N={n}", "model_rows": 2 * n, "s_per_step": secs / steps, "compile_s": compile_s,
           "compiled_peak_GB": (_compiled_peak(compiled) or float("nan")) / GB}
    print(row, flush=True)
    return row


def layouts(params, gpt_cfg, sampling, scaling, args, key) -> list[dict]:
    """The ScalingAR N loop with the layers unrolled (per-layer weights and cache buffers) and
    scanned (stacked, `lax.scan`): compile time and s/step of each on this device."""
    from scalingar_jax import gpt

    unrolled = lambda p: gpt.unstack_layers(gpt.merge_columns(p))  # noqa: E731
    return [{"layout": name, **step_time(_ready(layout(params)), gpt_cfg, sampling, scaling, args, key, "scalingar",
                                         args.n)}
            for name, layout in (("unrolled", unrolled), ("scanned", gpt.stack_layers))]


def topk_times(gpt_cfg, args) -> list[dict]:
    """ms per call of the k-th largest logit by lax.top_k and by the radix select (16 rows)."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax.sampling import radix_kth_largest

    V = gpt_cfg.vocab_size
    k = min(1000, V)
    x = jax.random.normal(jax.random.key(args.seed), (2 * args.n, V), jnp.float32)
    out = []
    for name, fn in (("lax.top_k", lambda v: jax.lax.top_k(v, k)[0][..., -1:]),
                     ("radix select", lambda v: radix_kth_largest(v, k))):
        f = jax.jit(fn)
        want = _ready(f(x))
        reps = 20
        secs = _timed(lambda: _ready([f(x) for _ in range(reps)]))
        out.append({"method": name, "rows": int(x.shape[0]), "vocab": V, "k": k, "ms_per_call": 1e3 * secs / reps,
                    "value_matches_top_k": bool(np.array_equal(np.asarray(want), np.asarray(jax.lax.top_k(x, k)[0][..., -1:])))})
        print(out[-1], flush=True)
    return out


def throughput(params, vq_params, gpt_cfg, vq_cfg, sampling, scaling, args, key) -> list[dict]:
    """images/s over the prompt set: plain, Best-of-N (+ decode + stand-in reward), ScalingAR pool."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax import vq
    from scalingar_jax.images import to_uint8
    from scalingar_jax.scaling import pool
    from scalingar_jax.scaling import strategies as S

    g = gpt_cfg.grid_size
    decode_jit = jax.jit(functools.partial(vq.decode_codes, cfg=vq_cfg))

    def decode(tokens):  # (B, T) int32 -> (B, H, W, 3) uint8
        return to_uint8(decode_jit(vq_params, codes=jnp.asarray(np.asarray(tokens).reshape(-1, g, g), jnp.int32)))

    def reward(images, prompts):  # stand-in: mean pixel value (the GPT's throughput is measured)
        return np.asarray(images, np.float64).mean(axis=(1, 2, 3))

    P, B, N = args.prompts, min(args.batch, args.prompts), args.n
    cond, mask = conditions(gpt_cfg, P, args.seed + 1)
    ids = np.arange(P)
    names = [f"p{i}" for i in range(P)]

    def plain(sl):
        res = S.run_token_strategy(params, gpt_cfg, cond[sl], mask[sl], key=key, strategy="plain", num_candidates=1,
                                   sampling=sampling, prompt_ids=ids[sl])
        decode(np.asarray(res.tokens))
        return np.asarray(res.tokens_used)

    def best_of_n(sl):
        used = []
        for i in range(sl.start, sl.stop, B):
            j = slice(i, min(i + B, sl.stop))
            if j.stop - j.start < B:  # the last call keeps the compiled batch: pad with the first prompts
                j = slice(sl.stop - B, sl.stop)
            res = S.run_best_of_n(params, gpt_cfg, cond[j], mask[j], prompts=names[j], key=key, reward_fn=reward,
                                  decode_fn=decode, num_candidates=N, sampling=sampling, prompt_ids=ids[j])
            decode(np.asarray(res.tokens))
            used.append(np.asarray(res.tokens_used))
        return np.concatenate(used)

    def scalingar_pool(sl):
        res, stats = pool.run_pool_strategy(params, gpt_cfg, cond[sl], mask[sl], key=key, strategy="scalingar",
                                            num_candidates=N, sampling=sampling, scaling=scaling, rows=B * N,
                                            prompt_ids=ids[sl])
        decode(np.asarray(res.tokens))
        return np.asarray(res.tokens_used)

    out = []
    for name, fn in (("plain (N=1, one call)", plain), (f"best_of_n (N={N}, {B} prompts a call)", best_of_n),
                     (f"scalingar pool (N={N}, {B * N} rows)", scalingar_pool)):
        t = time.perf_counter()
        fn(slice(0, P))  # the same run untimed first: every program it needs is compiled (pool sizes too)
        first = time.perf_counter() - t
        t = time.perf_counter()
        used = fn(slice(0, P))
        secs = time.perf_counter() - t
        out.append({"what": name, "prompts": P, "images_per_s": P / secs, "seconds": secs,
                    "first_call_s (compile + run)": first, "tokens_per_image": float(np.mean(used)),
                    "model_rows": 2 * (P if fn is plain else B * N)})
        print(out[-1], flush=True)
    return out


def memory_estimate(rows: int):
    """memory_table.py's per-device GPT peak (bytes) at `rows` model rows, from its stored fit
    (intercept + slope * rows), or None if the results file is not in this checkout."""
    path = RESULTS / "memory_table.json"
    if not path.is_file():
        return None
    fit = json.loads(path.read_text()).get("fits") or {}
    if "intercept_bytes" not in fit:
        return None
    return fit["intercept_bytes"] + fit["bytes_per_row"] * rows


# ------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out)
    import jax

    from scalingar_jax import gpt, vq
    from scalingar_jax.atomic import atomic_write_text
    from scalingar_jax.backend import backend_config
    from scalingar_jax.config import SamplingConfig
    from scalingar_jax.scaling import ScalingARConfig

    t0 = time.perf_counter()
    gpt_cfg, vq_cfg = configs(args)
    sampling = SamplingConfig(cfg_scale=7.5, top_k=min(1000, gpt_cfg.vocab_size))
    scaling = ScalingARConfig()
    device = jax.devices()[0]
    print(f"{len(jax.devices())} x {device.platform} {device.device_kind}; {args.preset if not args.tiny else 'tiny'} "
          f"t2i grid {gpt_cfg.grid_size}, {args.dtype}", flush=True)
    key = jax.random.key(args.seed)
    t = time.perf_counter()
    params = _ready(gpt.decode_layout(jax.jit(functools.partial(gpt.init_params, gpt_cfg))(key)))
    vq_params = _ready(vq.init_vq_params(vq_cfg, jax.random.key(args.seed + 1)))
    phases = {"random weights": time.perf_counter() - t}
    results, skipped = {}, []

    def phase(name, fn):
        if time.perf_counter() - t0 > args.budget_s:
            skipped.append(name)
            print(f"skipped {name}: past --budget-s {args.budget_s:g}", flush=True)
            return
        t = time.perf_counter()
        results[name] = fn()
        phases[name] = time.perf_counter() - t
        results.setdefault("peak_GB_after", {})[name] = (_peak_bytes() or float("nan")) / GB

    phase("step", lambda: [step_time(params, gpt_cfg, sampling, scaling, args, key, strategy, n)
                           for strategy, n in (("plain", 1), ("plain", args.n), ("scalingar", args.n))])
    phase("layouts", lambda: layouts(params, gpt_cfg, sampling, scaling, args, key))
    phase("top-k", lambda: topk_times(gpt_cfg, args))
    phase("images/s", lambda: throughput(params, vq_params, gpt_cfg, vq_cfg, sampling, scaling, args, key))
    largest = max([r["model_rows"] for r in results.get("images/s", []) + results.get("step", [])] or [0])
    peak = _peak_bytes()
    est = None if args.tiny else memory_estimate(largest)
    memory = {"device_peak_GB": None if peak is None else peak / GB, "largest_run_model_rows": largest,
              "memory_table_estimate_GB": None if est is None else est / GB,
              "ratio_peak_to_estimate": None if peak is None or est is None else peak / est,
              "note": "device peak over the whole run (GPT + VQ + every program); estimate: memory_table.py's "
                      "XLA:CPU fit of the sharded executor's GPT peak per device at that many rows"}
    tables = []
    if "step" in results:
        rows = [{**r, "paper_table5_s_per_step": PAPER_S_PER_STEP if r["what"].startswith("scalingar") else ""}
                for r in results["step"]]
        tables.append("### seconds per token step (one prompt, CFG)\n\n"
                      + markdown_table(rows, ["what", "model_rows", "s_per_step", "paper_table5_s_per_step",
                                              "compile_s", "compiled_peak_GB"]))
    if "layouts" in results:
        tables.append(f"### ScalingAR N={args.n} loop: layers unrolled vs scanned (backend choice here: "
                      f"{'scanned' if backend_config().scan_layers else 'unrolled'})\n\n"
                      + markdown_table(results["layouts"], ["layout", "s_per_step", "compile_s", "compiled_peak_GB"]))
    if "top-k" in results:
        tables.append(f"### k-th largest logit (backend choice here: {backend_config().top_k})\n\n"
                      + markdown_table(results["top-k"], ["method", "rows", "vocab", "k", "ms_per_call",
                                                          "value_matches_top_k"]))
    if "images/s" in results:
        tables.append("### images/s over the prompt set (random weights, stand-in reward)\n\n"
                      + markdown_table(results["images/s"], ["what", "prompts", "images_per_s", "seconds",
                                                             "first_call_s (compile + run)", "tokens_per_image",
                                                             "model_rows"]))
    tables.append("### memory\n\n" + markdown_table([memory], ["device_peak_GB", "largest_run_model_rows",
                                                               "memory_table_estimate_GB", "ratio_peak_to_estimate"]))
    head = (f"# bench_accelerator: {len(jax.devices())} x {device.platform} {device.device_kind}\n\n"
            f"{'tiny config' if args.tiny else f'LlamaGen t2i {args.preset}'}, grid {gpt_cfg.grid_size} "
            f"(T = {gpt_cfg.block_size}), {args.dtype}, random weights; backend choices: "
            f"{dataclasses.asdict(backend_config())}; total {time.perf_counter() - t0:.0f} s"
            + (f"; skipped (past --budget-s): {', '.join(skipped)}" if skipped else ""))
    md = head + "\n\n" + "\n\n".join(tables) + "\n"
    payload = {"stamp": stamp(args.seed), "args": vars(args), "device": f"{device.platform} {device.device_kind}",
               "devices": len(jax.devices()), "gpt_config": dataclasses.asdict(gpt_cfg),
               "backend": dataclasses.asdict(backend_config()), "results": results, "memory": memory,
               "phases_s": phases, "skipped": skipped, "table": md}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "bench_accelerator.json", json.dumps(jsonable(payload), indent=2))
    atomic_write_text(out_dir / "bench_accelerator.md", md)
    print(md)
    print(f"wrote {out_dir / 'bench_accelerator.json'} and {out_dir / 'bench_accelerator.md'}")
    return payload


if __name__ == "__main__":
    main()
