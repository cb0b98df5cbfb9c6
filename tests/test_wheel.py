"""`pip install .` (not editable) works: the wheel carries every module, the embedded
shapes-world bundle and its prompt file (printed by `python -m scalingar_jax.world.prompt_file`), and its `scalingar generate` runs from another directory with nothing but
the installed package on the path (no checkout, no experiments/, no $SCALINGAR_CHECKPOINT); so
do `scalingar bundle --janus` on the tiny Janus-Pro fixture's released folder and `scalingar
generate` on that bundle (the second model family found through the package's own tables).

The wheel is built from a copy of the four things it is made of (pyproject.toml, README.md,
scalingar_jax/, checkpoints/), so the build writes nothing into the checkout and needs nothing
else from it; without build isolation (setuptools comes from the `test` extra) and without an
index, so the test needs no network.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "scalingar_jax", "checkpoints")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _pip(*args: str) -> None:
    proc = subprocess.run([*PIP, *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def _files(folder: Path) -> set[str]:
    """Every file under `folder` (bytecode caches excluded), as posix paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src))
    (whl,) = dist.glob("scalingar_jax-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed with `pip install --target` (dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    return target


def _run(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """Runs `argv` in `cwd` with only the install on PYTHONPATH and no $SCALINGAR_CHECKPOINT."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCALINGAR_CHECKPOINT")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_holds_every_module_and_the_embedded_bundle(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"scalingar_jax/{f}" for f in _files(ROOT / "scalingar_jax") if f.endswith(".py")}
    assert modules <= names, f"modules missing from the wheel (list their package in pyproject.toml): {sorted(modules - names)}"
    bundle = {f"scalingar_jax/checkpoints/{f}" for f in _files(ROOT / "checkpoints")}
    assert "scalingar_jax/checkpoints/shapes/bundle.json" in bundle
    assert any("/ocdbt.process_0/d/" in f for f in bundle)  # orbax's nested data files
    assert bundle <= names, f"checkpoint files missing from the wheel: {sorted(bundle - names)}"
    assert "scalingar_jax/world/shapes_prompts.jsonl" in names, "the shapes-world prompt file is not package data"
    assert {n.split("/")[0] for n in names} == {"scalingar_jax", wheel.name.split("-py3")[0] + ".dist-info"}
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "scalingar = scalingar_jax.cli:main" in entry_points


def test_installed_generate_runs_from_another_directory(installed, tmp_path):
    probe = _run(installed, tmp_path, sys.executable, "-c",
                 "import scalingar_jax.janus, scalingar_jax.janus_bundle, scalingar_jax.convert.janus; "
                 "import scalingar_jax.bundle as b; print(b.__file__); print(b.default_bundle_path())")
    assert probe.returncode == 0, probe.stderr
    module, bundle = probe.stdout.split()
    assert Path(module).is_relative_to(installed), f"imported {module}, not the installed package"
    assert Path(bundle) == installed / "scalingar_jax" / "checkpoints" / "shapes"
    prompts = _run(installed, tmp_path, sys.executable, "-m", "scalingar_jax.world.prompt_file")  # README's way
    assert prompts.returncode == 0, prompts.stderr
    assert Path(prompts.stdout.strip()) == installed / "scalingar_jax" / "world" / "shapes_prompts.jsonl"
    assert Path(prompts.stdout.strip()).read_bytes() == (ROOT / "scalingar_jax" / "world" / "shapes_prompts.jsonl").read_bytes()

    proc = _run(installed, tmp_path, str(installed / "bin" / "scalingar"),
                "generate", "a photo of a red circle", "--out", "OUT", "-n", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "OUT"
    assert (out / "selected.png").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["prompt"] == "a photo of a red circle" and result["num_candidates"] == 2
    assert str(installed / "scalingar_jax" / "checkpoints" / "shapes") in result["checkpoint"]


def test_installed_janus_bundle_and_generate(installed, tmp_path):
    released = ROOT / "tests" / "fixtures" / "janus_tiny" / "released"
    scalingar = str(installed / "bin" / "scalingar")
    proc = _run(installed, tmp_path, scalingar, "bundle", "JANUS", "--janus", str(released), "--grid-size", "4",
                "--prompt-len", "48", "--vq-norm-groups", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(installed, tmp_path, scalingar, "generate", "a photo of a cat", "--checkpoint", "JANUS", "-n", "2",
                "--out", "OUT")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "OUT" / "result.json").read_text())
    assert result["num_candidates"] == 2 and result["strategy"] == "scalingar"
    assert result["checkpoint"] == "Janus-Pro (released)"  # the bundle's name, from the released folder's


@pytest.mark.parametrize("argv", [["bench", "decode"], ["reproduce", "main"]])
def test_installed_bench_and_reproduce_say_they_need_the_checkout(installed, tmp_path, argv):
    proc = _run(installed, tmp_path, str(installed / "bin" / "scalingar"), *argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiments/" in lines[0] and "checkout" in lines[0], proc.stderr


def test_training_paths_are_relative_to_the_current_directory():
    from scalingar_jax.cli.train_world import parse_args

    args = parse_args(["all"])
    assert (args.out, args.results) == ("checkpoints/shapes", "experiments/results/training")
    assert parse_args(["vq", "--world", "2"]).out == "checkpoints/shapes_v2"  # v2 never lands on the shipped v1
