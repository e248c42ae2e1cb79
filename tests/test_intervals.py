"""Frequentist intervals: Wilks intervals of a Gaussian mean against the closed form, their coverage,
Neyman belts against the chi-square quantile, the belt repairing a mis-scaled statistic, and the
batched interval against a row-by-row reference."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import intervals


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("level, z", [(0.6827, 1.0), (0.95, 1.959964)])
def test_likelihood_interval_of_a_gaussian_log_likelihood(level, z):
    theta = torch.linspace(-2, 4, 60_001, dtype=torch.float64)
    mle, low, high = intervals.likelihood_interval(theta, -0.5 * ((theta - 1.0) / 0.3) ** 2, level)
    assert math.isclose(mle, 1.0, abs_tol=1e-4)
    assert math.isclose(low, 1.0 - z * 0.3, abs_tol=1e-3) and math.isclose(high, 1.0 + z * 0.3, abs_tol=1e-3)
    with pytest.raises(ValueError, match="equal length"):
        intervals.likelihood_interval(theta, theta[:-1])


NOMINAL = 0.6827
def gaussian_toys(mu, n_toys, n_events, seed=0):
    """Log likelihoods (T, m) of the mean of N(mu, 1) on a grid, from T toy data sets of n_events."""
    grid = torch.linspace(mu - 2, mu + 2, 801, dtype=torch.float64)
    x = mu + torch.randn(n_toys, n_events, 1, dtype=torch.float64, generator=gen(seed))
    return grid, (-0.5 * (x - grid) ** 2).sum(1), x[..., 0].mean(1)


def test_wilks_interval_of_the_gaussian_mean_is_xbar_plus_minus_one_over_root_n_and_matches_the_scalar_version():
    grid, log_lik, xbar = gaussian_toys(0.3, 50, 25)
    low, high = intervals.wilks_interval(grid, log_lik)
    assert_close(low, xbar - 1 / 5 * 1.0000, atol=1e-3, rtol=0)  # q = 1 is the 68.27% chi2_1 quantile
    assert_close(high, xbar + 1 / 5, atol=1e-3, rtol=0)
    for k in range(3):
        _, lo_k, hi_k = intervals.likelihood_interval(grid, log_lik[k])
        assert math.isclose(lo_k, float(low[k])) and math.isclose(hi_k, float(high[k]))


def test_wilks_coverage_of_an_exact_gaussian_likelihood_is_nominal_within_binomial_error():
    grid, log_lik, _ = gaussian_toys(0.3, 2000, 10, seed=1)
    cover, se = intervals.interval_coverage(*intervals.wilks_interval(grid, log_lik), 0.3)
    assert math.isclose(se, math.sqrt(cover * (1 - cover) / 2000))
    assert abs(cover - NOMINAL) < 3 * se, (cover, se)


def test_neyman_belt_of_the_gaussian_mean_is_the_chi2_quantile():
    grid, log_lik, _ = gaussian_toys(0.0, 4000, 10, seed=2)
    j = int((grid - 0.0).abs().argmin())
    q = intervals.likelihood_ratio_statistic(log_lik)  # (T, m), zero at each row's maximum
    assert_close(q.min(1).values, torch.zeros(4000, dtype=torch.float64))
    belt = intervals.neyman_belt(q[:, j:j + 1])  # under the truth q ~ chi2_1, whose 68.27% quantile is 1
    assert abs(float(belt[0]) - 1.0) < 0.08, float(belt)


def test_neyman_restores_the_coverage_that_a_miscaled_statistic_loses_under_wilks():
    """With 3 x the log likelihood, q = 3 chi2_1: Wilks covers P(chi2_1 <= 1/3) = erf(1/sqrt 6)."""
    mus = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
    belt_toys, cover_toys = [], []
    for k, mu in enumerate(mus):
        grid, ll, _ = gaussian_toys(0.0, 1000, 10, seed=10 + k)  # a shared grid on [-2, 2]
        x = mu + torch.randn(1000, 10, 1, dtype=torch.float64, generator=gen(10 + k))
        belt_toys.append(3 * (-0.5 * (x - grid) ** 2).sum(1))
        x = mu + torch.randn(1000, 10, 1, dtype=torch.float64, generator=gen(20 + k))
        cover_toys.append(3 * (-0.5 * (x - grid) ** 2).sum(1))
    idx = [int((grid - mu).abs().argmin()) for mu in mus]
    q_truth = torch.stack([intervals.likelihood_ratio_statistic(ll)[:, j] for ll, j in zip(belt_toys, idx)], 1)
    belt = intervals.neyman_belt(q_truth)  # (3,) close to 3
    assert ((belt - 3.0).abs() < 0.3).all(), belt
    for ll, mu, j in zip(cover_toys, mus, idx):
        cut = torch.full_like(grid, float(belt[mus.tolist().index(float(mu))]))
        wilks, se_w = intervals.interval_coverage(*intervals.wilks_interval(grid, ll), float(grid[j]))
        neyman, se_n = intervals.interval_coverage(*intervals.neyman_interval(grid, intervals.likelihood_ratio_statistic(ll), cut),
                                             float(grid[j]))
        assert abs(wilks - math.erf(1 / math.sqrt(6))) < 3 * se_w, wilks
        assert abs(neyman - NOMINAL) < 4 * se_n, neyman  # belt and coverage toys both carry MC error


def test_neyman_interval_follows_a_theta_dependent_cut():
    theta = torch.linspace(0, 1, 11, dtype=torch.float64)
    q = (theta - 0.5).abs() * 10  # 5 at the ends
    low, high = intervals.neyman_interval(theta, q, torch.where(theta < 0.5, 2.0, 3.0).double())
    assert math.isclose(float(low), 0.3) and math.isclose(float(high), 0.8)
    with pytest.raises(ValueError, match="cut must have the grid's shape"):
        intervals.neyman_interval(theta, q, torch.ones(3))
    with pytest.raises(ValueError, match="strictly increasing"):
        intervals.wilks_interval(theta.flip(0), q)


def test_interval_coverage_counts_intervals_containing_the_truth():
    low, high = torch.tensor([0.0, 0.5, 1.1, -1.0]), torch.tensor([1.0, 2.0, 2.0, 0.9])
    assert intervals.interval_coverage(low, high, 1.0) == (0.5, 0.25)
    assert intervals.interval_coverage(low, high, torch.tensor([0.5, 0.5, 1.5, 0.0]))[0] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        intervals.interval_coverage(low, high[:2], 1.0)


# --- SCANDAL: a conditional density with a score term --------------------------------------------

def _region_by_loop(t, d):
    """Reference for one row: the smallest interval holding every grid point with d <= 0 (ends
    interpolated where d crosses 0; the minimum of d when no point qualifies)."""
    k = int(d.argmin())
    inside = [i for i in range(len(t)) if d[i] <= 0]
    lo_i, hi_i = (inside[0], inside[-1]) if inside else (k, k)
    cross = lambda i, j: float(t[i] - d[i] / (d[j] - d[i]) * (t[j] - t[i]))
    low = cross(lo_i, lo_i - 1) if lo_i > 0 else float(t[0])
    high = cross(hi_i, hi_i + 1) if hi_i < len(t) - 1 else float(t[-1])
    return low, high


def test_batched_neyman_interval_matches_the_grid_region_row_by_row():
    theta = torch.linspace(0, 1, 21, dtype=torch.float64)
    q = torch.rand(200, 21, dtype=torch.float64, generator=gen(3)) * 4  # ragged, often disconnected sets
    cut = torch.linspace(0.5, 2.5, 21, dtype=torch.float64)
    low, high = intervals.neyman_interval(theta, q, cut)
    for k in range(200):
        lo_k, hi_k = _region_by_loop(theta, q[k] - cut)
        assert math.isclose(lo_k, float(low[k])) and math.isclose(hi_k, float(high[k]))
        inside = theta[q[k] <= cut]
        if len(inside):
            assert float(low[k]) <= float(inside[0]) and float(inside[-1]) <= float(high[k])
