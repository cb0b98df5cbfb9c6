"""The GenEval runner: `scalingar generate --prompts` on GenEval's file and layout, resume,
settings checks, per-host split + `scalingar merge` (tiny random shapes world)."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scalingar_jax import cli, geneval
from scalingar_jax.images import read_png

# GenEval's own prompt file, in the shared/ folder laid beside the checkout (and CI's clone)
GENEVAL_FILE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl")
needs_geneval_file = pytest.mark.skipif(not os.path.isfile(GENEVAL_FILE),
                                        reason=f"GenEval's prompt file is not at {GENEVAL_FILE}")
RECORDS = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}], "prompt": "a photo of a red square"},
    {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"},
]
K = geneval.DEFAULT_IMAGES_PER_PROMPT  # the reference run uses the default (4, GenEval's)
COMMON = ["-n", "2", "--strategy", "scalingar", "--seed", "3", "--batch", str(K)]  # one prompt per call


def tree(folder) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, random_world):
    base = tmp_path_factory.mktemp("geneval")
    world = str(random_world)
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    ref = base / "ref"
    assert cli.main(["generate", "--prompts", str(prompts), "--checkpoint", world, "--out", str(ref), *COMMON]) == 0
    return world, prompts, ref


def gen(setup, out, *extra):
    world, prompts, _ = setup
    return cli.main(["generate", "--prompts", str(prompts), "--checkpoint", world, "--out", str(out), *COMMON, *extra])


# ------------------------------------------------------------------------------ prompt file

@needs_geneval_file
def test_real_geneval_file_parses_and_world_vocabulary_is_checked():
    pairs, skipped = geneval.read_prompt_file(GENEVAL_FILE)
    assert [i for i, _ in pairs] == list(range(553)) and not skipped
    with open(GENEVAL_FILE) as f:
        assert [r for _, r in pairs] == [json.loads(line) for line in f]

    def shapes_only(record):
        if record["prompt"] != "a photo of a bench":
            raise ValueError("not a shape")

    with pytest.raises(ValueError, match=r"evaluation_metadata.jsonl:2 \(tag 'single_object', prompt 'a photo of a cow'\)"
                                         r".*not a shape.*--skip-unsupported"):
        geneval.read_prompt_file(GENEVAL_FILE, check=shapes_only)
    pairs, skipped = geneval.read_prompt_file(GENEVAL_FILE, check=shapes_only, skip_unsupported=True)
    assert [(i, r["prompt"]) for i, r in pairs] == [(0, "a photo of a bench")] and len(skipped) == 552


@needs_geneval_file
def test_shapes_bundle_on_real_file_and_unknown_tag_exit_2(setup, tmp_path, capsys):
    world, _, _ = setup
    out = tmp_path / "o"
    assert cli.main(["generate", "--prompts", GENEVAL_FILE, "--checkpoint", world, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evaluation_metadata.jsonl:1 (tag 'single_object', prompt 'a photo of a bench')" in err
    assert "'bench' is not a shape of this world" in err and not out.exists()
    assert cli.main(["generate", "--prompts", GENEVAL_FILE, "--checkpoint", world, "--out", str(out),
                     "--skip-unsupported"]) == 2
    assert "skipped 553 record(s)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(dict(RECORDS[0], tag="texture")) + "\n")
    assert cli.main(["generate", "--prompts", str(bad), "--checkpoint", world, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "'texture'" in err and not out.exists()


# ------------------------------------------------------------------------------ layout

def test_layout_is_genevals(setup):
    _, prompts, ref = setup
    assert sorted(os.listdir(ref)) == ["00000", "00001", "00002", geneval.RUN_FILE]
    lines = prompts.read_text().splitlines()
    for i in range(3):
        folder = ref / f"{i:05d}"
        assert sorted(os.listdir(folder)) == ["grid.png", "metadata.jsonl", "samples"]
        assert (folder / "metadata.jsonl").read_text() == lines[i]  # json.dump of the record, as GenEval
        assert sorted(os.listdir(folder / "samples")) == [f"{k:04d}.png" for k in range(K)]
        samples = [read_png(folder / "samples" / f"{k:04d}.png") for k in range(K)]
        assert all(s.shape == (16, 16, 3) and s.dtype == np.uint8 for s in samples)
        assert len({s.tobytes() for s in samples}) == K  # K independent runs, not copies
        grid = read_png(folder / "grid.png")
        assert grid.shape == (16 + 4, K * 16 + (K + 1) * 2, 3)
        np.testing.assert_array_equal(grid[2:18, 2:18], samples[0])
        np.testing.assert_array_equal(grid[2:18, 2 + 18 * (K - 1):18 + 18 * (K - 1)], samples[K - 1])
    manifest = json.loads((ref / geneval.RUN_FILE).read_text())
    assert manifest["settings"]["images_per_prompt"] == 4 and manifest["indices"] == [0, 1, 2]


def test_images_per_prompt_are_keyed_by_prompt_and_image(tmp_path):
    """Image k of record i is run with prompt id i*K + k: distinct for every (i, k), and the
    same whichever batch or process writes it."""
    calls = []

    def fake(prompts, ids):
        calls.append((list(prompts), [int(x) for x in ids]))
        return np.stack([np.full((2, 2, 3), x, np.uint8) for x in ids])

    todo = [(5, RECORDS[0]), (7, RECORDS[1])]
    geneval.run_prompts(tmp_path, todo, fake, images_per_prompt=3, batch=4)  # 4 rows -> one prompt per call
    assert calls == [([RECORDS[0]["prompt"]] * 3, [15, 16, 17]), ([RECORDS[1]["prompt"]] * 3, [21, 22, 23])]
    for index, first in ((5, 15), (7, 21)):
        for k in range(3):
            assert read_png(tmp_path / f"{index:05d}" / "samples" / f"{k:04d}.png")[0, 0, 0] == first + k
    ids = geneval.prompt_run_ids(np.arange(553), 4)
    assert len(set(ids.tolist())) == 553 * 4


def test_best_of_n_images_are_separate_winners(setup, tmp_path):
    out = tmp_path / "bon"
    assert gen(setup, out, "--strategy", "best_of_n", "--images-per-prompt", "2", "--limit", "1") == 0
    samples = [read_png(out / "00000" / "samples" / f"{k:04d}.png") for k in range(2)]
    assert samples[0].tobytes() != samples[1].tobytes()
    settings = json.loads((out / geneval.RUN_FILE).read_text())["settings"]
    assert (settings["strategy"], settings["num_candidates"], settings["limit"]) == ("best_of_n", 2, 1)


# ------------------------------------------------------------------------------ resume

def test_rerun_is_reproducible_and_resume_keeps_finished_folders(setup, tmp_path):
    _, _, ref = setup
    out = tmp_path / "run"
    shutil.copytree(ref, out)  # a finished run (paths inside it are not recorded)
    kept = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in
            [out / "00000", out / "00000" / "samples" / "0000.png", out / "00002" / "grid.png"]}
    # a killed run: 00001 half-written (its temp folder, of a dead writer) and not yet renamed
    shutil.rmtree(out / "00001")
    leftover = out / ".00001.tmp-4194000-abcdefgh"
    (leftover / "samples").mkdir(parents=True)
    (leftover / "samples" / "0000.png").write_bytes(b"partial")
    # and 00002 damaged by hand: a sample missing -> redone
    os.unlink(out / "00002" / "samples" / "0003.png")
    del kept[out / "00002" / "grid.png"]
    assert gen(setup, out) == 0
    assert not leftover.exists()
    assert tree(out) == tree(ref)  # the redone folders are byte-identical: reproducible
    for p, stat in kept.items():
        assert (os.stat(p).st_ino, os.stat(p).st_mtime_ns) == stat, p


def test_settings_mismatch_refused_unless_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(setup[2], out)
    before = tree(out)
    assert gen(setup, out, "--seed", "4") == 2  # the later --seed wins
    err = capsys.readouterr().err
    assert "other settings" in err and "seed" in err and "--overwrite" in err
    assert gen(setup, out, "--images-per-prompt", "2") == 2
    assert "images_per_prompt" in capsys.readouterr().err
    assert tree(out) == before  # nothing touched
    (out / "notes.txt").write_text("mine")
    assert gen(setup, out) == 2 and "notes.txt" in capsys.readouterr().err
    os.unlink(out / "notes.txt")
    os.unlink(out / geneval.RUN_FILE)
    assert gen(setup, out) == 2 and "no scalingar_run.json" in capsys.readouterr().err
    assert gen(setup, out, "--images-per-prompt", "1", "--overwrite") == 0
    assert sorted(os.listdir(out / "00002" / "samples")) == ["0000.png"]
    assert json.loads((out / geneval.RUN_FILE).read_text())["settings"]["images_per_prompt"] == 1


@pytest.mark.exactness
def test_pool_gives_the_batched_images(setup, tmp_path, capsys):
    """--pool: the 12 generation runs of one call stream through a pool of 4 candidate rows (two
    runs of N = 2 at a time): byte-identical folders to the batched reference."""
    out = tmp_path / "pool"
    assert gen(setup, out, "--pool", "4", "--batch", "12") == 0
    assert tree(out) == tree(setup[2])
    # with --mesh every device keeps its own pool (a 1x1 mesh here: the sharded pool's code path)
    assert gen(setup, tmp_path / "mesh", "--pool", "4", "--batch", "12", "--mesh", "1x1") == 0
    assert tree(tmp_path / "mesh") == tree(setup[2])
    assert gen(setup, tmp_path / "o", "--pool", "1") == 2
    assert "--pool 1 holds fewer candidate rows than one prompt's N = 2" in capsys.readouterr().err


def test_prompt_file_options_need_prompts(setup, tmp_path, capsys):
    world = setup[0]
    assert cli.main(["generate", "a photo of a circle", "--images-per-prompt", "2", "--checkpoint", world,
                     "--out", str(tmp_path / "o")]) == 2
    assert "--images-per-prompt applies to --prompts" in capsys.readouterr().err
    assert cli.main(["generate", "a photo of a circle", "--limit", "1", "--checkpoint", world,
                     "--out", str(tmp_path / "o")]) == 2  # was silently ignored (so were --class-ids runs')
    assert "--limit applies to --prompts" in capsys.readouterr().err
    assert cli.main(["generate", "a photo of a circle", "--pool", "8", "--checkpoint", world,
                     "--out", str(tmp_path / "o")]) == 2
    assert "--pool applies to --prompts" in capsys.readouterr().err
    assert gen(setup, tmp_path / "o", "--process-index", "2", "--process-count", "2") == 2
    assert "--process-index" in capsys.readouterr().err
    assert gen(setup, tmp_path / "o", "--process-index", "0") == 2
    assert "together" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert gen(setup, tmp_path / "file" / "sub") == 2
    assert "is not a writable folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ multi-host

@pytest.mark.exactness
def test_split_over_two_processes_then_merge_equals_one_process(setup, tmp_path, capsys):
    _, _, ref = setup
    parts = [tmp_path / "part0", tmp_path / "part1"]
    for i, part in enumerate(parts):
        assert gen(setup, part, "--process-index", str(i), "--process-count", "2") == 0
    assert sorted(os.listdir(parts[0])) == ["00000", "00001", geneval.RUN_FILE]  # contiguous blocks
    assert sorted(os.listdir(parts[1])) == ["00002", geneval.RUN_FILE]
    merged = tmp_path / "merged"
    assert cli.main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    assert tree(merged) == tree(ref)  # same images, same manifest as one process
    # refusals: a missing part, a part given twice, an unfinished part, an existing --out
    assert cli.main(["merge", str(parts[0]), "--out", str(tmp_path / "m1")]) == 2
    assert "missing the part(s) of process(es) [1]" in capsys.readouterr().err
    assert cli.main(["merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "m1")]) == 2
    assert "both process 0" in capsys.readouterr().err
    shutil.rmtree(parts[1] / "00002")
    assert cli.main(["merge", *map(str, parts), "--out", str(tmp_path / "m1")]) == 2
    assert "unfinished: prompt folder 00002" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists()
    assert cli.main(["merge", str(parts[0]), str(ref), "--out", str(tmp_path / "m1")]) == 2
    assert "other settings" in capsys.readouterr().err
    assert cli.main(["merge", *map(str, parts), "--out", str(merged)]) == 2
    assert "exists" in capsys.readouterr().err


def test_merge_refuses_overlap(tmp_path):
    def part(name, index, indices):
        out = tmp_path / name
        geneval.prepare_run(out, {"images_per_prompt": 1}, [(i, RECORDS[i]) for i in indices], selected=3,
                            images_per_prompt=1, process_index=index, process_count=2)
        for i in indices:
            geneval.write_prompt_folder(out, i, RECORDS[i], [np.zeros((2, 2, 3), np.uint8)])
        return out

    a, b = part("a", 0, [0, 1]), part("b", 1, [1, 2])
    with pytest.raises(ValueError, match="prompt folder 00001 is in two parts"):
        geneval.merge_runs([a, b], tmp_path / "m")
    c = part("c", 1, [1])
    with pytest.raises(ValueError, match="is in two parts"):
        geneval.merge_runs([a, c], tmp_path / "m")
    d = part("d", 1, [])
    with pytest.raises(ValueError, match="hold 2 prompt folders, the run has 3"):
        geneval.merge_runs([a, d], tmp_path / "m")
    assert not (tmp_path / "m").exists()
