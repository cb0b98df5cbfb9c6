"""`scalingar bundle`: a model bundle folder from released files (LlamaGen's GPT, VQ and T5, or
Janus-Pro's folder)."""
from __future__ import annotations

import argparse
import os

from scalingar_jax.errors import UserError

# Defaults the help names without importing the library (tests/test_cli_parser.py pins them to
# `janus_bundle.DEFAULT_PROMPT_LEN` and `llamagen.DEFAULT_PREPROCESS`).
JANUS_PROMPT_LEN = 128
DEFAULT_PREPROCESS = "llamagen"

BUNDLE_EPILOG = """\
examples:
  # LlamaGen t2i XL (512 px) with flan-t5-xl (a Hugging Face folder: config.json, model weights, spiece.model)
  scalingar bundle models/t2i_XL_512 --gpt t2i_XL_stage2_512.pt --vq vq_ds16_t2i.pt --t5 flan-t5-xl --dtype bfloat16
  scalingar generate --checkpoint models/t2i_XL_512 "a photo of a cat on a sofa"
  # LlamaGen c2i L (256 px): class ids instead of text
  scalingar bundle models/c2i_L_256 --gpt c2i_L_256.pt --vq vq_ds16_c2i.pt
  scalingar generate --checkpoint models/c2i_L_256 --class-ids 207 360 387
  # Janus-Pro-7B (384 px, 576 tokens): DeepSeek's released folder (config.json, pytorch_model*.bin
  # [+ index], tokenizer files), read without torch
  scalingar bundle models/janus_pro_7b --janus Janus-Pro-7B --dtype bfloat16
  scalingar generate --checkpoint models/janus_pro_7b "a photo of a cat on a sofa"

The folder holds gpt/, vq/ (as `scalingar convert` writes them), text/ (t2i: the Flax T5 encoder,
converted without torch, and its spiece.model) or features/ (t2i: precomputed features), and
bundle.json with LlamaGen's sampling defaults (t2i: cfg 7.5, top-k 1000; c2i: cfg 4.0, top-k 2000;
temperature 1, top-p 1; override with generate's --cfg, --top-k, ...) and the image size. A t2i
bundle with text/ tokenizes prompts with sentencepiece, an optional extra:
pip install 'scalingar-jax[t5]'. The parts are checked to fit (VQ codebook = GPT vocabulary, T5
width = the GPT's caption_dim); on any error nothing is left at OUT. A Janus-Pro bundle holds gpt/
(the generator: LLaMA decoder and generation heads), vq/ and tokenizer/ (the released tokenizer
files, read by the tokenizers library), with Janus's sampling defaults (cfg 5, temperature 1, no
top-k); every number of config.json is checked against the weights before anything is converted.
"""


def add_parser(sub) -> None:
    """The `bundle` subcommand."""
    a = sub.add_parser("bundle", help="assemble a model bundle from released files (LlamaGen: GPT, VQ, T5; "
                                      "Janus-Pro: its folder)",
                       description="Builds a model bundle folder OUT (what `generate --checkpoint` and "
                                   "load_pipeline(path) load) from LlamaGen's released checkpoints (--gpt, --vq "
                                   "[, --t5 or --t5-features]) or from Janus-Pro's released folder (--janus).",
                       epilog=BUNDLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("out", metavar="OUT", help="the bundle folder to create (written atomically)")
    a.add_argument("--janus", metavar="DIR",
                   help="Janus-Pro's released folder (deepseek-ai/Janus-Pro-1B or -7B: config.json, "
                        "pytorch_model.bin or its shards + pytorch_model.bin.index.json, tokenizer.json and its "
                        "configs), instead of --gpt and --vq")
    a.add_argument("--gpt", metavar="FILE",
                   help="LlamaGen GPT checkpoint, t2i or c2i (.pt/.pth/.bin/.safetensors; or a model directory "
                        "`scalingar convert` wrote)")
    a.add_argument("--vq", metavar="FILE",
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
                        "files are converted to it (default float32), model directories cast (default: kept); --janus: "
                        "the generator's (the VQ stays float32)")
    a.add_argument("--grid-size", type=int, default=None, metavar="G",
                   help="image-token grid of the GPT when the file does not tell (16 for 256 px, 24 for 384, 32 for "
                        "512; by default from the training args in the file or 256/384/512 in its name); "
                        "--janus: default 24 (Janus-Pro's 576 tokens)")
    a.add_argument("--prompt-len", type=int, default=None, metavar="L",
                   help=f"--janus: prompt slots, the longest prompt in tokens with Janus's template (default "
                        f"{JANUS_PROMPT_LEN})")
    a.add_argument("--vq-norm-groups", type=int, default=None, metavar="G",
                   help="--janus: GroupNorm groups of the VQ, which the weights do not hold (default 32, Janus's; "
                        "only tiny test models differ)")
    a.add_argument("--name", default=None, help="a name for the bundle (shown in logs and result.json)")
    a.add_argument("--preprocess", default=None, metavar="NAME",
                   help="t2i with --t5: the text preprocessing applied to every prompt before tokenisation, by "
                        f"name: llamagen (default: LlamaGen's, clean_caption twice) or lowercase (LlamaGen's "
                        f"use_text_preprocessing=False); the bundle records the name (default {DEFAULT_PREPROCESS})")
    a.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    a.set_defaults(fn=run)


def run(args) -> int:
    """Runs `scalingar bundle`; 0 on success (UserError for bad input)."""

    if args.grid_size is not None and not 1 <= args.grid_size <= 256:
        raise UserError(f"--grid-size must be in [1, 256], got {args.grid_size}")
    llamagen = {"--gpt": args.gpt, "--vq": args.vq, "--t5": args.t5, "--t5-features": args.t5_features,
                "--preprocess": args.preprocess}
    janus = {"--prompt-len": args.prompt_len, "--vq-norm-groups": args.vq_norm_groups}
    if args.janus is not None:
        given = [flag for flag, value in llamagen.items() if value is not None]
        if given:
            raise UserError(f"--janus takes Janus-Pro's whole released folder; {', '.join(given)} apply to LlamaGen's "
                            "files")
    else:
        given = [flag for flag, value in janus.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to a Janus-Pro folder (--janus DIR)")
        missing = [flag for flag in ("--gpt", "--vq") if llamagen[flag] is None]
        if missing:
            raise UserError(f"give {' and '.join(missing)} (LlamaGen's released files) or --janus DIR (Janus-Pro's "
                            "released folder)")
    if os.path.lexists(args.out) and not args.overwrite:  # the library's message names overwrite=True
        raise UserError(f"{os.path.abspath(args.out)} already exists (pass --overwrite to replace it)")
    if args.janus is not None:
        from scalingar_jax.janus_bundle import DEFAULT_PROMPT_LEN, assemble_janus_bundle

        assemble_janus_bundle(args.out, args.janus, dtype=args.dtype or "float32",
                              grid_size=24 if args.grid_size is None else args.grid_size,
                              prompt_len=DEFAULT_PROMPT_LEN if args.prompt_len is None else args.prompt_len,
                              vq_norm_groups=32 if args.vq_norm_groups is None else args.vq_norm_groups,
                              name=args.name, overwrite=args.overwrite)
        return 0
    from scalingar_jax import llamagen as L

    L.assemble_bundle(args.out, gpt=args.gpt, vq=args.vq, t5=args.t5, t5_features=args.t5_features, dtype=args.dtype,
                      grid_size=args.grid_size, name=args.name, overwrite=args.overwrite,
                      preprocess=args.preprocess or L.DEFAULT_PREPROCESS)
    return 0
