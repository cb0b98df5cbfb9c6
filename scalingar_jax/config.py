"""Static configuration as data: frozen (hashable) dataclasses usable as jit static args.

`GPTConfig` describes a LlamaGen GPT (c2i or t2i, any preset); `SamplingConfig` the
LlamaGen sampling knobs. Every check that can fail on user input lives in `validate()` and
raises before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
import numpy as np

# name -> (n_layer, n_head, dim); LlamaGen's table.
GPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str):
    """Maps a dtype name ("float32", "bfloat16", "float16") to the jnp dtype."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


# Upper bounds on size fields: far above any LlamaGen model, low enough that arithmetic on them
# cannot ask for terabytes before a clear error.
MAX_SIZE = {"n_layer": 512, "n_head": 1024, "n_kv_head": 1024, "dim": 65536, "vocab_size": 1 << 24,
            "multiple_of": 65536, "num_classes": 1 << 24, "cls_token_num": 4096, "caption_dim": 65536,
            "grid_size": 256}


MAX_SCALE = 1e4  # cfg_scale and temperature


def check_int(owner: str, name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; else ValueError naming `owner.name` (bools are not ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}.{name} must be an integer in [{lo}, {hi}], got {type(value).__name__} {value!r:.60}")
    if not lo <= value <= hi:
        raise ValueError(f"{owner}.{name} must be in [{lo}, {hi}], got {value!r:.60}")
    return int(value)


def check_float(owner: str, name: str, value, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi] with `open_lo`); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}.{name} must be a number, got {type(value).__name__} {value!r:.60}")
    v = float(value)
    if not (math.isfinite(v) and (v > lo if open_lo else v >= lo) and v <= hi):
        raise ValueError(f"{owner}.{name} must be finite and in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")
    return v


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """A LlamaGen GPT. Image tokens: `grid_size**2`; condition positions: `cls_token_num`."""

    model_type: Literal["c2i", "t2i"] = "c2i"
    n_layer: int = 12
    n_head: int = 12
    dim: int = 768
    n_kv_head: int | None = None
    vocab_size: int = 16384
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    num_classes: int = 1000
    cls_token_num: int = 1
    caption_dim: int = 2048
    grid_size: int = 16
    param_dtype: str = "float32"
    dtype: str = "float32"  # activation / compute dtype; logits are always float32

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return _find_multiple(hidden, self.multiple_of)

    @property
    def block_size(self) -> int:
        """Number of image tokens T = grid_size**2."""
        return self.grid_size * self.grid_size

    @property
    def max_seq_len(self) -> int:
        """Condition positions plus image tokens (the last image token is never fed back)."""
        return self.cls_token_num + self.block_size

    def validate(self) -> "GPTConfig":
        """Type- and range-checks every field (sizes bounded by `MAX_SIZE`); returns self."""
        check_gpt_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.ffn_hidden > 1 << 20:
            raise ValueError(f"GPTConfig: the feed-forward width {self.ffn_hidden} exceeds {1 << 20}")
        if self.dim % self.n_head:
            raise ValueError(f"dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 4:
            raise ValueError(
                f"head_dim={self.head_dim} must be divisible by 4 (2D rotary: hd/4 row and hd/4 column pairs)"
            )
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.kv_heads}")
        if self.model_type == "c2i" and self.cls_token_num != 1:
            raise ValueError(f"c2i models use cls_token_num=1, got {self.cls_token_num}")
        to_dtype(self.param_dtype), to_dtype(self.dtype)
        return self


def check_gpt_fields(fields: dict) -> dict:
    """Checks the type and range of each given `GPTConfig` field on its own (no cross-field
    rules), so overrides from a file or the command line fail with a clear ValueError before
    any arithmetic uses them. Unknown names are left to the caller. Returns `fields`."""
    for name, value in fields.items():
        if name in MAX_SIZE:
            if name != "n_kv_head" or value is not None:
                check_int("GPTConfig", name, value, 1, MAX_SIZE[name])
        elif name == "model_type":
            if not isinstance(value, str) or value not in ("c2i", "t2i"):
                raise ValueError(f"model_type must be 'c2i' or 't2i', got {value!r:.60}")
        elif name == "ffn_dim_multiplier":
            if value is not None:
                check_float("GPTConfig", name, value, 0.0, 64.0, open_lo=True)
        elif name == "norm_eps":
            check_float("GPTConfig", name, value, 0.0, 1.0, open_lo=True)
        elif name == "rope_base":
            check_float("GPTConfig", name, value, 1.0, 1e12, open_lo=True)
        elif name in ("param_dtype", "dtype"):
            if not isinstance(value, str):
                raise ValueError(f"GPTConfig.{name} must be a dtype name, got {value!r:.60}")
            to_dtype(value)
    return fields


def gpt_config(preset: str, model_type: str = "c2i", **overrides) -> GPTConfig:
    """A validated `GPTConfig` for a LlamaGen preset ("GPT-B" ... "GPT-7B").

    t2i presets default to LlamaGen's text conditioning (cls_token_num=120, caption_dim=2048).
    """
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available presets: {', '.join(GPT_PRESETS)}")
    n_layer, n_head, dim = GPT_PRESETS[preset]
    base = dict(model_type=model_type, n_layer=n_layer, n_head=n_head, dim=dim)
    if model_type == "t2i":
        base.update(cls_token_num=120, caption_dim=2048)
    base.update(overrides)
    return GPTConfig(**base).validate()


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """LlamaGen sampling: CFG, then /temperature, then top-k, then top-p, then a multinomial draw.

    `cfg_scale` is the default guidance scale; as in LlamaGen, a scale <= 1.0 runs no
    unconditional half (no CFG). `cfg_interval=i`: guidance stops after decode step i (-1: never stops).
    `top_k=0` and `top_p=1.0` disable the filters.
    """

    cfg_scale: float = 4.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_interval: int = -1

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale > 1.0

    def validate(self, vocab_size: int | None = None) -> "SamplingConfig":
        """Type- and range-checks every field; returns self."""
        for name in ("cfg_scale", "temperature", "top_p"):
            check_float("SamplingConfig", name, getattr(self, name), -MAX_SCALE, MAX_SCALE)  # type; finite; bound
        check_int("SamplingConfig", "top_k", self.top_k, 0, MAX_SIZE["vocab_size"])
        check_int("SamplingConfig", "cfg_interval", self.cfg_interval, -1, 1 << 20)
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(f"cfg_scale must be finite and >= 0, got {self.cfg_scale}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if self.top_k < 0 or (vocab_size is not None and self.top_k > vocab_size):
            raise ValueError(f"top_k must be in [0, vocab_size={vocab_size}], got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_interval < -1:
            raise ValueError(f"cfg_interval must be >= -1, got {self.cfg_interval}")
        return self
