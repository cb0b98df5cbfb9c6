"""The engine behind its model protocol, and the run options.

A second model family (`Markov`: token k's logits are a class term plus a bigram term of token
k - 1; its cache is a dict of per-row arrays, not the GPT's KVCache) runs through the same
engine and both schedulers: the batched loop draws exactly the tokens of a direct loop over
the model's own functions, the pool gives the batched results per prompt, and ScalingAR's
accounting holds. `decode.GPTModel` implements the protocol; the options refuse bad values
at construction, naming the field.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from scalingar_jax import backend, decode, gpt
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.sampling import candidate_keys
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling.options import ImportanceSampling, Pool, Schedule, Strategy
from scalingar_jax.scaling.run import run_strategy
from scalingar_jax.token_model import TokenModel


@dataclasses.dataclass(frozen=True)
class Markov:
    """Class-conditional bigram model: logits of token 0 = start[c], of token k = cls[c] +
    bigram[token k-1]; class `classes` is the null condition (the uncond rows)."""

    classes: int = 3
    vocab: int = 12
    grid: int = 4

    vocab_size = property(lambda self: self.vocab)
    block_size = property(lambda self: self.grid * self.grid)
    grid_size = property(lambda self: self.grid)

    def check_condition(self, cond, cond_mask):
        c = np.asarray(cond)
        if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= self.classes:
            raise ValueError(f"Markov conditions are class ids in [0, {self.classes}), got {c}")
        return jnp.asarray(c, jnp.int32), None

    def prefill(self, params, cond, cond_mask):
        c = jnp.concatenate([cond, jnp.full_like(cond, self.classes)])
        return params["start"][c], {"cls": c, "prev": jnp.zeros_like(c)}

    def decode_step(self, params, cache, tokens, k):
        logits = params["cls"][cache["cls"]] + params["bigram"][tokens]
        return logits.astype(jnp.float32), {"cls": cache["cls"], "prev": tokens}

    def init_cache(self, rows):
        return {"cls": jnp.zeros((rows,), jnp.int32), "prev": jnp.zeros((rows,), jnp.int32)}

    def decode_layout(self, params):
        return params


MODEL = Markov()
SAMPLING = SamplingConfig(cfg_scale=2.0)
EAGER = ScalingARConfig(p=0.9, probation_steps=1, rebound_threshold=10.0, warmup_frac=0.125, lam_theta=1.0)


def _params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    V, C = MODEL.vocab, MODEL.classes + 1
    return {"start": 3 * jax.random.normal(k1, (C, V)), "cls": 2 * jax.random.normal(k2, (C, V)),
            "bigram": 3 * jax.random.normal(k3, (V, V))}


def _direct(params, cond, key, prompt_ids, N):
    """Plain CFG sampling written against the model alone: (P, N, T) tokens."""
    P, T = len(cond), MODEL.block_size
    keys = candidate_keys(key, jnp.asarray(prompt_ids), jnp.arange(N, dtype=jnp.int32)).reshape(P * N)
    logits, cache = MODEL.prefill(params, jnp.asarray(cond), None)
    rows = jnp.repeat(jnp.arange(2 * P), N)
    logits, cache = logits[rows], jax.tree.map(lambda x: x[rows], cache)
    out = []
    for k in range(T):
        tok = decode.next_tokens(SAMPLING, logits[: P * N], logits[P * N:], jnp.float32(SAMPLING.cfg_scale), keys,
                                 jnp.int32(k), True)
        out.append(np.asarray(tok))
        logits, cache = MODEL.decode_step(params, cache, jnp.concatenate([tok, tok]), jnp.int32(k))
    return np.stack(out, -1).reshape(P, N, T)


def test_models_implement_the_protocol():
    cfg = GPTConfig(model_type="c2i", n_layer=1, n_head=2, dim=16, vocab_size=32, num_classes=10, grid_size=4,
                    multiple_of=16)
    for model in (decode.GPTModel(cfg), MODEL):
        assert isinstance(model, TokenModel)
    assert decode.GPTModel(cfg) == decode.GPTModel(cfg) and hash(decode.GPTModel(cfg)) == hash(decode.GPTModel(cfg))
    assert decode.GPTModel(cfg).block_size == 16
    with pytest.raises(TypeError, match="GPTModel.cfg must be a GPTConfig"):
        decode.GPTModel("GPT-B")
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\)"):
        decode.GPTModel(cfg).check_condition(np.array([3, 10]), None)


def test_gpt_model_layout_follows_its_platform_and_its_cache_matches_prefill():
    """The decode layout is the platform's (`backend.backend_config`) unless scan_layers says
    otherwise; in either layout `init_cache` (a pool's free rows) has the tree of `prefill`'s
    cache, so the engine can copy prefilled rows into a pool."""
    cfg = GPTConfig(model_type="c2i", n_layer=2, n_head=2, dim=16, vocab_size=32, num_classes=10, grid_size=4,
                    multiple_of=16)
    assert decode.GPTModel(cfg) == decode.GPTModel(cfg, platform=jax.default_backend())
    for platform in ("cpu", "tpu", "gpu"):
        model = decode.GPTModel(cfg, platform=platform)
        assert model.platform == backend.canonical_platform(platform)
        assert model.scan_layers == backend.backend_config(platform).scan_layers
    params = gpt.param_shapes(cfg)
    for scan in (True, False):
        model = decode.GPTModel(cfg, scan_layers=scan)
        laid = jax.eval_shape(model.decode_layout, params)
        assert gpt.layers_stacked(laid) == scan
        _, cache = jax.eval_shape(model.prefill, laid, jnp.zeros((3,), jnp.int32), None)
        free = jax.eval_shape(lambda: model.init_cache(6))
        assert cache.stacked == scan and jax.tree.structure(cache) == jax.tree.structure(free)
        assert [x.shape for x in jax.tree.leaves(cache)] == [x.shape for x in jax.tree.leaves(free)]
    with pytest.raises(TypeError, match="GPTModel.scan_layers must be a bool"):
        decode.GPTModel(cfg, scan_layers="yes")
    with pytest.raises(ValueError, match="unknown platform"):
        decode.GPTModel(cfg, platform="gpu2")


@pytest.mark.exactness
def test_a_second_model_family_runs_through_the_engine_and_both_schedulers():
    params, cond, ids = _params(), np.array([0, 2, 1, 2, 0]), np.array([4, 1, 7, 0, 3])
    key, N = jax.random.key(5), 4
    kw = dict(key=key, prompt_ids=ids)
    plain, stats = run_strategy(MODEL, params, cond, strategy=Strategy("plain", N, sampling=SAMPLING), **kw)
    np.testing.assert_array_equal(np.asarray(plain.all_tokens), _direct(params, cond, key, ids, N))
    assert stats.row_steps == len(cond) * N * MODEL.block_size and stats.utilization == 1.0
    # a pool of 6 rows (one prompt at a time, plus what pruning frees): the batched results per prompt
    sar = Strategy("scalingar", N, sampling=SAMPLING, scaling=EAGER)
    batched, _ = run_strategy(MODEL, params, cond, strategy=sar, schedule=Schedule(compaction=False), **kw)
    pooled, pstats = run_strategy(MODEL, params, cond, strategy=sar, schedule=Schedule(pool=Pool(6)), **kw)
    for name in ("all_tokens", "winner", "tokens_used", "terminated_at"):
        np.testing.assert_array_equal(np.asarray(getattr(pooled, name)), np.asarray(getattr(batched, name)), name)
    term = np.asarray(batched.terminated_at)
    assert (term >= 0).any() and pstats.steps < len(cond) * MODEL.block_size
    per_cand = np.where(term >= 0, term + 1, MODEL.block_size)  # a candidate pruned at k sampled 0..k
    np.testing.assert_array_equal(np.asarray(batched.tokens_used), per_cand.sum(1))
    # a raw uint32 key (jax.random.PRNGKey) is the typed key of the same seed: the same tokens
    raw, _ = run_strategy(MODEL, params, cond, strategy=Strategy("plain", N, sampling=SAMPLING),
                          key=jax.random.PRNGKey(5), prompt_ids=ids)
    np.testing.assert_array_equal(np.asarray(raw.all_tokens), np.asarray(plain.all_tokens))
    # the model's own check runs first
    with pytest.raises(ValueError, match="Markov conditions"):
        run_strategy(MODEL, params, np.array([3]), strategy=sar, key=key)


def test_options_refuse_bad_values_naming_the_field():
    cases = [
        (lambda: Strategy("beam"), ValueError, "Strategy.name: unknown strategy 'beam'"),
        (lambda: Strategy(num_candidates=0), ValueError, r"Strategy.num_candidates \(N\) must be an integer >= 1"),
        (lambda: Strategy(num_candidates=2.0), ValueError, "Strategy.num_candidates"),
        (lambda: Strategy(first_candidate=-1), ValueError, "Strategy.first_candidate must be an integer >= 0"),
        (lambda: Strategy("best_of_n", first_candidate=2), ValueError, "Strategy.first_candidate applies to"),
        (lambda: Strategy(scaling={"p": 0.5}), TypeError, "Strategy.scaling must be a ScalingARConfig"),
        (lambda: Strategy("plain", importance=ImportanceSampling(tau=1.0)), ValueError,
         "Strategy.importance applies to importance_sampling"),
        (lambda: ImportanceSampling(tau=0.0), ValueError, "ImportanceSampling.tau must be > 0"),
        (lambda: ImportanceSampling(checkpoints=(0.5, 1.0)), ValueError, "ImportanceSampling.checkpoints"),
        (lambda: ImportanceSampling(fill_code=-1), ValueError, "ImportanceSampling.fill_code"),
        (lambda: Pool(0), ValueError, "pool rows"),
        (lambda: Pool(8, shrink="pow3"), ValueError, "Pool.shrink must be True, False or one of"),
        (lambda: Schedule(mesh="2x4"), TypeError, "mesh must be a jax.sharding.Mesh"),
        (lambda: Schedule(compaction="pow3"), ValueError, "unknown compaction buckets 'pow3'"),
        (lambda: Schedule(compaction=False, pool=Pool(8)), ValueError, "Schedule.compaction applies to the batched"),
        (lambda: Schedule(pool=8), TypeError, "Schedule.pool must be a Pool"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message):
            make()
    assert ImportanceSampling(checkpoints=[0.5]).checkpoints == (0.5,)  # hashable
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("prompts", "cands", "model"))
    with pytest.raises(ValueError, match="pool keeps whole prompts on one device"):
        Schedule(mesh=mesh, pool=Pool(8))
    # checks that need the model or both groups, before anything compiles
    params, key = _params(), jax.random.key(0)
    with pytest.raises(ValueError, match="the prompt pool runs plain.*not importance_sampling"):
        run_strategy(MODEL, params, np.array([0]), strategy=Strategy("importance_sampling", 2), key=key,
                     prompts=["a"], reward_fn=lambda im, p: np.zeros(len(im)), decode_fn=lambda t: t,
                     schedule=Schedule(pool=Pool(8)))
    with pytest.raises(ValueError, match=r"ImportanceSampling.fill_code must be in \[0, 12\)"):
        run_strategy(MODEL, params, np.array([0]), key=key, prompts=["a"], reward_fn=lambda im, p: np.zeros(len(im)),
                     decode_fn=lambda t: t,
                     strategy=Strategy("importance_sampling", 2, importance=ImportanceSampling(fill_code=12)))
    with pytest.raises(ValueError, match="prompt_ids must have shape"):
        run_strategy(MODEL, params, np.array([0, 1]), strategy=Strategy("plain", 2), key=key, prompt_ids=[0])
