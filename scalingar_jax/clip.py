"""CLIP (Radford et al. 2021) in Flax linen, loaded torch-free from a Hugging Face CLIP folder,
with CLIP's tokenizer and image preprocessing as transformers does them (float32 on CPU).

Model (as transformers' `CLIPModel`):
- vision: patch embedding (a stride-p convolution without bias), a class token in front,
  learned position embeddings, `pre_layrnorm`, `num_hidden_layers` pre-LN blocks
  (`h += attn(LN1(h))`, `h += fc2(act(fc1(LN2(h))))`, attention with biases and a 1/sqrt(d)
  scale), `post_layernorm` of the class token, `visual_projection` (no bias);
- text: token + position embeddings, the same blocks under a causal mask, `final_layer_norm`,
  pooled at the end-of-text token, `text_projection` (no bias). Pooling follows transformers'
  rule: a config with `eos_token_id == 2` (the value of the original OpenAI configs, from before
  transformers' PR #24773) pools where the id is largest (the end-of-text token is the last id of
  the original vocabulary); any other `eos_token_id` pools at its first occurrence. Positions
  after the pooled one never reach it (causal mask), so padding needs no attention mask;
- activations `quick_gelu` (x * sigmoid(1.702 x), the original CLIP), `gelu` (erf), `gelu_new`
  / `gelu_pytorch_tanh` (tanh approximation), `relu`, `silu`, per tower as the config says;
- `logit_scale` (a log temperature): logits = exp(logit_scale) * cosine similarity.

Parameter tree (HF names, Flax leaves)::

    text_model/embeddings/{token,position}_embedding/embedding   (V, Dt), (P, Dt)
    text_model/encoder/layers_{i}/layer_norm{1,2}/{scale,bias}   (D,)
    text_model/encoder/layers_{i}/self_attn/{q,k,v,out}_proj/{kernel (D, D), bias (D,)}
    text_model/encoder/layers_{i}/mlp/fc1/{kernel (D, F), bias}, mlp/fc2/{kernel (F, D), bias}
    text_model/final_layer_norm/{scale,bias}
    vision_model/embeddings/class_embedding                     (Dv,)
    vision_model/embeddings/patch_embedding/kernel              (p, p, C, Dv)
    vision_model/embeddings/position_embedding/embedding        ((S/p)^2 + 1, Dv)
    vision_model/{pre_layrnorm,post_layernorm}/{scale,bias}; vision_model/encoder/... as text
    text_projection/kernel (Dt, E); visual_projection/kernel (Dv, E); logit_scale ()

Files of a HF CLIP folder: `config.json`, weights (`model.safetensors`, `pytorch_model.bin`, or
either sharded with its index), `vocab.json` + `merges.txt` (+ optional `tokenizer_config.json` /
`special_tokens_map.json`) for the tokenizer, optional `preprocessor_config.json`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import unicodedata
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.convert.hf import MAX_JSON_BYTES, check_layer_count, params_from_state_dict, read_json, read_weights
from scalingar_jax.inputs import read_bounded

__all__ = [
    "CLIPEncoderConfig", "CLIPConfig", "CLIPModel", "init_params", "text_features", "image_features",
    "clip_logits", "cosine_similarity", "convert_hf_clip", "load_hf_clip",
    "CLIPTokenizer", "load_tokenizer", "ImageProcessorConfig", "load_image_config", "preprocess",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
]

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LEGACY_EOS_TOKEN_ID = 2  # see the module docstring: pool at the largest id


# ----------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class CLIPEncoderConfig:
    """One tower's transformer: width, MLP width, depth, heads, activation, LayerNorm epsilon."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            _positive(f"CLIPEncoderConfig.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"CLIPEncoderConfig: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIPEncoderConfig.hidden_act {self.hidden_act!r} is not supported "
                             f"({', '.join(ACTIVATIONS)})")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"CLIPEncoderConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Static configuration of a CLIP model (hashable; a jit static argument)."""

    text: CLIPEncoderConfig
    vision: CLIPEncoderConfig
    projection_dim: int = 512
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    def __post_init__(self):
        for name in ("projection_dim", "vocab_size", "max_position_embeddings", "image_size", "patch_size",
                     "num_channels"):
            _positive(f"CLIPConfig.{name}", getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConfig: image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            raise ValueError(f"CLIPConfig.eos_token_id must be an int, got {self.eos_token_id!r}")

    @property
    def num_positions(self) -> int:
        """Vision tokens: patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "CLIPConfig":
        """From a HF CLIP `config.json` dict (`model_type` "clip", `text_config`, `vision_config`);
        a field a sub-config leaves out takes transformers' default, as transformers does.
        Raises ValueError for another model type or a malformed field."""
        if not isinstance(config, Mapping):
            raise TypeError(f"from_hf_config expects a dict, got {type(config).__name__}")
        if config.get("model_type", "clip") != "clip":
            raise ValueError(f"not a CLIP config: model_type={config.get('model_type')!r} (expected 'clip')")
        text = config.get("text_config") or config.get("text_config_dict") or {}
        vision = config.get("vision_config") or config.get("vision_config_dict") or {}
        if not isinstance(text, Mapping) or not isinstance(vision, Mapping):
            raise ValueError("CLIP config.json: text_config and vision_config must be objects")

        def enc(d, hidden, inter, layers, heads):
            return CLIPEncoderConfig(
                hidden_size=_int(d, "hidden_size", hidden), intermediate_size=_int(d, "intermediate_size", inter),
                num_layers=_int(d, "num_hidden_layers", layers), num_heads=_int(d, "num_attention_heads", heads),
                hidden_act=str(d.get("hidden_act", "quick_gelu")),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)))

        return cls(text=enc(text, 512, 2048, 12, 8), vision=enc(vision, 768, 3072, 12, 12),
                   projection_dim=_int(config, "projection_dim", 512), vocab_size=_int(text, "vocab_size", 49408),
                   max_position_embeddings=_int(text, "max_position_embeddings", 77),
                   eos_token_id=_int(text, "eos_token_id", 49407), image_size=_int(vision, "image_size", 224),
                   patch_size=_int(vision, "patch_size", 32), num_channels=_int(vision, "num_channels", 3))


def _positive(name: str, v) -> None:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _int(d: Mapping, key: str, default: int) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"CLIP config.json: {key} must be an int, got {v!r}")
    return v


# ----------------------------------------------------------------------------- modules

def _activation(name: str, x):
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.silu(x)


class _Attention(nn.Module):
    """Multi-head self-attention with biases. x (B, L, D), bias (1, 1, L, L) or None -> (B, L, D)."""

    cfg: CLIPEncoderConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias):
        c, prec = self.cfg, self.precision
        b, l, d = x.shape
        hd = d // c.num_heads
        q, k, v = (nn.Dense(d, name=f"{n}_proj", precision=prec)(x).reshape(b, l, c.num_heads, hd)
                   for n in "qkv")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=prec) * (hd ** -0.5)
        if bias is not None:
            logits = logits + bias
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v, precision=prec).reshape(b, l, d)
        return nn.Dense(d, name="out_proj", precision=prec)(o)


class _MLP(nn.Module):
    cfg: CLIPEncoderConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.cfg.intermediate_size, name="fc1", precision=self.precision)(x)
        return nn.Dense(x.shape[-1], name="fc2", precision=self.precision)(_activation(self.cfg.hidden_act, h))


def _layer_norm(cfg: CLIPEncoderConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.layer_norm_eps, use_fast_variance=False, name=name)  # two-pass, as torch


class _Encoder(nn.Module):
    """`num_layers` pre-LN blocks. x (B, L, D) -> (B, L, D); causal: text's mask."""

    cfg: CLIPEncoderConfig
    causal: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        l = x.shape[1]
        bias = None
        if self.causal:
            bias = jnp.where(jnp.tril(jnp.ones((l, l), bool)), 0.0, jnp.finfo(jnp.float32).min)[None, None]
        for i in range(self.cfg.num_layers):
            x = _Block(self.cfg, self.precision, name=f"layers_{i}")(x, bias)
        return x


class _Block(nn.Module):
    cfg: CLIPEncoderConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias):
        x = x + _Attention(self.cfg, self.precision, name="self_attn")(_layer_norm(self.cfg, "layer_norm1")(x), bias)
        return x + _MLP(self.cfg, self.precision, name="mlp")(_layer_norm(self.cfg, "layer_norm2")(x))


class _TextEmbeddings(nn.Module):
    cfg: CLIPConfig

    @nn.compact
    def __call__(self, input_ids):
        c = self.cfg
        tok = nn.Embed(c.vocab_size, c.text.hidden_size, name="token_embedding")(input_ids)
        pos = nn.Embed(c.max_position_embeddings, c.text.hidden_size, name="position_embedding")
        return tok + pos(jnp.arange(input_ids.shape[1]))[None]


class _TextTransformer(nn.Module):
    """input_ids (B, L) int32, L <= max_position_embeddings -> pooled (B, Dt) after the final LN."""

    cfg: CLIPConfig
    precision: Any = None

    @nn.compact
    def __call__(self, input_ids):
        c = self.cfg
        x = _TextEmbeddings(c, name="embeddings")(input_ids)
        x = _Encoder(c.text, causal=True, precision=self.precision, name="encoder")(x)
        x = _layer_norm(c.text, "final_layer_norm")(x)
        if c.eos_token_id == LEGACY_EOS_TOKEN_ID:
            pos = jnp.argmax(input_ids, axis=-1)  # first position of the largest id
        else:
            pos = jnp.argmax(input_ids == c.eos_token_id, axis=-1)  # first end-of-text token
        return x[jnp.arange(x.shape[0]), pos]


class _VisionEmbeddings(nn.Module):
    cfg: CLIPConfig
    precision: Any = None

    @nn.compact
    def __call__(self, pixels):
        c = self.cfg
        d = c.vision.hidden_size
        cls = self.param("class_embedding", nn.initializers.normal(1.0), (d,))
        p = nn.Conv(d, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size), padding="VALID",
                    use_bias=False, name="patch_embedding", precision=self.precision)(pixels)
        b = p.shape[0]
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), p.reshape(b, -1, d)], axis=1)
        pos = nn.Embed(c.num_positions, d, name="position_embedding")
        return x + pos(jnp.arange(c.num_positions))[None]


class _VisionTransformer(nn.Module):
    """pixels (B, S, S, C) float32 (preprocessed) -> pooled (B, Dv): the class token after post_layernorm."""

    cfg: CLIPConfig
    precision: Any = None

    @nn.compact
    def __call__(self, pixels):
        c = self.cfg
        x = _VisionEmbeddings(c, self.precision, name="embeddings")(pixels)
        x = _layer_norm(c.vision, "pre_layrnorm")(x)  # sic: HF's name
        x = _Encoder(c.vision, causal=False, precision=self.precision, name="encoder")(x)
        return _layer_norm(c.vision, "post_layernorm")(x[:, 0])


class CLIPModel(nn.Module):
    """CLIP. `__call__(input_ids, pixels)` -> (text_embeds (Bt, E), image_embeds (Bi, E)),
    unnormalised projections; `text_features` / `image_features` run one tower each."""

    cfg: CLIPConfig
    precision: Any = None

    def setup(self):
        self.text_model = _TextTransformer(self.cfg, self.precision)
        self.vision_model = _VisionTransformer(self.cfg, self.precision)
        self.text_projection = nn.Dense(self.cfg.projection_dim, use_bias=False, precision=self.precision)
        self.visual_projection = nn.Dense(self.cfg.projection_dim, use_bias=False, precision=self.precision)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ())

    def text_features(self, input_ids):
        return self.text_projection(self.text_model(input_ids))

    def image_features(self, pixels):
        return self.visual_projection(self.vision_model(pixels))

    def __call__(self, input_ids, pixels):
        return self.text_features(input_ids), self.image_features(pixels)


# ----------------------------------------------------------------------------- functions

def init_params(key: jax.Array, cfg: CLIPConfig) -> dict:
    """Random float32 params for `cfg` (for tests; real weights come from HF)."""
    ids = jnp.zeros((1, 4), jnp.int32)
    pixels = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
    return jax.jit(CLIPModel(cfg).init)(key, ids, pixels)["params"]


def _check_ids(cfg: CLIPConfig, input_ids) -> jax.Array:
    a = np.asarray(input_ids)
    if a.ndim != 2 or not 1 <= a.shape[1] <= cfg.max_position_embeddings:
        raise ValueError(f"input_ids must have shape (B, L) with 1 <= L <= {cfg.max_position_embeddings}, "
                         f"got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"input_ids must be integer, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= cfg.vocab_size):
        raise ValueError(f"input_ids out of range [0, {cfg.vocab_size}): min {a.min()}, max {a.max()}")
    return jnp.asarray(a, jnp.int32)


def _check_pixels(cfg: CLIPConfig, pixels) -> jax.Array:
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if np.ndim(pixels) != 4 or tuple(np.shape(pixels)[1:]) != want:
        raise ValueError(f"pixels must have shape (B, {want[0]}, {want[1]}, {want[2]}) (preprocessed, "
                         f"channels last), got {np.shape(pixels)}")
    return jnp.asarray(pixels, jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "method", "precision"))
def _apply(params, x, *, cfg, method, precision):
    return CLIPModel(cfg, precision).apply({"params": params}, x, method=method)


def text_features(params, cfg: CLIPConfig, input_ids, *, precision=None) -> jax.Array:
    """input_ids (B, L) int (end-of-text token included, see the module docstring) ->
    (B, projection_dim) float32 text embeddings (not normalised), as HF's `get_text_features`."""
    return _apply(params, _check_ids(cfg, input_ids), cfg=cfg, method="text_features", precision=precision)


def image_features(params, cfg: CLIPConfig, pixels, *, precision=None) -> jax.Array:
    """pixels (B, S, S, C) float32 from `preprocess` -> (B, projection_dim) float32 image
    embeddings (not normalised), as HF's `get_image_features`."""
    return _apply(params, _check_pixels(cfg, pixels), cfg=cfg, method="image_features", precision=precision)


def cosine_similarity(a, b) -> jax.Array:
    """a (..., E), b (..., E) -> (...) cosine similarity, rowwise."""
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    return jnp.sum(a * b, axis=-1)


def clip_logits(params, cfg: CLIPConfig, pixels, input_ids, *, precision=None) -> jax.Array:
    """pixels (Bi, S, S, C), input_ids (Bt, L) -> logits_per_image (Bi, Bt) float32:
    exp(logit_scale) * cosine similarity of every image with every text, as HF's `CLIPModel`."""
    t = text_features(params, cfg, input_ids, precision=precision)
    i = image_features(params, cfg, pixels, precision=precision)
    return jnp.exp(params["logit_scale"]) * cosine_similarity(i[:, None, :], t[None, :, :])


# ----------------------------------------------------------------------------- HF weights

def _hf_key_map(cfg: CLIPConfig) -> dict[tuple[str, ...], tuple[str, tuple[int, ...], Any]]:
    """Flax param path -> (HF key, HF (torch) shape, layout change)."""
    m: dict[tuple[str, ...], tuple[str, tuple[int, ...], Any]] = {}

    def ln(path, key, d):
        m[(*path, "scale")] = (f"{key}.weight", (d,), False)
        m[(*path, "bias")] = (f"{key}.bias", (d,), False)

    def linear(path, key, d_in, d_out, bias=True):
        m[(*path, "kernel")] = (f"{key}.weight", (d_out, d_in), True)
        if bias:
            m[(*path, "bias")] = (f"{key}.bias", (d_out,), False)

    def encoder(tower, e: CLIPEncoderConfig):
        d, f = e.hidden_size, e.intermediate_size
        for i in range(e.num_layers):
            path, key = (tower, "encoder", f"layers_{i}"), f"{tower}.encoder.layers.{i}"
            ln((*path, "layer_norm1"), f"{key}.layer_norm1", d)
            ln((*path, "layer_norm2"), f"{key}.layer_norm2", d)
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                linear((*path, "self_attn", n), f"{key}.self_attn.{n}", d, d)
            linear((*path, "mlp", "fc1"), f"{key}.mlp.fc1", d, f)
            linear((*path, "mlp", "fc2"), f"{key}.mlp.fc2", f, d)

    dt, dv, p = cfg.text.hidden_size, cfg.vision.hidden_size, cfg.patch_size
    emb = ("text_model", "embeddings")
    m[(*emb, "token_embedding", "embedding")] = ("text_model.embeddings.token_embedding.weight",
                                                  (cfg.vocab_size, dt), False)
    m[(*emb, "position_embedding", "embedding")] = ("text_model.embeddings.position_embedding.weight",
                                                     (cfg.max_position_embeddings, dt), False)
    encoder("text_model", cfg.text)
    ln(("text_model", "final_layer_norm"), "text_model.final_layer_norm", dt)
    emb = ("vision_model", "embeddings")
    m[(*emb, "class_embedding")] = ("vision_model.embeddings.class_embedding", (dv,), False)
    m[(*emb, "patch_embedding", "kernel")] = ("vision_model.embeddings.patch_embedding.weight",
                                              (dv, cfg.num_channels, p, p), (2, 3, 1, 0))
    m[(*emb, "position_embedding", "embedding")] = ("vision_model.embeddings.position_embedding.weight",
                                                     (cfg.num_positions, dv), False)
    ln(("vision_model", "pre_layrnorm"), "vision_model.pre_layrnorm", dv)
    encoder("vision_model", cfg.vision)
    ln(("vision_model", "post_layernorm"), "vision_model.post_layernorm", dv)
    linear(("text_projection",), "text_projection", dt, cfg.projection_dim, bias=False)
    linear(("visual_projection",), "visual_projection", dv, cfg.projection_dim, bias=False)
    m[("logit_scale",)] = ("logit_scale", (), False)
    return m


def convert_hf_clip(state_dict: Mapping[str, Any], cfg: CLIPConfig, *, what: str = "HF CLIP checkpoint") -> dict:
    """A HF `CLIPModel` state dict (numpy arrays or LazyTensors) -> the float32 params of
    :class:`CLIPModel`. Extra keys (e.g. `position_ids` buffers) are ignored. Raises KeyError
    naming missing keys, ValueError naming a key whose shape differs from `cfg` or that holds
    NaN / infinity, TypeError for a non-float tensor."""
    return params_from_state_dict(state_dict, _hf_key_map(cfg), what=what, config="the CLIP config.json",
                                  check_finite=True)


_HF_PREFIXES = ("text_model.", "vision_model.", "text_projection.", "visual_projection.", "logit_scale")


def load_hf_clip(directory: str | os.PathLike) -> tuple[dict, CLIPConfig]:
    """The model of a local HF CLIP folder (`config.json` + weights), without torch.

    Returns (params, cfg): float32 numpy params (tree in the module docstring). Raises
    FileNotFoundError (no folder, no config.json, no weights), KeyError / ValueError / TypeError
    from `convert_hf_clip` (a config that does not match the weights, non-finite weights).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CLIP model folder {directory!r} does not exist")
    cfg = CLIPConfig.from_hf_config(read_json(directory, "config.json"))
    sd = read_weights(directory, lambda k: k.startswith(_HF_PREFIXES))  # lazy: names and shapes only
    where = os.path.join(directory, "config.json")
    for tower, enc in (("text", cfg.text), ("vision", cfg.vision)):  # before a key map is built from them
        check_layer_count(sd, rf"{tower}_model\.encoder\.layers\.(\d+)\.", enc.num_layers, where=where,
                          field=f"{tower}_config.num_hidden_layers")
    return convert_hf_clip(sd, cfg, what=f"the CLIP checkpoint in {directory}"), cfg


# ----------------------------------------------------------------------------- tokenizer

def _byte_chars() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character table (byte b -> result[b])."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


_BYTE_CHARS = _byte_chars()
# `\s` of the regular expressions transformers' CLIP tokenizer uses (Unicode White_Space), which
# is not Python's str.isspace (that one also holds U+001C..U+001F).
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(map(chr, range(0x2000, 0x200B))))
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPLIT_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_DEFAULT_SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                     "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def _char_class(ch: str) -> str:
    if ch in _WHITESPACE:
        return " "
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "o"


def _pieces(text: str, *, single_numbers: bool, specials: Sequence[str] = ()) -> list[str]:
    """The words of `text` by CLIP's pattern `specials|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`
    (`\\p{N}+` when not `single_numbers`: GPT-2's byte-level pattern); whitespace separates and is dropped."""
    out, i, n = [], 0, len(text)
    while i < n:
        hit = next((s for s in (*specials, *(_CONTRACTIONS if text[i] == "'" else ())) if text.startswith(s, i)), None)
        if hit is not None:
            out.append(hit)
            i += len(hit)
            continue
        k = _char_class(text[i])
        j = i + 1
        if k == " ":
            i = j
            continue
        if not (k == "N" and single_numbers):
            while j < n and _char_class(text[j]) == k:
                j += 1
        out.append(text[i:j])
        i = j
    return out


def _normalize(text: str) -> str:
    """NFC, every whitespace run -> one space, lower case character by character (as transformers'
    CLIP tokenizer: no final-sigma rule)."""
    text = unicodedata.normalize("NFC", text)
    out, prev_space = [], False
    for ch in text:
        space = ch in _WHITESPACE
        if not (space and prev_space):
            out.append(" " if space else ch.lower())
        prev_space = space
    return "".join(out)


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer` encodes (version 5,
    backed by `tokenizers`): special tokens in the raw text are kept whole; the rest is NFC
    normalised, whitespace runs collapse, it is lower-cased, split into words (letters runs,
    single digits, punctuation runs, English contractions), each word byte-mapped and BPE-merged
    with the end-of-word suffix `</w>`; `<|startoftext|>` ... `<|endoftext|>` around it, at most
    `max_length` ids in all, padded with the pad token. The word split is a scanner over Unicode
    general categories (letters L*, numbers N*, White_Space) written for this module: it needs
    neither the `regex` package nor an approximation of `\\p{L}` / `\\p{N}` with `re`.

    vocab: token -> id (vocab.json); merges: ranked pairs (merges.txt); specials: bos_token,
    eos_token, unk_token, pad_token strings (each in `vocab`).
    """

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *, max_length: int = 77,
                 specials: Mapping[str, str] | None = None):
        if not isinstance(vocab, Mapping) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                     for k, v in vocab.items()):
            raise ValueError("CLIP tokenizer: vocab must map token strings to non-negative int ids")
        specials = {**_DEFAULT_SPECIALS, **dict(specials or {})}
        for name, token in specials.items():
            if token not in vocab:
                raise ValueError(f"CLIP tokenizer: {name} {token!r} is not in the vocabulary")
        if max_length < 2:
            raise ValueError(f"CLIP tokenizer: max_length must be >= 2, got {max_length}")
        self.vocab = dict(vocab)
        self.ranks = {}
        for r, (a, b) in enumerate(merges):
            if a + b not in self.vocab:
                raise ValueError(f"CLIP tokenizer: merge {r + 1} ({a!r} {b!r}) makes {a + b!r}, which is not in "
                                 "the vocabulary")
            self.ranks.setdefault((a, b), r)
        self.max_length = int(max_length)
        self.specials = specials
        self.bos_id, self.eos_id = vocab[specials["bos_token"]], vocab[specials["eos_token"]]
        self.unk_id, self.pad_id = vocab[specials["unk_token"]], vocab[specials["pad_token"]]
        self._added = sorted(set(specials.values()), key=len, reverse=True)

    def _bpe(self, word: str) -> list[str]:
        parts = [_BYTE_CHARS[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:]) if (a, b) in self.ranks}
            if not pairs:
                break
            a, b = min(pairs, key=self.ranks.__getitem__)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _segments(self, text: str) -> list[tuple[str, bool]]:
        """text -> [(segment, is_special_token)], special tokens matched leftmost-longest in the raw text."""
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((t for t in self._added if text.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append((text[start:i], False))
            out.append((hit, True))
            i = start = i + len(hit)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def content_ids(self, text: str) -> list[int]:
        """The ids of `text` without bos/eos and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"CLIP tokenizer: a prompt must be a str, got {type(text).__name__}")
        ids = []
        for seg, special in self._segments(text):
            if special:
                ids.append(self.vocab[seg])
                continue
            for piece in _pieces(_normalize(seg), single_numbers=True, specials=_SPLIT_SPECIALS):
                for word in _pieces(piece, single_numbers=False):
                    ids.extend(self.vocab.get(t, self.unk_id) for t in self._bpe(word))
        return ids

    def encode(self, text: str) -> list[int]:
        """[bos] + the first max_length - 2 content ids + [eos]."""
        return [self.bos_id, *self.content_ids(text)[: self.max_length - 2], self.eos_id]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """B prompts -> (B, max_length) int32 ids, right-padded with the pad id."""
        if isinstance(texts, str):
            raise TypeError("CLIP tokenizer: pass a list of prompts, not one str")
        out = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        for b, t in enumerate(texts):
            ids = self.encode(t)
            out[b, : len(ids)] = ids
        return out


def _token_string(v, where: str) -> str:
    if isinstance(v, Mapping):
        v = v.get("content")
    if not isinstance(v, str):
        raise ValueError(f"{where}: a special token must be a string or {{'content': str}}, got {v!r}")
    return v


def load_tokenizer(directory: str | os.PathLike, *, max_length: int = 77) -> CLIPTokenizer:
    """The tokenizer of a HF CLIP folder: vocab.json, merges.txt (a first line "#version..." is
    skipped), special tokens from tokenizer_config.json or special_tokens_map.json when present.
    max_length: the most ids per prompt (also capped by tokenizer_config's model_max_length).
    Raises FileNotFoundError / ValueError naming the file."""
    directory = os.fspath(directory)
    vocab = read_json(directory, "vocab.json")
    path = os.path.join(directory, "merges.txt")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{directory}: no merges.txt")
    merges = []
    try:
        lines = read_bounded(path, MAX_JSON_BYTES, path).decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if (n == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}, line {n}: expected two tokens separated by one space, got {line[:80]!r}")
        merges.append((parts[0], parts[1]))
    specials: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        conf = read_json(directory, name, required=False) or {}
        for key in _DEFAULT_SPECIALS:
            if conf.get(key) is not None:
                specials[key] = _token_string(conf[key], os.path.join(directory, name))
        if name == "tokenizer_config.json" and isinstance(conf.get("model_max_length"), int):
            max_length = min(max_length, conf["model_max_length"])
    try:
        return CLIPTokenizer(vocab, merges, max_length=max_length, specials=specials)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None


# ----------------------------------------------------------------------------- images

_PIL_FILTERS = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """CLIPImageProcessor's steps: resize (the shortest edge to `shortest_edge`, aspect kept, or to
    exactly `size`=(h, w)) with Pillow filter `resample` (3 = bicubic) on the uint8 image; centre
    crop to `crop_size` (h, w), zero-padded if the image is smaller; x * rescale_factor (in float64,
    then float32); (x - mean) / std per channel (float32)."""

    do_resize: bool = True
    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None
    resample: int = 3
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    def __post_init__(self):
        if self.do_resize and (self.shortest_edge is None) == (self.size is None):
            raise ValueError("ImageProcessorConfig: give exactly one of shortest_edge and size")
        if self.resample not in _PIL_FILTERS:
            raise ValueError(f"ImageProcessorConfig.resample must be a Pillow filter code {sorted(_PIL_FILTERS)}, "
                             f"got {self.resample!r}")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise ValueError(f"ImageProcessorConfig.{name} must be 3 finite numbers, got {v!r}")
        if not all(s > 0 for s in self.image_std):
            raise ValueError(f"ImageProcessorConfig.image_std must be > 0, got {self.image_std!r}")

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], where: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        """From a HF `preprocessor_config.json` dict (old int `size`/`crop_size` forms too)."""
        base = cls()

        def hw(v, key):
            if isinstance(v, int) and not isinstance(v, bool):
                return (v, v)
            if isinstance(v, Mapping) and isinstance(v.get("height"), int) and isinstance(v.get("width"), int):
                return (v["height"], v["width"])
            raise ValueError(f"{where}: {key} must be an int or {{height, width}}, got {v!r}")

        size = d.get("size", {"shortest_edge": 224})
        shortest, exact = None, None
        if isinstance(size, int) and not isinstance(size, bool):
            shortest = size
        elif isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
            shortest = size["shortest_edge"]
        else:
            exact = hw(size, "size")
        try:
            return cls(do_resize=bool(d.get("do_resize", True)), shortest_edge=shortest, size=exact,
                       resample=int(d.get("resample", 3)), do_center_crop=bool(d.get("do_center_crop", True)),
                       crop_size=hw(d.get("crop_size", 224), "crop_size"), do_rescale=bool(d.get("do_rescale", True)),
                       rescale_factor=float(d.get("rescale_factor", base.rescale_factor)),
                       do_normalize=bool(d.get("do_normalize", True)),
                       image_mean=tuple(float(x) for x in d.get("image_mean", base.image_mean)),
                       image_std=tuple(float(x) for x in d.get("image_std", base.image_std)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def load_image_config(directory: str | os.PathLike, cfg: CLIPConfig) -> ImageProcessorConfig:
    """`preprocessor_config.json` of a HF CLIP folder, or, without one, CLIP's defaults at the
    model's image size (shortest edge = crop = image_size, bicubic, OpenAI's mean/std).
    Raises ValueError when the processed size is not the model's image_size x image_size."""
    directory = os.fspath(directory)
    d = read_json(directory, "preprocessor_config.json", required=False)
    if d is None:
        s = cfg.image_size
        return ImageProcessorConfig(shortest_edge=s, crop_size=(s, s))
    where = os.path.join(directory, "preprocessor_config.json")
    pc = ImageProcessorConfig.from_hf(d, where)
    out = pc.crop_size if pc.do_center_crop else pc.size if pc.do_resize else None
    if out != (cfg.image_size, cfg.image_size):
        raise ValueError(f"{where}: images come out {'of any size' if out is None else '%dx%d' % out} but the "
                         f"model (config.json) takes {cfg.image_size}x{cfg.image_size}")
    return pc


def _resize_shape(h: int, w: int, pc: ImageProcessorConfig) -> tuple[int, int]:
    if pc.size is not None:
        return pc.size
    s = pc.shortest_edge
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(s * long / short)
    return (new_long, s) if w <= h else (s, new_long)


def _center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = x.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return x[top: top + ch, left: left + cw]
    nh, nw = max(ch, h), max(cw, w)  # too small: zero padding, placed as transformers does
    pt, pl = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded = np.zeros((nh, nw, *x.shape[2:]), x.dtype)
    padded[pt: pt + h, pl: pl + w] = x
    top, left = top + pt, left + pl
    return padded[max(0, top): min(nh, top + ch), max(0, left): min(nw, left + cw)]


def preprocess(images, pc: ImageProcessorConfig) -> np.ndarray:
    """uint8 images (B, H, W, 3) (or a sequence of (H, W, 3) of any sizes) -> float32
    (B, h, w, 3) pixel values, channels last, as CLIPImageProcessor's (Pillow backend)
    `pixel_values` (which are channels first)."""
    from PIL import Image

    seq = list(images) if not (isinstance(images, np.ndarray) and images.ndim == 3) else [images]
    if not seq:
        raise ValueError("preprocess: no images")
    out = []
    for n, im in enumerate(seq):
        x = np.asarray(im)
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or min(x.shape[:2]) == 0:
            raise ValueError(f"preprocess: image {n} must be uint8 (H, W, 3), got {x.dtype} {x.shape}")
        if pc.do_resize:
            h, w = _resize_shape(*x.shape[:2], pc)
            filt = getattr(Image.Resampling, _PIL_FILTERS[pc.resample])
            x = np.asarray(Image.fromarray(x).resize((w, h), resample=filt))
        if pc.do_center_crop:
            x = _center_crop(x, *pc.crop_size)
        if pc.do_rescale:
            x = (x.astype(np.float64) * pc.rescale_factor).astype(np.float32)
        if pc.do_normalize:
            x = x.astype(np.float32)
            x = (x - np.asarray(pc.image_mean, np.float32)) / np.asarray(pc.image_std, np.float32)
        out.append(np.asarray(x, np.float32))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"preprocess: images come out in different sizes {sorted(shapes)} (no centre crop)")
    return np.stack(out)
