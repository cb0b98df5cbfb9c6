"""Model bundles: bundle.json parsing, load_pipeline's dispatch and checks, defaults from the bundle,
config classes named in checkpoints, and the layering (low-level modules never import the world)."""
import argparse
import ast
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from scalingar_jax import cli
from scalingar_jax.bundle import ENV_VAR, MANIFEST_FILE, default_bundle_path, read_bundle
from scalingar_jax.config import SamplingConfig
from scalingar_jax.pipeline import Pipeline, load_pipeline
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.world.pipeline import WORLD_SAMPLING, WORLD_SCALING
from scalingar_jax.world.random_world import RANDOM_WORLD_SAMPLING, RANDOM_WORLD_SCALING

PKG = Path(__file__).resolve().parents[1] / "scalingar_jax"


@pytest.fixture(scope="module")
def world(random_world):
    return random_world


def _copy(world, tmp_path, edit=None):
    """A copy of the random-world bundle whose manifest record is passed through `edit`."""
    dst = tmp_path / "b"
    shutil.copytree(world, dst)
    if edit is not None:
        rec = json.loads((dst / MANIFEST_FILE).read_text())
        out = edit(rec)
        (dst / MANIFEST_FILE).write_text(out if isinstance(out, str) else json.dumps(rec if out is None else out))
    return dst


def test_manifest_of_a_new_world(world):
    b = read_bundle(world)
    assert b.kind == "shapes-world" and b.image_size == 16
    assert dict(b.parts) == {"vq": "vq", "gpt": "gpt", "text": "text", "reward": "reward"}
    # the random world's fixed settings, not the trained world's tuned ones
    assert b.sampling == RANDOM_WORLD_SAMPLING == SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=16, top_p=1.0)
    assert b.scaling == RANDOM_WORLD_SCALING == ScalingARConfig(probation_steps=2, p=0.2)


def test_embedded_bundle_manifest_reads():
    b = read_bundle(PKG.parent / "checkpoints" / "shapes")
    assert b.kind == "shapes-world" and b.image_size == 48 and b.has_part("reward")
    # the development-tuned defaults (experiments/results/tune.json), as the world module states them
    assert (b.sampling, b.scaling) == (WORLD_SAMPLING, WORLD_SCALING)
    tune = json.loads((PKG.parent / "experiments" / "results" / "tune.json").read_text())
    assert b.sampling.cfg_scale == tune["chosen_cfg_scale"] and tune["settings"]["split"] == "dev"
    assert (b.scaling.probation_steps, b.scaling.p) == (tune["chosen"]["Delta_rec"], tune["chosen"]["p"])


def test_default_bundle_path(monkeypatch, tmp_path):
    """In a checkout: the top-level checkpoints/shapes; $SCALINGAR_CHECKPOINT overrides it. (An
    installed wheel's own copy inside the package: tests/test_wheel.py.)"""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_bundle_path() == PKG.parent / "checkpoints" / "shapes"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    assert default_bundle_path() == tmp_path / "mine"


def test_defaults_come_from_the_bundle(world, tmp_path):
    def edit(rec):
        rec["sampling"] = {"cfg_scale": 3.5, "temperature": 0.9, "top_k": 7, "top_p": 0.95}
        rec["scaling"] = {"probation_steps": 3, "p": 0.3}
        rec["name"] = "edited"
    pipe = load_pipeline(_copy(world, tmp_path, edit))
    assert pipe.sampling == SamplingConfig(cfg_scale=3.5, temperature=0.9, top_k=7, top_p=0.95)
    assert pipe.scaling == ScalingARConfig(probation_steps=3, p=0.3) and pipe.name == "edited"
    assert pipe.image_size == 16 and pipe.reward is not None
    # keyword arguments and CLI flags override the bundle, field by field for the flags
    assert load_pipeline(world, sampling=SamplingConfig(cfg_scale=1.5)).sampling == SamplingConfig(cfg_scale=1.5)
    args = argparse.Namespace(cfg=None, temperature=None, top_k=5, top_p=None, ablation=None)
    sampling, scaling = cli.generate.sampling_scaling(args, pipe)
    assert sampling == SamplingConfig(cfg_scale=3.5, temperature=0.9, top_k=5, top_p=0.95)
    assert scaling == pipe.scaling
    # loader options (from the call or the manifest) reach the loader
    assert load_pipeline(world, with_reward=False).reward is None
    assert load_pipeline(_copy(world, tmp_path / "o", lambda r: r.update(options={"with_reward": False}))).reward is None


@pytest.mark.parametrize("edit, exc, match", [
    (lambda r: "{not json", ValueError, "not valid JSON"),
    (lambda r: [1, 2], ValueError, "holds a JSON list, expected an object"),
    (lambda r: r.pop("kind") and None, ValueError, r"missing keys \['kind'\]"),
    (lambda r: r.update(kind="no-such-family"), ValueError, "unknown bundle kind 'no-such-family'; known kinds: "
                                                            "janus-pro, llamagen-c2i, llamagen-t2i, shapes-world"),
    (lambda r: r.update(colour="red"), ValueError, r"unknown keys \['colour'\]"),
    (lambda r: r.update(format=2), ValueError, "format 2"),
    (lambda r: r.update(loader="os:system"), ValueError, "'loader' 'os:system' names code"),
    (lambda r: r.update(loader="scalingar_jax.cli:sys.exit"), ValueError, "names code, which a bundle may not do"),
    (lambda r: r.update(loader="scalingar_jax.llamagen:pipeline_from_bundle"), ValueError, "names code"),
    (lambda r: r.update(options={"with_reward": False, "colour": "red"}), ValueError,
     r"the options \['colour', 'with_reward'\] do not fit a 'shapes-world' bundle"),
    (lambda r: r.update(options={"x": [1, 2]}), ValueError, "option 'x' must be a name or a number"),
    (lambda r: r["scaling"].update(probation_steps=10**30), ValueError, "probation_steps must be <= 65536"),
    (lambda r: r["sampling"].update(cfg_scale=1e300), ValueError, "cfg_scale must be finite and in"),
    (lambda r: r["sampling"].update(cfg=2.0), ValueError, r"unknown SamplingConfig fields \['cfg'\]"),
    (lambda r: r["sampling"].update(top_p=0.0), ValueError, "top_p"),
    (lambda r: r["scaling"].update(p=2.0), ValueError, "scaling"),
    (lambda r: r.update(image_size=32), ValueError, "image_size 32 but the models make 16x16"),
    (lambda r: r.update(image_size="16"), ValueError, r"'image_size' must be an integer in \[1, 65536\]"),
    (lambda r: r["parts"].update(gpt="../gpt"), ValueError, "not a folder path inside the bundle"),
    (lambda r: r["parts"].update(gpt="gpt_missing"), FileNotFoundError, "lacks parts gpt"),
    (lambda r: r["parts"].update(banana="vq"), ValueError, r"unknown shapes-world parts \['banana'\]"),
    (lambda r: r["parts"].pop("text") and None, ValueError, r"needs the parts vq, gpt, text; missing \['text'\]"),
])
def test_bad_manifest_is_one_clear_error(world, tmp_path, edit, exc, match):
    bundle = _copy(world, tmp_path, edit)
    with pytest.raises(exc, match=match) as e:
        load_pipeline(bundle)
    assert str(bundle) in str(e.value)


def test_missing_manifest_and_folder(world, tmp_path, capsys):
    bare = _copy(world, tmp_path)
    (bare / MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{bare} is not a model bundle: it has no bundle.json"):
        load_pipeline(bare)
    with pytest.raises(FileNotFoundError, match="no model bundle at .*nowhere"):
        load_pipeline(tmp_path / "nowhere")
    # the CLI: one line, exit 2, for a missing and for a malformed manifest
    assert cli.main(["generate", "a circle", "--checkpoint", str(bare), "--out", str(tmp_path / "o")]) == 2
    assert "has no bundle.json" in capsys.readouterr().err
    (bare / MANIFEST_FILE).write_text(json.dumps({"format": 1}))
    assert cli.main(["generate", "a circle", "--checkpoint", str(bare), "--out", str(tmp_path / "o")]) == 2
    assert "missing keys" in capsys.readouterr().err


def test_load_world_pipeline_refuses_other_kinds(world, tmp_path):
    from scalingar_jax.world.pipeline import load_world_pipeline

    assert isinstance(load_world_pipeline(world, with_reward=False), Pipeline)
    with pytest.raises(ValueError, match="'llamagen-t2i' bundle, not a 'shapes-world' one"):
        load_world_pipeline(_copy(world, tmp_path, lambda r: r.update(kind="llamagen-t2i")))


def test_write_world_manifest_keeps_defaults(world, tmp_path):
    from scalingar_jax.world.pipeline import write_world_manifest

    b = _copy(world, tmp_path, lambda r: r["sampling"].update(cfg_scale=4.5))
    shutil.rmtree(b / "reward")
    write_world_manifest(b)
    got = read_bundle(b)
    assert got.sampling.cfg_scale == 4.5 and not got.has_part("reward")
    shutil.rmtree(b / "gpt")
    before = (b / MANIFEST_FILE).read_text()
    with pytest.raises(FileNotFoundError, match="gpt/"):
        write_world_manifest(b)
    assert (b / MANIFEST_FILE).read_text() == before


def test_checkpoint_config_kind(world, tmp_path):
    """config.json names its kind, never its class; a class an earlier version recorded is read
    only when it is the built-in class of the kind."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.world.text_encoder import TextEncoderConfig

    rec = json.loads((world / "text" / "config.json").read_text())
    assert rec["kind"] == "text" and "config_class" not in rec
    assert isinstance(read_config(world / "text")[1], TextEncoderConfig)
    d = tmp_path / "text"
    shutil.copytree(world / "text", d)
    for edit, match in [({"config_class": "scalingar_jax.world.text_encoder:TextEncoderConfig"}, None),
                        ({"config_class": "collections:OrderedDict"}, "config_class 'collections:OrderedDict' names code"),
                        ({"config_class": "scalingar_jax.config:GPTConfig"}, "names code"),
                        ({"kind": "mystery"}, "unknown model kind 'mystery'; known: gpt, janus, reward, t5, text, vq")]:
        (d / "config.json").write_text(json.dumps({**rec, **edit}))
        if match is None:
            assert read_config(d)[1] == read_config(world / "text")[1]
        else:
            with pytest.raises(ValueError, match=match):
                read_config(d)


def test_registered_kinds(world, tmp_path, monkeypatch):
    """A family outside the package registers its loader in code; built-in kinds cannot be
    replaced, and a bundle of a registered kind loads through it."""
    from scalingar_jax import bundle as B
    from scalingar_jax import registry

    monkeypatch.setattr(registry, "_REGISTERED", {t: {} for t in registry.BUILTIN})
    calls = []

    def my_loader(b, *, flavour="plain"):
        calls.append((b.kind, flavour))
        return load_pipeline(world, with_reward=False)

    with pytest.raises(ValueError, match="'shapes-world' is built in"):
        B.register_loader("shapes-world", my_loader)
    B.register_loader("my-family", my_loader)
    B.register_loader("my-family", my_loader)  # the same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        B.register_loader("my-family", print)
    mine = _copy(world, tmp_path, lambda r: r.update(kind="my-family", options={"flavour": "spicy"}))
    assert isinstance(load_pipeline(mine), Pipeline) and calls == [("my-family", "spicy")]
    assert "my-family" in registry.names("loader")


def test_installed_entry_points_add_kinds(world, tmp_path, monkeypatch):
    """A family installed as a package adds its kind through an entry point in the group
    `scalingar_jax.bundle_loaders` (its installed metadata, never the bundle, names the code)."""
    import importlib.metadata

    from scalingar_jax import registry

    ep = importlib.metadata.EntryPoint("ep-family", "scalingar_jax.world.pipeline:pipeline_from_bundle",
                                       "scalingar_jax.bundle_loaders")
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == "scalingar_jax.bundle_loaders" else real(group=group))
    mine = _copy(world, tmp_path, lambda r: r.update(kind="ep-family"))
    assert "ep-family" in registry.names("loader") and "ep-family" not in registry.names("config")
    assert isinstance(load_pipeline(mine, with_reward=False), Pipeline)
    gone = _copy(world, tmp_path / "x", lambda r: r.update(kind="no-such-family"))
    with pytest.raises(ValueError, match="unknown bundle kind 'no-such-family'; known kinds: ep-family, "):
        load_pipeline(gone)


def test_text_encoder_runs_once_per_prompt(world, tmp_path, monkeypatch):
    import scalingar_jax.pipeline as P

    calls = []

    def counting(path=None, **kw):
        pipe = load_pipeline(path, **kw)
        cond = pipe.condition

        def condition(prompts):
            calls.append(list(prompts))
            return cond(prompts)
        return dataclasses.replace(pipe, condition=condition)

    monkeypatch.setattr(P, "load_pipeline", counting)
    argv = ["generate", "a photo of a circle", "-n", "1", "--strategy", "plain", "--checkpoint", str(world),
            "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 0
    assert calls == [["a photo of a circle"]]


def test_generate_checks_given_conditioning(world):
    from scalingar_jax.pipeline import generate

    pipe = load_pipeline(world)
    cond = pipe.condition(["a circle", "a square"])
    with pytest.raises(ValueError, match="conditioning has 2 rows for 1 prompts"):
        generate(pipe, ["a circle"], conditioning=cond)


def _imports(path: Path) -> set[str]:
    """Every module a top-level package module imports, lazy (function-level) imports included;
    `from X import y` counts as X and X.y, a relative import is resolved against scalingar_jax."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(p for p in ("scalingar_jax" if node.level else "", node.module or "") if p)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _upward(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(("scalingar_jax.world", "scalingar_jax.cli")))


def test_layering_check_sees_every_import_form(tmp_path):
    for src in ["import scalingar_jax.world.prompts", "from scalingar_jax.world.prompts import TAGS",
                "from scalingar_jax import world", "from .cli import main",
                "def f():\n    from scalingar_jax.world import vocab\n"]:
        (tmp_path / "m.py").write_text(src + "\n")
        assert _upward(_imports(tmp_path / "m.py")), src
    (tmp_path / "m.py").write_text("from scalingar_jax import atomic\nfrom .geneval import TAGS\n")
    assert not _upward(_imports(tmp_path / "m.py"))


@pytest.mark.parametrize("module", ["checkpoint", "pipeline", "bundle", "registry", "inputs", "resources", "images",
                                    "config", "vq",
                                    "gpt", "decode", "sampling", "geneval"])
def test_low_level_modules_do_not_import_the_world(module):
    bad = _upward(_imports(PKG / f"{module}.py"))
    assert not bad, f"{module}.py imports {bad}"
