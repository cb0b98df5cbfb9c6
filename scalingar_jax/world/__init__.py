"""The shapes world: a GenEval-style benchmark that runs on a laptop CPU.

Data side (numpy only): `vocab` (shapes, palette, tokenizer), `prompts` (GenEval-schema
records and prompt sets), `render` (procedural images), `judge` (the exact judge),
`geneval_io` (GenEval's folder layout). Version 2 of the world (issue 19) lives beside v1:
`spec` (`WorldSpec`, `WORLD_V1` / `WORLD_V2`), `scenes` (splits by scene, v2 prompt sets),
`backgrounds` (photo-like backgrounds, distractors); the renderer, judge, trainer and
`models.load_world` take the spec or version. Import the submodules directly, e.g.
`from scalingar_jax.world.judge import judge_image`.
"""
