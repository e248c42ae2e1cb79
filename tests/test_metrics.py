"""Distances: known answers, invariances, and the noise-floor ratio of exact samples."""
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from minigen import data, metrics


F64 = torch.float64


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


def _two_laws(n, m, shift, seed=0):
    g = gen(seed)
    return torch.randn(n, 1, generator=g, dtype=F64), torch.randn(m, 1, generator=g, dtype=F64) + shift


def test_c2st_of_identical_samples_is_exactly_chance():
    # every point and its copy share a fold and get one prediction: one right, one wrong
    x = data.mixture_2d().sample(1000, gen(), F64)
    assert metrics.c2st(x, x) == 0.5
    assert metrics.c2st(x, x[torch.randperm(1000, generator=gen(1))], n_folds=3) == 0.5


@pytest.mark.parametrize("n, m", [(200, 600), (2000, 2000)])
def test_c2st_of_one_law_is_chance_within_three_binomial_sd(n, m):
    x, y = _two_laws(n, m, 0.0)
    tol = 3 * 0.5 / math.sqrt(2 * min(n, m))  # sd of a balanced accuracy at chance on 2 min(n, m) points
    assert abs(metrics.c2st(x, y) - 0.5) < tol


@pytest.mark.parametrize("d", [1.0, 2.0])
def test_c2st_of_two_gaussians_is_the_bayes_accuracy(d):
    # N(0, 1) against N(d, 1): the best classifier thresholds at d/2, accuracy Phi(d/2)
    bayes = 0.5 * (1 + math.erf(d / 2 / math.sqrt(2)))
    acc = metrics.c2st(*_two_laws(3000, 3000, d, seed=1))
    assert abs(acc - bayes) < 0.025, (acc, bayes)  # 3 binomial sd on 6,000 points: 0.018-0.018


def test_c2st_computes_in_float32_and_leaves_its_inputs_unchanged():
    """float64 input gives exactly the accuracy of its float32 copy (c2st computes in float32), the
    inputs are not modified, and N(0, 1) against N(1, 1) is told apart (Bayes accuracy 0.69)."""
    x, y = _two_laws(300, 300, 1.0)
    x0, y0 = x.clone(), y.clone()
    acc = metrics.c2st(x, y, n_folds=2)
    assert isinstance(acc, float) and acc == metrics.c2st(x.float(), y.float(), n_folds=2)
    assert x.dtype == y.dtype == F64 and torch.equal(x, x0) and torch.equal(y, y0)
    assert acc > 0.55


def test_exact_floor_and_expected_distance_match_monte_carlo():
    # E W1(y, y') and E_y W1(x, y) from binomial mean absolute deviations, against 4,000 draws
    target, n, g = data.mixture_1d(), 20, gen(4)
    grid = metrics._cdf_grid(target.sample(n, g, F64)[:, 0].sort().values, target.cdf, 20_001)
    x = 1.3 * target.sample(n, g, F64)[:, 0]
    for exact, draw in [(metrics._expected_w1_between_exact(target.cdf, n, grid),
                         lambda: metrics.wasserstein1_1d(target.sample(n, g, F64), target.sample(n, g, F64))),
                        (metrics._expected_w1_to_exact(x, target.cdf, grid),
                         lambda: metrics.wasserstein1_1d(x, target.sample(n, g, F64)))]:
        mc = torch.tensor([draw() for _ in range(4000)], dtype=F64)
        assert abs(exact - float(mc.mean())) < 4 * float(mc.std()) / math.sqrt(4000), (exact, mc.mean())


def test_binomial_mean_absolute_deviation_known_values():
    # K ~ Bin(2, 1/2): |K/2 - 1/2| is 1/2 w.p. 1/2, so E = 1/4; E|0 - K/2| = E K/2 = p
    assert math.isclose(float(metrics._binomial_mad(np.array([1]), 2, 0.5)[0]), 0.25, rel_tol=1e-12)
    assert math.isclose(float(metrics._binomial_mad(np.array([0]), 7, 0.3)[0]), 0.3, rel_tol=1e-12)
    assert math.isclose(float(metrics._binomial_mad(np.array([7]), 7, 0.3)[0]), 0.7, rel_tol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_floor_ratio_of_exact_samples_is_one_within_three_standard_errors(seed):
    target = data.mixture_1d()
    rho = metrics.noise_floor_ratio(lambda n, g: target.sample(n, g), target, n=20_000,
                                    n_repeats=25, seed=seed)
    assert rho.n_repeats == 25 and 0 < rho.se < 0.05
    assert abs(rho - 1) < 3 * rho.se, rho
    mix = data.mixture_2d()
    rho = metrics.noise_floor_ratio(lambda n, g: mix.sample(n, g), mix, n=1000, n_repeats=40, seed=seed)
    assert abs(rho - 1) < 3 * rho.se, rho


def test_noise_floor_ratio_without_a_cdf_estimates_the_same_ratio():
    class NoCdf:  # the 1D mixture seen through the Sampler protocol only
        dim = 1
        sample = staticmethod(data.mixture_1d().sample)

    target = data.mixture_1d()
    model = lambda n, g: 1.05 * target.sample(n, g)
    exact = metrics.noise_floor_ratio(model, target, n=2000, n_repeats=25)
    monte_carlo = metrics.noise_floor_ratio(model, NoCdf(), n=2000, n_repeats=100)
    assert abs(exact - monte_carlo) < 3 * math.hypot(exact.se, monte_carlo.se), (exact, monte_carlo)


def test_noise_floor_ratio_default_repeats_reach_the_standard_error_target():
    target = data.mixture_1d()
    rho = metrics.noise_floor_ratio(lambda n, g: target.sample(n, g), target, n=20_000)
    assert rho.se <= 1.2 * metrics.SE_TARGET and rho.n_repeats >= metrics.MIN_REPEATS


def test_noise_floor_ratio_of_a_fixed_sample_in_1d_is_exact():
    target = data.mixture_1d()
    x = target.sample(5000, gen(), F64)
    rho = metrics.noise_floor_ratio(x, target)
    assert rho.se == 0.0 and rho.n_repeats == 1 and 0.5 < rho < 2


def test_ratio_is_a_float_with_a_standard_error():
    rho = metrics.Ratio(1.0412, 0.0213, 40)
    assert repr(rho) == str(rho) == "1.04 ± 0.02"
    assert f"{rho:.3f}" == "1.041" and rho <= 1.3 and (rho, rho.se, rho.n_repeats) == (1.0412, 0.0213, 40)
    assert type(rho * 2) is float


def test_noise_floor_ratio_detects_a_biased_model():
    target = data.mixture_1d()
    rho = metrics.noise_floor_ratio(lambda n, g: target.sample(n, g) * 1.1, target, n=20_000,
                                    n_repeats=10)
    assert rho > 3 + 3 * rho.se, rho


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


NAN_ROW = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [2.0, 3.0]], dtype=F64)
INF_ROW = torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [2.0, 3.0]], dtype=F64)
EMPTY = torch.zeros(0, 2, dtype=F64)
OK = torch.randn(5, 2, generator=gen(), dtype=F64)


@pytest.mark.parametrize("bad, message", [(NAN_ROW, "non-finite"), (INF_ROW, "non-finite"),
                                          (EMPTY, "empty")])
@pytest.mark.parametrize("distance, against_cdf", [
    (lambda a, b: metrics.wasserstein1_1d(a[:, 0], b[:, 0]), False),
    (lambda a, b: metrics.wasserstein1_1d(a[:, 0], data.mixture_1d().cdf), True),
    (lambda a, b: metrics.ks_1d(a[:, 0], b[:, 0]), False),
    (lambda a, b: metrics.ks_1d(a[:, 0], data.mixture_1d().cdf), True),
    (lambda a, b: metrics.sliced_wasserstein(a, b), False),
    (lambda a, b: metrics.c2st(a, b, n_folds=2), False)], ids=["w1", "w1_cdf", "ks", "ks_cdf", "sw", "c2st"])
def test_distances_reject_non_finite_and_empty_input_in_either_argument(distance, against_cdf, bad, message):
    with pytest.raises(ValueError, match=message):
        distance(bad, OK)
    if not against_cdf:
        with pytest.raises(ValueError, match=message):
            distance(OK, bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_noise_floor_ratio_rejects_non_finite_model_samples(bad):
    sampler = lambda n, g: torch.zeros(n, 1).index_fill_(0, torch.tensor([n // 2]), bad)
    with pytest.raises(ValueError, match="model samples holds 1 non-finite"):
        metrics.noise_floor_ratio(sampler, data.mixture_1d(), n=100)
    with pytest.raises(ValueError, match="empty"):
        metrics.noise_floor_ratio(torch.zeros(0, 1), data.mixture_1d())


@pytest.mark.parametrize("weights", [torch.full((5,), 0.1, dtype=F64), -torch.full((5,), 0.2, dtype=F64)])
def test_mmd_weights_must_be_a_probability_vector(weights):
    x = torch.randn(5, 2, generator=gen(), dtype=F64)
    with pytest.raises(ValueError, match="weights mu must"):
        metrics.mmd2(x, x, mu=weights)
    with pytest.raises(ValueError, match="weights nu must"):
        metrics.mmd2(x, x, nu=weights)


def test_metrics_keep_float64_and_the_input_device():
    x = torch.randn(300, 2, generator=gen(), dtype=F64)
    assert metrics.sliced_wasserstein(x, x + 1, generator=gen()).dtype == F64
    assert metrics.sliced_wasserstein(x.float(), x.float() + 1, generator=gen()).dtype == torch.float32
    grid = metrics._cdf_grid(x[:, 0].sort().values, data.mixture_1d().cdf, 11)
    assert grid.dtype == F64 and grid.device == x.device
    cdf_seen = []
    record = lambda t: cdf_seen.append((t.dtype, t.device)) or data.mixture_1d().cdf(t)
    metrics.wasserstein1_1d(x[:, 0], record), metrics.ks_1d(x[:, 0], record)
    assert set(cdf_seen) == {(F64, x.device)}
