"""Score matching and diffusion: closed forms for Gaussians, marginals, Langevin, samplers, likelihood."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, diffusion as df

SDES = [df.VPSDE(), df.VESDE()]


def gaussian(mean: list[float], std: list[float]) -> data.GaussianMixture:
    return data.GaussianMixture(torch.tensor([1.0]), torch.tensor([mean]), torch.tensor([std]))


def gaussian_score(p: data.GaussianMixture, sde) -> df.Score:
    return lambda x, t: df.mixture_score(p, x, sde.alpha(t), sde.sigma(t))


@pytest.mark.parametrize("sde", SDES, ids=["VP", "VE"])
def test_noising_marginals_match_closed_form(sde):
    """Euler-Maruyama on the forward SDE from x0 = 2 gives mean alpha_t x0 and std sigma_t."""
    g = torch.Generator().manual_seed(0)
    n, steps, t1 = 20_000, 200, 0.6
    x = torch.full((n, 1), 2.0, dtype=torch.float64)
    h = t1 / steps
    for k in range(steps):
        t = torch.full((n,), k * h, dtype=torch.float64)
        x = x + sde.drift(x, t) * h + sde.diffusion(t)[:, None] * math.sqrt(h) * \
            torch.randn(n, 1, generator=g, dtype=torch.float64)
    t = torch.tensor([t1], dtype=torch.float64)
    assert_close(x.mean(), 2 * sde.alpha(t)[0], atol=0.03, rtol=0.01)
    assert_close(x.std(), sde.sigma(t)[0], atol=0.0, rtol=0.03)


@pytest.mark.parametrize("sde", SDES, ids=["VP", "VE"])
def test_marginal_sample_has_mean_alpha_x0_and_variance_sigma_squared(sde):
    """Over 100,000 draws per row, x_t has mean alpha_t x0 and variance sigma_t^2 (eq-diff-marginal),
    each within 5 standard errors, and the coordinates are uncorrelated."""
    n = 100_000
    x0 = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64).repeat_interleave(n, 0)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64).repeat_interleave(n)
    xt, _ = df.marginal_sample(sde, x0, t, torch.Generator().manual_seed(3))
    for row, ti in enumerate([0.1, 0.7]):
        x, a0 = xt[row * n:(row + 1) * n], x0[row * n]
        tt = torch.tensor([ti], dtype=torch.float64)
        mean, var = sde.alpha(tt) * a0, sde.sigma(tt) ** 2
        assert_close(x.mean(0), mean, atol=5 * float(var.sqrt()) / math.sqrt(n), rtol=0)
        assert_close(x.var(0), var.expand(2), atol=0, rtol=5 * math.sqrt(2 / n))
        corr = torch.corrcoef(x.T)[0, 1]
        assert abs(float(corr)) < 5 / math.sqrt(n)

def test_vp_sde_alpha_obeys_its_ode_and_preserves_variance():
    """d alpha/dt = -beta alpha / 2 and alpha^2 + sigma^2 = 1."""
    sde = df.VPSDE()
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64).requires_grad_(True)
    (da,) = torch.autograd.grad(sde.alpha(t).sum(), t)
    assert_close(da, -0.5 * sde.beta(t) * sde.alpha(t))
    assert_close(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones(50, dtype=torch.float64))


def test_ve_sde_variance_rate_is_diffusion_squared():
    """d sigma_t^2/dt = g(t)^2 for the variance-exploding SDE."""
    sde = df.VESDE()
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64).requires_grad_(True)
    (dv,) = torch.autograd.grad((sde.sigma(t) ** 2).sum(), t)
    assert_close(dv, sde.diffusion(t) ** 2)


def test_denoising_target_averages_to_score_of_noised_gaussian():
    """E[-(x_t - a x0)/s^2 | x_t] is the score of N(a m, a^2 v + s^2) (the DSM identity).

    For Gaussian x0 ~ N(m, v) the posterior mean of x0 given x_t is closed form; averaging the
    conditional target over it gives exactly the marginal score."""
    m, v, a, s = 0.7, 0.5**2, 0.8, 0.6
    xt = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    post_mean = m + a * v / (a**2 * v + s**2) * (xt - a * m)  # E[x0 | xt]
    target = df.denoising_score_target(xt, post_mean, a, s)  # linear in x0: average = target at mean
    p = gaussian([m], [math.sqrt(v)]).noised(a, s)
    assert_close(target, p.score(xt))
    assert_close(df.mixture_score(gaussian([m], [math.sqrt(v)]), xt, a, s), p.score(xt))


def test_dsm_loss_minimiser_is_noised_score():
    """DSM(s) - DSM(true noised score) = Fisher divergence to the noised score (up to MC error)."""
    p = gaussian([0.5], [0.8])
    sigma = 0.4
    noised = p.noised(1.0, sigma)
    x0 = p.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    best = df.dsm_loss(noised.score, x0, sigma, torch.Generator().manual_seed(1))
    clean = df.dsm_loss(p.score, x0, sigma, torch.Generator().manual_seed(1))
    gap = df.fisher_divergence(p.score, noised.score, noised.sample(200_000, torch.Generator().manual_seed(2),
                                                                      dtype=torch.float64))
    assert best < clean
    assert_close(clean - best, gap, rtol=0.03, atol=1e-3)


def test_tweedie_denoiser_is_posterior_mean_for_gaussian():
    m, sd, a, s = -0.3, 0.9, 0.6, 0.7
    xt = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    p = gaussian([m], [sd])
    post_mean = m + a * sd**2 / (a**2 * sd**2 + s**2) * (xt - a * m)
    assert_close(df.tweedie_denoiser(p.noised(a, s).score(xt), xt, a, s), post_mean)


def test_implicit_score_matching_equals_fisher_minus_constant():
    """ISM(s) = Fisher(s) - 1/2 E|grad log p|^2: for p = N(0, 1) and s(x) = -c x,
    ISM = -c + c^2/2 E x^2 and Fisher = (c - 1)^2/2 E x^2 (equal in expectation)."""
    x = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ex2 = (x**2).mean()
    for c in (0.5, 1.0, 2.0):
        ism = df.implicit_score_matching_loss(lambda y: -c * y, x)
        fisher = df.fisher_divergence(lambda y: -c * y, lambda y: -y, x)
        assert_close(ism, -c + 0.5 * c**2 * ex2)
        assert_close(ism, fisher - 0.5 * ex2, atol=0.02, rtol=0)


def test_langevin_with_exact_score_keeps_gaussian_moments():
    p = gaussian([1.0, -2.0], [0.5, 1.5])
    g = torch.Generator().manual_seed(0)
    x = p.sample(20_000, g, dtype=torch.float64)
    y = df.langevin(p.score, x, step_size=0.005, n_steps=200, generator=g)
    assert_close(y.mean(0), p.means[0], atol=0.03, rtol=0)
    assert_close(y.std(0), p.stds[0], atol=0, rtol=0.03)


def test_annealed_langevin_from_wide_noise_reaches_gaussian():
    sde = df.VESDE(sigma_min=0.01, sigma_max=5.0)
    p = gaussian([1.0, -1.0], [0.5, 0.5])
    g = torch.Generator().manual_seed(0)
    x = sde.prior_sample(5_000, 2, g).double()
    ts = torch.linspace(1, 0.05, 20, dtype=torch.float64)
    y = df.annealed_langevin(gaussian_score(p, sde), sde, x, ts, n_steps=20, step_size=2e-4,
                             generator=g)
    assert_close(y.mean(0), p.means[0], atol=0.04, rtol=0)
    assert_close(y.std(0), p.stds[0], atol=0.04, rtol=0)


@pytest.mark.parametrize("sde", SDES, ids=["VP", "VE"])
def test_probability_flow_transports_noised_gaussian_onto_gaussian(sde):
    """The ODE with the exact score maps p_1 onto p = N(m, diag(s^2)), by the affine map
    x0 = m + s / s_1 (x1 - a_1 m) that matches the two Gaussians coordinate by coordinate."""
    p = gaussian([1.0, -0.5], [0.5, 0.8])
    one = torch.tensor([1.0], dtype=torch.float64)
    p1 = p.noised(float(sde.alpha(one)), float(sde.sigma(one)))
    x1 = p1.sample(4_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = df.ode_sample(gaussian_score(p, sde), sde, x1, n_steps=60, t_min=1e-5,
                       step=df.ode.rk4_step)
    assert_close(x0.mean(0), p.means[0], atol=0.04, rtol=0)
    assert_close(x0.std(0), p.stds[0], atol=0.0, rtol=0.04)
    expected = p.means[0] + p.stds[0] / p1.stds[0] * (x1 - p1.means[0])
    assert_close(x0, expected, atol=2e-3, rtol=0)


def test_probability_flow_from_vp_prior_transports_standard_normal_onto_gaussian():
    """Under VP, p_1 is N(0, I) up to alpha_1 = 0.0066: the prior itself is transported onto p."""
    sde, p = df.VPSDE(), gaussian([1.0, -0.5], [0.5, 0.8])
    x1 = sde.prior_sample(4_000, 2, torch.Generator().manual_seed(0)).double()
    x0 = df.ode_sample(gaussian_score(p, sde), sde, x1, n_steps=40, t_min=1e-5)
    assert_close(x0.mean(0), p.means[0], atol=0.05, rtol=0)
    assert_close(x0.std(0), p.stds[0], atol=0.0, rtol=0.04)


def test_reverse_sde_with_exact_score_samples_gaussian():
    sde = df.VPSDE()
    p = gaussian([1.0, -0.5], [0.5, 0.8])
    g = torch.Generator().manual_seed(0)
    x = df.reverse_sde_sample(gaussian_score(p, sde), sde, sde.prior_sample(5_000, 2, g).double(),
                              n_steps=200, generator=g)
    assert_close(x.mean(0), p.means[0], atol=0.05, rtol=0)
    assert_close(x.std(0), p.stds[0], atol=0, rtol=0.05)


def test_ode_log_prob_with_exact_score_equals_true_log_density():
    """VP's prior is (almost exactly) its t = 1 marginal, so the likelihood is exact."""
    sde, p = df.VPSDE(), data.mixture_2d()
    x = p.sample(200, torch.Generator().manual_seed(0), dtype=torch.float64)
    lp = df.ode_log_prob(gaussian_score(p, sde), sde, x, n_steps=40, t_min=1e-4)
    assert_close(lp, p.log_prob(x), atol=0.02, rtol=0)


def test_ode_log_prob_hutchinson_is_unbiased():
    sde, p = df.VPSDE(), gaussian([0.5, 0.0], [0.7, 1.2])
    x = p.sample(4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    lp = df.ode_log_prob(gaussian_score(p, sde), sde, x, n_steps=20, t_min=1e-4,
                         divergence=lambda f, y, t: df.ode.divergence_hutchinson(f, y, t, g))
    assert_close(lp.mean(), p.log_prob(x).mean(), atol=0.03, rtol=0)


def test_score_net_with_a_zero_network_is_the_exact_gaussian_score():
    """With F = 0 the preconditioned network is exact for data N(0, sigma_data^2 I): under VP,
    x_t ~ N(0, (a^2 sigma_data^2 + s^2) I), whose score is -x / (a^2 sigma_data^2 + s^2)."""
    sde, sigma_data = df.VPSDE(), 0.7
    torch.manual_seed(0)
    net = df.ScoreNet(sde, 2, sigma_data=sigma_data, hidden=16, depth=2).double()
    for p in net.net.parameters():
        torch.nn.init.zeros_(p)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 0.98 + 0.01
    var = sde.alpha(t) ** 2 * sigma_data**2 + sde.sigma(t) ** 2  # (5,)
    assert_close(net(x, t), -x / var[:, None])
    assert_close(net.eps(x, t), sde.sigma(t)[:, None] * x / var[:, None])


def test_diffusion_loss_reaches_every_parameter():
    torch.manual_seed(0)
    net = df.ScoreNet(df.VPSDE(), 2, hidden=16, depth=2).double()
    df.diffusion_loss(net, torch.randn(64, 2, dtype=torch.float64)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


class _ExactEps(torch.nn.Module):
    """Noise predictor of N(0, 1) data under VP, where p_t = N(0, 1): eps = sigma_t x_t."""
    sde = df.VPSDE()

    def eps(self, x, t):
        return self.sde.sigma(t)[:, None] * x


def test_diffusion_loss_of_exact_predictor_is_mean_alpha_squared():
    """x_t = a x0 + s eps gives s x_t - eps = a (s x0 - a eps), of variance a^2: loss = E_t a_t^2."""
    sde, t_min = df.VPSDE(), 1e-3
    torch.manual_seed(0)
    x0 = torch.randn(400_000, 1, dtype=torch.float64)
    t = torch.linspace(t_min, 1, 100_001, dtype=torch.float64)
    expected = torch.trapezoid(sde.alpha(t) ** 2, t) / (1 - t_min)
    assert_close(df.diffusion_loss(_ExactEps(), x0, t_min), expected, rtol=0.01, atol=0)


def test_bad_shapes_raise_clear_errors():
    net = df.ScoreNet(df.VPSDE(), 2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="t has 3 entries but x has 5 rows"):
        net(torch.randn(5, 2), torch.rand(3))
    with pytest.raises(ValueError, match="shape"):
        df.mixture_score(data.mixture_2d(), torch.randn(5, 3), 1.0, 0.5)


@pytest.mark.parametrize("sde", SDES, ids=["VP", "VE"])
def test_score_net_with_zero_correction_is_exact_gaussian_score(sde):
    """With F = 0 the network is the exact score of N(0, sigma_data^2) noised to time t."""
    net = df.ScoreNet(sde, 2, sigma_data=0.7, hidden=8, depth=1).double()
    for prm in net.net.net[-1].parameters():
        torch.nn.init.zeros_(prm)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    p = gaussian([0.0, 0.0], [0.7, 0.7])
    assert_close(net(x, t), df.mixture_score(p, x, sde.alpha(t), sde.sigma(t)))


def test_loss_weight_makes_the_noise_loss_a_unit_weight_loss_on_the_network_output():
    """eps_theta depends on the network F linearly: moving F's output by delta moves lambda_t^(1/2)
    eps_theta by a vector of norm |delta|, at every noise level (eq-diff-loss)."""
    for sde in SDES:
        torch.manual_seed(0)
        net = df.ScoreNet(sde, 2, sigma_data=0.5, hidden=8, depth=1).double()
        x = torch.randn(5, 2, dtype=torch.float64)
        t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
        before = net.eps(x, t)
        delta = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |delta| = 0.5
        with torch.no_grad():
            net.net.net[-1].bias.add_(delta)
        moved = ((net.eps(x, t) - before) ** 2).sum(1)  # (5,)
        assert_close(net.loss_weight(t) * moved, torch.full((5,), 0.25, dtype=torch.float64))

def test_stable_target_with_only_the_source_point_is_the_plain_noise():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.4], dtype=torch.float64)
    sde = df.VPSDE()
    xt, eps = df.marginal_sample(sde, x0, t, g)
    assert_close(df.stable_noise_target(xt, x0, sde.alpha(t), sde.sigma(t)), eps)


def test_stable_target_on_a_large_reference_is_minus_sigma_times_noised_score():
    """E[eps | x_t] = -sigma_t grad log p_t(x_t) (Tweedie), estimated on 200,000 reference points."""
    p = gaussian([0.5], [0.8])
    ref = p.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = torch.linspace(-1.5, 2.0, 8, dtype=torch.float64)[:, None]
    a, s = torch.full((8,), 0.9, dtype=torch.float64), torch.full((8,), 0.6, dtype=torch.float64)
    expected = -0.6 * p.noised(0.9, 0.6).score(xt)
    assert_close(df.stable_noise_target(xt, ref, a, s), expected, atol=0.01, rtol=0)


def test_grouped_stable_target_is_the_plain_noise_when_each_group_holds_one_point():
    """Groups are consecutive blocks of stable_target points, each the reference of its own block:
    with stable_target = 1, or with blocks of identical points, the posterior mean of x_0 is the
    point itself and the target is the plain noise, so the loss equals the plain loss on the same
    draws. Mixing two distinct points in one block changes it."""
    sde = df.VESDE()
    torch.manual_seed(0)
    net = df.ScoreNet(sde, 2, sigma_data=0.7, hidden=8, depth=1).double()
    a = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    b = a + torch.tensor([[0.2, -0.1]], dtype=torch.float64)  # close: a block mixing them averages them
    x0 = torch.cat([a, a, a, b, b, b])  # blocks of 3 identical points

    def loss(k):
        torch.manual_seed(1)  # the same times and noise for every k
        with torch.no_grad():
            return df.diffusion_loss(net, x0, stable_target=k)

    plain = loss(0)
    assert_close(loss(1), plain)
    assert_close(loss(3), plain)
    assert abs(float(loss(6) - plain)) > 1e-6  # a and b share a block: the target averages
    assert abs(float(loss(2) - plain)) > 1e-6  # the block (a, b) in the middle
    with pytest.raises(ValueError, match="multiple of stable_target"):
        df.diffusion_loss(net, x0, stable_target=4)
    with pytest.raises(TypeError, match="group size"):
        df.diffusion_loss(net, x0, stable_target=True)  # a bool would silently mean groups of 1

@pytest.mark.parametrize("sde", SDES, ids=["VP", "VE"])
def test_probability_flow_solves_the_continuity_equation_of_the_noised_gaussian(sde):
    """With the exact score of p_t = N(alpha_t m, alpha_t^2 s^2 + sigma_t^2) (diagonal), the
    probability-flow velocity v satisfies d/dt log p_t + div v + v . grad log p_t = 0 pointwise
    (eq-diff-pf-ode), checked with autograd in float64 at 12 points and 4 times."""
    p = gaussian([1.0, -0.5], [0.5, 0.8])
    v = df.probability_flow(gaussian_score(p, sde), sde)
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for ti in (0.05, 0.3, 0.6, 0.95):
        t = torch.full((12,), ti, dtype=torch.float64, requires_grad=True)
        y = x.clone().requires_grad_(True)
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        var = a**2 * p.stds[0] ** 2 + s**2  # (12, 2)
        log_pt = (-0.5 * (y - a * p.means[0]) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)
        (dlogp_dt,) = torch.autograd.grad(log_pt.sum(), t, retain_graph=True)
        (grad_logp,) = torch.autograd.grad(log_pt.sum(), y, retain_graph=True)
        vel = v(y, t.detach())
        div = sum(torch.autograd.grad(vel[:, i].sum(), y, retain_graph=True)[0][:, i] for i in range(2))
        residual = dlogp_dt + div + (vel * grad_logp).sum(1)
        scale = (dlogp_dt.abs() + div.abs() + (vel * grad_logp).sum(1).abs()).detach()
        assert float(scale.mean()) > 0.1  # the terms are not all zero: the check has something to cancel
        assert_close(residual, torch.zeros(12, dtype=torch.float64), atol=1e-8 * float(scale.max()), rtol=0)
