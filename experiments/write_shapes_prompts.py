"""Rewrites the shapes-world prompt file shipped with the package,
`scalingar_jax/world/shapes_prompts.jsonl` (`scalingar_jax.world.prompt_file`), for the world
version the bundle records (default: this checkout's embedded `checkpoints/shapes`; rerun this
after that bundle changes version, e.g. v1 -> v3), and prints its records per tag.

  python experiments/write_shapes_prompts.py

`tests/test_prompt_file.py` regenerates the file the same way and compares it byte for byte.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

from scalingar_jax.geneval import TAGS  # noqa: E402
from scalingar_jax.world.pipeline import bundle_world_version  # noqa: E402
from scalingar_jax.world.prompt_file import FILE_NAME, write_prompt_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "checkpoints" / "shapes"),
                    help="the shapes-world bundle whose world version the file is for (default: checkpoints/shapes)")
    ap.add_argument("--out", default=str(ROOT / "scalingar_jax" / "world" / FILE_NAME),
                    help=f"the file to write (default: the package's scalingar_jax/world/{FILE_NAME})")
    args = ap.parse_args()
    version = bundle_world_version(args.bundle)
    records = write_prompt_file(args.out, version)
    counts = Counter(r["tag"] for r in records)
    print(f"{args.out}: {len(records)} evaluation prompts of shapes world v{version} ({args.bundle})\n")
    rows = [{"tag": t, "prompts": counts[t], "first": next(r["prompt"] for r in records if r["tag"] == t)}
            for t in TAGS]
    print(markdown_table(rows, ["tag", "prompts", "first"]))


if __name__ == "__main__":
    main()
