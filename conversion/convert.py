"""Convert a PyTorch LlamaGen checkpoint (GPT or VQ tokenizer) to a scalingar-jax model directory,
or back with --export. A thin wrapper over `scalingar_jax.cli.convert` (the `scalingar convert`
command, which works from an installed package; its library is `scalingar_jax.convert.checkpoints`); see `--help` for every option.

    python conversion/convert.py c2i_XL_384.pt out/c2i_XL_384 --verify
    python conversion/convert.py --export out/c2i_XL_384 c2i_XL_384.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scalingar_jax.convert.checkpoints import convert, export, verify  # noqa: E402,F401  (re-exported)
from scalingar_jax.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python conversion/convert.py"))
