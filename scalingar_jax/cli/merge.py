"""`scalingar merge`: the parts of a split GenEval run (`generate --prompts --process-index`) into one folder."""
from __future__ import annotations

from pathlib import Path

from scalingar_jax.errors import UserError


def add_parser(sub) -> None:
    """The `merge` subcommand."""
    m = sub.add_parser("merge", help="join the parts of a split GenEval run (--process-index) into one folder",
                       description="Checks that the parts are the complete shares of one run (same settings, "
                                   "every process once, no overlap, no gap) and copies them into OUT.")
    m.add_argument("parts", nargs="+", help="the part folders (each a --out of `generate --prompts --process-index`)")
    m.add_argument("--out", required=True, help="the merged GenEval folder (created atomically)")
    m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    m.set_defaults(fn=run)


def run(args) -> int:
    """Runs `scalingar merge`; 0 on success (UserError for bad input)."""
    from scalingar_jax.geneval import merge_runs

    try:
        merge_runs(args.parts, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"merged {len(args.parts)} parts into {Path(args.out).absolute()}")
    return 0
