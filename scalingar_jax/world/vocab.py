"""The shapes world's vocabulary as data, and its word-level tokenizer.

Everything here is plain data (tuples, dicts, numpy arrays); no JAX. The renderer, the judge
and the prompt generators all read the same tables, so a shape, colour or word exists in
the world exactly when it is listed here.

- `SHAPES`: the object classes. Four flat shapes the exact judge tells apart from geometry
  alone (bounding-box fill ratio, template overlap): circle, square, triangle (apex up) and
  cross (a plus sign).
- `PALETTE`: named colours with RGB values chosen far apart (pairwise RGB distance >= 140),
  so a lossy VQ reconstruction (blur, colour shift of a few tens) still maps every object
  pixel to its own colour. `BACKGROUND` is the dark plain background.
- `NUMBER_WORDS`: one..six. GenEval's counting uses two..four; five and six appear only in
  the hard (robustness) prompt set, never in training.
- `RELATIONS`: GenEval's four position phrases (defined in `scalingar_jax.geneval`).

The tokenizer (`tokenize`) is word level and LEFT-padded like LlamaGen's t2i captions: the
valid tokens sit at the END of the `max_len` slots, id 0 is padding.
"""
from __future__ import annotations

import numpy as np

from scalingar_jax.geneval import RELATIONS  # noqa: F401  (GenEval's; re-exported)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
}

# name -> (R, G, B). Pairwise Euclidean distance >= 140 (blue/purple is the closest pair);
# distance to BACKGROUND >= 175.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 190, 60),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
    "purple": (170, 40, 200),
    "white": (235, 235, 235),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (18, 18, 26)

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
WORD_NUMBERS: dict[str, int] = {w: n for n, w in NUMBER_WORDS.items()}

_FUNCTION_WORDS = ("a", "photo", "of", "and", "left", "right", "above", "below")

# id 0 is padding; the order is fixed (ids are part of trained checkpoints: append only).
VOCAB: tuple[str, ...] = (
    ("<pad>",)
    + _FUNCTION_WORDS
    + tuple(NUMBER_WORDS[n] for n in sorted(NUMBER_WORDS))
    + COLORS
    + SHAPES
    + tuple(PLURALS[s] for s in SHAPES)
)
WORD_TO_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
PAD_ID: int = 0
VOCAB_SIZE: int = len(VOCAB)
# Longest prompt in any set of this world (hard set, 3-object colour binding) has 14 words.
MAX_PROMPT_LEN: int = 16

assert len(set(VOCAB)) == len(VOCAB), "duplicate word in VOCAB"


def split_words(prompt: str) -> list[str]:
    """Lower-cases and splits a prompt on whitespace."""
    return prompt.lower().split()


def tokenize(prompts: list[str], max_len: int = MAX_PROMPT_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Word-level, left-padded tokenization.

    Args:
      prompts: B prompt strings (case-insensitive, words separated by whitespace).
      max_len: number of slots per prompt.
    Returns:
      ids: int32 (B, max_len); valid tokens occupy the LAST len(words) slots, 0 = pad.
      mask: bool (B, max_len); True where ids holds a word.
    Raises:
      TypeError: `prompts` is a bare string or holds a non-string.
      ValueError: empty/whitespace prompt, out-of-vocabulary words (all listed, with the
        vocabulary), a prompt longer than `max_len`, or max_len < 1.
    """
    if isinstance(prompts, str):
        raise TypeError("tokenize expects a list of prompts, got a single str; wrap it in a list")
    if not isinstance(max_len, (int, np.integer)) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    prompts = list(prompts)
    ids = np.zeros((len(prompts), max_len), np.int32)
    mask = np.zeros((len(prompts), max_len), bool)
    for b, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {b} is {type(prompt).__name__}, expected str")
        words = split_words(prompt)
        if not words:
            raise ValueError(f"prompt {b} is empty or whitespace only: {prompt!r}")
        unknown = sorted({w for w in words if w not in WORD_TO_ID or w == "<pad>"})
        if unknown:
            raise ValueError(
                f"prompt {b} {prompt!r} has words outside the shapes-world vocabulary: "
                f"{unknown}; vocabulary ({VOCAB_SIZE - 1} words): {list(VOCAB[1:])}"
            )
        if len(words) > max_len:
            raise ValueError(
                f"prompt {b} {prompt!r} has {len(words)} words, more than max_len={max_len}"
            )
        ids[b, max_len - len(words):] = [WORD_TO_ID[w] for w in words]
        mask[b, max_len - len(words):] = True
    return ids, mask


def detokenize(ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
    """Inverse of `tokenize`: int (B, L) ids (and optional bool (B, L) mask) -> B strings."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be (B, L), got shape {ids.shape}")
    if mask is None:
        mask = ids != PAD_ID
    mask = np.asarray(mask, bool)
    if mask.shape != ids.shape:
        raise ValueError(f"mask shape {mask.shape} != ids shape {ids.shape}")
    bad = ids[(ids < 0) | (ids >= VOCAB_SIZE)]
    if bad.size:
        raise ValueError(f"token ids outside [0, {VOCAB_SIZE}): {sorted(set(bad.tolist()))}")
    return [" ".join(VOCAB[i] for i, m in zip(row, mrow) if m) for row, mrow in zip(ids, mask)]
