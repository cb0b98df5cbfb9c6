"""The `scalingar` command: one module per subcommand, each with `add_parser(sub)` (the parser,
which imports nothing heavy) and `run(args)` (which imports what the command needs).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from pathlib import Path

from scalingar_jax.cli import bench, bundle, convert, evaluate, generate, merge, reproduce, train_world
from scalingar_jax.errors import INPUT_ERRORS, Interrupted, UserError, one_line, printable

__all__ = ["main", "build_parser"]

USAGE = """\
ScalingAR's confidence-driven test-time scaling on LlamaGen-style autoregressive image generators,
in JAX. Examples:

  scalingar generate "a photo of a red circle left of a blue square"
  scalingar generate --prompts prompts.jsonl --out runs/geneval --strategy scalingar -n 8
  scalingar merge runs/part0 runs/part1 --out runs/geneval
  scalingar evaluate runs/geneval
  scalingar bundle models/c2i_L_256 --gpt c2i_L_256.pt --vq vq_ds16_c2i.pt
  scalingar generate --checkpoint models/c2i_L_256 --class-ids 207 360 387
  scalingar bundle models/janus_pro_7b --janus Janus-Pro-7B --dtype bfloat16
  scalingar convert c2i_B_256.pt out/c2i_B_256 --verify
  scalingar train-world all --out checkpoints/shapes --seed 0
  scalingar bench decode --out runs/bench -- --presets GPT-B --batch 16
  scalingar reproduce main --out runs/paper -- --smoke

`scalingar COMMAND --help` tells each command's options.
"""

COMMANDS = (generate, merge, evaluate, bundle, convert, train_world, bench, reproduce)  # in --help's order
SCRIPT_COMMANDS = ("bench", "reproduce")  # run a script: its own options come after `--`
PACKAGE = Path(__file__).resolve().parents[1]  # warnings from files under it are the package's own


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit status 2); subcommand parsers inherit it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `scalingar` parser: every subcommand of `COMMANDS`."""
    ap = OneLineParser(prog="scalingar", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
        rest = argv[1:]
        return convert.main(rest[1:] if rest[:1] == ["--"] else rest)
    rest = None
    if argv[:1] and argv[0] in SCRIPT_COMMANDS and "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if rest is not None:
        args.rest = rest
    args.argv = argv
    python_format = warnings.formatwarning
    warnings.formatwarning = functools.partial(_warning_line, python_format)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"scalingar: error: {printable(e)}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as e:  # a bad file or option found deeper down: one line, no traceback
        print(f"scalingar: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = python_format


def _warning_line(python_format, message, category, filename, lineno, line=None) -> str:
    """How the command shows a warning: the package's own (e.g. a T5 prompt cut at 119 pieces)
    as one `scalingar: warning:` line; other libraries' with `python_format` (their source line)."""
    if Path(filename).resolve().is_relative_to(PACKAGE):
        return f"scalingar: warning: {printable(str(message))}\n"
    return python_format(message, category, filename, lineno, line)
