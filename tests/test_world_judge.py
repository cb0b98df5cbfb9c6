"""Shapes world: renderer, exact judge (GenEval's rules), GenEval folder I/O."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax.images import read_png
from scalingar_jax.world import prompts as P
from scalingar_jax.world.geneval_io import write_prompt_folder
from scalingar_jax.world.geometry import relative_position, shape_mask
from scalingar_jax.world import geneval_io
from scalingar_jax.world import judge as J
from scalingar_jax.world.judge import Detection, Verdict, apply_rules, summarize
from scalingar_jax.world.render import (
    SceneObject, degrade, layout_scene, render_objects, render_random_scene, render_scene,
)
from scalingar_jax.world.vocab import BACKGROUND, SHAPES


# This file tests the v1 world (flat backgrounds) and its judge; the v2/v3 judges: test_world_v2.py.
def judge_image(image, record, config=J.V1_JUDGE):
    return J.judge_image(image, record, config)


def detect(image, config=J.V1_JUDGE):
    return J.detect(image, config)


def evaluate_folder(folder, config=J.V1_JUDGE, **kw):
    return geneval_io.evaluate_folder(folder, config, **kw)


def rec(prompt: str) -> dict:
    for t in P.TAGS:
        for r in P.prompt_space(t):
            if r["prompt"] == prompt:
                return r
    raise KeyError(prompt)


def img(*objects: tuple) -> np.ndarray:
    """objects: (cls, color, x, y, size)."""
    return render_objects([SceneObject(*o) for o in objects])


# ----------------------------------------------------------------------------- agreement

@pytest.fixture(scope="module")
def rendered():
    records = P.evaluation_set(per_tag=20)  # 120 records, every tag
    images = [render_scene(r, np.random.default_rng([11, i])) for i, r in enumerate(records)]
    return records, images


def test_judge_agrees_with_metadata_on_rendered_ground_truth(rendered):
    records, images = rendered
    verdicts = [judge_image(im, r) for im, r in zip(images, records)]
    failures = [(r["prompt"], v.reason) for r, v in zip(records, verdicts) if not v.correct]
    assert len(failures) <= 0.01 * len(records), failures
    s = summarize(verdicts, records)
    assert s["overall"] >= 0.99 and set(s["per_tag"]) == set(P.TAGS)


@pytest.mark.parametrize("kw", [dict(blur=0.0, noise=12.0), dict(blur=1.0, noise=8.0),
                                dict(blur=1.5, noise=8.0, color_shift=10.0), dict(pool=2, blur=0.5)])
def test_judge_is_robust_to_reconstruction_like_noise(rendered, kw):
    records, images = rendered
    ok = [judge_image(degrade(im, np.random.default_rng(i), **kw), r).correct
          for i, (im, r) in enumerate(zip(images, records))]
    assert np.mean(ok) >= 0.99


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tag=st.sampled_from(P.TAGS), hard=st.booleans())
def test_render_of_any_record_is_judged_correct(seed, tag, hard):
    rng = np.random.default_rng(seed)
    if hard:
        pool = P.hard_set(seed=seed % 1000, per_kind=1)
        record = pool[int(rng.integers(len(pool)))]
    else:
        record = P.sample_record(rng, tag)
    image = render_scene(record, rng, background_noise=int(rng.integers(0, 8)))
    v = judge_image(image, record)
    assert v.correct, (record["prompt"], v.reason)


def test_render_is_deterministic_and_flat():
    r = rec("a photo of a circle left of a square")
    a = render_scene(r, np.random.default_rng(3))
    b = render_scene(r, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (48, 48, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_scene(r, np.random.default_rng(4)))
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert tuple(BACKGROUND) in colours and len(colours) <= 3  # no anti-aliasing


def test_layout_respects_sizes_gaps_and_counts():
    r = P.hard_set(per_kind=8)[0]  # count_5_6
    for seed in range(5):
        objs = layout_scene(r, np.random.default_rng(seed))
        assert len(objs) == r["include"][0]["count"]
        for i, a in enumerate(objs):
            assert 11 <= a.size <= 18
            for b in objs[i + 1:]:
                gap = max(b.x - (a.x + a.size), a.x - (b.x + b.size), b.y - (a.y + a.size), a.y - (b.y + b.size))
                assert gap >= 4


def test_render_random_scene_covers_tags_and_is_judged_correct():
    rng = np.random.default_rng(0)
    eval_prompts = {r["prompt"] for r in P.evaluation_set()}
    tags = set()
    for _ in range(60):
        record, image = render_random_scene(rng)
        tags.add(record["tag"])
        assert record["prompt"] not in eval_prompts
        assert judge_image(image, record).correct, record["prompt"]
    assert tags == set(P.TAGS)


def test_render_rejects_bad_records():
    with pytest.raises(ValueError, match="cannot be satisfied"):
        render_scene({"tag": "counting", "include": [{"class": "circle", "count": 2}],
                      "exclude": [{"class": "circle", "count": 2}], "prompt": "x"}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not a shape"):
        render_scene({"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "x"},
                     np.random.default_rng(0))


@pytest.mark.parametrize("cls", SHAPES)
def test_every_shape_is_recognised_at_every_size(cls):
    for size in range(11, 19):
        for kw in (None, dict(blur=1.5, noise=8.0)):
            image = img((cls, "white", 10, 12, size), (cls, "purple", 30, 30, size))
            if kw:
                image = degrade(image, np.random.default_rng(size), **kw)
            found = sorted((d.cls, d.color) for d in detect(image))
            assert found == sorted([(cls, "white"), (cls, "purple")]), (size, kw, found)


# ----------------------------------------------------------------------------- wrong images

def test_wrong_colour_fails_with_reason():
    v = judge_image(img(("circle", "blue", 10, 10, 16)), rec("a photo of a red circle"))
    assert not v.correct
    assert "expected 1 red circle, found 0 red" in v.reason and "1 blue" in v.reason


def test_wrong_count_fails_with_reason():
    r = rec("a photo of two squares")
    three = img(("square", "red", 2, 2, 13), ("square", "red", 25, 2, 13), ("square", "red", 2, 25, 13))
    v = judge_image(three, r)
    assert not v.correct and v.reason == "expected 2 square, found 3"
    one = img(("square", "red", 2, 2, 13))
    v = judge_image(one, r)
    assert not v.correct and v.reason == "expected 2 square, found 1"
    assert judge_image(img(("square", "red", 2, 2, 13), ("square", "green", 25, 25, 13)), r).correct


def test_wrong_position_fails_with_reason():
    r = rec("a photo of a circle left of a square")
    good = img(("circle", "red", 2, 16, 14), ("square", "blue", 30, 16, 14))
    bad = img(("circle", "red", 30, 16, 14), ("square", "blue", 2, 16, 14))
    assert judge_image(good, r).correct
    v = judge_image(bad, r)
    assert not v.correct and v.reason == "expected circle left of square, found circle right of square"
    above = img(("circle", "red", 17, 2, 14), ("square", "blue", 17, 30, 14))
    v = judge_image(above, r)
    assert not v.correct and "found circle above square" in v.reason


def test_missing_and_wrong_class_fail_with_reason():
    r = rec("a photo of a circle and a square")
    v = judge_image(img(("circle", "red", 5, 5, 15)), r)
    assert not v.correct and v.reason == "expected 1 square, found 0"
    v = judge_image(img(("triangle", "red", 5, 5, 15), ("square", "red", 28, 28, 15)), r)
    assert not v.correct and v.reason == "expected 1 circle, found 0"
    v = judge_image(img(), rec("a photo of a cross"))
    assert not v.correct and v.reason == "expected 1 cross, found 0" and v.detected == []


def test_colour_binding_swap_fails():
    r = rec("a photo of a red circle and a blue square")
    assert judge_image(img(("circle", "red", 5, 5, 15), ("square", "blue", 28, 28, 15)), r).correct
    v = judge_image(img(("circle", "blue", 5, 5, 15), ("square", "red", 28, 28, 15)), r)
    assert not v.correct
    assert v.reason.splitlines() == [
        "expected 1 red circle, found 0 red (colours of the circle: 1 blue)",
        "expected 1 blue square, found 0 blue (colours of the square: 1 red)",
    ]


# ----------------------------------------------------------------------------- GenEval rules

def det(cls, color, box, score=0.9):
    return Detection(cls, color, box, 100, score)


def test_geneval_include_is_at_least_and_extra_objects_are_fine():
    r = rec("a photo of a circle")
    ok, reason = apply_rules(r, [det("circle", "red", (0, 0, 10, 10)), det("square", "red", (20, 20, 30, 30)),
                                 det("circle", "blue", (20, 0, 30, 10))])
    assert ok and reason == ""


def test_geneval_colour_checks_only_the_most_confident():
    r = rec("a photo of a red circle")
    dets = [det("circle", "blue", (0, 0, 10, 10), 0.95), det("circle", "red", (20, 0, 30, 10), 0.90)]
    assert not apply_rules(r, dets)[0]
    dets[1] = det("circle", "red", (20, 0, 30, 10), 0.99)
    assert apply_rules(r, dets)[0]


def test_geneval_position_needs_a_matched_target():
    r = {
        "tag": "position",
        "include": [{"class": "square", "count": 1, "color": "green"},
                    {"class": "circle", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a circle left of a green square"}
    ok, reason = apply_rules(r, [det("circle", "red", (0, 0, 10, 10)), det("square", "red", (30, 0, 40, 10))])
    assert not ok and "no target for circle to be left of" in reason


def test_relative_position_rule():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    assert relative_position((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    assert relative_position((20, 20, 30, 30), (0, 0, 10, 10)) == {"right of", "below"}
    # centres 1 px apart, boxes of 10: the size discount swallows the offset
    assert relative_position((1, 0, 11, 10), (0, 0, 10, 10)) == set()
    # offset (10, 6), sizes 10 + 10: dx = (10 - 2) / |(10, 6)| = 0.686 -> left of; dy = 4/11.7 = 0.34
    assert relative_position((0, 0, 10, 10), (10, 6, 20, 16)) == {"left of"}


def test_summarize_is_mean_over_tags():
    records = [rec("a photo of a circle")] * 4 + [rec("a photo of two squares")] * 2
    verdicts = [True, True, True, False, False, False]
    s = summarize(verdicts, records)
    assert s["per_tag"]["single_object"] == {"accuracy": 0.75, "correct": 3, "total": 4}
    assert s["per_tag"]["counting"]["accuracy"] == 0.0
    assert s["overall"] == pytest.approx(0.375)
    assert s["image_accuracy"] == pytest.approx(0.5)
    assert s["prompt_accuracy"] == pytest.approx(0.5)
    assert summarize([Verdict(True, "", [])], records[:1])["overall"] == 1.0
    with pytest.raises(ValueError, match="verdicts but"):
        summarize(verdicts[:2], records)


def test_judge_input_errors():
    r = rec("a photo of a circle")
    with pytest.raises(TypeError, match="uint8"):
        judge_image(np.zeros((48, 48, 3), np.float32), r)
    with pytest.raises(ValueError, match="shape"):
        judge_image(np.zeros((48, 48), np.uint8), r)
    with pytest.raises(ValueError, match="missing key"):
        judge_image(np.zeros((48, 48, 3), np.uint8), {"tag": "colors"})


def test_shape_masks():
    for cls in SHAPES:
        m = shape_mask(cls, 15)
        assert m.shape == (15, 15) and m.any(0).all() and m.any(1).all()
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 10)


# ----------------------------------------------------------------------------- GenEval folders

def test_geneval_folder_round_trip(tmp_path, rendered):
    records, images = rendered
    out = tmp_path / "run"
    for i in range(6):
        r = records[i * 20]
        write_prompt_folder(out, i, r, [images[i * 20], render_scene(r, np.random.default_rng(i))])
    (out / "notes").mkdir()  # ignored: not a digit folder
    (out / "00000" / "samples" / "grid.png").write_bytes(b"")  # ignored: not <digits>.png
    assert sorted(os.listdir(out / "00003" / "samples")) == ["0000.png", "0001.png"]
    with open(out / "00003" / "metadata.jsonl") as f:
        assert json.load(f) == records[60]
    assert np.array_equal(read_png(out / "00000" / "samples" / "0000.png"), images[0])
    results, summary = evaluate_folder(out)
    assert len(results) == 12 and all(x["correct"] for x in results)
    assert [x["index"] for x in results] == [i for i in range(6) for _ in range(2)]
    assert summary["overall"] == 1.0 and set(summary["per_tag"]) == set(P.TAGS)


def test_geneval_folder_overwrite_and_atomicity(tmp_path):
    r = rec("a photo of a red circle")
    good = img(("circle", "red", 10, 10, 15))
    write_prompt_folder(tmp_path, 7, r, [good])
    with pytest.raises(FileExistsError):
        write_prompt_folder(tmp_path, 7, r, [good])
    with pytest.raises(ValueError, match=r"images\[1\] must be uint8"):
        write_prompt_folder(tmp_path, 8, r, [good, good.astype(np.float32)])
    with pytest.raises(ValueError, match="inconsistent"):
        write_prompt_folder(tmp_path, 9, dict(r, prompt="a photo of a blue circle"), [good])
    assert sorted(os.listdir(tmp_path)) == ["00007"]  # nothing half-written
    wrong = img(("circle", "blue", 10, 10, 15))
    write_prompt_folder(tmp_path, 7, r, [wrong, wrong], overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["00007"]
    results, summary = evaluate_folder(tmp_path)
    assert [x["correct"] for x in results] == [False, False]
    assert "expected 1 red circle" in results[0]["reason"]
    with pytest.raises(ValueError, match="no GenEval prompt folders"):
        evaluate_folder(tmp_path / "00007")


def _components_by_flood_fill(labels: np.ndarray, connectivity: int) -> np.ndarray:
    """Reference: breadth-first flood fill; a component's id is the raster index of its first pixel."""
    h, w = labels.shape
    out = np.full((h, w), -1)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if (dy, dx) != (0, 0) and (connectivity == 8 or dy == 0 or dx == 0)]
    for y in range(h):
        for x in range(w):
            if labels[y, x] < 0 or out[y, x] >= 0:
                continue
            out[y, x] = y * w + x
            queue = [(y, x)]
            while queue:
                cy, cx = queue.pop()
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and out[ny, nx] < 0 and labels[ny, nx] == labels[y, x]:
                        out[ny, nx] = y * w + x
                        queue.append((ny, nx))
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 14), w=st.integers(1, 14), k=st.integers(1, 3),
       connectivity=st.sampled_from([4, 8]))
def test_connected_components_match_a_flood_fill(seed, h, w, k, connectivity):
    from scalingar_jax.world.judge import _components

    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((h, w)) < 0.3, -1, rng.integers(0, k, (h, w)))
    assert np.array_equal(_components(labels, connectivity), _components_by_flood_fill(labels, connectivity))
