"""The shapes-world prompt file shipped with the package (`world.prompt_file`): regenerated from
the embedded bundle's world version byte for byte, inside the world's vocabulary, every GenEval tag,
the EVALUATION split only (never a training prompt or scene), found through the installed package."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from scalingar_jax import geneval
from scalingar_jax.world import prompts as P
from scalingar_jax.world import scenes
from scalingar_jax.world.pipeline import bundle_world_version
from scalingar_jax.world.prompt_file import (
    FILE_NAME,
    PER_TAG,
    REWRITE_COMMAND,
    evaluation_prompts,
    shipped_prompt_path,
    write_prompt_file,
)

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "checkpoints" / "shapes"


def test_shipped_file_is_the_embedded_worlds_evaluation_prompts_byte_for_byte(tmp_path):
    version = bundle_world_version(EMBEDDED)
    fresh = tmp_path / FILE_NAME
    write_prompt_file(fresh, version)
    shipped = shipped_prompt_path()
    assert shipped == ROOT / "scalingar_jax" / "world" / FILE_NAME
    assert shipped.read_bytes() == fresh.read_bytes(), (
        f"{shipped} is not the prompt file of the embedded bundle's world v{version} ({EMBEDDED}); "
        f"rewrite it with `{REWRITE_COMMAND}` (from the repository root) and commit it")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_tag_a_modest_size_and_distinct_prompts(version):
    records = evaluation_prompts(version)
    counts = Counter(r["tag"] for r in records)
    assert set(counts) == set(geneval.TAGS) and max(counts.values()) == PER_TAG
    assert 48 <= len(records) <= 96
    assert len({r["prompt"] for r in records}) == len(records)
    columns = [[r for r in records if r["tag"] == tag] for tag in geneval.TAGS]  # a tag at a time:
    assert records == [c[i] for i in range(PER_TAG) for c in columns if i < len(c)]  # a --limit spreads over tags
    assert [r["tag"] for r in records[:6]] == list(geneval.TAGS)


def test_v1_file_holds_evaluation_prompts_that_training_never_emits():
    records = evaluation_prompts(1)
    evaluation = P.evaluation_set()
    assert all(r in evaluation for r in records)
    assert not {r["prompt"] for r in records} & P.training_prompt_sampler().prompts()


@pytest.mark.parametrize("version", [2, 3])
def test_scene_split_file_holds_evaluation_scenes_only(version):
    records = evaluation_prompts(version)
    assert {scenes.scene_split(r) for r in records} == {"eval"}
    trained = {scenes.scene_of(r) for pool in scenes.training_prompt_sampler_v2().pools for g in pool for r in g}
    assert not {scenes.scene_of(r) for r in records} & trained


def test_shipped_file_reads_as_a_generate_prompt_file_in_the_worlds_vocabulary():
    path = shipped_prompt_path()
    assert [rec for _, rec in geneval.read_jsonl_records(path)] == P.load_prompt_file(path)  # --prompts' reader
    assert P.load_prompt_file(path) == evaluation_prompts(bundle_world_version(EMBEDDED))


def test_world_version_of_a_bundle_of_another_kind_is_refused(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "bundle.json").write_text('{"format": 1, "kind": "llamagen-c2i", "image_size": 256, '
                                          '"parts": {"gpt": "gpt"}, "sampling": {}}')
    with pytest.raises(ValueError, match="llamagen-c2i"):
        bundle_world_version(tmp_path)
