"""`scalingar convert`: the command line over `scalingar_jax.convert.checkpoints` (PyTorch
LlamaGen checkpoints <-> scalingar-jax model directories: `convert`, `export`, `verify`). The
parser imports nothing heavy; the converter is imported when the command runs.

  main(argv) -> exit status     the command line (0 ok, 1 verification failed, 2 bad input)
"""
from __future__ import annotations

import argparse
import ast
import math
import sys

from scalingar_jax.errors import INPUT_ERRORS, UserError, one_line

__all__ = ["main", "build_parser", "add_parser"]

# `convert.checkpoints.DEFAULT_TOLERANCE`, for the help text without importing the converter
# (tests/test_cli_parser.py pins the two together)
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}

DESCRIPTION = """\
Convert a PyTorch LlamaGen checkpoint (GPT or VQ tokenizer) to a scalingar-jax model directory
(config.json + orbax params/), or with --export convert such a directory back to LlamaGen's
PyTorch layout. torch is not needed and the checkpoint's pickle is never executed: only tensor
records and plain containers are accepted.

The model kind (GPT c2i/t2i or VQ) and its config are inferred from the weights. Two GPT
fields are not stored in them: the number of heads (taken from the LlamaGen preset with the
same depth and width; --set n_head=N otherwise) and the image-token grid (from the training
args in the file, else from 256/384/512 in the file name; --grid-size otherwise). For a VQ,
the GroupNorm group count is LlamaGen's 32 unless --set norm_groups=N.
"""

EPILOG = """\
examples:
  scalingar convert c2i_XL_384.pt models/c2i_XL_384 --verify     # grid 24 from the name
  scalingar convert t2i_XL_stage2_512.pt models/t2i_XL_512 --dtype bfloat16
  scalingar convert vq_ds16_t2i.pt models/vq16 --verify --llamagen-src ~/src/LlamaGen
  scalingar convert my_run.pt models/x --grid-size 16 --set n_head=20
  scalingar convert --export models/t2i_XL_512 t2i_XL_512.safetensors
  scalingar convert --export models/vq16 vq16.pt --key model

verification (--verify): after writing, the converted model is loaded back and run on small
random inputs (batch 2: for a GPT a few image tokens, enough to reach the second grid row, with
a null-condition row and, for t2i, ragged left-padded caption masks; for a VQ a 3 x 4 code
grid), and compared with an independent reference computed from the PyTorch-layout state dict:
by default a float64 NumPy forward pass written for this purpose
(scalingar_jax/convert/reference.py), with --llamagen-src the original LlamaGen PyTorch code
imported from your checkout (needs torch). It prints the largest absolute and relative
(divided by the largest reference value) difference of the logits / pixels. With --export,
the exported file is read back and checked the same way.

exit status: 0 success, 1 verification failed (the output is removed), 2 bad input or
options (one line on stderr; nothing is written).
"""


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k.isidentifier() or len(v) > 200:
            raise UserError(f"--set expects FIELD=VALUE with a field name and a short value, got {item[:80]!r}")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[k] = v  # a bare string
    return out


_SIZE_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """A byte count from `--max-bytes`: an integer with an optional K/M/G/T (binary) suffix."""
    import re

    m = re.fullmatch(r"\s*(\d{1,15})\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a byte count such as 4G or 500M, got {text[:40]!r}")
    n = int(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()]
    if not 1 <= n <= 1 << 50:
        raise argparse.ArgumentTypeError(f"a byte count in [1, 1P], got {text[:40]!r}")
    return n


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_parser(sub) -> None:
    """The `convert` subcommand in `scalingar --help`; `scalingar convert ...` goes to `main` whole
    (argparse's REMAINDER does not take a leading option such as --export or --help)."""
    c = sub.add_parser("convert", help="convert a PyTorch LlamaGen checkpoint to orbax, or back with --export "
                                       "(see `scalingar convert --help`)", add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the converter")
    c.set_defaults(fn=lambda args: main(args.rest))


def build_parser(prog: str = "scalingar convert") -> argparse.ArgumentParser:
    ap = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC",
                    help="LlamaGen checkpoint to convert: .pt/.pth/.bin (torch zip format) or .safetensors; with "
                         "--export, a model directory written by `scalingar convert`")
    ap.add_argument("dst", metavar="DST",
                    help="output model directory (created atomically; must not exist unless --overwrite); with "
                         "--export, the output .safetensors or .pt/.pth/.bin file")
    ap.add_argument("--export", action="store_true",
                    help="export mode: write the model directory SRC as a PyTorch LlamaGen state dict DST "
                         "(.safetensors, or .pt via a torch-compatible writer), one tensor at a time")
    ap.add_argument("--kind", default="auto", choices=["auto", "gpt", "vq"],
                    help="model kind of SRC (default auto: from the key names); a mismatch is an error")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="parameter dtype of the output (default: float32 when converting, the stored dtype with "
                         "--export)")
    ap.add_argument("--key", default=None,
                    help="top-level entry of a .pt file holding the weights (default: the first of model, module, "
                         "state_dict, else the top level); with --export, the wrapper entry to write (default "
                         "model; '' writes a bare state dict)")
    ap.add_argument("--grid-size", type=int, default=None,
                    help="GPT image-token grid side, image_size / 16 for VQ-16 (16 for 256px, 24 for 384px, 32 for "
                         "512px); default: from the training args in the file, else from 256/384/512 in the file "
                         "name")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field not stored in the weights, e.g. --set n_head=20 (GPTs that match "
                         "no LlamaGen preset) or --set norm_groups=32 (VQ); repeatable")
    ap.add_argument("--non-strict", action="store_true",
                    help="skip unknown keys in the state dict instead of failing (known buffers such as KV caches "
                         "and quantize.codebook_used are always skipped)")
    ap.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    ap.add_argument("--max-bytes", type=parse_bytes, default=None, metavar="N",
                    help="memory budget for reading SRC, e.g. 20G: the pickle's objects and the tensors as they will "
                         "be materialised (stride-0 and shared-storage views in full) must fit, checked before any "
                         "tensor is read (default: 2x the file size, at least 8 MiB)")
    ap.add_argument("--allow-non-finite", action="store_true",
                    help="convert weights holding NaN or inf (refused by default)")
    ap.add_argument("--verify", action="store_true",
                    help="after writing, compare the converted model with an independent reference on small random "
                         "inputs and print the largest logit (GPT) / pixel (VQ) difference; exit 1 and remove DST "
                         "if it exceeds the tolerance")
    ap.add_argument("--llamagen-src", default=None, metavar="PATH",
                    help="with --verify (implied): use the original PyTorch LlamaGen code from this checkout "
                         "(autoregressive/models/gpt.py, tokenizer/tokenizer_image/vq_model.py) as the reference "
                         "instead of the NumPy one; needs torch")
    ap.add_argument("--verify-tokens", type=int, default=None, metavar="T",
                    help="GPT verification: image tokens in each input row (default grid_size + 2, enough to reach the "
                         "second grid row)")
    ap.add_argument("--verify-tol", type=float, default=None, metavar="TOL",
                    help="largest accepted relative difference (max |diff| / max |reference|); default "
                         + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_TOLERANCE.items()) + " parameters")
    ap.add_argument("--seed", type=int, default=0, help="seed of the verification inputs (default 0, below 2**32)")
    return ap


def main(argv=None, *, prog: str = "scalingar convert") -> int:
    """The `scalingar convert` command. Returns the exit status (0 ok, 1 verification failed,
    2 bad input: one line on stderr, nothing written)."""
    ap = build_parser(prog)
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    from scalingar_jax.convert import checkpoints as C

    log = print
    verify_wanted = a.verify or a.llamagen_src is not None
    dest, written = None, False
    try:
        if a.verify_tol is not None and not (a.verify_tol > 0 and math.isfinite(a.verify_tol)):
            raise UserError(f"--verify-tol must be finite and > 0, got {a.verify_tol}")
        if not 0 <= a.seed < 2**32:
            raise UserError(f"--seed must be in [0, 2**32), got {a.seed}")
        if a.grid_size is not None and not 1 <= a.grid_size <= 256:
            raise UserError(f"--grid-size must be in [1, 256], got {a.grid_size}")
        if a.verify_tokens is not None and not 2 <= a.verify_tokens <= 65536:
            raise UserError(f"--verify-tokens must be in [2, 65536], got {a.verify_tokens}")
        overrides = {} if a.export else _parse_sets(a.set)
        if a.verify_tokens is not None and not verify_wanted:
            raise UserError("--verify-tokens needs --verify")
        llamagen = None

        def prepare_reference(kind, config, sd):
            nonlocal llamagen
            if a.llamagen_src is not None:
                from scalingar_jax.convert.reference import LlamaGenReference, check_llamagen_source

                llamagen = LlamaGenReference(check_llamagen_source(a.llamagen_src, kind))
                llamagen.prepare(kind, config)
            if a.verify_tokens is not None:
                if kind != "gpt":
                    raise UserError("--verify-tokens applies to GPT models only")
                if not 2 <= a.verify_tokens <= config.block_size:
                    raise UserError(f"--verify-tokens must be in [2, {config.block_size}], got {a.verify_tokens}")

        if a.export:
            for flag, given in (("--kind", a.kind != "auto"), ("--grid-size", a.grid_size is not None),
                                ("--set", bool(a.set)), ("--non-strict", a.non_strict),
                                ("--max-bytes", a.max_bytes is not None), ("--allow-non-finite", a.allow_non_finite)):
                if given:
                    raise UserError(f"{flag} applies when converting to orbax, not with --export")
            from scalingar_jax.checkpoint import read_config

            C.check_export_path(a.dst, a.key, a.dtype)
            kind, config, _ = read_config(a.src)
            if verify_wanted:
                prepare_reference(kind, config, None)
            dest = C.Destination(a.dst, overwrite=a.overwrite, what="output file")
            C.export(a.src, a.dst, dtype=a.dtype, key=a.key, overwrite=a.overwrite, log=log)
            written = True
            if not verify_wanted:
                return 0
            from scalingar_jax.convert import load_checkpoint

            sd, _ = load_checkpoint(a.dst, key=a.key or None)
            model_dir = a.src
        else:
            dest = C.Destination(a.dst, overwrite=a.overwrite, what="output directory")
            kind, _, sd = C.write_model(a.src, a.dst, kind=a.kind, dtype=a.dtype or "float32", key=a.key,
                                   grid_size=a.grid_size, overrides=overrides, strict=not a.non_strict,
                                   overwrite=a.overwrite, log=log,
                                   before_save=prepare_reference if verify_wanted else None,
                                   max_bytes=a.max_bytes, allow_non_finite=a.allow_non_finite)
            written = True
            if not verify_wanted:
                return 0
            model_dir = a.dst
        result = C.verify(model_dir, sd, llamagen=llamagen, seed=a.seed, n_tokens=a.verify_tokens, tol=a.verify_tol,
                        log=log)
        if not result["passed"]:
            dest.cleanup(remove_output=True)
            print(f"error: verification failed: max relative difference {result['max_rel']:.3g} > {result['tol']:g}; "
                  f"removed {a.dst}", file=sys.stderr)
            return 1
        return 0
    except (UserError, *INPUT_ERRORS) as e:
        # before writing, nothing exists yet; an error while verifying removes the output too
        if dest is not None:
            dest.cleanup(remove_output=written)
        print(f"error: {one_line(e)}" + (f" (removed {a.dst})" if written else ""), file=sys.stderr)
        return 2
