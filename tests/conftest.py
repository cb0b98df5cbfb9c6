"""Fixtures shared across test modules."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_world(tmp_path_factory) -> Path:
    """One tiny random shapes-world bundle (grid 4, seed 0), built once per session for the modules
    that only read it; a test that edits a bundle copies it first."""
    from scalingar_jax.world.random_world import save_random_world

    return save_random_world(tmp_path_factory.mktemp("random_world") / "shapes", seed=0)
