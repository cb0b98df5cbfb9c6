"""The shapes-world prompt file shipped with the package, for `scalingar generate --prompts`.

`shapes_prompts.jsonl` (package data beside this module) holds GenEval-schema records, one per
line as GenEval's `evaluation_metadata.jsonl`, inside the embedded world's vocabulary: for each
of GenEval's six tags the first `PER_TAG` distinct prompts of the EVALUATION split of the world
version the embedded bundle (`checkpoints/shapes`) records, a tag at a time (the first six
records hold one prompt of each tag). v1 has no scene splits: its
evaluation split is `prompts.evaluation_set()`, whose prompt strings training never sees; v2
and v3 split by scene: `scenes.evaluation_set_v2()`, whose scenes no training data holds under
any wording. Either way these are the prompts a user evaluates on, never training prompts.

`python -m scalingar_jax.world.prompt_file` prints the file's path (`shipped_prompt_path`).
`experiments/write_shapes_prompts.py` rewrites it from a bundle's world version;
`tests/test_prompt_file.py` regenerates it and compares byte for byte.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

FILE_NAME = "shapes_prompts.jsonl"
PER_TAG = 12  # distinct prompts per tag at most (a tag with fewer evaluation prompts has them all)
REWRITE_COMMAND = "python experiments/write_shapes_prompts.py"


def evaluation_prompts(version: int, per_tag: int = PER_TAG) -> list[dict]:
    """The records of the shipped file for world `version` (1, 2 or 3): per tag the first
    `per_tag` distinct prompts of that world's evaluation set (seed 0; a repeated prompt
    dropped), GenEval's records, taken a tag at a time in `TAGS` order (so the first six hold
    one of each tag, and any prefix, `--limit`, spreads evenly over the tags). Deterministic."""
    from scalingar_jax.world import prompts, scenes
    from scalingar_jax.world.spec import world_spec

    prompts.check_count("per_tag", per_tag)
    if world_spec(version).scene_splits:
        records = scenes.evaluation_set_v2(seed=0, per_tag=per_tag)
    else:
        records = prompts.evaluation_set(seed=0, per_tag=per_tag)
    by_tag: dict[str, dict[str, dict]] = {tag: {} for tag in prompts.TAGS}
    for r in records:
        by_tag[r["tag"]].setdefault(r["prompt"], r)
    columns = [list(tagged.values()) for tagged in by_tag.values()]
    return [c[i] for i in range(max(map(len, columns))) for c in columns if i < len(c)]


def write_prompt_file(path: str | os.PathLike, version: int, per_tag: int = PER_TAG) -> list[dict]:
    """Writes `evaluation_prompts(version, per_tag)` to `path` as .jsonl (checked against the
    world's schema, atomic: `prompts.save_prompt_file`). Returns the records."""
    from scalingar_jax.world.prompts import save_prompt_file

    records = evaluation_prompts(version, per_tag)
    save_prompt_file(path, records)
    return records


def shipped_prompt_path() -> Path:
    """The path of the installed `shapes_prompts.jsonl` (found through `importlib.resources`,
    inside the installed package). FileNotFoundError if the package lacks it."""
    path = importlib.resources.files("scalingar_jax.world").joinpath(FILE_NAME)
    if not isinstance(path, Path) or not path.is_file():
        raise FileNotFoundError(f"the package has no {FILE_NAME} in scalingar_jax/world (a broken install?)")
    return path


if __name__ == "__main__":  # prints the path, e.g. scalingar generate --prompts "$(python -m ...)"
    print(shipped_prompt_path())
