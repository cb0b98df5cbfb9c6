"""Every jitted entry lowers for TPU and for GPU on this CPU-only machine (`jax.export`), in
float32 and bfloat16, and no CPU-only construct reaches those programs.

Exported (abstract inputs only: nothing is allocated or run): the t2i and c2i prefill
(`loop.start_loop`), the token loop of every strategy (`loop.run_loop_in_place`: the fixed-CFG
loop plain, confidence-only, Best-of-N and importance sampling share; ScalingAR's, compacting),
compaction, selection (`_finish` per strategy), importance sampling's resampling, plain
LlamaGen `decode.generate`, the prompt pool's step loop and admission, the sharded executor's
start, loop, compaction and selection on an abstract 2x4 mesh (`jax.sharding.AbstractMesh`),
VQ decoding, the T5 encoder and CLIP's two towers (CLIPScore).

What an export covers: tracing and StableHLO lowering with the TPU / CUDA lowering rules (every
op has one, shapes and dtypes check, `platform_dependent` takes the accelerator branch,
custom calls are ones jax.export guarantees), and for the mesh the
shard_map'ed program of 8 partitions with its collectives. It does not cover XLA's compile for
the device (fusion, memory, the SPMD partitioner) nor a run: `scalingar bench accelerator` does
that on the day a device is lent.

A CPU-only construct is one of `scalingar_jax.backend`'s CPU choices: each is traced inside
`backend.cpu_only(name)`, which leaves `cpu_only/<name>` in the module's locations; a TPU or GPU
module must hold none, nor an `optimization_barrier`, and must take top-k from `chlo.top_k`.
The CPU export of the same entry must hold them (so the markers are known to be live).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from scalingar_jax import backend, clip, decode, gpt, pipeline, rewards, t5, vq
from scalingar_jax import sharding as SH
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling import pool
from scalingar_jax.scaling import strategies as S

ACCELERATORS = ("tpu", "cuda")
DTYPES = ("float32", "bfloat16")
P_, N_ = 2, 4  # prompts, candidates
SAMPLING = SamplingConfig(cfg_scale=4.0, top_k=8, top_p=0.9)
SCALING = ScalingARConfig(block_size=4)


def _gpt_cfg(model_type: str, dtype: str) -> GPTConfig:
    extra = dict(cls_token_num=3, caption_dim=8) if model_type == "t2i" else dict(num_classes=10)
    return GPTConfig(model_type=model_type, n_layer=2, n_head=2, dim=16, vocab_size=32, grid_size=4, multiple_of=16,
                     param_dtype=dtype, dtype=dtype, **extra)


def _sds(shape, dtype, sharding=None):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _abstract(fn, *args, **kw):
    return jax.eval_shape(functools.partial(fn, **kw), *args)


def _params(cfg: GPTConfig, platform: str):
    """Abstract GPT parameters in `platform`'s decode layout (what a loader hands the loops there)."""
    return _abstract(functools.partial(gpt.decode_layout, platform=platform), gpt.param_shapes(cfg))


def _cond(cfg: GPTConfig, P: int = P_):
    if cfg.model_type == "c2i":
        return _sds((P,), jnp.int32), None
    return _sds((P, cfg.cls_token_num, cfg.caption_dim), jnp.dtype(cfg.dtype)), _sds((P, cfg.cls_token_num), bool)


KEY = jax.eval_shape(lambda: jax.random.key(0))


def exported(fn, *args, platform: str, **kw) -> jax.export.Exported:
    """`fn` (jitted) exported for `platform` (export has already checked that every custom call
    is one with a compatibility guarantee)."""
    return jax.export.export(fn, platforms=(platform,))(*args, **kw)


def export(fn, *args, platform: str, **kw) -> str:
    """The StableHLO text of `exported(fn, ...)`."""
    return exported(fn, *args, platform=platform, **kw).mlir_module()


def cpu_constructs(module: str) -> list[str]:
    """The CPU-only constructs a lowered module holds: `backend.cpu_only` markers and barriers."""
    found = sorted({line.split(backend.CPU_ONLY + "/")[1].split("\"")[0].split("/")[0]
                    for line in module.splitlines() if backend.CPU_ONLY + "/" in line})
    return found + (["optimization_barrier"] if "stablehlo.optimization_barrier" in module else [])


def assert_accelerator_module(module: str, top_k: bool) -> None:
    assert cpu_constructs(module) == [], f"CPU-only constructs in an accelerator program: {cpu_constructs(module)}"
    if top_k:
        assert "chlo.top_k" in module, "top-k on an accelerator should be lax.top_k"


# ------------------------------------------------------------------------------ the GPT entries
def gpt_entries(dtype: str, platform: str):
    """(name, exported module text, samples with top-k) for every jitted GPT entry on one device."""
    out = []
    for model_type in ("t2i", "c2i"):
        cfg = _gpt_cfg(model_type, dtype)
        params = _params(cfg, platform)
        cond, mask = _cond(cfg)
        ids = _sds((P_,), jnp.int32)
        kw = dict(platform=platform)
        specs = {s: S.token_spec(cfg, SAMPLING, SCALING, s, N_, True) for s in ("plain", "scalingar")}
        state = _abstract(L.start_loop, params, cond, mask, KEY, ids, spec=L.shape_key(specs["plain"]))
        out.append((f"{model_type} prefill", export(L.start_loop, params, cond, mask, KEY, ids,
                                                    spec=L.shape_key(specs["plain"]), **kw), False))
        if model_type == "c2i":
            continue
        stop = _sds((), jnp.int32)
        for name, spec in specs.items():  # plain: the loop confidence-only, Best-of-N and IS share
            out.append((f"{name} loop", export(L.run_loop_in_place, params, state, spec=L.loop_key(spec), stop=stop,
                                               **kw), True))
        for strategy in ("plain", "confidence_only", "scalingar"):
            out.append((f"{strategy} finish", export(L._finish, state, strategy, **kw), False))
        out.append(("compaction", export(L._compact, state, rows=4, **kw), False))
        out.append(("IS resample", export(L._resample, state, _sds((P_, N_), jnp.int32), **kw), False))
        out.append(("generate", export(decode._generate, params, KEY, cond, mask, ids, cfg=cfg, sampling=SAMPLING,
                                       num_candidates=N_, greedy=False, **kw), True))
        spec = dataclasses.replace(specs["scalingar"], compaction=False)
        one, one_mask = _cond(cfg, 1)
        ps = _abstract(pool._empty, params, one, one_mask, KEY, spec=spec, rows=6, lanes=3)
        i32 = _sds((), jnp.int32)
        out.append(("pool admit", export(pool._admit, params, ps, one, one_mask, KEY, i32, i32, i32, spec=spec,
                                         **kw), False))
        out.append(("pool loop", export(pool.run_pool_loop, params, ps, i32, spec=spec, shrink=i32, **kw), True))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("platform", ACCELERATORS)
def test_gpt_entries_lower_for_accelerators_without_cpu_constructs(platform, dtype):
    """The single-device GPT entries (`gpt_entries`): no CPU-only construct, top-k by lax.top_k,
    the model in the requested dtype."""
    entries = gpt_entries(dtype, platform)
    assert len(entries) == 12
    for name, module, top_k in entries:
        try:
            assert_accelerator_module(module, top_k)
        except AssertionError as e:
            raise AssertionError(f"{name} ({platform}, {dtype}): {e}") from None
    assert ("bf16" in dict((n, m) for n, m, _ in entries)["scalingar loop"]) == (dtype == "bfloat16")


def test_the_cpu_export_holds_every_cpu_construct():
    """The same loop exported for CPU: the markers the accelerator tests look for are live."""
    cfg = _gpt_cfg("t2i", "float32")
    params = _params(cfg, "cpu")
    cond, mask = _cond(cfg)
    spec = S.token_spec(cfg, SAMPLING, SCALING, "scalingar", N_, True)
    state = _abstract(L.start_loop, params, cond, mask, KEY, _sds((P_,), jnp.int32), spec=L.shape_key(spec))
    module = export(L.run_loop_in_place, params, state, spec=L.loop_key(spec), stop=_sds((), jnp.int32),
                    platform="cpu")
    want = ["radix_select", "sample_barrier", "optimization_barrier"]
    if backend.backend_config("cpu").column_splits > 1:
        want.insert(0, "column_split")
    assert cpu_constructs(module) == want
    assert "chlo.top_k" not in module


def test_an_exported_generate_serializes():
    """Plain LlamaGen `decode.generate` (its whole token loop) exported for TPU in bf16 serializes
    (`Exported.serialize`, what a CPU host would ship to a device host) and deserializes to the
    same program and signature. (The executor entries cannot be serialized as they are: their
    signatures hold the package's pytree classes `LoopState`, `ConfidenceState` and `KVCache`,
    which `serialize` refuses until each is registered with `jax.export`'s
    `register_pytree_node_serialization` / `register_namedtuple_serialization`.)"""
    pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers (in the test extra)")
    cfg = _gpt_cfg("t2i", "bfloat16")
    cond, mask = _cond(cfg)
    exp = exported(decode._generate, _params(cfg, "tpu"), KEY, cond, mask, _sds((P_,), jnp.int32), cfg=cfg,
                   sampling=SAMPLING, num_candidates=N_, greedy=False, platform="tpu")
    back = jax.export.deserialize(exp.serialize())
    assert back.platforms == ("tpu",) and back.nr_devices == 1
    assert back.in_avals == exp.in_avals and back.out_avals == exp.out_avals == (
        jax.core.ShapedArray((P_, N_, cfg.block_size), jnp.int32),)
    assert back.in_tree == exp.in_tree and back.out_tree == exp.out_tree
    assert back.mlir_module() == exp.mlir_module()
    assert_accelerator_module(back.mlir_module(), top_k=True)


def test_a_planted_cpu_construct_is_caught():
    """The radix select called directly (not through `sampling.kth_largest`'s per-platform
    choice) in a TPU program: the check names it."""
    from scalingar_jax import sampling

    x = _sds((4, 32), jnp.float32)
    good = export(jax.jit(lambda v: sampling.kth_largest(v, 5)), x, platform="tpu")
    assert_accelerator_module(good, top_k=True)
    bad = export(jax.jit(lambda v: jax.named_scope("cpu_only/radix_select")(sampling.radix_kth_largest)(v, 5)), x,
                 platform="tpu")
    with pytest.raises(AssertionError, match="radix_select"):
        assert_accelerator_module(bad, top_k=False)
    with pytest.raises(AssertionError, match="optimization_barrier"):
        assert_accelerator_module(export(jax.jit(jax.lax.optimization_barrier), x, platform="tpu"), top_k=False)


# ------------------------------------------------------------------------------ the sharded executor
@pytest.mark.parametrize("dtype", DTYPES)
def test_sharded_executor_lowers_on_an_abstract_2x4_mesh(dtype):
    """start, loop (ScalingAR: collectives over the candidate axis), compaction and selection
    under shard_map on an abstract 2x4 prompts x cands mesh: 8-partition TPU and GPU programs."""
    mesh = AbstractMesh((2, 4), (SH.PROMPTS, SH.CANDS), axis_types=(AxisType.Auto,) * 2)
    cfg = _gpt_cfg("t2i", dtype)
    rep = NamedSharding(mesh, P())
    by_prompt = NamedSharding(mesh, P(SH.PROMPTS))
    Pn, Nn = 2, 8  # P and N over the 2 x 4 mesh: 1 prompt x 2 candidate slots per device
    spec = dataclasses.replace(S.token_spec(cfg, SAMPLING, SCALING, "scalingar", Nn, True), num_candidates=Nn // 4,
                               prompt_axis=SH.PROMPTS, cand_axis=SH.CANDS)
    for platform in ACCELERATORS:
        params = jax.tree.map(lambda x: _sds(x.shape, x.dtype, rep), _params(cfg, platform))
        cond = _sds((Pn, cfg.cls_token_num, cfg.caption_dim), jnp.dtype(dtype), by_prompt)
        mask = _sds((Pn, cfg.cls_token_num), bool, by_prompt)
        args = (params, cond, mask, _sds((2,), jnp.uint32, rep), _sds((Pn,), jnp.int32, by_prompt),
                _sds((), jnp.int32, rep))
        start = dict(spec=L.shape_key(spec), mesh=mesh, impl="threefry2x32")
        state = _abstract(SH._start, *args, **start)
        state = jax.tree.map(lambda x, sh: _sds(x.shape, x.dtype, sh), state,
                             SH.loop_state_shardings(mesh, L.shape_key(spec), gpt.layers_stacked(params)))
        modules = {"start": export(SH._start, *args, platform=platform, **start),
                   "loop": export(SH.run_loop_in_place, params, state, _sds((), jnp.int32, rep), spec=L.loop_key(spec),
                                  mesh=mesh, platform=platform),
                   "compaction": export(SH._compact, state, rows=1, spec=L.shape_key(spec), mesh=mesh,
                                        platform=platform),
                   "finish": export(SH._finish, state, strategy="scalingar", spec=L.shape_key(spec), mesh=mesh,
                                    num_prompts=Pn, num_real=Nn, platform=platform)}
        for name, module in modules.items():
            assert "mhlo.num_partitions = 8" in module, name
            assert_accelerator_module(module, top_k=name == "loop")
        assert "all_gather" in modules["loop"] and "all_reduce" in modules["loop"]  # pooled stats, pmax


# ------------------------------------------------------------------------------ VQ, T5, CLIP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("platform", ACCELERATORS)
def test_vq_t5_and_clip_lower_for_accelerators(platform, dtype):
    cast = lambda tree: jax.tree.map(lambda x: _sds(x.shape, jnp.dtype(dtype)), tree)  # noqa: E731
    vq_cfg = vq.VQConfig(codebook_size=32, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8,
                         num_res_blocks=1, norm_groups=4, param_dtype=dtype, dtype=dtype)
    modules = {"vq decode": export(pipeline._decode_jit, vq.vq_param_shapes(vq_cfg), vq_cfg,
                                   _sds((2, 4, 4), jnp.int32), platform=platform)}
    t5_cfg = t5.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    t5_params = cast(jax.eval_shape(lambda: t5.init_params(jax.random.key(0), t5_cfg)))
    modules["t5"] = export(t5._encode_jit, t5_params, _sds((2, 6), jnp.int32), _sds((2, 6), bool), cfg=t5_cfg,
                           dtype=jnp.dtype(dtype), precision=None, platform=platform)
    enc = clip.CLIPEncoderConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    clip_cfg = clip.CLIPConfig(text=enc, vision=enc, projection_dim=8, vocab_size=64, max_position_embeddings=8,
                               eos_token_id=63, image_size=8, patch_size=4)
    clip_params = cast(jax.eval_shape(lambda: clip.init_params(jax.random.key(0), clip_cfg)))
    modules["clipscore"] = export(rewards._clipscore_jit, clip_params, _sds((2, 8, 8, 3), jnp.float32),
                                  _sds((2, 8), jnp.int32), cfg=clip_cfg, weight=2.5,
                                  precision=jax.lax.Precision.HIGHEST, platform=platform)
    for name, module in modules.items():
        assert_accelerator_module(module, top_k=False)
        assert ("bf16" in module) == (dtype == "bfloat16"), name
