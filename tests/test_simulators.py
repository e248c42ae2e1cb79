"""Simulators: shapes, gradients, reproducibility, the reference sources, and known answers."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import simulators, sourcerer

TASKS = simulators.tasks()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_is_differentiable_reproducible_and_shaped(name):
    sim = TASKS[name]
    theta = sim.sample_source(64, gen()).double().requires_grad_(True)
    x = sim(theta, gen(1))
    assert x.shape == (64, sim.dim_x) and torch.isfinite(x).all()
    assert_close(x, sim(theta, gen(1)))
    (grad,) = torch.autograd.grad(x.sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(TASKS))
def test_reference_source_lies_in_the_box_and_has_the_stated_entropy(name):
    sim = TASKS[name]
    # uniform reference sources have edges, which bias the estimator (0.24 nats for SLCP's 5D box);
    # on the torus of the source's own box the estimate is unbiased up to noise
    side = {"two_moons": 2.0, "slcp": 6.0, "gmm": 0.5}.get(name)
    period = None if side is None else torch.full((sim.dim_theta,), side, dtype=torch.float64)
    theta = sim.sample_source(5000 if side is None else 3000, gen()).double()
    assert (theta > sim.low).all() and (theta < sim.high).all()
    assert abs(float(sourcerer.kl_entropy(theta, period=period)) - sim.source_entropy) < 0.05
    assert sim.source_entropy < sim.box_volume_log()


def test_wrong_theta_shape_names_the_task():
    with pytest.raises(ValueError, match="SLCP: theta must have shape"):
        simulators.SLCP()(torch.zeros(3, 4))


def test_two_moons_cannot_see_the_reflection():
    sim = simulators.TwoMoonsSimulator()
    theta = sim.sample_source(500, gen())
    reflected = -theta.flip(1)  # (t1, t2) -> (-t2, -t1)
    assert_close(sim(theta, gen(1)), sim(reflected, gen(1)))


def test_inverse_kinematics_straight_arm_points_up():
    x = simulators.InverseKinematics()(torch.zeros(1000, 4, dtype=torch.float64), gen())
    assert_close(x.mean(0), torch.tensor([0.0, 2.0], dtype=torch.float64), atol=1e-4, rtol=0)


def test_slcp_draws_have_the_stated_covariance():
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=torch.float64).expand(100_000, 5)
    x = simulators.SLCP()(theta, gen()).reshape(-1, 2)  # four draws per row
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor([[s1**2 + 1e-3, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-3]], dtype=torch.float64)
    assert_close(x.mean(0), torch.tensor([0.5, -1.0], dtype=torch.float64), atol=0.01, rtol=0)
    assert_close(torch.cov(x.T), cov, atol=0.01, rtol=0.01)


def test_gaussian_mixture_noise_has_the_mixture_variance():
    theta = torch.zeros(200_000, 2, dtype=torch.float64)
    x = simulators.GaussianMixtureSim()(theta, gen())
    assert_close(x.var(0), torch.full((2,), 0.5 * (1 + 0.01), dtype=torch.float64), atol=0.01, rtol=0)


def test_sir_matches_a_fine_step_solution_and_stays_a_fraction():
    theta = torch.tensor([[0.4, 0.125], [0.8, 0.1], [1.5, 0.3]], dtype=torch.float64)
    coarse, fine = simulators.SIR()(theta), simulators.SIR(substeps=64)(theta)
    assert_close(coarse, fine, atol=3e-3, rtol=0)
    assert (coarse > 0).all() and (coarse < 1).all()
    # early growth is exponential at rate beta - gamma
    i = simulators.SIR(substeps=64)(theta[:1])[0]
    t = torch.arange(1, 50, dtype=torch.float64) * 160 / 49
    assert_close((i[1] / i[0]).log() / (t[1] - t[0]), torch.tensor(0.275, dtype=torch.float64),
                 atol=1e-3, rtol=0)


def _sir_by_backprop(sir, theta):
    """The SIR steps written plainly, for autograd to differentiate through all of them."""
    from minigen.ode import rk4_step
    beta, gamma = theta[:, :1], theta[:, 1:]
    y = torch.tensor([math.log1p(-sir.i0), math.log(sir.i0)], dtype=theta.dtype).expand(len(theta), 2)
    f = lambda y, t: torch.cat([-beta * y[:, 1:].exp(), beta * y[:, :1].exp() - gamma], 1)
    out = []
    for _ in range(sir.dim_x):
        for _ in range(sir.substeps):
            y = rk4_step(f, y, torch.zeros(()), sir.t_max / sir.dim_x / sir.substeps)
        out.append(y[:, 1])
    return torch.stack(out, 1).exp()


def test_sir_forward_sensitivities_equal_backpropagation_through_the_steps():
    sir = simulators.SIR()
    theta = torch.stack([torch.linspace(0.05, 2.9, 7), torch.linspace(2.5, 0.01, 7)], 1).double()
    theta = torch.cat([theta, torch.tensor([[0.4, 0.125]], dtype=torch.float64)]).requires_grad_()
    x, x_ref = sir(theta), _sir_by_backprop(sir, theta)
    assert_close(x, x_ref, atol=1e-13, rtol=1e-12)
    w = torch.randn(x.shape, generator=gen(), dtype=torch.float64)
    (grad,) = torch.autograd.grad((x * w).sum(), theta)
    (grad_ref,) = torch.autograd.grad((x_ref * w).sum(), theta)
    assert_close(grad, grad_ref, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda t: sir(t)[:, ::8], (theta[:3].detach().requires_grad_(),))


def test_smeared_exponential_closed_form_equals_the_latent_integral_and_normalises():
    sim = simulators.SmearedExponential(0.5)
    x, _ = sim.simulate_joint(torch.full((500,), 1.3, dtype=torch.float64), gen())
    assert_close(sim.log_prob_quadrature(x, 1.3), sim.log_prob(x, 1.3), atol=1e-6, rtol=0)
    grid = torch.linspace(-5, 60, 200_001, dtype=torch.float64)[:, None]
    assert_close(torch.trapezoid(sim.log_prob(grid, 0.7).exp(), grid[:, 0]),
                 torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_smeared_exponential_joint_ratio_and_score_match_the_exponential_density():
    sim = simulators.SmearedExponential(0.5)
    _, z = sim.simulate_joint(torch.full((100,), 0.9, dtype=torch.float64), gen())
    expo = torch.distributions.Exponential
    assert_close(sim.joint_log_ratio(z, 0.8, 1.2),
                 expo(torch.tensor(0.8)).log_prob(z[:, 0]) - expo(torch.tensor(1.2)).log_prob(z[:, 0]))
    theta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    (score,) = torch.autograd.grad(expo(theta).log_prob(z[:, 0]).sum(), theta)
    assert_close(sim.joint_score(z, 0.9).sum(), score)


def test_joint_ratio_reweights_reference_samples_to_another_rate():
    sim = simulators.SmearedExponential(0.5)
    x_ref, z_ref = sim.simulate_joint(torch.full((400_000,), 1.0, dtype=torch.float64), gen())
    weighted = (sim.joint_log_ratio(z_ref, 1.2, 1.0).exp() * x_ref[:, 0]).mean()
    assert abs(float(weighted) - 1 / 1.2) < 0.01  # E[x | theta] = 1/theta


def test_smeared_exponential_rejects_bad_parameters():
    with pytest.raises(ValueError, match="sigma must be positive"):
        simulators.SmearedExponential(0.0)
    with pytest.raises(ValueError, match="must be positive"):
        simulators.SmearedExponential().simulate_joint(torch.tensor([1.0, -1.0]))


def test_stochastic_sir_counts_whole_people_and_has_no_gradient():
    sim = simulators.StochasticSIR()
    theta = sim.sample_source(200, gen()).requires_grad_(True)
    x = sim(theta, gen(1))
    assert x.shape == (200, sim.dim_x) == (200, 10) and not x.requires_grad
    counts = x * sim.population
    assert_close(counts, counts.round(), atol=1e-3, rtol=0)
    assert (x >= 0).all() and (x <= 1).all()
    assert_close(x, sim(theta, gen(1)))  # reproducible with a generator


@pytest.mark.parametrize("relaxed", [False, True])
def test_stochastic_sir_without_infection_thins_the_infected_binomially(relaxed):
    """beta = 0: each infected stays with q = exp(-gamma dt) per step, so after k steps
    I_k ~ Bin(I_0, q^k): mean I_0 q^k, variance I_0 q^k (1 - q^k). The relaxed chain matches
    mean and variance step by step, so the same formulas hold (its clipping at 0 is negligible
    for I_0 = 1000)."""
    sim = simulators.StochasticSIR(population=10_000, i0=1000, relaxed=relaxed)
    theta = torch.tensor([[0.0, 0.02]], dtype=torch.float64).expand(20_000, 2)
    counts = sim(theta, gen()) * sim.population  # (20000, 10)
    q = torch.exp(torch.tensor(-0.02 * sim.dt * sim.every, dtype=torch.float64)) ** torch.arange(1, 11)
    assert_close(counts.mean(0), 1000 * q, rtol=0.005, atol=0)
    assert_close(counts.var(0), 1000 * q * (1 - q), rtol=0.05, atol=0)


def test_relaxed_stochastic_sir_is_differentiable_and_close_to_the_binomial_chain():
    exact, relaxed = simulators.StochasticSIR(), simulators.StochasticSIR(relaxed=True)
    theta = torch.tensor([[0.4, 0.125]], dtype=torch.float64).expand(20_000, 2).clone().requires_grad_(True)
    x = relaxed(theta, gen())
    (grad,) = torch.autograd.grad(x.sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x_exact = exact(theta, gen(1))
    assert_close(x.detach().mean(0), x_exact.mean(0), atol=0.005, rtol=0)  # sd of a mean < 0.0005
    assert_close(x.detach().std(0), x_exact.std(0), atol=0.005, rtol=0.1)


def test_stochastic_sir_rejects_a_bad_setup():
    with pytest.raises(ValueError, match="i0"):
        simulators.StochasticSIR(population=5, i0=10)
    with pytest.raises(ValueError, match="every dividing n_steps"):
        simulators.StochasticSIR(n_steps=10, every=3)


def test_smeared_exponential_is_a_simulator_whose_call_drops_the_latent():
    sim = simulators.SmearedExponential(sigma=0.5)
    assert isinstance(sim, simulators.Simulator)
    theta = torch.full((50_000, 1), 1.3, dtype=torch.float64)
    x = sim(theta, torch.Generator().manual_seed(0))
    x_joint, z = sim.simulate_joint(theta[:, 0], torch.Generator().manual_seed(0))
    assert x.shape == (50_000, 1) and torch.equal(x, x_joint)      # same draws, latent dropped
    assert abs(float(x.mean()) - 1 / 1.3) < 4 * (1 / 1.3**2 + 0.25) ** 0.5 / 50_000**0.5  # E x = 1/theta
    src = sim.sample_source(10_000, torch.Generator().manual_seed(1))
    assert float(src.min()) >= 0.25 and float(src.max()) <= 4.0
    with pytest.raises(ValueError, match=r"theta must have shape \(n, 1\)"):
        sim(torch.ones(5), torch.Generator())
