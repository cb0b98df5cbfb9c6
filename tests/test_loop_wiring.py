"""End-to-end wiring of the strategies, against values computed independently of the loop.

A tiny t2i GPT whose output head and caption embedder are scaled by 30 and its block weights by 3
(normalized entropy ~0.6, margin ~0.25, and lc - lu of std ~1 at every position, so the
condition and the guidance scale change the draws: the signals are not noise). The drawn tokens are teacher-forced
through the *uncached* forward (`gpt.forward`, cond rows and null-condition rows), and the float64
reference of the spec (tests/scaling_ref.py) is run over those logits: the loop must have profiled
the conditional logits of token k, pruned exactly as the reference, and drawn token k+1 from
softmax(lu + s_{k+1} (lc - lu)) at the scale the reference schedules after step k.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scaling_ref import Ref, token_confidence

from scalingar_jax import gpt
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.sampling import candidate_keys
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling import strategies as S

CFG = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=3, caption_dim=4,
                grid_size=5, multiple_of=16)
T, P, N = CFG.block_size, 2, 4  # T = 25: W0 = ceil(3.125) = 4
S_BASE = 3.0
SAMPLING = SamplingConfig(cfg_scale=S_BASE)
# Strong scheduler gains (the scale spans ~1..12 and moves by ~1 between steps, enough to change
# draws: lc - lu is small next to lc on a random model) and a gate that prunes within 25 steps.
WIRE = ScalingARConfig(p=0.4, probation_steps=3, rebound_threshold=0.3, lam_theta=0.5, alpha=8.0, beta=20.0, gamma=4.0,
                       s_max=12.0)
KEY = jax.random.key(11)
PROMPT_IDS = np.array([5, 2])


@pytest.fixture(scope="module")
def params():
    p = gpt.init_params(CFG, jax.random.key(0))
    factor = {"output": 30.0, "cls_embedding": 30.0, "layers": 3.0}
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * next((factor[k.key] for k in path if getattr(k, "key", None) in factor), 1.0), p)


def _cond():
    return jax.random.normal(jax.random.key(1), (P, CFG.cls_token_num, CFG.caption_dim))


def _teacher_forced(params, tokens):
    """tokens (P, N, T), -1 where not generated -> lc, lu (P, N, T, V) float32 from the uncached forward."""
    flat = np.maximum(np.asarray(tokens), 0).reshape(P * N, T)  # after a death nothing is read
    cond = jnp.repeat(_cond(), N, axis=0)
    out = [np.asarray(gpt.forward(params, CFG, cond, jnp.asarray(flat), drop=jnp.full((P * N,), d)))
           for d in (False, True)]
    return [x.reshape(P, N, T, -1) for x in out]


@jax.jit
def _draw_jit(keys, lc, lu, scale, k):
    g = lu + (lc - lu) * scale[..., None]
    return jax.vmap(jax.vmap(lambda kk, l: jax.random.categorical(jax.random.fold_in(kk, k), l)))(keys, g)


def _draw(lc, lu, scale, k):
    """Token k of every candidate drawn from lu + s (lc - lu) (temperature 1, no filters)."""
    keys = candidate_keys(KEY, jnp.asarray(PROMPT_IDS), jnp.arange(N, dtype=jnp.int32))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return np.asarray(_draw_jit(keys, f32(lc), f32(lu), f32(scale), jnp.int32(k)))


@pytest.mark.exactness
def test_loop_profiles_conditional_logits_prunes_and_samples_at_the_scheduled_scale(params):
    res = S.run_token_strategy(params, CFG, _cond(), key=KEY, strategy="scalingar", num_candidates=N,
                               sampling=SAMPLING, scaling=WIRE, prompt_ids=PROMPT_IDS)
    toks = np.asarray(res.all_tokens)
    lc, lu = _teacher_forced(params, toks)
    ref = Ref(WIRE, P, N, CFG.grid_size, S_BASE)
    scale = np.full((P, N), S_BASE)  # the scale token k is drawn at
    history = [scale, scale]  # the scales of the two previous tokens
    moved = {"fixed": 0, "lagged": 0}
    for k in range(T):
        a = ref.alive.copy()  # alive at the start of step k
        drawn = _draw(lc[:, :, k], lu[:, :, k], scale, k)
        np.testing.assert_array_equal(toks[:, :, k][a], drawn[a], err_msg=f"token {k} not drawn at the scheduled scale")
        assert np.all(toks[:, :, k][~a] == -1), k
        moved["fixed"] += int(np.sum((_draw(lc[:, :, k], lu[:, :, k], np.full((P, N), S_BASE), k) != drawn)[a]))
        moved["lagged"] += int(np.sum((_draw(lc[:, :, k], lu[:, :, k], history[0], k) != drawn)[a]))
        np.testing.assert_allclose(res.traj["scale"][k], np.where(a, scale, 0), rtol=1e-4, atol=1e-4, err_msg=str(k))
        history = [history[1], scale]
        scale = ref.step(lc[:, :, k], lu[:, :, k], k)
        for name in ("C", "I", "D", "R"):
            np.testing.assert_allclose(res.traj[name][k], np.where(a, getattr(ref, name), 0), rtol=2e-4, atol=1e-4,
                                       err_msg=f"{name} at step {k}")
        np.testing.assert_array_equal(res.traj["alive"][k], ref.alive, err_msg=f"alive after step {k}")
        np.testing.assert_allclose(res.traj["theta"][k], ref.theta, rtol=2e-4, atol=1e-4, err_msg=f"theta {k}")
    np.testing.assert_array_equal(res.terminated_at, ref.terminated_at)
    np.testing.assert_array_equal(res.tokens_used, ref.tokens_used.sum(1))
    np.testing.assert_array_equal(res.winner, np.argmax(np.where(ref.alive, ref.C, -np.inf), 1))
    # the check has teeth: candidates died mid-run, and drawing at the fixed scale or at the scale
    # scheduled two steps earlier would have given other tokens
    assert np.sum(ref.terminated_at >= 0) >= 2 and np.all(ref.alive.any(1)), ref.terminated_at
    assert moved["fixed"] >= 3 and moved["lagged"] >= 3, moved


def test_signals_of_the_sharpened_model_are_not_noise(params):
    res = S.run_token_strategy(params, CFG, _cond(), key=KEY, strategy="plain", num_candidates=N, sampling=SAMPLING,
                               prompt_ids=PROMPT_IDS)
    lc, lu = _teacher_forced(params, np.asarray(res.all_tokens))
    Hn, m, _ = token_confidence(lc)
    pc = np.exp(lc - lc.max(-1, keepdims=True))
    pc /= pc.sum(-1, keepdims=True)
    pu = np.exp(lu - lu.max(-1, keepdims=True))
    pu /= pu.sum(-1, keepdims=True)
    kl = (pc * (np.log(pc) - np.log(pu))).sum(-1)
    assert Hn.mean() < 0.8 and m.mean() > 0.1 and kl.mean() > 0.02, (Hn.mean(), m.mean(), kl.mean())


def test_confidence_only_picks_the_highest_hand_computed_mean_confidence(params):
    res = S.run_token_strategy(params, CFG, _cond(), key=KEY, strategy="confidence_only", num_candidates=N,
                               sampling=SAMPLING, prompt_ids=PROMPT_IDS)
    lc, _ = _teacher_forced(params, np.asarray(res.all_tokens))
    score = token_confidence(lc)[2].mean(-1)  # mean over the T tokens of 1 - (Hn/2 + (1 - m)/2)
    np.testing.assert_allclose(res.score, score, rtol=1e-4)
    np.testing.assert_array_equal(res.winner, score.argmax(1))
    assert np.any(score.argmax(1) != score.argmin(1))
    np.testing.assert_array_equal(res.tokens, np.asarray(res.all_tokens)[np.arange(P), score.argmax(1)])


_W = np.random.default_rng(0).uniform(0.5, 1.5, T)


def _decode(tokens):
    """tokens (B, T) -> a 1 x T 'image' whose red channel is 8 * token."""
    t = np.asarray(tokens).astype(np.uint8) * 8
    return np.repeat(t[:, None, :, None], 3, axis=3)


def _reward(images, prompts):
    return (images[:, 0, :, 0].astype(np.float64) * _W).sum(1)


def test_importance_sampling_resamples_toward_the_highest_reward(params):
    """tau -> 0: at the checkpoint (c = 10) every slot becomes a copy of the prefix with the highest
    reward of the partial grid (positions >= c filled with code 0); keys stay with the slot."""
    c = 10
    res = S.run_importance_sampling(params, CFG, _cond(), prompts=["a", "b"], key=KEY, num_candidates=N,
                                    reward_fn=_reward, decode_fn=_decode, sampling=SAMPLING, checkpoints=(c / T,),
                                    tau=1e-4, fill_code=0, prompt_ids=PROMPT_IDS)
    plain = S.run_token_strategy(params, CFG, _cond(), key=KEY, strategy="plain", num_candidates=N,
                                 sampling=SAMPLING, prompt_ids=PROMPT_IDS)
    before = np.asarray(plain.all_tokens)  # the same keys: identical up to the checkpoint
    partial = np.where(np.arange(T) < c, before, 0)
    r = _reward(_decode(partial.reshape(P * N, T)), None).reshape(P, N)
    best, worst = r.argmax(1), r.argmin(1)
    assert np.all(best != worst)
    out = np.asarray(res.all_tokens)
    for p in range(P):
        for n in range(N):
            np.testing.assert_array_equal(out[p, n, :c], before[p, best[p], :c], err_msg=f"prompt {p} slot {n}")
        assert len({tuple(out[p, n, c:]) for n in range(N)}) > 1  # copies continue with their own keys
    final = _reward(_decode(out.reshape(P * N, T)), None).reshape(P, N)
    np.testing.assert_array_equal(res.winner, final.argmax(1))
    np.testing.assert_array_equal(res.tokens_used, [N * T] * P)
