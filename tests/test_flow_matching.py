"""minigen.flow_matching: interpolant identities, couplings, the loss, sampling and densities."""
import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import flow_matching as fm
from minigen import ode

F64 = dict(dtype=torch.float64)
INTERPOLANTS = [fm.LinearInterpolant(), fm.TrigonometricInterpolant()]


def pair(n=8, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, **F64, generator=g), torch.randn(n, d, **F64, generator=g) + 2


@pytest.mark.parametrize("path", INTERPOLANTS, ids=lambda p: type(p).__name__)
def test_interpolant_starts_at_x0_and_ends_at_x1(path):
    x0, x1 = pair()
    assert_close(path(x0, x1, torch.zeros(8, **F64)), x0)
    assert_close(path(x0, x1, torch.ones(8, **F64)), x1)


@pytest.mark.parametrize("path", INTERPOLANTS, ids=lambda p: type(p).__name__)
def test_regression_target_is_the_autograd_time_derivative_of_the_interpolant(path):
    x0, x1 = pair()
    t = torch.rand(8, **F64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    xt = path(x0, x1, t)  # row i depends on t[i] only, so d xt[:, j].sum() / dt = d xt[:, j] / dt
    dxdt = torch.stack([torch.autograd.grad(xt[:, j].sum(), t, retain_graph=True)[0]
                        for j in range(3)], 1)
    assert_close(path.velocity(x0, x1, t.detach()), dxdt)


def test_cfm_loss_is_zero_for_the_exact_velocity_of_a_deterministic_shift():
    x0, _ = pair()
    shift = torch.tensor([1.0, -2.0, 0.5], **F64)
    model = lambda x, t: shift.expand_as(x)
    assert float(fm.cfm_loss(model, x0, x0 + shift)) < 1e-28


def test_cfm_loss_regresses_on_the_straight_line_at_uniform_times():
    """On the line x_t = x0 + t (x1 - x0), the field (x - x0)/t recovers u = x1 - x0 exactly at the
    time it is given, so its loss is 0; the field u + t e misses by t e, so its loss is
    |e|^2 E t^2 = |e|^2 / 3 for t ~ U(0, 1) (over 200,000 pairs, within 5 standard errors)."""
    x0, x1 = pair(n=200_000, d=2)
    exact = lambda x, t: (x - x0) / t[:, None]
    assert float(fm.cfm_loss(exact, x0, x1, generator=torch.Generator().manual_seed(3))) < 1e-20
    e = torch.tensor([1.0, -2.0], **F64)  # |e|^2 = 5
    off = lambda x, t: (x1 - x0) + t[:, None] * e
    loss = fm.cfm_loss(off, x0, x1, generator=torch.Generator().manual_seed(3))
    se = 5 * math.sqrt(4 / 45) / math.sqrt(200_000)  # sd of t^2 for t ~ U(0, 1) is sqrt(4/45)
    assert abs(float(loss) - 5 / 3) < 5 * se


def test_marginal_velocity_minimises_the_loss_by_pythagoras():
    # independent coupling N(0, 1) -> N(m, s^2) in 1D: x_t is Gaussian and
    # v*(x, t) = E[x1 - x0 | x_t = x] = m + c_t (x - t m) / var_t, c_t = t s^2 - (1 - t)
    m, s, n = 1.5, 0.5, 400_000
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(n, 1, **F64, generator=g)
    x1 = m + s * torch.randn(n, 1, **F64, generator=g)

    def v_star(x, t):
        t = t[:, None]
        return m + (t * s**2 - (1 - t)) * (x - t * m) / ((1 - t) ** 2 + t**2 * s**2)

    delta = lambda x, t: 0.3 * torch.cos(x)
    base = fm.cfm_loss(v_star, x0, x1, generator=torch.Generator().manual_seed(5))
    off = fm.cfm_loss(lambda x, t: v_star(x, t) + delta(x, t), x0, x1,
                      generator=torch.Generator().manual_seed(5))
    t = torch.rand(n, **F64, generator=torch.Generator().manual_seed(5))
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    assert_close(off - base, (delta(xt, t) ** 2).sum(1).mean(), rtol=0.02, atol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_minibatch_ot_coupling_matches_brute_force_over_permutations(d):
    for seed in range(3):
        x0, x1 = pair(n=6, d=d, seed=seed)
        cost = lambda y1: float(((x0 - y1) ** 2).sum())
        best = min(cost(x1[list(p)]) for p in itertools.permutations(range(6)))
        a0, a1 = fm.ot_coupling(x0, x1)
        assert_close(a0, x0)
        assert cost(a1) == pytest.approx(best, rel=1e-12)
        assert_close(a1.sort(0).values, x1.sort(0).values)  # a re-pairing, nothing lost


def test_independent_coupling_keeps_crossed_pairs_that_ot_uncrosses():
    """The product coupling leaves the pairs as drawn, even the worst pairing (increasing x0 with
    decreasing x1); the OT coupling of the same batch re-pairs them monotonically."""
    x0 = torch.linspace(-2, 2, 9, **F64)[:, None]
    x1 = torch.linspace(3, -1, 9, **F64)[:, None]  # crossed: every pair swapped end to end
    cost = lambda a, b: float(((a - b) ** 2).sum())
    a0, a1 = fm.independent_coupling(x0, x1)
    assert torch.equal(a0, x0) and torch.equal(a1, x1)
    o0, o1 = fm.ot_coupling(x0, x1)
    assert torch.equal(o1, x1.flip(0)) and cost(o0, o1) < cost(a0, a1)


def test_ot_coupling_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="x0 and x1 must both be"):
        fm.ot_coupling(torch.zeros(4, 2), torch.zeros(5, 2))


def test_sample_follows_the_ode_and_one_euler_step_is_exact_on_straight_constant_fields():
    x0, _ = pair()
    shift = torch.tensor([1.0, -2.0, 0.5], **F64)
    assert_close(fm.sample(lambda x, t: shift.expand_as(x), x0, n_steps=1), x0 + shift)
    f = lambda x, t: -x * t[:, None]
    assert_close(fm.sample(f, x0, 10, ode.rk4_step), ode.odeint(f, x0, 0.0, 1.0, 10, ode.rk4_step))


def test_log_prob_of_a_linear_flow_is_the_pushforward_density_at_the_end_point():
    # v(x, t) = a x carries N(0, 1) at t = 0 to N(0, e^{2a}) at t = 1
    a = 0.7
    base = torch.distributions.Normal(torch.tensor(0.0, **F64), 1.0)
    target = torch.distributions.Normal(torch.tensor(0.0, **F64), math.exp(a))
    x = torch.linspace(-3, 3, 7, **F64)[:, None]
    logq = fm.log_prob(lambda y, t: a * y, x, lambda z: base.log_prob(z[:, 0]), n_steps=50)
    assert_close(logq, target.log_prob(x[:, 0]))
    start = x * math.exp(-a)  # the ODE's starting points for these end points
    assert not torch.allclose(logq, target.log_prob(start[:, 0]), atol=1e-2)  # the peer's pairing


def test_path_energy_of_straight_lines_is_the_mean_squared_displacement():
    x0, x1 = pair()
    t = torch.linspace(0, 1, 11, **F64)[:, None, None]
    straight = (1 - t) * x0 + t * x1  # (11, 8, 3)
    assert_close(fm.path_energy(straight), ((x1 - x0) ** 2).sum(1).mean())
    bent = straight + torch.sin(math.pi * t) * torch.tensor([1.0, 0.0, 0.0], **F64)
    assert fm.path_energy(bent) > fm.path_energy(straight)


def test_normalised_path_energy_is_zero_for_optimally_paired_straight_lines_only():
    x0, x1 = fm.ot_coupling(*pair(n=20, d=2))
    t = torch.linspace(0, 1, 5, **F64)[:, None, None]
    assert fm.normalised_path_energy((1 - t) * x0 + t * x1) == pytest.approx(0.0, abs=1e-12)
    shuffled = x1.roll(1, dims=0)
    assert fm.normalised_path_energy((1 - t) * x0 + t * shuffled) > 0.1


def test_path_energy_rejects_a_single_state():
    with pytest.raises(ValueError, match="path must be"):
        fm.path_energy(torch.zeros(1, 4, 2))
