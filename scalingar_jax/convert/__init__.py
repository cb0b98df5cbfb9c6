"""PyTorch LlamaGen checkpoints -> Flax parameters, without torch and without running pickles.

* `torch_pickle`: safe lazy reader (and a writer) of `torch.save` zip files.
* `safetensors`: reader/writer of `.safetensors` files.
* `mapping`: strict PyTorch <-> Flax name/shape mapping for the GPT and the VQ tokenizer, and
  config inference from the weights.

`load_checkpoint(path)` reads either format and returns (state_dict of LazyTensor, meta).
"""
from __future__ import annotations

import os

from scalingar_jax.convert.torch_pickle import (
    CheckpointBudgetError,
    CheckpointFormatError,
    LazyTensor,
    UnsafePickleError,
    load_state_dict,
    save_torch_state_dict,
)

__all__ = [
    "CheckpointFormatError",
    "CheckpointBudgetError",
    "UnsafePickleError",
    "LazyTensor",
    "load_checkpoint",
    "load_state_dict",
    "save_torch_state_dict",
]


def load_checkpoint(path, *, key: str | None = None, max_bytes: int | None = None
                    ) -> tuple[dict[str, LazyTensor], dict]:
    """Opens a `.pt`/`.pth`/`.bin` torch zip file or a `.safetensors` file lazily.

    Returns (state_dict, meta) as `torch_pickle.load_state_dict` does; for safetensors, meta
    has "format": "safetensors" and "metadata" (the file's `__metadata__`). The format is
    detected from the file's first bytes, not its name. `key` selects a top-level entry of a
    torch file (e.g. "ema"). max_bytes: byte budget for reading the file and materialising its
    state dict (default `torch_pickle.default_max_bytes(file size)`); past it
    `CheckpointBudgetError`, raised before any tensor data is read.
    """
    from scalingar_jax.convert import safetensors as st
    from scalingar_jax.convert.torch_pickle import check_budget, default_max_bytes

    path = os.fspath(path)
    from scalingar_jax.inputs import check_regular

    check_regular(path, f"checkpoint file {path!r}")
    with open(path, "rb") as f:
        head = f.read(9)
    is_safetensors = head[8:9] == b"{" or (head[:4] != b"PK\x03\x04" and path.endswith(".safetensors"))
    if not is_safetensors:
        return load_state_dict(path, key=key, max_bytes=max_bytes)
    if key is not None:
        raise ValueError("key= only applies to torch checkpoints; a safetensors file is a flat state dict")
    tensors, metadata = st.load_file(path)
    check_budget(tensors, default_max_bytes(os.path.getsize(path)) if max_bytes is None else max_bytes, path)
    hint = None
    if "scalingar_config" in metadata:  # written by `scalingar convert --export`
        import json

        try:
            hint = json.loads(metadata["scalingar_config"])
        except ValueError:
            raise ValueError(f"{path}: the metadata entry 'scalingar_config' is not valid JSON") from None
        if not isinstance(hint, dict):
            raise ValueError(f"{path}: the metadata entry 'scalingar_config' is not a JSON object")
    return tensors, {"path": path, "format": "safetensors", "metadata": metadata, "wrapper": None,
                     "other_keys": {}, "args": None, "steps": None, "stripped_prefix": "", "scalingar_config": hint}
