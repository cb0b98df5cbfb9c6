"""`scalingar train-world`: trains the shapes-world models (`scalingar_jax.world.train`), the VQ
tokenizer, the t2i GPT with its text encoder and the reward model, saved with orbax under --out.

  scalingar train-world all --out checkpoints/shapes --seed 0
  scalingar train-world gpt --resume --gpt-init checkpoints/shapes --seed 1 --gpt-steps 1400

Runs go in resumable chunks with --resume (world 2 and 3): each chunk stops at --max-minutes
(default 45 then) and keeps its optimiser state under <out>/.train_state/; the SAME command
continues it. The parser imports nothing heavy; JAX comes with the training.
"""
from __future__ import annotations

import argparse
import shlex

from scalingar_jax.errors import UserError
from scalingar_jax.world.spec import DEFAULT_WORLD, world_spec

DESCRIPTION = """\
Train the shapes-world VQ, t2i GPT (+ text encoder) and reward model. Each run writes
<model>.json (config, loss curve, wall time, evaluation numbers and this command) and
<model>.log under --results; --out and --results are relative to the current directory.
With --resume (world 2 and 3) a run goes in chunks of --max-minutes: while it prints
"chunk ended at step ...", rerun the same command to continue."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with every flag's default."""


def add_parser(sub) -> None:
    """The `train-world` subcommand."""
    p = sub.add_parser("train-world", help="train the shapes-world models (VQ, t2i GPT + text encoder, reward)",
                       description=DESCRIPTION, formatter_class=Formatter)
    add_arguments(p)
    p.set_defaults(fn=run)


def add_arguments(p) -> None:
    """train-world's flags on parser `p`."""
    p.add_argument("model", choices=["vq", "gpt", "reward", "all"], help="which model(s) to train")
    p.add_argument("--world", default=str(DEFAULT_WORLD.version), choices=["1", "2", "3", "v1", "v2", "v3"],
                   help="world version: 3 (48x48, photo backgrounds, distractors, scene splits; the shipped "
                        "checkpoint), 2 (the same world at 64x64 / 16x16 tokens with larger models, for an "
                        "accelerator) or 1 (retired: flat backgrounds, evaluation scenes seen in training)")
    p.add_argument("--resume", action="store_true",
                   help="resumable chunks: keep the optimiser state in <out>/.train_state/, stop each chunk at "
                        "--max-minutes (default 45 here) and continue it when the same command runs again")
    p.add_argument("--out", default=None,
                   help="checkpoint root directory, relative to the current directory (default: checkpoints/shapes "
                        "for --world 3, checkpoints/shapes_v<N> for another version, so it never overwrites the "
                        "shipped v3)")
    p.add_argument("--results", default="experiments/results/training",
                   help="folder of the training records <model>.json/.log and samples.png")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    p.add_argument("--warmup", type=int, default=30, help="linear warmup steps")
    p.add_argument("--log-every", type=int, default=10, help="log the losses every N steps")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop a run after this many minutes (0: no cap)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many steps while the learning-rate schedule still spans --*-steps (0: off); "
                        "replays a run that a --max-minutes cap stopped (its JSON records the step)")
    p.add_argument("--eval-n", type=int, default=300, help="renders / prompts used by the post-training evaluations")
    g = p.add_argument_group("vq")
    g.add_argument("--vq-steps", type=int, default=600)
    g.add_argument("--vq-batch", type=int, default=32)
    g.add_argument("--vq-lr", type=float, default=2e-3)
    g.add_argument("--vq-data", type=int, default=8000, help="pre-rendered training images")
    g.add_argument("--vq-init", default=None, help="continue training from this saved VQ directory")
    g.add_argument("--vq-restart-every", type=int, default=20,
                   help="every this many steps, move codebook rows that no latent of 4 batches uses onto random "
                        "latents (keeps the codebook from collapsing; 0: off)")
    g.add_argument("--vq-restart-until", type=float, default=0.8,
                   help="restart dead codebook rows only during this fraction of the steps")
    g = p.add_argument_group("gpt")
    g.add_argument("--gpt-steps", type=int, default=600)
    g.add_argument("--gpt-dim", type=int, default=0, help="GPT width (head_dim 32; 0: the world's, 192; v2: 256)")
    g.add_argument("--gpt-layers", type=int, default=0, help="GPT depth (0: the world's, 6; v2: 8)")
    g.add_argument("--gpt-batch", type=int, default=32)
    g.add_argument("--gpt-lr", type=float, default=1e-3)
    g.add_argument("--gpt-data", type=int, default=16000, help="pre-rendered, pre-tokenised training images")
    g.add_argument("--gpt-init", default=None, help="continue training from the gpt/ and text/ models saved under this directory")
    g.add_argument("--caption-dropout", type=float, default=0.1, help="fraction of captions replaced by the uncond embedding")
    g.add_argument("--sample-prompts", type=int, default=60, help="evaluation prompts sampled after training")
    g.add_argument("--cfg-scale", type=float, default=3.0, help="CFG scale of the post-training samples")
    g.add_argument("--top-k", type=int, default=16, help="top-k of the post-training samples")
    g = p.add_argument_group("reward")
    g.add_argument("--reward-steps", type=int, default=400)
    g.add_argument("--reward-batch", type=int, default=32, help="positives per step (as many negatives)")
    g.add_argument("--reward-lr", type=float, default=1e-3)
    g.add_argument("--reward-init", default=None,
                   help="continue from this saved reward model (with --reward-steps 0: only re-evaluate it)")
    g.add_argument("--reward-data", type=int, default=6000, help="pre-rendered training images")
    g.add_argument("--reward-candidates", type=int, default=4,
                   help="v2: candidate images per prompt in the within-prompt ranking batch (--reward-batch prompts)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """train-world's settings from its arguments (after the subcommand), as `run` derives them."""
    p = argparse.ArgumentParser(prog="scalingar train-world", description=DESCRIPTION, formatter_class=Formatter)
    add_arguments(p)
    return settings(p.parse_args(argv), ["train-world", *argv])


def settings(args: argparse.Namespace, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with its derived settings: `spec` (the WorldSpec), `out` defaulting per
    world version, --resume's 45-minute chunks and `command_line` ("scalingar " + argv, the
    subcommand first; recorded in each run's JSON). A UserError for --resume on world 1."""
    args.spec = world_spec(args.world)
    if args.out is None:
        v = args.spec.version
        args.out = "checkpoints/shapes" if v == DEFAULT_WORLD.version else f"checkpoints/shapes_v{v}"
    if args.resume and args.spec.version == 1:
        raise UserError("--resume needs --world 2 or 3 (v1 runs continue with --vq-init / --gpt-init / --reward-init)")
    if args.resume and args.max_minutes <= 0:
        args.max_minutes = 45.0
    if argv is not None:
        args.command_line = "scalingar " + shlex.join(argv)
    return args


def run(args) -> int:
    """Runs `scalingar train-world` (`world.train.train`); 0 when it ends (finished or a chunk)."""
    from scalingar_jax.world.train import train

    train(settings(args, getattr(args, "argv", None)))
    return 0
