"""The trained shapes-world models as one bundle, loaded from `checkpoints/shapes`.

Layout of a world directory (each entry a `checkpoint.save_model` directory):
  vq/      the LlamaGen-architecture VQ tokenizer (48x48 images <-> 12x12 codes)
  gpt/     the t2i GPT (conditions on text-encoder features)
  text/    the text encoder trained jointly with the GPT (stands in for flan-t5)
  reward/  the learned reward model (stands in for ImageReward)

Every part's meta records the world version (`world.spec.META_KEY`; absent = 1, v1's
checkpoints) and, for a world split by scene, the split (`world.scenes.SPLIT_META_KEY`);
`load_world(path, version=2)` refuses a v1 checkpoint with an error naming it.

The default directory is the default model bundle (`scalingar_jax.bundle.default_bundle_path`:
the embedded `checkpoints/shapes`, shipped inside the package, or the environment variable
`SCALINGAR_CHECKPOINT`). Its
`bundle.json` (written by `world.pipeline.write_world_manifest`, which training calls) makes it
loadable by `load_pipeline`. Retrain with
`scalingar train-world all --out checkpoints/shapes --seed 0`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

from scalingar_jax.bundle import ENV_VAR, default_bundle_path

PARTS: tuple[str, ...] = ("vq", "gpt", "text", "reward")
TRAIN_COMMAND = "scalingar train-world all --out checkpoints/shapes --seed 0"


def default_world_path() -> Path:
    """$SCALINGAR_CHECKPOINT if set, else the embedded checkpoints/shapes (`bundle.default_bundle_path`)."""
    return default_bundle_path()


class WorldModel(NamedTuple):
    """Parameters (pytrees of arrays) and frozen configs of the shapes-world models.

    A part not requested from `load_world` holds None for both its params and config.
    """

    vq_params: Any
    vq_cfg: Any
    gpt_params: Any
    gpt_cfg: Any
    text_params: Any
    text_cfg: Any
    reward_params: Any
    reward_cfg: Any
    path: Path
    version: int = 1


def saved_world_version(model_dir) -> int:
    """The world version recorded in a saved model's meta (1 when absent: v1 checkpoints
    predate the field)."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.world.spec import META_KEY

    return int((read_config(model_dir)[2] or {}).get(META_KEY, 1))


def check_world_version(model_dir, version: int) -> None:
    """Raises ValueError naming `model_dir` when its saved world version is not `version`."""
    got = saved_world_version(model_dir)
    if got != version:
        raise ValueError(f"{model_dir} is a shapes-world v{got} checkpoint, loaded as v{version}; "
                         f"v{version} needs its own models (scalingar train-world all --world {version} "
                         f"--out <dir>)")


def load_world(path=None, parts=PARTS, version: int | None = None, *,
               folders: Mapping[str, str] | None = None) -> WorldModel:
    """Loads the shapes-world models from `path` (default: `default_world_path()`).

    parts: which of ("vq", "gpt", "text", "reward") to load; the rest are None.
    version: the world version every loaded part must record (None: any, but all alike).
    folders: part -> folder inside `path` (a bundle's "parts"); default: the part's name.
    Raises:
      FileNotFoundError: the directory or a requested part is missing (the message names
        the path and the command that trains it).
      ValueError: an unknown part, a part holding a different kind of model, or a part of
        another world version than `version` (or than the other parts).
    """
    from scalingar_jax.checkpoint import CONFIG_FILE, load_model

    parts = tuple(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown world parts {unknown}; expected a subset of {list(PARTS)}")
    root = Path(path).expanduser() if path is not None else default_world_path()
    how = (f"train them with `{TRAIN_COMMAND}` (from the repository root; use --out to choose "
           f"another directory and point {ENV_VAR} or load_world(path) at it)")
    if not root.is_dir():
        raise FileNotFoundError(f"no shapes-world checkpoint directory at {root}; {how}")
    where = {p: root / (folders or {}).get(p, p) for p in PARTS}
    missing = [p for p in parts if not (where[p] / CONFIG_FILE).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shapes-world checkpoint {root} lacks {', '.join(f'{m}/' for m in missing)}; {how}"
        )
    versions = {p: saved_world_version(where[p]) for p in parts}
    if version is not None:
        for p in parts:
            check_world_version(where[p], version)
    elif len(set(versions.values())) > 1:
        raise ValueError(f"shapes-world checkpoint {root} mixes world versions: {versions}")
    loaded = {}
    for p in PARTS:
        loaded[p] = load_model(where[p], expect_kind=p) if p in parts else (None, None)
    gpt_cfg, text_cfg = loaded["gpt"][1], loaded["text"][1]
    if gpt_cfg is not None and text_cfg is not None:
        if gpt_cfg.cls_token_num != text_cfg.max_len or gpt_cfg.caption_dim != text_cfg.out_dim:
            raise ValueError(
                f"gpt (cls_token_num={gpt_cfg.cls_token_num}, caption_dim={gpt_cfg.caption_dim}) does not fit "
                f"the text encoder (max_len={text_cfg.max_len}, out_dim={text_cfg.out_dim}) in {root}"
            )
    if gpt_cfg is not None and loaded["vq"][1] is not None and gpt_cfg.vocab_size != loaded["vq"][1].codebook_size:
        raise ValueError(f"gpt vocab_size={gpt_cfg.vocab_size} != vq codebook_size={loaded['vq'][1].codebook_size} in {root}")
    got = next(iter(versions.values()), 1 if version is None else version)
    return WorldModel(*loaded["vq"], *loaded["gpt"], *loaded["text"], *loaded["reward"], path=root, version=got)
