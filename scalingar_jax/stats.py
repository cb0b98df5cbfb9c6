"""Statistics of the experiments, written once: bootstrap resamples (plain, and stratified over
groups of records with the same draws for every strategy, i.e. paired), percentile intervals,
Student-t intervals, paired differences, AUROC, Spearman correlation and the within-prompt AUROC
of a score over the N candidates of each prompt.

Pure functions over NumPy arrays. Every random draw comes from an explicit `np.random.Generator`
or integer seed (`rng` arguments); nothing reads NumPy's global random state.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

RngLike = np.random.Generator | int


def _rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_resamples(num_resamples: int) -> int:
    if int(num_resamples) != num_resamples or num_resamples < 1:
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}")
    return int(num_resamples)


# ------------------------------------------------------------------------------------------ intervals
def percentile_ci(samples, level: float = 0.95) -> list[float]:
    """Equal-tailed percentile interval of bootstrap samples: samples (B,) -> [lo, hi] (the
    100 (1 - level) / 2 and 100 (1 + level) / 2 percentiles, linear interpolation)."""
    x = np.asarray(samples, float).ravel()
    if x.size == 0:
        raise ValueError("percentile_ci: no samples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"percentile_ci: level must be in (0, 1), got {level}")
    tail = round(50.0 * (1.0 - level), 10)  # 2.5 exactly for level 0.95
    return [float(np.percentile(x, tail)), float(np.percentile(x, 100.0 - tail))]


def finite_ci(samples, level: float = 0.95) -> list[float] | None:
    """`percentile_ci` of the finite entries of samples (B,) (a ratio's resamples are NaN/inf where
    the denominator vanished); None when no entry is finite."""
    x = np.asarray(samples, float).ravel()
    x = x[np.isfinite(x)]
    return percentile_ci(x, level) if x.size else None


def t_interval(values, level: float = 0.95) -> list[float] | None:
    """Student-t interval for the mean of values (n,): mean -+ t_{n-1}((1 + level) / 2) * s / sqrt(n)
    with s the sample standard deviation (ddof 1) -> [lo, hi]; None when n < 2."""
    v = np.asarray(values, float)
    if v.ndim != 1:
        raise ValueError(f"t_interval: values must be 1-D, got shape {v.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_interval: level must be in (0, 1), got {level}")
    if len(v) < 2:
        return None
    h = float(sps.t.ppf(0.5 + level / 2, len(v) - 1)) * v.std(ddof=1) / np.sqrt(len(v))
    return [float(v.mean() - h), float(v.mean() + h)]


def relative_to(diff, base) -> np.ndarray:
    """diff / base elementwise, NaN where base <= 0: diff, base (...) -> (...) float."""
    diff, base = np.asarray(diff, float), np.asarray(base, float)
    return diff / np.where(base > 0, base, np.nan)


# ------------------------------------------------------------------------------------------ bootstrap
def resample_indices(n: int, num_resamples: int, rng: RngLike) -> np.ndarray:
    """Bootstrap resamples of n items: (B, n) int indices drawn uniformly with replacement."""
    if int(n) != n or n < 1:
        raise ValueError(f"resample_indices: n must be an integer >= 1, got {n!r}")
    return _rng(rng).integers(0, int(n), (_check_resamples(num_resamples), int(n)))


def bootstrap_means(x, num_resamples: int, rng: RngLike) -> np.ndarray:
    """Means of bootstrap resamples of x (n,) -> (B,)."""
    x = np.asarray(x, float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_means: x must be a non-empty 1-D array, got shape {x.shape}")
    return x[resample_indices(len(x), num_resamples, rng)].mean(1)


@dataclasses.dataclass(frozen=True, eq=False)
class StratifiedBootstrap:
    """Bootstrap over records stratified by group: each resample draws every group's records with
    replacement from that group alone (group sizes fixed). The same draws serve every array passed
    in, so two strategies scored on the same records are compared on the same resamples (paired).
    The overall score is the unweighted mean over groups of the group means (GenEval's overall).

    names: the groups in order of first appearance; index[g]: (n_g,) record indices of group g;
    draws[g]: (B, n_g) record indices, resample b of group g in row b."""

    names: tuple[str, ...]
    index: Mapping[str, np.ndarray]
    draws: Mapping[str, np.ndarray]
    n: int

    @classmethod
    def from_groups(cls, groups: Sequence[str], num_resamples: int = 2000,
                    rng: RngLike = 12345) -> "StratifiedBootstrap":
        """groups (n,): each record's group. Draws B resamples per group, groups in order of first
        appearance, each from `rng` in turn."""
        groups = list(groups)
        if not groups:
            raise ValueError("StratifiedBootstrap: no records")
        B, gen = _check_resamples(num_resamples), _rng(rng)
        names = tuple(dict.fromkeys(groups))
        index = {g: np.array([i for i, x in enumerate(groups) if x == g]) for g in names}
        draws = {g: ix[gen.integers(0, len(ix), (B, len(ix)))] for g, ix in index.items()}
        return cls(names, index, draws, len(groups))

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x, float)
        if x.shape != (self.n,):
            raise ValueError(f"StratifiedBootstrap: expected per-record values of shape ({self.n},), got {x.shape}")
        return x

    def group(self, x, g: str) -> np.ndarray:
        """x (n,) per-record values -> (B,) the mean of group g in each resample."""
        return self._check(x)[self.draws[g]].mean(1)

    def overall(self, x) -> np.ndarray:
        """x (n,) -> (B,) the overall score (mean over groups of the group means) in each resample."""
        return np.mean([self.group(x, g) for g in self.names], axis=0)

    def point(self, x) -> float:
        """x (n,) -> the overall score on the records themselves."""
        x = self._check(x)
        return float(np.mean([x[self.index[g]].mean() for g in self.names]))

    def group_point(self, x, g: str) -> float:
        """x (n,) -> the mean of group g on the records themselves."""
        return float(self._check(x)[self.index[g]].mean())


def paired_difference(xa, xb, bs: StratifiedBootstrap, level: float = 0.95) -> dict:
    """Paired bootstrap of the overall score of a minus that of b: xa, xb (n,) per-record values on
    the same records, resampled with the same draws. Returns {"diff": point a - b, "diff_ci": [lo, hi],
    "within_noise": the interval contains 0, "relative": (a - b) / b (None if b <= 0),
    "relative_ci": interval of the resampled relative change (None if b vanished in every resample)}."""
    da, db = bs.overall(xa), bs.overall(xb)
    pa, pb = bs.point(xa), bs.point(xb)
    lo, hi = percentile_ci(da - db, level)
    return {"diff": pa - pb, "diff_ci": [lo, hi], "within_noise": bool(lo <= 0 <= hi),
            "relative": (pa - pb) / pb if pb > 0 else None,
            "relative_ci": finite_ci(relative_to(da - db, db), level)}


# ------------------------------------------------------------------------------------------ ranks
def auroc(scores, labels) -> float:
    """Area under the ROC curve of scores for binary labels, both of one shape (any; flattened):
    P(score of a positive > score of a negative) + 0.5 P(tie), from mid-ranks (Mann-Whitney U).
    NaN when one class is absent."""
    s, y = np.asarray(scores, float), np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"auroc: scores {s.shape} and labels {y.shape} differ in shape")
    if np.isnan(s).any():
        raise ValueError("auroc: scores contain NaN")
    s, y = s.ravel(), y.ravel().astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = sps.rankdata(s)  # ties share their mean rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman_rows(x, y) -> np.ndarray:
    """Spearman rank correlation over the last axis: x, y (..., N) -> (...,). Ties take their mean
    rank; NaN where x or y is constant along the row."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim == 0:
        raise ValueError(f"spearman_rows: x {x.shape} and y {y.shape} must share one shape with >= 1 axis")
    rx, ry = sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def within_prompt_pairs(scores, correct) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of candidates of the same prompt: scores, correct (..., N) -> (wins, pairs) (...,) float
    and int. Over the ordered pairs (i correct, j wrong) of one prompt, `pairs` counts them and `wins`
    counts score_i > score_j, plus one half for a tie; wins / pairs is the prompt's AUROC."""
    s, c = np.asarray(scores, float), np.asarray(correct).astype(bool)
    if s.shape != c.shape or s.ndim == 0:
        raise ValueError(f"within_prompt_pairs: scores {s.shape} and correct {c.shape} must share one shape")
    pair = c[..., :, None] & ~c[..., None, :]
    gt = (s[..., :, None] > s[..., None, :]) + 0.5 * (s[..., :, None] == s[..., None, :])
    return (gt * pair).sum((-1, -2)), pair.sum((-1, -2))


def pooled_ratio(num, den) -> float:
    """sum(num) / sum(den) over all entries; 0.0 when the denominator sums to 0 (no unit counted)."""
    return float(np.sum(num) / max(np.sum(den), 1))


def within_prompt_auroc(scores, correct) -> float:
    """Within-prompt AUROC pooled over prompts: scores, correct (..., N) -> wins / pairs summed over
    every prompt (`within_prompt_pairs`); 0.0 when no prompt has both a correct and a wrong candidate."""
    return pooled_ratio(*within_prompt_pairs(scores, correct))


def pooled_ratio_ci(num, den, draws: np.ndarray, level: float = 0.95) -> tuple[float, list[float]]:
    """A ratio of sums over records with a bootstrap interval: num, den (..., n) with the records on
    the last axis (leading axes, e.g. seeds, are summed first so a record's units stay together);
    draws (B, n) record indices (`resample_indices`). Returns (pooled_ratio, [lo, hi])."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if num.shape != den.shape or num.ndim == 0:
        raise ValueError(f"pooled_ratio_ci: num {num.shape} and den {den.shape} must share one shape")
    num, den = num.reshape(-1, num.shape[-1]).sum(0), den.reshape(-1, den.shape[-1]).sum(0)
    boot = num[draws].sum(1) / np.maximum(den[draws].sum(1), 1)
    return pooled_ratio(num, den), percentile_ci(boot, level)
