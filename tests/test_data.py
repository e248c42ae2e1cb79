"""Exact targets: densities integrate to 1, samples follow the exact CDF, scores are gradients."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, metrics

TARGETS_1D = [data.mixture_1d(), data.asymmetric_1d()]
TARGETS_2D = [data.eight_gaussians(), data.mixture_2d()]


@pytest.mark.parametrize("target", TARGETS_1D)
def test_1d_density_integrates_to_one_and_matches_cdf(target):
    t = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    p = target.log_prob(t[:, None]).exp()
    assert_close(torch.trapezoid(p, t), torch.tensor(1.0, dtype=torch.float64), atol=1e-8, rtol=0)
    cdf_numeric = torch.cumulative_trapezoid(p, t)
    assert_close(cdf_numeric[::1000], (target.cdf(t[1:]) - target.cdf(t[:1]))[::1000], atol=1e-8, rtol=0)


@pytest.mark.parametrize("target", TARGETS_1D)
def test_1d_exact_samples_pass_ks_test(target):
    x = target.sample(20_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    ks = metrics.ks_1d(x, target.cdf)
    assert ks < 1.63 / math.sqrt(20_000)  # 1% critical value of the KS statistic


@pytest.mark.parametrize("target", TARGETS_2D)
def test_2d_density_integrates_to_one(target):
    t = torch.linspace(-6, 6, 801, dtype=torch.float64)
    X, Y = torch.meshgrid(t, t, indexing="ij")
    p = target.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)).exp().reshape(X.shape)
    assert_close(torch.trapezoid(torch.trapezoid(p, t), t), torch.tensor(1.0, dtype=torch.float64),
                 atol=1e-6, rtol=0)


@pytest.mark.parametrize("target", TARGETS_1D + TARGETS_2D)
def test_score_is_gradient_of_log_prob(target):
    x = target.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    assert_close(target.score(x), grad)


def test_noised_mixture_is_the_law_of_affine_noise():
    target, a, sigma = data.mixture_2d(), 0.6, 0.7
    g = torch.Generator().manual_seed(0)
    x = a * target.sample(200_000, g, torch.float64) + sigma * torch.randn(200_000, 2, generator=g,
                                                                          dtype=torch.float64)
    noised = target.noised(a, sigma)
    assert_close(x.mean(0), (noised.weights[:, None] * noised.means).sum(0), atol=5e-3, rtol=0)
    y = noised.sample(200_000, g, torch.float64)
    assert metrics.sliced_wasserstein(x[:20_000], y[:20_000], generator=g) < 0.03


def test_mixture_entropy_matches_monte_carlo():
    target = data.mixture_1d()
    x = target.sample(400_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(target.entropy() - float(-target.log_prob(x).mean())) < 5e-3


def test_gaussian_entropy_closed_form():
    g = data.GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.3]]), torch.tensor([0.7], dtype=torch.float64))
    assert abs(g.entropy() - 0.5 * math.log(2 * math.pi * math.e * 0.49)) < 1e-8


def test_sampling_is_deterministic_given_a_generator():
    for target in TARGETS_1D + TARGETS_2D + [data.two_moons()]:
        a = target.sample(100, torch.Generator().manual_seed(3))
        b = target.sample(100, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        assert a.shape == (100, target.dim)


def test_two_moons_points_lie_near_the_arcs():
    moons = data.TwoMoons(noise=0.0)
    x = moons.sample(1000, torch.Generator().manual_seed(0), torch.float64)
    upper = (x[:, 0].pow(2) + x[:, 1].pow(2) - 1).abs() < 1e-9
    lower = ((x[:, 0] - 1).pow(2) + (x[:, 1] - 0.5).pow(2) - 1).abs() < 1e-9
    assert bool((upper | lower).all())
    assert 0.45 < upper.double().mean() < 0.55


def test_bad_mixture_parameters_raise():
    with pytest.raises(ValueError, match="simplex"):
        data.GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 1), torch.ones(2))
    with pytest.raises(ValueError, match="shapes disagree"):
        data.GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        data.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        data.mixture_2d().log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="1D"):
        data.mixture_2d().cdf(torch.zeros(5, 2))
