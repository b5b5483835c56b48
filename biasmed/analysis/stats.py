"""Statistics for paired bias comparisons (numpy + scipy).

Every biased condition answers the SAME questions as its unbiased baseline, so comparisons are
paired: per question, (baseline right?, condition right?) falls in one of four cells. Both the
exact McNemar test and the bootstrap work on those cell counts. Resampling n questions with
replacement is a multinomial draw over the cells, so 10,000 bootstrap resamples cost one
`Generator.multinomial` call instead of 10,000 x n index draws: the paired bootstrap, exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A generator seeded by (seed, keys): the same comparison gets the same draws in any order."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest[:8], "big")]))


def wilson_ci(k: float | np.ndarray, n: float | np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n (vectorised; NaN where n == 0)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b vs c discordant pairs at 1/2.

    Bin(n, 1/2) is symmetric, so the two-sided p is min(1, 2 P(X <= min(b, c))), the value
    `scipy.stats.binomtest(b, b + c).pvalue` gives; scipy.special is ~7x quicker to import.
    """
    from scipy.special import bdtr

    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * bdtr(min(int(b), int(c)), n, 0.5)))


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """The unpaired pooled two-proportion z-test the paper used: (z, two-sided p)."""
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan")
    p1, p2 = k1 / n1, k2 / n2
    pool = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (p1 - p2) / se
    return float(z), float(math.erfc(abs(z) / math.sqrt(2.0)))


@dataclass(frozen=True)
class PairedDiff:
    """mean(x) - mean(y) over paired binary outcomes, with its bootstrap CI and McNemar p."""

    n: int
    mean_x: float
    mean_y: float
    diff: float
    lo: float
    hi: float
    n10: int  # x true, y false
    n01: int  # x false, y true
    p: float


def cells(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Counts of (x, y) in the order 00, 01, 10, 11."""
    x = np.asarray(x, dtype=bool)
    y = np.asarray(y, dtype=bool)
    return np.bincount(x.astype(np.int64) * 2 + y.astype(np.int64), minlength=4)


def paired_diff(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator, alpha: float = 0.05) -> PairedDiff:
    """Paired difference of proportions mean(x) - mean(y), percentile bootstrap CI, exact McNemar."""
    c = cells(x, y)
    n = int(c.sum())
    if n == 0:
        nan = float("nan")
        return PairedDiff(0, nan, nan, nan, nan, nan, 0, 0, nan)
    diff = (c[2] - c[1]) / n
    lo = hi = float(diff)
    if n_boot > 0:
        draws = rng.multinomial(n, c / n, size=n_boot)
        boot = (draws[:, 2] - draws[:, 1]) / n
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return PairedDiff(
        n,
        float((c[2] + c[3]) / n),
        float((c[1] + c[3]) / n),
        float(diff),
        float(lo),
        float(hi),
        int(c[2]),
        int(c[1]),
        mcnemar_exact(int(c[2]), int(c[1])),
    )


@dataclass(frozen=True)
class Recovery:
    """The share of a bias's drop that a mitigation wins back, paired over the same questions."""

    n: int
    value: float
    lo: float
    hi: float


def recovery(
    unbiased: np.ndarray,
    biased: np.ndarray,
    mitigated: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
    min_valid: float = 0.95,
) -> Recovery:
    """(acc(mitigated) - acc(biased)) / (acc(unbiased) - acc(biased)).

    1 means the mitigation restores unbiased accuracy, 0 that it does nothing, below 0 that it
    hurts. Undefined (NaN) when the drop is not positive; the CI is NaN when fewer than
    `min_valid` of the resamples have a positive drop (the drop itself is not clearly there).
    """
    u = np.asarray(unbiased, dtype=np.int64)
    b = np.asarray(biased, dtype=np.int64)
    m = np.asarray(mitigated, dtype=np.int64)
    n = len(u)
    nan = float("nan")
    if n == 0:
        return Recovery(0, nan, nan, nan)
    counts = np.bincount(u * 4 + b * 2 + m, minlength=8)
    # per cell: (u, b, m) bits of cell index k are (k>>2, k>>1 & 1, k & 1)
    ku = (np.arange(8) >> 2) & 1
    kb = (np.arange(8) >> 1) & 1
    km = np.arange(8) & 1

    def ratio(cnt: np.ndarray) -> np.ndarray:
        drop = cnt @ (ku - kb)
        won = cnt @ (km - kb)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(drop > 0, won / np.where(drop > 0, drop, 1), np.nan)

    value = float(ratio(counts[None, :])[0])
    lo = hi = nan
    if n_boot > 0 and not np.isnan(value):
        boot = ratio(rng.multinomial(n, counts / n, size=n_boot))
        ok = boot[~np.isnan(boot)]
        if len(ok) >= min_valid * n_boot:
            lo, hi = (float(v) for v in np.quantile(ok, [alpha / 2, 1 - alpha / 2]))
    return Recovery(n, value, lo, hi)


@dataclass(frozen=True)
class MeanCI:
    """The mean of per-question values, with a percentile bootstrap CI over questions."""

    n: int
    mean: float
    lo: float
    hi: float


def bootstrap_mean(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, alpha: float = 0.05, chunk: int = 2000
) -> MeanCI:
    """Mean of per-question values (NaN = question absent) and its question-bootstrap CI.

    Each value may itself be a summary of one question over several conditions (a mean over
    target draws, over biases, a paired difference): resampling questions with replacement then
    keeps those together, a cluster bootstrap. Drawing n values with replacement is a multinomial
    draw over the distinct values, so the cost grows with the number of distinct values, not n.
    The CI is NaN without resamples.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    n = len(v)
    nan = float("nan")
    if n == 0:
        return MeanCI(0, nan, nan, nan)
    lo = hi = nan
    if n_boot > 0:
        uniq, counts = np.unique(v, return_counts=True)
        p = counts / n
        boot = np.concatenate(
            [rng.multinomial(n, p, size=min(chunk, n_boot - s)) @ uniq / n for s in range(0, n_boot, chunk)]
        )
        lo, hi = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    # rounded: a mean of k/7-type values should not print as -0.000
    return MeanCI(n, float(np.round(v.mean(), 12)), lo, hi)


@dataclass(frozen=True)
class Spread:
    """How a figure varies across re-draws of the planted targets."""

    k: int
    mean: float
    sd: float  # sample SD (ddof 1); NaN with fewer than two draws
    min: float
    max: float


def spread(values: Sequence[float] | np.ndarray) -> Spread:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    nan = float("nan")
    if len(v) == 0:
        return Spread(0, nan, nan, nan, nan)
    sd = float(v.std(ddof=1)) if len(v) > 1 else nan
    return Spread(len(v), float(v.mean()), sd, float(v.min()), float(v.max()))
