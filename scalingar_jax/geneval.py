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

import contextlib
import hashlib
import json
import os
import shutil
import stat
from typing import Any, Callable, Sequence

import numpy as np

from scalingar_jax.atomic import atomic_dir, atomic_write_text, recover
from scalingar_jax.inputs import read_json_object, shown

__all__ = ["TAGS", "RELATIONS", "RECORD_KEYS", "INCLUDE_KEYS", "EXCLUDE_KEYS", "validate_record",
           "read_jsonl_records", "RUN_FILE", "DEFAULT_IMAGES_PER_PROMPT", "RunMismatch", "read_prompt_file",
           "select_records", "prompt_folder", "write_prompt_folder", "read_folder_record", "folder_is_complete", "prompt_run_ids",
           "check_run_folder", "prepare_run", "run_prompts", "merge_runs", "file_sha256", "run_lock", "RunLocked",
           "LOCK_FILE"]

RUN_FILE = "scalingar_run.json"
LOCK_FILE = ".scalingar_run.lock"  # held by the run writing the folder (`run_lock`)
RUN_FORMAT = 1
DEFAULT_IMAGES_PER_PROMPT = 4  # GenEval's `--n_samples` default
MAX_RECORDS = 100000           # prompt folders 00000 .. 99999
MAX_IMAGES_PER_PROMPT = 1000   # keeps prompt ids i * K + k inside int32 for MAX_RECORDS prompts
MAX_LINE_BYTES = 64 << 10      # one record of a prompt file (GenEval's longest is 224 bytes)
MAX_PROMPT_FILE_BYTES = 16 << 20  # a prompt file (GenEval's: 553 records in 85 KB; 100,000 such: 15 MB)
MAX_PROCESSES = 100000         # --process-count
MAX_MANIFEST_BYTES = 16 << 20  # scalingar_run.json (100,000 indices take 0.8 MB)
MAX_ENTRIES = 64               # include / exclude entries of one record (GenEval's have at most 2)


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
        fail(f"unexpected key(s) {shown(extra)}; a record has keys {list(RECORD_KEYS)}")
    if record["tag"] not in TAGS:
        fail(f"tag {shown(record['tag'])} is not one of {list(TAGS)}")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        fail(f"prompt must be a non-empty string, got {shown(record['prompt'])}")
    include = record["include"]
    if not isinstance(include, list) or not include or len(include) > MAX_ENTRIES:
        fail(f"include must be a non-empty list of at most {MAX_ENTRIES} entries, got {shown(include)}")
    for i, e in enumerate(include):
        _validate_entry(e, INCLUDE_KEYS, f"include[{i}]", fail)
        if "color" in e and (not isinstance(e["color"], str) or not e["color"]):
            fail(f"include[{i}].color must be a non-empty string, got {shown(e['color'])}")
        if "position" in e:
            pos = e["position"]
            if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                    or not _is_int(pos[1])):
                fail(f"include[{i}].position must be [relation, index] with relation in "
                     f"{list(RELATIONS)}, got {shown(pos)}")
            if not 0 <= pos[1] < i:
                fail(f"include[{i}].position index {pos[1]} must point at an earlier include "
                     f"entry (0..{i - 1})")
    if "exclude" in record:
        exclude = record["exclude"]
        if not isinstance(exclude, list) or len(exclude) > MAX_ENTRIES:
            fail(f"exclude must be a list of at most {MAX_ENTRIES} entries, got {shown(exclude)}")
        for i, e in enumerate(exclude):
            _validate_entry(e, EXCLUDE_KEYS, f"exclude[{i}]", fail)


def _validate_entry(e: Any, keys: tuple[str, ...], name: str, fail) -> None:
    if not isinstance(e, dict):
        fail(f"{name} must be an object, got {shown(e)}")
    for k in ("class", "count"):
        if k not in e:
            fail(f"{name} is missing {k!r}")
    extra = sorted(set(e) - set(keys))
    if extra:
        fail(f"{name} has unexpected key(s) {shown(extra)}; allowed {list(keys)}")
    if not isinstance(e["class"], str) or not e["class"]:
        fail(f"{name}.class must be a non-empty string, got {shown(e['class'])}")
    if not _is_int(e["count"]) or e["count"] < 1:
        fail(f"{name}.count must be an int >= 1, got {shown(e['count'])}")


def read_jsonl_records(path, *, validate: Callable[..., None] | None = None,
                       max_records: int = MAX_RECORDS) -> list[tuple[int, dict]]:
    """A .jsonl file (one JSON value per non-blank line) -> [(line number, record), ...].

    Read as data within bounds (`inputs.read_lines`): a regular UTF-8 file of at most
    MAX_PROMPT_FILE_BYTES, lines of at most MAX_LINE_BYTES checked before they are parsed,
    records streamed and counted (more than `max_records` is an error as soon as one more is
    read). Every record is checked with `validate(record, where="<path>:<line>")` (default:
    GenEval's schema, `validate_record`); every error is a ValueError naming file and line
    (FileNotFoundError / IsADirectoryError for a missing file or a folder).
    """
    from scalingar_jax.inputs import read_lines

    validate = validate_record if validate is None else validate
    name = os.fspath(path)
    out = []
    for lineno, line in read_lines(path, name, max_line=MAX_LINE_BYTES, max_bytes=MAX_PROMPT_FILE_BYTES):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        if len(out) == max_records:
            raise ValueError(f"{where}: more than {max_records} records (5-digit prompt folders hold {MAX_RECORDS})")
        try:
            record = json.loads(line)
        except RecursionError:
            raise ValueError(f"{where}: the JSON nests too deeply") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({str(err)[:120]})") from None
        validate(record, where=where)
        out.append((lineno, record))
    return out


# ---------------------------------------------------------------------------- prompt file

def read_prompt_file(path, *, check: Callable[[dict], None] | None = None,
                     skip_unsupported: bool = False) -> tuple[list[tuple[int, dict]], list[str]]:
    """GenEval's .jsonl prompt file -> ([(index, record), ...], skipped).

    Read within bounds (`read_jsonl_records`: at most MAX_RECORDS records). Every record is
    checked against GenEval's schema (tags, include/exclude entries, positions; errors name the
    file and line). index: the record's position among the file's records. check and
    skip_unsupported: see `select_records`.
    """
    return select_records(read_jsonl_records(path), path, check=check, skip_unsupported=skip_unsupported)


def select_records(records: Sequence[tuple[int, dict]], path, *, check: Callable[[dict], None] | None = None,
                   skip_unsupported: bool = False) -> tuple[list[tuple[int, dict]], list[str]]:
    """The (line number, record) pairs of prompt file `path` (`read_jsonl_records`) -> ([(index,
    record), ...], skipped), index the record's position in the file. check: the model's own test
    of a record (e.g. the shapes world's vocabulary), raising ValueError; a failing record is an
    error naming the line, tag and prompt, or with `skip_unsupported` it is left out and
    described in `skipped` (one string per record)."""
    kept, skipped = [], []
    for index, (lineno, record) in enumerate(records):
        if check is not None:
            try:
                check(record)
            except ValueError as err:
                what = (f"{os.fspath(path)}:{lineno} (tag {record['tag']!r}, prompt {shown(record['prompt'])}) is "
                        f"not supported by this model: {str(err)[:300]}")
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


def read_folder_record(folder) -> dict:
    """The record (a JSON object) in `<folder>/metadata.jsonl`, read as a regular file of at most
    `MAX_LINE_BYTES` (a FIFO or device is refused unread, never waited on). Raises
    FileNotFoundError, IsADirectoryError or ValueError naming the file; the record is not
    checked against the schema (`validate_record`)."""
    path = os.path.join(os.fspath(folder), "metadata.jsonl")
    return read_json_object(path, MAX_LINE_BYTES, repr(path))


def folder_is_complete(folder, record: dict, images_per_prompt: int) -> bool:
    """True if `folder` holds metadata.jsonl equal to `record`, grid.png and exactly the
    samples 0000.png .. (K-1).png (what `write_prompt_folder` writes, renamed in whole)."""
    try:
        if read_folder_record(folder) != record:
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
    """The run manifest of `out`, checked (None if there is none): a regular file (not a link) of
    at most MAX_MANIFEST_BYTES whose fields have the types and ranges `_manifest` writes."""
    path = os.path.join(out, RUN_FILE)
    if not os.path.lexists(path):
        return None
    start_over = "; pass --overwrite to start over"
    if os.path.islink(path):
        raise RunMismatch(f"{path}: is a symbolic link, not a run manifest{start_over}")
    try:
        m = read_json_object(path, MAX_MANIFEST_BYTES, path)
    except (OSError, ValueError) as e:
        raise RunMismatch(f"not a readable run manifest ({e}){start_over}") from None
    if m.get("format") != RUN_FORMAT:
        raise RunMismatch(f"{path}: not a run manifest of this version{start_over}")
    ints = {"process_index": (0, MAX_PROCESSES - 1), "process_count": (1, MAX_PROCESSES),
            "selected": (0, MAX_RECORDS)}
    for key, (lo, hi) in ints.items():
        if not _is_int(m.get(key)) or not lo <= m[key] <= hi:
            raise RunMismatch(f"{path}: {key!r} must be an integer in [{lo}, {hi}], got {shown(m.get(key))}"
                              f"{start_over}")
    if m["process_index"] >= m["process_count"] or not isinstance(m.get("settings"), dict):
        raise RunMismatch(f"{path}: 'process_index' must be below 'process_count' and 'settings' an object"
                          f"{start_over}")
    indices = m.get("indices")
    bad = next((i for i in indices if not _is_int(i) or not 0 <= i < MAX_RECORDS), None) \
        if isinstance(indices, list) else indices
    if not isinstance(indices, list) or bad is not None or len(set(indices)) != len(indices):
        raise RunMismatch(f"{path}: 'indices' must be a list of distinct prompt indices (integers in [0, "
                          f"{MAX_RECORDS - 1}]), got {shown(bad if bad is not None else indices)}{start_over}")
    return m


def _is_ours(name: str) -> bool:
    """Entries a run writes at the top of its folder: prompt folders, the manifest and the
    temp leftovers of their atomic writes (`.00012.tmp-...`, `.scalingar_run.json.123-...`)
    (and the run's lock, `LOCK_FILE`, which --overwrite keeps)."""
    if (len(name) == 5 and name.isdigit()) or name == LOCK_FILE:
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
            if _is_ours(e) and e != LOCK_FILE:
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


class RunLocked(ValueError):
    """The run folder is being written by another live run."""


def _lock_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(out):
    """Holds the lock of the run folder `out` (created if missing) while the body runs: one
    `generate --prompts` at a time writes a run. The lock is `<out>/LOCK_FILE`, held with
    `flock` and naming its holder ({"pid", "host", "since"}); it is removed on exit.

    Raises `RunLocked` naming the holder when another process holds it; or when the file names
    a process on another host (where neither the flock nor the pid can be trusted on every
    shared file system: the message says to delete the file if that run is gone). A lock left by
    a dead process of this host is taken over."""
    import fcntl
    import socket
    import time

    out = os.path.abspath(os.fspath(out))
    created = []  # the folders made here, deepest first: removed again if the run leaves them empty
    folder = out
    while not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            _remove_empty(created)
            raise RunLocked(f"output folder {out} is being written by another run (pid {shown(holder.get('pid'))} on "
                            f"host {shown(holder.get('host'))}, since {shown(holder.get('since'))}): wait for it to "
                            "finish, or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file its holder unlinked meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        holder = _lock_holder(fd)
        if holder and holder.get("host") != host:
            raise RunLocked(f"{path} names a run of pid {shown(holder.get('pid'))} on host {shown(holder.get('host'))} "
                            f"(since {shown(holder.get('since'))}): if that run is gone, delete the file and rerun")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    except BaseException:
        os.close(fd)
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: kept
            os.rmdir(folder)


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


def _part_files(part: str, index: int, images_per_prompt: int) -> list[str]:
    """The files of prompt folder `index` of part `part` that a run writes (metadata.jsonl,
    grid.png, samples/0000.png ...), relative to the folder, once it is checked to be complete
    and read without following links: ValueError naming the part for a symbolic link or anything
    but a real folder or regular file on the way, or an incomplete folder."""
    folder = prompt_folder(part, index)
    files = ["metadata.jsonl", "grid.png"] + [f"samples/{k:04d}.png" for k in range(images_per_prompt)]
    unfinished = ValueError(f"part {part} is unfinished: prompt folder {index:05d} is missing or incomplete (rerun "
                            "that process with the same options to finish it)")
    for rel, want_dir in [("", True), ("samples", True)] + [(f, False) for f in files]:
        path = os.path.join(folder, rel) if rel else folder
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise unfinished from None
        if stat.S_ISLNK(mode):
            raise ValueError(f"part {part}: {os.path.relpath(path, part)} is a symbolic link; parts are read without "
                             "following links (copy the real files into the part)")
        if not (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
            raise unfinished
    try:
        record = read_folder_record(folder)
        validate_record(record)
        samples = sorted(os.listdir(os.path.join(folder, "samples")))
    except (OSError, ValueError, RecursionError):
        raise unfinished from None
    if samples != [f"{k:04d}.png" for k in range(images_per_prompt)]:
        raise unfinished
    return files


def _copy_regular(src: str, dst: str) -> None:
    """Copies the regular file `src` (never through a link: O_NOFOLLOW) to the new file `dst`."""
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def merge_runs(parts: Sequence, out, *, overwrite: bool = False) -> str:
    """Joins the part folders of a split run (`prepare_run` with process_index 0..K-1) into `out`,
    the folder one process would have written (same manifest, same prompt folders). Refuses
    (ValueError) parts with different settings, a missing or repeated process index, an
    unfinished part (a prompt folder of its share missing or incomplete), overlapping shares,
    shares that do not add up to the run's records, a manifest that is not one, or a symbolic
    link anywhere in what is copied (parts are read without following links);
    FileExistsError if `out` exists and not `overwrite`. Atomic. Returns `out`."""
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
        raise ValueError(f"missing the part(s) of process(es) {missing[:20]} of {first['process_count']}")
    K = first["settings"].get("images_per_prompt", DEFAULT_IMAGES_PER_PROMPT)
    if not _is_int(K) or not 1 <= K <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(f"part {parts[0]}: images_per_prompt must be in [1, {MAX_IMAGES_PER_PROMPT}], got {shown(K)}")
    owner: dict[int, tuple[str, list[str]]] = {}
    for p, m in zip(parts, manifests):
        for i in m["indices"]:
            if i in owner:
                raise ValueError(f"prompt folder {i:05d} is in two parts: {owner[i][0]} and {p}")
            owner[i] = (p, _part_files(p, i, K))
    if len(owner) != first["selected"]:
        raise ValueError(f"the parts hold {len(owner)} prompt folders, the run has {first['selected']}")
    merged = _manifest(first["settings"], sorted(owner), first["selected"], 0, 1)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, RUN_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(merged, indent=1) + "\n")
        for i, (p, files) in sorted(owner.items()):
            dst = prompt_folder(tmp, i)
            os.makedirs(os.path.join(dst, "samples"))
            for rel in files:
                _copy_regular(os.path.join(prompt_folder(p, i), rel), os.path.join(dst, rel))
    return os.fspath(out)
