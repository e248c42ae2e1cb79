"""minigen.ode: solver orders on exact solutions, NFE counts, divergences, the change of variables."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import ode

F64 = dict(dtype=torch.float64)
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.3]], **F64)  # a damped rotation
ORDERS = [(ode.euler_step, 1), (ode.midpoint_step, 2), (ode.heun_step, 2), (ode.rk4_step, 4)]


def linear(x, t):
    return x @ A.T  # dx/dt = A x, so x(t) = expm(A t) x0


def x0():
    return torch.tensor([[1.0, 0.0], [0.3, -0.7]], **F64)


@pytest.mark.parametrize("step,order", ORDERS, ids=lambda s: getattr(s, "__name__", s))
def test_each_solver_converges_on_a_linear_field_at_its_order(step, order):
    exact = x0() @ torch.linalg.matrix_exp(A).T
    errors = [float((ode.odeint(linear, x0(), 0.0, 1.0, n, step) - exact).norm()) for n in (20, 40, 80)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.15 for r in rates), (errors, rates)


@pytest.mark.parametrize("step,order", ORDERS, ids=lambda s: getattr(s, "__name__", s))
def test_each_solver_converges_on_a_time_dependent_field_at_its_order(step, order):
    # dx/dt = t x has x(1) = x0 exp(1/2): a solver that mishandles t loses its order here
    errors = [float((ode.odeint(lambda x, t: t[:, None] * x, x0(), 0.0, 1.0, n, step)
                     - x0() * math.exp(0.5)).norm()) for n in (20, 40)]
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.2


def test_rk4_matches_the_matrix_exponential_to_high_accuracy():
    exact = x0() @ torch.linalg.matrix_exp(A).T
    assert_close(ode.odeint(linear, x0(), 0.0, 1.0, 200, ode.rk4_step), exact, rtol=0, atol=1e-9)


def test_integrating_backwards_inverts_integrating_forwards():
    x1 = ode.odeint(linear, x0(), 0.0, 1.0, 200, ode.rk4_step)
    assert_close(ode.odeint(linear, x1, 1.0, 0.0, 200, ode.rk4_step), x0(), rtol=0, atol=1e-10)


def test_return_path_has_all_states_from_start_to_end():
    path = ode.odeint(linear, x0(), 0.0, 1.0, 7, ode.heun_step, return_path=True)
    assert path.shape == (8, 2, 2)
    assert_close(path[0], x0())
    assert_close(path[-1], ode.odeint(linear, x0(), 0.0, 1.0, 7, ode.heun_step))


@pytest.mark.parametrize("step", [s for s, _ in ORDERS], ids=lambda s: s.__name__)
def test_nfe_counts_the_field_evaluations_per_step(step):
    calls = []

    def f(x, t):
        calls.append(1)
        return linear(x, t)

    ode.odeint(f, x0(), 0.0, 1.0, 5, step)
    assert len(calls) == 5 * ode.NFE[step]


def test_odeint_rejects_zero_steps():
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        ode.odeint(linear, x0(), n_steps=0)


def field(x, t):
    """A nonlinear field with a full Jacobian."""
    return torch.stack([torch.sin(x[:, 1]) * x[:, 0] + t, x[:, 0] ** 2 - torch.tanh(x[:, 1] * t)], 1)


def test_exact_divergence_is_the_trace_of_the_autograd_jacobian():
    x = torch.randn(5, 2, **F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 5, **F64)
    v, div = ode.divergence_exact(field, x, t)
    traces = torch.stack([torch.autograd.functional.jacobian(lambda z: field(z[None], t[i:i + 1])[0],
                                                             x[i]).trace() for i in range(5)])
    assert_close(v, field(x, t))
    assert_close(div, traces)


def test_hutchinson_is_exact_for_a_diagonal_jacobian_and_unbiased_for_a_full_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, **F64, generator=g)
    t = torch.full((4,), 0.5, **F64)
    diagonal = lambda z, s: torch.sin(z) * s[:, None]  # eps^T diag(J) eps = Tr J since eps_i^2 = 1
    assert_close(ode.divergence_hutchinson(diagonal, x, t, g)[1], ode.divergence_exact(diagonal, x, t)[1])
    xs = x[:1, :2].expand(20_000, 2)
    ts = torch.full((20_000,), 0.5, **F64)
    est = ode.divergence_hutchinson(field, xs, ts, g)[1].mean()
    assert_close(est, ode.divergence_exact(field, x[:1, :2], ts[:1])[1][0], rtol=0, atol=0.05)


def test_change_of_variables_of_a_linear_flow_matches_the_gaussian_pushforward():
    # x(1) = expm(A) x(0) with x(0) ~ N(0, I) is N(0, E E^T), E = expm(A)
    E = torch.linalg.matrix_exp(A)
    target = torch.distributions.MultivariateNormal(torch.zeros(2, **F64), E @ E.T)
    base = torch.distributions.MultivariateNormal(torch.zeros(2, **F64), torch.eye(2, **F64))
    x = torch.randn(6, 2, **F64, generator=torch.Generator().manual_seed(2))
    x_start, ell = ode.odeint_with_divergence(linear, x, 1.0, 0.0, 100, ode.rk4_step)
    assert_close(ell, torch.full((6,), -float(A.trace()), **F64))  # div f = Tr A, integrated 1 -> 0
    assert_close(base.log_prob(x_start) + ell, target.log_prob(x))
