"""Model bundles: a folder of model parts plus `bundle.json`, the one source of its defaults.

A bundle is what `pipeline.load_pipeline(path)` loads. It is data, like a checkpoint: its
manifest says what it is, never which code to run:

    {
      "format": 1,
      "kind": "shapes-world",                       # its model family: a name in the loader table
      "name": "shapes world (trained)",             # optional; shown in logs and result.json
      "image_size": 48,                             # pixels; checked against the loaded VQ and GPT
      "parts": {"vq": "vq", "gpt": "gpt", ...},     # part name -> folder inside the bundle
      "sampling": {"cfg_scale": 2.0, "top_k": 16, ...},   # SamplingConfig fields
      "scaling": {"probation_steps": 2, "p": 0.2},  # ScalingARConfig fields that differ from the paper's
      "options": {...},                             # optional, for the loader (names and numbers only)
      "notes": "..."                                # optional, for people
    }

The kind is looked up in a table in code (`scalingar_jax.registry`: the built-in kinds
"shapes-world", "llamagen-t2i", "llamagen-c2i"; a model family outside the package registers
its own with `register_loader(kind, fn)` or an entry point), whose loader is called as
`loader(bundle, **options) -> Pipeline`; this module and `pipeline` never import the code of a
model family. A manifest of an earlier version may still carry `"loader": "module:function"`:
it is read only when it is exactly the built-in loader of its kind (then ignored), and refused
otherwise.

The manifest is read as data within bounds (`MAX_MANIFEST_BYTES`, a regular file); every part
folder, and every file in it, must lie inside the bundle (a symbolic link out of it is
refused); every sampling and scaling field is range-checked here, naming the field and the file.
The sampling and scaling defaults of a bundle live here and nowhere else; command-line flags
and keyword arguments override them.

The default bundle is `$SCALINGAR_CHECKPOINT` if set, else the embedded shapes-world bundle:
`checkpoints/shapes`, shipped inside the installed package as `scalingar_jax/checkpoints/shapes`
(a wheel install) and found at the repository's top level in a checkout or an editable install.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from scalingar_jax import registry
from scalingar_jax.config import SamplingConfig
from scalingar_jax.inputs import check_links, read_json_object, shown
from scalingar_jax.registry import register_loader
from scalingar_jax.scaling.config import ScalingARConfig

__all__ = ["Bundle", "read_bundle", "parse_manifest", "manifest_record", "write_manifest", "default_bundle_path",
           "register_loader", "MANIFEST_FILE", "MAX_MANIFEST_BYTES"]

MANIFEST_FILE = "bundle.json"
FORMAT = 1
ENV_VAR = "SCALINGAR_CHECKPOINT"
MAX_MANIFEST_BYTES = 1 << 20  # as a model's config.json
MAX_PARTS = 16
MAX_IMAGE_SIZE = 1 << 16
MAX_TEXT = 10_000  # characters of "name" and "notes"
_REQUIRED = ("format", "kind", "image_size", "parts", "sampling")
_OPTIONAL = ("name", "scaling", "options", "notes", "loader")  # "loader": earlier versions' manifests only


EMBEDDED = ("checkpoints", "shapes")  # the embedded bundle, inside the package (wheel) or the checkout


def default_bundle_path() -> Path:
    """$SCALINGAR_CHECKPOINT if set, else the embedded shapes-world bundle: the package data
    `scalingar_jax/checkpoints/shapes` of an installed wheel, or `checkpoints/shapes` at the top
    of the repository (a checkout, or an editable install of one)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    installed = importlib.resources.files("scalingar_jax").joinpath(*EMBEDDED)
    if isinstance(installed, Path) and (installed / MANIFEST_FILE).is_file():
        return installed
    return Path(__file__).resolve().parents[1].joinpath(*EMBEDDED)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A parsed, checked `bundle.json`. root: the bundle folder; parts: (name, folder) pairs
    whose folders exist; sampling/scaling: the bundle's defaults."""

    root: Path
    kind: str
    name: str
    image_size: int
    parts: tuple[tuple[str, str], ...]
    sampling: SamplingConfig
    scaling: ScalingARConfig
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    def has_part(self, name: str) -> bool:
        return name in dict(self.parts)

    def part(self, name: str) -> Path:
        """The folder of part `name`; `KeyError` naming the bundle and its parts if absent."""
        parts = dict(self.parts)
        if name not in parts:
            raise KeyError(f"bundle {self.root} has no part {name!r} (its parts: {sorted(parts)})")
        return self.root / parts[name]


def _fail(where, msg: str):
    raise ValueError(f"{where}: {msg}")


def _config(cls, fields, where, key: str):
    """`cls(**fields)` range-checked (the dataclass bounds every field); ValueError naming the
    file, the key and the field."""
    if not isinstance(fields, Mapping):
        _fail(where, f"{key!r} must be an object of {cls.__name__} fields, got {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        _fail(where, f"{key!r} has unknown {cls.__name__} fields {[str(u)[:40] for u in unknown[:10]]}")
    try:
        config = cls(**fields)
        return config.validate() if cls is SamplingConfig else config
    except (TypeError, ValueError, OverflowError) as e:
        _fail(where, f"{key!r}: {str(e)[:300]}")


def _parts(parts, root: Path, where) -> tuple[tuple[str, str], ...]:
    """(name, folder) of every part: a folder inside the bundle, reached by no link out of it,
    holding only folders and regular files (ValueError naming the part otherwise)."""
    if not isinstance(parts, Mapping) or not parts:
        _fail(where, "'parts' must be a non-empty object {part name: folder inside the bundle}")
    if len(parts) > MAX_PARTS:
        _fail(where, f"'parts' lists {len(parts)} parts, more than {MAX_PARTS}")
    out = []
    for name, folder in parts.items():
        rel = PurePosixPath(folder) if isinstance(folder, str) and len(folder) <= 255 else None
        if rel is None or not folder or rel.is_absolute() or ".." in rel.parts:
            _fail(where, f"part {shown(name, 40)}: {shown(folder)} is not a folder path inside the bundle")
        out.append((str(name), str(rel)))
    missing = [f"{n} ({root / f})" for n, f in out if not (root / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{where}: the bundle lacks parts {', '.join(missing)}")
    for n, f in out:
        check_links(root, root / f, f"{where}: part {n!r}")
    return tuple(out)


def parse_manifest(record: Any, root) -> Bundle:
    """Checks a manifest `record` (the JSON object of `bundle.json`) of the bundle at `root`.
    Raises ValueError naming the problem, FileNotFoundError for a part folder that is absent."""
    root = Path(root)
    where = root / MANIFEST_FILE
    if not isinstance(record, Mapping):
        _fail(where, f"the manifest must be a JSON object, got {type(record).__name__}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        _fail(where, f"missing keys {missing} (a bundle manifest needs {list(_REQUIRED)})")
    unknown = sorted(set(record) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        _fail(where, f"unknown keys {[str(u)[:40] for u in unknown[:10]]}; expected {list(_REQUIRED)} and "
                     f"optionally {list(_OPTIONAL[:-1])}")
    if record["format"] != FORMAT:
        _fail(where, f"manifest format {shown(record['format'])} is not supported (this version reads format {FORMAT})")
    for key in ("kind",) + tuple(k for k in ("name", "notes") if k in record):
        if not isinstance(record[key], str) or not record[key] or len(record[key]) > MAX_TEXT:
            _fail(where, f"{key!r} must be a non-empty string of at most {MAX_TEXT} characters, got "
                         f"{shown(record[key])}")
    kind = record["kind"]
    if kind not in registry.names("loader"):
        _fail(where, f"unknown bundle kind {shown(kind)}; known kinds: {', '.join(registry.names('loader'))} (a "
                     "model family outside this package registers its kind in code: bundle.register_loader)")
    if "loader" in record and not registry.is_builtin_reference("loader", kind, record["loader"]):
        _fail(where, f"'loader' {shown(record['loader'])} names code, which a bundle may not do: a bundle names "
                     f"its kind only ({kind!r} here; known kinds: {', '.join(registry.names('loader'))}); "
                     "remove 'loader'")
    size = record["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        _fail(where, f"'image_size' must be an integer in [1, {MAX_IMAGE_SIZE}] (pixels), got {shown(size)}")
    options = record.get("options", {})
    if not isinstance(options, Mapping):
        _fail(where, f"'options' must be an object, got {type(options).__name__}")
    for key, value in options.items():
        if not (value is None or isinstance(value, (str, int, float, bool))) or (isinstance(value, str)
                                                                                 and len(value) > 1000):
            _fail(where, f"option {shown(key, 40)} must be a name or a number, got {shown(value)}")
    return Bundle(root=root, kind=kind, name=record.get("name", f"{kind} ({root})"), image_size=size,
                  parts=_parts(record["parts"], root, where),
                  sampling=_config(SamplingConfig, record["sampling"], where, "sampling"),
                  scaling=_config(ScalingARConfig, record.get("scaling", {}), where, "scaling"),
                  options=tuple(options.items()))


def read_bundle(path=None) -> Bundle:
    """Reads and checks `<path>/bundle.json` (default path: `default_bundle_path()`), a regular
    file of at most `MAX_MANIFEST_BYTES`. Raises FileNotFoundError (no such folder, no manifest,
    a part folder absent) or ValueError (malformed manifest, a link out of the bundle), each
    naming the path."""
    root = (Path(path).expanduser() if path is not None else default_bundle_path()).absolute()
    if not root.is_dir():
        hint = "" if path is not None else (f" (the default bundle: set ${ENV_VAR} or pass a bundle folder; the "
                                            "embedded one ships with the package and the repository checkout)")
        raise FileNotFoundError(f"no model bundle at {root}: no such folder{hint}")
    manifest = root / MANIFEST_FILE
    if not os.path.lexists(manifest):
        raise FileNotFoundError(f"{root} is not a model bundle: it has no {MANIFEST_FILE} (the manifest naming "
                                "its kind, parts and sampling defaults)")
    check_links(root, manifest, str(root))
    return parse_manifest(read_json_object(manifest, MAX_MANIFEST_BYTES, str(manifest)), root)


def manifest_record(*, kind: str, image_size: int, parts: Mapping[str, str], sampling: SamplingConfig,
                    scaling: ScalingARConfig = ScalingARConfig(), name: str | None = None,
                    options: Mapping[str, Any] | None = None, notes: str | None = None) -> dict:
    """The JSON object of a manifest; `scaling` is stored as its fields that differ from the
    paper's defaults (`ScalingARConfig()`)."""
    default = ScalingARConfig()
    changed = {f.name: getattr(scaling, f.name) for f in dataclasses.fields(scaling)
               if getattr(scaling, f.name) != getattr(default, f.name)}
    record = {"format": FORMAT, "kind": kind, "name": name, "image_size": image_size,
              "parts": dict(parts), "sampling": dataclasses.asdict(sampling), "scaling": changed,
              "options": dict(options) if options else None, "notes": notes}
    return {k: v for k, v in record.items() if v is not None}


def write_manifest(path, **fields) -> Path:
    """Writes `<path>/bundle.json` atomically from `manifest_record(**fields)`, after checking
    it as `read_bundle` will (so a bad manifest is never written). Returns the file's path."""
    from scalingar_jax.atomic import atomic_write_text

    record = manifest_record(**fields)
    parse_manifest(json.loads(json.dumps(record)), path)
    target = Path(path) / MANIFEST_FILE
    atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target
