"""scalingar_jax.stats against hand-computed values: a wrong sign, rank or stratum fails here."""
import numpy as np
import pytest
from scipy import stats as sps

from scalingar_jax import stats


# ------------------------------------------------------------------------------------------ AUROC
def test_auroc_hand_case_with_ties():
    # positives 3, 2, 2; negatives 2, 1. Pairs (pos, neg): (3,2) 1, (3,1) 1, (2,2) 1/2, (2,1) 1, (2,2) 1/2, (2,1) 1
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    labels = np.array([1, 1, 1, 0, 0])
    assert stats.auroc(scores, labels) == pytest.approx(5 / 6)
    # the other class's view is the complement; a shuffle changes nothing
    assert stats.auroc(scores, 1 - labels) == pytest.approx(1 / 6)
    perm = np.array([4, 2, 0, 3, 1])
    assert stats.auroc(scores[perm], labels[perm]) == pytest.approx(5 / 6)


def test_auroc_extremes_and_shapes():
    assert stats.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0  # higher score = positive
    assert stats.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert stats.auroc([5.0] * 4, [0, 1, 0, 1]) == 0.5  # all tied: chance, whatever the order
    assert stats.auroc(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([[1, 0], [1, 0]])) == 1.0  # any shape
    assert np.isnan(stats.auroc([0.3, 0.4], [1, 1]))  # one class absent
    with pytest.raises(ValueError, match="shape"):
        stats.auroc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        stats.auroc([0.1, np.nan], [1, 0])


def test_auroc_equals_mann_whitney():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    u = sps.mannwhitneyu(s[y], s[~y]).statistic
    assert stats.auroc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()))


def test_world_train_uses_the_one_auroc():
    from scalingar_jax.world import train

    assert train.auroc is stats.auroc


# ------------------------------------------------------------------------------------------ Spearman
def test_spearman_hand_cases():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    y = np.array([[10.0, 20.0, 30.0, 40.0]] * 4)
    rho = stats.spearman_rows(x, y)
    assert rho.shape == (4,)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    # ties take their mean rank: ranks (1.5, 1.5, 3.5, 3.5) against (1, 2, 3, 4) -> 4 / sqrt(4 * 5)
    assert rho[2] == pytest.approx(4 / np.sqrt(20)) and np.isnan(rho[3])  # a constant row has no correlation
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) with d = (-1, 1, -1, 1, 0): 1 - 24 / 120
    assert stats.spearman_rows([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)


def test_spearman_rows_matches_scipy_per_row():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, (2, 3, 7)).astype(float), rng.normal(size=(2, 3, 7))
    rho = stats.spearman_rows(x, y)
    assert rho.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert rho[i, j] == pytest.approx(sps.spearmanr(x[i, j], y[i, j]).statistic)
    with pytest.raises(ValueError, match="shape"):
        stats.spearman_rows(x, y[..., :3])


# ------------------------------------------------------------------------------------------ within-prompt
def test_within_prompt_pairs_hand_case():
    # candidates 0 and 2 correct, 1 and 3 wrong: pairs (0,1) (0,3) (2,1) (2,3); scores rank 0 > 1, 3 > 0,
    # 2 > 1, 2 == 3 (a tie counts one half)
    wins, pairs = stats.within_prompt_pairs(np.array([[0.5, 0.1, 0.9, 0.9]]), np.array([[1, 0, 1, 0]]))
    assert pairs.tolist() == [4] and wins.tolist() == [2.5]
    wins, pairs = stats.within_prompt_pairs(np.array([[0.3, 0.2]]), np.array([[1, 1]]))  # no wrong one: no pair
    assert pairs.tolist() == [0] and wins.tolist() == [0]


def test_within_prompt_auroc_pools_pairs_not_prompts():
    scores = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.2, 0.3, 0.0]])
    correct = np.array([[1, 0, 1, 1], [1, 1, 0, 0]])
    # A: pairs (0,1) won (0.9 > 0.1), (2,1) and (3,1) lost (0.0 < 0.1): 1 of 3.
    # B: (0,2) lost, (0,3) won, (1,2) lost, (1,3) won: 2 of 4. Pooled 3 / 7 (the mean over prompts is 5 / 12)
    assert stats.within_prompt_pairs(scores, correct)[1].tolist() == [3, 4]
    assert stats.within_prompt_auroc(scores, correct) == pytest.approx(3 / 7)
    assert stats.within_prompt_auroc(scores[:, :1], correct[:, :1]) == 0.0  # no pair at all


def test_pooled_ratio_ci_keeps_a_records_seeds_together():
    num = np.array([[1.0, 0.0], [1.0, 1.0]])  # (seeds, records)
    den = np.array([[1.0, 1.0], [1.0, 1.0]])
    draws = np.array([[0, 0], [1, 1], [0, 1]])  # record 0 twice (2/2), record 1 twice (1/2), both (3/4)
    point, ci = stats.pooled_ratio_ci(num, den, draws)
    assert point == pytest.approx(3 / 4)
    assert ci[0] == pytest.approx(np.percentile([1.0, 0.5, 0.75], 2.5))
    assert ci[1] == pytest.approx(np.percentile([1.0, 0.5, 0.75], 97.5))


# ------------------------------------------------------------------------------------------ intervals
def test_percentile_ci_and_finite_ci():
    assert stats.percentile_ci(np.arange(101.0)) == [2.5, 97.5]
    assert stats.percentile_ci(np.arange(101.0), level=0.5) == [25.0, 75.0]
    assert stats.finite_ci([np.nan, np.inf, *np.arange(101.0)]) == [2.5, 97.5]
    assert stats.finite_ci([np.nan, np.inf]) is None
    with pytest.raises(ValueError, match="no samples"):
        stats.percentile_ci([])
    with pytest.raises(ValueError, match="level"):
        stats.percentile_ci([1.0], level=95)


def test_t_interval_hand_case():
    # mean 2, s = 1, n = 3: half width t_{2, 0.975} / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 2.4841, abs=1e-4) and hi == pytest.approx(2 + 2.4841, abs=1e-4)
    # many values: t approaches the normal 1.96 (here 30 values, t_29 = 2.045)
    v = np.arange(30.0)
    lo, hi = stats.t_interval(v)
    assert (hi - lo) / 2 == pytest.approx(2.0452 * v.std(ddof=1) / np.sqrt(30), rel=1e-4)
    assert stats.t_interval([1.0]) is None


def test_relative_to():
    r = stats.relative_to([1.0, 2.0, 3.0], [2.0, 0.0, -1.0])
    assert r[0] == 0.5 and np.isnan(r[1]) and np.isnan(r[2])


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_covers_a_known_mean_with_the_right_width():
    x = np.random.default_rng(3).normal(3.0, 1.0, 400)
    lo, hi = stats.percentile_ci(stats.bootstrap_means(x, 2000, np.random.default_rng(4)))
    assert lo < 3.0 < hi and lo < x.mean() < hi
    # standard error 1 / sqrt(400) = 0.05: the 95% interval is about 2 * 1.96 * 0.05 = 0.196 wide
    assert 0.16 < hi - lo < 0.23


def test_bootstrap_is_seeded_explicitly():
    x = np.arange(10.0)
    a = stats.bootstrap_means(x, 50, 7)
    np.testing.assert_array_equal(a, stats.bootstrap_means(x, 50, np.random.default_rng(7)))
    assert not np.array_equal(a, stats.bootstrap_means(x, 50, 8))
    np.testing.assert_array_equal(stats.resample_indices(10, 50, 7), np.random.default_rng(7).integers(0, 10, (50, 10)))
    with pytest.raises(TypeError, match="rng"):
        stats.bootstrap_means(x, 50, True)
    with pytest.raises(ValueError, match="num_resamples"):
        stats.bootstrap_means(x, 0, 1)


def test_stratified_bootstrap_respects_strata():
    # group a: 2 records all 0; group b: 6 records all 1. Drawing within each group, every resample's
    # overall (mean of the group means) is exactly 1/2; a pooled resample would wander around 6/8.
    groups = ["a", "b", "b", "a", "b", "b", "b", "b"]
    x = np.array([0.0, 1, 1, 0, 1, 1, 1, 1])
    bs = stats.StratifiedBootstrap.from_groups(groups, 500, 0)
    assert bs.names == ("a", "b")
    np.testing.assert_array_equal(bs.index["a"], [0, 3])
    assert bs.draws["a"].shape == (500, 2) and bs.draws["b"].shape == (500, 6)
    assert set(bs.draws["a"].ravel()) == {0, 3} and set(bs.draws["b"].ravel()) == {1, 2, 4, 5, 6, 7}
    np.testing.assert_array_equal(bs.overall(x), np.full(500, 0.5))
    assert bs.point(x) == 0.5 and bs.group_point(x, "b") == 1.0
    # within a group the resample does vary
    y = np.array([0.0, 1, 0, 1, 1, 0, 1, 0])
    assert bs.group(y, "b").std() > 0
    with pytest.raises(ValueError, match="shape"):
        bs.overall(x[:5])
    with pytest.raises(ValueError, match="no records"):
        stats.StratifiedBootstrap.from_groups([], 10, 0)


def test_stratified_draws_come_from_the_given_seed_in_group_order():
    groups = ["t1", "t2", "t1", "t2", "t2"]
    bs = stats.StratifiedBootstrap.from_groups(groups, 4, 12345)
    rng = np.random.default_rng(12345)
    np.testing.assert_array_equal(bs.draws["t1"], np.array([0, 2])[rng.integers(0, 2, (4, 2))])
    np.testing.assert_array_equal(bs.draws["t2"], np.array([1, 3, 4])[rng.integers(0, 3, (4, 3))])


def test_paired_difference_sign_and_pairing():
    groups = ["a"] * 10 + ["b"] * 10
    rng = np.random.default_rng(5)
    xb = rng.random(20)
    bs = stats.StratifiedBootstrap.from_groups(groups, 300, 1)
    # a = b + 0.1 on every record: paired, every resample's difference is exactly +0.1
    d = stats.paired_difference(xb + 0.1, xb, bs)
    assert d["diff"] == pytest.approx(0.1) and d["diff_ci"] == pytest.approx([0.1, 0.1])
    assert d["within_noise"] is False
    assert d["relative"] == pytest.approx(0.1 / bs.point(xb))
    lo, hi = d["relative_ci"]
    assert lo <= d["relative"] <= hi
    # the other way round: negative, and the same magnitude
    d2 = stats.paired_difference(xb, xb + 0.1, bs)
    assert d2["diff"] == pytest.approx(-0.1) and d2["diff_ci"] == pytest.approx([-0.1, -0.1])
    # equal strategies: within noise; b = 0 everywhere: no relative change
    assert stats.paired_difference(xb, xb, bs)["within_noise"] is True
    z = stats.paired_difference(xb, np.zeros(20), bs)
    assert z["relative"] is None and z["relative_ci"] is None
