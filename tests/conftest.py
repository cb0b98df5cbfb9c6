"""Fixtures shared across test modules."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_world(tmp_path_factory) -> Path:
    """One tiny random shapes-world bundle (grid 4, seed 0), built once per session for the modules
    that only read it; a test that edits a bundle copies it first."""
    from scalingar_jax.world.random_world import save_random_world

    return save_random_world(tmp_path_factory.mktemp("random_world") / "shapes", seed=0)


# The test files that take longest (minutes of XLA compiles, subprocess meshes), longest first.
# pyproject runs the suite on two pytest-xdist workers that take whole files (`--dist loadfile`,
# `--no-loadscope-reorder`): handing out the long files first lets the short ones fill the gaps,
# so both workers finish together instead of one running a long file alone at the end.
LONG_FILES = ("test_world_models.py", "test_reproduce.py", "test_bench_smoke.py", "test_strategies.py",
              "test_multihost.py", "test_sharding.py", "test_pool.py", "test_decode.py", "test_gpt.py",
              "test_scaling_policy.py", "test_cli.py", "test_cli_parser.py", "test_loop_wiring.py", "test_export.py",
              "test_janus.py", "test_readme.py")


def pytest_report_header(config):
    """The XLA flags of the run (CI's second run caps XLA:CPU at AVX2: README, "Exactness")."""
    return f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}"


def pytest_collection_modifyitems(config, items):
    """Long files first (see LONG_FILES); the others keep their order. Only the order changes."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order within a file kept
