"""Every jitted entry lowers for TPU and for GPU on this CPU-only machine (`jax.export`), in
float32 and bfloat16, and no CPU-only construct reaches those programs.

Exported (abstract inputs only: nothing is allocated or run): the engine's pieces
(`scaling.engine`) on one device, a 1 x 1 mesh as `Engine` runs them: the t2i and c2i prefill
(`run_prefill`), the token loop of every strategy (`run_loop_in_place`: the fixed-CFG loop
plain, confidence-only, Best-of-N and importance sampling share; ScalingAR's), compaction,
harvest (selection) per strategy, importance sampling's resampling, the prompt pool's insert and
its per-lane token loop; plain LlamaGen `decode.generate`; the same engine on an abstract 2x4
mesh (`jax.sharding.AbstractMesh`): prefill, ScalingAR's loop (collectives over the candidate
axis), compaction, harvest and the pool's loop (lanes over both axes); Janus-Pro
(`janus.JanusModel`, the second model family) through the same engine pieces (prefill, its decode
step, ScalingAR's loop, compaction, harvest, the pool's insert and loop); VQ decoding, the T5
encoder and CLIP's two towers (CLIPScore).

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

from scalingar_jax import backend, clip, decode, gpt, janus, pipeline, rewards, t5, vq
from scalingar_jax import sharding as SH
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling import engine as E
from scalingar_jax.scaling import loop as L
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


def _model(cfg: GPTConfig, platform: str) -> decode.GPTModel:
    """The GPT as the engine runs it on `platform` (that platform's decode layout)."""
    return decode.GPTModel(cfg, platform=platform)


def _params(model: decode.GPTModel):
    """Abstract GPT parameters in the model's decode layout (what `Engine` hands the pieces)."""
    return _abstract(model.decode_layout, gpt.param_shapes(model.cfg))


def _mesh(prompt_shards: int, cand_shards: int) -> AbstractMesh:
    return AbstractMesh((prompt_shards, cand_shards), (SH.PROMPTS, SH.CANDS), axis_types=(AxisType.Auto,) * 2)


def _on(mesh, tree, spec=P()):
    """Abstract arrays of `tree` placed on `mesh` with PartitionSpec `spec` (one for all, or a tree)."""
    if isinstance(spec, P):
        return jax.tree.map(lambda x: _sds(x.shape, x.dtype, NamedSharding(mesh, spec)), tree)
    return jax.tree.map(lambda x, p: _sds(x.shape, x.dtype, NamedSharding(mesh, p)), tree, spec,
                        is_leaf=lambda x: isinstance(x, P) or x is None)


def _cond(cfg: GPTConfig, P: int = P_):
    if cfg.model_type == "c2i":
        return _sds((P,), jnp.int32), None
    return _sds((P, cfg.cls_token_num, cfg.caption_dim), jnp.dtype(cfg.dtype)), _sds((P, cfg.cls_token_num), bool)


KEY = jax.eval_shape(lambda: jax.random.key(0))
KEY_DATA, IMPL = SH.split_key(jax.random.key(0))
I32 = _sds((), jnp.int32)


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


# ------------------------------------------------------------------------------ the engine's pieces
class Pieces:
    """The engine's jitted pieces on an abstract mesh, called as `Engine` calls them (the run's
    unsharded spec placed with `engine.place`; inputs on the mesh with the engine's specs), each
    returning its exported module for `platform`."""

    def __init__(self, model, mesh, platform: str, *, params=None, condition=None):
        """model: a `token_model.TokenModel` (default inputs: a `decode.GPTModel`'s); params: its
        abstract decode-layout parameters (default `_params(model)`); condition: P -> abstract
        (cond, cond_mask or None) (default `_cond(model.cfg, P)`)."""
        self.model, self.mesh, self.platform = model, mesh, platform
        self.params = _on(mesh, _params(model) if params is None else params)
        self.condition = functools.partial(_cond, model.cfg) if condition is None else condition

    def local(self, spec, lanes: int):
        return E.place(spec, self.mesh, lanes).spec

    def _state(self, fn, local, *args, **kw):
        """The abstract state fn returns, placed with the engine's state shardings."""
        out = _abstract(fn, *args, **kw)
        return jax.tree.map(lambda x, sh: _sds(x.shape, x.dtype, sh), out, E.state_shardings(self.mesh, local))

    def _prefill_args(self, local, lanes: int):
        cond, mask = self.condition(lanes)
        lane = E.lane_spec(local)
        return (self.params, _on(self.mesh, cond, lane), None if mask is None else _on(self.mesh, mask, lane),
                _on(self.mesh, _sds(KEY_DATA.shape, KEY_DATA.dtype)), _on(self.mesh, _sds((lanes,), jnp.int32), lane),
                _on(self.mesh, I32))

    def prefill(self, spec, lanes: int):
        """(state, module) of `run_prefill` for `lanes` prompts (a multiple of the lane shards)."""
        local = self.local(spec, lanes)
        kw = dict(spec=L.shape_key(local), mesh=self.mesh, impl=IMPL)
        args = self._prefill_args(local, lanes)
        return self._state(E.run_prefill, local, *args, **kw), export(E.run_prefill, *args, platform=self.platform,
                                                                      **kw)

    def empty(self, spec, rows: int, lanes: int):
        """The abstract state of `run_empty`: pools of `rows` rows and `lanes` lanes per device."""
        local = self.local(spec, lanes * self.mesh.size)
        return self._state(E.run_empty, local, _on(self.mesh, _sds(KEY_DATA.shape, KEY_DATA.dtype)),
                           spec=L.shape_key(local), mesh=self.mesh, rows=rows, lanes=lanes, impl=IMPL)

    def insert(self, spec, s):
        local = self.local(spec, self.mesh.size)
        one = E.lane_spec(local)
        D = self.mesh.size
        cond, mask = self.condition(D)
        args = (self.params, s, _on(self.mesh, cond, one), None if mask is None else _on(self.mesh, mask, one),
                _on(self.mesh, _sds(KEY_DATA.shape, KEY_DATA.dtype)), _on(self.mesh, _sds((D,), jnp.int32), one),
                _on(self.mesh, I32), _on(self.mesh, _sds((D,), jnp.int32), one), _on(self.mesh, _sds((D,), bool), one))
        return export(E.run_insert, *args, spec=L.shape_key(local), mesh=self.mesh, impl=IMPL, platform=self.platform)

    def loop(self, spec, s, lanes: int):
        scalar = _on(self.mesh, I32)
        return export(E.run_loop_in_place, self.params, s, scalar, scalar, scalar,
                      spec=L.loop_key(self.local(spec, lanes)), mesh=self.mesh, platform=self.platform)

    def compact(self, spec, s, rows: int, lanes: int):
        return export(E.run_compact, s, rows=rows, spec=L.shape_key(self.local(spec, lanes)), mesh=self.mesh,
                      platform=self.platform)

    def resample(self, spec, s, lanes: int):
        local = self.local(spec, lanes)
        n_pad = local.num_candidates * SH.axis_size(self.mesh, SH.CANDS)
        idx = _on(self.mesh, _sds((lanes, n_pad), jnp.int32), E.lane_spec(local))
        return export(E.run_resample, s, idx, spec=L.shape_key(local), mesh=self.mesh, platform=self.platform)

    def harvest(self, spec, s, strategy: str, lanes: int):
        """As `Engine.harvest`: every lane, the padding candidate slots dropped."""
        local = self.local(spec, lanes)
        n_pad = local.num_candidates * (SH.axis_size(self.mesh, SH.CANDS) if spec.lockstep else 1)
        flat = dataclasses.replace(L.shape_key(local), num_candidates=n_pad, lane_axes=(), cand_axis=None)
        return export(E.run_harvest, s, _on(self.mesh, _sds((lanes,), jnp.int32)), strategy=strategy, spec=flat,
                      mesh=self.mesh, num_real=spec.num_candidates, platform=self.platform)


def gpt_entries(dtype: str, platform: str):
    """(name, exported module text, samples with top-k) for every jitted GPT entry on one device."""
    out = []
    for model_type in ("t2i", "c2i"):
        cfg = _gpt_cfg(model_type, dtype)
        model = _model(cfg, platform)
        pieces = Pieces(model, _mesh(1, 1), platform)
        specs = {s: S.spec_of(model, SAMPLING, SCALING, s, N_) for s in ("plain", "scalingar")}
        state, module = pieces.prefill(specs["plain"], P_)
        out.append((f"{model_type} prefill", module, False))
        if model_type == "c2i":
            continue
        for name, spec in specs.items():  # plain: the loop confidence-only, Best-of-N and IS share
            out.append((f"{name} loop", pieces.loop(spec, state, P_), True))
        for strategy in ("plain", "confidence_only", "scalingar"):
            out.append((f"{strategy} harvest", pieces.harvest(specs["plain"], state, strategy, P_), False))
        out.append(("compaction", pieces.compact(specs["scalingar"], state, 4, P_), False))
        out.append(("IS resample", pieces.resample(specs["plain"], state, P_), False))
        cond, mask = _cond(cfg)
        out.append(("generate", export(decode._generate, _params(model), KEY, cond, mask, _sds((P_,), jnp.int32),
                                       cfg=cfg, sampling=SAMPLING, num_candidates=N_, greedy=False,
                                       platform=platform), True))
        spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", N_, lockstep=False)  # the pool's lanes
        pool = pieces.empty(spec, rows=6, lanes=3)
        out.append(("pool insert", pieces.insert(spec, pool), False))
        out.append(("pool loop", pieces.loop(spec, pool, 3), True))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("platform", ACCELERATORS)
def test_gpt_entries_lower_for_accelerators_without_cpu_constructs(platform, dtype):
    """The single-device GPT entries (`gpt_entries`): no CPU-only construct, top-k by lax.top_k,
    the model in the requested dtype, the layers in the platform's layout."""
    entries = gpt_entries(dtype, platform)
    assert len(entries) == 12
    for name, module, top_k in entries:
        try:
            assert_accelerator_module(module, top_k)
        except AssertionError as e:
            raise AssertionError(f"{name} ({platform}, {dtype}): {e}") from None
    assert ("bf16" in dict((n, m) for n, m, _ in entries)["scalingar loop"]) == (dtype == "bfloat16")
    assert _model(_gpt_cfg("t2i", dtype), platform).scan_layers == backend.backend_config(platform).scan_layers


def test_the_cpu_export_holds_every_cpu_construct():
    """The same loop exported for CPU: the markers the accelerator tests look for are live."""
    cfg = _gpt_cfg("t2i", "float32")
    model = _model(cfg, "cpu")
    pieces = Pieces(model, _mesh(1, 1), "cpu")
    spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", N_)
    state, _ = pieces.prefill(spec, P_)
    module = pieces.loop(spec, state, P_)
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
    exp = exported(decode._generate, _params(_model(cfg, "tpu")), KEY, cond, mask, _sds((P_,), jnp.int32), cfg=cfg,
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


# ------------------------------------------------------------------------------ Janus-Pro
def _janus_cfg(dtype: str) -> janus.JanusConfig:
    return janus.JanusConfig(text_vocab_size=40, dim=16, n_layer=2, n_head=4, n_kv_head=2, ffn_hidden=24, vocab_size=32,
                             gen_head_dim=12, grid_size=4, prompt_len=6, param_dtype=dtype, dtype=dtype).validate()


def _janus_pieces(cfg: janus.JanusConfig, mesh, platform: str) -> Pieces:
    """The engine's pieces on `janus.JanusModel(cfg)`: its decode-layout parameters, prompts as
    (ids (P, prompt_len) int32, mask (P, prompt_len) bool)."""
    model = janus.JanusModel(cfg)
    params = _abstract(model.decode_layout, janus.param_shapes(cfg))
    condition = lambda P: (_sds((P, cfg.prompt_len), jnp.int32), _sds((P, cfg.prompt_len), bool))  # noqa: E731
    return Pieces(model, mesh, platform, params=params, condition=condition)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("platform", ACCELERATORS)
def test_janus_entries_lower_for_accelerators(platform, dtype):
    """Janus-Pro (`janus.JanusModel`) through the engine's pieces on one device, as `Engine` runs
    it: prefill, its decode step alone, ScalingAR's token loop, compaction, harvest, the pool's
    insert and per-lane loop: no CPU-only construct, top-k by lax.top_k, the model in `dtype`."""
    cfg = _janus_cfg(dtype)
    pieces = _janus_pieces(cfg, _mesh(1, 1), platform)
    model = pieces.model
    spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", N_)
    state, prefill = pieces.prefill(spec, P_)
    rows = 2 * P_ * N_
    cache = jax.eval_shape(lambda: model.init_cache(rows))
    step = jax.jit(lambda p, c, t, k: model.decode_step(p, c, t, k))
    params = _abstract(model.decode_layout, janus.param_shapes(cfg))
    pool_spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", N_, lockstep=False)
    pool = pieces.empty(pool_spec, rows=6, lanes=3)
    modules = {"prefill": (prefill, False),
               "decode step": (export(step, params, cache, _sds((rows,), jnp.int32), I32, platform=platform), False),
               "scalingar loop": (pieces.loop(spec, state, P_), True),
               "compaction": (pieces.compact(spec, state, 4, P_), False),
               "harvest": (pieces.harvest(spec, state, "scalingar", P_), False),
               "pool insert": (pieces.insert(pool_spec, pool), False),
               "pool loop": (pieces.loop(pool_spec, pool, 3), True)}
    for name, (module, top_k) in modules.items():
        try:
            assert_accelerator_module(module, top_k=top_k)
        except AssertionError as e:
            raise AssertionError(f"janus {name} ({platform}, {dtype}): {e}") from None
    for name in ("prefill", "decode step", "scalingar loop"):
        assert ("bf16" in modules[name][0]) == (dtype == "bfloat16"), name


def test_janus_engine_lowers_on_an_abstract_2x4_mesh():
    """Janus-Pro's prefill and ScalingAR loop under shard_map on the abstract 2x4 mesh: 8-partition
    TPU programs with the candidate axis's collectives."""
    mesh = _mesh(2, 4)
    pieces = _janus_pieces(_janus_cfg("bfloat16"), mesh, "tpu")
    spec = S.spec_of(pieces.model, SAMPLING, SCALING, "scalingar", 8)
    state, prefill = pieces.prefill(spec, 2)
    loop = pieces.loop(spec, state, 2)
    for name, module in (("prefill", prefill), ("loop", loop)):
        assert "mhlo.num_partitions = 8" in module, name
        assert_accelerator_module(module, top_k=name == "loop")
    assert "all_gather" in loop and "all_reduce" in loop


# ------------------------------------------------------------------------------ the engine on a mesh
@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_lowers_on_an_abstract_2x4_mesh(dtype):
    """prefill, ScalingAR's loop (collectives over the candidate axis), compaction, harvest and
    the pool's per-lane loop under shard_map on an abstract 2x4 prompts x cands mesh: 8-partition
    TPU and GPU programs."""
    mesh = _mesh(2, 4)
    cfg = _gpt_cfg("t2i", dtype)
    Pn, Nn = 2, 8  # P and N over the 2 x 4 mesh: 1 prompt x 2 candidate slots per device
    for platform in ACCELERATORS:
        model = _model(cfg, platform)
        pieces = Pieces(model, mesh, platform)
        spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", Nn)
        state, start = pieces.prefill(spec, Pn)
        pool_spec = S.spec_of(model, SAMPLING, SCALING, "scalingar", Nn, lockstep=False)
        modules = {"prefill": start, "loop": pieces.loop(spec, state, Pn),
                   "compaction": pieces.compact(spec, state, 1, Pn),
                   "harvest": pieces.harvest(spec, state, "scalingar", Pn),
                   "pool loop": pieces.loop(pool_spec, pieces.empty(pool_spec, rows=8, lanes=1), mesh.size)}
        for name, module in modules.items():
            assert "mhlo.num_partitions = 8" in module, name
            assert_accelerator_module(module, top_k=name in ("loop", "pool loop"))
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
