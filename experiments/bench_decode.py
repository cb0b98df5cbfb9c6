"""Decode benchmark: tokens/s, per-step time, prefill time, compile time, compiled memory.

Random weights for chosen presets and batch sizes. The machine's matrix-multiply limit is
measured in the same run (skinny fp32/bf16 matmuls of the decode step's shapes), and with
`--llamagen-src PATH` the original PyTorch LlamaGen (its gpt.py + generate.py, eager) runs
side by side on the same inputs (imported at run time from the user's checkout, never shipped).

  python experiments/bench_decode.py --presets GPT-B --batch 16 --dtype float32
  python experiments/bench_decode.py --memory-only --presets GPT-XL --batch 16 --grid 32 --dtype bfloat16 --t2i
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import markdown_table, stamp, timeit, write_json  # noqa: E402

from scalingar_jax import decode, gpt  # noqa: E402
from scalingar_jax.config import gpt_config, to_dtype  # noqa: E402
from scalingar_jax.sampling import greedy_tokens  # noqa: E402


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_info() -> dict:
    """Where a figure was measured: CPU model, the vector-ISA flags that matter to XLA:CPU
    kernels, core counts, L3 size, XLA_FLAGS and jax/jaxlib versions (Linux /proc and /sys)."""
    import jaxlib

    info = {"model": "unknown", "flags": [], "cpus": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        text = open("/proc/cpuinfo").read()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        info["model"] = model.group(1).strip() if model else "unknown"
        have = set(flags.group(1).split()) if flags else set()
        info["flags"] = [f for f in CPU_FLAGS if f in have]
    except OSError:
        pass
    try:
        info["l3"] = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
    except OSError:
        pass
    return info


def cpu_line(info: dict) -> str:
    """One line for a table header: model, flags, cores, L3, XLA_FLAGS, versions."""
    return (f"CPU: {info['model']} ({info.get('cpus_usable', info['cpus'])} cores, L3 {info.get('l3', '?')}; "
            f"{' '.join(info['flags']) or 'no AVX2'}); XLA_FLAGS={info['xla_flags'] or '(none)'}; "
            f"jax {info['jax']}, jaxlib {info['jaxlib']}")


def _abstract_params(cfg):
    """Abstract parameters in the decode-time layout (per-layer trees, column blocks on a
    multi-core CPU: `gpt.split_columns`), as a loader hands them over: the compiled loop then
    holds no second, split copy of the weights."""
    return jax.eval_shape(lambda p: gpt.split_columns(p, gpt.decode_splits()), gpt.param_shapes(cfg))


def step_fn(cfg, n_steps):
    """n decode steps from a prefilled cache, in one jit (tokens fed back greedily)."""

    @jax.jit
    def run(params, cache, tok):
        def body(i, carry):
            cache, tok = carry
            logits, cache = decode.decode_step(params, cfg, cache, tok, i)
            return cache, greedy_tokens(logits)

        return jax.lax.fori_loop(0, n_steps, body, (cache, tok))

    return run


def loop_memory(cfg, batch, use_cfg=True):
    """Compiled memory of the whole generate loop (no allocation: lowered on abstract inputs)."""
    P = batch // 2 if use_cfg else batch
    cond = (jax.ShapeDtypeStruct((P,), jnp.int32) if cfg.model_type == "c2i"
            else jax.ShapeDtypeStruct((P, cfg.cls_token_num, cfg.caption_dim), to_dtype(cfg.dtype)))
    mask = None if cfg.model_type == "c2i" else jax.ShapeDtypeStruct((P, cfg.cls_token_num), jnp.bool_)
    from scalingar_jax.config import SamplingConfig

    t = time.perf_counter()
    lowered = decode._generate.lower(
        _abstract_params(cfg), jax.random.key(0), cond, mask, jax.ShapeDtypeStruct((P,), jnp.int32),
        cfg=cfg, sampling=SamplingConfig(cfg_scale=4.0 if use_cfg else 1.0, top_k=1000), num_candidates=1,
        greedy=False)
    compiled = lowered.compile()
    ma = compiled.memory_analysis()
    out = {"compile_s": time.perf_counter() - t,
           "kv_cache_gb": 2 * cfg.n_layer * batch * (cfg.max_seq_len - 1) * cfg.kv_heads * cfg.head_dim
           * jnp.dtype(to_dtype(cfg.dtype)).itemsize / 1e9}
    if ma is not None:
        out.update(
            argument_gb=ma.argument_size_in_bytes / 1e9, output_gb=ma.output_size_in_bytes / 1e9,
            temp_gb=ma.temp_size_in_bytes / 1e9,
            peak_gb=(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                     - ma.alias_size_in_bytes) / 1e9)
    return out


def matmul_limit(rows, dim, dtype, n_out=24576, splits=1):
    """GFLOP/s of a (rows x dim) @ (dim x n_out) matmul in XLA: the decode step's best case.
    splits > 1: the weight as that many column blocks, independent matmuls (XLA:CPU runs one
    skinny matmul on one core; the blocks run on several)."""
    a = jnp.ones((rows, dim), dtype)
    bs = tuple(jnp.ones((dim, n_out // splits), dtype) for _ in range(splits))
    f = jax.jit(lambda a, bs: [a @ b for b in bs])
    s = timeit(lambda: jax.block_until_ready(f(a, bs)), repeat=10, warmup=2)
    return 2 * rows * dim * n_out / s / 1e9


def wall_and_cpu(fn, repeat: int = 3) -> tuple[float, float]:
    """(median wall seconds, least process CPU seconds, all threads) of fn() over `repeat` runs.
    CPU time counts the work done and is less inflated than wall time when other processes
    share the cores."""
    walls, cpus = [], []
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return sorted(walls)[len(walls) // 2], min(cpus)


def stream_floor(cfg, params, cache, batch):
    """Same-run floors of one decode step on this model's own arrays (ms): `weights_ms`, one pass
    of every weight matmul of the step (wqkv, wo, w1, w3, w2 per layer, output) on `batch` rows,
    each weight read from memory once as a step reads it; `cache_ms`, one read (a sum) of the
    whole KV cache, which the step's attention reads in full. Unlike `matmul_limit` (one 75 MB
    matrix, which a large L3 can hold), these stream the step's working set from memory, in the
    step's own weight layout (column blocks of `gpt.split_columns` run on several cores)."""
    dim = cfg.dim

    def mm(x, lin):  # whole kernel or `gpt.split_columns` blocks, as the step multiplies them
        k = lin["kernel"]
        return jnp.concatenate([x @ b for b in k], -1) if isinstance(k, (tuple, list)) else x @ k

    @jax.jit
    def weights_pass(x, params):
        for p in params["layers"]:
            a, f = p["attention"], p["feed_forward"]
            h = mm(mm(x, a["wqkv"])[:, :dim], a["wo"])
            x = x + mm(jax.nn.silu(mm(h, f["w1"])) * mm(h, f["w3"]), f["w2"])
        return mm(x, params["output"])

    read = jax.jit(lambda c: sum(jnp.sum(k) + jnp.sum(v) for k, v in zip(c.k, c.v)))
    x = jnp.ones((batch, dim), to_dtype(cfg.dtype))
    w = timeit(lambda: jax.block_until_ready(weights_pass(x, params)), repeat=5, warmup=1)
    c = timeit(lambda: jax.block_until_ready(read(cache)), repeat=5, warmup=1)
    streamed = [(p["attention"]["wqkv"], p["attention"]["wo"], p["feed_forward"]) for p in params["layers"]]
    nbytes = sum(x.nbytes for x in jax.tree.leaves((streamed, params["output"])))
    return {"weights_floor_ms": 1e3 * w, "cache_read_ms": 1e3 * c, "weights_read_gb": nbytes / 1e9,
            "cache_read_gb": sum(x.nbytes for x in jax.tree.leaves((cache.k, cache.v))) / 1e9}


def flops_per_step(cfg, rows, ctx):
    """Matmul FLOPs of one decode step: weights (2 * params_without_embeddings) + attention."""
    n = gpt.count_params(_abstract_params(cfg))
    n -= cfg.vocab_size * cfg.dim  # the input embedding is a gather
    n -= (cfg.num_classes + 1) * cfg.dim if cfg.model_type == "c2i" else 0
    attn = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * ctx
    return rows * (2 * n + attn)


def prepared_decode(cfg, batch, n_steps=32, splits=None) -> dict:
    """Random-weight GPT `cfg` prefilled for `batch` rows (CFG: batch // 2 conditions) and its
    n-step decode loop compiled, in the layout the token loops use (`gpt.split_columns`,
    `gpt.decode_splits()` column blocks unless `splits` is given). Returns `run()` (the n steps,
    blocking), `params`, `cache`, `prefill_ms` and `compile_s` (prefill + loop)."""
    params = jax.jit(functools.partial(gpt.init_params, cfg))(jax.random.key(0))
    splits = gpt.decode_splits() if splits is None else splits
    params = jax.block_until_ready(gpt.split_columns(params, splits))
    P = batch // 2
    cond = jnp.zeros((P,), jnp.int32) if cfg.model_type == "c2i" else jnp.zeros(
        (P, cfg.cls_token_num, cfg.caption_dim), to_dtype(cfg.dtype))
    pre = jax.jit(lambda p, c: decode.prefill(p, cfg, c, use_cfg=True))
    t = time.perf_counter()
    jax.block_until_ready(pre(params, cond))
    prefill_compile = time.perf_counter() - t
    prefill_s = timeit(lambda: jax.block_until_ready(pre(params, cond)))
    _, cache = pre(params, cond)
    tok = jnp.zeros((batch,), jnp.int32)
    loop = step_fn(cfg, n_steps)
    t = time.perf_counter()
    jax.block_until_ready(loop(params, cache, tok))
    compile_s = time.perf_counter() - t
    return {"run": lambda: jax.block_until_ready(loop(params, cache, tok)), "params": params, "cache": cache,
            "prefill_ms": 1e3 * prefill_s, "compile_s": compile_s + prefill_compile}


def bench_jax(cfg, batch, n_steps=32, splits=None):
    """The decode step in the layout the token loops use (`prepared_decode`): ms per step, tokens/s,
    prefill, compile and the step's memory-stream floors."""
    d = prepared_decode(cfg, batch, n_steps, splits)
    s, cpu = wall_and_cpu(d["run"])
    out = {"step_ms": 1e3 * s / n_steps, "step_cpu_ms": 1e3 * cpu / n_steps, "tokens_per_s": batch * n_steps / s,
           "prefill_ms": d["prefill_ms"], "compile_s": d["compile_s"]}
    out.update(stream_floor(cfg, d["params"], d["cache"], batch))
    out["x_of_stream_floor"] = out["step_ms"] / (out["weights_floor_ms"] + out["cache_read_ms"])
    return out


def bench_torch(src, preset, batch, dtype, grid, n_steps=32):
    """Original LlamaGen's model + decode_one_token (eager), from the user's checkout."""
    sys.path.insert(0, src)
    import torch
    from autoregressive.models.generate import decode_one_token  # type: ignore
    from autoregressive.models.gpt import GPT_models  # type: ignore

    torch.manual_seed(0)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = GPT_models[preset](block_size=grid * grid, cls_token_num=1, model_type="c2i").to(tdt).eval()
    P = batch // 2
    with torch.no_grad():
        model.setup_caches(max_batch_size=batch, max_seq_length=1 + grid * grid, dtype=tdt)
        cond = torch.cat([torch.zeros(P, dtype=torch.long), torch.full((P,), 1000, dtype=torch.long)])
        model(None, cond, input_pos=torch.arange(0, 1))
        x = torch.zeros(P, 1, dtype=torch.long)

        def steps():
            for i in range(n_steps):
                decode_one_token(model, x, torch.tensor([1 + i]), 4.0, True, temperature=1.0, top_k=0, top_p=1.0,
                                 sample_logits=True)

        steps()
        s, cpu = wall_and_cpu(steps)
    return {"step_ms": 1e3 * s / n_steps, "step_cpu_ms": 1e3 * cpu / n_steps, "tokens_per_s": batch * n_steps / s,
            "torch": torch.__version__}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["GPT-B"], help="LlamaGen presets to time (random weights)")
    ap.add_argument("--batch", nargs="+", type=int, default=[16], help="rows per step (N candidates x 2 for CFG)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter/compute dtype")
    ap.add_argument("--grid", type=int, default=16, help="token grid side (16: 256px with VQ-16)")
    ap.add_argument("--t2i", action="store_true", help="t2i model (120 caption positions) instead of c2i")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per repetition")
    ap.add_argument("--memory-only", action="store_true", help="only compile the whole loop and report its memory")
    ap.add_argument("--llamagen-src", default=None, help="path to a LlamaGen checkout: time its PyTorch decode too")
    ap.add_argument("--compare-splits", action="store_true",
                    help="also time the step with whole (unsplit) weight kernels in the same run")
    ap.add_argument("--out", default="bench_decode", help="results name under experiments/results/")
    args = ap.parse_args(argv)

    rows = []
    for preset in args.presets:
        mt = "t2i" if args.t2i else "c2i"
        cfg = gpt_config(preset, mt, grid_size=args.grid, param_dtype=args.dtype, dtype=args.dtype)
        for batch in args.batch:
            row = {"preset": preset, "type": mt, "batch": batch, "dtype": args.dtype, "grid": args.grid}
            mem = loop_memory(cfg, batch)
            row.update({f"loop_{k}": v for k, v in mem.items()})
            if not args.memory_only:
                row.update(bench_jax(cfg, batch, args.steps))
                row["splits"] = gpt.decode_splits()
                if args.compare_splits and row["splits"] > 1:  # the same step with whole kernels, same run
                    row["step_ms_unsplit"] = bench_jax(cfg, batch, args.steps, splits=1)["step_ms"]
                    row["split_speedup"] = row["step_ms_unsplit"] / row["step_ms"]
                ctx = cfg.max_seq_len - 1
                whole = matmul_limit(batch, cfg.dim, to_dtype(args.dtype))
                split = matmul_limit(batch, cfg.dim, to_dtype(args.dtype), splits=row["splits"])
                limit = max(whole, split)  # the machine's best: a single matmul, or column blocks on all cores
                row["matmul_limit_gflops"], row["matmul_limit_split_gflops"] = whole, split
                row["limit_step_ms"] = 1e3 * flops_per_step(cfg, batch, ctx) / (limit * 1e9)
                row["x_of_limit"] = row["step_ms"] / row["limit_step_ms"]
                if args.llamagen_src and mt == "c2i":
                    tr = bench_torch(args.llamagen_src, preset, batch, args.dtype, args.grid, args.steps)
                    row["torch_step_ms"] = tr["step_ms"]
                    row["torch_step_cpu_ms"] = tr["step_cpu_ms"]
                    row["speedup_vs_torch_cpu"] = tr["step_cpu_ms"] / row["step_cpu_ms"]
                    row["speedup_vs_torch"] = tr["step_ms"] / row["step_ms"]
            rows.append(row)
            print(row, flush=True)
    cols = ["preset", "type", "batch", "dtype", "grid", "splits", "step_ms", "step_ms_unsplit", "split_speedup",
            "step_cpu_ms", "tokens_per_s", "prefill_ms",
            "compile_s", "limit_step_ms", "x_of_limit", "weights_floor_ms", "cache_read_ms", "x_of_stream_floor",
            "torch_step_ms", "speedup_vs_torch", "torch_step_cpu_ms", "speedup_vs_torch_cpu", "loop_peak_gb",
            "loop_kv_cache_gb", "loop_compile_s"]
    cpu = cpu_info()
    table = cpu_line(cpu) + "\n\n" + markdown_table(rows, [c for c in cols if any(c in r for r in rows)])
    print(table)
    path = write_json(args.out, {"stamp": stamp(), "cpu": cpu, "rows": rows, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
