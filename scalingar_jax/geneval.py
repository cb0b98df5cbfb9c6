"""GenEval runs for any model bundle: GenEval's prompt file in, GenEval's folder layout out.

Layout (GenEval's README; its `evaluation/evaluate_images.py` reads every digit-named folder
of the image folder, its `metadata.jsonl` with `json.load`, and every file in `samples/`)::

    <out>/scalingar_run.json              this package's run manifest (GenEval ignores files)
    <out>/<index:05d>/metadata.jsonl      the prompt record, as `json.dump` writes it (GenEval's
                                          generation script; no trailing newline)
    <out>/<index:05d>/grid.png            the K samples side by side (GenEval: optional)
    <out>/<index:05d>/samples/0000.png    K samples, 4-digit names as in GenEval's README (its
    <out>/<index:05d>/samples/0001.png    diffusers script writes 5 digits; the evaluator reads
    ...                                   any name)

`index` is the record's position in the prompt file (0-based, as GenEval's `enumerate`).

Runs are resumable: every prompt folder is written into a temp folder and renamed into place,
so a folder that exists is finished; the run manifest (settings, this process's share of the
prompts) is written first, and a rerun with other settings is refused (`RunMismatch`). Runs are
splittable: each process of a multi-host job writes its share into its own part folder, and
`merge_runs` joins complete parts into the folder one process would have written.

Images of a prompt are independent runs of a strategy: image k of the record at index i is
generated with prompt id `i * K + k` (`prompt_run_ids`), so each image draws its own keys
(per candidate, from (seed, prompt id, candidate id)) and a resumed or split run gives the
same images as one uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Callable, Sequence

import numpy as np

from scalingar_jax.atomic import atomic_dir, atomic_write_text, recover

__all__ = ["TAGS", "RELATIONS", "RECORD_KEYS", "INCLUDE_KEYS", "EXCLUDE_KEYS", "validate_record",
           "read_jsonl_records", "RUN_FILE", "DEFAULT_IMAGES_PER_PROMPT", "RunMismatch", "read_prompt_file", "prompt_folder",
           "write_prompt_folder", "folder_is_complete", "prompt_run_ids", "check_run_folder", "prepare_run", "run_prompts",
           "merge_runs", "file_sha256"]

RUN_FILE = "scalingar_run.json"
RUN_FORMAT = 1
DEFAULT_IMAGES_PER_PROMPT = 4  # GenEval's `--n_samples` default
MAX_RECORDS = 100000           # prompt folders 00000 .. 99999
MAX_IMAGES_PER_PROMPT = 1000   # keeps prompt ids i * K + k inside int32 for MAX_RECORDS prompts


class RunMismatch(ValueError):
    """An output folder holds a run made with other settings (or not a run of this package)."""


# ---------------------------------------------------------------------------- GenEval's schema

TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")  # GenEval's position phrases
RECORD_KEYS: tuple[str, ...] = ("tag", "include", "exclude", "prompt")
INCLUDE_KEYS: tuple[str, ...] = ("class", "count", "color", "position")
EXCLUDE_KEYS: tuple[str, ...] = ("class", "count")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate_record(record: Any, *, where: str = "record") -> None:
    """Checks a record against GenEval's metadata schema; raises ValueError naming `where`
    and the offending field.

    Schema: keys exactly {"tag", "include", "prompt"} plus optional "exclude"; tag one of
    `TAGS`; include a non-empty list of {"class": non-empty str, "count": int >= 1,
    "color"?: str, "position"?: [one of RELATIONS, int index of an EARLIER include entry]};
    exclude a list of {"class", "count"}; prompt a non-empty str. (A model family adds its
    own checks on top, e.g. the shapes world's `world.prompts.validate_record`.)
    """
    def fail(msg: str) -> None:
        raise ValueError(f"{where}: {msg}")

    if not isinstance(record, dict):
        fail(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("tag", "include", "prompt") if k not in record]
    if missing:
        fail(f"missing key(s) {missing}; a record has keys {list(RECORD_KEYS)}")
    extra = sorted(set(record) - set(RECORD_KEYS))
    if extra:
        fail(f"unexpected key(s) {extra}; a record has keys {list(RECORD_KEYS)}")
    if record["tag"] not in TAGS:
        fail(f"tag {record['tag']!r} is not one of {list(TAGS)}")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        fail(f"prompt must be a non-empty string, got {record['prompt']!r}")
    include = record["include"]
    if not isinstance(include, list) or not include:
        fail(f"include must be a non-empty list, got {include!r}")
    for i, e in enumerate(include):
        _validate_entry(e, INCLUDE_KEYS, f"include[{i}]", fail)
        if "color" in e and (not isinstance(e["color"], str) or not e["color"]):
            fail(f"include[{i}].color must be a non-empty string, got {e['color']!r}")
        if "position" in e:
            pos = e["position"]
            if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                    or not _is_int(pos[1])):
                fail(f"include[{i}].position must be [relation, index] with relation in "
                     f"{list(RELATIONS)}, got {pos!r}")
            if not 0 <= pos[1] < i:
                fail(f"include[{i}].position index {pos[1]} must point at an earlier include "
                     f"entry (0..{i - 1})")
    if "exclude" in record:
        exclude = record["exclude"]
        if not isinstance(exclude, list):
            fail(f"exclude must be a list, got {exclude!r}")
        for i, e in enumerate(exclude):
            _validate_entry(e, EXCLUDE_KEYS, f"exclude[{i}]", fail)


def _validate_entry(e: Any, keys: tuple[str, ...], name: str, fail) -> None:
    if not isinstance(e, dict):
        fail(f"{name} must be an object, got {e!r}")
    for k in ("class", "count"):
        if k not in e:
            fail(f"{name} is missing {k!r}")
    extra = sorted(set(e) - set(keys))
    if extra:
        fail(f"{name} has unexpected key(s) {extra}; allowed {list(keys)}")
    if not isinstance(e["class"], str) or not e["class"]:
        fail(f"{name}.class must be a non-empty string, got {e['class']!r}")
    if not _is_int(e["count"]) or e["count"] < 1:
        fail(f"{name}.count must be an int >= 1, got {e['count']!r}")


def read_jsonl_records(path, *, validate: Callable[..., None] | None = None) -> list[tuple[int, dict]]:
    """A .jsonl file (one JSON value per non-blank line) -> [(line number, record), ...].

    Every record is checked with `validate(record, where="<path>:<line>")` (default: GenEval's
    schema, `validate_record`); a line that is not JSON is a ValueError naming file and line.
    """
    validate = validate_record if validate is None else validate
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from None
            validate(record, where=where)
            out.append((lineno, record))
    return out


# ---------------------------------------------------------------------------- prompt file

def read_prompt_file(path, *, check: Callable[[dict], None] | None = None,
                     skip_unsupported: bool = False) -> tuple[list[tuple[int, dict]], list[str]]:
    """GenEval's .jsonl prompt file -> ([(index, record), ...], skipped).

    Every record is checked against GenEval's schema (tags, include/exclude entries, positions;
    errors name the file and line). index: the record's position among the file's records.
    check: the model's own test of a record (e.g. the shapes world's vocabulary), raising
    ValueError; a failing record is an error naming the line, tag and prompt, or with
    `skip_unsupported` it is left out and described in `skipped` (one string per record).
    """
    records = read_jsonl_records(path)
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{os.fspath(path)}: {len(records)} records, more than the {MAX_RECORDS} that 5-digit "
                         "prompt folders can hold")
    kept, skipped = [], []
    for index, (lineno, record) in enumerate(records):
        if check is not None:
            try:
                check(record)
            except ValueError as err:
                what = (f"{os.fspath(path)}:{lineno} (tag {record['tag']!r}, prompt {record['prompt']!r}) is not "
                        f"supported by this model: {err}")
                if not skip_unsupported:
                    raise ValueError(f"{what} (skip such records with skip_unsupported / --skip-unsupported)") from None
                skipped.append(what)
                continue
        kept.append((index, record))
    return kept, skipped


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- one prompt folder

def prompt_folder(out_dir, index: int) -> str:
    """`<out_dir>/<index:05d>`; ValueError unless 0 <= index <= 99999."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index <= 99999:
        raise ValueError(f"index must be an int in [0, 99999], got {index!r}")
    return os.path.join(os.fspath(out_dir), f"{int(index):05d}")


def write_prompt_folder(out_dir, index: int, record: dict, images: Sequence[np.ndarray], *,
                        grid: bool = True, overwrite: bool = False) -> str:
    """Writes `<out_dir>/<index:05d>/`: metadata.jsonl (`json.dumps(record)`), samples/%04d.png
    for each uint8 (H, W, 3) image and, if `grid`, grid.png (the images in one row, 2 px black
    padding). Atomic (temp folder + rename). Returns the folder's path.

    Raises ValueError for no images, more than 10000, or an image that is not uint8 (H, W, 3);
    FileExistsError when the folder exists and `overwrite` is False. The record is written as
    given (check it first).
    """
    from scalingar_jax.images import make_grid, write_png

    target = prompt_folder(out_dir, index)
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("write_prompt_folder needs at least one image")
    if len(images) > 10000:
        raise ValueError(f"at most 10000 samples per prompt (4-digit names), got {len(images)}")
    for i, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"images[{i}] must be uint8 (H, W, 3), got {im.dtype} {im.shape}")
    with atomic_dir(target, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, "metadata.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps(record))
        os.makedirs(os.path.join(tmp, "samples"))
        for i, im in enumerate(images):
            write_png(os.path.join(tmp, "samples", f"{i:04d}.png"), im)
        if grid:
            write_png(os.path.join(tmp, "grid.png"), make_grid(images, ncols=len(images), pad=2, pad_value=0))
    return target


def folder_is_complete(folder, record: dict, images_per_prompt: int) -> bool:
    """True if `folder` holds metadata.jsonl equal to `record`, grid.png and exactly the
    samples 0000.png .. (K-1).png (what `write_prompt_folder` writes, renamed in whole)."""
    try:
        with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
            if json.load(f) != record:
                return False
        names = sorted(os.listdir(os.path.join(folder, "samples")))
    except (OSError, ValueError):
        return False
    return (os.path.isfile(os.path.join(folder, "grid.png"))
            and names == [f"{k:04d}.png" for k in range(images_per_prompt)])


def prompt_run_ids(indices: Sequence[int], images_per_prompt: int) -> np.ndarray:
    """Prompt ids (len(indices) * K,) int32 of the K images of each record: `i * K + k`, image
    k of record index i (rows ordered record-major). Distinct for distinct (i, k)."""
    idx = np.asarray(indices, np.int64)[:, None]
    return (idx * images_per_prompt + np.arange(images_per_prompt)[None, :]).reshape(-1).astype(np.int32)


# ---------------------------------------------------------------------------- a whole run

def _manifest(settings: dict, indices: Sequence[int], selected: int, process_index: int, process_count: int) -> dict:
    return {"format": RUN_FORMAT, "settings": settings, "process_index": process_index,
            "process_count": process_count, "selected": selected, "indices": [int(i) for i in indices]}


def _read_manifest(out: str) -> dict | None:
    path = os.path.join(out, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise RunMismatch(f"{path}: not a readable run manifest ({e}); pass --overwrite to start over") from None
    if not isinstance(m, dict) or m.get("format") != RUN_FORMAT or not isinstance(m.get("indices"), list):
        raise RunMismatch(f"{path}: not a run manifest of this version; pass --overwrite to start over")
    return m


def _is_ours(name: str) -> bool:
    """Entries a run writes at the top of its folder: prompt folders, the manifest and the
    temp leftovers of their atomic writes (`.00012.tmp-...`, `.scalingar_run.json.123-...`)."""
    if len(name) == 5 and name.isdigit():
        return True
    if name == RUN_FILE or name.startswith("." + RUN_FILE + "."):
        return True
    return name.startswith(".") and len(name) > 7 and name[1:6].isdigit() and name[6] == "."


def check_run_folder(out) -> None:
    """Refuses an --out that cannot hold a run: a file, a path under no writable folder, or a
    folder with entries a run does not write (so a rerun never deletes a user's files).
    Creates nothing."""
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"output folder {out!r} exists and is not a folder")
    anc = out
    while not os.path.lexists(anc):
        anc = os.path.dirname(anc)
    if not os.path.isdir(anc) or not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write output folder {out!r}: {anc!r} is not a writable folder")
    if os.path.isdir(out):
        foreign = sorted(e for e in os.listdir(out) if not _is_ours(e))
        if foreign:
            raise ValueError(f"output folder {out!r} holds entries a GenEval run does not write "
                             f"({', '.join(map(repr, foreign[:5]))}); choose a new or empty folder")


def prepare_run(out, settings: dict, share: Sequence[tuple[int, dict]], *, selected: int, images_per_prompt: int,
                process_index: int = 0, process_count: int = 1, overwrite: bool = False) -> list[tuple[int, dict]]:
    """Creates or resumes a run in `out`; returns the (index, record) pairs of `share` still to do.

    settings: JSON-able values that decide the images (checkpoint, strategy, seed, K, ...);
    share: this process's records; selected: how many records the whole run has (all processes).
    A new folder gets the manifest first (atomically). An existing run with equal settings and
    share is resumed: temp leftovers of killed writes are removed, complete prompt folders are
    kept, incomplete ones are listed to be redone. Anything else raises `RunMismatch` unless
    `overwrite`, which deletes the earlier prompt folders and manifest first.
    """
    out = os.path.abspath(os.fspath(out))
    check_run_folder(out)
    wanted = _manifest(settings, [i for i, _ in share], selected, process_index, process_count)
    wanted = json.loads(json.dumps(wanted))  # the form it has once read back
    recover(os.path.join(out, RUN_FILE))
    old = _read_manifest(out) if not overwrite else None
    has_folders = os.path.isdir(out) and any(len(e) == 5 and e.isdigit() for e in os.listdir(out))
    if not overwrite and old is None and has_folders:
        raise RunMismatch(f"{out} holds prompt folders but no {RUN_FILE}: not a run to resume; "
                          "pass --overwrite to start over, or choose a new folder")
    if old is not None and old != wanted:
        diff = sorted(k for k in set(old["settings"]) | set(settings)
                      if old["settings"].get(k) != wanted["settings"].get(k))
        what = f"settings differ ({', '.join(diff)})" if diff else "its share of the prompts differs"
        raise RunMismatch(f"{out} holds a run with other settings: {what}; rerun with the same options to "
                          "resume, pass --overwrite to start over, or choose a new folder")
    if overwrite and os.path.isdir(out):
        for e in os.listdir(out):
            if _is_ours(e):
                path = os.path.join(out, e)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    os.makedirs(out, exist_ok=True)
    if old is None:
        atomic_write_text(os.path.join(out, RUN_FILE), json.dumps(wanted, indent=1) + "\n")
    todo = []
    for index, record in share:
        folder = prompt_folder(out, index)
        recover(folder)
        if not folder_is_complete(folder, record, images_per_prompt):
            todo.append((index, record))
    return todo


def run_prompts(out, todo: Sequence[tuple[int, dict]], generate_fn: Callable[[list[str], np.ndarray], np.ndarray], *,
                images_per_prompt: int, batch: int, on_folder: Callable[[int], None] | None = None) -> int:
    """Generates and writes the prompt folders of `todo` (from `prepare_run`); returns how many.

    generate_fn(prompts, prompt_ids) -> uint8 images (R, H, W, 3) for R rows, where the rows are
    the K images of each record in turn (prompt repeated K times, ids from `prompt_run_ids`).
    batch: rows per call, rounded down to whole prompts (at least one prompt's K rows). Each
    folder is written whole (replacing an incomplete one) as soon as its batch is done.
    """
    K = images_per_prompt
    per_call = max(1, batch // K)
    done = 0
    for start in range(0, len(todo), per_call):
        chunk = todo[start : start + per_call]
        prompts = [rec["prompt"] for _, rec in chunk for _ in range(K)]
        images = np.asarray(generate_fn(prompts, prompt_run_ids([i for i, _ in chunk], K)))
        if images.shape[0] != len(prompts):
            raise ValueError(f"generate_fn returned {images.shape[0]} images for {len(prompts)} rows")
        for j, (index, record) in enumerate(chunk):
            write_prompt_folder(out, index, record, images[j * K : (j + 1) * K], overwrite=True)
            done += 1
            if on_folder is not None:
                on_folder(done)
    return done


def merge_runs(parts: Sequence, out, *, overwrite: bool = False) -> str:
    """Joins the part folders of a split run (`prepare_run` with process_index 0..K-1) into `out`,
    the folder one process would have written (same manifest, same prompt folders). Refuses
    (ValueError) parts with different settings, a missing or repeated process index, an
    unfinished part (a prompt folder of its share missing or incomplete), overlapping shares, or
    shares that do not add up to the run's records; FileExistsError if `out` exists and not
    `overwrite`. Atomic. Returns `out`."""
    parts = [os.path.abspath(os.fspath(p)) for p in parts]
    if not parts:
        raise ValueError("no parts to merge")
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(os.fspath(out))} already exists (pass --overwrite to replace it)")
    manifests = []
    for p in parts:
        m = _read_manifest(p) if os.path.isdir(p) else None
        if m is None:
            raise ValueError(f"part {p} is not a run folder (no {RUN_FILE})")
        manifests.append(m)
    first = manifests[0]
    for p, m in zip(parts, manifests):
        if (m["settings"], m["process_count"], m["selected"]) != (first["settings"], first["process_count"],
                                                                  first["selected"]):
            raise ValueError(f"part {p} was made with other settings than {parts[0]}")
    by_process = {}
    for p, m in zip(parts, manifests):
        if m["process_index"] in by_process:
            raise ValueError(f"parts {by_process[m['process_index']]} and {p} are both process {m['process_index']}")
        by_process[m["process_index"]] = p
    missing = sorted(set(range(first["process_count"])) - set(by_process))
    if missing:
        raise ValueError(f"missing the part(s) of process(es) {missing} of {first['process_count']}")
    owner: dict[int, str] = {}
    K = first["settings"].get("images_per_prompt", DEFAULT_IMAGES_PER_PROMPT)
    for p, m in zip(parts, manifests):
        for i in m["indices"]:
            if i in owner:
                raise ValueError(f"prompt folder {i:05d} is in two parts: {owner[i]} and {p}")
            owner[i] = p
            folder = prompt_folder(p, i)
            try:
                with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                record = None
            if record is None or not folder_is_complete(folder, record, K):
                raise ValueError(f"part {p} is unfinished: prompt folder {i:05d} is missing or incomplete "
                                 "(rerun that process with the same options to finish it)")
    if len(owner) != first["selected"]:
        raise ValueError(f"the parts hold {len(owner)} prompt folders, the run has {first['selected']}")
    merged = _manifest(first["settings"], sorted(owner), first["selected"], 0, 1)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, RUN_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(merged, indent=1) + "\n")
        for i, p in sorted(owner.items()):
            shutil.copytree(prompt_folder(p, i), prompt_folder(tmp, i))
    return os.fspath(out)
