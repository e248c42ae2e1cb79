"""minigen.approx: closed-form distances, exact network constructions, Gaussian NLL and bands."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import approx
from minigen import networks as mnn

F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_lp_distance_of_x_and_zero_on_unit_interval_is_one_over_p_plus_one_to_the_1_over_p(p):
    expected = 1.0 if math.isinf(p) else (1 / (p + 1)) ** (1 / p)
    got = approx.lp_distance(lambda x: x, torch.zeros_like, (0.0, 1.0), p)
    assert got == pytest.approx(expected, rel=1e-6)


def test_lp_distance_is_nondecreasing_in_p_on_a_unit_interval_and_symmetric():
    f, g = torch.sin, lambda x: x**3
    values = [approx.lp_distance(f, g, (0.0, 1.0), p) for p in (1, 1.5, 2, 4, math.inf)]
    assert values == sorted(values)
    assert approx.lp_distance(f, g, (0.0, 1.0), 2) == approx.lp_distance(g, f, (0.0, 1.0), 2)


def test_lp_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="a < b"):
        approx.lp_distance(torch.sin, torch.cos, (1.0, 0.0))
    with pytest.raises(ValueError, match="p must be >= 1"):
        approx.lp_distance(torch.sin, torch.cos, (0.0, 1.0), p=0.5)


def test_relu_interpolant_matches_f_at_knots_and_is_linear_between():
    knots = torch.linspace(-2, 2, 9, **F64)
    net = approx.relu_interpolant(torch.sin, knots)
    x = knots[:, None]
    assert_close(net(x).detach(), torch.sin(x))
    mid = (x[1:] + x[:-1]) / 2
    assert_close(net(mid).detach(), (torch.sin(x[1:]) + torch.sin(x[:-1])) / 2)
    assert net[0].out_features == len(knots) - 1


@pytest.mark.parametrize("n_knots", [5, 17, 65])
def test_relu_interpolant_uniform_error_obeys_h2_over_8_bound(n_knots):
    a, b, k = -2.0, 2.0, 3.0  # f = sin(3x): max |f''| = 9
    knots = torch.linspace(a, b, n_knots, **F64)
    f = lambda x: torch.sin(k * x)  # noqa: E731
    err = approx.lp_distance(approx.relu_interpolant(f, knots), f, (a, b), math.inf)
    h = (b - a) / (n_knots - 1)
    assert err <= h**2 * k**2 / 8 * (1 + 1e-9)


def test_relu_interpolant_rejects_unsorted_knots():
    with pytest.raises(ValueError, match="strictly increasing"):
        approx.relu_interpolant(torch.sin, torch.tensor([0.0, 2.0, 1.0]))


def test_random_relu_features_kinks_lie_in_bounds():
    layer = approx.random_relu_features(200, (-1.0, 3.0), torch.Generator().manual_seed(0))
    w, b = layer[0].weight[:, 0], layer[0].bias
    kinks = -b / w
    assert set(w.tolist()) == {-1.0, 1.0}
    assert (kinks >= -1).all() and (kinks <= 3).all()
    with pytest.raises(ValueError, match="width"):
        approx.random_relu_features(0, (0.0, 1.0))


def test_fit_readout_solves_the_normal_equations_and_recovers_a_target_in_the_span():
    g = torch.Generator().manual_seed(0)
    hidden = approx.random_relu_features(10, (-1.0, 1.0), g)
    x = torch.linspace(-1, 1, 50, **F64)[:, None]
    with torch.no_grad():
        y_in_span = hidden(x) @ torch.randn(10, 1, generator=g, **F64) + 0.7
        assert_close(approx.fit_readout(hidden, x, y_in_span)(x), y_in_span)
        net = approx.fit_readout(hidden, x, torch.cos(5 * x))
        design = torch.cat([hidden(x), torch.ones_like(x)], 1)
        residual = net(x) - torch.cos(5 * x)
        assert_close(design.T @ residual, torch.zeros(11, 1, **F64), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="numbers of rows"):
        approx.fit_readout(hidden, x, x[:-1])


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_sawtooth_network_has_2_to_the_depth_pieces_and_6_depth_plus_1_parameters(depth):
    net = approx.sawtooth_network(depth)
    n = 2**depth
    x = torch.arange(n + 1, **F64)[:, None] / n  # the breakpoints j / 2^depth
    with torch.no_grad():
        assert_close(net(x)[:, 0], (torch.arange(n + 1) % 2).double())
        mid = (x[1:] + x[:-1]) / 2
        assert_close(net(mid)[:, 0], torch.full((n,), 0.5, **F64))  # linear on each piece
    assert approx.n_parameters(net) == 6 * depth + 1
    with pytest.raises(ValueError, match="depth"):
        approx.sawtooth_network(0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("n_params", [50, 300, 1000])
def test_width_for_parameters_is_the_closest_width(n_params, depth):
    h = approx.width_for_parameters(n_params, depth)
    count = lambda w: approx.n_parameters(mnn.mlp(1, 1, w, depth))  # noqa: E731
    assert abs(count(h) - n_params) <= min(abs(count(w) - n_params) for w in (h - 1, h + 1) if w)
    with pytest.raises(ValueError, match="depth"):
        approx.width_for_parameters(100, 0)


def test_heteroscedastic_sine_standardised_residuals_are_standard_normal():
    target = approx.HeteroscedasticSine()
    x, y = target.sample(20_000, torch.Generator().manual_seed(0))
    z = (y - target.mean(x)) / target.std(x)
    se = 1 / math.sqrt(len(z))
    assert abs(z.mean()) < 4 * se and abs(z.var() - 1) < 4 * math.sqrt(2) * se
    assert x.min() >= target.low and x.max() <= target.high
    with pytest.raises(ValueError, match="n must be"):
        target.sample(0)


def test_gaussian_nll_equals_minus_normal_log_prob():
    y, mean, var = torch.randn(7, **F64), torch.randn(7, **F64), torch.rand(7, **F64) + 0.1
    expected = -torch.distributions.Normal(mean, var.sqrt()).log_prob(y)
    assert_close(approx.gaussian_nll(y, mean, var), expected)
    with pytest.raises(ValueError, match="var must be positive"):
        approx.gaussian_nll(y, mean, -var)


def test_mean_variance_loss_is_the_nll_of_the_split_outputs_and_minimised_by_the_truth():
    model = torch.nn.Linear(1, 2).double()
    x, y = torch.randn(6, 1, **F64), torch.randn(6, 1, **F64)
    mean, var = approx.mean_variance(model, x)
    assert (var > 0).all()
    assert_close(approx.mean_variance_loss(model, torch.cat([x, y], 1)),
                 approx.gaussian_nll(y, mean, var).mean())
    # d/dvar of the NLL vanishes at var = (y - mean)^2: the per-point variance optimum
    v = ((y - mean) ** 2).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(approx.gaussian_nll(y, mean.detach(), v).sum(), v)
    assert_close(grad, torch.zeros_like(grad), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        approx.mean_variance_loss(model, x)
    with pytest.raises(ValueError, match=r"output \(n, 2\)"):
        approx.mean_variance(torch.nn.Linear(1, 3).double(), x)


def test_predictive_band_holds_its_level_under_the_gaussian():
    mean, var = torch.tensor([0.3], **F64), torch.tensor([4.0], **F64)
    for level in (0.5, 0.9, 0.99):
        lo, hi = approx.predictive_band(mean, var, level)
        normal = torch.distributions.Normal(mean, var.sqrt())
        assert_close(normal.cdf(hi) - normal.cdf(lo), torch.tensor([level], **F64))
    lo, hi = approx.predictive_band(torch.zeros(1), torch.ones(1), 0.9)
    assert hi.item() == pytest.approx(1.6448536, rel=1e-6)
    with pytest.raises(ValueError, match="level"):
        approx.predictive_band(mean, var, 1.0)


def test_coverage_known_answer_and_sampling_check():
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert approx.coverage(y, torch.full((4,), 0.5), torch.full((4,), 2.0)) == 0.5
    z = torch.randn(40_000, 1, generator=torch.Generator().manual_seed(0), **F64)
    lo, hi = approx.predictive_band(torch.zeros_like(z), torch.ones_like(z), 0.9)
    assert abs(approx.coverage(z, lo, hi) - 0.9) < 4 * math.sqrt(0.09 / len(z))
    with pytest.raises(ValueError, match="shapes differ"):
        approx.coverage(y, y[:3], y)


def test_squared_error_loss_is_the_mean_squared_residual():
    model = torch.nn.Linear(1, 1).double()
    x, y = torch.randn(9, 1, **F64), torch.randn(9, 1, **F64)
    assert_close(approx.squared_error_loss(model, torch.cat([x, y], 1)),
                 ((model(x) - y) ** 2).mean())
    assert approx.squared_error_loss(model, torch.cat([x, model(x).detach()], 1)) == 0
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        approx.squared_error_loss(model, x)
