"""Model bundles: a folder of model parts plus `bundle.json`, the one source of its defaults.

A bundle is what `pipeline.load_pipeline(path)` loads. Its manifest says what it is and how
to load it:

    {
      "format": 1,
      "kind": "shapes-world",                       # what the folder holds (free text, for people)
      "loader": "scalingar_jax.world.pipeline:pipeline_from_bundle",
      "name": "shapes world (trained)",             # optional; shown in logs and result.json
      "image_size": 48,                             # pixels; checked against the loaded VQ and GPT
      "parts": {"vq": "vq", "gpt": "gpt", ...},     # part name -> folder inside the bundle
      "sampling": {"cfg_scale": 2.0, "top_k": 16, ...},   # SamplingConfig fields
      "scaling": {"Delta_rec": 2, "p": 0.2},        # ScalingARConfig fields that differ from the paper's
      "options": {...},                             # optional, for the loader
      "notes": "..."                                # optional, for people
    }

The sampling and scaling defaults of a bundle live here and nowhere else; command-line flags
and keyword arguments override them. The loader is a `"module:function"` reference inside this
package (see `references`), called as `loader(bundle, **options) -> Pipeline`: this module and
`pipeline` never import the code of a model family (the shapes world registers nothing; its
bundles name its loader).

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

from scalingar_jax.config import SamplingConfig
from scalingar_jax.scaling.config import ScalingARConfig

MANIFEST_FILE = "bundle.json"
FORMAT = 1
ENV_VAR = "SCALINGAR_CHECKPOINT"
_REQUIRED = ("format", "kind", "loader", "image_size", "parts", "sampling")
_OPTIONAL = ("name", "scaling", "options", "notes")


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
    loader: str
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
    if not isinstance(fields, Mapping):
        _fail(where, f"{key!r} must be an object of {cls.__name__} fields, got {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        _fail(where, f"{key!r} has unknown {cls.__name__} fields {unknown}")
    try:
        config = cls(**fields)
        return config.validate() if cls is SamplingConfig else config
    except (TypeError, ValueError) as e:
        _fail(where, f"{key!r}: {e}")


def _parts(parts, root: Path, where) -> tuple[tuple[str, str], ...]:
    if not isinstance(parts, Mapping) or not parts:
        _fail(where, "'parts' must be a non-empty object {part name: folder inside the bundle}")
    out = []
    for name, folder in parts.items():
        rel = PurePosixPath(folder) if isinstance(folder, str) else None
        if rel is None or not folder or rel.is_absolute() or ".." in rel.parts:
            _fail(where, f"part {name!r}: {folder!r} is not a folder path inside the bundle")
        out.append((str(name), str(rel)))
    missing = [f"{n} ({root / f})" for n, f in out if not (root / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{where}: the bundle lacks parts {', '.join(missing)}")
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
        _fail(where, f"unknown keys {unknown}; expected {list(_REQUIRED)} and optionally {list(_OPTIONAL)}")
    if record["format"] != FORMAT:
        _fail(where, f"manifest format {record['format']!r} is not supported (this version reads format {FORMAT})")
    for key in ("kind", "loader") + (("name",) if "name" in record else ()):
        if not isinstance(record[key], str) or not record[key]:
            _fail(where, f"{key!r} must be a non-empty string, got {record[key]!r}")
    size = record["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        _fail(where, f"'image_size' must be a positive integer (pixels), got {size!r}")
    options = record.get("options", {})
    if not isinstance(options, Mapping):
        _fail(where, f"'options' must be an object, got {type(options).__name__}")
    return Bundle(root=root, kind=record["kind"], loader=record["loader"],
                  name=record.get("name", f"{record['kind']} ({root})"), image_size=size,
                  parts=_parts(record["parts"], root, where),
                  sampling=_config(SamplingConfig, record["sampling"], where, "sampling"),
                  scaling=_config(ScalingARConfig, record.get("scaling", {}), where, "scaling"),
                  options=tuple(options.items()))


def read_bundle(path=None) -> Bundle:
    """Reads and checks `<path>/bundle.json` (default path: `default_bundle_path()`).
    Raises FileNotFoundError (no such folder, no manifest, a part folder absent) or ValueError
    (malformed manifest), each naming the path."""
    root = (Path(path).expanduser() if path is not None else default_bundle_path()).absolute()
    if not root.is_dir():
        hint = "" if path is not None else (f" (the default bundle: set ${ENV_VAR} or pass a bundle folder; the "
                                            "embedded one ships with the package and the repository checkout)")
        raise FileNotFoundError(f"no model bundle at {root}: no such folder{hint}")
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a model bundle: it has no {MANIFEST_FILE} (the manifest naming "
                                "its loader, parts and sampling defaults)")
    try:
        record = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest}: not valid JSON ({e})") from None
    return parse_manifest(record, root)


def manifest_record(*, kind: str, loader: str, image_size: int, parts: Mapping[str, str], sampling: SamplingConfig,
                    scaling: ScalingARConfig = ScalingARConfig(), name: str | None = None,
                    options: Mapping[str, Any] | None = None, notes: str | None = None) -> dict:
    """The JSON object of a manifest; `scaling` is stored as its fields that differ from the
    paper's defaults (`ScalingARConfig()`)."""
    default = ScalingARConfig()
    changed = {f.name: getattr(scaling, f.name) for f in dataclasses.fields(scaling)
               if getattr(scaling, f.name) != getattr(default, f.name)}
    record = {"format": FORMAT, "kind": kind, "loader": loader, "name": name, "image_size": image_size,
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
