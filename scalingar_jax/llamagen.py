"""LlamaGen's released models as model bundles: `assemble_bundle` builds one, `pipeline_from_bundle` loads it.

A LlamaGen bundle (read by `scalingar_jax.bundle.read_bundle`, loaded by
`scalingar_jax.load_pipeline(path)`, which calls `pipeline_from_bundle`, the loader of its
kind):

    bundle.json   kind "llamagen-t2i" | "llamagen-c2i" (both load with `pipeline_from_bundle`, the
                  registry's entry for them), image_size, parts, sampling (LlamaGen's defaults),
                  options (t2i with text/: "preprocess", a name, and "max_length"), notes
    gpt/          the GPT as `scalingar convert` writes it (config.json + orbax params/)
    vq/           the VQ tokenizer, likewise
    text/         t2i, from a Hugging Face flan-t5 folder: the Flax T5 encoder (config.json of
                  kind "t5", orbax params/) and the tokenizer's spiece.model (checked to parse
                  when the bundle is made)
    features/     t2i, instead of text/: precomputed T5 features of named prompts (`FEATURES_FILE`
                  names the .npz file, read by `text_features.PrecomputedFeatures`); prompts are
                  looked up by their exact text (no preprocessing)

Conditioning, as LlamaGen's sample scripts: t2i prompts go through the `preprocess` option (a
name in the registry's "preprocess" table: "llamagen", LlamaGen's default clean_caption twice, or
"lowercase", its use_text_preprocessing=False), the T5 tokenizer (max_length tokens, `</s>`
appended), the encoder, then LEFT padding to the GPT's `cls_token_num` slots (`text_features.T5TextEncoder`);
c2i prompts are class ids written as decimal strings ("207").

Checks, each a ValueError naming the problem, at assembly and again at load: the VQ codebook
size equals the GPT vocabulary, the T5 hidden size (or the features' dimension) equals the GPT's
`caption_dim`, the parts match the GPT's type (t2i: text/ or features/; c2i: neither).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scalingar_jax.bundle import Bundle, write_manifest
from scalingar_jax.config import GPTConfig, SamplingConfig

__all__ = ["KIND_T2I", "KIND_C2I", "T2I_SAMPLING", "C2I_SAMPLING", "DEFAULT_PREPROCESS", "FEATURES_FILE",
           "SPIECE_FILE", "MAX_CLASS_IDS_BYTES", "pipeline_from_bundle", "assemble_bundle", "parse_class_ids",
           "read_class_ids_file", "sampling_defaults"]

KIND_T2I = "llamagen-t2i"
KIND_C2I = "llamagen-c2i"
KINDS = {"t2i": KIND_T2I, "c2i": KIND_C2I}

# LlamaGen's sample scripts' defaults (sample_t2i.py, sample_c2i.py); top_k is capped at the
# vocabulary size of the model (only tiny test models have fewer than 2000 codes).
T2I_SAMPLING = SamplingConfig(cfg_scale=7.5, temperature=1.0, top_k=1000, top_p=1.0)
C2I_SAMPLING = SamplingConfig(cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)

DEFAULT_PREPROCESS = "llamagen"  # LlamaGen's clean_caption twice (T5Embedder), a name in registry's "preprocess"
FEATURES_FILE = "features.json"   # inside features/: {"file": ..., "dim": C, "rows": N, "source": ...}
SPIECE_FILE = "spiece.model"      # the T5 tokenizer, inside text/
MAX_CLASS_IDS_BYTES = 1 << 20     # a --class-ids-file is read up to this size
MAX_JSON_BYTES = 1 << 20
T5_BATCH = 16                     # prompts per T5 encoder call (one compiled shape)
MAX_T5_LENGTH = 4096              # the option max_length: T5 tokens per prompt
MAX_T5_BATCH = 1024               # the option batch_size


def _fail(where, msg: str):
    raise ValueError(f"{where}: {msg}")


def sampling_defaults(gpt_cfg: GPTConfig) -> SamplingConfig:
    """LlamaGen's sampling defaults for a GPT: t2i cfg 7.5, top-k 1000; c2i cfg 4.0, top-k
    2000 (temperature 1, top-p 1); top-k capped at the GPT's vocabulary size."""
    base = T2I_SAMPLING if gpt_cfg.model_type == "t2i" else C2I_SAMPLING
    return dataclasses.replace(base, top_k=min(base.top_k, gpt_cfg.vocab_size))


# ------------------------------------------------------------------------------------ class ids

_DECIMAL = re.compile(r"[0-9]{1,9}")


def parse_class_ids(prompts: Sequence[str | int], num_classes: int, *, where: str = "class id") -> np.ndarray:
    """P class ids written as decimal strings ("207", what the CLI passes) or given as integers
    (the library: `generate(pipe, [207, 360])`) -> int32 (P,). ValueError for anything else, or
    an id outside [0, num_classes), naming it and the range."""
    out = []
    for p in prompts:
        if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            value = int(p)
        else:
            text = p.strip() if isinstance(p, str) else None
            if text is None or not _DECIMAL.fullmatch(text):
                raise ValueError(f"{where} {p!r} is not a class id: a class-conditional (c2i) model takes class "
                                 f"ids, integers in [0, {num_classes}), not text")
            value = int(text)
        if not 0 <= value < num_classes:
            raise ValueError(f"{where} {value} is out of range: this c2i model has classes [0, {num_classes})")
        out.append(value)
    return np.asarray(out, np.int32)


def read_class_ids_file(path, *, max_bytes: int = MAX_CLASS_IDS_BYTES) -> list[str]:
    """The class ids of a text file (one per line or whitespace separated), as decimal strings in
    file order (the prompts of a c2i bundle). Reads at most `max_bytes`; ValueError for a larger
    or non-UTF-8 file, a token that is not a decimal integer (naming its line), or no id."""
    from scalingar_jax.inputs import read_bounded

    path = Path(path)
    try:
        data = read_bounded(path, max_bytes, repr(str(path)))  # a regular file only: a FIFO cannot hang it
    except ValueError as e:
        raise ValueError(f"{e}; not a class-ids file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text; expected class ids, one per line") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for token in line.split():
            if not _DECIMAL.fullmatch(token):
                raise ValueError(f"{str(path)!r} line {lineno}: {token[:40]!r} is not a class id (a non-negative "
                                 "integer)")
            ids.append(str(int(token)))
    if not ids:
        raise ValueError(f"{str(path)!r} holds no class id")
    return ids


# ------------------------------------------------------------------------------------ checks

def _check_vocab(where, gpt_cfg: GPTConfig, vq_cfg) -> None:
    """The VQ's codebook size must equal the GPT's vocabulary (ValueError naming both)."""
    if vq_cfg.codebook_size != gpt_cfg.vocab_size:
        _fail(where, f"the VQ codebook has {vq_cfg.codebook_size} codes but the GPT's vocabulary has "
                     f"{gpt_cfg.vocab_size} tokens: the VQ does not belong to this GPT")


def _check_text(where, gpt_cfg: GPTConfig, text_dim: int, text_what: str, *, features: bool = False) -> None:
    """The text part's width (T5 d_model, or the features' dimension) must equal the GPT's
    caption_dim (ValueError naming both)."""
    if text_dim == gpt_cfg.caption_dim:
        return
    if features:
        _fail(where, f"the {text_what} have width {text_dim} but the GPT's caption_dim is {gpt_cfg.caption_dim}: "
                     "they come from a text encoder that does not belong to this GPT")
    _fail(where, f"the {text_what} has hidden size {text_dim} but the GPT's caption_dim is "
                 f"{gpt_cfg.caption_dim}: this text encoder does not belong to this GPT")


def _read_json(path: Path, what: str) -> dict:
    """The JSON object in `path` (read up to MAX_JSON_BYTES); FileNotFoundError or ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing ({what})")
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    record = None
    if len(data) <= MAX_JSON_BYTES:
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            pass
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} is not a JSON object of at most {MAX_JSON_BYTES} bytes ({what})")
    return record


def _features_file(folder: Path) -> tuple[Path, dict]:
    """(features file, its features.json record) of a features/ part."""
    record = _read_json(folder / FEATURES_FILE, "the features part's description")
    name = record.get("file")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
        raise ValueError(f"{folder / FEATURES_FILE}: 'file' must name a .npz file inside {folder}, got {name!r}")
    if not (folder / name).is_file():
        raise FileNotFoundError(f"{folder / FEATURES_FILE} names {name!r}, which is missing from {folder}")
    return folder / name, record


# ------------------------------------------------------------------------------------ loader

def _preprocess_name(value, where) -> str:
    """The name in the registry's "preprocess" table that a bundle option or --preprocess gives
    (an earlier version's "module:function" of a built-in one is mapped to its name, any other
    reference refused); ValueError naming `where` for a name that is in no table."""
    from scalingar_jax import registry

    if isinstance(value, str) and ":" in value:
        value = registry.legacy_name("preprocess", value, where=where)
    if value not in registry.names("preprocess"):
        raise ValueError(f"{where}: unknown preprocessing {str(value)[:80]!r}; known: "
                         f"{', '.join(registry.names('preprocess'))}")
    return value


def _preprocess(value, where) -> Callable[[str], str]:
    """The text function (str -> str) a bundle's option "preprocess" names."""
    from scalingar_jax import registry

    where = f"{where}: option 'preprocess'"
    return registry.lookup("preprocess", _preprocess_name(value, where), where=where)


def _bounded_option(value, name: str, hi: int, where):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi):
        _fail(where, f"option {name!r} must be an integer in [1, {hi}], got {str(value)[:40]!r}")
    return value


def _text_encoder(folder: Path, gpt_cfg: GPTConfig, where, *, preprocess, max_length, batch_size):
    """The T5TextEncoder of a text/ part (weights loaded; sentencepiece imported)."""
    from scalingar_jax.checkpoint import load_model
    from scalingar_jax.text_features import T5TextEncoder, check_spiece_model

    if not (folder / SPIECE_FILE).is_file():
        raise FileNotFoundError(f"{where}: the text part {folder} lacks the tokenizer {SPIECE_FILE}")
    fn = _preprocess(preprocess, where)
    check_spiece_model(folder / SPIECE_FILE)  # the file first: a bad one is bad with or without the package
    try:  # T5TextEncoder imports it: fail before any weight is read
        importlib.import_module("sentencepiece")
    except ImportError:
        raise ImportError(f"{where}: this t2i bundle tokenizes prompts with T5's sentencepiece model and needs "
                          "the optional 'sentencepiece' package: pip install 'scalingar-jax[t5]' (or pip install "
                          "sentencepiece)") from None
    params, cfg = load_model(folder, expect_kind="t5")
    length = max_length if max_length is not None else gpt_cfg.cls_token_num
    return T5TextEncoder(folder, max_length=int(length), length=gpt_cfg.cls_token_num, preprocess=fn,
                         batch_size=batch_size, params=params, cfg=cfg)


def pipeline_from_bundle(bundle: Bundle, *, preprocess: str | None = None, max_length: int | None = None,
                         batch_size: int = T5_BATCH):
    """The loader of the kinds llamagen-t2i and llamagen-c2i: GPT + VQ (+ T5 encoder or precomputed features, t2i) from
    the bundle's parts, with its sampling defaults. Returns a `Pipeline` whose `condition`:

      t2i: P prompts -> (features float32 (P, cls_token_num, caption_dim), left-padded, padded rows
           zero; mask bool (P, cls_token_num));
      c2i: P class ids as decimal strings ("207") -> (labels int32 (P,), None); an id outside
           [0, num_classes) or a non-id is a ValueError naming it and the range.

    preprocess: the name of the text function (str -> str) applied to every t2i prompt before
    tokenisation (bundle option, a name in the registry's "preprocess" table, default
    `DEFAULT_PREPROCESS`); max_length: T5 tokenizer length (default the GPT's cls_token_num, 120
    for LlamaGen; at most MAX_T5_LENGTH); batch_size: prompts per T5 call (at most MAX_T5_BATCH).
    Configs are checked (kinds, codebook = vocabulary, T5 width = caption_dim) before any weight
    is read. Raises FileNotFoundError (a part or file missing), ValueError (parts that do not
    fit), ImportError (a T5 part without the optional sentencepiece package).
    """
    from scalingar_jax.checkpoint import load_model, read_config
    from scalingar_jax.gpt import decode_layout
    from scalingar_jax.pipeline import Pipeline
    from scalingar_jax.text_features import PrecomputedFeatures

    where = bundle.manifest_path
    _bounded_option(max_length, "max_length", MAX_T5_LENGTH, where)
    _bounded_option(batch_size, "batch_size", MAX_T5_BATCH, where)
    if bundle.kind not in KINDS.values():
        _fail(where, f"kind {bundle.kind!r} is not a LlamaGen bundle ({KIND_T2I!r} or {KIND_C2I!r})")
    t2i = bundle.kind == KIND_T2I
    text_parts = [p for p in ("text", "features") if bundle.has_part(p)]
    needed = ["gpt", "vq"]
    missing = [p for p in needed if not bundle.has_part(p)]
    unknown = sorted(n for n, _ in bundle.parts if n not in ("gpt", "vq", "text", "features"))
    if missing or unknown:
        _fail(where, f"a {bundle.kind} bundle has the parts gpt, vq" + (" and text or features" if t2i else "")
              + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    if t2i and len(text_parts) != 1:
        _fail(where, "a llamagen-t2i bundle needs exactly one of the parts text (a T5 encoder) and features "
                     f"(precomputed T5 features); it has {text_parts or 'neither'}")
    if not t2i and text_parts:
        _fail(where, f"a llamagen-c2i bundle is conditioned on class ids and takes no text part; it has {text_parts}")
    if not t2i and (preprocess is not None or max_length is not None):
        _fail(where, "the options preprocess and max_length apply to t2i bundles only")
    gpt_kind, gpt_cfg, _ = read_config(bundle.part("gpt"))
    vq_kind, vq_cfg, _ = read_config(bundle.part("vq"))
    if (gpt_kind, vq_kind) != ("gpt", "vq"):
        _fail(where, f"the part gpt holds a {gpt_kind!r} model and vq a {vq_kind!r} model; expected 'gpt' and 'vq'")
    if KINDS[gpt_cfg.model_type] != bundle.kind:
        _fail(where, f"kind {bundle.kind!r} but the GPT is a {gpt_cfg.model_type} model")
    text_dim, text_what, features = None, "", None
    if t2i and text_parts == ["text"]:
        t_kind, t_cfg, _ = read_config(bundle.part("text"))
        if t_kind != "t5":
            _fail(where, f"the part text holds a {t_kind!r} model, not a T5 encoder ('t5')")
        text_dim, text_what = t_cfg.d_model, "T5 encoder (text part)"
    elif t2i:
        ffile, _ = _features_file(bundle.part("features"))
        features = PrecomputedFeatures(ffile, length=gpt_cfg.cls_token_num)
        text_dim, text_what = features.dim, f"precomputed T5 features ({ffile.name})"
    if text_dim is not None:
        _check_text(where, gpt_cfg, text_dim, text_what, features=features is not None)
    _check_vocab(where, gpt_cfg, vq_cfg)

    if not t2i:
        def condition(prompts):
            return parse_class_ids(list(prompts), gpt_cfg.num_classes), None

        def check_record(record):
            raise ValueError("a class-conditional (c2i) model takes class ids, not GenEval text prompts")
    elif features is not None:
        def condition(prompts):
            try:
                return features.encode(list(prompts))
            except KeyError as e:
                raise ValueError(e.args[0]) from None

        stored = set(features.prompts or ())

        def check_record(record):  # only prompts whose features are stored
            if record["prompt"] not in stored:
                raise ValueError(f"no precomputed features for the prompt {record['prompt']!r} in {features.path}")
    else:
        check_record = None  # a T5 encodes any text: every GenEval record
        encoder = _text_encoder(bundle.part("text"), gpt_cfg, where,
                                preprocess=DEFAULT_PREPROCESS if preprocess is None else preprocess,
                                max_length=max_length, batch_size=batch_size)

        def condition(prompts):
            return encoder.encode(list(prompts))

    gpt_params, _ = load_model(bundle.part("gpt"), expect_kind="gpt")
    vq_params, _ = load_model(bundle.part("vq"), expect_kind="vq")
    return Pipeline(gpt_params=decode_layout(gpt_params), gpt_cfg=gpt_cfg, vq_params=vq_params, vq_cfg=vq_cfg,
                    condition=condition, reward=None, sampling=bundle.sampling, scaling=bundle.scaling,
                    name=bundle.name, check_record=check_record)


# ------------------------------------------------------------------------------------ assembly

def _is_hf_t5(folder: Path) -> bool:
    """True for a Hugging Face T5 folder (its config.json has model_type), False for a model
    directory of this package (config.json with kind "t5")."""
    record = _read_json(folder / "config.json", "a T5 config")
    if "kind" in record and "config" in record:
        if record["kind"] != "t5":
            raise ValueError(f"{folder} holds a {record['kind']!r} model, not a T5 encoder")
        return False
    return True


def _part_config(src, want: str, *, grid_size):
    """The config of --gpt/--vq `src` (a LlamaGen file: from its tensor shapes, nothing converted or
    materialised; a model directory: its config.json). ValueError if it holds another kind of
    model than `want` (or, for a converted GPT, another grid than `grid_size`)."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.convert.run import peek
    from scalingar_jax.inputs import check_regular

    flag = f"--{want}"
    src = Path(src)
    if src.is_dir():
        kind, cfg, _ = read_config(src)
        if kind == "gpt" and grid_size is not None and grid_size != cfg.grid_size:
            raise ValueError(f"{flag} {src}: the converted GPT has grid size {cfg.grid_size}, not --grid-size "
                             f"{grid_size}")
    elif os.path.lexists(src):
        check_regular(src, f"{flag} {src}")  # a FIFO or device: named, never opened
        kind, cfg = peek(src, grid_size=grid_size if want == "gpt" else None)
    else:
        raise FileNotFoundError(f"{flag} {src}: no such file or model directory")
    if kind != want:
        raise ValueError(f"{flag} {src}: holds a {kind!r} model, not a {want!r} one")
    return cfg


def _copy_model(src: Path, dst: Path, kind: str, *, dtype: str | None, log) -> None:
    """Copies the model directory `src` to `dst`, its float weights cast to `dtype` (re-saved
    through `checkpoint.save_model`; a plain copy where dtype is None or already theirs)."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax.checkpoint import load_model, read_config, save_model
    from scalingar_jax.config import to_dtype

    _, cfg, meta = read_config(src)
    if dtype is not None and getattr(cfg, "param_dtype", None) != dtype:
        params, cfg = load_model(src, expect_kind=kind)
        target = to_dtype(dtype)
        if any(jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != target for a in jax.tree.leaves(params)):
            params = jax.tree.map(lambda a: np.asarray(a).astype(target) if jnp.issubdtype(a.dtype, jnp.floating)
                                  else np.asarray(a), params)
            if hasattr(cfg, "param_dtype"):
                cfg = dataclasses.replace(cfg, param_dtype=dtype)
            save_model(dst, params, cfg, kind=kind, meta={**meta, "cast_from": str(src.resolve()),
                                                          "converted_dtype": dtype})
            log(f"cast {kind} {src} to {dtype} -> {dst}")
            return
        del params
    shutil.copytree(src, dst)
    log(f"copied {kind} {src} -> {dst}")


def _model_part(src, dst: Path, want: str, *, dtype, grid_size, log):
    """Converts a LlamaGen file (or copies a converted model directory, cast to `dtype` unless
    None) `src` into `dst`; returns its config. ValueError if it holds another kind of model than `want`."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.convert.run import convert

    src = Path(src)
    if src.is_dir():
        _copy_model(src, dst, want, dtype=dtype, log=log)
        return read_config(dst)[1]
    kind, cfg = convert(src, dst, kind="auto", dtype=dtype or "float32",
                        grid_size=grid_size if want == "gpt" else None, log=log)
    if kind != want:
        raise ValueError(f"--{want} {src}: holds a {kind!r} model, not a {want!r} one")
    return cfg


def _log_as(log, tmp: str, out: str, message: str) -> None:
    """Logs `message` with the temp folder `tmp` shown as the final folder `out`."""
    log(message.replace(tmp, out))


def _t5_part(src: Path, dst: Path, *, dtype: str | None, log) -> None:
    """The text/ part from a HF T5 folder (converted torch-free) or a T5 model directory."""
    import jax

    from scalingar_jax.checkpoint import save_model
    from scalingar_jax.config import to_dtype
    from scalingar_jax.t5 import load_hf_t5_encoder

    if _is_hf_t5(src):
        params, cfg = load_hf_t5_encoder(src)
        dtype = dtype or "float32"
        if dtype != "float32":
            params = jax.tree.map(lambda a: np.asarray(a).astype(to_dtype(dtype)), params)
        save_model(dst, params, cfg, kind="t5", meta={"source": str(src.resolve()), "converted_dtype": dtype})
        del params
        log(f"converted T5 encoder {src} -> {dst}")
    else:
        _copy_model(src, dst, "t5", dtype=dtype, log=log)
    if not (dst / SPIECE_FILE).is_file():
        shutil.copyfile(src / SPIECE_FILE, dst / SPIECE_FILE)


def _t5_width(src: Path) -> int:
    """d_model of a HF T5 folder (its config checked against its weights' names, nothing read)
    or T5 model directory; checks that its spiece.model is a SentencePiece model."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.t5 import read_hf_t5_folder
    from scalingar_jax.text_features import check_spiece_model

    if not src.is_dir():
        raise FileNotFoundError(f"--t5 {src}: not a folder (expected a Hugging Face flan-t5 folder)")
    if not os.path.lexists(src / SPIECE_FILE):
        raise FileNotFoundError(f"--t5 {src}: no {SPIECE_FILE} (the T5 tokenizer the bundle needs)")
    try:
        check_spiece_model(src / SPIECE_FILE)
    except (OSError, ValueError) as e:
        raise ValueError(f"--t5 {src}: {e}") from None
    if _is_hf_t5(src):
        try:
            return read_hf_t5_folder(src)[0].d_model
        except (TypeError, ValueError) as e:
            raise ValueError(f"--t5 {src}: {e}") from None
    return read_config(src)[1].d_model


def assemble_bundle(out, *, gpt, vq, t5=None, t5_features=None, dtype: str | None = None,
                    grid_size: int | None = None,
                    name: str | None = None, overwrite: bool = False, preprocess: str = DEFAULT_PREPROCESS,
                    log: Callable[[str], None] = print) -> Path:
    """Builds a LlamaGen bundle folder `out` from LlamaGen's released files; returns its path.

    gpt, vq: LlamaGen .pt/.pth/.bin/.safetensors files (converted with
    `scalingar_jax.convert.run.convert`, to `dtype`, float32 where None) or model directories
    already converted (copied; their weights cast to `dtype` unless None). t2i: exactly one of
    t5 (a Hugging Face T5 folder: config.json + model.safetensors / pytorch_model.bin [+ index] +
    spiece.model, converted torch-free to the Flax encoder and stored in `dtype`, float32 where
    None; or a T5 model directory of this package with spiece.model, cast like gpt and vq)
    and t5_features (a .npz of named prompts `text_features.PrecomputedFeatures` reads: 'features'
    (B, L, C) [+ 'mask'] + 'prompts' (B,), or one (1, n, C) entry per prompt keyed by its text); c2i:
    neither.
    grid_size: the GPT's token grid when the file does not tell (see `scalingar convert`).
    preprocess: the t2i prompt preprocessing recorded as the bundle option (a name in the
    registry's "preprocess" table, e.g. "llamagen" or "lowercase"; checked here). The manifest records LlamaGen's
    sampling defaults (`sampling_defaults`) and the image size (grid x VQ downsampling).

    Raises ValueError naming the problem (parts that do not fit: VQ codebook != GPT vocabulary,
    T5 width or feature dim != caption_dim, a t2i GPT without text or a c2i GPT with it),
    FileNotFoundError, FileExistsError (out exists and not overwrite); every fit is checked from
    the files' tensor shapes and configs before anything is converted. Atomic: on any error
    nothing is left at `out` (an existing bundle there stays as it was).
    """
    from scalingar_jax.atomic import atomic_dir
    from scalingar_jax.text_features import PrecomputedFeatures

    if t5 is not None and t5_features is not None:
        raise ValueError("give either a T5 folder (--t5) or precomputed T5 features (--t5-features), not both")
    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    t5 = None if t5 is None else Path(t5)
    t5_width = _t5_width(t5) if t5 is not None else None  # cheap checks before any conversion
    if t5 is not None:
        preprocess = _preprocess_name(preprocess, "--preprocess")
    if t5_features is not None:
        t5_features = Path(t5_features)
        if t5_features.suffix != ".npz":
            raise ValueError(f"--t5-features {t5_features}: expected a .npz file of named prompts")
    # every fit from the shapes / configs alone, before anything is converted
    gpt_cfg = _part_config(gpt, "gpt", grid_size=grid_size)
    if gpt_cfg.model_type == "c2i" and (t5 is not None or t5_features is not None):
        raise ValueError(f"--gpt {gpt}: a class-conditional (c2i) GPT takes no text encoder or features "
                         "(give neither --t5 nor --t5-features)")
    if gpt_cfg.model_type == "t2i" and t5 is None and t5_features is None:
        raise ValueError(f"--gpt {gpt}: a text-to-image (t2i) GPT needs --t5 HF_DIR or --t5-features FILE")
    features = None
    if t5 is not None:
        _check_text("bundle", gpt_cfg, t5_width, f"T5 encoder {t5}")
    elif t5_features is not None:
        features = PrecomputedFeatures(t5_features, length=gpt_cfg.cls_token_num)
        if features.prompts is None:
            raise ValueError(f"--t5-features {t5_features}: the features must name their prompts (a 'prompts' "
                             "array next to 'features', or one entry per prompt keyed by its text)")
        _check_text("bundle", gpt_cfg, features.dim, f"precomputed T5 features {t5_features}", features=True)
    _check_vocab("bundle", gpt_cfg, _part_config(vq, "vq", grid_size=None))
    out = Path(out).absolute()
    parts, options = {"gpt": "gpt", "vq": "vq"}, None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        log_parts = functools.partial(_log_as, log, str(tmp), str(out))  # name the bundle, not its temp folder
        gpt_cfg = _model_part(gpt, tmp / "gpt", "gpt", dtype=dtype, grid_size=grid_size, log=log_parts)
        vq_cfg = _model_part(vq, tmp / "vq", "vq", dtype=dtype, grid_size=None, log=log_parts)
        _check_vocab("bundle", gpt_cfg, vq_cfg)
        if t5 is not None:
            _t5_part(t5, tmp / "text", dtype=dtype, log=log_parts)
            parts["text"] = "text"
            options = {"preprocess": preprocess, "max_length": gpt_cfg.cls_token_num}
        elif features is not None:
            (tmp / "features").mkdir()
            fname = "features.npz"
            shutil.copyfile(t5_features, tmp / "features" / fname)
            record = {"file": fname, "dim": features.dim, "rows": len(features), "source": str(t5_features.resolve())}
            (tmp / "features" / FEATURES_FILE).write_text(json.dumps(record, indent=2) + "\n")
            parts["features"] = "features"
        sampling = sampling_defaults(gpt_cfg)
        base = T2I_SAMPLING if gpt_cfg.model_type == "t2i" else C2I_SAMPLING
        notes = (f"LlamaGen {gpt_cfg.model_type} ({gpt_cfg.n_layer} layers, dim {gpt_cfg.dim}, grid "
                 f"{gpt_cfg.grid_size}) assembled by `scalingar bundle` from {gpt} and {vq}"
                 + (f" with the T5 encoder of {t5}" if t5 is not None else "")
                 + (f" with the precomputed T5 features {t5_features}" if t5_features is not None else "")
                 + ". sampling: LlamaGen's sample-script defaults"
                 + (f" (top_k capped at the vocabulary size {gpt_cfg.vocab_size})" if sampling != base else "") + ".")
        write_manifest(tmp, kind=KINDS[gpt_cfg.model_type],
                       image_size=gpt_cfg.grid_size * vq_cfg.downsample, parts=parts, sampling=sampling,
                       name=name or f"LlamaGen {gpt_cfg.model_type} ({Path(gpt).name})", options=options, notes=notes)
    log(f"wrote the {KINDS[gpt_cfg.model_type]} bundle {out}")
    return out

