"""One process of a two-process CPU run (tests/test_multihost.py, experiments/tpu_pod.md).

Usage: python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Every process: 4 simulated CPU devices, `jax.distributed` with gloo collectives, then
1. global mesh over all processes' devices (8): ScalingAR (candidate axis across processes, N=6
   padded to 8, compaction) and importance sampling (resampling copies cache rows across
   processes), compared bit for bit with a single-device run of the same inputs in this process;
2. per-host mode: `split_prompts` share of 4 GenEval records, ScalingAR on a mesh of this
   process's local devices, GenEval run folder `OUT_DIR/part<i>` (`geneval.prepare_run`); process
   0 then merges the parts into `OUT_DIR/merged` (`geneval.merge_runs`) and writes a one-process,
   single-device run of all 4 prompts to `OUT_DIR/ref`.
Writes OUT_DIR/report<i>.json.
"""
import json
import os
import sys

pid, nproc, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if "--fast-compile" in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

from scalingar_jax import sharding as SH  # noqa: E402

SH.init_distributed(f"127.0.0.1:{port}", nproc, pid, local_device_count=4)
if "--fast-compile" in sys.argv:
    jax.config.update("jax_disable_most_optimizations", True)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from strategy_runs import run  # noqa: E402

from scalingar_jax import geneval, gpt  # noqa: E402
from scalingar_jax.config import GPTConfig, SamplingConfig  # noqa: E402
from scalingar_jax.scaling import ScalingARConfig  # noqa: E402

CFG = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=3, caption_dim=4,
                grid_size=4, multiple_of=16)
SAMPLING = SamplingConfig(cfg_scale=3.0)
AGGRESSIVE = ScalingARConfig(p=0.9, probation_steps=1, rebound_threshold=10.0, lam_theta=1.0)
RECORDS = [{"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
           for c in ("bench", "cow", "bicycle", "clock")]


def fake_decode(tokens):
    t = np.asarray(tokens)
    return np.broadcast_to((t * 8 % 256).astype(np.uint8).reshape(t.shape[0], 4, 4)[..., None],
                           (t.shape[0], 4, 4, 3)).copy()


def fake_reward(images, prompts):
    return images.reshape(len(images), -1).mean(1).astype(np.float32)


def cond_of(P, seed=0, offset=0):
    full = np.asarray(jax.random.normal(jax.random.key(seed), (4, CFG.cls_token_num, CFG.caption_dim)))
    return full[offset:offset + P]


def same(a, b):
    return all(bool(np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))))
               for f in ("tokens", "winner", "tokens_used", "all_tokens", "terminated_at"))


def main():
    report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "devices": jax.device_count(), "local_devices": jax.local_device_count()}
    params = jax.jit(gpt.init_params, static_argnums=0)(CFG, jax.random.key(0))
    kw = dict(key=jax.random.key(3), sampling=SAMPLING)

    # 1. one global mesh over both processes' devices; candidates split across processes.
    mesh = SH.make_mesh(1, 8)
    cond = cond_of(3)
    res = run(params, CFG, cond, mesh=mesh, num_candidates=6, scaling=AGGRESSIVE, **kw)
    ref = run(params, CFG, cond, num_candidates=6, scaling=AGGRESSIVE, **kw)
    report["global_scalingar_equal"] = same(res, ref)
    report["global_scalingar_pruned"] = int(np.sum(np.asarray(ref.terminated_at) >= 0))
    isk = dict(strategy="importance_sampling", prompts=["a", "b"], reward_fn=fake_reward, decode_fn=fake_decode,
               num_candidates=8, checkpoints=(0.5,), **kw)
    res = run(params, CFG, cond_of(2), mesh=mesh, **isk)
    ref = run(params, CFG, cond_of(2), **isk)
    report["global_is_equal"] = same(res, ref)

    # 2. per-host mode: each process its share of the prompts on its local devices.
    local_mesh = SH.make_mesh(1, 4, devices=jax.local_devices())
    share = SH.split_prompts(RECORDS, jax.process_index(), jax.process_count())
    idx = [i for i, _ in share]
    res = run(params, CFG, cond_of(len(idx), offset=idx[0]), mesh=local_mesh, num_candidates=4, scaling=AGGRESSIVE,
              prompt_ids=np.asarray(idx), **kw)
    images = fake_decode(np.asarray(res.tokens))
    settings = {"images_per_prompt": 1}
    part = os.path.join(out_dir, f"part{pid}")
    geneval.prepare_run(part, settings, share, selected=len(RECORDS), images_per_prompt=1,
                        process_index=jax.process_index(), process_count=jax.process_count())
    for j, (i, rec) in enumerate(share):
        geneval.write_prompt_folder(part, i, rec, [images[j]])
    multihost_utils.sync_global_devices("parts written")
    if jax.process_index() == 0:
        geneval.merge_runs([os.path.join(out_dir, f"part{p}") for p in range(nproc)], os.path.join(out_dir, "merged"))
        ref = run(params, CFG, cond_of(4), num_candidates=4, scaling=AGGRESSIVE, **kw)
        ref_images = fake_decode(np.asarray(ref.tokens))
        geneval.prepare_run(os.path.join(out_dir, "ref"), settings, list(enumerate(RECORDS)), selected=len(RECORDS),
                            images_per_prompt=1)
        for i, rec in enumerate(RECORDS):
            geneval.write_prompt_folder(os.path.join(out_dir, "ref"), i, rec, [ref_images[i]])
    with open(os.path.join(out_dir, f"report{pid}.json"), "w") as f:
        json.dump(report, f)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main()
