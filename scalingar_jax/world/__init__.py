"""The shapes world: a GenEval-style benchmark that runs on a laptop CPU.

Data side (numpy only): `vocab` (shapes, palette, tokenizer), `prompts` (GenEval-schema
records and prompt sets), `render` (procedural images), `judge` (the exact judge),
`geneval_io` (GenEval's folder layout). Import the submodules directly, e.g.
`from scalingar_jax.world.judge import judge_image`.
"""
