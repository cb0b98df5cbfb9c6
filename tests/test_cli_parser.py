"""The `scalingar` parser: it imports no JAX/NumPy, lists every subcommand and experiment, its
hard-coded choices equal the library's, bench/reproduce write under --out, errors name flags."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scalingar_jax import cli
from scalingar_jax.cli import bench, bundle, convert, generate, reproduce

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("generate", "merge", "evaluate", "bundle", "convert", "train-world", "bench", "reproduce")

# Parses every --help and a few bad command lines in a fresh interpreter, then lists the heavy
# modules it imported.
_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from scalingar_jax import cli
    argvs = [["--help"], *[[c, "--help"] for c in sys.argv[1:]], ["generate", "--bogus"], ["generate", "-n", "x"],
             ["bench", "nope"], ["reproduce"], ["train-world", "vq", "--world", "9"], ["convert", "a"]]
    codes = []
    for argv in argvs:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                codes.append(cli.main(argv))
            except SystemExit as e:
                codes.append(e.code)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "orbax", "numpy", "optax"))
    print(json.dumps({"codes": codes, "heavy": heavy}))
""")


def test_parsing_and_help_import_no_jax_or_numpy():
    proc = subprocess.run([sys.executable, "-c", _PROBE, *SUBCOMMANDS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["codes"] == [0] * (1 + len(SUBCOMMANDS)) + [2] * 6


def test_top_level_help_lists_every_subcommand_and_no_other(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.split("positional arguments:")[1].split("options:")[0].splitlines()[2:]
              if line.startswith("    ") and not line.startswith("     ")}
    assert listed == set(SUBCOMMANDS)


def test_reproduce_help_lists_every_experiment(capsys):
    import reproduce as script  # experiments/reproduce.py

    names = next(a.choices for a in script.build_parser()._actions if a.dest == "name")
    assert set(reproduce.EXPERIMENTS) == set(names)
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = capsys.readouterr().out
    for name in names:
        assert f"  {name} " in text, name


def test_hard_coded_choices_are_the_librarys():
    from scalingar_jax import janus_bundle, llamagen
    from scalingar_jax.convert import checkpoints
    from scalingar_jax.scaling import loop, options
    from scalingar_jax.scaling.config import ABLATIONS

    assert generate.ABLATIONS == tuple(ABLATIONS)
    assert generate.BUCKETS == loop.BUCKETS
    assert set(generate.STRATEGIES) == set(options.STRATEGIES)
    assert bundle.JANUS_PROMPT_LEN == janus_bundle.DEFAULT_PROMPT_LEN
    assert bundle.DEFAULT_PREPROCESS == llamagen.DEFAULT_PREPROCESS
    assert convert.DEFAULT_TOLERANCE == checkpoints.DEFAULT_TOLERANCE
    assert bench.BENCHMARKS == tuple(sorted(p.stem[len("bench_"):] for p in (ROOT / "experiments").glob("bench_*.py")))


@pytest.mark.parametrize("message, flags, want", [
    ("SamplingConfig.top_k must be an int in [0, 65536], got -5", {"top_k": "--top-k"},
     "--top-k must be an int in [0, 65536], got -5"),
    ("top_p must be in (0, 1], got 2.0", {"cfg_scale": "--cfg", "top_p": "--top-p"},
     "--top-p must be in (0, 1], got 2.0"),
    ("cfg_scale must be finite and >= 0, got -1.0", {"cfg_scale": "--cfg"}, "--cfg must be finite and >= 0, got -1.0"),
    ("top_k must be in [0, vocab_size=512], got 600", {"temperature": "--temperature"},
     "top_k must be in [0, vocab_size=512], got 600"),  # no flag set top_k: the message stays
])
def test_flag_message_names_the_flag(message, flags, want):
    assert generate.flag_message(message, flags) == want


@pytest.mark.parametrize("argv, flag", [(["--top-k", "-5"], "--top-k"), (["--top-p", "2"], "--top-p"),
                                        (["--cfg", "-1"], "--cfg"), (["--temperature", "-1"], "--temperature")])
def test_bad_sampling_flag_is_named(random_world, tmp_path, capsys, argv, flag):
    out = tmp_path / "o"
    assert cli.main(["generate", "a photo of a circle", "--checkpoint", str(random_world), "--out", str(out),
                     *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"error: {flag} " in err and "SamplingConfig" not in err, err
    assert not out.exists()


def test_bench_results_go_under_out(tmp_path, monkeypatch, capfd):
    """`run_script` runs a script of the checkout's experiments/ whose `common.write_json` lands
    under --out, not in experiments/results/."""
    checkout = tmp_path / "checkout"
    (checkout / "experiments").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    shutil.copy(ROOT / "experiments" / "common.py", checkout / "experiments" / "common.py")
    (checkout / "experiments" / "bench_decode.py").write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import write_json
        print(write_json("probe", {"argv": sys.argv[1:]}))
    """))
    monkeypatch.setattr(bench, "CHECKOUT", checkout)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "decode", "--out", "runs/b", "--", "--out", "x", "--batch", "2"]) == 0
    assert json.loads((tmp_path / "runs" / "b" / "probe.json").read_text()) == {"argv": ["--out", "x", "--batch", "2"]}
    assert cli.main(["bench", "decode"]) == 0  # the default: the current folder
    assert json.loads((tmp_path / "probe.json").read_text()) == {"argv": []}
    assert not (checkout / "experiments" / "results").exists()
    assert "results under" in capfd.readouterr().err
    with pytest.raises(SystemExit) as e:  # the script's options go after --
        cli.main(["bench", "decode", "--batch", "2"])
    assert e.value.code == 2 and "unrecognized arguments: --batch 2" in capfd.readouterr().err


def test_bench_cli_runs_from_the_command_with_results_under_out(tmp_path, monkeypatch):
    """The real experiments/bench_cli.py through `scalingar bench cli --out DIR -- --repeat 1`."""
    monkeypatch.chdir(tmp_path)
    before = sorted((ROOT / "experiments" / "results").glob("bench_cli*"))
    before = {p: p.stat().st_mtime_ns for p in before}
    assert cli.main(["bench", "cli", "--out", "b", "--", "--repeat", "1"]) == 0
    rows = json.loads((tmp_path / "b" / "bench_cli.json").read_text())["rows"]
    assert [r["command"].split(" (")[0] for r in rows] == ["scalingar --help", "scalingar generate --help",
                                                          "scalingar generate --bogus"]
    assert all(r["runs"] == 1 and r["median_s"] > 0 for r in rows)
    assert (tmp_path / "b" / "bench_cli.md").is_file()
    after = {p: p.stat().st_mtime_ns for p in (ROOT / "experiments" / "results").glob("bench_cli*")}
    assert after == before  # nothing written into the checkout


def test_bench_out_that_cannot_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main(["bench", "decode", "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err, err


def test_train_world_flags_and_derived_settings():
    from scalingar_jax.cli.train_world import parse_args

    args = parse_args(["gpt", "--resume", "--gpt-init", "checkpoints/shapes", "--seed", "1", "--gpt-steps", "1400"])
    assert (args.model, args.resume, args.gpt_init, args.seed, args.gpt_steps) == ("gpt", True, "checkpoints/shapes",
                                                                                     1, 1400)
    assert args.max_minutes == 45.0 and args.spec.version == 3 and args.out == "checkpoints/shapes"
    assert args.command_line == ("scalingar train-world gpt --resume --gpt-init checkpoints/shapes --seed 1 "
                                 "--gpt-steps 1400")
    assert parse_args(["reward", "--max-minutes", "5", "--resume"]).max_minutes == 5.0
