"""The `scalingar` command: generate, merge, convert, evaluate, bench, train.

  scalingar generate "a photo of a red circle left of a blue square"
  scalingar generate --prompts prompts.jsonl --out runs/geneval --strategy scalingar -n 8
  scalingar merge runs/part0 runs/part1 --out runs/geneval
  scalingar convert c2i_B_256.pt out/c2i_B_256 --verify
  scalingar bundle models/c2i_L_256 --gpt c2i_L_256.pt --vq vq_ds16_c2i.pt
  scalingar generate --checkpoint models/c2i_L_256 --class-ids 207 360 387
  scalingar evaluate runs/geneval
  scalingar bench decode -- --presets GPT-B --batch 16
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository checkout, if any: only bench/reproduce use it


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was done by then: printed as one line, exit status 130."""


def _progress(total: int, description: str):
    """A rich progress bar over token steps; returns (context manager, update(k) callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=False, disable=not sys.stderr.isatty() and os.environ.get("SCALINGAR_PROGRESS") != "1")
    task = bar.add_task(description, total=total)
    return bar, lambda k: bar.update(task, completed=min(int(k), total))


# Bounds on generate's numeric options: far above real use, low enough to fail fast.
LIMITS = {"n": (1, 1024), "seed": (0, 2**32 - 1), "batch": (1, 1024), "scale": (1, 16), "limit": (0, 10**7)}
GENERATE_FILES = {"selected.png", "candidates.png", "confidence.png", "entropy.png", "result.json", "tokens.npy"}
MAX_IMAGE_PIXELS = 4096 * 4096  # images `evaluate` decodes
REWARD_STRATEGIES = ("best_of_n", "importance_sampling")  # the strategies that use a reward (--reward)


def printable(msg: str, limit: int = 2000) -> str:
    """`msg` on one line with every control or non-printable character escaped (as `repr`
    does), so that names from a hostile file cannot drive the terminal; cut at `limit`."""
    msg = str(msg)
    cut = len(msg) > limit
    msg = msg[:limit].replace("\n  ", "; ").replace("\n", " ")  # cut first: a huge message costs nothing
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    return out[: limit - 3] + "..." if cut or len(out) > limit else out


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


def _sampling_scaling(args, pipe):
    import dataclasses

    from scalingar_jax.scaling.config import ScalingARConfig

    sampling = pipe.sampling
    changes = {k: v for k, v in dict(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                                      top_p=args.top_p).items() if v is not None}
    sampling = dataclasses.replace(sampling, **changes)
    try:
        sampling.validate(pipe.gpt_cfg.vocab_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    scaling = pipe.scaling
    if args.ablation:
        base = ScalingARConfig.ablation(args.ablation)
        # keep the pipeline's tuned gate (Delta_rec etc.), switch the ablation flags
        flags = {k: getattr(base, k) for k in ("use_conditional", "use_worst_block", "use_token_level",
                                               "use_termination", "use_scheduler")}
        scaling = dataclasses.replace(scaling, **flags)
    return sampling, scaling


def _compaction(args):
    return False if args.no_compaction else args.buckets


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
            raise UserError(_describe_error(e)) from None
    if args.strategy in REWARD_STRATEGIES and pipe.reward is None:
        raise UserError(f"strategy {args.strategy!r} needs a reward and this bundle has none: give --reward "
                        "clipscore:CLIP_DIR or --reward module:function")
    return pipe


def cmd_generate(args) -> int:
    from scalingar_jax.atomic import atomic_dir
    from scalingar_jax.pipeline import generate, load_pipeline

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
    sampling, scaling = _sampling_scaling(args, pipe)
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
    T = pipe.gpt_cfg.block_size
    bar, update = _progress(T, f"{args.strategy} N={args.n}")
    with bar:
        res = generate(pipe, [prompt], strategy=args.strategy, num_candidates=args.n, seed=args.seed,
                       sampling=sampling, scaling=scaling, compaction=_compaction(args),
                       decode_candidates=True, on_progress=update, mesh=mesh, conditioning=conditioning)
    with atomic_dir(out, overwrite=True) as tmp:  # all files appear together, or none
        files, summary = _write_generate_outputs(Path(tmp), args, pipe, res, prompt, sampling, scaling)
    files = {k: str(out / Path(v).name) for k, v in files.items()}
    print(f"winner #{summary['winner']}; tokens {summary['tokens_used']} of {summary['tokens_full']} "
          f"({100 * summary['tokens_used'] / summary['tokens_full']:.0f}%); {res.seconds:.1f} s")
    for k, v in files.items():
        print(f"  {k:10s} {v}")
    return 0


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


def _bundle_configs(path):
    """(GPTConfig, VQConfig) of a bundle's gpt and vq parts read from their config.json alone;
    None for one that does not read (load_pipeline then reports the problem)."""
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
        out.append(cfg if kind == part else None)
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
    from scalingar_jax.pipeline import generate

    bar, update = _progress(len(class_ids), f"{args.strategy} N={args.n}, {len(class_ids)} class ids")
    lines = []
    with bar, atomic_dir(out, overwrite=True) as tmp:  # all folders appear together, or none
        for start in range(0, len(class_ids), args.batch):
            chunk = class_ids[start : start + args.batch]
            res = generate(pipe, chunk, strategy=args.strategy, num_candidates=args.n, seed=args.seed,
                           sampling=sampling, scaling=scaling, compaction=_compaction(args),
                           prompt_ids=np.arange(start, start + len(chunk), dtype=np.int32),
                           decode_candidates=True, mesh=mesh)
            for j, class_id in enumerate(chunk):
                name = f"{start + j:05d}"
                (Path(tmp) / name).mkdir()
                _, summary = _write_generate_outputs(Path(tmp) / name, args, pipe, res, class_id, sampling, scaling,
                                                     index=j, final=out / name, plot_note=not lines)
                lines.append(f"class {class_id}: winner #{summary['winner']}, tokens {summary['tokens_used']} of "
                             f"{summary['tokens_full']} -> {out / name}")
            update(start + len(chunk))
    print("\n".join(lines))
    return 0


def _write_generate_outputs(out: Path, args, pipe, res, prompt, sampling, scaling, *, index: int = 0,
                            final: Path | None = None, plot_note: bool = True):
    """Writes selected.png, candidates.png, the plots, tokens.npy (int32 (N, T), -1 where a
    pruned candidate never generated a token) and result.json of prompt `index` of `res` into
    `out` (the temp folder; `final`: where it will be, default --out); returns ({name: path},
    summary)."""
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
        "terminated_at": term.tolist(), "seconds": res.seconds, "checkpoint": pipe.name, "reward": args.reward,
        "sampling": vars(sampling) if hasattr(sampling, "__dict__") else str(sampling),
    }
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

    def generate_fn(prompts, prompt_ids):
        unique = list(dict.fromkeys(prompts))
        rows = np.asarray([unique.index(p) for p in prompts])
        cond, mask = pipe.condition(unique)  # the conditioner runs once per distinct prompt
        conditioning = (np.asarray(cond)[rows], None if mask is None else np.asarray(mask)[rows])
        return generate(pipe, prompts, strategy=args.strategy, num_candidates=n, seed=args.seed, sampling=sampling,
                        scaling=scaling, prompt_ids=prompt_ids, compaction=_compaction(args), mesh=mesh,
                        conditioning=conditioning, pool=args.pool).images

    before = len(share) - len(todo)
    written = [0]
    try:
        print(f"{before} of {len(share)} prompt folders already done in {out}", file=sys.stderr)
        bar, update = _progress(len(todo), f"{args.strategy} N={n} K={K}")

        def on_folder(k: int) -> None:
            written[0] = k
            update(k)

        with bar:
            geneval.run_prompts(out, todo, generate_fn, images_per_prompt=K, batch=args.batch, on_folder=on_folder)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {before + written[0]} of {len(share)} prompt folders done in {out}; rerun "
                          "the same command to resume") from None
    folders = "prompt folder" if len(todo) == 1 else "prompt folders"
    print(f"wrote {len(todo)} {folders} ({len(share)} in all, {K} images each) under {out}")


def cmd_merge(args) -> int:
    from scalingar_jax.geneval import merge_runs

    try:
        merge_runs(args.parts, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"merged {len(args.parts)} parts into {Path(args.out).absolute()}")
    return 0


def png_size(path) -> tuple[int, int] | None:
    """(width, height) a PNG file declares in its IHDR chunk (its first 24 bytes), or None
    if the file does not start like a PNG. Reads nothing else; a FIFO or device is refused
    (ValueError), not read."""
    from scalingar_jax.inputs import open_regular

    with open_regular(path) as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _check_image_sizes(folder: str) -> None:
    """Refuses a GenEval folder whose PNGs declare more than MAX_IMAGE_PIXELS, before decoding."""
    for png in sorted(Path(folder).glob("*/samples/*.png")):
        try:
            size = png_size(png)
        except OSError:
            continue  # the evaluator reports unreadable files itself
        except ValueError as e:  # a FIFO or device named like a sample
            raise UserError(str(e)) from None
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise UserError(f"{str(png)!r} declares {size[0]} x {size[1]} pixels, more than the "
                            f"{MAX_IMAGE_PIXELS}-pixel limit for images to judge")


def _outside_the_world(folder) -> bool:
    """True when some prompt folder of the GenEval-layout `folder` holds a valid GenEval record
    that the shapes world does not accept (a real-model run, e.g. LlamaGen on GenEval's prompts)."""
    from scalingar_jax.geneval import read_folder_record
    from scalingar_jax.world.prompts import validate_record

    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if not name.isdigit():
            continue
        try:
            record = read_folder_record(os.path.join(folder, name))
            validate_record(record, world=False)
        except (OSError, ValueError):
            continue
        try:
            validate_record(record)
        except ValueError:
            return True
    return False


def cmd_evaluate(args) -> int:
    from scalingar_jax.world.geneval_io import evaluate_folder

    _check_image_sizes(args.folder)
    try:
        results, summary = evaluate_folder(args.folder)
    except ValueError as e:
        if _outside_the_world(args.folder):
            raise UserError(f"{args.folder} holds GenEval records outside the shapes world's vocabulary: `scalingar "
                            "evaluate` is the shapes world's judge; score a real model's run with GenEval's own "
                            "evaluate_images.py and summary_scores.py (README, section 'GenEval layout')") from None
        raise UserError(str(e)) from None
    print("| tag | accuracy | images |\n|---|---|---|")
    for tag, row in summary.get("per_tag", {}).items():
        acc = row["accuracy"] if isinstance(row, dict) else row
        cnt = row.get("count", "") if isinstance(row, dict) else ""
        print(f"| {tag} | {acc:.3f} | {cnt} |")
    print(f"| **overall** (mean over tags) | {summary['overall']:.3f} | {len(results)} |")
    if args.json:
        from scalingar_jax.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps({"summary": summary, "results": results}, indent=2, default=str))
    return 0


def cmd_convert(args) -> int:
    from scalingar_jax.convert.run import main as convert_main

    return convert_main(args.rest)


def cmd_bench(args) -> int:
    return _run_experiment_script(f"bench_{args.name}.py", args.rest, "bench_")


def cmd_reproduce(args) -> int:
    return _run_experiment_script("reproduce.py", [args.name, *args.rest], None)


def _experiments_dir(checkout: Path) -> Path:
    """`checkout/experiments`, whose scripts `bench` and `reproduce` run; a UserError when the
    package runs without its repository checkout (an installed wheel ships no experiments/)."""
    folder = checkout / "experiments"
    if not (folder.is_dir() and (checkout / "pyproject.toml").is_file()):
        raise UserError("`scalingar bench` and `scalingar reproduce` run the scripts in the repository's experiments/ "
                        "folder, which the installed package does not ship: run them from a checkout of the "
                        "repository (pip install -e . there)")
    return folder


def _run_experiment_script(name: str, rest: list[str], prefix: str | None) -> int:
    import runpy

    experiments = _experiments_dir(REPO)
    script = experiments / name
    if not script.is_file():
        if prefix is None:
            raise UserError(f"{script} not found in the repository checkout")
        available = sorted(p.stem[len(prefix):] for p in experiments.glob(f"{prefix}*.py"))
        raise UserError(f"unknown benchmark {name!r}; available: {', '.join(available)}")
    rest = list(rest)
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit status 2); subcommand parsers inherit it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see `{self.prog} --help`)\n")


BUNDLE_EPILOG = """\
examples:
  # LlamaGen t2i XL (512 px) with flan-t5-xl (a Hugging Face folder: config.json, model weights, spiece.model)
  scalingar bundle models/t2i_XL_512 --gpt t2i_XL_stage2_512.pt --vq vq_ds16_t2i.pt --t5 flan-t5-xl --dtype bfloat16
  scalingar generate --checkpoint models/t2i_XL_512 "a photo of a cat on a sofa"
  # LlamaGen c2i L (256 px): class ids instead of text
  scalingar bundle models/c2i_L_256 --gpt c2i_L_256.pt --vq vq_ds16_c2i.pt
  scalingar generate --checkpoint models/c2i_L_256 --class-ids 207 360 387

The folder holds gpt/, vq/ (as `scalingar convert` writes them), text/ (t2i: the Flax T5 encoder,
converted without torch, and its spiece.model) or features/ (t2i: precomputed features), and
bundle.json with LlamaGen's sampling defaults (t2i: cfg 7.5, top-k 1000; c2i: cfg 4.0, top-k 2000;
temperature 1, top-p 1; override with generate's --cfg, --top-k, ...) and the image size. A t2i
bundle with text/ tokenizes prompts with sentencepiece, an optional extra:
pip install 'scalingar-jax[t5]'. The parts are checked to fit (VQ codebook = GPT vocabulary, T5
width = the GPT's caption_dim); on any error nothing is left at OUT.
"""


def _add_bundle_parser(sub) -> None:
    from scalingar_jax.llamagen import DEFAULT_PREPROCESS

    a = sub.add_parser("bundle", help="assemble a model bundle from LlamaGen's released files (GPT, VQ, T5)",
                       description="Builds a model bundle folder OUT (what `generate --checkpoint` and "
                                   "load_pipeline(path) load) from LlamaGen's released checkpoints.",
                       epilog=BUNDLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("out", metavar="OUT", help="the bundle folder to create (written atomically)")
    a.add_argument("--gpt", required=True, metavar="FILE",
                   help="LlamaGen GPT checkpoint, t2i or c2i (.pt/.pth/.bin/.safetensors; or a model directory "
                        "`scalingar convert` wrote)")
    a.add_argument("--vq", required=True, metavar="FILE",
                   help="LlamaGen VQ tokenizer checkpoint (e.g. vq_ds16_t2i.pt; or a converted model directory); "
                        "its codebook size must equal the GPT's vocabulary")
    text = a.add_mutually_exclusive_group()
    text.add_argument("--t5", metavar="HF_DIR",
                      help="t2i: a Hugging Face flan-t5 folder (config.json, model.safetensors or pytorch_model.bin "
                           "[+ index], spiece.model), converted to the package's Flax T5 encoder; its d_model must "
                           "equal the GPT's caption_dim (2048 for flan-t5-xl)")
    text.add_argument("--t5-features", metavar="FILE",
                      help="t2i, instead of --t5: precomputed T5 features of named prompts, a .npz with "
                           "'features' (B, L, C), 'prompts' (B,) [+ 'mask'], or one entry per prompt keyed by its "
                           "text ({prompt: (1, n, C)}, the arrays of LlamaGen's extract_t5_feature.py); generate "
                           "then takes the stored prompts only, as written there")
    a.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights of the bundle's GPT, VQ and T5 (bfloat16 halves memory; the T5 computes in float32): "
                        "files are converted to it (default float32), model directories cast (default: kept)")
    a.add_argument("--grid-size", type=int, default=None, metavar="G",
                   help="image-token grid of the GPT when the file does not tell (16 for 256 px, 24 for 384, 32 for "
                        "512; by default from the training args in the file or 256/384/512 in its name)")
    a.add_argument("--name", default=None, help="a name for the bundle (shown in logs and result.json)")
    a.add_argument("--preprocess", default=DEFAULT_PREPROCESS, metavar="NAME",
                   help="t2i with --t5: the text preprocessing applied to every prompt before tokenisation, by "
                        f"name: llamagen (default: LlamaGen's, clean_caption twice) or lowercase (LlamaGen's "
                        "use_text_preprocessing=False); the bundle records the name")
    a.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    a.set_defaults(fn=cmd_bundle)


def cmd_bundle(args) -> int:
    from scalingar_jax.llamagen import assemble_bundle

    if args.grid_size is not None and not 1 <= args.grid_size <= 256:
        raise UserError(f"--grid-size must be in [1, 256], got {args.grid_size}")
    if os.path.lexists(args.out) and not args.overwrite:  # the library's message names overwrite=True
        raise UserError(f"{os.path.abspath(args.out)} already exists (pass --overwrite to replace it)")
    assemble_bundle(args.out, gpt=args.gpt, vq=args.vq, t5=args.t5, t5_features=args.t5_features, dtype=args.dtype,
                    grid_size=args.grid_size, name=args.name, overwrite=args.overwrite, preprocess=args.preprocess)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from scalingar_jax.scaling.config import ABLATIONS  # the one list of ablation switch sets

    ap = _OneLineParser(prog="scalingar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images for a prompt (or a GenEval prompt file)",
                       description="Generate with a test-time scaling strategy. Writes selected.png, candidates.png "
                                   "(pruned candidates outlined in red with their pruning step and their "
                                   "ungenerated tokens grey, the winner in green), confidence.png (C per candidate, threshold, guidance scale), "
                                   "entropy.png (token-entropy heat map of the winner), tokens.npy (every candidate's "
                                   "image tokens, int32 (N, T), -1 where a pruned candidate never generated one) and "
                                   "result.json. A class-conditional (c2i) bundle takes --class-ids instead of a "
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
    g.add_argument("--strategy", default="scalingar", choices=["scalingar", "plain", "confidence_only",
                                                               "best_of_n", "importance_sampling"],
                   help="test-time scaling strategy (default: scalingar)")
    g.add_argument("-n", "--num-candidates", dest="n", type=int, default=8, help="candidates per prompt N (default 8)")
    g.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    g.add_argument("--cfg", type=float, default=None, help="default CFG scale s_base (default: the checkpoint's)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: checkpoint's)")
    g.add_argument("--top-k", type=int, default=None, help="top-k filter, 0 = off (default: checkpoint's)")
    g.add_argument("--top-p", type=float, default=None, help="top-p filter, 1 = off (default: checkpoint's)")
    g.add_argument("--ablation", default=None, choices=list(ABLATIONS),
                   help="ScalingAR ablation switch set (paper Tables 2 and 4)")
    g.add_argument("--no-compaction", action="store_true",
                   help="keep pruned rows in the batch (masking only) instead of compacting alive rows")
    g.add_argument("--buckets", default="pow2", choices=["pow2", "fine"],  # strategies.BUCKETS (no jax import here)
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
    g.set_defaults(fn=cmd_generate)

    m = sub.add_parser("merge", help="join the parts of a split GenEval run (--process-index) into one folder",
                       description="Checks that the parts are the complete shares of one run (same settings, "
                                   "every process once, no overlap, no gap) and copies them into OUT.")
    m.add_argument("parts", nargs="+", help="the part folders (each a --out of `generate --prompts --process-index`)")
    m.add_argument("--out", required=True, help="the merged GenEval folder (created atomically)")
    m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    m.set_defaults(fn=cmd_merge)

    e = sub.add_parser("evaluate", help="judge a GenEval-layout folder with the shapes-world judge",
                       description="Judges every image of a GenEval-layout folder and prints the per-tag table "
                                   "(overall = mean over tags, as GenEval).")
    e.add_argument("folder", help="folder with <5-digit index>/metadata.jsonl and samples/*.png")
    e.add_argument("--json", default=None, help="also write per-image verdicts and the summary to this JSON file")
    e.set_defaults(fn=cmd_evaluate)

    _add_bundle_parser(sub)

    c = sub.add_parser("convert", help="convert a PyTorch LlamaGen checkpoint to orbax, or back with --export "
                                       "(see `scalingar convert --help`)", add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the converter")
    c.set_defaults(fn=cmd_convert)

    b = sub.add_parser("bench", help="run a benchmark under experiments/ (decode, scaling, convert, sharding)",
                       description="Runs experiments/bench_NAME.py; pass its own options after --.")
    b.add_argument("name", help="benchmark name: decode, scaling, convert, sharding, ...")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options for the benchmark (after --)")
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("reproduce", help="reproduce the paper's experiments on the shapes world (main, ablations, "
                                         "width, robustness, efficiency, sensitivity, all)",
                       description="Runs experiments/reproduce.py NAME; pass its own options after --. Each writes "
                                   "JSON, a markdown table and PNG plots under experiments/results/.")
    r.add_argument("name", help="main | ablations | width | robustness | efficiency | sensitivity | all")
    r.add_argument("rest", nargs=argparse.REMAINDER, help="options for the experiment (after --)")
    r.set_defaults(fn=cmd_reproduce)
    return ap


def main(argv=None) -> int:
    """The command: 0 on success, 2 with one error line for bad input, 130 with one line on
    Ctrl-C (run as the `scalingar` program, it then leaves at once: a Python shutdown right after
    an interrupt inside XLA can crash)."""
    as_program = argv is None
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt as e:
        msg = str(e) if isinstance(e, Interrupted) else "interrupted; nothing was half-written (rerun the same command)"
        print(f"scalingar: {printable(msg)}", file=sys.stderr)
        if as_program:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] == ["convert"]:
        # argparse's REMAINDER does not take a leading option (`convert --export ...`, `convert
        # --help`): hand everything after the subcommand to the converter's own parser.
        from scalingar_jax.convert.run import main as convert_main

        rest = argv[1:]
        return convert_main(rest[1:] if rest[:1] == ["--"] else rest)
    args = build_parser().parse_args(argv)
    if getattr(args, "rest", None) and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    python_format = warnings.formatwarning
    warnings.formatwarning = functools.partial(_warning_line, python_format)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"scalingar: error: {printable(e)}", file=sys.stderr)
        return 2
    except _INPUT_ERRORS as e:  # a bad file or option found deeper down: one line, no traceback
        print(f"scalingar: error: {printable(_describe_error(e))}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = python_format


def _warning_line(python_format, message, category, filename, lineno, line=None) -> str:
    """How the command shows a warning: the package's own (e.g. a T5 prompt cut at 119 pieces)
    as one `scalingar: warning:` line; other libraries' with `python_format` (their source line)."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"scalingar: warning: {printable(str(message))}\n"
    return python_format(message, category, filename, lineno, line)


_INPUT_ERRORS = (ValueError, TypeError, KeyError, OSError, MemoryError, RecursionError, ArithmeticError)


def _describe_error(e: BaseException) -> str:
    import shutil

    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        src, _, why = (list(e.args[0][0]) + ["", "", ""])[:3]  # copytree's [(src, dst, why), ...]
        more = f" (and {len(e.args[0]) - 1} more file(s))" if len(e.args[0]) > 1 else ""
        return f"cannot copy {str(src)!r}: {str(why)[:200]}{more}"
    if isinstance(e, MemoryError):
        return "out of memory (" + (str(e) or "the input asks for more memory than there is") + ")"
    if isinstance(e, RecursionError):
        return "the input nests too deeply"
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.strerror and e.filename and str(e.filename) not in str(msg):
        msg = f"{e.strerror}: {e.filename!r}"
    if isinstance(e, ArithmeticError):
        msg = f"{type(e).__name__}: {msg} (a size or field in the input is out of range)"
    return str(msg)


if __name__ == "__main__":
    sys.exit(main())
