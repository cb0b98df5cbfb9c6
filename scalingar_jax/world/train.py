"""Trains the shapes-world models: the VQ tokenizer, the t2i GPT (jointly with its text
encoder) and the reward model, with optax (AdamW, linear warmup + cosine decay, global-norm
gradient clipping), seeded, and saves them with orbax under `--out` (default
`checkpoints/shapes`): `{vq,gpt,text,reward}/`, each a `checkpoint.save_model` directory. The
command line is `scalingar train-world` (`cli.train_world`); `train(args)` runs its settings.

Each run writes `<model>_v<world>.json` (config, loss curve, chunk wall times, evaluation
numbers and the exact command; v1's runs wrote `<model>.json`) and its `.log` under `--results`
(default `experiments/results/training`). Both defaults are relative to the current directory:
run it from the repository root. The default world is v3 (`world.spec.DEFAULT_WORLD`), the one
`checkpoints/shapes` holds; every part's meta records its version and the scene split it was
trained on (`world_meta`).

  scalingar train-world {vq,gpt,reward,all} --out checkpoints/shapes --seed 0 --resume

Training data comes only from `render.render_random_scene`: in v2 and v3 the training prompt
sampler of the scene split (`world.scenes`: training SCENES only, every phrasing; the renderer
refuses any other scene); in v1 every prompt but the evaluation prompts verbatim.

World v2 (`--world 2`, `world.spec.WORLD_V2`): 64x64 images, a 16x16 token grid, a 6.79M
parameter GPT (dim 256, 8 layers), a reward model trained to RANK the candidates of one
prompt (`reward.ranking_loss`; v3's too). Runs go in resumable chunks: with `--resume` a run
saves its optimiser state and step under `<out>/.train_state/<model>.npz` when `--max-minutes`
(default 45 with --resume) ends a chunk, and the SAME command continues it (same learning-
rate schedule, batch i drawn from rng (seed, i) whatever the chunking). Results go to
`experiments/results/training/<model>_v2.json`. For example, on an accelerator:

  scalingar train-world vq --world 2 --out checkpoints/shapes_v2 --resume
  scalingar train-world gpt --world 2 --out checkpoints/shapes_v2 --resume
  scalingar train-world reward --world 2 --out checkpoints/shapes_v2 --resume
(rerun each until it prints "finished"; every part's meta records world_version 2).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalingar_jax.atomic import atomic_write_bytes, atomic_write_text
from scalingar_jax.images import to_uint8
from scalingar_jax.stats import auroc
from scalingar_jax.world.spec import DEFAULT_WORLD, META_KEY, WORLD_V1, WorldSpec


# --------------------------------------------------------------------------------------------
# Chosen configurations
# --------------------------------------------------------------------------------------------


def default_vq_config(spec: WorldSpec = WORLD_V1):
    from scalingar_jax.vq import VQConfig

    # 48x48 -> 12x12 tokens (v1, v3) or 64x64 -> 16x16 (v2): downsample 4, an L2-normalised
    # 512 x 8 codebook; base width from the spec (16; v2: 32).
    return VQConfig(codebook_size=512, codebook_embed_dim=8, codebook_l2_norm=True, ch=spec.vq_channels, ch_mult=(1, 2, 4),
                    z_channels=64, num_res_blocks=1, norm_groups=8).validate()


def default_text_config():
    from scalingar_jax.world.text_encoder import default_text_config as d

    return d(dim=128, n_layer=2, n_head=4, out_dim=128)



def default_gpt_config(vq_cfg, text_cfg, dim: int = 192, n_layer: int = 6, grid_size: int = 12):
    from scalingar_jax.config import GPTConfig

    return GPTConfig(model_type="t2i", n_layer=n_layer, n_head=dim // 32, dim=dim, multiple_of=64, vocab_size=vq_cfg.codebook_size,
                     cls_token_num=text_cfg.max_len, caption_dim=text_cfg.out_dim, grid_size=grid_size).validate()


def default_reward_config(spec: WorldSpec = WORLD_V1):
    from scalingar_jax.world.reward import default_reward_config as d

    return d(image_size=spec.image_size, channels=(32, 64, 128), dim=128, text_dim=96, text_layers=2, text_heads=4)


# --------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float = 0.01, clip: float = 1.0):
    """AdamW with linear warmup then cosine decay to lr/10, after global-norm clipping."""
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), max(steps, warmup + 1), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=weight_decay))


def render_data(n: int, seed: int, image_size: int = 48, spec: WorldSpec = WORLD_V1):
    """n training examples: (records list, uint8 images (n, S, S, 3)); v2: S = 64, training
    scenes only."""
    from scalingar_jax.world.render import render_random_scene

    rng = np.random.default_rng(seed)
    recs, imgs = [], []
    for _ in range(n):
        r, im = (render_random_scene(rng, image_size) if spec.version == 1
                 else render_random_scene(rng, spec=spec))
        recs.append(r)
        imgs.append(im)
    return recs, np.stack(imgs)


def to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 127.5 - 1.0


def param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


class Run:
    """Progress bar + log file + JSON record for one training run."""

    def __init__(self, name: str, args, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.results = Path(args.results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.name, self.t0 = name, time.time()
        self.log_path = self.results / f"{name}.log"
        self.chunk = self._chunk_record() if getattr(args, "resume", False) else None
        self.log_f = open(self.log_path, "a" if self.chunk else "w")  # a chunk's log goes on with the run's
        self.record = {"model": name, "command": getattr(args, "command_line", None) or shlex.join(sys.argv),
                       "seed": args.seed, "losses": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), refresh_per_second=1)
        self.task = self.progress.add_task(name, total=total, info="")
        self.progress.start()

    def _chunk_record(self) -> dict | None:
        """The JSON record of the unfinished chunk this --resume run continues (None if none)."""
        prev = self.results / f"{self.name}.json"
        rec = json.loads(prev.read_text()) if prev.is_file() else {}
        return rec if "chunk_ended_at_step" in rec else None

    def resume_at(self, start: int) -> None:
        """Continues the record of the run's earlier chunks at step `start`: their losses (steps
        before `start`) and their wall times (`chunk_wall_times_s`) are kept."""
        prev = self.chunk or {}
        self.record["losses"] = [x for x in prev.get("losses", []) if x["step"] < start]
        self.record["started"] = prev.get("started", self.record["started"])
        self.record["chunk_wall_times_s"] = prev.get("chunk_wall_times_s", []) + [prev["wall_time_s"]] if prev else []

    def previous_runs(self) -> list[dict]:
        """The records of the earlier runs this one continues: the JSON this run will replace
        (and the runs it kept), oldest first."""
        prev = self.results / f"{self.name}.json"
        if not prev.exists():
            return []
        rec = json.loads(prev.read_text())
        if "chunk_ended_at_step" in rec:  # an unfinished chunk of this very run: its history is ours
            return rec.get("previous_runs", [])
        return rec.pop("previous_runs", []) + [rec]

    def log(self, msg: str):
        line = f"[{time.time() - self.t0:8.1f}s] {msg}"
        self.log_f.write(line + "\n")
        self.log_f.flush()

    def step(self, step: int, metrics: dict, every: int):
        self.progress.update(self.task, completed=step + 1,
                             info=" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if step % every == 0:
            m = {k: float(v) for k, v in metrics.items()}
            self.record["losses"].append({"step": step, "time_s": round(time.time() - self.t0, 1), **m})
            self.log(f"step {step} " + " ".join(f"{k}={v:.5f}" for k, v in m.items()))

    def finish(self, **extra):
        self.progress.stop()
        self.record.update(extra)
        self.record["wall_time_s"] = round(time.time() - self.t0, 1)
        if self.record.get("chunk_wall_times_s"):
            self.record["wall_time_all_chunks_s"] = round(sum(self.record["chunk_wall_times_s"])
                                                          + self.record["wall_time_s"], 1)
        out = self.results / f"{self.name}.json"
        atomic_write_text(out, json.dumps(self.record, indent=2, default=str))
        self.log(f"done; wall time {self.record['wall_time_s']} s; wrote {out}")
        self.log_f.close()


def _cfg_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def stop_reason(t0: float, args, done: int) -> str | None:
    """Why a training loop that started at `t0` stops early after `done` steps (--stop-after or
    the --max-minutes cap), or None to go on."""
    if args.stop_after and done >= args.stop_after:
        return f"--stop-after {args.stop_after} reached"
    if args.max_minutes > 0 and time.time() - t0 > 60 * args.max_minutes:
        return f"time cap of {args.max_minutes} min reached at step {done}"
    return None


def _spec(args) -> WorldSpec:
    return getattr(args, "spec", None) or DEFAULT_WORLD


def world_meta(spec: WorldSpec) -> dict:
    """The world part of a trained model's meta: its version and, for a world split by scene,
    the split its training data came from (`world.scenes.split_meta`)."""
    if not spec.scene_splits:
        return {META_KEY: spec.version}
    from scalingar_jax.world.scenes import SPLIT_META_KEY, split_meta

    return {META_KEY: spec.version, SPLIT_META_KEY: split_meta()}


def run_name(model: str, spec: WorldSpec) -> str:
    """The results name of a training run: `model` for v1, `model_v<version>` otherwise."""
    return model if spec.version == 1 else f"{model}_v{spec.version}"


def state_path(args, model: str) -> Path:
    """Where `--resume` keeps a run's optimiser state: <out>/.train_state/<model>.npz."""
    return Path(args.out) / ".train_state" / f"{model}.npz"


def save_train_state(path, step: int, total: int, params, opt_state) -> None:
    """Writes the leaves of (params, opt_state) and the step atomically to `path` (.npz)."""
    import io

    leaves = jax.tree.leaves((params, opt_state))
    buf = io.BytesIO()
    np.savez(buf, step=np.int64(step), total=np.int64(total), **{f"l{i}": np.asarray(x) for i, x in enumerate(leaves)})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def load_train_state(path, params, opt_state, total: int):
    """(step, params, opt_state) saved by `save_train_state`, restored into the structure of
    the given (params, opt_state). ValueError names the file when it does not fit (another
    model, config or schedule length)."""
    with np.load(path) as z:
        leaves, treedef = jax.tree.flatten((params, opt_state))
        saved = [z[f"l{i}"] for i in range(sum(k.startswith("l") for k in z.files))]
        if int(z["total"]) != total:
            raise ValueError(f"{path} is a run of {int(z['total'])} steps, this command asks for {total}; "
                             "use the same --*-steps to resume, or delete the state to start over")
        if len(saved) != len(leaves) or any(a.shape != np.shape(b) for a, b in zip(saved, leaves)):
            raise ValueError(f"{path} holds a training state of another model or config; delete it to start over")
        step = int(z["step"])
    restored = jax.tree.unflatten(treedef, [jnp.asarray(a, dtype=np.asarray(b).dtype) for a, b in zip(saved, leaves)])
    return step, restored[0], restored[1]


def train_loop(run, args, model: str, step_fn, params, opt_state, batch, steps: int):
    """Runs step_fn(params, opt_state, *batch(step)) -> (params, opt_state, metrics dict) for
    steps [start, steps), where start comes from the `--resume` state (else 0). Stops early
    at --stop-after / --max-minutes; with --resume saves the state there.

    Returns (params, opt_state, start, done, step_time_s): `done` steps are complete;
    step_time_s = mean seconds per step after the first of this call (compile excluded;
    None with fewer than 2 steps)."""
    start = 0
    path = state_path(args, model)
    if getattr(args, "resume", False) and path.is_file():
        start, params, opt_state = load_train_state(path, params, opt_state, steps)
        run.resume_at(start)
        run.log(f"resuming {path} at step {start}/{steps}")
    t0, done, t_first = time.time(), start, None
    for step in range(start, steps):
        params, opt_state, metrics = step_fn(params, opt_state, *batch(step))
        done = step + 1
        run.step(step, metrics, args.log_every)
        if t_first is None:
            jax.block_until_ready(params)
            t_first = time.time()
        if why := stop_reason(t0, args, done):
            run.log(why)
            break
    jax.block_until_ready(params)
    step_time = (time.time() - t_first) / (done - start - 1) if t_first is not None and done - start > 1 else None
    if getattr(args, "resume", False):
        save_train_state(path, done, steps, params, opt_state)
        run.log(f"saved the training state at step {done}/{steps} to {path}")
    return params, opt_state, start, done, step_time


def saved_steps(path) -> int:
    """Training steps recorded in a saved model's meta (0 if none)."""
    from scalingar_jax.checkpoint import read_config

    return int((read_config(path)[2] or {}).get("steps", 0))


# --------------------------------------------------------------------------------------------
# VQ
# --------------------------------------------------------------------------------------------


def vq_judge_agreement(vq_params, vq_cfg, n: int, seed: int, batch: int = 50, spec: WorldSpec = WORLD_V1) -> dict:
    """Judge accuracy on n fresh ground-truth renders and on their VQ reconstructions."""
    from functools import partial

    from scalingar_jax.vq import reconstruct
    from scalingar_jax.world.judge import judge_config
    from scalingar_jax.world.judge import judge_image as _judge

    judge_image = partial(_judge, config=judge_config(spec))
    recs, imgs = render_data(n, seed, spec=spec)
    gt_ok, rec_ok, fails = 0, 0, []
    for s in range(0, n, batch):
        rec = to_uint8(reconstruct(vq_params, vq_cfg, jnp.asarray(to_float(imgs[s:s + batch]))))
        for i in range(rec.shape[0]):
            gt_ok += judge_image(imgs[s + i], recs[s + i]).correct
            v = judge_image(rec[i], recs[s + i])
            rec_ok += v.correct
            if not v.correct and len(fails) < 10:
                fails.append({"prompt": recs[s + i]["prompt"], "reason": v.reason})
    return {"n": n, "judge_on_renders": gt_ok / n, "judge_on_reconstructions": rec_ok / n, "example_failures": fails}


def restart_dead_codes(params, codes: np.ndarray, z: np.ndarray, rng: np.random.Generator):
    """Codebook rows that no latent of a sample uses are moved onto randomly chosen latents of it
    (plus noise of std 0.01), so the codebook does not collapse onto a few rows (random restarts,
    as in Jukebox's VQ-VAE). codes (n,) int, z (n, e) the (normalised) latents that produced them.
    Returns (params with the new `quantize/embedding`, rows in use, rows restarted)."""
    emb = np.array(params["quantize"]["embedding"])
    used = np.bincount(codes, minlength=emb.shape[0]) > 0
    dead = np.flatnonzero(~used)
    if dead.size:
        pick = rng.choice(len(z), size=dead.size, replace=len(z) < dead.size)
        emb[dead] = z[pick] + rng.normal(0.0, 0.01, (dead.size, emb.shape[1]))
        params = {**params, "quantize": {**params["quantize"],
                                         "embedding": jnp.asarray(emb, params["quantize"]["embedding"].dtype)}}
    return params, int(used.sum()), int(dead.size)


def train_vq(args):
    from scalingar_jax.checkpoint import save_model
    from scalingar_jax.vq import init_vq_params, vq_losses

    spec = _spec(args)
    cfg = default_vq_config(spec)
    steps, B = args.vq_steps, args.vq_batch
    run = Run(run_name("vq", spec), args, steps)
    run.log(f"config {cfg}")
    _, data = render_data(args.vq_data, args.seed, spec=spec)
    data = to_float(data)
    run.log(f"rendered {len(data)} training images")
    key = jax.random.key(args.seed)
    params = init_vq_params(cfg, key)
    if args.vq_init:
        from scalingar_jax.checkpoint import load_model

        params, cfg0 = load_model(args.vq_init, expect_kind="vq")
        if cfg0 != cfg:
            raise ValueError(f"--vq-init {args.vq_init} holds {cfg0}, expected {cfg}")
        run.log(f"continuing from {args.vq_init}")
    opt = make_optimizer(args.vq_lr, steps, args.warmup, weight_decay=0.0)
    opt_state = opt.init(params)

    @jax.jit
    def step_fn(params, opt_state, x):
        def loss_fn(p):
            d = vq_losses(p, cfg, x)
            return d["total"], d

        (_, d), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, {k: d[k] for k in ("recon", "vq", "commit")}

    @jax.jit
    def latents(params, x):  # (codes (n,), normalised latents z (n, e)) of a batch of images
        from scalingar_jax.vq import VQModel

        codes, _, z = nn.apply(lambda m: m.encode(x), VQModel(cfg))({"params": params})
        return codes.reshape(-1), z.reshape(-1, z.shape[-1])

    restart_until = int(args.vq_restart_until * steps)

    def step_with_restarts(params, opt_state, x, step):
        params, opt_state, metrics = step_fn(params, opt_state, x)
        if args.vq_restart_every and 0 < step < restart_until and step % args.vq_restart_every == 0:
            r = np.random.default_rng([args.seed + 5, step])  # a function of the step: chunking changes nothing
            codes, z = latents(params, jnp.asarray(data[r.integers(0, len(data), 4 * B)]))
            params, used, restarted = restart_dead_codes(params, np.asarray(codes), np.asarray(z), r)
            metrics = {**metrics, "codes_used": used, "restarted": restarted}
        return params, opt_state, metrics

    rng = np.random.default_rng(args.seed + 1)

    def batch(step):
        r = rng if spec.version == 1 else np.random.default_rng([args.seed + 1, step])
        idx = r.integers(0, len(data), B)
        x = data[idx]
        if r.random() < 0.5:  # flips keep the scene distribution (position labels are not used here)
            x = x[:, :, ::-1]
        return jnp.asarray(x), step

    t0 = time.time()
    params, opt_state, start, done, step_time = train_loop(run, args, "vq", step_with_restarts, params, opt_state,
                                                           batch, steps)
    train_time = time.time() - t0
    out = Path(args.out) / "vq"
    meta = {"steps": done, "seed": args.seed, **world_meta(spec)}
    if not _finished(run, args, done, steps, lambda: save_model(out, params, cfg, kind="vq", meta=meta, overwrite=True),
                     step_time_s=step_time, params=param_count(params), config=_cfg_dict(cfg)):
        return params, cfg
    run.log("evaluating judge agreement on reconstructions")
    ev = vq_judge_agreement(params, cfg, args.eval_n, args.seed + 1000, spec=spec)
    run.log(f"eval {ev}")
    save_model(out, params, cfg, kind="vq", meta=meta, overwrite=True)
    run.finish(config=_cfg_dict(cfg), steps=done, batch=B, lr=args.vq_lr, train_time_s=round(train_time, 1),
               step_time_s=step_time, resumed_from_step=start,
               params=param_count(params), checkpoint=str(out), checkpoint_mb=round(dir_size_mb(out), 2), eval=ev)
    return params, cfg


def _finished(run, args, done: int, steps: int, save, **record) -> bool:
    """True when the run reached `steps` (or runs without --resume). Otherwise a chunk ended:
    saves the partial model (`save()`), records the chunk and says how to continue."""
    if done >= steps or not getattr(args, "resume", False):
        return True
    save()
    run.log(f"chunk ended at step {done}/{steps}; rerun the same command to continue")
    run.finish(chunk_ended_at_step=done, steps_total=steps, **record)
    print(f"{run.name}: chunk ended at step {done}/{steps}; rerun the same command to continue", flush=True)
    return False


# --------------------------------------------------------------------------------------------
# t2i GPT + text encoder (trained jointly)
# --------------------------------------------------------------------------------------------


def encode_images(vq_params, vq_cfg, images_u8: np.ndarray, batch: int = 100) -> np.ndarray:
    """uint8 (N, S, S, 3) -> VQ codes (N, h*w) int32 (raster order)."""
    from scalingar_jax.vq import encode

    out = []
    for s in range(0, len(images_u8), batch):
        codes, _ = encode(vq_params, vq_cfg, jnp.asarray(to_float(images_u8[s:s + batch])))
        out.append(np.asarray(codes).reshape(codes.shape[0], -1))
    return np.concatenate(out).astype(np.int32)


def gpt_loss(params, gpt_cfg, text_cfg, ids, mask, codes, drop):
    """Mean next-token cross entropy. params = {"gpt", "text"}; ids/mask (B, L); codes (B, T)
    int32; drop (B,) bool (rows conditioned on the uncond embedding). Returns (loss, acc)."""
    from scalingar_jax.gpt import forward
    from scalingar_jax.world.text_encoder import encode_ids

    feats = encode_ids(params["text"], text_cfg, ids, mask)
    logits = forward(params["gpt"], gpt_cfg, feats, codes, mask, drop)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()
    acc = (logits.argmax(-1) == codes).mean()
    return ce, acc


def sample_images(world_dir, records, *, num_candidates: int, cfg_scale: float, top_k: int, seed: int,
                  temperature: float = 1.0, batch: int = 30, version: int | None = None):
    """Generates num_candidates images per record with the saved GPT: uint8 (P, N, S, S, 3).
    `version`: the world version the checkpoint must hold (None: any)."""
    from scalingar_jax.config import SamplingConfig
    from scalingar_jax.decode import generate
    from scalingar_jax.vq import decode_codes
    from scalingar_jax.world.models import load_world
    from scalingar_jax.world.text_encoder import encode_prompts

    w = load_world(world_dir, parts=("vq", "gpt", "text"), version=version)
    sampling = SamplingConfig(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k)
    g = w.gpt_cfg.grid_size
    out = []
    for s in range(0, len(records), batch):
        recs = records[s:s + batch]
        feats, mask = encode_prompts(w.text_params, w.text_cfg, [r["prompt"] for r in recs])
        toks = generate(w.gpt_params, w.gpt_cfg, feats, key=jax.random.key(seed), num_candidates=num_candidates,
                        sampling=sampling, cond_mask=mask, prompt_ids=np.arange(s, s + len(recs)))
        P, N, _ = toks.shape
        imgs = decode_codes(w.vq_params, w.vq_cfg, toks.reshape(P * N, g, g))
        out.append(to_uint8(imgs).reshape(P, N, *imgs.shape[1:]))
    return np.concatenate(out)


def eval_prompts(per_tag: int, spec: WorldSpec = WORLD_V1) -> list[dict]:
    """The first `per_tag` records of every tag of the default evaluation set (v1) or of the
    DEVELOPMENT set (v2: post-training reports never look at the evaluation scenes)."""
    from scalingar_jax.world.prompts import TAGS, evaluation_set
    from scalingar_jax.world.scenes import development_set_v2

    recs = evaluation_set() if spec.version == 1 else development_set_v2()
    return [r for t in TAGS for r in [x for x in recs if x["tag"] == t][:per_tag]]


def save_grid(images: np.ndarray, captions: list[str], path: Path, cols: int = 10):
    """images uint8 (n, S, S, 3) -> a captioned PNG grid (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for i, ax in enumerate(np.asarray(axes).reshape(-1)):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            words = captions[i].replace("a photo of ", "").split()
            mid = (len(words) + 1) // 2
            ax.set_title(" ".join(words[:mid]) + "\n" + " ".join(words[mid:]), fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def base_model_eval(world_dir, args) -> dict:
    """Per-tag judge accuracy of the base GPT on `args.sample_prompts` evaluation prompts
    (v2: development prompts)."""
    from scalingar_jax.world.judge import judge_config, judge_image, summarize
    from scalingar_jax.world.prompts import TAGS

    spec = _spec(args)
    per_tag = max(1, args.sample_prompts // len(TAGS))
    recs = eval_prompts(per_tag, spec)
    imgs = sample_images(world_dir, recs, num_candidates=1, cfg_scale=args.cfg_scale, top_k=args.top_k,
                         seed=args.seed + 7, version=spec.version)[:, 0]
    verdicts = [judge_image(im, r, judge_config(spec)) for im, r in zip(imgs, recs)]
    summary = summarize(verdicts, recs)
    caps = [("OK " if v.correct else "X ") + r["prompt"] for v, r in zip(verdicts, recs)]
    save_grid(imgs, caps, Path(args.results) / f"{run_name('samples', spec)}.png")
    summary["sampling"] = {"cfg_scale": args.cfg_scale, "top_k": args.top_k, "temperature": 1.0, "candidates": 1}
    summary["example_failures"] = [{"prompt": r["prompt"], "reason": v.reason}
                                   for v, r in zip(verdicts, recs) if not v.correct][:15]
    return summary


def load_gpt_init(path, cfg, text_cfg):
    """Loads a saved world (`path`/gpt and `path`/text) to continue training: (params, steps so far).

    Raises ValueError if the saved configs differ from the ones this run would train."""
    from scalingar_jax.checkpoint import load_model

    from scalingar_jax.checkpoint import read_config

    g, g_cfg = load_model(Path(path) / "gpt", expect_kind="gpt")
    t, t_cfg = load_model(Path(path) / "text", expect_kind="text")
    if g_cfg != cfg or t_cfg != text_cfg:
        raise ValueError(f"--gpt-init {path} holds {g_cfg} / {t_cfg}, expected {cfg} / {text_cfg}")
    meta = read_config(Path(path) / "gpt")[2] or {}
    # a model saved when a --resume chunk of a continued run ended: the run started after the init's steps
    steps = meta["continued_from_steps"] if meta.get("chunk_of_run") else saved_steps(Path(path) / "gpt")
    return {"gpt": g, "text": t}, int(steps)


def train_gpt(args):
    from scalingar_jax.checkpoint import load_model, save_model
    from scalingar_jax.gpt import init_params
    from scalingar_jax.world.text_encoder import init_text_params
    from scalingar_jax.world.vocab import tokenize

    from scalingar_jax.world.models import check_world_version

    spec = _spec(args)
    check_world_version(Path(args.out) / "vq", spec.version)
    vq_params, vq_cfg = load_model(Path(args.out) / "vq", expect_kind="vq")
    text_cfg = default_text_config()
    dim = args.gpt_dim or spec.gpt_dim
    layers = args.gpt_layers or spec.gpt_layers
    cfg = default_gpt_config(vq_cfg, text_cfg, dim, layers, spec.grid_size)
    steps, B = args.gpt_steps, args.gpt_batch
    run = Run(run_name("gpt", spec), args, steps)
    run.log(f"config {cfg}\ntext {text_cfg}")
    recs, imgs = render_data(args.gpt_data, args.seed + 11, spec=spec)
    run.log(f"rendered {len(recs)} images")
    codes = encode_images(vq_params, vq_cfg, imgs)
    ids, mask = tokenize([r["prompt"] for r in recs], text_cfg.max_len)
    run.log(f"tokenised: codes {codes.shape}, {len(np.unique(codes))} distinct codes used")
    k1, k2 = jax.random.split(jax.random.key(args.seed))
    params = {"gpt": init_params(cfg, k1), "text": init_text_params(text_cfg, k2)}
    prior_steps, previous_runs = 0, []
    if args.gpt_init:
        params, prior_steps = load_gpt_init(args.gpt_init, cfg, text_cfg)
        previous_runs = run.previous_runs()  # the history of one checkpoint
        run.log(f"continuing from {args.gpt_init} after {prior_steps} steps")
    opt = make_optimizer(args.gpt_lr, steps, args.warmup, weight_decay=0.05)
    opt_state = opt.init(params)

    @jax.jit
    def step_fn(params, opt_state, ids, mask, codes, drop):
        (loss, acc), g = jax.value_and_grad(gpt_loss, has_aux=True)(params, cfg, text_cfg, ids, mask, codes, drop)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, {"loss": loss, "token_acc": acc}

    rng = np.random.default_rng(args.seed + 2)

    def batch(step):
        r = rng if spec.version == 1 else np.random.default_rng([args.seed + 2, step])
        idx = r.integers(0, len(codes), B)
        drop = r.random(B) < args.caption_dropout
        return jnp.asarray(ids[idx]), jnp.asarray(mask[idx]), jnp.asarray(codes[idx]), jnp.asarray(drop)

    t0 = time.time()
    params, opt_state, start, done, step_time = train_loop(run, args, "gpt", step_fn, params, opt_state, batch, steps)
    train_time = time.time() - t0
    meta = {"steps": prior_steps + done, "seed": args.seed, "trained_jointly_with": "text", **world_meta(spec)}
    if done < steps and getattr(args, "resume", False):  # a chunk: the next one continues this run, not this model
        meta.update(chunk_of_run=True, continued_from_steps=prior_steps)
    out_g, out_t = Path(args.out) / "gpt", Path(args.out) / "text"

    def save():
        save_model(out_g, params["gpt"], cfg, kind="gpt", meta=meta, overwrite=True)
        save_model(out_t, params["text"], text_cfg, kind="text", meta={**meta, "trained_jointly_with": "gpt"},
                   overwrite=True)

    n_params = {"gpt": param_count(params["gpt"]), "text": param_count(params["text"])}
    if not _finished(run, args, done, steps, save, step_time_s=step_time, params=n_params, config=_cfg_dict(cfg),
                     continued_from_steps=prior_steps, previous_runs=previous_runs):
        return params
    save()
    run.log("sampling the base model on evaluation prompts")
    ev = base_model_eval(args.out, args)
    run.log(f"eval {json.dumps(ev)}")
    run.finish(config=_cfg_dict(cfg), text_config=_cfg_dict(text_cfg), steps=done, batch=B, lr=args.gpt_lr,
               caption_dropout=args.caption_dropout, train_images=len(codes), train_time_s=round(train_time, 1),
               step_time_s=step_time, resumed_from_step=start,
               total_steps=prior_steps + done, continued_from_steps=prior_steps, previous_runs=previous_runs,
               params=n_params,
               checkpoint_mb={"gpt": round(dir_size_mb(out_g), 2), "text": round(dir_size_mb(out_t), 2)},
               base_model_eval=ev)
    return params


# --------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------

_NUMBERS = ("two", "three", "four")
_SWAP_REL = {"left": "right", "right": "left", "above": "below", "below": "above"}


def perturb_prompt(prompt: str, rng: np.random.Generator) -> str | None:
    """A hard negative of a shapes-world prompt: one of a wrong colour, shape, count or
    relation, or two objects' colours (or the two sides of a relation) swapped. Returns None
    when no perturbation applies. Never returns the prompt itself."""
    from scalingar_jax.world.vocab import COLORS, PLURALS, SHAPES

    words = prompt.split()
    sing = {s: s for s in SHAPES}
    plur = {p: s for s, p in PLURALS.items()}
    col_idx = [i for i, w in enumerate(words) if w in COLORS]
    shp_idx = [i for i, w in enumerate(words) if w in sing or w in plur]
    num_idx = [i for i, w in enumerate(words) if w in _NUMBERS]
    rel_idx = [i for i, w in enumerate(words) if w in _SWAP_REL]
    present = {sing.get(words[i], plur.get(words[i])) for i in shp_idx}
    ops = []
    if col_idx:
        ops.append("color")
    if len(col_idx) == 2 and words[col_idx[0]] != words[col_idx[1]]:
        ops += ["swap_colors"] * 2
    if shp_idx and len(present) < len(SHAPES):
        ops.append("shape")
    if num_idx:
        ops += ["count"] * 2
    if rel_idx:
        ops += ["relation"] * 2
    if not ops:
        return None
    op = ops[int(rng.integers(len(ops)))]
    w = list(words)
    if op == "color":
        i = col_idx[int(rng.integers(len(col_idx)))]
        w[i] = str(rng.choice([c for c in COLORS if c not in {words[j] for j in col_idx}]))
    elif op == "swap_colors":
        a, b = col_idx
        w[a], w[b] = words[b], words[a]
    elif op == "shape":
        i = shp_idx[int(rng.integers(len(shp_idx)))]
        new = str(rng.choice([s for s in SHAPES if s not in present]))
        w[i] = PLURALS[new] if words[i] in plur else new
    elif op == "count":
        i = num_idx[0]
        w[i] = str(rng.choice([n for n in _NUMBERS if n != words[i]]))
    else:
        i = rel_idx[0]
        w[i] = _SWAP_REL[words[i]]
    out = " ".join(w)
    return out if out != prompt else None


def _reward_batch(recs, imgs, recon, rng, n, pool_records, n_random: int = 6):
    """One contrastive batch for the reward model.

    2n images: n training images (half of them VQ reconstructions) and, for each, a hard
    negative image: the render of a perturbed prompt (wrong colour, count, shape or relation)
    when that prompt is a training prompt, else another training image. Each image's own
    prompt is a positive; the partner's prompt (a hard negative), and `n_random` other
    prompts of the batch are negatives unless they are the same string.

    Returns images float (2n, S, S, 3), prompts (2n,), pair_index (2n * (2 + n_random), 2)
    int32 of (image, prompt) rows, labels float32 and a same-string mask of the pairs."""
    from scalingar_jax.world.render import render_scene

    idx = rng.integers(0, len(recs), n)
    images, prompts = [], []
    for i in idx:
        images.append(recon[i] if recon is not None and rng.random() < 0.5 else imgs[i])
        prompts.append(recs[i]["prompt"])
    for i in idx:
        neg = perturb_prompt(recs[i]["prompt"], rng)
        if neg is not None and neg in pool_records:
            images.append(render_scene(pool_records[neg], rng))
            prompts.append(neg)
        else:
            j = int(rng.integers(len(recs)))
            images.append(imgs[j])
            prompts.append(recs[j]["prompt"])
    m = 2 * n
    img_i = np.repeat(np.arange(m), 2 + n_random)
    txt_i = np.concatenate([np.stack([np.arange(m), (np.arange(m) + n) % m], 1),
                            rng.integers(0, m, (m, n_random))], 1).reshape(-1)
    same = np.asarray([prompts[a] == prompts[b] for a, b in zip(img_i, txt_i)])
    return to_float(np.stack(images)), prompts, np.stack([img_i, txt_i], 1).astype(np.int32), same.astype(np.float32)


def render_pool(n: int, seed: int, spec: WorldSpec):
    """n v2 training renders with their true objects: (records, uint8 images (n, S, S, 3),
    true detections per image) (training scenes only)."""
    from scalingar_jax.world.render import layout_scene, render_objects
    from scalingar_jax.world.scenes import check_scene, training_prompt_sampler_v2

    sampler = training_prompt_sampler_v2()
    rng = np.random.default_rng(seed)
    recs, imgs, dets = [], [], []
    for _ in range(n):
        rec = sampler(rng)
        im, det = _render_with_truth(rec, rng, spec, check_scene, layout_scene, render_objects)
        recs.append(rec)
        imgs.append(im)
        dets.append(det)
    return recs, np.stack(imgs), dets


def _render_with_truth(rec, rng, spec, check_scene, layout_scene, render_objects):
    from scalingar_jax.world.judge import Detection

    check_scene(rec, "train")
    objects = layout_scene(rec, rng, spec.image_size, spec=spec)
    image = render_objects(objects, spec.image_size, rng=rng, spec=spec)
    return image, [Detection(o.cls, o.color, o.box, o.size * o.size, 1.0) for o in objects]


def reward_batch_v2(recs, imgs, dets, recon, rng, n_prompts: int, n_cand: int, pool_records, spec: WorldSpec):
    """One within-prompt ranking batch for the v2 reward model.

    For each of `n_prompts` training records: K = `n_cand` candidate images, namely its own
    render (or its VQ reconstruction, half the time, when `recon` is given), a render of a
    perturbed training prompt (`perturb_prompt`, a hard negative; another pool image when
    the perturbed prompt is not a training prompt), and K - 2 pool images of the same tag.
    Each candidate's label is GenEval's rules applied to its TRUE objects
    (`judge.apply_rules`), so a candidate that happens to satisfy the prompt is a positive.

    Returns images float (P*K, S, S, 3), prompts (P,), pair_index int32 (P*K, 2) rows
    (image, prompt), labels float32 (P, K)."""
    from scalingar_jax.world.judge import apply_rules
    from scalingar_jax.world.render import layout_scene, render_objects
    from scalingar_jax.world.scenes import check_scene

    if n_cand < 3:
        raise ValueError(f"the ranking batch needs at least 3 candidates per prompt, got {n_cand}")
    by_tag: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by_tag.setdefault(r["tag"], []).append(i)
    images, prompts, labels = [], [], []
    for i in rng.integers(0, len(recs), n_prompts):
        rec = recs[i]
        cands = [(recon[i] if recon is not None and rng.random() < 0.5 else imgs[i], dets[i])]
        neg = perturb_prompt(rec["prompt"], rng)
        if neg is not None and neg in pool_records:
            cands.append(_render_with_truth(pool_records[neg], rng, spec, check_scene, layout_scene, render_objects))
        else:
            j = int(rng.integers(len(recs)))
            cands.append((imgs[j], dets[j]))
        same = by_tag[rec["tag"]]
        for j in rng.choice(same, n_cand - 2):
            cands.append((imgs[j], dets[j]))
        images += [c[0] for c in cands]
        labels.append([float(apply_rules(rec, c[1])[0]) for c in cands])
        prompts.append(rec["prompt"])
    P, K = n_prompts, n_cand
    pairs = np.stack([np.arange(P * K), np.repeat(np.arange(P), K)], 1).astype(np.int32)
    return to_float(np.stack(images)), prompts, pairs, np.asarray(labels, np.float32)


def reward_eval(params, cfg, args, vq=None) -> dict:
    """Agreement of the reward with the judge: on held-out renders vs hard negatives (and
    their VQ reconstructions), and on base-GPT samples of evaluation prompts when a GPT
    checkpoint exists (AUROC of the score against the judge verdict, accuracy of sign)."""
    from scalingar_jax.world.judge import judge_config, judge_image
    from scalingar_jax.world.prompts import TAGS
    from scalingar_jax.world.reward import reward_scores

    spec = _spec(args)
    out = {}
    recs, imgs = render_data(args.eval_n, args.seed + 2000, spec=spec)
    rng = np.random.default_rng(args.seed + 2001)
    prompts, images, labels = [], [], []
    for r, im in zip(recs, imgs):
        neg = perturb_prompt(r["prompt"], rng)
        prompts += [r["prompt"]] + ([neg] if neg else [])
        images += [im] + ([im] if neg else [])
        labels += [1] + ([0] if neg else [])
    images = np.stack(images)
    s = np.concatenate([np.asarray(reward_scores(params, cfg, images[i:i + 100], prompts[i:i + 100]))
                        for i in range(0, len(prompts), 100)])
    labels = np.asarray(labels, bool)
    out["renders_vs_perturbed_prompts"] = {"n": int(len(labels)), "auroc": auroc(s, labels),
                                           "accuracy": float(((s > 0) == labels).mean())}
    if vq is not None:
        from scalingar_jax.vq import reconstruct

        rec = np.concatenate([to_uint8(reconstruct(vq[0], vq[1], jnp.asarray(to_float(images[i:i + 100]))))
                              for i in range(0, len(images), 100)])
        s = np.concatenate([np.asarray(reward_scores(params, cfg, rec[i:i + 100], prompts[i:i + 100]))
                            for i in range(0, len(prompts), 100)])
        out["reconstructions_vs_perturbed_prompts"] = {"n": int(len(labels)), "auroc": auroc(s, labels),
                                                       "accuracy": float(((s > 0) == labels).mean())}
    gpt_dir = Path(args.out)
    if all((gpt_dir / p / "config.json").is_file() for p in ("vq", "gpt", "text")):
        per_tag = max(1, args.sample_prompts // len(TAGS))
        erecs = eval_prompts(per_tag, spec)
        n_cand = 2
        gimgs = sample_images(gpt_dir, erecs, num_candidates=n_cand, cfg_scale=args.cfg_scale, top_k=args.top_k,
                              seed=args.seed + 99, version=spec.version)
        flat = gimgs.reshape(-1, *gimgs.shape[2:])
        frecs = [r for r in erecs for _ in range(n_cand)]
        verdict = np.asarray([judge_image(im, r, judge_config(spec)).correct for im, r in zip(flat, frecs)], bool)
        s = np.concatenate([np.asarray(reward_scores(params, cfg, flat[i:i + 100], [r["prompt"] for r in frecs[i:i + 100]]))
                            for i in range(0, len(frecs), 100)])
        # Best-of-2 by reward vs the first candidate, as judged.
        s2, v2 = s.reshape(-1, n_cand), verdict.reshape(-1, n_cand)
        best = v2[np.arange(len(v2)), s2.argmax(1)]
        out["gpt_samples"] = {
            "n": int(len(verdict)), "judge_accuracy": float(verdict.mean()), "auroc": auroc(s, verdict),
            "accuracy_of_sign": float(((s > 0) == verdict).mean()),
            "first_candidate_accuracy": float(v2[:, 0].mean()), "best_of_2_by_reward_accuracy": float(best.mean()),
            "oracle_best_of_2_accuracy": float(v2.any(1).mean()),
            "sampling": {"cfg_scale": args.cfg_scale, "top_k": args.top_k, "prompts": len(erecs)},
        }
    return out


def train_reward(args):
    from scalingar_jax.checkpoint import load_model, save_model
    from scalingar_jax.world.render import default_sampler
    from scalingar_jax.world.reward import init_reward_params, ranking_loss, reward_pair_logits
    from scalingar_jax.world.vocab import tokenize

    spec = _spec(args)
    v2 = spec.version != 1
    cfg = default_reward_config(spec)
    steps, B = args.reward_steps, args.reward_batch
    run = Run(run_name("reward", spec), args, steps)
    run.log(f"config {cfg}")
    if v2:
        recs, imgs, dets = render_pool(args.reward_data, args.seed + 21, spec)
    else:
        recs, imgs = render_data(args.reward_data, args.seed + 21)
    vq = None
    recon = None
    if (Path(args.out) / "vq" / "config.json").is_file():
        from scalingar_jax.vq import reconstruct
        from scalingar_jax.world.models import check_world_version

        check_world_version(Path(args.out) / "vq", spec.version)
        vq = load_model(Path(args.out) / "vq", expect_kind="vq")
        recon = np.concatenate([to_uint8(reconstruct(vq[0], vq[1], jnp.asarray(to_float(imgs[i:i + 100]))))
                                for i in range(0, len(imgs), 100)])
        run.log("VQ reconstructions of the training images are used as augmentation")
    if v2:
        from scalingar_jax.world.scenes import training_prompt_sampler_v2

        pools = training_prompt_sampler_v2().pools
    else:
        pools = default_sampler().pools
    pool = {r["prompt"]: r for g in pools for grp in g for r in grp}
    run.log(f"rendered {len(recs)} images; {len(pool)} training prompts for hard image negatives")
    params = init_reward_params(cfg, jax.random.key(args.seed + 3))
    prior_steps, previous_runs = 0, []
    if args.reward_init:  # continue training (or, with --reward-steps 0, only re-evaluate)
        params, cfg0 = load_model(args.reward_init, expect_kind="reward")
        if cfg0 != cfg:
            raise ValueError(f"--reward-init {args.reward_init} holds {cfg0}, expected {cfg}")
        prior_steps, previous_runs = saved_steps(args.reward_init), run.previous_runs()
        run.log(f"continuing from {args.reward_init} after {prior_steps} steps")
    opt = make_optimizer(args.reward_lr, steps, args.warmup, weight_decay=0.01)
    opt_state = opt.init(params)

    n_random = 6

    @jax.jit
    def step_fn_v2(params, opt_state, x, ids, mask, pairs, y):
        def loss_fn(p):
            logit = reward_pair_logits(p, cfg, x, ids, mask, pairs).reshape(y.shape)
            return ranking_loss(logit, y)

        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, {"loss": loss, "pair_acc": m["pair_acc"]}

    @jax.jit
    def step_fn(params, opt_state, x, ids, mask, pairs, y):
        def loss_fn(p):
            logit = reward_pair_logits(p, cfg, x, ids, mask, pairs)
            bce = optax.sigmoid_binary_cross_entropy(logit, y)
            # Balanced BCE (positives are 1 in 2 + n_random) plus an InfoNCE term per image
            # over its candidate prompts (the own prompt first; same-string duplicates masked).
            pos = (bce * y).sum() / jnp.maximum(y.sum(), 1.0) + (bce * (1 - y)).sum() / jnp.maximum((1 - y).sum(), 1.0)
            cand = logit.reshape(-1, 2 + n_random)
            dup = y.reshape(-1, 2 + n_random).at[:, 0].set(0.0) > 0
            nce = -jax.nn.log_softmax(jnp.where(dup, -jnp.inf, cand), axis=-1)[:, 0].mean()
            return pos + nce, ((logit > 0) == (y > 0.5)).mean()

        (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, {"loss": loss, "acc": acc}

    rng = np.random.default_rng(args.seed + 4)

    def batch(step):
        if v2:
            x, prompts, pairs, y = reward_batch_v2(recs, imgs, dets, recon, np.random.default_rng([args.seed + 4, step]),
                                                   B, args.reward_candidates, pool, spec)
        else:
            x, prompts, pairs, y = _reward_batch(recs, imgs, recon, rng, B, pool, n_random)
        ids, mask = tokenize(prompts, cfg.max_len)
        return jnp.asarray(x), jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pairs), jnp.asarray(y)

    t0 = time.time()
    params, opt_state, start, done, step_time = train_loop(run, args, "reward", step_fn_v2 if v2 else step_fn,
                                                           params, opt_state, batch, steps)
    train_time = time.time() - t0
    out = Path(args.out) / "reward"
    meta = {"steps": prior_steps + done, "seed": args.seed, **world_meta(spec)}
    if not _finished(run, args, done, steps, lambda: save_model(out, params, cfg, kind="reward", meta=meta, overwrite=True),
                     step_time_s=step_time, params=param_count(params), config=_cfg_dict(cfg)):
        return params
    if done or not args.reward_init:
        save_model(out, params, cfg, kind="reward", meta=meta, overwrite=True)
    run.log("evaluating agreement with the judge")
    ev = reward_eval(params, cfg, args, vq)
    run.log(f"eval {json.dumps(ev)}")
    run.finish(config=_cfg_dict(cfg), steps=done, total_steps=prior_steps + done, previous_runs=previous_runs,
               batch=B * args.reward_candidates if v2 else 2 * B,
               pairs_per_step=B * args.reward_candidates if v2 else 2 * B * (2 + n_random),
               objective="within-prompt ranking (reward.ranking_loss)" if v2 else "balanced BCE + InfoNCE over prompts",
               lr=args.reward_lr, train_time_s=round(train_time, 1), step_time_s=step_time, resumed_from_step=start,
               params=param_count(params), checkpoint=str(out), checkpoint_mb=round(dir_size_mb(out), 2),
               judge_agreement=ev)
    return params


# --------------------------------------------------------------------------------------------
# All of a command's runs
# --------------------------------------------------------------------------------------------


def train(args) -> None:
    """Trains `args.model` (vq, gpt, reward or all, in that order) with the settings of
    `scalingar train-world` (`cli.train_world.parse_args`: `args.spec`, `args.out`, ...) and
    writes the bundle manifest once vq/, gpt/ and text/ are all under `args.out`."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.model in ("vq", "all"):
        train_vq(args)
    if args.model in ("gpt", "all"):
        train_gpt(args)
    if args.model in ("reward", "all"):
        train_reward(args)
    if all((Path(args.out) / part / "config.json").is_file() for part in ("vq", "gpt", "text")):
        from scalingar_jax.world.pipeline import write_world_manifest

        write_world_manifest(args.out)  # the bundle manifest (keeps an existing one's defaults)
