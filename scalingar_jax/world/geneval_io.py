"""GenEval's output folder layout, written and read back by this world's judge.

Layout (what GenEval's `evaluation/evaluate_images.py` reads; written by
`scalingar_jax.geneval`, which see)::

    <out_dir>/<index:05d>/metadata.jsonl    one JSON object: the prompt record
    <out_dir>/<index:05d>/samples/0000.png  one PNG per sample, 4-digit index
    <out_dir>/<index:05d>/samples/0001.png  ...

A prompt folder is written whole into a temporary folder next to it and then renamed into
place, so a crash never leaves a half-written prompt folder behind.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from scalingar_jax.geneval import prompt_folder, read_folder_record
from scalingar_jax.geneval import write_prompt_folder as _write_folder
from scalingar_jax.images import read_png
from scalingar_jax.world.judge import JudgeConfig, judge_image, summarize
from scalingar_jax.world.prompts import validate_record

_SAMPLE_RE = re.compile(r"^\d+\.png$")


def write_prompt_folder(
    out_dir: str | os.PathLike,
    index: int,
    record: dict,
    images: Sequence[np.ndarray],
    *,
    overwrite: bool = False,
    world: bool = True,
    grid: bool = False,
) -> str:
    """Checks `record` (GenEval's schema; with `world=True` also this world's vocabulary), then
    `scalingar_jax.geneval.write_prompt_folder`: metadata.jsonl and `samples/%04d.png` for each
    uint8 (H, W, 3) image (and grid.png if `grid`), atomic. Returns the folder's path.

    Raises ValueError for a bad record, an empty `images`, or an image that is not uint8
    (H, W, 3); FileExistsError when the folder exists and `overwrite` is False.
    """
    validate_record(record, world=world, where=f"record for prompt folder {os.path.basename(prompt_folder(out_dir, index))}")
    return _write_folder(out_dir, index, record, images, grid=grid, overwrite=overwrite)


def read_prompt_folder(folder: str | os.PathLike, *, world: bool = True) -> tuple[dict, list[str]]:
    """(record, sorted sample PNG paths) of one prompt folder; ValueError if malformed
    (metadata.jsonl is read within bounds: `geneval.read_folder_record`)."""
    folder = os.fspath(folder)
    meta = os.path.join(folder, "metadata.jsonl")
    try:
        record = read_folder_record(folder)
    except FileNotFoundError:
        raise ValueError(f"{folder}: no metadata.jsonl") from None
    except OSError as err:  # a folder named metadata.jsonl, an unreadable file
        raise ValueError(str(err)) from None
    validate_record(record, world=world, where=meta)
    samples = os.path.join(folder, "samples")
    if not os.path.isdir(samples):
        raise ValueError(f"{folder}: no samples/ folder")
    paths = sorted(os.path.join(samples, n) for n in os.listdir(samples)
                   if _SAMPLE_RE.match(n) and os.path.isfile(os.path.join(samples, n)))
    return record, paths


def evaluate_folder(
    folder: str | os.PathLike,
    config: JudgeConfig | None = None,
    *,
    world: bool = True,
) -> tuple[list[dict], dict]:
    """Judges every sample of a GenEval-layout folder (subfolders whose name is all digits,
    in numeric order; samples `<digits>.png`, sorted) with `config` (None: the shipped
    world's judge, `judge.default_config()`).

    Returns (results, summary): one dict per image with keys "index" (prompt folder number),
    "filename", "tag", "prompt", "correct", "reason", "metadata" (the record) and "detected"
    (list of detection dicts), in folder then sample order; and `judge.summarize` of them.
    Raises ValueError when the folder holds no prompt folder or no image.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder")
    subs = sorted((n for n in os.listdir(folder)
                   if n.isdigit() and os.path.isdir(os.path.join(folder, n))), key=int)
    if not subs:
        raise ValueError(f"{folder} holds no GenEval prompt folders (<5-digit index>/)")
    results, records = [], []
    for name in subs:
        record, paths = read_prompt_folder(os.path.join(folder, name), world=world)
        for path in paths:
            verdict = judge_image(read_png(path), record, config)
            results.append({
                "index": int(name),
                "filename": path,
                "tag": record["tag"],
                "prompt": record["prompt"],
                "correct": verdict.correct,
                "reason": verdict.reason,
                "metadata": record,
                "detected": [d.to_dict() for d in verdict.detected],
            })
            records.append(record)
    if not results:
        raise ValueError(f"{folder} holds prompt folders but no samples/<n>.png images")
    return results, summarize(results, records)
