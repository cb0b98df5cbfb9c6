"""`scalingar generate`: a prompt, class ids or a GenEval prompt file through a test-time scaling
strategy. The parser imports nothing heavy; `run` imports the pipeline when the command runs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from scalingar_jax.errors import Interrupted, UserError, describe_error

# Choices the parser offers without importing the library (tests/test_cli_parser.py pins them to
# `scaling.config.ABLATIONS`, `scaling.loop.BUCKETS` and `scaling.options.STRATEGIES`).
ABLATIONS = ("full", "no_conditional", "no_worst_block", "no_token_level", "termination_only", "scheduler_only")
BUCKETS = ("pow2", "fine")
STRATEGIES = ("scalingar", "plain", "confidence_only", "best_of_n", "importance_sampling")


def add_parser(sub) -> None:
    """The `generate` subcommand."""
    g = sub.add_parser("generate", help="generate images for a prompt (or a GenEval prompt file)",
                       description="Generate with a test-time scaling strategy. Writes selected.png, candidates.png "
                                   "(pruned candidates outlined in red with their pruning step and their "
                                   "ungenerated tokens grey, the winner in green), confidence.png (C per candidate, threshold, guidance scale), "
                                   "entropy.png (token-entropy heat map of the winner), tokens.npy (every candidate's "
                                   "image tokens, int32 (N, T), -1 where a pruned candidate never generated one) and "
                                   "result.json (winner, tokens, compile and run seconds apart, every candidate's "
                                   "score: its reward for best_of_n and importance_sampling). Progress goes to stderr: "
                                   "a \"compiling\" line, then on a terminal a bar over token steps (--prompts: a "
                                   "bar over prompt folders with ETA, images/s and the tokens termination saved). A "
                                   "class-conditional (c2i) bundle takes --class-ids instead of a "
                                   "prompt.")
    g.add_argument("prompt", nargs="*", help="the prompt, e.g. \"a photo of a red circle left of a blue square\"")
    g.add_argument("--prompts", default=None, help="a GenEval-schema .jsonl prompt file (e.g. GenEval's "
                                                   "evaluation_metadata.jsonl): writes GenEval's folder layout "
                                                   "(<out>/<00000>/metadata.jsonl, grid.png, samples/0000.png); a "
                                                   "rerun with the same options resumes")
    g.add_argument("--class-ids", nargs="+", default=None, metavar="ID",
                   help="class-conditional (c2i) bundles: generate for these class ids (e.g. 207 360 387, ImageNet "
                        "classes for LlamaGen's c2i models), one output folder <out>/<i:05d> per id, each with what a "
                        "prompt run writes")
    g.add_argument("--class-ids-file", default=None, metavar="F",
                   help="like --class-ids, the ids read from a text file (one per line or whitespace separated)")
    g.add_argument("--images-per-prompt", type=int, default=None, metavar="K",
                   help="with --prompts: images per prompt, each an independent run of the strategy (default 4, "
                        "GenEval's)")
    g.add_argument("--skip-unsupported", action="store_true",
                   help="with --prompts: skip (and count) records outside the model's vocabulary instead of stopping")
    g.add_argument("--overwrite", action="store_true",
                   help="with --prompts: discard an earlier run in --out (by default a run with the same options "
                        "is resumed and one with other options refused)")
    g.add_argument("--process-index", type=int, default=None, metavar="I",
                   help="with --prompts: this host's index in a split run (share I of --process-count contiguous "
                        "blocks of prompts, into its own --out part); join the parts with `scalingar merge`")
    g.add_argument("--process-count", type=int, default=None, metavar="K", help="hosts of a split run")
    g.add_argument("--strategy", default="scalingar", choices=STRATEGIES,
                   help="test-time scaling strategy (default: scalingar)")
    g.add_argument("-n", "--num-candidates", dest="n", type=int, default=8, help="candidates per prompt N (default 8)")
    g.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    g.add_argument("--cfg", type=float, default=None, help="default CFG scale s_base (default: the checkpoint's)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: checkpoint's)")
    g.add_argument("--top-k", type=int, default=None, help="top-k filter, 0 = off (default: checkpoint's)")
    g.add_argument("--top-p", type=float, default=None, help="top-p filter, 1 = off (default: checkpoint's)")
    g.add_argument("--ablation", default=None, choices=ABLATIONS,
                   help="ScalingAR ablation switch set (paper Tables 2 and 4)")
    g.add_argument("--no-compaction", action="store_true",
                   help="keep pruned rows in the batch (masking only) instead of compacting alive rows")
    g.add_argument("--buckets", default="pow2", choices=BUCKETS,
                   help="pool sizes compaction shrinks to: pow2 = 1, 2, 4, 8, ... (default); fine adds 3, 6, "
                        "12, ... (less padding, twice the compiled sizes). The same tokens and winners either way unless "
                        "a float rounding flips a near-tied draw (README, Exactness)")
    g.add_argument("--mesh", default=None, metavar="PxC",
                   help="shard prompts x candidates over local devices with shard_map, e.g. 2x4 (default: one "
                        "device); simulate CPU devices with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    g.add_argument("--out", default="out", help="output folder (created; default ./out)")
    g.add_argument("--checkpoint", default=None,
                   help="model bundle folder, with its bundle.json (default: the embedded checkpoints/shapes, "
                        "or $SCALINGAR_CHECKPOINT)")
    g.add_argument("--reward", default=None, metavar="SPEC",
                   help="the reward of best_of_n and importance_sampling, in place of the bundle's: clipscore:DIR "
                        "(CLIPScore, 2.5 * max(cos, 0), with the Hugging Face CLIP folder DIR) or module:function "
                        "(any importable fn(images uint8 (B, H, W, 3), prompts) -> scores (B,), higher = better; "
                        "README, Rewards). Refused with the other strategies, which use no reward")
    g.add_argument("--scale", type=int, default=4, help="upscaling factor of selected.png (default 4)")
    g.add_argument("--batch", type=int, default=16,
                   help="with --prompts: generation runs per call (prompts x images per prompt, at least one "
                        "prompt's); with --class-ids: ids per call (default 16)")
    g.add_argument("--limit", type=int, default=0, help="with --prompts: only the first LIMIT prompts (0: all)")
    g.add_argument("--pool", type=int, default=None, metavar="ROWS",
                   help="with --prompts: continuous batching through a pool of ROWS candidate rows (2 x ROWS model "
                        "rows): each call's prompts enter as pruned or finished rows free up (same images per "
                        "prompt); give a --batch of many prompts so the pool stays full; with --mesh every "
                        "device keeps its own pool of ROWS rows (a mesh without a model axis)")
    g.set_defaults(fn=run)


def _progress(total: int, description: str, *columns):
    """A rich progress bar on stderr (drawn on a terminal, or with SCALINGAR_PROGRESS=1); returns
    (bar: a context manager, update(k, **fields) callback). `columns`: rich columns after the
    bar, e.g. TextColumn("{task.fields[rate]}") with `rate` passed to update."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    shown = sys.stderr.isatty() or os.environ.get("SCALINGAR_PROGRESS") == "1"
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), *columns,
                   console=Console(file=sys.stderr), transient=False, disable=not shown)
    task = bar.add_task(description, total=total)
    return bar, lambda k, **fields: bar.update(task, completed=min(int(k), total), **fields)


# Bounds on generate's numeric options: far above real use, low enough to fail fast.
LIMITS = {"n": (1, 1024), "seed": (0, 2**32 - 1), "batch": (1, 1024), "scale": (1, 16), "limit": (0, 10**7)}
GENERATE_FILES = {"selected.png", "candidates.png", "confidence.png", "entropy.png", "result.json", "tokens.npy"}
REWARD_STRATEGIES = ("best_of_n", "importance_sampling")  # the strategies that use a reward (--reward)


def _check_generate_args(args) -> None:
    """Every option of `generate` that needs no checkpoint, before anything is loaded or made."""
    flags = {"n": "-n/--num-candidates", "seed": "--seed", "batch": "--batch", "scale": "--scale",
             "limit": "--limit"}
    for name, (lo, hi) in LIMITS.items():
        value = getattr(args, name)
        if not lo <= value <= hi:
            bound = f"must be >= {lo}" if value < lo else f"must be <= {hi}"
            raise UserError(f"{flags[name]} {bound}, got {value}")
    for name in ("cfg", "temperature", "top_p"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be finite, got {value}")
    given = [name for name, on in (("a prompt", bool(args.prompt)), ("--prompts FILE", args.prompts is not None),
                                   ("--class-ids", args.class_ids is not None),
                                   ("--class-ids-file", args.class_ids_file is not None)) if on]
    if not given:
        raise UserError("give a prompt (scalingar generate \"a photo of a red circle\") or --prompts FILE; for a "
                        "class-conditional bundle --class-ids ID [ID ...] or --class-ids-file F")
    if len(given) > 1:
        raise UserError(f"give one of a prompt, --prompts FILE, --class-ids, --class-ids-file; got "
                        f"{' and '.join(given)}")
    if args.reward is not None and args.strategy not in REWARD_STRATEGIES:
        raise UserError(f"--reward applies to {' and '.join(REWARD_STRATEGIES)}; strategy {args.strategy!r} "
                        "uses no reward")


def _check_out(path: str) -> Path:
    """The --out folder, checked but not created: it is written as a whole at the end (a temp
    folder renamed into place), so it must be a folder that only holds earlier outputs."""
    from scalingar_jax.atomic import recover

    out = Path(path).absolute()
    recover(out)  # a killed earlier run: its temp folder goes, an old version set aside comes back
    anc = out
    while not anc.exists():
        anc = anc.parent
    if anc != out or not out.is_dir():
        if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
            raise UserError(f"cannot create output folder {str(out)!r}: {str(anc)!r} is not a writable folder")
        return out
    foreign = sorted(e for e in os.listdir(out) if e not in GENERATE_FILES and not (len(e) == 5 and e.isdigit()))
    if foreign:
        raise UserError(f"output folder {str(out)!r} holds files generate did not write ({', '.join(map(repr, foreign[:5]))}); "
                        "it is replaced as a whole, so choose a new or empty folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder {str(out)!r} cannot be replaced: its parent is not writable")
    return out


# generate's flags by the SamplingConfig field they set
SAMPLING_FLAGS = {"cfg_scale": "--cfg", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}


def flag_message(message: str, flags: dict[str, str]) -> str:
    """A config validation message with the field a flag set named by the flag: 'SamplingConfig.top_k
    must be ...' -> '--top-k must be ...'; a message about no flag's field is returned as it is."""
    import re

    for field, flag in flags.items():
        named = re.compile(rf"(\b[A-Z]\w*\.)?\b{field}\b")
        if named.search(message):
            return named.sub(flag, message)
    return message


def sampling_scaling(args, pipe):
    """(SamplingConfig, ScalingARConfig) of the bundle with the flags --cfg, --temperature, --top-k,
    --top-p and --ablation applied; a UserError naming the flag of a bad value."""
    import dataclasses

    from scalingar_jax.scaling.config import ScalingARConfig

    sampling = pipe.sampling
    changes = {k: v for k, v in dict(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                                      top_p=args.top_p).items() if v is not None}
    try:
        sampling = dataclasses.replace(sampling, **changes).validate(pipe.gpt_cfg.vocab_size)
    except ValueError as e:
        raise UserError(flag_message(str(e), {f: SAMPLING_FLAGS[f] for f in changes})) from None
    scaling = pipe.scaling
    if args.ablation:
        base = ScalingARConfig.ablation(args.ablation)
        # keep the pipeline's tuned gate (Delta_rec etc.), switch the ablation flags
        flags = {k: getattr(base, k) for k in ("use_conditional", "use_worst_block", "use_token_level",
                                               "use_termination", "use_scheduler")}
        scaling = dataclasses.replace(scaling, **flags)
    return sampling, scaling


def _schedule(args, mesh, pool=None):
    """The run's `Schedule`: the mesh, and the batched loop's compaction or a pool of `pool` rows."""
    from scalingar_jax.scaling.options import Pool, Schedule

    if pool:
        return Schedule(mesh=mesh, pool=Pool(pool))
    return Schedule(mesh=mesh, compaction=False if args.no_compaction else args.buckets)


def _strategy(args, n, sampling, scaling):
    from scalingar_jax.scaling.options import Strategy

    return Strategy(args.strategy, n, sampling=sampling, scaling=scaling)


def _mesh(args):
    if not getattr(args, "mesh", None):
        return None
    from scalingar_jax.sharding import make_mesh, parse_mesh

    try:
        shape = parse_mesh(args.mesh)
        if len(shape) != 2:
            raise ValueError("the CLI takes PxC (prompts x candidates); model sharding is a library option")
        return make_mesh(*shape)
    except ValueError as e:
        raise UserError(f"--mesh {args.mesh}: {e}") from None


def _with_reward(args, pipe):
    """`pipe` with --reward's function in place of the bundle's reward; a UserError when a strategy
    that needs a reward has none."""
    if args.reward is not None and args.reward.startswith("clipscore:") and pipe.gpt_cfg.model_type == "c2i":
        raise UserError("--reward clipscore compares images with their prompt's text, and a class-conditional (c2i) "
                        "model has class ids, not text: use --reward module:function (it gets the ids as strings)")
    if args.reward is not None:
        import dataclasses

        from scalingar_jax.rewards import load_reward

        try:
            pipe = dataclasses.replace(pipe, reward=load_reward(args.reward))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(describe_error(e)) from None
    if args.strategy in REWARD_STRATEGIES and pipe.reward is None:
        raise UserError(f"strategy {args.strategy!r} needs a reward and this bundle has none: give --reward "
                        "clipscore:CLIP_DIR or --reward module:function")
    return pipe


def run(args) -> int:
    """Runs `scalingar generate`; 0 on success (UserError for bad input)."""
    from scalingar_jax.atomic import atomic_dir
    from scalingar_jax.pipeline import load_pipeline

    _check_generate_args(args)
    _check_prompt_file_args(args)
    prompt_file = _read_prompt_records(args) if args.prompts is not None else None  # before anything is loaded
    class_ids = _class_ids(args)
    out = _check_out(args.out) if args.prompts is None else None
    mesh = _mesh(args)
    gpt_cfg, vq_cfg = _bundle_configs(args.checkpoint)
    _check_conditioning(args, gpt_cfg, class_ids)  # before any weight is read
    _check_memory(args, gpt_cfg, vq_cfg, class_ids)
    try:
        pipe = load_pipeline(args.checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    _check_conditioning(args, pipe.gpt_cfg, class_ids)
    pipe = _with_reward(args, pipe)
    sampling, scaling = sampling_scaling(args, pipe)
    if args.prompts is not None:
        return _generate_prompt_file(args, pipe, prompt_file, sampling, scaling, mesh)
    if class_ids is not None:
        return _generate_class_ids(args, pipe, class_ids, sampling, scaling, mesh, out)

    prompt = " ".join(args.prompt).strip()
    if not prompt:
        raise UserError("the prompt is empty")
    try:
        conditioning = pipe.condition([prompt])  # vocabulary errors before any compile; encoded once
    except ValueError as e:
        raise UserError(str(e)) from None
    res, clock = _generate_shown(pipe, [prompt], _strategy(args, args.n, sampling, scaling), args.seed,
                                 _schedule(args, mesh), conditioning)
    with atomic_dir(out, overwrite=True) as tmp:  # all files appear together, or none
        files, summary = _write_generate_outputs(Path(tmp), args, pipe, res, prompt, sampling, scaling, clock=clock)
    files = {k: str(out / Path(v).name) for k, v in files.items()}
    print(f"winner #{summary['winner']}; tokens {summary['tokens_used']} of {summary['tokens_full']} "
          f"({100 * summary['tokens_used'] / summary['tokens_full']:.0f}%); compile {clock.compile:.1f} s, "
          f"run {clock.seconds:.1f} s")
    for k, v in files.items():
        print(f"  {k:10s} {v}")
    return 0


def _generate_shown(pipe, prompts, strategy, seed: int, schedule, conditioning=None, prompt_ids=None, label=""):
    """`pipeline.generate` with every candidate decoded, showing its work on stderr: a
    "compiling" line first, then a bar over token steps (the loop stops once per grid row to
    report: the same compiled loop and tokens; `label` ends the bar's description). Returns
    (GenerationOutput, timing.Clock: compile and run seconds apart)."""
    from rich.progress import TimeRemainingColumn

    from scalingar_jax.pipeline import generate
    from scalingar_jax.timing import Clock

    T, g = pipe.gpt_cfg.block_size, pipe.gpt_cfg.grid_size
    bar, update = _progress(T, f"{strategy.name} N={strategy.num_candidates} tokens{label}", TimeRemainingColumn())
    line = (f"scalingar: compiling the {strategy.name} token loop for {len(prompts)} prompt(s) x "
            f"{strategy.num_candidates} candidates, {T} tokens (once per shape), then decoding")
    with bar, Clock(on_compile=lambda: bar.console.print(line, markup=False, highlight=False, soft_wrap=True)) as clock:
        res = generate(pipe, prompts, strategy, seed=seed, schedule=schedule, decode_candidates=True,
                       on_progress=update, progress_every=g, conditioning=conditioning, prompt_ids=prompt_ids)
    return res, clock


def _class_ids(args) -> list[str] | None:
    """The class ids of --class-ids / --class-ids-file as decimal strings (a c2i bundle's
    prompts), or None; the file is read up to `llamagen.MAX_CLASS_IDS_BYTES`."""
    from scalingar_jax.llamagen import read_class_ids_file

    if args.class_ids_file is not None:
        try:
            return read_class_ids_file(args.class_ids_file)
        except FileNotFoundError:
            raise UserError(f"--class-ids-file {args.class_ids_file}: no such file") from None
        except (ValueError, OSError) as e:
            raise UserError(f"--class-ids-file: {e}") from None
    if args.class_ids is not None and len(args.class_ids) > LIMITS["limit"][1]:
        raise UserError(f"--class-ids: more than {LIMITS['limit'][1]} ids")
    return args.class_ids


# what `resources.run_memory` and `_check_conditioning` read of a generator's config
GENERATOR_FIELDS = ("model_type", "vocab_size", "grid_size", "block_size", "n_layer", "kv_heads", "head_dim",
                    "max_seq_len", "dtype")


def _bundle_configs(path):
    """(generator config, VQConfig) of a bundle's gpt and vq parts read from their config.json
    alone (the generator: any model family's config with the fields the checks before loading
    read, `GENERATOR_FIELDS`: a GPTConfig or a janus.JanusConfig); None for one that does not
    read (load_pipeline then reports it)."""
    from scalingar_jax.bundle import read_bundle
    from scalingar_jax.checkpoint import read_config

    try:
        bundle = read_bundle(path)
    except (OSError, ValueError):
        return None, None
    out = []
    for part in ("gpt", "vq"):
        try:
            kind, cfg, _ = read_config(bundle.part(part))
        except (OSError, ValueError, KeyError):
            kind = cfg = None
        ok = kind == "vq" if part == "vq" else all(hasattr(cfg, f) for f in GENERATOR_FIELDS)
        out.append(cfg if ok else None)
    return tuple(out)


def _check_memory(args, gpt_cfg, vq_cfg, class_ids) -> None:
    """Refuses, before any weight is read, a run whose largest generate call does not fit in
    memory (`resources.check_run_memory`; generate checks again once the models are loaded)."""
    from scalingar_jax.resources import ResourceError, check_run_memory

    if gpt_cfg is None or vq_cfg is None:
        return
    n = 1 if args.strategy == "plain" and args.prompts is not None else args.n
    if args.prompts is not None:  # rows per call: whole prompts' K images (geneval.run_prompts)
        prompts = max(1, args.batch // args.images_per_prompt) * args.images_per_prompt
    else:
        prompts = 1 if class_ids is None else min(args.batch, len(class_ids))
    try:
        check_run_memory(gpt_cfg, vq_cfg, prompts=prompts, candidates=n, pool=args.pool,
                         decode_candidates=args.prompts is None,
                         what=f"-n {args.n} for {prompts} prompt row(s) per call")
    except ResourceError as e:
        raise UserError(str(e)) from None


def _check_conditioning(args, gpt_cfg, class_ids) -> None:
    """Class ids go to class-conditional (c2i) models, text to text-to-image (t2i) ones; ids
    must be in [0, num_classes). Nothing to check without a config (gpt_cfg None)."""
    if gpt_cfg is None:
        return
    where = "the bundle" + (f" {args.checkpoint}" if args.checkpoint else "")
    if gpt_cfg.model_type == "c2i":
        if args.prompts is not None:
            raise UserError(f"--prompts runs text prompts (GenEval) but {where} is class-conditional (c2i); "
                            "generate from class ids with --class-ids ID [ID ...] or --class-ids-file F")
        if args.prompt:
            raise UserError(f"{where} is class-conditional (c2i) and takes class ids, not text: "
                            "use --class-ids ID [ID ...] or --class-ids-file F")
        from scalingar_jax.llamagen import parse_class_ids

        try:
            given = "--class-ids" if args.class_ids_file is None else f"--class-ids-file {args.class_ids_file}"
            parse_class_ids(class_ids, gpt_cfg.num_classes, where=f"{given}: class id")
        except ValueError as e:
            raise UserError(str(e)) from None
    elif class_ids is not None:
        raise UserError(f"--class-ids and --class-ids-file apply to class-conditional (c2i) bundles; {where} is "
                        "text-to-image (t2i): give a text prompt or --prompts FILE")


def _generate_class_ids(args, pipe, class_ids, sampling, scaling, mesh, out: Path) -> int:
    """c2i: one output folder <out>/<i:05d> per class id (the i-th given), each with what a
    prompt run writes; ids run --batch at a time, prompt id = i (the batch changes results only
    by float rounding: README, Exactness)."""
    import numpy as np

    from scalingar_jax.atomic import atomic_dir

    lines = []
    with atomic_dir(out, overwrite=True) as tmp:  # all folders appear together, or none
        for start in range(0, len(class_ids), args.batch):
            chunk = class_ids[start : start + args.batch]
            res, clock = _generate_shown(pipe, chunk, _strategy(args, args.n, sampling, scaling), args.seed,
                                         _schedule(args, mesh),
                                         prompt_ids=np.arange(start, start + len(chunk), dtype=np.int32),
                                         label=f", class ids {start + 1}-{start + len(chunk)} of {len(class_ids)}")
            for j, class_id in enumerate(chunk):
                name = f"{start + j:05d}"
                (Path(tmp) / name).mkdir()
                _, summary = _write_generate_outputs(Path(tmp) / name, args, pipe, res, class_id, sampling, scaling,
                                                     index=j, final=out / name, plot_note=not lines, clock=clock)
                lines.append(f"class {class_id}: winner #{summary['winner']}, tokens {summary['tokens_used']} of "
                             f"{summary['tokens_full']} -> {out / name}")
    print("\n".join(lines))
    return 0


def _write_generate_outputs(out: Path, args, pipe, res, prompt, sampling, scaling, *, clock, index: int = 0,
                            final: Path | None = None, plot_note: bool = True):
    """Writes selected.png, candidates.png, the plots, tokens.npy (int32 (N, T), -1 where a
    pruned candidate never generated a token) and result.json (with the call's compile and run
    seconds apart, from `clock`, and every candidate's score: its reward for best_of_n and
    importance_sampling) of prompt `index` of `res` into `out` (the temp folder; `final`: where
    it will be, default --out); returns ({name: path}, summary)."""
    import numpy as np

    from scalingar_jax.images import labelled_grid, upscale_nearest, write_png

    T = pipe.gpt_cfg.block_size
    final = Path(args.out).absolute() if final is None else final
    r = res.result
    p = index
    winner = int(r.winner[p])
    term = np.asarray(r.terminated_at[p])
    files = {}
    files["selected"] = write_png(out / "selected.png", upscale_nearest(res.images[p], args.scale))
    files["tokens"] = out / "tokens.npy"
    np.save(files["tokens"], np.asarray(r.all_tokens[p], np.int32))
    labels, colors = [], []
    for n in range(args.n):
        if n == winner:
            labels.append(f"#{n} winner")
            colors.append("green")
        elif term[n] >= 0:
            labels.append(f"#{n} pruned@{term[n]}")
            colors.append("red")
        else:
            labels.append(f"#{n}")
            colors.append(None)
    files["candidates"] = write_png(out / "candidates.png", labelled_grid(res.candidates[p], labels=labels,
                                                                          border_colors=colors))
    summary = {
        "prompt": prompt, "strategy": args.strategy, "num_candidates": args.n, "seed": args.seed,
        "winner": winner, "tokens_used": int(r.tokens_used[p]), "tokens_full": args.n * T,
        "terminated_at": term.tolist(), "seconds": res.seconds, "compile_seconds": round(clock.compile, 3),
        "run_seconds": round(clock.seconds, 3), "checkpoint": pipe.name, "reward": args.reward,
        "sampling": vars(sampling) if hasattr(sampling, "__dict__") else str(sampling),
    }
    # what selection ranked, per candidate (None: pruned); a reward strategy's rewards by that name
    scores = [float(x) if np.isfinite(x) else None for x in np.asarray(r.score[p], np.float64)]
    summary["candidate_rewards" if args.strategy in REWARD_STRATEGIES else "candidate_scores"] = scores
    try:
        from scalingar_jax import viz

        traj = {k: np.asarray(v)[:, p] for k, v in r.traj.items()}
        traj["warmup_steps"] = scaling.warmup_steps(T)
        traj["winner"] = winner
        traj["guidance"] = traj.pop("scale")
        # theta is undefined (stored as 0) before the end of warm-up, and for fixed-CFG strategies
        traj["threshold"] = np.where((np.arange(T) >= traj["warmup_steps"]) & (args.strategy == "scalingar"),
                                     traj.pop("theta"), np.nan)
        steps = np.arange(T)[:, None]
        gone = (term[None, :] >= 0) & (steps > term[None, :])  # nothing is recorded after pruning
        for name in ("C", "guidance"):
            traj[name] = np.where(gone, np.nan, traj[name])
        files["confidence"] = viz.plot_confidence_trajectories(
            out / "confidence.png", traj, title=f"{args.strategy}: {prompt}")
        g = pipe.gpt_cfg.grid_size
        files["entropy"] = viz.plot_entropy_heatmap(
            out / "entropy.png", np.asarray(r.entropy[p, winner]).reshape(g, g), image=res.images[p],
            title=f"token entropy of the winner (#{winner})")
    except ImportError as e:
        if plot_note:  # once per command, not once per output folder
            print(f"note: plots skipped ({e})", file=sys.stderr)
    summary["files"] = {k: str(final / Path(v).name) for k, v in files.items()}
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    return files, summary


def _check_prompt_file_args(args) -> None:
    """The --prompts mode's own options (GenEval runs), before anything is loaded or made."""
    from scalingar_jax.geneval import DEFAULT_IMAGES_PER_PROMPT, MAX_IMAGES_PER_PROMPT, check_run_folder

    given = [flag for flag, value in (("--images-per-prompt", args.images_per_prompt),
                                      ("--process-index", args.process_index), ("--process-count", args.process_count))
             if value is not None] + [flag for flag, on in (("--skip-unsupported", args.skip_unsupported),
                                                            ("--overwrite", args.overwrite), ("--limit", args.limit))
                                      if on]
    if args.pool is not None:
        given.append("--pool")
    if args.prompts is None:
        if given:
            raise UserError(f"{given[0]} applies to --prompts FILE runs only")
        return
    if args.pool is not None:
        n = 1 if args.strategy == "plain" else args.n
        if args.pool < n:
            raise UserError(f"--pool {args.pool} holds fewer candidate rows than one prompt's N = {n}")
        if args.strategy == "importance_sampling":
            raise UserError("--pool runs plain, confidence_only, scalingar and best_of_n (not importance_sampling)")
    if args.images_per_prompt is None:
        args.images_per_prompt = DEFAULT_IMAGES_PER_PROMPT
    if not 1 <= args.images_per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise UserError(f"--images-per-prompt must be in [1, {MAX_IMAGES_PER_PROMPT}], got {args.images_per_prompt}")
    if (args.process_index is None) != (args.process_count is None):
        raise UserError("give --process-index and --process-count together")
    if args.process_count is None:
        args.process_index, args.process_count = 0, 1
    if not 1 <= args.process_count <= 100000 or not 0 <= args.process_index < args.process_count:
        raise UserError(f"--process-index must be in [0, --process-count) and --process-count >= 1, "
                        f"got {args.process_index} and {args.process_count}")
    try:
        check_run_folder(args.out)
    except ValueError as e:
        raise UserError(str(e)) from None


def _read_prompt_records(args) -> tuple[list[tuple[int, dict]], str]:
    """(the (line number, record) pairs of --prompts FILE, read within bounds and checked against
    GenEval's schema (`geneval.read_jsonl_records`), the file's SHA-256)."""
    from scalingar_jax import geneval

    try:
        return geneval.read_jsonl_records(args.prompts), geneval.file_sha256(args.prompts)
    except (ValueError, OSError) as e:
        raise UserError(f"--prompts: {e}") from None


def _generate_prompt_file(args, pipe, prompt_file, sampling, scaling, mesh) -> int:
    """GenEval run: this process's share of the prompt file into GenEval's layout, resumable."""
    import dataclasses

    from scalingar_jax import geneval
    from scalingar_jax.bundle import read_bundle
    from scalingar_jax.sharding import split_prompts

    records, prompts_sha = prompt_file
    try:
        records, skipped = geneval.select_records(records, args.prompts, check=pipe.check_record,
                                                  skip_unsupported=args.skip_unsupported)
    except ValueError as e:
        raise UserError(str(e)) from None
    if skipped:
        print(f"skipped {len(skipped)} record(s) this model does not support, e.g. {skipped[0]}", file=sys.stderr)
    if args.limit:
        records = records[: args.limit]
    if not records:
        raise UserError(f"{args.prompts}: no prompt record to generate")
    K = args.images_per_prompt
    n = 1 if args.strategy == "plain" else args.n  # plain keeps candidate 0 only: same key with N = 1
    settings = {"prompts_sha256": prompts_sha, "checkpoint": str(read_bundle(args.checkpoint).root.resolve()),
                "strategy": args.strategy, "num_candidates": n, "seed": args.seed, "images_per_prompt": K,
                "sampling": dataclasses.asdict(sampling), "scaling": dataclasses.asdict(scaling),
                "limit": args.limit, "skip_unsupported": args.skip_unsupported}
    if args.reward is not None:
        settings["reward"] = args.reward
    share = split_prompts(records, args.process_index, args.process_count)
    share = [pair for _, pair in share]
    out = Path(args.out).absolute()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(geneval.run_lock(out))  # one run at a time writes a folder
            todo = geneval.prepare_run(out, settings, share, selected=len(records), images_per_prompt=K,
                                       process_index=args.process_index, process_count=args.process_count,
                                       overwrite=args.overwrite)
        except ValueError as e:
            raise UserError(str(e)) from None
        _run_prompt_folders(args, pipe, sampling, scaling, mesh, out, share, todo, n, K)
    return 0


def _run_prompt_folders(args, pipe, sampling, scaling, mesh, out: Path, share, todo, n: int, K: int) -> None:
    """Generates the prompt folders `todo` of a locked, prepared run; Ctrl-C is `Interrupted`,
    saying how many folders are done."""
    import numpy as np

    from scalingar_jax import geneval
    from scalingar_jax.pipeline import generate

    T = pipe.gpt_cfg.block_size
    tally = {"folders": 0, "images": 0, "tokens_used": 0, "tokens_full": 0}

    def generate_fn(prompts, prompt_ids):
        unique = list(dict.fromkeys(prompts))
        rows = np.asarray([unique.index(p) for p in prompts])
        cond, mask = pipe.condition(unique)  # the conditioner runs once per distinct prompt
        conditioning = (np.asarray(cond)[rows], None if mask is None else np.asarray(mask)[rows])
        res = generate(pipe, prompts, _strategy(args, n, sampling, scaling), seed=args.seed,
                       schedule=_schedule(args, mesh, args.pool), prompt_ids=prompt_ids, conditioning=conditioning)
        tally["images"] += len(prompts)
        tally["tokens_used"] += int(np.sum(np.asarray(res.result.tokens_used)))
        tally["tokens_full"] += len(prompts) * n * T
        return res.images

    before = len(share) - len(todo)
    try:
        print(f"{before} of {len(share)} prompt folders already done in {out}", file=sys.stderr)
        from rich.progress import TextColumn, TimeRemainingColumn

        bar, update = _progress(len(todo), f"{args.strategy} N={n} K={K} prompts", TimeRemainingColumn(),
                                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[saved]}"))
        update(0, rate="", saved="")
        t0 = time.perf_counter()

        def on_folder(k: int) -> None:
            tally["folders"] = k
            update(k, **prompt_bar_fields(tally, time.perf_counter() - t0))

        with bar:
            geneval.run_prompts(out, todo, generate_fn, images_per_prompt=K, batch=args.batch, on_folder=on_folder)
    except KeyboardInterrupt:
        done = before + tally["folders"]
        raise Interrupted(f"interrupted: {done} of {len(share)} prompt folders done in {out}; rerun "
                          "the same command to resume") from None
    folders = "prompt folder" if len(todo) == 1 else "prompt folders"
    fields = prompt_bar_fields(tally, time.perf_counter() - t0)
    print(f"wrote {len(todo)} {folders} ({len(share)} in all, {K} images each) under {out}; {fields['rate']}, "
          f"{fields['saved']}")


def prompt_bar_fields(tally: dict, seconds: float) -> dict[str, str]:
    """The --prompts bar's fields: images per second so far and the tokens ScalingAR's
    termination saved (of N * T per image)."""
    full = tally["tokens_full"]
    saved = full - tally["tokens_used"]
    return {"rate": f"{tally['images'] / max(seconds, 1e-9):.2f} images/s",
            "saved": f"tokens saved {saved} ({100 * saved / full:.0f}%)" if full else "tokens saved 0"}

