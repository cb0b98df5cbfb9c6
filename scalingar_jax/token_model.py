"""What the engine calls of an image-token model: the `TokenModel` protocol.

The engine (`scaling.engine`) drives any autoregressive image-token decoder with classifier-free
guidance through these few functions and never imports a model family: LlamaGen's GPT
implements it as `decode.GPTModel`; a second family (a LLaMA decoder whose image-token input
embedding and output head are its own, as Janus-Pro's) plugs in with its own implementation.

Rows. A model row is one sequence in the KV cache. With CFG every candidate has two rows: its
conditional row and its unconditional one. `prefill` returns the P conditional rows first, then
the P unconditional rows; the engine repeats them per candidate and keeps them in a pool of
model rows, so the cache must be a pytree whose every leaf has the row axis first (the engine
gathers, scatters and reshapes rows with `jax.tree.map`).

Positions. Image token k (0 <= k < block_size) is fed at the model's position of token k (the
model adds its condition length); `decode_step` takes one index for every row (an int32 scalar)
or one per row ((R,) int32: rows of different prompts at different tokens, as the continuous
batching pool runs them).

An implementation is a frozen dataclass of static configuration (hashable: the engine's jitted
pieces take it as a static argument, so two equal models share their compiles) whose methods are
traced inside jit.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TokenModel(Protocol):
    """An image-token decoder with CFG rows, as the engine calls it (see the module docstring)."""

    @property
    def vocab_size(self) -> int:
        """V: the image-token vocabulary (logits are (R, V))."""

    @property
    def block_size(self) -> int:
        """T: image tokens per image (grid_size ** 2)."""

    @property
    def grid_size(self) -> int:
        """g: the token grid's side (ScalingAR's blocks follow the grid)."""

    def check_condition(self, cond, cond_mask) -> tuple[Any, Any]:
        """Validates P conditions (raises ValueError/TypeError naming the problem) and returns
        them as device arrays: (cond with leading dimension P, cond_mask (P, S) bool or None)."""

    def prefill(self, params, cond, cond_mask) -> tuple[Any, Any]:
        """Runs the condition of P prompts, both CFG halves. Returns (logits (2P, V) float32
        predicting image token 0, cache of 2P rows: the P conditional rows, then the P
        unconditional ones, holding every position a decode_step writes)."""

    def decode_step(self, params, cache, tokens, k) -> tuple[Any, Any]:
        """Feeds image token k of every row: tokens (R,) int32, k int32 scalar or (R,). Returns
        (logits (R, V) float32 predicting token k + 1, cache)."""

    def init_cache(self, rows: int) -> Any:
        """An empty cache of `rows` rows (free rows of a pool: `prefill` rows are copied in), in
        the layout `prefill` gives for params in `decode_layout`."""

    def decode_layout(self, params) -> Any:
        """params in the layout the decode step reads fastest on the model's platform (converted
        once, outside the token loop and outside jit; unchanged if already converted)."""


class SizesFromConfig:
    """`vocab_size`, `block_size` and `grid_size` of a `TokenModel` read from its `cfg` field
    (a base of `decode.GPTModel` and `janus.JanusModel`)."""

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def block_size(self) -> int:
        return self.cfg.block_size

    @property
    def grid_size(self) -> int:
        return self.cfg.grid_size
