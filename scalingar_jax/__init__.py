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
"""
from scalingar_jax.config import GPT_PRESETS, GPTConfig, SamplingConfig, gpt_config
from scalingar_jax.pipeline import GenerationOutput, Pipeline, generate, load_pipeline
from scalingar_jax.scaling.config import ABLATIONS, ScalingARConfig
from scalingar_jax.scaling.options import ImportanceSampling, Pool, Schedule, Strategy

__version__ = "0.1.0"
__all__ = ["GPTConfig", "GPT_PRESETS", "SamplingConfig", "gpt_config", "ScalingARConfig", "ABLATIONS",
           "Pipeline", "GenerationOutput", "generate", "load_pipeline", "Strategy", "Schedule", "Pool",
           "ImportanceSampling"]
