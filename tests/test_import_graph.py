"""The package's import graph, read with `ast` from the source (nothing is imported): no cycle,
no module importing one of a higher layer, no module using another module's `_private` name.

Every import counts, the ones inside functions too (a lazy import is still a dependency). An
edge goes to the module a statement names: `from scalingar_jax.scaling import engine` to
`scalingar_jax.scaling.engine`, `from scalingar_jax import generate` to the package
`scalingar_jax` itself. Python also runs every parent package's `__init__` on import; those are
the packages' own layers' business (each `__init__` is in `LAYERS` and checked like a module).

`LAYERS` lists every module, lowest layer first; a module may import its own layer and the ones
below. A new module goes into the table (the test fails until it is placed).
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "scalingar_jax"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # what any module may use: configs, files, errors, meshes, the model protocol
    ("ground", ("atomic", "backend", "caption", "config", "errors", "inputs", "registry", "resources", "sharding",
                "stats", "timing", "token_model", "scaling.config", "world.backgrounds", "world.geometry",
                "world.spec")),
    # file formats and data files
    ("formats", ("bundle", "convert", "convert.hf", "convert.safetensors", "convert.torch_pickle", "geneval",
                 "images")),
    # models and the pure functions over them; checkpoints and their conversion
    ("models", ("checkpoint", "clip", "convert.checkpoints", "convert.janus", "convert.mapping", "convert.reference",
                "decode", "gpt", "janus", "rewards", "sampling", "scaling", "scaling.policy", "scaling.profile", "t5",
                "text_features", "viz", "vq")),
    # the engine and its schedulers
    ("engine", ("scaling.engine", "scaling.loop", "scaling.options", "scaling.pool", "scaling.run",
                "scaling.strategies")),
    ("pipeline", ("pipeline",)),
    # model families: bundle loaders and what they are built from
    ("families", ("janus_bundle", "llamagen", "world", "world.geneval_io", "world.judge", "world.models",
                  "world.pipeline", "world.prompt_file", "world.prompts", "world.random_world", "world.render",
                  "world.reward", "world.scenes", "world.text_encoder", "world.train", "world.vocab")),
    ("api", ("",)),  # the package's own __init__: the public names
    # the command line: the `scalingar` program, one module per subcommand (argparse lives only here)
    ("commands", ("cli", "cli.__main__", "cli.bench", "cli.bundle", "cli.convert", "cli.evaluate", "cli.generate",
                  "cli.merge", "cli.reproduce", "cli.train_world")),
)


# ------------------------------------------------------------------------------ reading the graph
def modules(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module under root/package (a package by its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, mods: dict[str, Path], package: str):
    """(tree, [(target module, imported name or None, line)], {local alias: module}) of one file."""
    tree = ast.parse(path.read_text(), str(path))
    found, alias = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    found.append((a.name, None, node.lineno))
                    alias[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src != package and not src.startswith(package + "."):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in mods:  # a module
                    found.append((sub, None, node.lineno))
                    alias[a.asname or a.name] = sub
                else:
                    found.append((src, a.name, node.lineno))
    return tree, found, alias


def graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[tuple[str, str | None, int]]]:
    """{module: [(imported module, name imported from it or None, line)]} over the package."""
    mods = modules(root, package)
    return {name: _imports(name, path, mods, package)[1] for name, path in mods.items()}


def cycles(edges: dict[str, list]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, or a module
    importing itself (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    succ = {m: sorted({t for t, _, _ in e if t in edges}) for m, e in edges.items()}
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in succ[v]:
                    out.append(sorted(comp))
    return out


def layer_of(layers, package: str = PACKAGE) -> dict[str, int]:
    """{dotted module name: layer index} of a `LAYERS` table."""
    out = {}
    for i, (_, names) in enumerate(layers):
        for n in names:
            out[package + ("." + n if n else "")] = i
    return out


def upward(edges, layers, package: str = PACKAGE) -> list[str]:
    """Every import of a module in a higher layer than the importer's: 'a (layer) -> b (layer), line'."""
    rank, names = layer_of(layers, package), [n for n, _ in layers]
    return [f"{m} ({names[rank[m]]}) -> {t} ({names[rank[t]]}), line {line}"
            for m, e in sorted(edges.items()) for t, _, line in e
            if m in rank and t in rank and rank[t] > rank[m]]


def private_uses(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """Every use of another module's `_private` name: imported (`from m import _x`) or read
    through a module (`m._x`, `a.b._x`). Dunder names are public."""
    mods = modules(root, package)
    out = []

    def private(n):
        return n.startswith("_") and not (n.startswith("__") and n.endswith("__"))

    for name, path in mods.items():
        tree, found, alias = _imports(name, path, mods, package)
        out += [f"{name}: from {t} import {n}, line {line}" for t, n, line in found if n and private(n) and t != name]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain, x = [node.attr], node.value
            while isinstance(x, ast.Attribute):
                chain.append(x.attr)
                x = x.value
            if not isinstance(x, ast.Name) or x.id not in alias:
                continue
            chain.reverse()  # the attributes after the alias, outermost last
            target = alias[x.id]
            for i, attr in enumerate(chain):
                if f"{target}.{attr}" in mods:
                    target = f"{target}.{attr}"
                    continue
                if i == len(chain) - 1 and private(attr) and target != name:
                    out.append(f"{name}: {target}.{attr}, line {node.lineno}")
                break
    return sorted(set(out))


# ------------------------------------------------------------------------------ the package
def test_every_module_is_in_exactly_one_layer():
    listed = [n for _, names in LAYERS for n in names]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    placed, found = set(layer_of(LAYERS)), set(modules(ROOT, PACKAGE))
    assert found - placed == set(), f"modules without a layer (add them to LAYERS): {sorted(found - placed)}"
    assert placed - found == set(), f"LAYERS names modules that do not exist: {sorted(placed - found)}"


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_module_imports_a_higher_layer():
    assert upward(graph(), LAYERS) == []


def test_no_module_uses_another_modules_private_names():
    assert private_uses() == []


# ------------------------------------------------------------------------------ the checks themselves
def test_the_checks_find_planted_faults(tmp_path):
    """A tiny package with one of each fault: a cycle through a lazy import, an upward import,
    a private name imported and one read through a module alias; each check names it."""
    files = {
        "__init__.py": "",
        "low.py": """
            def f():
                from pkg import high  # upward, and a cycle with high -> low
                return high.g()
        """,
        "high.py": """
            from pkg import low
            from pkg.low import _hidden
            import pkg.mid as m

            def g():
                return m._secret, m.public, m.__name__
        """,
        "mid.py": "_secret = public = 1\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg").mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(textwrap.dedent(text))
    edges = graph(tmp_path, "pkg")
    assert cycles(edges) == [["pkg.high", "pkg.low"]]
    layers = (("base", ("", "low", "mid")), ("top", ("high",)))
    assert upward(edges, layers, "pkg") == ["pkg.low (base) -> pkg.high (top), line 3"]
    assert private_uses(tmp_path, "pkg") == ["pkg.high: from pkg.low import _hidden, line 3",
                                            "pkg.high: pkg.mid._secret, line 7"]


@pytest.mark.parametrize("source, want", [("from . import sibling", "pkg.sub.sibling"),
                                          ("from .. import top", "pkg.top"),
                                          ("from ..top import name", "pkg.top")])
def test_relative_imports_resolve_to_modules(tmp_path, source, want):
    for rel, text in {"__init__.py": "", "top.py": "name = 1\n", "sub/__init__.py": "", "sub/sibling.py": "",
                      "sub/user.py": source + "\n"}.items():
        (tmp_path / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / rel).write_text(text)
    assert [t for t, _, _ in graph(tmp_path, "pkg")["pkg.sub.user"]] == [want]
