"""`scalingar convert`: PyTorch LlamaGen checkpoints <-> scalingar-jax model directories.

Library functions (the command is a thin layer over them):
  convert(src, dst, ...)        .pt/.pth/.bin (torch zip) or .safetensors -> model directory
  export(model_dir, out, ...)   model directory -> .safetensors or .pt in LlamaGen's layout
  verify(model_dir, sd, ...)    converted model vs an independent reference on random inputs
  main(argv) -> exit status     the command line (0 ok, 1 verification failed, 2 bad input)

Neither direction needs torch, and a checkpoint's pickle is never executed (see
`scalingar_jax.convert.torch_pickle`). Outputs are written atomically: on any error nothing is
left at the destination (nor the folders created for it).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["convert", "export", "verify", "main", "build_parser", "DEFAULT_TOLERANCE"]

DESCRIPTION = """\
Convert a PyTorch LlamaGen checkpoint (GPT or VQ tokenizer) to a scalingar-jax model directory
(config.json + orbax params/), or with --export convert such a directory back to LlamaGen's
PyTorch layout. torch is not needed and the checkpoint's pickle is never executed: only tensor
records and plain containers are accepted.

The model kind (GPT c2i/t2i or VQ) and its config are inferred from the weights. Two GPT
fields are not stored in them: the number of heads (taken from the LlamaGen preset with the
same depth and width; --set n_head=N otherwise) and the image-token grid (from the training
args in the file, else from 256/384/512 in the file name; --grid-size otherwise). For a VQ,
the GroupNorm group count is LlamaGen's 32 unless --set norm_groups=N.
"""

EPILOG = """\
examples:
  scalingar convert c2i_XL_384.pt models/c2i_XL_384 --verify     # grid 24 from the name
  scalingar convert t2i_XL_stage2_512.pt models/t2i_XL_512 --dtype bfloat16
  scalingar convert vq_ds16_t2i.pt models/vq16 --verify --llamagen-src ~/src/LlamaGen
  scalingar convert my_run.pt models/x --grid-size 16 --set n_head=20
  scalingar convert --export models/t2i_XL_512 t2i_XL_512.safetensors
  scalingar convert --export models/vq16 vq16.pt --key model

verification (--verify): after writing, the converted model is loaded back and run on small
random inputs (batch 2: for a GPT a few image tokens, enough to reach the second grid row, with
a null-condition row and, for t2i, ragged left-padded caption masks; for a VQ a 3 x 4 code
grid), and compared with an independent reference computed from the PyTorch-layout state dict:
by default a float64 NumPy forward pass written for this purpose
(scalingar_jax/convert/reference.py), with --llamagen-src the original LlamaGen PyTorch code
imported from your checkout (needs torch). It prints the largest absolute and relative
(divided by the largest reference value) difference of the logits / pixels. With --export,
the exported file is read back and checked the same way.

exit status: 0 success, 1 verification failed (the output is removed), 2 bad input or
options (one line on stderr; nothing is written).
"""

# Largest relative difference --verify accepts, by the converted parameter dtype.
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
_EXPORT_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch"}


class UsageError(ValueError):
    """Options that do not fit together."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k.isidentifier() or len(v) > 200:
            raise UsageError(f"--set expects FIELD=VALUE with a field name and a short value, got {item[:80]!r}")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[k] = v  # a bare string
    return out


_SIZE_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """A byte count from `--max-bytes`: an integer with an optional K/M/G/T (binary) suffix."""
    import re

    m = re.fullmatch(r"\s*(\d{1,15})\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a byte count such as 4G or 500M, got {text[:40]!r}")
    n = int(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()]
    if not 1 <= n <= 1 << 50:
        raise argparse.ArgumentTypeError(f"a byte count in [1, 1P], got {text[:40]!r}")
    return n


def _check_finite(params, what: str) -> None:
    """Refuses NaN/inf parameters (`--allow-non-finite` skips this), naming the first leaves."""
    from scalingar_jax.checkpoint import non_finite_leaves

    bad = non_finite_leaves(params)
    if bad:
        listed = ", ".join(f"{p} ({n})" for p, n in bad[:5])
        raise ValueError(f"{what}: {len(bad)} parameter tensor(s) hold NaN or inf values: {listed}"
                         f"{' ...' if len(bad) > 5 else ''}; pass --allow-non-finite to convert anyway")


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def _hint_fields(config) -> dict:
    """The config fields an export stores beside the weights (all but the dtypes)."""
    return {k: v for k, v in _jsonable(dataclasses.asdict(config)).items() if k not in ("param_dtype", "dtype")}


def _from_hint(hint: dict | None, cls) -> dict:
    if not hint:
        return {}
    names = {f.name for f in dataclasses.fields(cls)} - {"param_dtype", "dtype"}
    out = {k: v for k, v in hint.items() if k in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


class _Destination:
    """Checks an output path before any work, and removes what a failed run created."""

    def __init__(self, path, *, overwrite: bool, what: str):
        self.path = Path(path).absolute()
        if self.path.exists() or self.path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{what} {self.path} already exists (pass --overwrite to replace it)")
            if what == "output file" and self.path.is_dir():
                raise IsADirectoryError(f"output file {self.path} is a directory")
            if what == "output directory" and not self.path.is_dir():
                raise NotADirectoryError(f"output directory {self.path} exists and is not a directory")
        anc = self.path.parent
        self.created: list[Path] = []  # parents that do not exist yet, deepest first
        while not anc.exists():
            self.created.append(anc)
            anc = anc.parent
        if not anc.is_dir():
            raise NotADirectoryError(f"cannot create {self.path}: {anc} is not a directory")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create {self.path}: {anc} is not writable")

    def cleanup(self, *, remove_output: bool) -> None:
        """Removes the output (if `remove_output`) and the parent folders created for it."""
        if remove_output and (self.path.exists() or self.path.is_symlink()):
            if self.path.is_dir():
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                self.path.unlink(missing_ok=True)
        for d in self.created:  # only if empty
            try:
                d.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# PyTorch -> orbax
# --------------------------------------------------------------------------------------------


def _infer(src, sd, meta, *, kind, dtype, grid_size, overrides):
    """(kind, config) of the state dict `sd` read from `src` (`load_checkpoint`), from the
    weight shapes alone (no tensor is read)."""
    from scalingar_jax.convert import mapping as M

    overrides = dict(overrides or {})
    found = M.detect_model_kind(sd)
    if kind == "auto":
        if found is None:
            raise ValueError(f"{src}: cannot tell whether this is a GPT or a VQ tokenizer (keys: {sorted(sd)[:8]})")
        kind = found
    hint = meta.get("scalingar_config")
    if kind == "gpt":
        from scalingar_jax.config import GPTConfig

        if grid_size is not None:
            overrides["grid_size"] = grid_size
        fields = M.infer_gpt_config(sd, file_name=str(src), args=meta.get("args"),
                                    **{**_from_hint(hint, GPTConfig), **overrides})
        return kind, GPTConfig(**{**fields, "param_dtype": dtype}).validate()
    if kind == "vq":
        from scalingar_jax.vq import VQConfig

        if grid_size is not None:
            raise UsageError("--grid-size applies to GPT checkpoints only")
        fields = M.infer_vq_config(sd, **{**_from_hint(hint, VQConfig), **overrides})
        return kind, VQConfig(**{**fields, "param_dtype": dtype}).validate()
    raise UsageError(f"unknown kind {kind!r}; expected auto, gpt or vq")


def peek(src, *, kind: str = "auto", dtype: str = "float32", key: str | None = None, grid_size: int | None = None,
         overrides: dict | None = None, max_bytes: int | None = None):
    """(kind, config) that `convert` would give for the LlamaGen checkpoint `src`, read from the
    tensor shapes only (torch-free, no weight materialised; cheap even for a multi-GB file).
    Same arguments and errors as `convert`'s config inference."""
    from scalingar_jax.convert import load_checkpoint

    sd, meta = load_checkpoint(src, key=key, max_bytes=max_bytes)
    return _infer(src, sd, meta, kind=kind, dtype=dtype, grid_size=grid_size, overrides=overrides)


def _convert(src, dst, *, kind, dtype, key, grid_size, overrides, strict, overwrite, log, before_save=None,
             max_bytes=None, allow_non_finite=False):
    from scalingar_jax.checkpoint import save_model
    from scalingar_jax.convert import load_checkpoint
    from scalingar_jax.convert import mapping as M

    t0 = time.perf_counter()
    sd, meta = load_checkpoint(src, key=key, max_bytes=max_bytes)
    kind, config = _infer(src, sd, meta, kind=kind, dtype=dtype, grid_size=grid_size, overrides=overrides)
    other = {k: v for k, v in (meta.get("other_keys") or {}).items() if k != "scalingar_config"}
    if other:
        log(f"weights under {meta['wrapper']!r}; also in the file (ignored): {other}")
    if before_save:
        before_save(kind, config, sd)
    if kind == "gpt":
        params = M.torch_to_flax_gpt(sd, config, dtype=dtype, strict=strict)
    else:
        params = M.torch_to_flax_vq(sd, config, dtype=dtype, strict=strict)
    if not allow_non_finite:
        _check_finite(params, str(src))
    t1 = time.perf_counter()
    record = {
        "source": str(Path(src).resolve()), "source_format": meta.get("format"), "wrapper": meta.get("wrapper"),
        "steps": meta.get("steps"), "train_args": _jsonable(meta.get("args")), "converted_dtype": dtype,
    }
    save_model(dst, params, config, kind=kind, meta=record, overwrite=overwrite)
    del params
    log(f"converted {kind} {src} -> {dst} in {t1 - t0:.1f} s (+ {time.perf_counter() - t1:.1f} s to save)")
    return kind, config, sd


def convert(src, dst, *, kind: str = "auto", dtype: str = "float32", key: str | None = None,
            grid_size: int | None = None, overrides: dict | None = None, strict: bool = True,
            overwrite: bool = False, max_bytes: int | None = None, allow_non_finite: bool = False,
            log: Callable[[str], None] = print):
    """Converts the LlamaGen checkpoint `src` (.pt/.pth/.bin torch zip, or .safetensors) into
    the model directory `dst` (`scalingar_jax.checkpoint.save_model` layout, written
    atomically; load it with `scalingar_jax.checkpoint.load_model`).

    kind: "auto" (from the key names), "gpt" or "vq". dtype: parameter dtype of the output
    ("float32", "bfloat16", "float16"). key: top-level entry holding the weights (default
    model/module/state_dict). grid_size / overrides: config fields the weights do not hold
    (see `mapping.infer_gpt_config` / `infer_vq_config`); fields stored by `export` in the
    file are used unless overridden. strict: unknown keys are errors. max_bytes: byte budget for
    reading `src` (default `torch_pickle.default_max_bytes`: 2x the file size, at least 8 MiB;
    stride-0 and shared-storage views count in full). allow_non_finite: accept NaN/inf weights.
    Returns (kind, config). Raises ValueError/KeyError/OSError subclasses naming the problem;
    on error nothing is written.
    """
    dest = _Destination(dst, overwrite=overwrite, what="output directory")
    try:
        kind, config, _ = _convert(src, dst, kind=kind, dtype=dtype, key=key, grid_size=grid_size,
                                   overrides=overrides, strict=strict, overwrite=overwrite, log=log,
                                   max_bytes=max_bytes, allow_non_finite=allow_non_finite)
    except BaseException:
        dest.cleanup(remove_output=False)  # save_model never leaves a partial directory
        raise
    return kind, config


# --------------------------------------------------------------------------------------------
# orbax -> PyTorch
# --------------------------------------------------------------------------------------------


class _Deferred:
    """A tensor computed when written (`np.asarray`), with its shape and dtype known before."""

    __slots__ = ("shape", "dtype", "_fn")

    def __init__(self, shape, dtype, fn):
        self.shape, self.dtype, self._fn = tuple(shape), np.dtype(dtype), fn

    def __array__(self, dtype=None, copy=None):
        a = np.ascontiguousarray(self._fn(), dtype=self.dtype)
        return a if dtype is None else a.astype(dtype)


def _torch_layout(kind: str, params, config, dtype) -> dict[str, _Deferred]:
    """{PyTorch key: deferred tensor} in LlamaGen's state-dict order for a Flax tree (checked
    strictly first). Each tensor is a transposed/indexed view of `params`, copied when written."""
    from scalingar_jax.convert import mapping as M

    out_dt = M._np_dtype(dtype)
    out: dict[str, _Deferred] = {}
    if kind == "gpt":
        c = M._gpt_config(config)
        flat = M.check_flax_tree(params, M.gpt_flax_shapes(c), "GPT")
        for key, shape, e, i in M._gpt_torch_order(c):
            leaf = flat[e.flax_path]

            def fn(leaf=leaf, i=i, tr=e.transpose):
                a = np.asarray(leaf)
                a = a if i is None else a[i]
                return a.T if tr else a

            out[key] = _Deferred(shape, out_dt or np.asarray(leaf).dtype, fn)
    else:
        expected = M.vq_torch_shapes(config)
        flat = M.check_flax_tree(params, M.vq_flax_shapes(config), "VQ")
        for key, shape in expected.items():
            path, tr = M.vq_torch_key_to_flax(key, len(shape))
            leaf = flat[path]

            def fn(leaf=leaf, conv=tr == "conv"):
                a = np.asarray(leaf)
                return a.transpose(3, 2, 0, 1) if conv else a

            out[key] = _Deferred(shape, out_dt or np.asarray(leaf).dtype, fn)
    return out


def _export_format(out, key, dtype) -> str:
    fmt = _EXPORT_SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        raise UsageError(f"--export writes .safetensors, .pt, .pth or .bin files; got {str(out)!r}")
    if fmt == "safetensors" and key:
        raise UsageError("--key names the wrapper entry of a .pt export; a .safetensors file is a flat state dict")
    if dtype is not None:
        from scalingar_jax.convert.mapping import _np_dtype

        _np_dtype(dtype)
    return fmt


def export(model_dir, out, *, dtype: str | None = None, key: str | None = None, overwrite: bool = False,
           log: Callable[[str], None] = print):
    """Writes the model directory `model_dir` (a converted LlamaGen GPT or VQ) as a PyTorch
    LlamaGen state dict: `.safetensors` (flat) or `.pt`/`.pth`/`.bin` (torch zip, by default
    `{"model": state_dict, "scalingar_config": {...}}`, as LlamaGen's released files; `key=""`
    writes a bare state dict, another key names the wrapper). Loadable by `torch.load` and by
    LlamaGen's `load_state_dict`; converting the file back gives identical arrays.

    dtype: cast to "float32"/"bfloat16"/"float16" (default: keep the stored dtype). The config
    fields the weights do not hold (heads, grid, GroupNorm groups) are stored beside the weights
    (safetensors metadata "scalingar_config" as JSON, or a top-level "scalingar_config" entry)
    so that `convert` can read the file back without options. One tensor is copied at a time.
    Returns (kind, config). Writes atomically; raises on bad input without writing.
    """
    from scalingar_jax.checkpoint import load_model, read_config
    from scalingar_jax.convert import safetensors as st
    from scalingar_jax.convert.torch_pickle import save_torch_state_dict

    fmt = _export_format(out, key, dtype)
    dest = _Destination(out, overwrite=overwrite, what="output file")
    kind, _, _ = read_config(model_dir)
    if kind not in ("gpt", "vq"):
        raise ValueError(f"{model_dir} holds a {kind!r} model; only LlamaGen GPT and VQ models can be exported")
    t0 = time.perf_counter()
    params, config = load_model(model_dir)
    tensors = _torch_layout(kind, params, config, dtype)
    hint = _hint_fields(config)
    try:
        if fmt == "safetensors":
            st.save_file(out, tensors, metadata={"format": "pt", "scalingar_config": json.dumps(hint, sort_keys=True)})
        else:
            wrapper = "model" if key is None else (key or None)
            save_torch_state_dict(out, ((k, np.asarray(v)) for k, v in tensors.items()), wrapper=wrapper,
                                  extra={"scalingar_config": hint} if wrapper else None)
    except BaseException:
        dest.cleanup(remove_output=False)
        raise
    del params, tensors
    log(f"exported {kind} {model_dir} -> {out} ({Path(out).stat().st_size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - t0:.1f} s")
    return kind, config


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def _to_device_one_by_one(params):
    """jax arrays of a numpy tree, replacing one leaf at a time so that at most one host copy
    and one device copy of a leaf coexist (instead of the whole tree twice)."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(params)
    del params
    for i in range(len(leaves)):
        leaves[i] = jnp.asarray(leaves[i])
    return jax.tree.unflatten(treedef, leaves)


def verify(model_dir, state_dict, *, llamagen=None, seed: int = 0, n_tokens: int | None = None,
           tol: float | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the converted model at `model_dir` and a reference built from the PyTorch-layout
    `state_dict` (key -> LazyTensor/array) on the same small random inputs
    (`reference.random_inputs`: batch 2) and compares the outputs.

    GPT: teacher-forced logits `gpt.forward` (B, T, V); VQ: `vq.decode_codes(..., clip=False)`
    pixels. Reference: the NumPy forward of `scalingar_jax.convert.reference` (float64), or,
    if `llamagen` is a `reference.LlamaGenReference`, the original PyTorch LlamaGen modules.
    tol: largest accepted relative difference (default by parameter dtype,
    `DEFAULT_TOLERANCE`). Returns {"kind", "reference", "max_abs", "max_rel", "ref_max",
    "tol", "passed", "inputs" (a description)}; logs one line.
    """
    from scalingar_jax.checkpoint import load_model, read_config
    from scalingar_jax.convert import reference as R

    kind, _, _ = read_config(model_dir)
    params, cfg = load_model(model_dir)
    params = _to_device_one_by_one(params)
    if n_tokens is not None and kind != "gpt":
        raise UsageError("--verify-tokens applies to GPT models only")
    inputs = R.random_inputs(kind, cfg, seed=seed, n_tokens=n_tokens)
    if kind == "gpt":
        from scalingar_jax import gpt

        got = np.asarray(gpt.forward(params, cfg, inputs["cond"], inputs["tokens"], inputs.get("cond_mask"),
                                     inputs["drop"]))
        what = "logits"
        B, T = inputs["tokens"].shape
        desc = f"{B} x {T} random image tokens"
        if cfg.model_type == "t2i":
            desc += f", caption masks with {'/'.join(str(int(m.sum())) for m in inputs['cond_mask'])} valid tokens"
        desc += ", last row the null condition"
    elif kind == "vq":
        from scalingar_jax import vq

        got = np.asarray(vq.decode_codes(params, cfg, inputs["codes"], clip=False))
        what = "pixels"
        B, h, w = inputs["codes"].shape
        desc = f"{B} random {h} x {w} code grids"
    else:
        raise ValueError(f"{model_dir} holds a {kind!r} model; --verify checks LlamaGen GPT and VQ models")
    del params  # the reference reads its weights from the state dict, one tensor at a time
    t0 = time.perf_counter()
    if llamagen is None:
        ref_name = "NumPy float64 reference from the PyTorch state dict"
        if kind == "gpt":
            ref = R.gpt_logits(state_dict, cfg, inputs["cond"], inputs["tokens"], inputs.get("cond_mask"),
                               inputs["drop"])
        else:
            ref = R.vq_decode(state_dict, cfg, inputs["codes"])
    else:
        ref_name = f"original LlamaGen PyTorch code from {llamagen.src}"
        if kind == "gpt":
            ref = llamagen.gpt_logits(cfg, state_dict, inputs["cond"], inputs["tokens"], inputs.get("cond_mask"),
                                      inputs["drop"])
        else:
            ref = llamagen.vq_decode(cfg, state_dict, inputs["codes"])
        for note in llamagen.notes:
            log(f"note: {note}")
    stats = R.compare(got, ref)
    tol = DEFAULT_TOLERANCE.get(cfg.param_dtype, 1e-4) if tol is None else tol
    passed = bool(stats["max_rel"] <= tol)
    log(f"verify {kind} {what} vs the {ref_name} ({desc}; {time.perf_counter() - t0:.1f} s): "
        f"max abs diff {stats['max_abs']:.3g}, max rel diff {stats['max_rel']:.3g} "
        f"(largest |reference| {stats['ref_max']:.3g}, tolerance {tol:g}) -> {'OK' if passed else 'FAILED'}")
    return {"kind": kind, "reference": ref_name, **stats, "tol": tol, "passed": passed, "inputs": desc}


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser(prog: str = "scalingar convert") -> argparse.ArgumentParser:
    ap = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC",
                    help="LlamaGen checkpoint to convert: .pt/.pth/.bin (torch zip format) or .safetensors; with "
                         "--export, a model directory written by `scalingar convert`")
    ap.add_argument("dst", metavar="DST",
                    help="output model directory (created atomically; must not exist unless --overwrite); with "
                         "--export, the output .safetensors or .pt/.pth/.bin file")
    ap.add_argument("--export", action="store_true",
                    help="export mode: write the model directory SRC as a PyTorch LlamaGen state dict DST "
                         "(.safetensors, or .pt via a torch-compatible writer), one tensor at a time")
    ap.add_argument("--kind", default="auto", choices=["auto", "gpt", "vq"],
                    help="model kind of SRC (default auto: from the key names); a mismatch is an error")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="parameter dtype of the output (default: float32 when converting, the stored dtype with "
                         "--export)")
    ap.add_argument("--key", default=None,
                    help="top-level entry of a .pt file holding the weights (default: the first of model, module, "
                         "state_dict, else the top level); with --export, the wrapper entry to write (default "
                         "model; '' writes a bare state dict)")
    ap.add_argument("--grid-size", type=int, default=None,
                    help="GPT image-token grid side, image_size / 16 for VQ-16 (16 for 256px, 24 for 384px, 32 for "
                         "512px); default: from the training args in the file, else from 256/384/512 in the file "
                         "name")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field not stored in the weights, e.g. --set n_head=20 (GPTs that match "
                         "no LlamaGen preset) or --set norm_groups=32 (VQ); repeatable")
    ap.add_argument("--non-strict", action="store_true",
                    help="skip unknown keys in the state dict instead of failing (known buffers such as KV caches "
                         "and quantize.codebook_used are always skipped)")
    ap.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    ap.add_argument("--max-bytes", type=parse_bytes, default=None, metavar="N",
                    help="memory budget for reading SRC, e.g. 20G: the pickle's objects and the tensors as they will "
                         "be materialised (stride-0 and shared-storage views in full) must fit, checked before any "
                         "tensor is read (default: 2x the file size, at least 8 MiB)")
    ap.add_argument("--allow-non-finite", action="store_true",
                    help="convert weights holding NaN or inf (refused by default)")
    ap.add_argument("--verify", action="store_true",
                    help="after writing, compare the converted model with an independent reference on small random "
                         "inputs and print the largest logit (GPT) / pixel (VQ) difference; exit 1 and remove DST "
                         "if it exceeds the tolerance")
    ap.add_argument("--llamagen-src", default=None, metavar="PATH",
                    help="with --verify (implied): use the original PyTorch LlamaGen code from this checkout "
                         "(autoregressive/models/gpt.py, tokenizer/tokenizer_image/vq_model.py) as the reference "
                         "instead of the NumPy one; needs torch")
    ap.add_argument("--verify-tokens", type=int, default=None, metavar="T",
                    help="GPT verification: image tokens in each input row (default grid_size + 2, enough to reach the "
                         "second grid row)")
    ap.add_argument("--verify-tol", type=float, default=None, metavar="TOL",
                    help="largest accepted relative difference (max |diff| / max |reference|); default "
                         + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_TOLERANCE.items()) + " parameters")
    ap.add_argument("--seed", type=int, default=0, help="seed of the verification inputs (default 0, below 2**32)")
    return ap


def _one_line(e: BaseException) -> str:
    from scalingar_jax.cli import _describe_error, printable

    return printable(_describe_error(e))


_USER_ERRORS = (ValueError, KeyError, TypeError, OSError, MemoryError, RecursionError, ArithmeticError)


def main(argv=None, *, prog: str = "scalingar convert") -> int:
    """The `scalingar convert` command. Returns the exit status (0 ok, 1 verification failed,
    2 bad input: one line on stderr, nothing written)."""
    ap = build_parser(prog)
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    log = print
    verify_wanted = a.verify or a.llamagen_src is not None
    dest, written = None, False
    try:
        if a.verify_tol is not None and not (a.verify_tol > 0 and np.isfinite(a.verify_tol)):
            raise UsageError(f"--verify-tol must be finite and > 0, got {a.verify_tol}")
        if not 0 <= a.seed < 2**32:
            raise UsageError(f"--seed must be in [0, 2**32), got {a.seed}")
        if a.grid_size is not None and not 1 <= a.grid_size <= 256:
            raise UsageError(f"--grid-size must be in [1, 256], got {a.grid_size}")
        if a.verify_tokens is not None and not 2 <= a.verify_tokens <= 65536:
            raise UsageError(f"--verify-tokens must be in [2, 65536], got {a.verify_tokens}")
        overrides = {} if a.export else _parse_sets(a.set)
        if a.verify_tokens is not None and not verify_wanted:
            raise UsageError("--verify-tokens needs --verify")
        llamagen = None

        def prepare_reference(kind, config, sd):
            nonlocal llamagen
            if a.llamagen_src is not None:
                from scalingar_jax.convert.reference import LlamaGenReference, check_llamagen_source

                llamagen = LlamaGenReference(check_llamagen_source(a.llamagen_src, kind))
                llamagen.prepare(kind, config)
            if a.verify_tokens is not None:
                if kind != "gpt":
                    raise UsageError("--verify-tokens applies to GPT models only")
                if not 2 <= a.verify_tokens <= config.block_size:
                    raise UsageError(f"--verify-tokens must be in [2, {config.block_size}], got {a.verify_tokens}")

        if a.export:
            for flag, given in (("--kind", a.kind != "auto"), ("--grid-size", a.grid_size is not None),
                                ("--set", bool(a.set)), ("--non-strict", a.non_strict),
                                ("--max-bytes", a.max_bytes is not None), ("--allow-non-finite", a.allow_non_finite)):
                if given:
                    raise UsageError(f"{flag} applies when converting to orbax, not with --export")
            from scalingar_jax.checkpoint import read_config

            _export_format(a.dst, a.key, a.dtype)
            kind, config, _ = read_config(a.src)
            if verify_wanted:
                prepare_reference(kind, config, None)
            dest = _Destination(a.dst, overwrite=a.overwrite, what="output file")
            export(a.src, a.dst, dtype=a.dtype, key=a.key, overwrite=a.overwrite, log=log)
            written = True
            if not verify_wanted:
                return 0
            from scalingar_jax.convert import load_checkpoint

            sd, _ = load_checkpoint(a.dst, key=a.key or None)
            model_dir = a.src
        else:
            dest = _Destination(a.dst, overwrite=a.overwrite, what="output directory")
            kind, _, sd = _convert(a.src, a.dst, kind=a.kind, dtype=a.dtype or "float32", key=a.key,
                                   grid_size=a.grid_size, overrides=overrides, strict=not a.non_strict,
                                   overwrite=a.overwrite, log=log,
                                   before_save=prepare_reference if verify_wanted else None,
                                   max_bytes=a.max_bytes, allow_non_finite=a.allow_non_finite)
            written = True
            if not verify_wanted:
                return 0
            model_dir = a.dst
        result = verify(model_dir, sd, llamagen=llamagen, seed=a.seed, n_tokens=a.verify_tokens, tol=a.verify_tol,
                        log=log)
        if not result["passed"]:
            dest.cleanup(remove_output=True)
            print(f"error: verification failed: max relative difference {result['max_rel']:.3g} > {result['tol']:g}; "
                  f"removed {a.dst}", file=sys.stderr)
            return 1
        return 0
    except _USER_ERRORS as e:
        # before writing, nothing exists yet; an error while verifying removes the output too
        if dest is not None:
            dest.cleanup(remove_output=written)
        print(f"error: {_one_line(e)}" + (f" (removed {a.dst})" if written else ""), file=sys.stderr)
        return 2
