"""Score, noise prediction and velocity of a Gaussian path (book page "From diffusion to flow matching").

The oracles are independent of :func:`minigen.diffusion.mixture_score`: the marginal velocity is
computed as the posterior mean of the conditional velocity, by quadrature over the data point in
1D and by Gaussian conjugacy in 2D.
"""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, ode
from minigen import diffusion as d
from minigen import flow_matching as fm

F64 = torch.float64


class LinearPath:
    """Chapter 7's straight line from a standard normal, in chapter 6's time: alpha = 1 - t, sigma = t."""

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t


PATHS = {"VE": d.VESDE(0.01, 50.0), "VP": d.VPSDE(), "linear": LinearPath()}


def points(n=64, seed=0, scale=2.0, lo=0.05, hi=0.95):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, 1, generator=g, dtype=F64)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    return x, t


def posterior_velocity_1d(mixture, x, alpha, sigma, dalpha, dsigma, n_grid=40_001):
    """E[dalpha x0 + dsigma eps | alpha x0 + sigma eps = x] by the trapezoid rule over x0; (B, 1)."""
    y = torch.linspace(-10, 10, n_grid, dtype=F64)  # (G,)
    a, s = alpha[:, None], sigma[:, None]  # (B, 1)
    eps = (x - a * y) / s  # (B, G): the noise that takes y to x
    logw = mixture.log_prob(y[:, None])[None, :] - 0.5 * eps**2 - s.log()  # (B, G)
    w = torch.exp(logw - logw.max(1, keepdim=True).values)
    u = dalpha[:, None] * y + dsigma[:, None] * eps  # (B, G) conditional velocities
    return (torch.trapezoid(w * u, y, dim=1) / torch.trapezoid(w, y, dim=1))[:, None]


def posterior_velocity(mixture, x, alpha, sigma, dalpha, dsigma):
    """The same by conjugacy: per component, E[x0 | x, k] is a Gaussian posterior mean; (B, d)."""
    a, s = alpha[:, None, None], sigma[:, None, None]  # (B, 1, 1)
    mu, var = mixture.means.to(x), mixture.stds.to(x) ** 2  # (K, d)
    var_x = a**2 * var + s**2  # (B, K, d): law of x given the component
    log_r = (-0.5 * ((x[:, None] - a * mu) ** 2 / var_x + var_x.log()).sum(-1)
             + mixture.weights.to(x).log())  # (B, K)
    x0_k = mu + a * var / var_x * (x[:, None] - a * mu)  # (B, K, d)
    x0 = (torch.softmax(log_r, 1)[:, :, None] * x0_k).sum(1)  # (B, d)
    eps = (x - alpha[:, None] * x0) / sigma[:, None]  # the path is linear in (x0, eps)
    return dalpha[:, None] * x0 + dsigma[:, None] * eps


def exact_score(mixture, path):
    return lambda x, t: d.mixture_score(mixture, x, path.alpha(t), path.sigma(t))


@pytest.mark.parametrize("name", PATHS)
def test_velocity_of_the_exact_score_is_the_posterior_mean_velocity_1d(name):
    path, p = PATHS[name], data.mixture_1d()
    x, t = points()
    a, s, da, ds = d.path_rates(path, t)
    v = d.velocity_from_score(exact_score(p, path)(x, t), x, a, s, da, ds)
    assert_close(v, posterior_velocity_1d(p, x, a, s, da, ds), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PATHS)
def test_velocity_of_the_exact_score_is_the_posterior_mean_velocity_2d(name):
    path, p = PATHS[name], data.mixture_2d()
    g = torch.Generator().manual_seed(1)
    x, t = 3 * torch.randn(64, 2, generator=g, dtype=F64), 0.02 + 0.96 * torch.rand(64, generator=g, dtype=F64)
    a, s, da, ds = d.path_rates(path, t)
    v = d.velocity_from_score(exact_score(p, path)(x, t), x, a, s, da, ds)
    assert_close(v, posterior_velocity(p, x, a, s, da, ds), rtol=0, atol=1e-10)


def test_the_two_oracles_agree():
    """Quadrature and conjugacy compute the same posterior mean (so neither is vacuous)."""
    x, t = points(seed=3)
    a, s, da, ds = d.path_rates(PATHS["VP"], t)
    p = data.mixture_1d()
    assert_close(posterior_velocity_1d(p, x, a, s, da, ds), posterior_velocity(p, x, a, s, da, ds),
                 rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_the_sde_is_the_sde_of_its_gaussian_path(name):
    """f(x, t) = (alpha'/alpha) x and g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2."""
    sde = PATHS[name]
    x, t = points(seed=2, lo=0.01, hi=1.0)
    a, s, da, ds = d.path_rates(sde, t)
    assert_close(sde.drift(x, t), da[:, None] / a[:, None] * x, rtol=1e-12, atol=1e-12)
    assert_close(sde.diffusion(t) ** 2, 2 * s * ds - 2 * da / a * s**2, rtol=1e-12, atol=0)


def test_path_rates_match_closed_forms():
    t = torch.linspace(0.01, 1, 50, dtype=F64)
    vp, ve = PATHS["VP"], PATHS["VE"]
    a, s, da, ds = d.path_rates(vp, t)
    assert_close(da, -0.5 * vp.beta(t) * a)
    assert_close(ds, 0.5 * vp.beta(t) * a**2 / s)  # sigma^2 = 1 - alpha^2
    a, s, da, ds = d.path_rates(ve, t)
    bar = ve.sigma_min * (ve.sigma_max / ve.sigma_min) ** t
    assert_close(da, torch.zeros_like(t))
    assert_close(ds, math.log(ve.sigma_max / ve.sigma_min) * bar**2 / s)


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_velocity_from_score_is_the_probability_flow(name):
    sde, p = PATHS[name], data.mixture_2d()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(32, 2, generator=g, dtype=F64), torch.rand(32, generator=g, dtype=F64) + 1e-3
    score = exact_score(p, sde)
    v = d.velocity_from_score(score(x, t), x, *d.path_rates(sde, t))
    assert_close(v, d.probability_flow(score, sde)(x, t), rtol=1e-12, atol=1e-12)


def test_conversions_are_consistent_and_invert():
    g = torch.Generator().manual_seed(5)
    x, score_t = torch.randn(16, 3, generator=g, dtype=F64), torch.randn(16, 3, generator=g, dtype=F64)
    rates = d.path_rates(PATHS["VP"], torch.rand(16, generator=g, dtype=F64) + 0.01)
    sigma = rates[1]
    eps_t = d.noise_from_score(score_t, sigma)
    assert_close(eps_t, -sigma[:, None] * score_t)
    assert_close(d.score_from_noise(eps_t, sigma), score_t)
    v = d.velocity_from_score(score_t, x, *rates)
    assert_close(d.velocity_from_noise(eps_t, x, *rates), v)
    assert_close(d.score_from_velocity(v, x, *rates), score_t)


def test_flow_matching_field_is_chapter_7s_marginal_velocity():
    """With the straight line and t_min = 0, the field is E[x1 - x0 | x_tau] of chapter 7's 1D problem."""
    p, line = data.mixture_1d(), fm.LinearInterpolant()
    x, tau = points(seed=6, lo=0.05, hi=0.95)
    u = d.flow_matching_field(exact_score(p, PATHS["linear"]), PATHS["linear"], t_min=0.0)(x, tau)
    # chapter 7: x_tau = alpha_tau z + beta_tau y; conditional velocity dalpha z + dbeta y (z = source)
    expected = posterior_velocity_1d(p, x, line.beta(tau), line.alpha(tau), line.dbeta(tau),
                                     line.dalpha(tau))
    assert_close(u, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sde", [d.VESDE(0.01, 50.0), d.VPSDE()], ids=["VE", "VP"])
@pytest.mark.parametrize("step", [ode.rk4_step, ode.euler_step], ids=["rk4", "euler"])
def test_the_bridged_score_samples_like_the_diffusion_sampler(sde, step):
    """Same network, same prior draws: integrating u from tau = 0 to 1 is model.sample, to float error."""
    torch.manual_seed(0)
    model = d.Diffusion(2, sde=sde, sigma_data=0.8, hidden=16, depth=2,
                        sampler=ode.Solver(n_steps=7, step=step)).double()
    x_model = model.sample(200, torch.Generator().manual_seed(1))
    x1 = sde.prior_sample(200, 2, torch.Generator().manual_seed(1), dtype=F64)
    u = d.flow_matching_field(model.score, sde, model.t_min)
    x_bridge = model.sampler.transport(u, x1, t_base=0.0, t_data=1.0)
    assert torch.isfinite(x_model).all() and (x_model - x1).abs().mean() > 0.1  # the flow moved them
    assert_close(x_bridge, x_model, rtol=1e-10, atol=1e-10)


def test_a_wrong_time_map_is_caught():
    """The identity above is sharp: a field that stops at another t_min gives other samples."""
    torch.manual_seed(0)
    sde = d.VESDE(0.01, 50.0)
    model = d.Diffusion(1, sde=sde, sigma_data=0.5, hidden=16, depth=2, t_min=0.05).double()
    x1 = sde.prior_sample(100, 1, torch.Generator().manual_seed(1), dtype=F64)
    u = d.flow_matching_field(model.score, sde, t_min=0.02)  # the model stops at 0.05
    x_bridge = model.sampler.transport(u, x1, t_base=0.0, t_data=1.0)
    gap = (x_bridge - model.sample(100, torch.Generator().manual_seed(1))).abs().max()
    assert gap > 1e-6, gap  # a million times the tolerance of the identity above


def test_input_errors():
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="t must be a"):
        d.path_rates(PATHS["VP"], torch.rand(4, 1))
    with pytest.raises(ValueError, match="t_min"):
        d.flow_matching_field(lambda y, t: y, PATHS["VP"], t_min=1.0)
    with pytest.raises(ValueError, match="g\\(t\\)\\^2"):  # alpha = 1, sigma = 0.5: no noise is added
        d.score_from_velocity(x, x, 1.0, 0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="dtype"):
        d.velocity_from_score(x.float(), x, 1.0, 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        d.noise_from_score(torch.randn(4), 0.5)


def test_straight_path_rates_are_those_of_the_line():
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    a, s, da, ds = d.path_rates(d.StraightPath(), t)
    torch.testing.assert_close(a, 1 - t)
    torch.testing.assert_close(s, t)
    torch.testing.assert_close(da, -torch.ones_like(t))
    torch.testing.assert_close(ds, torch.ones_like(t))
