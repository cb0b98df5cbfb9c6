"""LlamaGen checkpoints <-> scalingar-jax model directories, as library functions (the
`scalingar convert` command, `cli.convert`, is a thin layer over them; `llamagen` builds bundles
with them):

  peek(src, ...)                (kind, config) of a checkpoint, from its tensor shapes only
  convert(src, dst, ...)        .pt/.pth/.bin (torch zip) or .safetensors -> model directory
  write_model(src, dst, ...)    `convert` returning the state dict too (for a verification)
  export(model_dir, out, ...)   model directory -> .safetensors or .pt in LlamaGen's layout
  verify(model_dir, sd, ...)    converted model vs an independent reference on random inputs

Neither direction needs torch, and a checkpoint's pickle is never executed (see
`scalingar_jax.convert.torch_pickle`). Outputs are written atomically: on any error nothing is
left at the destination (nor the folders created for it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["DEFAULT_TOLERANCE", "Destination", "UsageError", "check_export_path", "convert", "export", "peek",
           "verify", "write_model"]

# Largest relative difference --verify accepts, by the converted parameter dtype.
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
EXPORT_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch"}


class UsageError(ValueError):
    """Options that do not fit together."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


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


class Destination:
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


def write_model(src, dst, *, kind, dtype, key, grid_size, overrides, strict, overwrite, log, before_save=None,
                max_bytes=None, allow_non_finite=False):
    """`convert` without its cleanup of created parent folders, returning (kind, config, the
    state dict read from `src`: key -> LazyTensor, for `verify`). before_save(kind, config, sd):
    called once the config is known, before any weight is converted."""
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
    dest = Destination(dst, overwrite=overwrite, what="output directory")
    try:
        kind, config, _ = write_model(src, dst, kind=kind, dtype=dtype, key=key, grid_size=grid_size,
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

    out_dt = M.np_dtype(dtype)
    out: dict[str, _Deferred] = {}
    if kind == "gpt":
        c = M.as_gpt_config(config)
        flat = M.check_flax_tree(params, M.gpt_flax_shapes(c), "GPT")
        for key, shape, e, i in M.gpt_torch_order(c):
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


def check_export_path(out, key, dtype) -> str:
    """The format ("safetensors" or "torch") an export to `out` writes, from its suffix; a
    UsageError for another suffix, a --key with safetensors, or an unknown dtype."""
    fmt = EXPORT_SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        raise UsageError(f"--export writes .safetensors, .pt, .pth or .bin files; got {str(out)!r}")
    if fmt == "safetensors" and key:
        raise UsageError("--key names the wrapper entry of a .pt export; a .safetensors file is a flat state dict")
    if dtype is not None:
        from scalingar_jax.convert.mapping import np_dtype

        np_dtype(dtype)
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

    fmt = check_export_path(out, key, dtype)
    dest = Destination(out, overwrite=overwrite, what="output file")
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
