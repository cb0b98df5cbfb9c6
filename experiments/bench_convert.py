"""Benchmark: convert a LlamaGen-layout GPT checkpoint, timing and peak RSS.

A synthetic checkpoint of the chosen preset is written first (without torch, in a separate
process, see `conversion/make_synthetic_checkpoint.py`); each measurement then runs in a fresh
Python process so `ru_maxrss` is that conversion's own high-water mark:

  open    : safe unpickle + zip index (no tensor data read)
  infer   : `infer_gpt_config` from the shapes
  map     : `torch_to_flax_gpt` (reads every tensor once, transposes, stacks the layers)
  save    : (modes e2e*) write the orbax model directory, as `scalingar convert` does

Modes (--mode, comma-separated to reuse one synthetic checkpoint):
  map           open + infer + map only
  e2e           end to end with `checkpoint.save_model` (what `scalingar convert` runs)
  e2e_standard  end to end, saving with orbax's `StandardCheckpointer` (the pre-change save
                path, kept here as the baseline)
  load          (after e2e) `checkpoint.load_model` of the saved directory in a fresh process

Peak RSS includes the interpreter and jax/numpy imports (`baseline_rss`); the target is
peak RSS <= 2.5x the checkpoint size. The checkpoint was just written, so reads come from the
page cache (warm), which RSS does not count.

    python experiments/bench_convert.py                    # GPT-B, quick
    python experiments/bench_convert.py --preset GPT-XL    # the full-size run (~3.1 GB file)
    python experiments/bench_convert.py --preset GPT-XL --mode e2e,load,e2e_standard

Prints a table and writes bench_convert.json under experiments/common.RESULTS (one record per run,
replacing an earlier record of the same preset / format / dtype / mode).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from common import RESULTS as RESULTS_DIR  # noqa: E402

RESULTS = RESULTS_DIR / "bench_convert.json"


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def child(path: str, dtype: str, mode: str = "map", out_dir: str | None = None) -> dict:
    """Runs in a fresh process: converts `path` (and saves it to `out_dir` in the e2e modes, or
    loads `out_dir` in mode "load"), returns timings and memory."""
    import resource

    import numpy as np

    import jax
    import orbax.checkpoint  # noqa: F401  (imported before the baseline in every mode)

    from scalingar_jax.checkpoint import load_model, save_model
    from scalingar_jax.config import GPTConfig
    from scalingar_jax.convert import load_checkpoint
    from scalingar_jax.convert.mapping import infer_gpt_config, torch_to_flax_gpt

    baseline = _rss_now()  # after every import
    if mode == "load":
        t0 = time.perf_counter()
        params, _ = load_model(out_dir)
        t1 = time.perf_counter()
        leaves = jax.tree.leaves(params)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"load_s": t1 - t0, "total_s": t1 - t0, "n_params": int(sum(x.size for x in leaves)),
                "output_bytes": int(sum(x.nbytes for x in leaves)), "baseline_rss": baseline, "peak_rss": peak,
                "checksum": float(sum(float(np.asarray(x[..., :1], np.float32).sum()) for x in leaves))}
    t0 = time.perf_counter()
    sd, meta = load_checkpoint(path)
    t1 = time.perf_counter()
    cfg = infer_gpt_config(sd, file_name=path, args=meta.get("args"))
    t2 = time.perf_counter()
    params = torch_to_flax_gpt(sd, cfg, dtype=dtype)
    t3 = time.perf_counter()
    leaves = jax.tree.leaves(params)
    n_params = int(sum(x.size for x in leaves))
    out_bytes = int(sum(x.nbytes for x in leaves))
    checksum = float(sum(float(np.asarray(x[..., :1], np.float32).sum()) for x in leaves))
    map_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    r = {"open_s": t1 - t0, "infer_s": t2 - t1, "map_s": t3 - t2}
    if mode == "e2e":
        save_model(out_dir, params, GPTConfig(**{**cfg, "param_dtype": dtype}), kind="gpt")
    elif mode == "e2e_standard":
        import orbax.checkpoint as ocp

        ckptr = ocp.StandardCheckpointer()
        ckptr.save(Path(out_dir).absolute() / "params", params)
        ckptr.wait_until_finished()
    t4 = time.perf_counter()
    if mode != "map":
        r.update(save_s=t4 - t3, saved_bytes=_dir_bytes(out_dir), map_peak_rss=map_peak)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        **r, "total_s": t4 - t0,
        "n_params": n_params, "output_bytes": out_bytes, "baseline_rss": baseline, "peak_rss": peak,
        "config": cfg, "checksum": checksum, "n_tensors": len(sd),
    }


def run(preset: str, model_type: str, fmt: str, ckpt_dtype: str, out_dtype: str, keep: bool, workdir: str | None,
        modes=("map",)) -> list[dict]:
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    short = preset.replace("GPT-", "")
    tmpdir = Path(workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    tmpdir.mkdir(parents=True, exist_ok=True)
    path = tmpdir / f"{model_type}_{short}_256{suffix}"
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "conversion" / "make_synthetic_checkpoint.py"), "--preset", preset,
                    "--model-type", model_type, "--dtype", ckpt_dtype, "--out", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    write_s = time.perf_counter() - t
    size = path.stat().st_size
    out_dir = tmpdir / "converted"
    results = []
    try:
        for mode in modes:
            if mode != "load":
                shutil.rmtree(out_dir, ignore_errors=True)
            elif not out_dir.is_dir():
                raise SystemExit("mode 'load' needs a preceding 'e2e' in --mode")
            code = ("import json, sys; sys.path.insert(0, %r); from experiments.bench_convert import child; "
                    "print('RESULT' + json.dumps(child(%r, %r, %r, %r)))") % (
                        str(ROOT), str(path), out_dtype, mode, str(out_dir))
            proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
            line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
            r = json.loads(line[len("RESULT"):])
            r.update(mode=mode, preset=preset, model_type=model_type, format=fmt, ckpt_dtype=ckpt_dtype,
                     out_dtype=out_dtype, ckpt_bytes=size, write_s=write_s, peak_over_ckpt=r["peak_rss"] / size,
                     peak_minus_baseline_over_ckpt=(r["peak_rss"] - r["baseline_rss"]) / size,
                     read_gbps=size / r["total_s"] / 1e9)
            results.append(r)
            if mode == "e2e_standard":
                shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        if not keep:
            path.unlink(missing_ok=True)
            if workdir is None:
                os.rmdir(tmpdir)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-B")
    ap.add_argument("--model-type", default="c2i", choices=["c2i", "t2i"])
    ap.add_argument("--format", default="pt", choices=["pt", "safetensors"])
    ap.add_argument("--ckpt-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--out-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--workdir", default=None, help="where to write the synthetic checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    ap.add_argument("--mode", default="map",
                    help="comma-separated: map, e2e, e2e_standard, load (after e2e); see the module docstring")
    a = ap.parse_args(argv)
    modes = tuple(m.strip() for m in a.mode.split(",") if m.strip())
    bad = sorted(set(modes) - {"map", "e2e", "e2e_standard", "load"})
    if bad:
        ap.error(f"unknown mode(s) {bad}")
    results = run(a.preset, a.model_type, a.format, a.ckpt_dtype, a.out_dtype, a.keep, a.workdir, modes)
    for r in results:
        report(r)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    ident = ("preset", "model_type", "format", "ckpt_dtype", "out_dtype", "mode")
    key = lambda x: tuple(x.get(k, "map" if k == "mode" else None) for k in ident)  # noqa: E731
    new = {key(r) for r in results}
    records = [x for x in records if key(x) not in new]
    records += [{**r, "host_cpus": os.cpu_count()} for r in results]
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)
    print(f"-> {RESULTS}")
    return results


def report(r: dict) -> None:
    gb = 1e9
    if r["mode"] == "load":
        rows = [
            ("preset / mode", f"{r['preset']} / load (checkpoint.load_model of the e2e output)"),
            ("load", f"{r['load_s']:.1f} s"),
            ("baseline RSS (imports)", f"{r['baseline_rss'] / gb:.3f} GB"),
            ("peak RSS", f"{r['peak_rss'] / gb:.3f} GB"),
            ("peak RSS / checkpoint", f"{r['peak_over_ckpt']:.2f}x"),
        ]
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{w}}  {v}")
        return
    rows = [
        ("preset / type / format", f"{r['preset']} / {r['model_type']} / {r['format']} ({r['ckpt_dtype']} -> {r['out_dtype']})"),
        ("parameters", f"{r['n_params'] / 1e6:.1f} M in {r['n_tensors']} tensors"),
        ("checkpoint size", f"{r['ckpt_bytes'] / gb:.3f} GB"),
        ("output size", f"{r['output_bytes'] / gb:.3f} GB"),
        ("write (synthetic)", f"{r['write_s']:.1f} s"),
        ("open (unpickle+index)", f"{r['open_s']:.3f} s"),
        ("infer config", f"{r['infer_s']:.3f} s"),
        ("mode", r["mode"]),
        ("map (read+transpose+stack)", f"{r['map_s']:.1f} s"),
        *([("save", f"{r['save_s']:.1f} s ({r['saved_bytes'] / gb:.3f} GB on disk)"),
           ("peak RSS after map", f"{r['map_peak_rss'] / gb:.3f} GB")] if "save_s" in r else []),
        ("total", f"{r['total_s']:.1f} s ({r['read_gbps']:.2f} GB/s)"),
        ("baseline RSS (imports)", f"{r['baseline_rss'] / gb:.3f} GB"),
        ("peak RSS", f"{r['peak_rss'] / gb:.3f} GB"),
        ("peak RSS / checkpoint", f"{r['peak_over_ckpt']:.2f}x (target <= 2.5x)"),
        ("(peak - baseline) / checkpoint", f"{r['peak_minus_baseline_over_ckpt']:.2f}x"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print()


if __name__ == "__main__":
    main()
