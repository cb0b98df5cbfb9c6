"""Shapes world v2 and v3: scene splits over the generators' whole supports, backgrounds in a gamut the
judges never label, the renderer's guard, the hardened judges (v2 at 64 px, v3 at 48 px) and their
adversarial sets."""
from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from scalingar_jax.world import prompts as P
from scalingar_jax.world import scenes as S
from scalingar_jax.world.backgrounds import (
    BACKGROUND_KINDS, BG_MAX_CHROMA, BG_MAX_VALUE, background, draw_distractors, in_gamut,
)
from scalingar_jax.world.judge import (
    V1_JUDGE, V2_JUDGE, V3_JUDGE, _label_pixels_palette, detect, judge_config, judge_image,
)
from scalingar_jax.world.render import SceneObject, layout_scene, render_random_scene, render_scene
from scalingar_jax.world.spec import WORLD_V1, WORLD_V2, WORLD_V3, world_spec
from scalingar_jax.world.vocab import COLORS, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import adversarial_judge as A  # noqa: E402


# ----------------------------------------------------------------------------- splits

@pytest.fixture(scope="module")
def supports():
    """Every record each v2 generator can emit (their finite supports, enumerated)."""
    ev = [r for t in P.TAGS for r in S.prompt_space_v2(t, "eval")]
    dev = [r for t in P.TAGS for r in S.prompt_space_v2(t, "dev")]
    train = [r for pool in S.training_prompt_sampler_v2().pools for g in pool for r in g]
    return {"eval": ev, "dev": dev, "train": train}


def _equivalent_prompts(record: dict) -> set[str]:
    """Every wording of the record's facts, built here independently of scenes.py: the three
    phrasings, both orders of a pair, and the mirrored relation ("A left of B" = "B right of A")."""
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    ents = [(e["class"], e["count"], e.get("color")) for e in record["include"]]
    rel = next((e["position"][0] for e in record["include"] if "position" in e), None)

    def np_(ent, style):
        cls, n, col = ent
        head = ("one" if style == "one" else "a") if n == 1 else NUMBER_WORDS[n]
        return " ".join([head] + ([col] if col else []) + [cls if n == 1 else PLURALS[cls]])

    out = set()
    for style in P.STYLES:
        pre = "" if style == "bare" else "a photo of "
        if rel is None:
            for order in itertools.permutations(ents):
                out.add(pre + " and ".join(np_(e, style) for e in order))
        else:  # include[1] rel include[0]
            out.add(pre + f"{np_(ents[1], style)} {rel} {np_(ents[0], style)}")
            out.add(pre + f"{np_(ents[0], style)} {inverse[rel]} {np_(ents[1], style)}")
    return out


def test_eval_scenes_never_occur_in_training_or_dev_under_any_wording(supports):
    train_prompts = {r["prompt"] for r in supports["train"]}
    dev_prompts = {r["prompt"] for r in supports["dev"]}
    for r in supports["eval"]:
        eq = _equivalent_prompts(r)
        assert r["prompt"] in eq
        assert not eq & train_prompts, (r["prompt"], eq & train_prompts)
        assert not eq & dev_prompts, (r["prompt"], eq & dev_prompts)
    for r in supports["dev"]:
        assert not _equivalent_prompts(r) & train_prompts, r["prompt"]
    # the same by canonical scene, and the splits the generators report
    scenes = {k: {S.scene_of(r) for r in v} for k, v in supports.items()}
    assert not scenes["eval"] & scenes["train"] and not scenes["eval"] & scenes["dev"]
    assert not scenes["dev"] & scenes["train"]
    for k, recs in supports.items():
        assert {S.scene_split(r) for r in recs} == {k}


def test_coloured_variants_of_eval_counts_and_positions_are_held_out(supports):
    eval_families = {S.family_of(S.scene_of(r), r["tag"]) for r in supports["eval"] if r["tag"] in ("counting", "position")}
    for r in supports["train"]:
        if r["tag"] in ("counting", "position"):
            assert S.family_of(S.scene_of(r), r["tag"]) not in eval_families, r["prompt"]


def test_generators_draw_only_from_their_supports(supports):
    ev = {r["prompt"] for r in supports["eval"]}
    assert {r["prompt"] for r in S.evaluation_set_v2(per_tag=160)} == ev
    assert {r["prompt"] for r in S.development_set_v2(per_tag=60)} == {r["prompt"] for r in supports["dev"]}
    train = {r["prompt"] for r in supports["train"]}
    rng = np.random.default_rng(0)
    assert {r["prompt"] for r in S.training_prompt_sampler_v2().sample(rng, 300)} <= train
    assert all(P.hard_kind(r) is None for r in supports["train"])


def test_training_covers_every_shape_colour_count_and_relation(supports):
    words = {w for r in supports["train"] for w in r["prompt"].split()}
    assert set(SHAPES) <= words and set(COLORS) <= words
    assert {"two", "three", "four"} <= words
    rel_words = {"left", "right", "above", "below"}
    assert rel_words <= words
    for tag in P.TAGS:  # every tag trains and evaluates
        for split in ("eval", "dev"):
            assert S.prompt_space_v2(tag, split), (tag, split)
        assert any(r["tag"] == tag for r in supports["train"]), tag
    counting = [r for r in supports["train"] if r["tag"] == "counting"]
    assert {r["include"][0]["count"] for r in counting} == {2, 3, 4}
    position = [r for r in supports["train"] if r["tag"] == "position"]
    assert {r["include"][1]["position"][0] for r in position} == set(RELATIONS)


def test_scene_is_wording_independent_and_split_is_deterministic():
    a = P.build_record((("square", 1, None, None), ("circle", 1, None, "left of")), "geneval")
    b = P.build_record((("circle", 1, None, None), ("square", 1, None, "right of")), "bare")
    c = P.build_record((("circle", 1, None, None), ("square", 1, None, "left of")), "one")
    assert S.scene_of(a) == S.scene_of(b) != S.scene_of(c)
    assert S.scene_split(a) == S.scene_split(b)
    assert S.split_summary() == S.split_summary()
    with pytest.raises(ValueError, match="purpose"):
        S.check_scene(a, "test")


# ----------------------------------------------------------------------------- rendering

def test_rendering_a_forbidden_scene_names_it():
    ev = S.evaluation_set_v2(per_tag=1)[0]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"scene \{.*evaluation split.*training"):
        render_scene(ev, rng, spec=WORLD_V2, purpose="train")
    with pytest.raises(ValueError, match="purpose"):
        render_scene(ev, rng, spec=WORLD_V2)
    im = render_scene(ev, rng, spec=WORLD_V2, purpose="eval")
    assert im.shape == (64, 64, 3) and im.dtype == np.uint8
    bad = {"tag": "single_object", "include": [{"class": "hexagon", "count": 1}], "prompt": "a photo of a hexagon"}
    with pytest.raises(ValueError, match="outside the vocabulary.*hexagon"):
        render_scene(bad, rng, spec=WORLD_V2, purpose="train")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        render_scene(bad, rng)
    with pytest.raises(ValueError, match="unknown shapes-world version"):
        world_spec(4)


def test_v2_layout_sizes_and_v1_unchanged():
    rec = S.prompt_space_v2("single_object", "eval")[0]
    sizes = {layout_scene(rec, np.random.default_rng(i), 64, spec=WORLD_V2)[0].size for i in range(40)}
    assert min(sizes) >= 18 and max(sizes) <= 30 and len(sizes) > 5
    v1 = P.evaluation_set(per_tag=1)[0]
    a = render_scene(v1, np.random.default_rng(3))
    b = render_scene(v1, np.random.default_rng(3), spec=WORLD_V1)
    assert a.shape == (48, 48, 3) and np.array_equal(a, b)
    assert judge_config(WORLD_V1) is V1_JUDGE and judge_config(WORLD_V2) is V2_JUDGE
    assert judge_config(WORLD_V3) is V3_JUDGE


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds_and_distractors_stay_in_the_gamut(kind):
    for i in range(6):
        rng = np.random.default_rng([i, 7])
        bg = background(64, rng, kind)
        assert bg.shape == (64, 64, 3) and bg.dtype == np.uint8 and in_gamut(bg).all()
        assert bg.astype(int).std() > 1.0  # textured, not flat
        with_d = draw_distractors(bg, rng, 3, [])
        assert in_gamut(with_d).all()


@pytest.mark.parametrize("config", [V2_JUDGE, V3_JUDGE], ids=["v2", "v3"])
def test_judge_labels_no_colour_of_the_background_gamut(config):
    # Exhaustive: every RGB triple with max <= BG_MAX_VALUE and max - min <= BG_MAX_CHROMA.
    r = np.arange(BG_MAX_VALUE + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[grid.max(1) - grid.min(1) <= BG_MAX_CHROMA].astype(np.float32)
    assert len(grid) > 300_000
    labels = _label_pixels_palette(grid[None], config)
    assert (labels < 0).all()
    # and the palette itself (shaded +-10%) is labelled with its own colour
    from scalingar_jax.world.vocab import PALETTE
    cols = np.asarray([[np.asarray(PALETTE[c]) * s for c in COLORS] for s in (0.9, 1.0, 1.1)], np.float32)
    assert (_label_pixels_palette(np.clip(cols, 0, 255), config) == np.arange(len(COLORS))).all()


def test_v2_judge_on_rendered_ground_truth():
    recs = S.evaluation_set_v2(per_tag=6) + S.development_set_v2(per_tag=2)
    ok = [judge_image(render_scene(r, np.random.default_rng([21, i]), spec=WORLD_V2, purpose=S.scene_split(r)),
                      r, V2_JUDGE).correct for i, r in enumerate(recs)]
    assert np.mean(ok) >= 0.99, [r["prompt"] for r, o in zip(recs, ok) if not o]
    rec, im = render_random_scene(np.random.default_rng(5), spec=WORLD_V2)
    assert S.scene_split(rec) == "train" and judge_image(im, rec, V2_JUDGE).correct


def test_v2_judge_reads_what_a_person_reads():
    objs = [SceneObject("triangle", "red", 10, 10, 24)]
    from scalingar_jax.world.render import render_objects
    im = render_objects(objs, 64, rng=np.random.default_rng(0), spec=WORLD_V2)
    rec = P.build_record((("triangle", 1, None, None),), "geneval")
    assert judge_image(im, rec, V2_JUDGE).correct
    assert judge_image(np.ascontiguousarray(im[::-1]), rec, V2_JUDGE).correct  # apex down


# ----------------------------------------------------------------------------- adversarial set

N_ADV = 50


@pytest.mark.parametrize("case", A.FALSE_ACCEPT_CASES)
def test_adversarial_false_accepts_at_most_2_percent(case):
    assert A.acceptance(case, N_ADV, seed=0) <= 0.02


@pytest.mark.parametrize("case", A.FALSE_REJECT_CASES)
def test_adversarial_true_shapes_accepted(case):
    assert A.acceptance(case, N_ADV, seed=0) >= 0.9


def test_adversarial_set_is_drawn_without_the_renderer():
    import re

    src = Path(A.__file__).read_text()
    assert not re.search(r"(from|import)\s+scalingar_jax\.world\.(render|backgrounds|geometry|scenes)", src)
    assert "from PIL import" in src
    im, rec = A.draw_case("diamond_as_cross", np.random.default_rng(0))
    assert im.shape == (64, 64, 3) and im.dtype == np.uint8
    P.validate_record(rec)
    with pytest.raises(ValueError, match="unknown adversarial case"):
        A.draw_case("hexagon", np.random.default_rng(0))


def test_v2_judge_edge_growth_keeps_blurred_objects_and_never_labels_the_gamut():
    import dataclasses

    from scalingar_jax.world.judge import _grow_edges
    from scalingar_jax.world.render import degrade

    recs = [r for r in S.evaluation_set_v2(per_tag=12) if r["tag"] in ("counting", "two_object", "position")]
    no_grow = dataclasses.replace(V2_JUDGE, edge_grow=0)
    ok, ok_no_grow = [], []
    for i, r in enumerate(recs):
        im = render_scene(r, np.random.default_rng([31, i]), spec=WORLD_V2, purpose="eval")
        im = degrade(im, np.random.default_rng(i), blur=1.5, noise=8.0, color_shift=10.0)
        ok.append(judge_image(im, r, V2_JUDGE).correct)
        ok_no_grow.append(judge_image(im, r, no_grow).correct)
        x = im.astype(np.float32)
        if i < 6:
            grown = _grow_edges(x, _label_pixels_palette(x, V2_JUDGE), V2_JUDGE)
            assert (grown[in_gamut(im)] < 0).all()
    # small objects under a 1.5 px blur: without growth about 0.83 of 36, with it all
    assert np.mean(ok) >= 0.97 and np.mean(ok) > np.mean(ok_no_grow) + 0.05


# ----------------------------------------------------------------------------- the v3 judge (48 px)

def test_v3_judge_colours_near_the_palette_and_mixes():
    """Every colour 20% of the way from a palette colour to another reads as its own colour (v2's
    judge refused 11 of 40); every 50/50 mix stays unlabelled, except red + blue, which is purple."""
    from scalingar_jax.world.vocab import PALETTE
    cols = np.asarray([PALETTE[c] for c in COLORS], np.float32)
    for i, j in itertools.permutations(range(len(COLORS)), 2):
        near = cols[i] + 0.2 * (cols[j] - cols[i])
        assert _label_pixels_palette(near[None, None], V3_JUDGE)[0, 0] == i, (COLORS[i], COLORS[j])
        mid = _label_pixels_palette(((cols[i] + cols[j]) / 2)[None, None], V3_JUDGE)[0, 0]
        assert mid == (COLORS.index("purple") if {COLORS[i], COLORS[j]} == {"red", "blue"} else -1)
    greys = np.repeat(np.arange(141, 256, dtype=np.float32)[:, None], 3, 1)[None]
    white = _label_pixels_palette(greys, V3_JUDGE)[0] == COLORS.index("white")
    assert white.tolist() == [g >= 176 for g in range(141, 256)]  # lighter greys are (shaded) white


def test_v3_judge_on_rendered_held_out_scenes():
    recs = S.evaluation_set_v2(per_tag=5) + S.development_set_v2(per_tag=2)
    ok = [judge_image(render_scene(r, np.random.default_rng([23, i]), spec=WORLD_V3, purpose=S.scene_split(r)),
                      r, V3_JUDGE).correct for i, r in enumerate(recs)]
    assert np.mean(ok) >= 0.99, [r["prompt"] for r, o in zip(recs, ok) if not o]


def _scene(*objects, size=48, level=70):
    """uint8 (size, size, 3) on a flat grey: objects (mask (s, s) bool, rgb, x, y)."""
    im = np.full((size, size, 3), level, np.uint8)
    for mask, rgb, x, y in objects:
        im[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = rgb
    return im


def _rec(core: str, cls: str, count: int = 1, color: str | None = None) -> dict:
    return A._record(core, cls, count, color)


def test_v3_judge_convexity_tells_a_cross_from_a_diamond():
    from scalingar_jax.world.geometry import shape_mask
    from scalingar_jax.world.judge import _polygon, _solidity
    for n in range(9, 31):
        diamond = _polygon([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], n)
        for cls in ("circle", "square", "triangle"):
            assert _solidity(shape_mask(cls, n)) == 1.0
        assert _solidity(diamond) == 1.0 and _solidity(shape_mask("cross", n)) < 0.9
    for n in (10, 14, 20):
        diamond = _polygon([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], n + 4)
        red = (225, 35, 35)
        assert not judge_image(_scene((diamond, red, 10, 10)), _rec("a cross", "cross"), V3_JUDGE).correct
        assert judge_image(_scene((shape_mask("cross", n), red, 10, 10)), _rec("a cross", "cross"), V3_JUDGE).correct
    # the convexity test alone refuses the diamond (v2's decoys alone took 22 of 40 at 48 px) ...
    diamond = _scene((_polygon([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], 20), (225, 35, 35), 10, 10))
    no_decoys = dataclasses.replace(V3_JUDGE, decoys=())
    assert not judge_image(diamond, _rec("a cross", "cross"), no_decoys).correct
    loose = dataclasses.replace(no_decoys, cross_max_solidity=1.0)
    assert judge_image(diamond, _rec("a cross", "cross"), loose).correct
    # ... and a chunky cross (arms half its side, as anti-aliasing or a blur draws a small one) is a
    # cross, not the circle its template IoU prefers
    for n in (12, 16, 20):
        chunky = np.zeros((n, n), bool)
        chunky[n // 4:n - n // 4] = chunky[:, n // 4:n - n // 4] = True
        assert [d.cls for d in detect(_scene((chunky, (40, 80, 240), 10, 10)), V3_JUDGE)] == ["cross"]


def test_v3_judge_does_not_name_objects_under_9_px():
    from scalingar_jax.world.geometry import shape_mask
    white = (235, 235, 235)
    for n in (6, 7, 8):  # too small to name: no class at all (v2's judge read 8 px crosses as triangles)
        for cls in ("cross", "square", "circle", "triangle"):
            dets = detect(_scene((shape_mask(cls, n), white, 20, 20)), V3_JUDGE)
            assert all(d.cls is None for d in dets), (cls, n, dets)
    for n in (10, 11, 12):
        for cls in ("cross", "square", "circle", "triangle"):
            assert judge_image(_scene((shape_mask(cls, n), white, 20, 20)), _rec(f"a {cls}", cls), V3_JUDGE).correct


def test_v3_judge_counts_off_palette_objects_for_their_class():
    from scalingar_jax.world.geometry import shape_mask
    sq = shape_mask("square", 12)
    grey, orange, red = (165, 165, 165), (245, 140, 20), (225, 35, 35)
    two = _rec("two squares", "square", count=2)
    for extra in (grey, orange):
        im = _scene((sq, red, 4, 4), (sq, red, 30, 4), (sq, extra, 18, 30))
        v = judge_image(im, two, V3_JUDGE)
        assert not v.correct and v.reason == "expected 2 square, found 3"
        assert sorted(d.color or "" for d in v.detected) == ["", "red", "red"]
        alone = _scene((sq, extra, 18, 18))
        assert judge_image(alone, _rec("a square", "square"), V3_JUDGE).correct
        v = judge_image(alone, _rec("a red square", "square", color="red"), V3_JUDGE)
        assert not v.correct and "1 off-palette" in v.reason
    # the background gamut (dim greys) is background: never an object
    assert judge_image(_scene((sq, red, 4, 4), (sq, red, 30, 4), (sq, (130, 130, 130), 18, 30)), two, V3_JUDGE).correct
    # and a palette object's blurred rim (a ring of mixes with the background) is no off-palette object
    from scalingar_jax.world.render import degrade
    for name, rgb in (("blue", (40, 80, 240)), ("red", red)):
        im = degrade(_scene((shape_mask("circle", 22), rgb, 12, 12), level=90), np.random.default_rng(0), blur=2.0,
                     noise=2)
        assert [(d.cls, d.color) for d in detect(im, V3_JUDGE)] == [("circle", name)]


def test_v3_judge_blunted_triangles_and_trapezoids():
    from scalingar_jax.world.judge import _apex_ratio, _polygon
    for n in (10, 11, 14, 22):
        tri = _polygon([(0.5, 0), (1, 1), (0, 1)], n)
        blunt = _polygon([(0.5 - 1.5 / n, 0), (0.5 + 1.5 / n, 0), (1, 1), (0, 1)], n)  # a 3 px top
        trap = _polygon([(0.3, 0), (0.7, 0), (1, 1), (0, 1)], n)  # a 40% top
        assert _apex_ratio(tri) < 0.15 and _apex_ratio(blunt) < 0.3 and _apex_ratio(trap) > 0.3
        no_decoys = dataclasses.replace(V3_JUDGE, decoys=())  # the apex test alone tells them apart
        for mask, ok in ((tri, True), (tri[::-1], True), (tri.T, True), (blunt, True), (trap, False), (trap.T, False)):
            im = _scene((mask, (40, 80, 240), 12, 12))
            assert judge_image(im, _rec("a triangle", "triangle"), V3_JUDGE).correct == ok, (n, ok)
            assert judge_image(im, _rec("a triangle", "triangle"), no_decoys).correct == ok, (n, ok)


V3_N_ADV = 12


@pytest.mark.parametrize("case", A.V3_FALSE_ACCEPT)
def test_v3_adversarial_false_accepts_at_most_2_percent(case):
    assert A.acceptance(case, V3_N_ADV, seed=0, world=3) <= 0.02


@pytest.mark.parametrize("case", A.V3_FALSE_REJECT)
def test_v3_adversarial_true_shapes_accepted(case):
    assert A.acceptance(case, V3_N_ADV, seed=0, world=3) >= 0.9


def test_v3_adversarial_set_is_48_px_textured_and_in_the_gamut():
    im, rec = A.draw_case("shapes_in_background", np.random.default_rng(0), world=3)
    assert im.shape == (48, 48, 3) and im.dtype == np.uint8
    P.validate_record(rec)
    for kind in ("flat", "noise", "value", "photo"):
        for i in range(5):
            bg = A.texture(np.random.default_rng(i), 48, kind)
            assert bg.shape == (48, 48, 3) and in_gamut(bg).all(), kind
            assert kind == "flat" or bg.astype(int).std() > 0.5, kind
    with pytest.raises(ValueError, match="unknown adversarial case"):
        A.draw_case("offpalette_extra", np.random.default_rng(0), world=2)  # a v3 case
