"""Text conditioning for LlamaGen t2i: prompts -> left-padded caption features.

A LlamaGen t2i model consumes ``cls_token_num`` (= 120) caption feature rows of dimension
``caption_dim`` (= 2048, flan-t5-xl encoder hidden states) plus a boolean mask. LlamaGen's
``sample_t2i.py`` tokenizes to ``max_length`` 120 (right-padded, ``</s>`` appended), runs the
encoder, then LEFT-pads: the valid rows move to the END of the 120 slots (in order), the mask
is flipped accordingly, and padded rows are zeroed. Every :class:`TextEncoder` here returns
features in exactly that layout.

- :func:`left_pad`: the layout transform itself (pure, jittable; ``length`` static).
- :class:`PrecomputedFeatures`: features stored in ``.npy``/``.npz`` files.
- :class:`T5TextEncoder`: a local HF flan-t5 checkpoint run by the Flax encoder of
  :mod:`scalingar_jax.t5`, tokenized with the checkpoint's own ``spiece.model`` (needs the
  optional ``sentencepiece`` package).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.caption import lowercase

__all__ = [
    "TextEncoder",
    "left_pad",
    "PrecomputedFeatures",
    "T5TextEncoder",
    "check_spiece_model",
]


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> caption features for a t2i GPT.

    Attributes:
      length: number of condition slots (the GPT's ``cls_token_num``).
      dim: feature dimension C (the GPT's ``caption_dim``).
    """

    length: int
    dim: int

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode B prompts.

        Returns ``(features, mask)``: features float32 (B, length, dim), mask bool
        (B, length); LEFT-padded (valid rows at the end, in order) with padded rows zeroed.
        Raises ``ValueError`` for an empty list or an empty prompt.
        """
        ...


# ----------------------------------------------------------------------------- left_pad

def left_pad(features, mask, length: int):
    """Move each row's valid tokens to the END of ``length`` slots (LlamaGen's left padding).

    Args:
      features: (B, L, C) float array (any float dtype, kept).
      mask: (B, L) bool or 0/1 int; True marks a valid token. Valid tokens may sit anywhere;
        they keep their relative order.
      length: static int >= 1, the number of output slots (may differ from L).
    Returns:
      ``(out, out_mask)``: out (B, length, C) with the n valid rows of a sample in the last n
      slots and zeros elsewhere; out_mask (B, length) bool, True exactly on those slots.
      If a row has more than ``length`` valid tokens, the FIRST ``length`` are kept (as
      LlamaGen's training loader does). numpy inputs give numpy outputs (computed on the
      host); if either input is a JAX array or tracer, the result is computed with
      ``jax.numpy`` (jittable with ``length`` static).

    For right-padded input (a T5 tokenizer's output: valid tokens first) this equals
    LlamaGen's ``sample_t2i``: ``cat(emb[n:], emb[:n])``, ``flip(mask)``, ``emb * mask``.
    Unlike that recipe it is idempotent (already left-padded input is returned unchanged).
    NaN/inf in padded rows do not leak (rows are selected, not multiplied).
    """
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
        raise ValueError(f"left_pad: length must be a positive int, got {length!r}")
    length = int(length)
    f_shape, m_shape = np.shape(features), np.shape(mask)
    if len(f_shape) != 3:
        raise ValueError(f"left_pad: features must have shape (B, L, C), got {f_shape}")
    if tuple(m_shape) != tuple(f_shape[:2]):
        raise ValueError(f"left_pad: mask shape {m_shape} != features (B, L) {f_shape[:2]}")
    use_jax = isinstance(features, jax.Array) or isinstance(mask, jax.Array)
    xp = jnp if use_jax else np
    features = xp.asarray(features)
    if not (np.issubdtype(features.dtype, np.floating) or features.dtype == jnp.bfloat16):
        raise TypeError(f"left_pad: features must be floating point, got {features.dtype}")
    mask = xp.asarray(mask).astype(bool)
    b, l, c = f_shape
    n = xp.minimum(mask.sum(axis=1), length)                              # (B,)
    invalid = xp.logical_not(mask).astype(np.int32)
    order = (jnp.argsort(invalid, axis=1, stable=True) if use_jax        # valid first, in order
             else np.argsort(invalid, axis=1, kind="stable"))
    r = xp.arange(length)[None, :] - (length - n)[:, None]               # rank of slot j
    out_mask = r >= 0
    if l == 0:
        return xp.zeros((b, length, c), features.dtype), out_mask
    src = xp.take_along_axis(order, xp.clip(r, 0, l - 1), axis=1)        # (B, length)
    out = xp.take_along_axis(features, src[:, :, None], axis=1)
    out = xp.where(out_mask[:, :, None], out, xp.zeros((), features.dtype))
    return out, out_mask


# ----------------------------------------------------------------------------- helpers

def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("encode expects a list of prompts, got a single str (wrap it in a list)")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"encode expects a list of str, got {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError("encode: empty list of prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty")
    return prompts


def _as_features(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
        raise ValueError(f"{name}: features must be floating point, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def _as_mask(name: str, arr: np.ndarray, shape) -> np.ndarray:
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: mask shape {arr.shape} != features (B, L) {tuple(shape)}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name}: mask must be bool or 0/1, got dtype {arr.dtype}")
    return arr.astype(bool)


# ----------------------------------------------------------------------------- precomputed

class PrecomputedFeatures:
    """Caption features stored on disk, served in the LlamaGen left-padded layout.

    Accepted files (loaded with ``allow_pickle=False``):

    - ``.npz`` with ``features`` (B, L, C) float, optional ``mask`` (B, L) bool/0-1 (default
      all valid) and optional ``prompts`` (B,) str. With ``prompts``, :meth:`encode` looks
      prompts up by exact string; without, :meth:`encode` takes B prompts and returns the
      rows in stored order (the prompt strings are then only checked, not used).
    - ``.npz`` keyed by prompt: every entry ``{prompt: (n, C) or (1, n, C)}`` holds the n
      valid token features of that prompt (the format of LlamaGen's
      ``extract_t5_feature.py``, one ``(1, n, C)`` array per caption).
    - ``.npy``: (B, n, C) or (n, C) float, all rows valid, served in order like an npz
      without ``prompts``.

    Every entry is left-padded to ``length`` at load time (see :func:`left_pad`; more than
    ``length`` valid rows keep the first ``length``). ``dim``, if given, must match C.
    """

    def __init__(self, path: str | os.PathLike, length: int = 120, dim: int | None = None):
        path = os.fspath(path)
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such features file: {path}")
        self.path = path
        self.length = int(length)
        prompts, feats, masks = self._read(path)
        c = feats[0].shape[-1]
        if any(f.shape[-1] != c for f in feats):
            raise ValueError(f"{path}: entries have different feature dims "
                             f"{sorted({f.shape[-1] for f in feats})}")
        if dim is not None and c != dim:
            raise ValueError(f"{path}: feature dim {c} != expected dim {dim}")
        self.dim = int(c)
        outs, out_masks = [], []
        for f, m in zip(feats, masks):
            o, om = left_pad(f, m, self.length)
            outs.append(np.asarray(o, np.float32))
            out_masks.append(np.asarray(om, bool))
        self._features = np.concatenate(outs, axis=0)   # (N, length, C)
        self._mask = np.concatenate(out_masks, axis=0)   # (N, length)
        self.prompts = prompts                           # list[str] or None (positional)
        self._index = None if prompts is None else {p: i for i, p in enumerate(prompts)}

    @staticmethod
    def _read(path):
        """-> (prompts or None, [features (b, L, C)], [mask (b, L)])."""
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: cannot read as .npy/.npz without pickle ({e})") from None
        if isinstance(data, np.ndarray):  # .npy
            f = _as_features(path, data)
            if f.ndim == 2:
                f = f[None]
            if f.ndim != 3 or f.shape[0] == 0:
                raise ValueError(f"{path}: a .npy must hold (B, n, C) or (n, C) features, got "
                                 f"shape {data.shape}")
            return None, [f], [np.ones(f.shape[:2], bool)]
        with data:
            keys = list(data.files)
            if not keys:
                raise ValueError(f"{path}: empty .npz")
            if "features" in keys:
                unknown = sorted(set(keys) - {"features", "mask", "prompts"})
                if unknown:
                    raise ValueError(f"{path}: unexpected arrays {unknown} next to 'features' "
                                     "(allowed: features, mask, prompts)")
                f = _as_features(f"{path}[features]", data["features"])
                if f.ndim != 3 or f.shape[0] == 0:
                    raise ValueError(f"{path}: 'features' must have shape (B, L, C) with B >= 1, "
                                     f"got {f.shape}")
                m = (_as_mask(f"{path}[mask]", data["mask"], f.shape[:2]) if "mask" in keys
                     else np.ones(f.shape[:2], bool))
                prompts = None
                if "prompts" in keys:
                    p = data["prompts"]
                    if p.dtype.kind not in "US" or p.shape != (f.shape[0],):
                        raise ValueError(f"{path}: 'prompts' must be a ({f.shape[0]},) str array, "
                                         f"got dtype {p.dtype} shape {p.shape}")
                    prompts = [str(s) for s in p.astype(str)]
                    dup = sorted({s for s in prompts if prompts.count(s) > 1})
                    if dup:
                        raise ValueError(f"{path}: duplicate prompts {dup[:3]}")
                return prompts, [f], [m]
            feats = []
            for k in keys:
                f = _as_features(f"{path}[{k!r}]", data[k])
                if f.ndim == 3 and f.shape[0] == 1:
                    f = f[0]
                if f.ndim != 2:
                    raise ValueError(f"{path}: entry {k!r} must hold (n, C) or (1, n, C) features "
                                     f"of one prompt, got shape {data[k].shape}")
                feats.append(f[None])
            return keys, feats, [np.ones(f.shape[:2], bool) for f in feats]

    def __len__(self) -> int:
        return int(self._features.shape[0])

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B prompts) -> (features float32 (B, length, dim), mask bool (B, length)).

        Raises ``KeyError`` naming prompts that are not stored (prompt-indexed files) and
        ``ValueError`` when B differs from the number of stored rows (positional files).
        """
        prompts = _check_prompts(prompts)
        if self._index is None:
            if len(prompts) != len(self):
                raise ValueError(
                    f"{self.path} stores {len(self)} unnamed row(s) served in order; got "
                    f"{len(prompts)} prompt(s). Store a 'prompts' array to look prompts up by name.")
            return self._features.copy(), self._mask.copy()
        missing = [p for p in prompts if p not in self._index]
        if missing:
            raise KeyError(f"{self.path}: no features for {len(missing)} prompt(s): "
                           f"{missing[:3]}{' ...' if len(missing) > 3 else ''}")
        idx = np.array([self._index[p] for p in prompts])
        return self._features[idx], self._mask[idx]


# ----------------------------------------------------------------------------- T5

MAX_SPIECE_BYTES = 64 << 20  # flan-t5's spiece.model is 0.8 MB


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("a truncated or overlong varint")


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varint and fixed
    fields, bytes for length-delimited ones. ValueError for malformed wire data."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(data):
                raise ValueError("a truncated fixed-size field")
            value, pos = int.from_bytes(data[pos:pos + n], "little"), pos + n
        elif wire == 2:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise ValueError("a length-delimited field past the end")
            value, pos = data[pos:pos + n], pos + n
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


def check_spiece_model(path) -> int:
    """The number of pieces of the SentencePiece model file `path` (a serialized ModelProto:
    field 1 repeats SentencePiece messages, each with a UTF-8 piece in its field 1). Reads at
    most MAX_SPIECE_BYTES; ValueError naming the file for anything that does not parse as one
    with at least one piece (garbage, an empty or truncated file). Needs no sentencepiece."""
    from scalingar_jax.inputs import read_bounded

    data = read_bounded(path, MAX_SPIECE_BYTES, repr(os.fspath(path)))
    pieces = 0
    try:
        for field, wire, value in _fields(data):
            if field == 1:
                if wire != 2:
                    raise ValueError("a piece that is not a message")
                text = [v for f, w, v in _fields(value) if f == 1 and w == 2]
                if len(text) != 1:
                    raise ValueError(f"piece {pieces} has no text")
                text[0].decode("utf-8")
                pieces += 1
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r} is not a SentencePiece model ({str(e)[:80]})") from None
    if not pieces:
        raise ValueError(f"{os.fspath(path)!r} is not a SentencePiece model (it holds no pieces)")
    return pieces


def _load_sentencepiece(model_path: str):
    try:
        import sentencepiece as spm
    except ImportError as e:
        raise ImportError(
            "T5TextEncoder tokenizes prompts with the checkpoint's spiece.model and needs the "
            "'sentencepiece' package, which is not a core dependency of scalingar-jax: "
            "pip install sentencepiece (or pass tokenizer=..., or use PrecomputedFeatures)"
        ) from e
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no SentencePiece model at {model_path}")
    check_spiece_model(model_path)
    try:
        return spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:  # sentencepiece's own refusal, e.g. "could not parse ModelProto"
        raise ValueError(f"{model_path!r} is not a SentencePiece model ({str(e)[:120]})") from None


class T5TextEncoder:
    """flan-t5 text encoder (Flax) over a local HF checkpoint directory.

    Args:
      directory: HF checkpoint dir with ``config.json``, the weights (see
        :func:`scalingar_jax.t5.load_hf_t5_encoder`) and ``spiece.model``.
      max_length: tokenizer length (LlamaGen: 120). Longer prompts keep their first
        ``max_length - 1`` pieces, then ``</s>`` (HF ``truncation=True`` behaviour).
      length: output slots (the GPT's ``cls_token_num``); default ``max_length``.
      preprocess: ``str -> str`` applied to each prompt first (default
        :func:`scalingar_jax.caption.lowercase`, LlamaGen's ``use_text_preprocessing=False``;
        ``None`` = verbatim).
      tokenizer: optional ``str -> list[int]`` replacing SentencePiece (pieces only, no
        ``</s>``); then ``sentencepiece`` is not needed.
      dtype, precision: matmul compute dtype / precision of the encoder (float32 default;
        on GPU/TPU pass ``jax.lax.Precision.HIGHEST`` for exact float32).
      batch_size: prompts per encoder call; the last chunk is padded so that every call has
        the same shape (one compilation).
      params, cfg: already-loaded ``(params, cfg)`` to skip reading the weights.

    ``encode(prompts)`` returns float32 (B, length, d_model) features and a bool (B, length)
    mask, left-padded with zeroed padding rows (see :func:`left_pad`).
    """

    def __init__(self, directory: str | os.PathLike, max_length: int = 120, *,
                 length: int | None = None,
                 preprocess: Callable[[str], str] | None = lowercase,
                 tokenizer: Callable[[str], Sequence[int]] | None = None,
                 dtype: Any = jnp.float32, precision: Any = None, batch_size: int = 16,
                 params: Any = None, cfg: Any = None):
        from scalingar_jax import t5 as t5lib

        directory = os.fspath(directory)
        if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) \
                or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for </s>), got {max_length!r}")
        length = max_length if length is None else length
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if (params is None) != (cfg is None):
            raise ValueError("pass both params and cfg, or neither")
        self.directory = directory
        self.max_length = int(max_length)
        self.length = int(length)
        self.batch_size = int(batch_size)
        self.preprocess = preprocess
        self.dtype = dtype
        self.precision = precision
        if tokenizer is None:
            sp = _load_sentencepiece(os.path.join(directory, "spiece.model"))
            self._tokenize = lambda text: sp.encode(text, out_type=int)
            self.eos_id = int(sp.eos_id()) if sp.eos_id() >= 0 else 1
            self.pad_id = int(sp.pad_id()) if sp.pad_id() >= 0 else 0
        else:
            if not callable(tokenizer):
                raise TypeError("tokenizer must be a callable str -> list[int]")
            self._tokenize = tokenizer
            self.eos_id, self.pad_id = 1, 0
        if params is None:
            params, cfg = t5lib.load_hf_t5_encoder(directory)
        self.cfg = cfg
        self.dim = int(cfg.d_model)
        self.params = jax.device_put(params)
        self._encode = t5lib.encode

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids int32 (B, max_length), attention_mask bool (B, max_length)),
        right-padded with ``pad_id``; each row is its pieces (at most ``max_length - 1``)
        followed by ``</s>``, as HF's T5 tokenizer with ``padding="max_length",
        truncation=True``. A longer prompt is truncated with a ``UserWarning`` naming its
        index and how many pieces were cut."""
        prompts = _check_prompts(prompts)
        ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.max_length), bool)
        keep = self.max_length - 1
        for i, p in enumerate(prompts):
            text = self.preprocess(p) if self.preprocess is not None else p
            if not text.strip():
                raise ValueError(f"prompt {i} is empty after preprocessing: {p!r}")
            pieces = [int(t) for t in self._tokenize(text)]
            if len(pieces) > keep:
                warnings.warn(f"prompt {i} is {len(pieces)} pieces long, more than max_length - 1 = {keep}: "
                              f"truncated, the last {len(pieces) - keep} piece(s) are cut "
                              f"({p[:40] + '...' if len(p) > 40 else p!r})",
                              UserWarning, stacklevel=2)
                pieces = pieces[:keep]
            row = pieces + [self.eos_id]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        bad = (ids < 0) | (ids >= self.cfg.vocab_size)
        if bad.any():
            raise ValueError(f"tokenizer produced ids outside [0, {self.cfg.vocab_size}): "
                             f"{sorted(set(ids[bad].tolist()))[:5]}")
        return ids, mask

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw encoder output, float32 (B, max_length, d_model), right-padded as the input
        (padded rows NOT zeroed); computed in fixed-size chunks of ``batch_size``."""
        b = input_ids.shape[0]
        bs = min(self.batch_size, b)
        outs = []
        for s in range(0, b, bs):
            ids, m = input_ids[s:s + bs], attention_mask[s:s + bs]
            k = ids.shape[0]
            if k < bs:  # pad with dummy "</s>" rows so every call has one shape
                ids = np.concatenate([ids, np.full((bs - k, ids.shape[1]), self.pad_id, np.int32)])
                m = np.concatenate([m, np.zeros((bs - k, m.shape[1]), bool)])
                ids[k:, 0], m[k:, 0] = self.eos_id, True
            h = self._encode(self.params, self.cfg, ids, m, dtype=self.dtype,
                             precision=self.precision)
            outs.append(np.asarray(h, np.float32)[:k])
        return np.concatenate(outs, axis=0)

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B prompts) -> (features float32 (B, length, d_model), mask bool (B, length)),
        left-padded, padded rows zeroed. ``ValueError`` for an empty list / empty prompt."""
        ids, mask = self.tokenize(prompts)
        h = self.hidden_states(ids, mask)
        out, out_mask = left_pad(h, mask, self.length)
        return np.asarray(out, np.float32), np.asarray(out_mask, bool)
