"""Shapes world: vocabulary/tokenizer, GenEval-schema records, prompt sets, hold-out rules."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax.world import prompts as P
from scalingar_jax.world.vocab import (
    COLORS, MAX_PROMPT_LEN, PALETTE, SHAPES, VOCAB, VOCAB_SIZE, detokenize, tokenize,
)

# GenEval's own prompt file, in the shared/ folder laid beside the checkout (and CI's clone)
GENEVAL_FILE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl")
needs_geneval = pytest.mark.skipif(not os.path.isfile(GENEVAL_FILE), reason=f"GenEval's prompt file is not at {GENEVAL_FILE}")


@pytest.fixture(scope="module")
def eval_set():
    return P.evaluation_set()


@pytest.fixture(scope="module")
def sampler():
    return P.training_prompt_sampler()


# ----------------------------------------------------------------------------- vocabulary

def test_palette_colours_are_far_apart():
    rgb = np.array([PALETTE[c] for c in COLORS], float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(COLORS), dtype=bool)].min() >= 140


def test_tokenize_left_pads_and_round_trips():
    prompts = ["a photo of a red circle", "two squares", "A Photo Of One Cross"]
    ids, mask = tokenize(prompts, 8)
    assert ids.dtype == np.int32 and ids.shape == (3, 8)
    assert mask.dtype == np.bool_ and mask.shape == (3, 8)
    assert mask[0].tolist() == [False, False] + [True] * 6
    assert mask[1].tolist() == [False] * 6 + [True] * 2
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    assert detokenize(ids, mask) == [p.lower() for p in prompts]
    assert VOCAB_SIZE == len(VOCAB) and VOCAB[0] == "<pad>"
    assert ids.max() < VOCAB_SIZE


def test_tokenize_errors():
    with pytest.raises(ValueError, match="empty or whitespace"):
        tokenize(["a circle", "   "])
    with pytest.raises(ValueError, match="empty or whitespace"):
        tokenize([""])
    with pytest.raises(ValueError) as err:
        tokenize(["a photo of a pink hexagon", "a circle"])
    msg = str(err.value)
    assert "['hexagon', 'pink']" in msg and "vocabulary" in msg
    for word in VOCAB[1:]:  # the whole vocabulary is listed
        assert repr(word) in msg
    with pytest.raises(ValueError, match="more than max_len=3"):
        tokenize(["a photo of a circle"], 3)
    with pytest.raises(ValueError, match="<pad>"):
        tokenize(["<pad> circle"])
    with pytest.raises(TypeError, match="list of prompts"):
        tokenize("a circle")
    with pytest.raises(ValueError, match="max_len"):
        tokenize(["a circle"], 0)


def test_every_prompt_of_every_set_fits_max_prompt_len(eval_set, sampler):
    prompts = [r["prompt"] for r in eval_set + P.development_set() + P.hard_set()]
    prompts += sorted(sampler.prompts())
    ids, mask = tokenize(prompts, MAX_PROMPT_LEN)
    assert mask.any(1).all()


# ----------------------------------------------------------------------------- records

def test_geneval_phrasing_and_structure():
    space = {r["prompt"]: r for t in P.TAGS for r in P.prompt_space(t)}
    assert space["a photo of a circle"] == {
        "tag": "single_object", "include": [{"class": "circle", "count": 1}],
        "prompt": "a photo of a circle"}
    assert space["a photo of two squares"] == {
        "tag": "counting", "include": [{"class": "square", "count": 2}],
        "exclude": [{"class": "square", "count": 3}], "prompt": "a photo of two squares"}
    assert space["a photo of four crosses"]["exclude"] == [{"class": "cross", "count": 5}]
    assert space["a photo of a red circle"]["include"] == [{"class": "circle", "count": 1, "color": "red"}]
    assert space["a photo of a circle left of a square"] == {
        "tag": "position",
        "include": [{"class": "square", "count": 1},
                    {"class": "circle", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a circle left of a square"}
    assert space["a photo of a red circle and a blue square"] == {
        "tag": "color_attr",
        "include": [{"class": "circle", "count": 1, "color": "red"},
                    {"class": "square", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red circle and a blue square"}
    assert space["a photo of a triangle and a cross"]["tag"] == "two_object"
    sizes = {t: len(P.prompt_space(t)) for t in P.TAGS}
    assert sizes == {"single_object": 4, "two_object": 12, "counting": 12, "colors": 22,
                     "position": 48, "color_attr": 302}


@needs_geneval
def test_records_follow_geneval_key_schema(eval_set):
    with open(GENEVAL_FILE) as f:
        real = [json.loads(line) for line in f]
    real_keys = {k for r in real for k in r}
    real_entry_keys = {k for r in real for e in r["include"] for k in e}
    real_tags = {r["tag"] for r in real}
    assert set(P.TAGS) == real_tags
    ours = eval_set + P.hard_set()
    assert {k for r in ours for k in r} <= real_keys
    assert {k for r in ours for e in r["include"] for k in e} <= real_entry_keys
    for r in ours:  # GenEval's key order
        assert list(r) == [k for k in ("tag", "include", "exclude", "prompt") if k in r]


@needs_geneval
def test_real_geneval_file_passes_schema_validation():
    records = P.load_prompt_file(GENEVAL_FILE, world=False)
    assert len(records) == 553
    with pytest.raises(ValueError, match="not a shape of this world"):
        P.load_prompt_file(GENEVAL_FILE, world=True)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("prompt"), "missing key"),
    (lambda r: r.update(extra=1), "unexpected key"),
    (lambda r: r.update(tag="counting_objects"), "tag 'counting_objects'"),
    (lambda r: r.update(include=[]), "include must be a non-empty list"),
    (lambda r: r["include"][0].update(count=0), r"include\[0\].count must be an int >= 1"),
    (lambda r: r["include"][0].update(count=True), r"include\[0\].count"),
    (lambda r: r["include"][0].update(count="2"), r"include\[0\].count"),
    (lambda r: r["include"][0].pop("class"), r"include\[0\] is missing 'class'"),
    (lambda r: r["include"][0].update(size=3), r"include\[0\] has unexpected key"),
    (lambda r: r["include"][1].update(position=["near", 0]), r"include\[1\].position"),
    (lambda r: r["include"][0].update(position=["above", 1]), "earlier include entry"),
    (lambda r: r.update(exclude=[{"class": "circle"}]), r"exclude\[0\] is missing 'count'"),
    (lambda r: r.update(prompt="  "), "prompt must be a non-empty string"),
])
def test_validate_record_schema_errors(mutate, match):
    record = json.loads(json.dumps(P.prompt_space("position")[0]))
    P.validate_record(record)
    mutate(record)
    with pytest.raises(ValueError, match=match):
        P.validate_record(record, world=False)


def test_validate_record_world_errors():
    r = P.prompt_space("colors")[0]
    bad = dict(r, prompt="a photo of a blue circle")  # prompt disagrees with include
    with pytest.raises(ValueError, match="inconsistent with its include"):
        P.validate_record(bad)
    P.validate_record(bad, world=False)
    with pytest.raises(ValueError, match="not a colour of this world"):
        P.validate_record({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "pink"}],
                           "prompt": "a photo of a pink circle"})
    with pytest.raises(ValueError, match="not a shape of this world"):
        P.validate_record({"tag": "single_object", "include": [{"class": "dog", "count": 1}],
                           "prompt": "a photo of a dog"})
    counting = P.prompt_space("counting")[0]
    with pytest.raises(ValueError, match="inconsistent"):
        P.validate_record({k: v for k, v in counting.items() if k != "exclude"})
    # the other two phrasings of the same content are valid
    P.validate_record(dict(r, prompt="a photo of one " + r["prompt"].split("a photo of a ")[1]))
    P.validate_record(dict(r, prompt=r["prompt"].replace("a photo of ", "")))


def test_prompt_file_round_trip_and_errors(tmp_path, eval_set):
    path = tmp_path / "sub" / "prompts.jsonl"
    P.save_prompt_file(path, eval_set[:20])
    assert P.load_prompt_file(path) == eval_set[:20]
    assert os.listdir(path.parent) == ["prompts.jsonl"]  # no temp file left
    # a bad record: nothing written, old file intact
    with pytest.raises(ValueError, match=r"records\[1\]"):
        P.save_prompt_file(path, [eval_set[0], {"tag": "colors"}])
    assert P.load_prompt_file(path) == eval_set[:20]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(eval_set[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:3: not valid JSON"):
        P.load_prompt_file(broken)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps(eval_set[0]) + "\n" + json.dumps({"tag": "colors", "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"wrong.jsonl:2: missing key"):
        P.load_prompt_file(wrong)


# ----------------------------------------------------------------------------- sets

def test_evaluation_set_is_fixed_balanced_and_valid(eval_set):
    assert len(eval_set) == 300
    assert Counter(r["tag"] for r in eval_set) == {t: 50 for t in P.TAGS}
    assert eval_set == P.evaluation_set(seed=0, per_tag=50)
    assert eval_set != P.evaluation_set(seed=5)
    for r in eval_set:
        P.validate_record(r)
        assert r["prompt"].startswith("a photo of ") and P.hard_kind(r) is None
    # small tags are covered completely and evenly
    for tag in ("single_object", "two_object", "counting", "colors", "position"):
        counts = Counter(r["prompt"] for r in eval_set if r["tag"] == tag)
        assert set(counts) == {r["prompt"] for r in P.prompt_space(tag)}
        assert max(counts.values()) - min(counts.values()) <= 1
    ca = [r["prompt"] for r in eval_set if r["tag"] == "color_attr"]
    assert len(set(ca)) == 50
    assert {r["include"][0]["count"] for r in eval_set if r["tag"] == "counting"} == {2, 3, 4}


def test_development_set_is_disjoint_from_evaluation_set(eval_set):
    dev = P.development_set()
    assert dev == P.development_set(seed=1)
    assert Counter(r["tag"] for r in dev) == {t: 20 for t in P.TAGS}
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in eval_set}
    for r in dev:
        P.validate_record(r)
    other = P.evaluation_set(seed=3, per_tag=10)
    assert not {r["prompt"] for r in P.development_set(evaluation=other)} & {r["prompt"] for r in other}


def test_hard_set_kinds():
    hard = P.hard_set()
    assert len(hard) == 25 * len(P.HARD_KINDS)
    kinds = Counter(P.hard_kind(r) for r in hard)
    assert kinds == {k: 25 for k in P.HARD_KINDS}
    for r in hard:
        P.validate_record(r)
    counts = {r["include"][0]["count"] for r in hard if P.hard_kind(r) == "count_5_6"}
    assert counts == {5, 6}
    assert "a photo of a purple triangle" in {r["prompt"] for r in P.hard_set(per_kind=200)}


# ----------------------------------------------------------------------------- training

def test_training_sampler_never_emits_evaluation_prompts(eval_set, sampler):
    eval_prompts = {r["prompt"] for r in eval_set}
    assert not sampler.prompts() & eval_prompts  # exhaustive over everything it can emit
    rng = np.random.default_rng(0)
    drawn = sampler.sample(rng, 3000)
    assert not {r["prompt"] for r in drawn} & eval_prompts
    assert Counter(r["tag"] for r in drawn).keys() == set(P.TAGS)
    for r in drawn[:300]:
        P.validate_record(r)


def test_training_sampler_holds_out_hard_content_and_covers_the_world(sampler):
    records = [r for pool in sampler.pools for g in pool for r in g]
    assert all(P.hard_kind(r) is None for r in records)
    assert not sampler.prompts() & {r["prompt"] for r in P.hard_set(per_kind=500)}
    used = {(e["class"], e.get("color")) for r in records for e in r["include"]}
    assert {c for c, _ in used} == set(SHAPES)
    assert {k for _, k in used if k} == set(COLORS)
    # every evaluation content is still taught through another phrasing
    contents = {json.dumps(r["include"]) for r in records}
    for t in P.TAGS:
        for r in P.prompt_space(t):
            assert json.dumps(r["include"]) in contents, r["prompt"]


def test_training_sampler_custom_holdout_and_errors(eval_set):
    dev = P.development_set()
    s = P.training_prompt_sampler(holdout=eval_set + dev)
    assert not s.prompts() & {r["prompt"] for r in eval_set + dev}
    with pytest.raises(ValueError, match="tag_weights"):
        P.training_prompt_sampler(tag_weights=[1, 2])
    with pytest.raises(ValueError, match="extended_weight"):
        P.training_prompt_sampler(extended_weight=1.5)
    everything = P.training_prompt_sampler(holdout=[]).prompts()
    with pytest.raises(ValueError, match="held out"):
        P.training_prompt_sampler(holdout=everything)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tag=st.sampled_from(P.TAGS))
def test_sample_record_is_in_prompt_space(seed, tag):
    r = P.sample_record(np.random.default_rng(seed), tag)
    assert r in P.prompt_space(tag)
    assert r == P.sample_record(np.random.default_rng(seed), tag)
