"""`scalingar evaluate`: judges a GenEval-layout folder with the shapes-world judge."""
from __future__ import annotations

import json
import os
from pathlib import Path

from scalingar_jax.errors import UserError

MAX_IMAGE_PIXELS = 4096 * 4096  # images `evaluate` decodes


def add_parser(sub) -> None:
    """The `evaluate` subcommand."""
    e = sub.add_parser("evaluate", help="judge a GenEval-layout folder with the shapes-world judge",
                       description="Judges every image of a GenEval-layout folder and prints the per-tag table "
                                   "(overall = mean over tags, as GenEval).")
    e.add_argument("folder", help="folder with <5-digit index>/metadata.jsonl and samples/*.png")
    e.add_argument("--json", default=None, help="also write per-image verdicts and the summary to this JSON file")
    e.set_defaults(fn=run)


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


def run(args) -> int:
    """Runs `scalingar evaluate`; 0 on success (UserError for bad input)."""
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
