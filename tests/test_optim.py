"""minigen.optim: each optimizer step for step against torch.optim (float64), closed forms, errors."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import networks as mnn
from minigen import optim, train

# (ours, torch's, shared hyper-parameters): the pairs the book claims are equal.
PAIRS = [
    (optim.SGD, torch.optim.SGD, dict(lr=1e-3)),
    (optim.Momentum, torch.optim.SGD, dict(lr=1e-3, momentum=0.9)),
    (optim.Nesterov, lambda p, **h: torch.optim.SGD(p, nesterov=True, **h),
     dict(lr=1e-3, momentum=0.9)),
    (optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.1, eps=1e-10)),
    (optim.RMSProp, torch.optim.RMSprop, dict(lr=1e-2, alpha=0.99, eps=1e-8)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8)),
]
IDS = [p[0].__name__ for p in PAIRS]
X0 = torch.tensor([-0.5, 1.0], dtype=torch.float64)


def test_rosenbrock_minimum_is_zero_at_a_a2():
    for a, b in [(1.0, 100.0), (2.0, 5.0)]:
        x = torch.tensor([[a, a**2], [a + 0.1, a**2]], dtype=torch.float64)
        f = optim.rosenbrock(x, a, b)
        assert f[0] == 0 and f[1] > 0


def test_rosenbrock_gradient_matches_closed_form():
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(optim.rosenbrock(x).sum(), x)
    x1, x2 = x.detach().T
    expected = torch.stack([-2 * (1 - x1) - 400 * x1 * (x2 - x1**2), 200 * (x2 - x1**2)], 1)
    assert_close(g, expected)


def test_rosenbrock_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        optim.rosenbrock(torch.zeros(4, 3))


@pytest.mark.parametrize("ours, theirs, hyper", PAIRS, ids=IDS)
def test_step_for_step_equal_to_torch_on_rosenbrock(ours, theirs, hyper):
    path = optim.minimize(optim.rosenbrock, X0, ours, 300, **hyper)
    reference = optim.minimize(optim.rosenbrock, X0, theirs, 300, **hyper)
    assert_close(path, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours, theirs, hyper", PAIRS, ids=IDS)
def test_step_for_step_equal_to_torch_on_an_mlp_with_minigen_train(ours, theirs, hyper):
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = torch.cat([x, torch.sin(3 * x)], 1)

    def loss_fn(model, b):
        return ((model(b[:, :1]) - b[:, 1:]) ** 2).mean()

    params = []
    for make in (ours, theirs):
        torch.manual_seed(0)
        model = mnn.mlp(1, 1, hidden=8, depth=2).double()
        hp = dict(hyper, lr=min(hyper["lr"], 1e-2))
        train.train(model, loss_fn, make(model.parameters(), **hp), batch, 40, progress=False)
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert_close(params[0], params[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours, theirs, hyper", PAIRS, ids=IDS)
def test_a_vector_of_learning_rates_runs_independent_copies(ours, theirs, hyper):
    lrs = torch.tensor([[1e-4], [3e-4], [1e-3]], dtype=torch.float64)
    together = optim.minimize(optim.rosenbrock, X0.expand(3, 2), ours, 50, **dict(hyper, lr=lrs))
    for i in range(3):
        alone = optim.minimize(optim.rosenbrock, X0, ours, 50, **dict(hyper, lr=float(lrs[i])))
        assert_close(together[:, i], alone, rtol=1e-12, atol=1e-14)


def test_sgd_on_a_quadratic_contracts_by_one_minus_lr_lambda():
    lam, lr = 3.0, 0.1
    path = optim.minimize(lambda x: 0.5 * lam * x**2, torch.ones(1, dtype=torch.float64),
                          optim.SGD, 10, lr=lr)
    assert_close(path[:, 0], (1 - lr * lam) ** torch.arange(11, dtype=torch.float64))


def test_momentum_is_the_heavy_ball_recursion():
    """theta_{k+1} - theta_k = mu (theta_k - theta_{k-1}) - lr g_k (Polyak's form)."""
    lr, mu = 1e-3, 0.9
    path = optim.minimize(optim.rosenbrock, X0, optim.Momentum, 100, lr=lr, momentum=mu)
    x = path[1:-1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(optim.rosenbrock(x).sum(), x)
    assert_close(path[2:] - path[1:-1], mu * (path[1:-1] - path[:-2]) - lr * g)


def test_nesterov_is_sutskever_form_at_the_look_ahead_point():
    """Sutskever et al.: v <- mu v - lr grad f(theta + mu v); theta <- theta + v.

    The optimizer's iterate is the look-ahead point phi = theta + mu v.
    """
    lr, mu = 1e-3, 0.9
    path = optim.minimize(optim.rosenbrock, X0, optim.Nesterov, 200, lr=lr, momentum=mu)
    theta, v, phis = X0.clone(), torch.zeros(2, dtype=torch.float64), [X0.clone()]
    for _ in range(200):
        x = (theta + mu * v).requires_grad_(True)
        (g,) = torch.autograd.grad(optim.rosenbrock(x), x)
        v = mu * v - lr * g
        theta = theta + v
        phis.append(theta + mu * v)
    assert_close(path, torch.stack(phis))


def test_adagrad_with_a_constant_gradient_steps_lr_over_sqrt_k():
    c, lr = 2.5, 0.1
    path = optim.minimize(lambda x: c * x, torch.zeros(1, dtype=torch.float64), optim.AdaGrad, 20,
                          lr=lr)
    k = torch.arange(1, 21, dtype=torch.float64)
    assert_close(path[1:, 0], -lr * torch.cumsum(1 / k.sqrt(), 0))


def test_rmsprop_with_a_constant_gradient_steps_lr_over_sqrt_one_minus_alpha_k():
    c, lr, alpha = -3.0, 0.01, 0.9
    path = optim.minimize(lambda x: c * x, torch.zeros(1, dtype=torch.float64), optim.RMSProp, 20,
                          lr=lr, alpha=alpha, eps=0.0 + 1e-300)
    k = torch.arange(1, 21, dtype=torch.float64)
    assert_close(path[1:, 0], lr * torch.cumsum(1 / (1 - alpha**k).sqrt(), 0))


def test_adam_with_a_constant_gradient_steps_exactly_lr():
    """Bias correction makes m_hat = g and v_hat = g^2 for a constant g: every step is lr sign(g)."""
    path = optim.minimize(lambda x: 7.0 * x, torch.zeros(3, dtype=torch.float64), optim.Adam, 25,
                          lr=0.05, eps=1e-300)
    assert_close(path[1:], -0.05 * torch.arange(1, 26, dtype=torch.float64)[:, None].expand(25, 3))


def test_minimize_returns_every_iterate_and_starts_at_x0():
    path = optim.minimize(optim.rosenbrock, X0, optim.SGD, 0, lr=1e-3)
    assert path.shape == (1, 2) and torch.equal(path[0], X0)
    with pytest.raises(ValueError, match="n_steps"):
        optim.minimize(optim.rosenbrock, X0, optim.SGD, -1, lr=1e-3)


def test_steps_to_tolerance_known_answers():
    target = torch.zeros(1, dtype=torch.float64)
    geometric = 0.5 ** torch.arange(12, dtype=torch.float64)[:, None]  # 1, 1/2, ..., 1/2048
    assert float(optim.steps_to_tolerance(geometric, target, 0.01)) == 7  # 1/128 < 0.01 <= 1/64
    passing = torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)   # in, then out again
    assert math.isinf(float(optim.steps_to_tolerance(passing, target, 0.5)))
    both = torch.stack([geometric, geometric.flip(0)], 1)  # (T, 2 runs, 1)
    assert optim.steps_to_tolerance(both, target, 0.01).tolist() == [7.0, math.inf]


def test_steps_to_tolerance_rejects_bad_input():
    with pytest.raises(ValueError, match="tol must be positive"):
        optim.steps_to_tolerance(torch.zeros(3, 2), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="points of size"):
        optim.steps_to_tolerance(torch.zeros(3, 2), torch.zeros(3), 0.1)


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-1.0), "lr must be positive"),
    (lambda p: optim.SGD(p, lr=torch.tensor([1e-3, float("nan")])), "lr must be positive"),
    (lambda p: optim.Momentum(p, momentum=1.0), r"momentum must lie in \[0, 1\)"),
    (lambda p: optim.Nesterov(p, momentum=0.0), "Nesterov needs momentum > 0"),
    (lambda p: optim.AdaGrad(p, eps=0.0), "eps must be positive"),
    (lambda p: optim.RMSProp(p, alpha=1.5), r"alpha must lie in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"beta2 must lie in \[0, 1\)"),
])
def test_bad_hyper_parameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make([torch.zeros(2, requires_grad=True)])


@pytest.mark.parametrize("ours, theirs, hyper", PAIRS, ids=IDS)
def test_step_with_a_closure_returns_the_loss_and_takes_the_same_step(ours, theirs, hyper):
    results = []
    for make in (ours, theirs):
        x = X0.clone().requires_grad_(True)
        opt = make([x], **hyper)

        def closure():
            opt.zero_grad()
            loss = optim.rosenbrock(x)
            loss.backward()
            return loss

        losses = [float(opt.step(closure).detach()) for _ in range(5)]
        results.append((torch.tensor(losses, dtype=torch.float64), x.detach()))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])
    assert results[0][0][0] == float(optim.rosenbrock(X0))
