"""Generation speed, two modes.

cli (default)   End-to-end wall clock of `scalingar generate` with the default checkpoint, compile
                included: the command runs in a fresh subprocess per strategy (so JAX compiles
                everything anew, as a new user's first call would). Target: <= 60 s on a 2-core CPU.

random-bundle   Images/s of plain, Best-of-N and ScalingAR side by side in one run, on a random
                LlamaGen t2i bundle (default GPT-B: 12 layers, dim 768, 12 heads; 256 px: grid 16,
                T = 256; 120 caption positions of random 2048-d "T5 features"; a small random VQ
                with LlamaGen's downsampling 16) assembled with `llamagen.assemble_bundle` and
                loaded with `pipeline.load_pipeline`, as `scalingar generate --checkpoint` does.
                Each run first generates once on the same prompts and seed (compiling every
                program it needs, ScalingAR's compaction buckets included), then `--repeat` timed
                runs; compile time = JAX's trace/lower/compile events in the first call.
                images/s = prompts (one selected image each) / seconds of `pipeline.generate`
                (token loop, selection, for Best-of-N the VQ decode of all N candidates and the
                reward, and the VQ decode of the selected images). Best-of-N's reward is `brightness_reward` (mean pixel value:
                microseconds), so the GPT's throughput is what is measured, not a reward model's.
                Random weights: ScalingAR's pruning (and so its speed-up) depends on how they
                happen to prune (see README, bench_scaling); tokens/image are reported next to it.

  python experiments/bench_generate.py
  python experiments/bench_generate.py random-bundle --prompts 8 --repeat 3
  python experiments/bench_generate.py random-bundle --tiny --prompts 2      # smoke run (a minute: compiles)
"""
from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402

RUNS = ("plain:1", "best_of_n:8", "scalingar:8")


def brightness_reward(images: np.ndarray, prompts) -> np.ndarray:
    """The benchmark's Best-of-N reward: mean pixel value of each image, (B, H, W, 3) uint8 -> (B,)
    float64. Cheap on purpose (the GPT's throughput is measured); it ignores the prompts."""
    return np.asarray(images, np.float64).mean(axis=(1, 2, 3))


def cli_mode(args):
    rows = []
    for strategy in args.strategies:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "scalingar_jax.cli", "generate", args.prompt, "--strategy", strategy,
                   "-n", str(args.n), "--out", tmp]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            rows.append({"strategy": strategy, "N": args.n, "wall_s": wall, "target_s": 60.0,
                         "within_target": wall <= 60.0, "output": proc.stdout.strip().splitlines()[0]})
            print(rows[-1], flush=True)
    table = markdown_table(rows, ["strategy", "N", "wall_s", "target_s", "within_target", "output"])
    print(table)
    print(f"wrote {write_json(args.out or 'bench_generate', {'stamp': stamp(), 'rows': rows, 'table': table})}")


# ------------------------------------------------------------------------------ random bundle
def random_configs(args):
    """(GPTConfig, VQConfig) of the random bundle: `--preset` t2i at `--grid` (or a tiny pair)."""
    from scalingar_jax.config import gpt_config
    from scalingar_jax.vq import VQConfig

    if args.tiny:
        gpt = gpt_config("GPT-B", "t2i", n_layer=2, n_head=2, dim=32, vocab_size=64, cls_token_num=8,
                         caption_dim=16, grid_size=4)
        return gpt, VQConfig(codebook_size=64, ch=8, ch_mult=(1, 1, 1, 1, 1), z_channels=8, num_res_blocks=1,
                             norm_groups=4).validate()
    gpt = gpt_config(args.preset, "t2i", grid_size=args.grid, caption_dim=args.caption_dim)
    # LlamaGen's VQ-16 codebook (16384 x 8) and downsampling (16), narrow convolutions: decoding stays cheap
    vq = VQConfig(codebook_size=gpt.vocab_size, ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=64, num_res_blocks=1,
                  norm_groups=8).validate()
    return gpt, vq


def bench_prompts(n: int) -> list[str]:
    return [f"benchmark prompt {i}" for i in range(n)]


def save_random_models(folder: Path, gpt_cfg, vq_cfg, *, seed: int) -> tuple[Path, Path]:
    """Random GPT and VQ model directories (`checkpoint.save_model`) under `folder`: (gpt, vq)."""
    import jax

    from scalingar_jax import gpt, vq
    from scalingar_jax.checkpoint import save_model

    k_gpt, k_vq = jax.random.split(jax.random.key(seed))
    params = jax.jit(functools.partial(gpt.init_params, gpt_cfg))(k_gpt)  # jitted: eager init is slow
    save_model(folder / "gpt", params, gpt_cfg, kind="gpt")
    del params
    save_model(folder / "vq", vq.init_vq_params(vq_cfg, k_vq), vq_cfg, kind="vq")
    return folder / "gpt", folder / "vq"


def make_random_bundle(out: Path, gpt_dir: Path, vq_dir: Path, prompts, *, seed: int, log=print) -> Path:
    """A LlamaGen t2i bundle at `out` through `llamagen.assemble_bundle`, from model directories
    (`save_random_models`) and random caption features for `prompts`: an npz with features
    (P, cls, caption_dim), a left-padded mask of 5..cls valid rows, and the prompts."""
    from scalingar_jax import llamagen
    from scalingar_jax.checkpoint import read_config

    _, gpt_cfg, _ = read_config(gpt_dir)
    rng = np.random.default_rng(seed)
    L, C = gpt_cfg.cls_token_num, gpt_cfg.caption_dim
    valid = rng.integers(min(5, L), L + 1, size=len(prompts))
    mask = np.arange(L)[None] >= (L - valid)[:, None]  # left padding: the valid rows at the end
    feats = (rng.standard_normal((len(prompts), L, C)) * 0.1).astype(np.float32) * mask[..., None]
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "features.npz", features=feats, mask=mask, prompts=np.asarray(prompts))
        return llamagen.assemble_bundle(out, gpt=gpt_dir, vq=vq_dir, t5_features=Path(tmp) / "features.npz",
                                        name=f"random-{gpt_cfg.n_layer}-layer-t2i", log=log)


def parse_runs(runs) -> list[tuple[str, int]]:
    """["plain:1", "best_of_n:8", ...] -> [(strategy, N), ...]."""
    out = []
    for r in runs:
        name, _, n = r.partition(":")
        if name not in ("plain", "best_of_n", "scalingar", "confidence_only") or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--runs entries look like scalingar:8 (plain, best_of_n, scalingar, "
                             f"confidence_only; N >= 1), got {r!r}")
        out.append((name, int(n)))
    return out


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (its `/jax/core/compile/...` duration
    events), summed since the last `reset`."""

    def __init__(self):
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_):
        if event.startswith("/jax/core/compile/"):
            self.seconds += duration

    def reset(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def time_run(pipe, prompts, strategy: str, n: int, *, seed: int, repeat: int, clock: CompileClock,
             mesh=None) -> dict:
    """First call (compiles) and `repeat` timed calls of `pipeline.generate` + decoding the selected
    images; returns seconds, compile seconds (JAX's compile events in the first call; in the timed
    calls, which should be 0), images/s and tokens per image."""
    from scalingar_jax.pipeline import generate
    from scalingar_jax.scaling.options import Schedule

    cond = pipe.condition(prompts)

    def once():
        t = time.perf_counter()
        out = generate(pipe, prompts, strategy, num_candidates=n, seed=seed, schedule=Schedule(mesh=mesh),
                       conditioning=cond)
        return time.perf_counter() - t, out

    clock.reset()
    first, out = once()
    compile_s = clock.reset()
    times = [once()[0] for _ in range(repeat)]
    median = sorted(times)[len(times) // 2]
    P = len(prompts)
    tokens = float(np.asarray(out.result.tokens_used).sum())
    return {"strategy": strategy, "N": n, "prompts": P, "first_call_s": first, "compile_s": compile_s,
            "compile_in_timed_s": clock.reset(), "s_per_call": median, "images_per_s": P / median,
            "tokens_per_image": tokens / P, "model_tokens_per_s": tokens / median, "times_s": times}


def random_bundle_mode(args):
    import jax

    from scalingar_jax import sharding
    from scalingar_jax.pipeline import load_pipeline

    runs = parse_runs(args.runs)
    gpt_cfg, vq_cfg = random_configs(args)
    prompts = bench_prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        gpt_dir, vq_dir = save_random_models(Path(tmp), gpt_cfg, vq_cfg, seed=args.seed)
        bundle = make_random_bundle(Path(tmp) / "bundle", gpt_dir, vq_dir, prompts, seed=args.seed,
                                    log=lambda m: None)
        build_s = time.perf_counter() - t
        pipe = load_pipeline(bundle)
    import dataclasses

    pipe = dataclasses.replace(pipe, reward=brightness_reward)
    mesh = None if args.mesh is None else sharding.make_mesh(*sharding.parse_mesh(args.mesh))
    rows, clock = [], CompileClock()
    for strategy, n in runs:
        row = time_run(pipe, prompts, strategy, n, seed=args.seed, repeat=args.repeat, clock=clock, mesh=mesh)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "times_s"}, flush=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["x_first"] = r["images_per_s"] / base
    cols = ["strategy", "N", "prompts", "images_per_s", "x_first", "s_per_call", "compile_s", "tokens_per_image",
            "model_tokens_per_s"]
    table = markdown_table(rows, cols)
    print(table)
    settings = {"gpt": dataclasses.asdict(gpt_cfg), "vq": dataclasses.asdict(vq_cfg), "sampling":
                dataclasses.asdict(pipe.sampling), "scaling": dataclasses.asdict(pipe.scaling), "seed": args.seed,
                "repeat": args.repeat, "mesh": args.mesh, "bundle_build_s": build_s,
                "reward": "brightness_reward (mean pixel value)", "backend": jax.default_backend(),
                "devices": jax.device_count()}
    path = write_json(args.out or "bench_generate_random",
                      {"stamp": stamp(args.seed), "settings": settings, "rows": rows, "table": table})
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="cli", choices=["cli", "random-bundle"], help="what to time")
    ap.add_argument("--prompt", default="a photo of a red circle left of a blue square", help="cli: the prompt")
    ap.add_argument("--strategies", nargs="+", default=["scalingar", "plain"], help="cli: strategies to time")
    ap.add_argument("-n", type=int, default=8, help="cli: candidates N")
    ap.add_argument("--checkpoint", default=None, help="cli: model folder (default: the embedded checkpoint)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), help="random-bundle: strategy:N pairs, in order")
    ap.add_argument("--prompts", type=int, default=8, help="random-bundle: prompts per call")
    ap.add_argument("--repeat", type=int, default=3, help="random-bundle: timed calls per run (median)")
    ap.add_argument("--preset", default="GPT-B", help="random-bundle: GPT preset (t2i)")
    ap.add_argument("--grid", type=int, default=16, help="random-bundle: token grid (16 = 256 px)")
    ap.add_argument("--caption-dim", type=int, default=2048, help="random-bundle: caption feature width")
    ap.add_argument("--mesh", default=None, help="random-bundle: PxC mesh (default: one device)")
    ap.add_argument("--seed", type=int, default=0, help="random-bundle: weights, features and sampling seed")
    ap.add_argument("--tiny", action="store_true", help="random-bundle: tiny model (smoke test)")
    ap.add_argument("--out", default=None, help="results name under experiments/results/ "
                                                "(default bench_generate / bench_generate_random)")
    args = ap.parse_args(argv)
    if args.mode == "cli":
        cli_mode(args)
    else:
        if args.prompts < 1 or args.repeat < 1:
            raise SystemExit("--prompts and --repeat must be >= 1")
        random_bundle_mode(args)


if __name__ == "__main__":
    main()
