"""Distances: known answers, invariances, and the noise-floor ratio of exact samples."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, metrics


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_w1_of_a_sample_with_itself_is_zero_and_with_a_shift_is_the_shift():
    x = torch.randn(1000, generator=gen(), dtype=torch.float64)
    assert metrics.wasserstein1_1d(x, x) == 0.0
    assert math.isclose(metrics.wasserstein1_1d(x, x + 0.37), 0.37, rel_tol=1e-12)


def test_w1_unequal_sizes_matches_quantile_formula():
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    # F_x - F_y: on [0,1) |1/2 - 2/3| = 1/6, on [1,3) |1 - 2/3| = 1/3 -> 1/6 + 2/3
    assert math.isclose(metrics.wasserstein1_1d(x, y), 1 / 6 + 2 / 3, rel_tol=1e-12)


def test_w1_against_an_exact_cdf_agrees_with_a_large_sample():
    target = data.mixture_1d()
    x = target.sample(2000, gen(1), torch.float64)
    big = target.sample(2_000_000, gen(2), torch.float64)
    assert abs(metrics.wasserstein1_1d(x, target.cdf) - metrics.wasserstein1_1d(x, big)) < 2e-3


def test_w1_of_a_point_mass_against_a_gaussian_cdf_is_mean_absolute_value():
    normal = data.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 1), torch.ones(1))
    w1 = metrics.wasserstein1_1d(torch.zeros(1, dtype=torch.float64), normal.cdf)
    assert abs(w1 - math.sqrt(2 / math.pi)) < 1e-4  # E|Z|


def test_ks_known_answers():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    assert metrics.ks_1d(x, x) == 0.0
    assert metrics.ks_1d(x, x + 10) == 1.0
    uniform_cdf = lambda t: t.clamp(0, 1)
    u = torch.tensor([0.5], dtype=torch.float64)  # sup |1{t >= .5} - t| = 1/2
    assert math.isclose(metrics.ks_1d(u, uniform_cdf), 0.5, rel_tol=1e-9)


def test_sliced_wasserstein_is_rotation_invariant_and_zero_on_itself():
    x = torch.randn(500, 3, generator=gen(), dtype=torch.float64)
    y = torch.randn(500, 3, generator=gen(1), dtype=torch.float64) + 1
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(2), dtype=torch.float64))
    a = metrics.sliced_wasserstein(x, y, 2000, generator=gen(5))
    b = metrics.sliced_wasserstein(x @ q.T, y @ q.T, 2000, generator=gen(6))
    assert abs(float(a - b)) < 0.02 * float(a)
    assert float(metrics.sliced_wasserstein(x, x, generator=gen())) == 0.0


def test_sliced_wasserstein_of_a_translation():
    # SW_2^2 of a shift by v is E_theta (theta . v)^2 = |v|^2 / d
    x = torch.randn(400, 2, generator=gen(), dtype=torch.float64)
    v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + v, 20_000, generator=gen(1))
    assert abs(float(sw) - 5 / math.sqrt(2)) < 0.03


def test_sliced_wasserstein_is_differentiable():
    x = torch.randn(100, 2, generator=gen(), dtype=torch.float64, requires_grad=True)
    metrics.sliced_wasserstein(x, torch.zeros(50, 2, dtype=torch.float64), generator=gen()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_biased_mmd_is_nonnegative_and_zero_on_identical_samples():
    for seed in range(5):
        x = torch.randn(50, 2, generator=gen(seed), dtype=torch.float64)
        y = torch.randn(60, 2, generator=gen(seed + 10), dtype=torch.float64) * 0.5
        assert float(metrics.mmd2(x, y)) >= 0
        assert_close(metrics.mmd2(x, x), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)


def test_c2st_is_chance_for_the_same_law_and_high_for_different_laws():
    target = data.mixture_2d()
    same = metrics.c2st(target.sample(1500, gen(0)), target.sample(1500, gen(1)), n_folds=3)
    shifted = metrics.c2st(target.sample(1500, gen(2)), target.sample(1500, gen(3)) + 1.0, n_folds=3)
    assert abs(same - 0.5) < 0.05
    assert shifted > 0.85


def test_noise_floor_ratio_of_exact_samples_is_close_to_one():
    for target, n in [(data.mixture_1d(), 20_000), (data.eight_gaussians(), 5_000)]:
        rho = metrics.noise_floor_ratio(lambda n, g: target.sample(n, g), target, n=n, seed=3)
        assert 0.75 < rho < 1.3, rho


def test_noise_floor_ratio_detects_a_biased_model():
    target = data.mixture_1d()
    rho = metrics.noise_floor_ratio(lambda n, g: target.sample(n, g) * 1.1, target, n=20_000)
    assert rho > 3


@pytest.mark.parametrize("bad", [torch.zeros(10, 2), torch.zeros(2, 5, 1)])
def test_1d_metrics_reject_multivariate_input(bad):
    with pytest.raises(ValueError, match="must be 1D"):
        metrics.wasserstein1_1d(bad, torch.zeros(10))
    with pytest.raises(ValueError, match="must be 1D"):
        metrics.ks_1d(bad, torch.zeros(10))


def test_metrics_reject_wrong_shapes():
    with pytest.raises(ValueError, match="same dimension"):
        metrics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="d >= 2"):
        metrics.sliced_wasserstein(torch.zeros(5, 1), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="same dimension"):
        metrics.mmd2(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"shape \(100, 2\)"):
        metrics.noise_floor_ratio(torch.zeros(100, 3), data.mixture_2d())
    with pytest.raises(ValueError, match="non-finite"):
        metrics.noise_floor_ratio(torch.full((100, 1), float("nan")), data.mixture_1d())
    with pytest.raises(ValueError, match="sample size n"):
        metrics.noise_floor_ratio(lambda n, g: torch.zeros(n, 1), data.mixture_1d())


@pytest.mark.parametrize("requires_grad", [False, True])
def test_sort_columns_matches_torch_sort_in_values_and_gradient(requires_grad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(301, 7, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(301, 7, generator=g, dtype=torch.float64)
    ours, ref = metrics.sort_columns(x), x.sort(dim=0).values
    assert torch.equal(ours, ref)
    if requires_grad:
        (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
        assert torch.equal(g_ours, g_ref)
