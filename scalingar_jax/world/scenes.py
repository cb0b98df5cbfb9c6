"""Splits by scene (shapes world v2): train / dev / eval / hard, independent of wording.

A SCENE is the set of facts a prompt asks for: which shapes, how many of each, their colours
and the relation between them, whatever the wording. "a photo of a circle", "a photo of one
circle" and "a circle" are one scene; so are "a red circle and a blue square" and "a blue
square and a red circle", and "a circle left of a square" and "a square right of a circle"
(GenEval's rule is antisymmetric: A left of B iff B right of A). `scene_of(record)` gives
the canonical form: (sorted objects (class, count, colour or ""), relation or None), the
relation written as (object, "left of" | "above", object).

The split unit is a scene FAMILY (`family_of`): the scene itself, except for counting and
position scenes, whose family drops the colours ("two red squares" belongs to the family of
"two squares"), so a coloured variant of an evaluation scene is held out with it.

Assignment (`scene_split`), deterministic and computed once from the code alone: within each
tag, the families of the evaluation space (GenEval phrasing, standard contents) are ranked
by sha256(salt, family); the first half are "eval", the next fifth (at least one) "dev",
the rest "train". The salt of a tag is the smallest one for which the training families
still cover every shape, colour, count and relation of that tag (single_object, 4 scenes:
its count; its shapes are trained through the other tags) (so the benchmark tests
compositional generalisation: every fact is trained, the evaluation combinations are not).
Every other scene is "hard" when it has hard-set content (`prompts.hard_kind`), else it
follows its family (training-only variants of a train family are "train").

Generators (their supports are finite and enumerated by the tests):
- `evaluation_set_v2`, `development_set_v2`: GenEval-phrased records of eval / dev scenes.
- `training_prompt_sampler_v2`: every phrasing (`prompts.STYLES`) of every train scene,
  standard and extended contents.
`check_scene(record, purpose)` raises a ValueError naming the scene when a record's split is
not `purpose`; the v2 renderer calls it before drawing anything. `split_digest()` fingerprints
the table; every part trained on a split world records it in its meta (`split_meta()`).
"""
from __future__ import annotations

import copy
import functools
import hashlib
from typing import Iterable, Optional, Sequence

import numpy as np

from scalingar_jax.world import prompts as P
from scalingar_jax.world.vocab import COLORS, SHAPES

SPLITS: tuple[str, ...] = ("train", "dev", "eval", "hard")
SPLIT_META_KEY = "scene_split"  # a trained part's meta: {"digest": split_digest(), "families": ...}
EVAL_FRACTION = 0.5
DEV_FRACTION = 0.2
_MAX_SALT = 10000
_CANON_REL = {"left of": ("left of", False), "right of": ("left of", True),
              "above": ("above", False), "below": ("above", True)}
# single_object has 4 scenes (one trains): its shapes are covered by the other tags' training scenes.
_COVERED_KINDS = {"single_object": frozenset({"count"})}
_SPLIT_NAMES = {"train": "training", "dev": "development", "eval": "evaluation", "hard": "hard-set"}

SceneObj = tuple[str, int, str]  # (class, count, colour or "")
Scene = tuple[tuple[SceneObj, ...], Optional[tuple[SceneObj, str, SceneObj]]]


def _scene_of_content(content: P.Content) -> Scene:
    objs = [(cls, int(count), color or "") for cls, count, color, _ in content]
    relation = None
    for i, (_, _, _, rel) in enumerate(content):
        if rel is not None:  # entry i stands in `rel` to entry 0 (GenEval's layout)
            canon, swap = _CANON_REL[rel]
            a, b = (objs[0], objs[i]) if swap else (objs[i], objs[0])
            relation = (a, canon, b)
    return tuple(sorted(objs)), relation


def scene_of(record: dict) -> Scene:
    """The canonical scene of a shapes-world record (wording-independent; see the module
    docstring). Raises ValueError for a record outside the world's schema."""
    P.validate_record(record, where="scene record")
    return _scene_of_content(P.content_of(record))


def scene_text(scene: Scene) -> str:
    """A readable form of a scene, e.g. "{1 red circle, 1 square; circle left of square}"."""
    def obj(o: SceneObj) -> str:
        return " ".join(str(x) for x in (o[1], o[2], o[0]) if x != "")

    objs, rel = scene
    out = ", ".join(obj(o) for o in objs)
    if rel is not None:
        out += f"; {obj(rel[0])} {rel[1]} {obj(rel[2])}"
    return "{" + out + "}"


def family_of(scene: Scene, tag: str) -> Scene:
    """The split unit of a scene: colours dropped for counting and position, else the scene."""
    if tag not in ("counting", "position"):
        return scene
    strip = lambda o: (o[0], o[1], "")  # noqa: E731
    objs, rel = scene
    return tuple(sorted(strip(o) for o in objs)), (None if rel is None else (strip(rel[0]), rel[1], strip(rel[2])))


def _rank_key(salt: int, family: Scene) -> bytes:
    return hashlib.sha256(f"{salt}|{family!r}".encode()).digest()


def _facts(families: Iterable[Scene], kinds: frozenset = frozenset({"shape", "count", "color", "relation"})) -> set:
    """The facts (kind, value) the scenes mention, for the fact kinds in `kinds`."""
    out = set()
    for objs, rel in families:
        for cls, count, color in objs:
            out |= {("shape", cls), ("count", count)} | ({("color", color)} if color else set())
        if rel is not None:
            out.add(("relation", rel[1]))
    return {f for f in out if f[0] in kinds}


@functools.lru_cache(maxsize=None)
def _tag_table(tag: str) -> tuple[int, dict]:
    """(salt, {family: split}) of one tag's evaluation space (module docstring)."""
    contents = P.contents(tag, False)
    families = sorted({family_of(_scene_of_content(c), tag) for c in contents})
    kinds = _COVERED_KINDS.get(tag, frozenset({"shape", "count", "color", "relation"}))
    wanted = _facts(families, kinds)
    n = len(families)
    n_eval = max(1, int(round(EVAL_FRACTION * n)))
    n_dev = max(1, int(round(DEV_FRACTION * n)))
    if n_eval + n_dev >= n:
        raise RuntimeError(f"tag {tag!r} has only {n} scene families, too few to split")
    for salt in range(_MAX_SALT):
        ranked = sorted(families, key=lambda f: _rank_key(salt, f))
        if _facts(ranked[n_eval + n_dev:], kinds) == wanted:
            table = {f: "eval" for f in ranked[:n_eval]}
            table.update({f: "dev" for f in ranked[n_eval:n_eval + n_dev]})
            table.update({f: "train" for f in ranked[n_eval + n_dev:]})
            return salt, table
    raise RuntimeError(f"no salt below {_MAX_SALT} gives tag {tag!r} training scenes covering {sorted(wanted)}")


def _tag_of_scene_record(record: dict) -> str:
    return P.tag_of(P.content_of(record))


def scene_split(record: dict) -> str:
    """"train", "dev", "eval" or "hard": the split of a record's scene (module docstring)."""
    scene = scene_of(record)
    content = P.content_of(record)
    if P.hard_kind(record) is not None:
        return "hard"
    tag = P.tag_of(content)
    return _tag_table(tag)[1].get(family_of(scene, tag), "train")


def check_scene(record: dict, purpose: str) -> None:
    """Raises ValueError naming the scene unless `record`'s scene belongs to split `purpose`
    (one of `SPLITS`)."""
    if purpose not in SPLITS:
        raise ValueError(f"purpose must be one of {SPLITS}, got {purpose!r}")
    split = scene_split(record)
    if split != purpose:
        raise ValueError(
            f"scene {scene_text(scene_of(record))} of prompt {record['prompt']!r} belongs to the "
            f"{_SPLIT_NAMES[split]} split; the v2 world forbids using it for {_SPLIT_NAMES[purpose]} "
            f"(splits by scene, scalingar_jax/world/scenes.py)")


# ----------------------------------------------------------------------------- generators

def prompt_space_v2(tag: str, split: str) -> list[dict]:
    """Every GenEval-phrased record of `tag` in the evaluation space whose scene is in
    `split` ("eval" or "dev"), in canonical order."""
    P.check_tag(tag)
    if split not in ("eval", "dev"):
        raise ValueError(f"split must be 'eval' or 'dev', got {split!r}")
    out = [P.build_record(c, "geneval") for c in P.contents(tag, False)]
    return [r for r in out if scene_split(r) == split]


def _sample_split(split: str, seed: int, per_tag: int, offset: int) -> list[dict]:
    P.check_count("per_tag", per_tag)
    records = []
    for t, tag in enumerate(P.TAGS):
        rng = np.random.default_rng([seed, offset + t])
        records += [copy.deepcopy(r) for r in P.cycle_take(rng, prompt_space_v2(tag, split), per_tag)]
    return records


def evaluation_set_v2(seed: int = 0, per_tag: int = 50) -> list[dict]:
    """`per_tag` GenEval-phrased records of EVALUATION scenes per tag (tags in `TAGS` order;
    reshuffled cycles over the tag's eval prompts, without replacement while they last)."""
    return _sample_split("eval", seed, per_tag, 0)


def development_set_v2(seed: int = 1, per_tag: int = 20) -> list[dict]:
    """`per_tag` GenEval-phrased records of DEVELOPMENT scenes per tag (disjoint by scene from
    the evaluation scenes and from every training scene)."""
    return _sample_split("dev", seed, per_tag, 1000)


@functools.lru_cache(maxsize=None)
def _training_pools() -> tuple:
    pools = []
    for tag in P.TAGS:
        std = set(P.contents(tag, False))
        groups: tuple[dict, dict] = ({}, {})
        for c in P.contents(tag, True):
            for style in P.STYLES:
                r = P.build_record(c, style)
                if scene_split(r) == "train":
                    groups[0 if c in std else 1][r["prompt"]] = r
        if not groups[0] and not groups[1]:
            raise RuntimeError(f"tag {tag!r} has no training scene")
        pools.append((tuple(groups[0].values()), tuple(groups[1].values())))
    return tuple(pools)


def training_prompt_sampler_v2(tag_weights: Sequence[float] | None = None,
                               extended_weight: float = 0.4) -> P.TrainingPromptSampler:
    """The v2 training prompt distribution: every phrasing of every TRAINING scene (standard
    contents and the training-only extended ones), drawn as `prompts.TrainingPromptSampler`
    does. Its `holdout` holds every eval and dev prompt string (for reporting)."""
    return _sampler_v2(None if tag_weights is None else tuple(tag_weights), extended_weight)


@functools.lru_cache(maxsize=8)
def _sampler_v2(tag_weights: tuple | None, extended_weight: float) -> P.TrainingPromptSampler:
    base = P.training_prompt_sampler(holdout=(), tag_weights=tag_weights, extended_weight=extended_weight)
    held = frozenset(r["prompt"] for t in P.TAGS for s in ("eval", "dev") for r in prompt_space_v2(t, s))
    return P.TrainingPromptSampler(pools=_training_pools(), tag_weights=base.tag_weights,
                                   extended_weight=base.extended_weight, holdout=held)


def split_digest() -> str:
    """sha256 (hex) of the whole scene-split table (every tag's salt and {family: split}). A
    trained part's meta records it (`SPLIT_META_KEY`), so a checkpoint says which split its
    training data came from and a changed split is caught against it."""
    h = hashlib.sha256()
    for tag in P.TAGS:
        salt, table = _tag_table(tag)
        h.update(f"{tag}|{salt}|".encode())
        for family in sorted(table, key=repr):
            h.update(f"{family!r}={table[family]};".encode())
    return h.hexdigest()


def split_summary() -> dict:
    """{tag: {"salt", "families": {split: count}}} of the scene-split table."""
    out = {}
    for tag in P.TAGS:
        salt, table = _tag_table(tag)
        out[tag] = {"salt": salt, "families": {s: sum(v == s for v in table.values()) for s in ("eval", "dev", "train")}}
    return out


def split_meta() -> dict:
    """What a trained part's meta records under `SPLIT_META_KEY`: the table's digest, the
    split unit and the number of scene families per tag and split."""
    return {"digest": split_digest(), "unit": "scene family (scalingar_jax/world/scenes.py)",
            "families": {tag: v["families"] for tag, v in split_summary().items()}}


if __name__ == "__main__":  # prints the split table
    import json

    print(json.dumps(split_summary(), indent=1))
    for tag in P.TAGS:
        for split in ("eval", "dev"):
            print(tag, split, [r["prompt"].replace("a photo of ", "") for r in prompt_space_v2(tag, split)][:12])
