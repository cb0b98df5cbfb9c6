"""GenEval-schema prompt records for the shapes world: evaluation, development, hard and
training prompts, and .jsonl I/O with schema validation.

A record follows GenEval's metadata schema exactly (see
`shared/data/geneval/evaluation_metadata.jsonl`)::

    {"tag": str, "include": [{"class": str, "count": int, "color"?: str,
                              "position"?: [relation, index]}],
     "exclude"?: [{"class": str, "count": int}], "prompt": str}

with GenEval's six tags and its phrasing, e.g.

    single_object  "a photo of a circle"
    two_object     "a photo of a circle and a square"
    counting       "a photo of two squares"        exclude [{"class": "square", "count": 3}]
    colors         "a photo of a red circle"
    position       "a photo of a circle left of a square"
                   include [{"class": "square", "count": 1},
                            {"class": "circle", "count": 1, "position": ["left of", 0]}]
                   (the position sits on the SECOND include entry and points at entry 0,
                    which the prompt names last, as in GenEval)
    color_attr     "a photo of a red circle and a blue square"

Prompt sets (all deterministic):

- `evaluation_set(seed=0, per_tag=50)`: GenEval phrasing, standard contents (no colour on
  single_object/two_object/counting/position entries, distinct classes and colours in
  two-entry prompts, counts two..four), never a held-out colour/shape pair
  (`HELDOUT_PAIRS`). The world is tiny: single_object has 4 distinct prompts, two_object
  and counting 12, colors 22, position 48, so for those tags the evaluation set holds the
  WHOLE prompt space, repeated in reshuffled cycles up to `per_tag` records (a repeat acts
  as extra samples of that prompt; per-tag accuracy is a mean over images, as in GenEval).
  color_attr (302 prompts) is sampled without replacement.
- `development_set(seed=1, per_tag=20)`: for tuning. Disjoint from the evaluation set by
  prompt string: it takes GenEval-phrased prompts the evaluation set left unused and, where
  a tag has none left, the same contents phrased with "one" ("a photo of one circle") and
  for counting coloured counts ("a photo of two red squares"). It shares the training
  distribution (held-in validation), only the evaluation prompts are held out.
- `hard_set(seed=2, per_kind=25)`: robustness prompts outside the training distribution
  (`HARD_KINDS`): counts five and six, three objects, three-object colour binding, and the
  held-out colour/shape pairs.
- `training_prompt_sampler(...)`: the training distribution (see its docstring for the
  hold-out rule). It never emits an evaluation-set prompt string verbatim: those exact
  strings (with the default evaluation set, the whole GenEval-phrased space of five tags)
  are held out. It still covers every content through the other two phrasings
  ("a photo of one circle", bare "a circle"), GenEval-phrased contents that are not in the
  evaluation space (coloured counts, coloured positions, half-coloured pairs), and the
  GenEval-phrased color_attr prompts the evaluation set did not pick.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from scalingar_jax import geneval
from scalingar_jax.atomic import atomic_write_text
from scalingar_jax.geneval import RELATIONS, TAGS  # noqa: F401  (GenEval's schema; re-exported)
from scalingar_jax.world.vocab import (
    COLORS,
    MAX_PROMPT_LEN,
    NUMBER_WORDS,
    PLURALS,
    SHAPES,
    split_words,
    tokenize,
)

# Phrasings: GenEval's ("a photo of a red circle"), with "one" for a single object
# ("a photo of one red circle"), and bare ("a red circle").
STYLES: tuple[str, ...] = ("geneval", "one", "bare")
EVAL_COUNTS: tuple[int, ...] = (2, 3, 4)  # GenEval's counting range
HARD_COUNTS: tuple[int, ...] = (5, 6)
# (colour, shape) pairs that never appear in training prompts nor, when a colour is left
# free, in training images; they appear only in the hard set.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("yellow", "cross")})
HARD_KINDS: tuple[str, ...] = ("count_5_6", "three_objects", "bind_3_colors", "heldout_pairs")

# A content is a tuple of entries (class, count, colour | None, relation | None). A relation
# only ever sits on entry 1 and refers to entry 0 (GenEval's position layout).
Entry = tuple[str, int, Optional[str], Optional[str]]
Content = tuple[Entry, ...]


# ----------------------------------------------------------------------------- phrasing

def _noun_phrase(entry: Entry, style: str) -> str:
    cls, count, color, _ = entry
    words = [("one" if style == "one" else "a") if count == 1 else NUMBER_WORDS[count]]
    if color is not None:
        words.append(color)
    words.append(cls if count == 1 else PLURALS[cls])
    return " ".join(words)


def tag_of(content: Content) -> str:
    """The GenEval tag of a content (a tuple of (class, count, color, relation) entries)."""
    if any(e[3] is not None for e in content):
        return "position"
    if len(content) == 1:
        cls, count, color, _ = content[0]
        if count > 1:
            return "counting"
        return "colors" if color is not None else "single_object"
    return "color_attr" if any(e[2] is not None for e in content) else "two_object"


def _phrase(content: Content, style: str) -> str:
    if len(content) == 2 and content[1][3] is not None:
        core = f"{_noun_phrase(content[1], style)} {content[1][3]} {_noun_phrase(content[0], style)}"
    else:
        core = " and ".join(_noun_phrase(e, style) for e in content)
    return core if style == "bare" else f"a photo of {core}"


def build_record(content: Content, style: str) -> dict:
    """The GenEval record of a content in a phrasing (GenEval key order)."""
    tag = tag_of(content)
    include = []
    for i, (cls, count, color, rel) in enumerate(content):
        entry: dict[str, Any] = {"class": cls, "count": count}
        if color is not None:
            entry["color"] = color
        if rel is not None:
            entry["position"] = [rel, 0]
        include.append(entry)
    record: dict[str, Any] = {"tag": tag, "include": include}
    if tag == "counting":
        cls, count = content[0][0], content[0][1]
        record["exclude"] = [{"class": cls, "count": count + 1}]
    record["prompt"] = _phrase(content, style)
    return record


def _heldout(content: Content) -> bool:
    return any(e[2] is not None and (e[2], e[0]) in HELDOUT_PAIRS for e in content)


# ----------------------------------------------------------------------------- contents

def _ok_colors(cls: str) -> list[str]:
    return [c for c in COLORS if (c, cls) not in HELDOUT_PAIRS]


@functools.lru_cache(maxsize=None)
def contents(tag: str, extended: bool) -> tuple[Content, ...]:
    """All contents of a tag. Standard = GenEval's evaluation contents; extended adds the
    training-only variants (coloured counts, coloured positions, half-coloured pairs).
    Never a held-out pair; counts two..four; distinct classes in two-entry contents."""
    out: list[Content] = []
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if tag == "single_object":
        out = [((c, 1, None, None),) for c in SHAPES]
    elif tag == "two_object":
        out = [((a, 1, None, None), (b, 1, None, None)) for a, b in pairs]
    elif tag == "counting":
        for c in SHAPES:
            for n in EVAL_COUNTS:
                out.append(((c, n, None, None),))
                if extended:
                    out += [((c, n, k, None),) for k in _ok_colors(c)]
    elif tag == "colors":
        out = [((c, 1, k, None),) for c in SHAPES for k in _ok_colors(c)]
    elif tag == "position":
        for ref, obj in pairs:
            for rel in RELATIONS:
                ref_cols = [None] + (_ok_colors(ref) if extended else [])
                obj_cols = [None] + (_ok_colors(obj) if extended else [])
                out += [((ref, 1, kr, None), (obj, 1, ko, rel)) for kr in ref_cols for ko in obj_cols]
    elif tag == "color_attr":
        for a, b in pairs:
            for ka in [None] + _ok_colors(a):
                for kb in [None] + _ok_colors(b):
                    if ka is None and kb is None:
                        continue
                    if (ka is None or kb is None) and not extended:
                        continue
                    if ka is not None and ka == kb:
                        continue
                    out.append(((a, 1, ka, None), (b, 1, kb, None)))
    else:
        raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")
    return tuple(out)


def prompt_space(tag: str) -> list[dict]:
    """Every evaluation-distribution record of `tag` (GenEval phrasing, standard contents),
    in a fixed canonical order. Lengths: single_object 4, two_object 12, counting 12,
    colors 22, position 48, color_attr 302."""
    check_tag(tag)
    return [build_record(c, "geneval") for c in contents(tag, False)]


def check_tag(tag: str) -> None:
    """ValueError unless `tag` is one of `TAGS`."""
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def sample_record(rng: np.random.Generator, tag: str) -> dict:
    """One record of `tag` drawn uniformly from `prompt_space(tag)` (GenEval phrasing)."""
    check_tag(tag)
    space = contents(tag, False)
    return build_record(space[int(rng.integers(len(space)))], "geneval")


def cycle_take(rng: np.random.Generator, items: Sequence, n: int) -> list:
    """n items: reshuffled passes over `items` (all distinct first, then repeats)."""
    out: list = []
    if not items:
        return out
    while len(out) < n:
        out += [items[i] for i in rng.permutation(len(items))]
    return out[:n]


def check_count(name: str, value: int) -> None:
    """ValueError naming `name` unless `value` is a positive int."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def evaluation_set(seed: int = 0, per_tag: int = 50) -> list[dict]:
    """The fixed evaluation set: `per_tag` GenEval-phrased records for each of the six tags
    (tags in `TAGS` order). A tag whose prompt space is smaller than `per_tag` is covered
    completely, in reshuffled cycles (so prompt counts differ by at most one); a larger one
    is sampled without replacement. Never holds a held-out colour/shape pair."""
    check_count("per_tag", per_tag)
    records = []
    for t, tag in enumerate(TAGS):
        rng = np.random.default_rng([seed, t])
        records += [build_record(c, "geneval") for c in cycle_take(rng, contents(tag, False), per_tag)]
    return records


def _dev_candidates(tag: str, eval_prompts: frozenset[str]) -> tuple[list[dict], list[dict]]:
    first = [r for r in prompt_space(tag) if r["prompt"] not in eval_prompts]
    second: dict[str, dict] = {}
    for c in contents(tag, False):
        r = build_record(c, "one")
        second[r["prompt"]] = r
    if tag == "counting":  # "one"-phrasing equals GenEval's for counts >= 2
        for c in contents(tag, True):
            if c[0][2] is not None:
                r = build_record(c, "geneval")
                second[r["prompt"]] = r
    first_prompts = {x["prompt"] for x in first}
    second_l = [r for p, r in second.items() if p not in eval_prompts and p not in first_prompts]
    return first, second_l


def development_set(
    seed: int = 1, per_tag: int = 20, evaluation: Iterable[dict] | None = None
) -> list[dict]:
    """A tuning set disjoint (by prompt string) from `evaluation` (default:
    `evaluation_set()`). Per tag: GenEval-phrased prompts unused by the evaluation set
    first, then "one"-phrased ones (and coloured counts for counting); reshuffled cycles
    if a tag has fewer than `per_tag` candidates."""
    check_count("per_tag", per_tag)
    evaluation = evaluation_set() if evaluation is None else list(evaluation)
    eval_prompts = frozenset(r["prompt"] for r in evaluation)
    records = []
    for t, tag in enumerate(TAGS):
        rng = np.random.default_rng([seed, 1000 + t])
        first, second = _dev_candidates(tag, eval_prompts)
        pool = [first[i] for i in rng.permutation(len(first))]
        pool += [second[i] for i in rng.permutation(len(second))]
        distinct = pool[:per_tag]
        records += [copy.deepcopy(r) for r in cycle_take(rng, distinct, per_tag)]
    return records


@functools.lru_cache(maxsize=None)
def _hard_contents(kind: str) -> tuple[Content, ...]:
    out: list[Content] = []
    if kind == "count_5_6":
        out = [((c, n, None, None),) for c in SHAPES for n in HARD_COUNTS]
    elif kind == "three_objects":
        out = [tuple((c, 1, None, None) for c in combo)
               for combo in _ordered_triples(SHAPES)]
    elif kind == "bind_3_colors":
        for combo in _ordered_triples(SHAPES):
            for cols in _ordered_triples(COLORS):
                if all((k, c) not in HELDOUT_PAIRS for c, k in zip(combo, cols)):
                    out.append(tuple((c, 1, k, None) for c, k in zip(combo, cols)))
    elif kind == "heldout_pairs":
        for k, c in sorted(HELDOUT_PAIRS):
            out.append(((c, 1, k, None),))
            for other in SHAPES:
                if other == c:
                    continue
                for ko in COLORS:
                    if ko != k and (ko, other) not in HELDOUT_PAIRS:
                        out.append(((c, 1, k, None), (other, 1, ko, None)))
                        out.append(((other, 1, ko, None), (c, 1, k, None)))
    else:
        raise ValueError(f"unknown hard kind {kind!r}; expected one of {HARD_KINDS}")
    return tuple(out)


def _ordered_triples(items: Sequence[str]) -> list[tuple[str, str, str]]:
    return [(a, b, c) for a in items for b in items for c in items if len({a, b, c}) == 3]


def hard_set(seed: int = 2, per_kind: int = 25) -> list[dict]:
    """Robustness prompts, `per_kind` records for each kind in `HARD_KINDS` (in that order):

    - count_5_6 (tag counting): "a photo of five circles" (training counts stop at four).
    - three_objects (two_object): "a photo of a circle and a square and a triangle".
    - bind_3_colors (color_attr): "a photo of a red circle and a blue square and a green
      triangle" (training binds at most two colours).
    - heldout_pairs (colors / color_attr): prompts with a colour/shape pair in
      `HELDOUT_PAIRS` ("a photo of a purple triangle"), never seen in training.

    Use `hard_kind(record)` to recover a record's kind.
    """
    check_count("per_kind", per_kind)
    records = []
    for k, kind in enumerate(HARD_KINDS):
        rng = np.random.default_rng([seed, 2000 + k])
        records += [build_record(c, "geneval") for c in cycle_take(rng, _hard_contents(kind), per_kind)]
    return records


def hard_kind(record: dict) -> str | None:
    """The `HARD_KINDS` kind of a record, or None for an in-distribution record."""
    content = content_of(record)
    if _heldout(content):
        return "heldout_pairs"
    if any(e[1] > max(EVAL_COUNTS) for e in content):
        return "count_5_6"
    if len(content) >= 3:
        return "bind_3_colors" if any(e[2] is not None for e in content) else "three_objects"
    return None


# ----------------------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class TrainingPromptSampler:
    """Draws training records: a tag (by `tag_weights`), then the standard or extended
    content group (extended with probability `extended_weight`, when the tag has one), then
    a record uniformly from that group. `pools[t]` = (standard records, extended records)
    of tag `TAGS[t]`, already free of every held-out prompt string. Call with a numpy
    Generator: `sampler(rng) -> record`."""

    pools: tuple[tuple[tuple[dict, ...], tuple[dict, ...]], ...]
    tag_weights: tuple[float, ...]
    extended_weight: float
    holdout: frozenset[str]

    def __call__(self, rng: np.random.Generator) -> dict:
        t = int(rng.choice(len(TAGS), p=np.asarray(self.tag_weights)))
        standard, extended = self.pools[t]
        use_ext = bool(extended) and (not standard or rng.random() < self.extended_weight)
        group = extended if use_ext else standard
        return copy.deepcopy(group[int(rng.integers(len(group)))])

    def sample(self, rng: np.random.Generator, n: int) -> list[dict]:
        """n records (see `__call__`)."""
        return [self(rng) for _ in range(n)]

    def prompts(self) -> frozenset[str]:
        """Every prompt string this sampler can emit."""
        return frozenset(r["prompt"] for pool in self.pools for g in pool for r in g)


def training_prompt_sampler(
    holdout: Iterable[dict | str] | None = None,
    tag_weights: Sequence[float] | None = None,
    extended_weight: float = 0.4,
) -> TrainingPromptSampler:
    """The training prompt distribution, with the hold-out rule:

    the sampler never emits a prompt string contained in `holdout` (records or strings;
    default: the prompts of `evaluation_set()` with its default arguments; pass the union
    of every set you evaluate on if you change them). Independently of `holdout`, training
    never contains hard-set content: counts above four, three or more objects, or a
    colour/shape pair in `HELDOUT_PAIRS`.

    Because the world is tiny, the default evaluation set already holds the entire
    GenEval-phrased space of single_object, two_object, counting, colors and position, so
    those exact strings never occur in training; the contents are still taught through
    the "one" and bare phrasings and through GenEval-phrased contents outside the
    evaluation space (coloured counts and positions, half-coloured pairs).
    """
    if holdout is None:
        holdout = evaluation_set()
    held = frozenset(h if isinstance(h, str) else h["prompt"] for h in holdout)
    if tag_weights is None:
        tag_weights = (1.0,) * len(TAGS)
    w = np.asarray(tag_weights, np.float64)
    if w.shape != (len(TAGS),) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"tag_weights must be {len(TAGS)} non-negative finite numbers (for {TAGS}) "
            f"with a positive sum, got {tag_weights!r}"
        )
    if not 0.0 <= extended_weight <= 1.0:
        raise ValueError(f"extended_weight must lie in [0, 1], got {extended_weight!r}")
    pools = []
    for t, tag in enumerate(TAGS):
        std_contents = set(contents(tag, False))
        groups: tuple[dict[str, dict], dict[str, dict]] = ({}, {})
        for c in contents(tag, True):
            g = groups[0] if c in std_contents else groups[1]
            for style in STYLES:
                r = build_record(c, style)
                if r["prompt"] not in held:
                    g[r["prompt"]] = r
        if w[t] > 0 and not groups[0] and not groups[1]:
            raise ValueError(f"every training prompt of tag {tag!r} is held out")
        pools.append((tuple(groups[0].values()), tuple(groups[1].values())))
    return TrainingPromptSampler(
        pools=tuple(pools),
        tag_weights=tuple(float(x) for x in w / w.sum()),
        extended_weight=float(extended_weight),
        holdout=held,
    )


# ----------------------------------------------------------------------------- schema

def validate_record(record: Any, *, world: bool = True, where: str = "record") -> None:
    """Checks a record against GenEval's metadata schema (`geneval.validate_record`); raises
    ValueError naming `where` and the offending field.

    With `world=True` (default) the record must also belong to the shapes world: classes,
    colours and counts from the vocabulary, and the whole record equal to the one this
    module builds from its content in one of `STYLES` (so the prompt, tag and exclude
    clause agree with the include entries). Use `world=False` for GenEval's own files.
    """
    geneval.validate_record(record, where=where)
    if world:
        def fail(msg: str) -> None:
            raise ValueError(f"{where}: {msg}")

        _validate_world(record, fail)


def content_of(record: dict) -> Content:
    """A GenEval record's content: its include entries as (class, count, color, relation) tuples."""
    entries = []
    for e in record["include"]:
        pos = e.get("position")
        entries.append((e["class"], int(e["count"]), e.get("color"), None if pos is None else pos[0]))
    return tuple(entries)


def _validate_world(record: dict, fail) -> None:
    for i, e in enumerate(record["include"]):
        if e["class"] not in SHAPES:
            fail(f"include[{i}].class {e['class']!r} is not a shape of this world {list(SHAPES)}")
        if e["count"] not in NUMBER_WORDS:
            fail(f"include[{i}].count {e['count']} outside this world's counts {sorted(NUMBER_WORDS)}")
        if "color" in e and e["color"] not in COLORS:
            fail(f"include[{i}].color {e['color']!r} is not a colour of this world {list(COLORS)}")
        if "position" in e and (i != 1 or e["position"][1] != 0 or len(record["include"]) != 2):
            fail("this world's position records have exactly two include entries, the "
                 "second with position [relation, 0]")
    try:
        tokenize([record["prompt"]], MAX_PROMPT_LEN)
    except ValueError as err:
        fail(f"prompt not tokenizable: {err}")
    content = content_of(record)
    candidates = [build_record(content, s) for s in STYLES]
    if record not in candidates:
        by_prompt = [c for c in candidates if c["prompt"] == " ".join(split_words(record["prompt"]))]
        expected = by_prompt[0] if by_prompt else candidates[0]
        fail(f"record is inconsistent with its include entries: expected {json.dumps(expected)} "
             f"(or another phrasing: {[c['prompt'] for c in candidates]}), got {json.dumps(record)}")


# ----------------------------------------------------------------------------- file I/O

def load_prompt_file(path: str | os.PathLike, *, world: bool = True) -> list[dict]:
    """Reads a GenEval .jsonl prompt file (one record per non-blank line) and validates every
    record (`validate_record`, errors name the file and line). `world=False` accepts
    GenEval's own classes and colours."""
    check = functools.partial(validate_record, world=world)
    return [record for _, record in geneval.read_jsonl_records(path, validate=check)]


def save_prompt_file(path: str | os.PathLike, records: Iterable[dict], *, world: bool = True) -> None:
    """Validates every record, then writes them as .jsonl atomically (temp file + rename)."""
    records = list(records)
    for i, r in enumerate(records):
        validate_record(r, world=world, where=f"records[{i}]")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
