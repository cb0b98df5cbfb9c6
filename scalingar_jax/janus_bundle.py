"""Janus-Pro's released folder as a model bundle: `assemble_janus_bundle` builds one (`scalingar
bundle OUT --janus DIR`), `pipeline_from_bundle` loads it (the registry's loader of kind
"janus-pro"); `JanusTokenizer` turns prompts into Janus's condition rows.

A Janus-Pro bundle (read by `scalingar_jax.bundle.read_bundle`):

    bundle.json   kind "janus-pro", image_size, parts, sampling (Janus's defaults: cfg 5,
                  temperature 1, no top-k / top-p), notes; no code is named
    gpt/          the image-token generator (`scalingar_jax.janus`: language model + gen_embed /
                  gen_aligner / gen_head) as `checkpoint.save_model` writes it, kind "janus"
    vq/           the VQ-16 decoder (`scalingar_jax.vq`), kind "vq", float32
    tokenizer/    tokenizer.json, tokenizer_config.json, special_tokens_map.json and
                  processor_config.json of the released folder, checked when bundled

The loader returns a `pipeline.Pipeline` whose `gpt_cfg` is the `janus.JanusConfig` and whose
`token_model` is its `janus.JanusModel`: every strategy, the prompt pool, a mesh and the GenEval
runner run it through the engine (`scaling.engine`, the `token_model.TokenModel` protocol), as
they run LlamaGen's `decode.GPTModel`.

Conditioning, as Janus-Pro's README and generation_inference.py: the prompt goes into the
"deepseek" SFT template with an empty system prompt, `<|User|>: {prompt}\\n\\n<|Assistant|>:`,
then `<begin_of_image>` is appended; the `tokenizers` library encodes it without its own
special-token template and BOS is prepended (`add_bos_token`, as Hugging Face's
LlamaTokenizerFast does); the ids are left padded to the generator's `prompt_len`. The
unconditional rows are made from these by `janus.uncond_ids`. Images: `decode_code`, then
`trunc(clip((x + 1) / 2 * 255, 0, 255))` to uint8, Janus's own rounding.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scalingar_jax.bundle import Bundle, write_manifest
from scalingar_jax.config import SamplingConfig, check_int
from scalingar_jax.convert.hf import read_json
from scalingar_jax.inputs import read_bounded

__all__ = ["KIND", "PARTS", "JANUS_SAMPLING", "TOKENIZER_FILES", "JanusTokenizer", "sft_prompt", "to_uint8_janus",
           "assemble_janus_bundle", "pipeline_from_bundle"]

KIND = "janus-pro"  # the bundle kind (registry's "loader" table: `pipeline_from_bundle`)
PARTS = ("gpt", "tokenizer", "vq")
JANUS_SAMPLING = SamplingConfig(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0)  # generation_inference.py
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "processor_config.json")
MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json (DeepSeek's is ~4.5 MB)
MAX_JSON_BYTES = 1 << 20  # the tokenizer's and processor's small JSON files
DEFAULT_PROMPT_LEN = 128  # prompt slots (tokens, template included); the GenEval prompts use ~10-30
PAD_TAG, IMAGE_START_TAG, SFT_FORMAT = "<｜▁pad▁｜>", "<begin_of_image>", "deepseek"  # VLChatProcessor's defaults
ROLES = ("<|User|>", "<|Assistant|>")


def sft_prompt(prompt: str) -> str:
    """Janus's "deepseek" SFT template of one user turn with an empty system prompt and an empty
    assistant turn (`apply_sft_template_for_multi_turn_prompts`), then `<begin_of_image>`."""
    text = prompt.strip()
    turn = f"{ROLES[0]}: {text}\n\n" if text else f"{ROLES[0]}:"
    return (turn + f"{ROLES[1]}:").strip() + IMAGE_START_TAG


def _token(value, where: str, what: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {what} must be a token string, got {type(value).__name__}")
    return value


class JanusTokenizer:
    """Prompts -> Janus's condition rows (ids (P, prompt_len) int32 left padded with 0, mask (P,
    prompt_len) bool), from the tokenizer files of a released folder (or a bundle's tokenizer/).

    Checked when made: tokenizer.json loads (`tokenizers`), the tokenizer class is Llama's, the
    template is "deepseek", BOS, the pad tag and `<begin_of_image>` are single tokens, every
    special token the configs name is in tokenizer.json (Hugging Face would give a missing one a
    new id that the weights never saw), and no id reaches past `text_vocab_size` if given."""

    def __init__(self, folder, *, prompt_len: int = DEFAULT_PROMPT_LEN, text_vocab_size: int | None = None):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        data = read_bounded(path, MAX_TOKENIZER_BYTES, str(path))
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust parser's errors (and bad UTF-8)
            raise ValueError(f"{path}: not a tokenizers-library tokenizer ({str(e)[:200]})") from None
        tok.no_truncation()  # as Hugging Face's encode(): no truncation or padding from the file
        tok.no_padding()
        config = read_json(str(folder), "tokenizer_config.json", max_bytes=MAX_JSON_BYTES)
        specials = read_json(str(folder), "special_tokens_map.json", required=False, max_bytes=MAX_JSON_BYTES) or {}
        processor = read_json(str(folder), "processor_config.json", required=False, max_bytes=MAX_JSON_BYTES) or {}
        where = folder / "tokenizer_config.json"
        if config.get("tokenizer_class", "LlamaTokenizer") not in ("LlamaTokenizer", "LlamaTokenizerFast"):
            raise ValueError(f"{where}: tokenizer_class {config.get('tokenizer_class')!r}; Janus-Pro's is LlamaTokenizer")
        if config.get("add_prefix_space") is not None:
            raise ValueError(f"{where}: add_prefix_space is set; Hugging Face then rebuilds the tokenizer from a "
                             "sentencepiece model, which this reader does not do")
        if processor.get("sft_format", SFT_FORMAT) != SFT_FORMAT:
            raise ValueError(f"{folder / 'processor_config.json'}: sft_format {processor.get('sft_format')!r}; only "
                             f"Janus-Pro's {SFT_FORMAT!r} template is supported")
        self.add_bos = config.get("add_bos_token", True)
        self.add_eos = config.get("add_eos_token", False)
        if not isinstance(self.add_bos, bool) or not isinstance(self.add_eos, bool):
            raise ValueError(f"{where}: add_bos_token / add_eos_token must be true or false")
        named = {"bos_token": _token(config.get("bos_token", specials.get("bos_token")), str(where), "bos_token"),
                 "eos_token": _token(config.get("eos_token", specials.get("eos_token")), str(where), "eos_token")}
        extra = specials.get("additional_special_tokens", [])
        if not isinstance(extra, list):
            raise ValueError(f"{folder / 'special_tokens_map.json'}: additional_special_tokens must be a list")
        for t in [specials.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")] + extra:
            t = _token(t, str(folder / "special_tokens_map.json"), "a special token")
            if t is not None and tok.token_to_id(t) is None:
                raise ValueError(f"{folder / 'special_tokens_map.json'} names the special token {t!r}, which "
                                 "tokenizer.json lacks")
        pad_tag = processor.get("pad_tag", PAD_TAG)
        start_tag = processor.get("image_start_tag", IMAGE_START_TAG)
        if start_tag != IMAGE_START_TAG:
            raise ValueError(f"{folder / 'processor_config.json'}: image_start_tag {start_tag!r}; Janus-Pro's is "
                             f"{IMAGE_START_TAG!r}")
        required = {"bos_token": named["bos_token"], "pad tag": pad_tag, "image start tag": start_tag,
                    "user role": ROLES[0], "assistant role": ROLES[1]}
        if self.add_eos:
            required["eos_token"] = named["eos_token"]
        ids = {}
        for what, t in required.items():
            if not isinstance(t, str) or tok.token_to_id(t) is None:
                raise ValueError(f"{folder}: the {what} {t!r} is not a token of tokenizer.json")
            ids[what] = tok.token_to_id(t)
        size = tok.get_vocab_size(with_added_tokens=True)
        if text_vocab_size is not None and size > text_vocab_size:
            raise ValueError(f"{path}: {size} tokens but the language model embeds {text_vocab_size}: the tokenizer "
                             "does not belong to this model")
        self.folder, self._tok = folder, tok
        self.bos_id, self.eos_id = ids["bos_token"], ids.get("eos_token")
        self.pad_id, self.image_start_id = ids["pad tag"], ids["image start tag"]
        self.vocab_size = size
        self.prompt_len = check_int("JanusTokenizer", "prompt_len", prompt_len, 2, 8192)

    def encode(self, prompt: str) -> list[int]:
        """The token ids of one prompt: BOS, the template's tokens, `<begin_of_image>`."""
        ids = self._tok.encode(sft_prompt(prompt), add_special_tokens=False).ids
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """P prompts -> (ids (P, prompt_len) int32, mask (P, prompt_len) bool), left padded.
        ValueError naming a prompt that is not a string or whose tokens exceed prompt_len."""
        L = self.prompt_len
        ids, mask = np.zeros((len(prompts), L), np.int32), np.zeros((len(prompts), L), bool)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompt {i} is a {type(p).__name__}, not text")
            row = self.encode(p)
            if len(row) > L:
                raise ValueError(f"prompt {i} ({p[:40]!r}...) is {len(row)} tokens with Janus's template; this "
                                 f"generator takes at most {L} (its prompt_len)")
            ids[i, L - len(row):], mask[i, L - len(row):] = row, True
        return ids, mask


def to_uint8_janus(images) -> np.ndarray:
    """Float images (x in about [-1, 1], float32) -> uint8 as generation_inference.py writes them:
    clip((x + 1) / 2 * 255, 0, 255) assigned into a uint8 array (truncated toward zero)."""
    x = np.asarray(images, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or inf")
    return np.clip((x + 1) / 2 * 255, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ loading
def pipeline_from_bundle(bundle: Bundle, *, prompt_len: int | None = None):
    """The loader of a "janus-pro" bundle: a `pipeline.Pipeline` (gpt_cfg a `janus.JanusConfig`,
    token_model its `janus.JanusModel`, params in its decode layout, the VQ, `JanusTokenizer` as
    the conditioner, Janus's uint8 rounding), its parts checked against each other (codebook = image vocabulary, image size,
    stored shapes = config) before the weights are read. prompt_len: more or fewer prompt slots
    than the bundle's (the weights do not depend on it). Raises FileNotFoundError or ValueError
    naming the bundle."""
    import jax

    from scalingar_jax import janus
    from scalingar_jax.checkpoint import load_model, read_config
    from scalingar_jax.pipeline import Pipeline

    where = bundle.manifest_path
    if bundle.kind != KIND:
        raise ValueError(f"{where}: kind {bundle.kind!r} is not a Janus-Pro bundle ({KIND!r})")
    names = tuple(sorted(n for n, _ in bundle.parts))
    if names != PARTS:
        raise ValueError(f"{where}: a {KIND} bundle has the parts {', '.join(PARTS)}; it has {', '.join(names)}")
    kind, cfg, _ = read_config(bundle.part("gpt"))
    vq_kind, vq_cfg, _ = read_config(bundle.part("vq"))
    if (kind, vq_kind) != ("janus", "vq") or not isinstance(cfg, janus.JanusConfig):
        raise ValueError(f"{where}: the part gpt holds a {kind!r} model and vq a {vq_kind!r} one (want janus, vq)")
    if prompt_len is not None:
        cfg = dataclasses.replace(cfg, prompt_len=prompt_len).validate()
    if (vq_cfg.codebook_size, vq_cfg.codebook_embed_dim) != (cfg.vocab_size, cfg.image_embed_dim):
        raise ValueError(f"{where}: the VQ codebook is {vq_cfg.codebook_size} x {vq_cfg.codebook_embed_dim}, the "
                         f"generator's image vocabulary {cfg.vocab_size} x {cfg.image_embed_dim}")
    if cfg.grid_size * vq_cfg.downsample != bundle.image_size:
        raise ValueError(f"{where}: image_size {bundle.image_size} but the models make "
                         f"{cfg.grid_size * vq_cfg.downsample} px images")
    tokenizer = JanusTokenizer(bundle.part("tokenizer"), prompt_len=cfg.prompt_len, text_vocab_size=cfg.text_vocab_size)
    if tokenizer.pad_id != cfg.pad_id:
        raise ValueError(f"{where}: the tokenizer's pad id {tokenizer.pad_id} differs from the generator's {cfg.pad_id}")
    params, _ = load_model(bundle.part("gpt"), expect_kind="janus")
    want = janus.param_shapes(cfg)
    got = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype).name), params)
    expected = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype).name), want)
    if got != expected:
        raise ValueError(f"{bundle.part('gpt')}: the stored weights do not match its config.json")
    vq_params, _ = load_model(bundle.part("vq"), expect_kind="vq")
    model = janus.JanusModel(cfg)
    return Pipeline(gpt_params=model.decode_layout(params), gpt_cfg=cfg, vq_params=vq_params, vq_cfg=vq_cfg,
                    condition=tokenizer, sampling=bundle.sampling, scaling=bundle.scaling, name=bundle.name,
                    to_uint8=to_uint8_janus, token_model=model)


# ------------------------------------------------------------------------------ assembly
def assemble_janus_bundle(out, janus_dir, *, dtype: str = "float32", grid_size: int = 24,
                          prompt_len: int = DEFAULT_PROMPT_LEN, vq_norm_groups: int = 32, name: str | None = None,
                          overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Builds a Janus-Pro bundle folder `out` from DeepSeek's released folder `janus_dir`
    (config.json, pytorch_model.bin or its shards + index, tokenizer files), torch-free.

    dtype: the generator's parameters and compute (float32, bfloat16, float16; the VQ stays
    float32). grid_size: the image token grid (Janus-Pro: 24 x 24 = 576 tokens, 384 px with the
    VQ-16); prompt_len: prompt slots (tokens with the template); vq_norm_groups: the VQ's GroupNorm
    groups (Janus: 32; only tiny test models differ). The manifest records Janus's defaults: cfg 5,
    temperature 1, no top-k.

    Everything is checked before anything is converted (config numbers, the weight index,
    shapes, the tokenizer; `convert.janus.read_released`, `JanusTokenizer`); on any error nothing
    is left at `out` (an existing bundle there stays as it was). Raises ValueError / KeyError /
    FileNotFoundError naming the file, FileExistsError (out exists and not overwrite)."""
    from scalingar_jax import janus
    from scalingar_jax.atomic import atomic_dir
    from scalingar_jax.checkpoint import save_model
    from scalingar_jax.convert.janus import convert_released, read_released

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    grid_size = check_int("assemble_janus_bundle", "grid_size", grid_size, 1, 256)
    janus_dir = Path(janus_dir)
    released = read_released(janus_dir, vq_norm_groups=vq_norm_groups)
    tokenizer = JanusTokenizer(janus_dir, prompt_len=prompt_len, text_vocab_size=released.fields["text_vocab_size"])
    cfg = janus.JanusConfig(**released.fields, grid_size=grid_size, prompt_len=tokenizer.prompt_len,
                            pad_id=tokenizer.pad_id, param_dtype=dtype, dtype=dtype).validate()
    if cfg.max_seq_len > released.max_positions:
        raise ValueError(f"{janus_dir / 'config.json'}: max_position_embeddings {released.max_positions} is below "
                         f"the {cfg.max_seq_len} positions of {cfg.prompt_len} prompt slots and {cfg.block_size} "
                         "image tokens")
    tokenizer_files = {f: read_bounded(janus_dir / f, MAX_TOKENIZER_BYTES if f == "tokenizer.json" else MAX_JSON_BYTES,
                                       str(janus_dir / f))
                       for f in TOKENIZER_FILES if (janus_dir / f).exists()}  # as checked; rechecked once written
    out = Path(out).absolute()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        params, vq_params = convert_released(released, cfg, dtype=dtype)
        meta = {"source": str(janus_dir.resolve()), "converted_dtype": dtype}
        save_model(tmp / "gpt", params, cfg, kind="janus", meta=meta)
        del params
        save_model(tmp / "vq", vq_params, released.vq_config, kind="vq", meta=meta)
        (tmp / "tokenizer").mkdir()
        for f, data in tokenizer_files.items():
            (tmp / "tokenizer" / f).write_bytes(data)
        JanusTokenizer(tmp / "tokenizer", prompt_len=cfg.prompt_len, text_vocab_size=cfg.text_vocab_size)
        notes = (f"Janus-Pro ({cfg.n_layer} layers, hidden {cfg.dim}, {cfg.vocab_size} image codes, grid "
                 f"{cfg.grid_size}, {cfg.prompt_len} prompt slots, {dtype}) assembled from {janus_dir}. sampling: "
                 "generation_inference.py's defaults.")
        write_manifest(tmp, kind=KIND, image_size=cfg.grid_size * released.vq_config.downsample,
                       parts={p: p for p in PARTS}, sampling=JANUS_SAMPLING,
                       name=name or f"Janus-Pro ({janus_dir.name})", notes=notes)
    log(f"wrote the {KIND} bundle {out}")
    return out
