"""minigen.posterior: HPD levels and expected coverage against Gaussians whose coverage is known."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch.testing import assert_close

from minigen import flows, posterior

LEVELS = torch.tensor([0.5, 0.68, 0.95], dtype=torch.float64)


def _gaussian_case(var_ratio: float, m: int = 4000, n: int = 1000, seed: int = 0):
    """theta ~ N(0, I_2), x | theta ~ N(theta, I_2): the posterior is N(x / 2, I / 2). q is
    N(x / 2, var_ratio * I / 2); returns log q(theta* | x) (M,) and log q(theta_i | x) (M, N)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(m, 2, generator=g, dtype=torch.float64)
    x = theta + torch.randn(m, 2, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(x / 2, math.sqrt(var_ratio / 2))
    draws = x / 2 + math.sqrt(var_ratio / 2) * torch.randn(n, m, 2, generator=g, dtype=torch.float64)  # (N, M, 2)
    return q.log_prob(theta).sum(-1), q.log_prob(draws).sum(-1).T


def _tolerance(p: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Four binomial standard errors of a coverage over m observations, plus the 1/n resolution of a level."""
    return 4 * (p * (1 - p) / m).sqrt() + 2 / n


def test_exact_posterior_has_nominal_coverage():
    log_true, log_samples = _gaussian_case(1.0)
    cov = posterior.expected_coverage(log_true, log_samples, LEVELS)
    assert ((cov - LEVELS).abs() <= _tolerance(LEVELS, 4000, 1000)).all(), cov


@pytest.mark.parametrize("var_ratio", [0.5, 2.0])
def test_a_mis_scaled_gaussian_has_its_closed_form_coverage(var_ratio):
    """A 2D Gaussian q with variance var_ratio times the posterior's: the HPD region at level L is a
    disk of squared radius -2 log(1 - L) var_ratio / 2, so the coverage is 1 - (1 - L)^var_ratio."""
    log_true, log_samples = _gaussian_case(var_ratio, seed=1)
    cov = posterior.expected_coverage(log_true, log_samples, LEVELS)
    expected = 1 - (1 - LEVELS) ** var_ratio
    assert ((cov - expected).abs() <= _tolerance(expected, 4000, 1000)).all(), (cov, expected)
    if var_ratio < 1:  # overconfident: every level under-covers, by more than the tolerance
        assert (cov < LEVELS - _tolerance(LEVELS, 4000, 1000)).all()
    else:
        assert (cov > LEVELS + _tolerance(LEVELS, 4000, 1000)).all()


def test_hpd_levels_count_denser_samples():
    log_true = torch.tensor([0.0, -1.0])
    log_samples = torch.tensor([[1.0, -1.0, 2.0, 0.0], [-3.0, -2.0, -1.5, -4.0]])
    assert_close(posterior.hpd_levels(log_true, log_samples), torch.tensor([0.5, 0.0]))
    assert_close(posterior.expected_coverage(log_true, log_samples, [0.25, 0.75]), torch.tensor([0.5, 1.0]))
    assert_close(posterior.coverage(torch.tensor([0.1, 0.6, 0.9]), [0.5, 0.95]), torch.tensor([1 / 3, 1.0]))


def test_a_conditional_flow_is_calibrated_against_its_own_samples():
    """theta* ~ q(. | x_j) makes q the exact posterior of the pairs: its coverage is nominal."""
    torch.manual_seed(0)
    flow = flows.conditional_coupling_flow(2, 1, n_layers=2, hidden=8).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1500, 1, generator=g, dtype=torch.float64)
    theta_true = flow.sample(1500, g, context=x)
    log_true, log_samples = posterior.coverage_log_probs(flow, theta_true, x, 300, g, chunk=50_000)
    assert log_true.shape == (1500,) and log_samples.shape == (1500, 300)
    assert_close(log_true, flow.log_prob(theta_true, x))
    cov = posterior.expected_coverage(log_true, log_samples, LEVELS)
    assert ((cov - LEVELS).abs() <= _tolerance(LEVELS, 1500, 300)).all(), cov


def _gaussian_grid(n: int = 201) -> posterior.GridPosterior:
    """N((1, -0.5), diag(0.5^2, 0.3^2)) on a grid covering +-6 standard deviations."""
    mean, sd = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 0.3], dtype=torch.float64)
    log_joint = lambda t: -0.5 * (((t - mean) / sd) ** 2).sum(-1) + 7.0  # unnormalised
    bounds = [(float(m - 6 * s), float(m + 6 * s)) for m, s in zip(mean, sd)]
    return posterior.grid_posterior(log_joint, bounds, n)


def test_grid_posterior_is_normalised_and_samples_its_moments():
    grid = _gaussian_grid()
    assert_close((grid.log_prob.exp() * grid.cell).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_close(grid.log_z, torch.tensor(math.log(2 * math.pi * 0.5 * 0.3) + 7.0, dtype=torch.float64))
    exact = torch.distributions.Normal(torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.3]))
    assert_close(grid.log_prob, exact.log_prob(grid.points.float()).sum(-1).double(), atol=1e-4, rtol=0)
    draws = grid.sample(100_000, torch.Generator().manual_seed(0))  # (n, 2)
    assert_close(draws.mean(0), torch.tensor([1.0, -0.5], dtype=torch.float64), atol=0.01, rtol=0)
    assert_close(draws.std(0), torch.tensor([0.5, 0.3], dtype=torch.float64), atol=0.01, rtol=0)


def test_grid_index_finds_each_cell_and_hpd_level_is_the_chi2_cdf():
    grid = _gaussian_grid()
    assert torch.equal(grid.index(grid.points), torch.arange(len(grid.points)))
    mean, sd = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 0.3], dtype=torch.float64)
    near = mean + torch.tensor([[0.25, 0.0], [0.5, 0.3], [0.0, -0.6]], dtype=torch.float64)
    theta = grid.points[grid.index(near)]  # grid nodes near Mahalanobis radii 0.5, 1.4, 2
    r2 = (((theta - mean) / sd) ** 2).sum(-1)
    # a 2D Gaussian's HPD region through a point at radius r holds mass 1 - exp(-r^2 / 2)
    assert_close(grid.hpd_level(theta), 1 - (-r2 / 2).exp(), atol=0.005, rtol=0)
    assert_close(grid.hpd_level(theta + 0.4 * grid.steps), grid.hpd_level(theta))  # same cell


def test_binomial_band_matches_scipy_quantiles():
    lo, hi = posterior.binomial_band([0.5, 0.68, 0.95], 1000, width=0.95)
    for p, a, b in zip([0.5, 0.68, 0.95], lo, hi):
        assert float(a) == stats.binom.ppf(0.025, 1000, p) / 1000
        assert float(b) == stats.binom.ppf(0.975, 1000, p) / 1000


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"log_q_true must be \(M,\) and log_q_samples \(M, N\)"):
        posterior.hpd_levels(torch.zeros(3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"levels must lie in \(0, 1\)"):
        posterior.expected_coverage(torch.zeros(3), torch.zeros(3, 5), [0.5, 1.0])
    with pytest.raises(ValueError, match=r"gamma must be \(M,\)"):
        posterior.coverage(torch.zeros(3, 1), [0.5])
    with pytest.raises(ValueError, match="high > low"):
        posterior.grid_posterior(lambda t: t.sum(-1), [(0.0, 1.0), (2.0, 2.0)])
    with pytest.raises(ValueError, match=r"log_joint must map \(9, 2\) to \(9,\)"):
        posterior.grid_posterior(lambda t: t, [(0.0, 1.0), (0.0, 1.0)], n=3)
    with pytest.raises(ValueError, match="equal M"):
        posterior.coverage_log_probs(flows.conditional_coupling_flow(2, 1, 1, 8), torch.zeros(3, 2),
                                     torch.zeros(4, 1))
