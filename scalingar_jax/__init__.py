"""scalingar-jax: ScalingAR confidence-driven test-time scaling on LlamaGen, in JAX/Flax.

Entry points:
  generate(pipeline, prompts, strategy=..., num_candidates=..., seed=...)  prompts -> images
  Strategy / Schedule / Pool / ImportanceSampling   generate's grouped options (checked at construction)
  load_pipeline(path=None)                 a model bundle's pipeline (default: the embedded shapes world)
  scalingar_jax.decode                     prefill / decode_step / jitted generate (plain LlamaGen), GPTModel
  scalingar_jax.scaling                    pure profile / policy functions for your own jitted loop
  scalingar_jax.scaling.run.run_strategy   any strategy on a `token_model.TokenModel`, one device or a mesh
  scalingar_jax.scaling.engine             the engine: prefill / insert / generate / compact / harvest
  scalingar_jax.checkpoint.load_model      converted LlamaGen checkpoints (see `scalingar convert`)

The public names are imported on first use (PEP 562), so that `import scalingar_jax.<module>`
of a light module (the `scalingar` command's parser, `errors`) does not import JAX.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# {public name: the module that defines it}
_PUBLIC = {
    "GPTConfig": "config", "GPT_PRESETS": "config", "SamplingConfig": "config", "gpt_config": "config",
    "ScalingARConfig": "scaling.config", "ABLATIONS": "scaling.config",
    "Pipeline": "pipeline", "GenerationOutput": "pipeline", "generate": "pipeline", "load_pipeline": "pipeline",
    "Strategy": "scaling.options", "Schedule": "scaling.options", "Pool": "scaling.options",
    "ImportanceSampling": "scaling.options",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'scalingar_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"scalingar_jax.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
