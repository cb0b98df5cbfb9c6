"""How much a shapes-world GPT uses its caption: the mean next-token cross-entropy of freshly
rendered TRAINING-split scenes with their own caption, with the unconditional embedding, and with
another scene's caption. A model that ignores its caption scores the three alike.

  python experiments/world_text_gap.py checkpoints/shapes [--n 256] [--seed 12345]

Prints a line per condition and writes <out>/world_text_gap.json (default: the current folder).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", help="a shapes-world folder with vq/, gpt/ and text/")
    ap.add_argument("--n", type=int, default=256, help="rendered training-split scenes")
    ap.add_argument("--seed", type=int, default=12345, help="render seed (not one world.train uses)")
    ap.add_argument("--out", default=".", help="folder for world_text_gap.json")
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from scalingar_jax.world.models import load_world
    from scalingar_jax.world.spec import DEFAULT_WORLD
    from scalingar_jax.world.train import encode_images, gpt_loss, render_data
    from scalingar_jax.world.vocab import tokenize

    w = load_world(a.world, parts=("vq", "gpt", "text"))
    recs, imgs = render_data(a.n, a.seed, spec=DEFAULT_WORLD)
    codes = jnp.asarray(encode_images(w.vq_params, w.vq_cfg, imgs))
    ids, mask = (jnp.asarray(x) for x in tokenize([r["prompt"] for r in recs], w.text_cfg.max_len))
    params = {"gpt": w.gpt_params, "text": w.text_params}
    loss = jax.jit(lambda i, m, d: gpt_loss(params, w.gpt_cfg, w.text_cfg, i, m, codes, d))
    perm = np.random.default_rng(a.seed).permutation(a.n)
    conds = {"own caption": (ids, mask, False), "unconditional": (ids, mask, True),
             "another scene's caption": (ids[perm], mask[perm], False)}
    result = {"world": str(a.world), "n": a.n, "seed": a.seed, "conditions": {}}
    for name, (i, m, drop) in conds.items():
        ce, acc = loss(i, m, jnp.full((a.n,), drop))
        result["conditions"][name] = {"cross_entropy": round(float(ce), 4), "token_accuracy": round(float(acc), 4)}
        print(f"{name:>24}: cross-entropy {float(ce):.4f}, token accuracy {float(acc):.4f}")
    out = Path(a.out) / "world_text_gap.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
