"""biasmed.analysis.stats against hand-computed cases and scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from biasmed.analysis import stats


def test_wilson_hand_computed() -> None:
    # k=5, n=10, z=1.96: centre 0.5, half-width 1.96*sqrt(0.025+0.0096)/1.384 = 0.26338
    lo, hi = stats.wilson_ci(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6)
    assert hi == pytest.approx(0.763407, abs=1e-6)


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (10, 10), (633, 1273), (367, 1273), (1, 1), (50, 400)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = stats.wilson_ci(k, n)
    assert float(lo) == pytest.approx(ref.low, abs=1e-9)
    assert float(hi) == pytest.approx(ref.high, abs=1e-9)


def test_wilson_vectorised_and_empty() -> None:
    lo, hi = stats.wilson_ci(np.array([0, 5]), np.array([0, 10]))
    assert math.isnan(lo[0]) and math.isnan(hi[0])
    assert lo[1] == pytest.approx(0.236593, abs=1e-6)


def test_holm_known_vector() -> None:
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .02 .03 .06 .06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan() -> None:
    adj = stats.holm([0.5, float("nan"), 0.4, 0.01])
    assert math.isnan(adj[1])
    # three tests: .01*3=.03, .4*2=.8, .5*1=.5 -> max-accumulated .03 .8 .8
    np.testing.assert_allclose(adj[[0, 2, 3]], [0.8, 0.8, 0.03])
    assert np.all(stats.holm([0.9, 0.8]) <= 1.0)
    assert stats.holm([]).size == 0


def test_mcnemar_known_table() -> None:
    # discordant pairs b=10, c=2: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert stats.mcnemar_exact(10, 2) == pytest.approx(158 / 4096, rel=1e-12)
    assert stats.mcnemar_exact(2, 10) == pytest.approx(158 / 4096, rel=1e-12)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (3, 9), (17, 4), (40, 41), (120, 60), (267, 101), (1, 500)])
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    assert stats.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_two_proportion_z_hand_computed() -> None:
    # 50/100 vs 40/100: pooled .45, se = sqrt(.45*.55*.02) = .0703562, z = 1.421338
    z, p = stats.two_proportion_z(50, 100, 40, 100)
    assert z == pytest.approx(1.421338, abs=1e-6)
    assert p == pytest.approx(2 * norm.sf(1.421338), abs=1e-6)
    assert stats.two_proportion_z(0, 0, 1, 2)[0] != stats.two_proportion_z(0, 0, 1, 2)[0]  # NaN


def test_paired_diff_hand_computed() -> None:
    # baseline right on 6 of 8, condition right on 3; discordant: 4 x-only, 1 y-only
    x = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    y = np.array([1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    d = stats.paired_diff(x, y, n_boot=0, rng=stats.rng_for(0))
    assert (d.n, d.n10, d.n01) == (8, 4, 1)
    assert (d.mean_x, d.mean_y, d.diff) == (0.75, 0.375, 0.375)
    assert d.p == pytest.approx(binomtest(4, 5, 0.5).pvalue)
    assert stats.cells(x, y).tolist() == [1, 1, 4, 2]


def test_multinomial_bootstrap_is_the_paired_bootstrap() -> None:
    # the cell-count bootstrap must give the same distribution as resampling question indices
    rng = np.random.default_rng(7)
    n = 400
    x = rng.random(n) < 0.55
    y = np.where(rng.random(n) < 0.7, x, rng.random(n) < 0.35)
    d = stats.paired_diff(x, y, n_boot=20_000, rng=stats.rng_for(1))
    idx = rng.integers(0, n, size=(20_000, n))
    naive = x[idx].mean(axis=1) - y[idx].mean(axis=1)
    lo, hi = np.quantile(naive, [0.025, 0.975])
    assert d.lo == pytest.approx(lo, abs=0.006)
    assert d.hi == pytest.approx(hi, abs=0.006)


def test_bootstrap_ci_coverage_on_simulated_data() -> None:
    # 200 simulated paired data sets with a known difference: the 95% CI must cover it >= 93% of the time
    rng = np.random.default_rng(2024)
    probs = np.array([0.25, 0.08, 0.20, 0.47])  # cells 00, 01, 10, 11
    true_diff = probs[2] - probs[1]
    covered = 0
    for trial in range(200):
        cell = rng.choice(4, size=300, p=probs)
        x, y = cell >= 2, cell % 2 == 1
        d = stats.paired_diff(x, y, n_boot=2000, rng=stats.rng_for(11, trial))
        covered += d.lo <= true_diff <= d.hi
    assert covered / 200 >= 0.93


def test_recovery_hand_computed() -> None:
    # unbiased 10/10, biased 5/10, mitigated 8/10 -> (0.8 - 0.5) / (1.0 - 0.5) = 0.6
    u = np.ones(10, dtype=bool)
    b = np.array([1] * 5 + [0] * 5, dtype=bool)
    m = np.array([1] * 5 + [1, 1, 1, 0, 0], dtype=bool)
    r = stats.recovery(u, b, m, n_boot=2000, rng=stats.rng_for(3))
    assert r.value == pytest.approx(0.6)
    assert r.lo <= 0.6 <= r.hi
    # no drop: recovery is undefined
    assert math.isnan(stats.recovery(u, u, m, n_boot=100, rng=stats.rng_for(3)).value)


def test_rng_for_is_reproducible_and_keyed() -> None:
    a = stats.rng_for(0, "m", "recency").integers(0, 1 << 30, 5)
    b = stats.rng_for(0, "m", "recency").integers(0, 1 << 30, 5)
    c = stats.rng_for(0, "m", "frequency").integers(0, 1 << 30, 5)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
