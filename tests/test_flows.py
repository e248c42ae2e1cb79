"""Identities of minigen.flows: every transform in one list (zuko-style)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.testing import assert_close

from minigen import flows, train


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its (possibly zero) initial value, so that no gradient is zero by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _transforms() -> list[tuple[str, flows.Transform, int]]:
    return [
        ("affine-1d", flows.Affine(1), 1),
        ("affine-3d", flows.Affine(3), 3),
        ("monotone", flows.MonotoneIntegral(hidden=16, depth=2, n_nodes=16), 1),
        ("coupling-2d", flows.AffineCoupling([1, 0], hidden=16), 2),
        ("coupling-3d", flows.AffineCoupling([0, 1, 0], hidden=16), 3),
        ("monotone-flow", flows.monotone_flow(hidden=16, n_nodes=16), 1),
        ("coupling-flow", flows.coupling_flow(2, n_layers=3, hidden=16), 2),
        ("coupling-flow-3d", flows.coupling_flow(3, n_layers=3, hidden=16), 3),
    ]


TRANSFORMS = _transforms()
IDS = [name for name, _, _ in TRANSFORMS]


@pytest.fixture(params=range(len(TRANSFORMS)), ids=IDS)
def case(request) -> tuple[flows.Transform, int]:
    _, tr, d = _transforms()[request.param]
    return _randomise(tr.double(), seed=request.param), d


def _points(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_inverse_round_trip(case):
    tr, d = case
    x = _points(64, d)
    z, ld = tr(x)
    x_back, ld_inv = tr.inverse(z)
    assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    assert_close(ld_inv, -ld, atol=1e-9, rtol=1e-9)  # log|det J_{f^-1}(z)| = -log|det J_f(x)|


def test_logdet_matches_autograd_jacobian(case):
    tr, d = case
    x = _points(6, d, seed=1)
    _, ld = tr(x)
    for i in range(len(x)):
        jac = jacobian(lambda v: tr(v[None])[0][0], x[i])  # (d, d)
        assert_close(ld[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-9, rtol=1e-9)


def test_every_parameter_receives_a_gradient(case):
    tr, d = case
    x = _points(32, d, seed=2).requires_grad_()
    z, ld = tr(x)
    (z.pow(2).sum() + ld.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in tr.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: gradient is zero"


def test_monotone_flow_density_integrates_to_one():
    flow = _randomise(flows.monotone_flow(hidden=16, n_nodes=16).double())
    with torch.no_grad():
        # integrate over the preimage of [-9, 9] in the base: it holds all but ~2e-19 of the mass,
        # wherever this random flow puts it (a fixed interval missed 8e-4 for some initialisations)
        lo, hi = flow.inverse(torch.tensor([[-9.0], [9.0]], dtype=torch.float64))[0][:, 0]
        t = torch.linspace(float(lo), float(hi), 20_001, dtype=torch.float64)[:, None]
        mass = torch.trapezoid(flow.log_prob(t).exp(), t[:, 0])
    # The log-det is log h(x) exactly, f only up to Gauss-Legendre error, so the mass is 1 up to that
    # error: below 1e-6 for 199 of 200 random initialisations, 4.6e-6 for one whose preimage reaches x = 77.
    assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_coupling_flow_density_integrates_to_one_on_a_grid():
    flow = _randomise(flows.coupling_flow(2, n_layers=2, hidden=8), std=0.1).double()
    s = torch.linspace(-12, 12, 801, dtype=torch.float64)
    X, Y = torch.meshgrid(s, s, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)).exp().reshape(801, 801)
    mass = torch.trapezoid(torch.trapezoid(p, s, dim=1), s)
    assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-4, rtol=0)


def test_gauss_legendre_is_exact_for_polynomials_of_degree_below_2k():
    s, w = flows.gauss_legendre(8)
    for degree in range(16):  # int_0^1 s^j ds = 1 / (j + 1)
        assert_close((w * s**degree).sum(), torch.tensor(1 / (degree + 1), dtype=torch.float64))


def test_monotone_integral_matches_a_fine_integral():
    tr = _randomise(flows.MonotoneIntegral(hidden=16, n_nodes=16).double())
    x = torch.tensor([[-3.0], [0.7], [2.5]], dtype=torch.float64)
    with torch.no_grad():
        for xi, fi in zip(x[:, 0], tr(x)[0][:, 0]):
            t = torch.linspace(0, float(xi), 20_001, dtype=torch.float64)[:, None]
            exact = tr.c + torch.trapezoid(tr.integrand(t)[:, 0], t[:, 0])
            assert_close(fi, exact[0], atol=1e-7, rtol=1e-7)


def _two_affine_flow() -> tuple[flows.Flow, torch.Tensor, torch.Tensor]:
    """x = b1 + e^{a1} (b2 + e^{a2} z), z ~ N(0, I): the law N(b1 + e^{a1} b2, diag e^{2 (a1 + a2)})."""
    first, second = flows.Affine(2).double(), flows.Affine(2).double()
    with torch.no_grad():
        first.loc.copy_(torch.tensor([1.0, -2.0])), first.log_scale.copy_(torch.tensor([0.3, -0.5]))
        second.loc.copy_(torch.tensor([0.5, 0.25])), second.log_scale.copy_(torch.tensor([-0.2, 0.9]))
    flow = flows.Flow([first, second], flows.StandardNormal(2))
    mean = torch.tensor([1.0 + 0.5 * math.exp(0.3), -2.0 + 0.25 * math.exp(-0.5)], dtype=torch.float64)
    std = torch.tensor([math.exp(0.3 - 0.2), math.exp(-0.5 + 0.9)], dtype=torch.float64)  # log-det != 0
    return flow, mean, std


def test_flow_of_two_affine_maps_has_the_gaussian_log_density():
    """The composition's log-determinants add up to the closed-form Gaussian density."""
    flow, mean, std = _two_affine_flow()
    x = _points(9, 2)
    exact = torch.distributions.Normal(mean, std).log_prob(x).sum(1)
    assert_close(flow.log_prob(x), exact)
    assert_close(flows.nll_loss(flow, x), -exact.mean())
    assert_close(flow.loss(x), -exact.mean())


def test_flow_samples_follow_the_gaussian_law_of_two_affine_maps():
    """Sampling runs the inverses in reverse order: 100,000 draws have the closed-form mean and
    standard deviation (5 standard errors)."""
    flow, mean, std = _two_affine_flow()
    n = 100_000
    x = flow.sample(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    assert_close(x.mean(0), mean, atol=float(5 * std.max() / math.sqrt(n)), rtol=0)
    assert_close(x.std(0), std, atol=0, rtol=5 / math.sqrt(2 * n))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mask must be a 1D 0/1 vector"):
        flows.AffineCoupling([1, 1])
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1\)"):
        flows.MonotoneIntegral()(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least one transform"):
        flows.Flow([], flows.StandardNormal(1))
    with pytest.raises(ValueError, match="coupling needs dim >= 2"):
        flows.coupling_flow(1)
    with pytest.raises(ValueError, match="n_nodes must be >= 1"):
        flows.gauss_legendre(0)


# Conditional flows q(x | c): the same identities for every fixed context


def _conditional() -> list[tuple[str, flows.ConditionalTransform, int, int]]:
    return [
        ("cond-affine-2d", flows.ConditionalAffine(2, 3, hidden=16), 2, 3),
        ("cond-coupling-2d", flows.ConditionalAffineCoupling([1, 0], 1, hidden=16), 2, 1),
        ("cond-coupling-3d", flows.ConditionalAffineCoupling([0, 1, 0], 2, hidden=16), 3, 2),
        ("cond-flow-2d", flows.conditional_coupling_flow(2, 3, n_layers=3, hidden=16), 2, 3),
        ("cond-flow-3d", flows.conditional_coupling_flow(3, 2, n_layers=3, hidden=16), 3, 2),
    ]


COND_IDS = [name for name, *_ in _conditional()]


@pytest.fixture(params=range(len(COND_IDS)), ids=COND_IDS)
def cond_case(request) -> tuple[flows.ConditionalTransform, int, int]:
    _, tr, d, k = _conditional()[request.param]
    tr = _randomise(tr.double(), seed=request.param)
    if isinstance(tr, flows.ConditionalFlow):  # a non-trivial context standardisation
        tr.context_loc.fill_(0.3)
        tr.context_scale.fill_(2.0)
    return tr, d, k


def test_conditional_inverse_round_trip(cond_case):
    tr, d, k = cond_case
    x, c = _points(64, d), _points(64, k, seed=5)
    z, ld = tr(x, c)
    x_back, ld_inv = tr.inverse(z, c)
    assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    assert_close(ld_inv, -ld, atol=1e-9, rtol=1e-9)


def test_conditional_logdet_matches_autograd_jacobian_in_x(cond_case):
    tr, d, k = cond_case
    x, c = _points(6, d, seed=1), _points(6, k, seed=6)
    _, ld = tr(x, c)
    for i in range(len(x)):
        jac = jacobian(lambda v: tr(v[None], c[i:i + 1])[0][0], x[i])  # (d, d) at fixed c
        assert_close(ld[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-9, rtol=1e-9)


def test_conditional_every_parameter_and_the_context_receive_a_gradient(cond_case):
    tr, d, k = cond_case
    x, c = _points(32, d, seed=2).requires_grad_(), _points(32, k, seed=7).requires_grad_()
    z, ld = tr(x, c)
    (z.pow(2).sum() + ld.sum()).backward()
    for v in (x, c):
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    for name, p in tr.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: gradient is zero"


def _cond_flow_2d() -> flows.ConditionalFlow:
    return _randomise(flows.conditional_coupling_flow(2, 1, n_layers=2, hidden=8), std=0.1).double()


def _grid_density(flow: flows.ConditionalFlow, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    X, Y = torch.meshgrid(s, s, indexing="ij")
    with torch.no_grad():
        lp = flow.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1), c)
    return lp.exp().reshape(len(s), len(s))


def test_conditional_density_integrates_to_one_for_each_context():
    flow = _cond_flow_2d()
    s = torch.linspace(-12, 12, 801, dtype=torch.float64)
    for c in (-1.5, 0.0, 2.0):
        p = _grid_density(flow, torch.tensor([c], dtype=torch.float64), s)
        mass = torch.trapezoid(torch.trapezoid(p, s, dim=1), s)
        assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-4, rtol=0)


def test_the_context_changes_the_density():
    flow = _randomise(flows.conditional_coupling_flow(2, 1, n_layers=2, hidden=8), std=0.3).double()
    s = torch.linspace(-6, 6, 121, dtype=torch.float64)
    p0, p1 = (_grid_density(flow, torch.tensor([c], dtype=torch.float64), s) for c in (-1.0, 1.0))
    tv = 0.5 * (p0 - p1).abs().sum() * (s[1] - s[0]) ** 2  # total variation between q(.|-1), q(.|1)
    assert tv > 0.05, f"q(x | c) barely depends on c: total variation {float(tv):.3g}"


def test_conditional_log_prob_is_change_of_variables_and_context_broadcasts():
    flow = _cond_flow_2d()
    x, c = _points(5, 2), torch.tensor([0.7], dtype=torch.float64)
    z, ld = flow(x, c.expand(5, 1))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + ld
    assert_close(flow.log_prob(x, c), expected)  # context (k,) broadcast to every row
    assert_close(flow.log_prob(x, c.expand(5, 1)), expected)


def test_conditional_sample_is_the_inverse_of_base_draws():
    flow = _cond_flow_2d()
    c = torch.tensor([0.4], dtype=torch.float64)
    x = flow.sample(7, torch.Generator().manual_seed(3), context=c)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.shape == (7, 2)
    assert_close(x, flow.inverse(z, c.expand(7, 1))[0])
    per_row = flow.sample(7, torch.Generator().manual_seed(3), context=c.expand(7, 1).clone())
    assert_close(per_row, x)


def test_conditional_loss_takes_a_pair_or_a_dict():
    flow = _cond_flow_2d()
    x, c = _points(9, 2), _points(9, 1, seed=4)
    expected = -flow.log_prob(x, c).mean()
    assert_close(flow.loss((x, c)), expected)
    assert_close(flow.loss({"x": x, "context": c}), expected)


def test_fit_learns_a_conditional_gaussian_from_pairs():
    """x | c ~ N((c, -c), 0.5^2 I): after fit on (x, c) pairs the held-out NLL is within 0.05 nats
    of the true conditional's; a density that ignored c is at best N(0, 1.25 I), 1.6 nats worse."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    x = torch.cat([c, -c], 1) + 0.5 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    flow = flows.conditional_coupling_flow(2, 1, n_layers=2, hidden=16).double()
    train.fit(flow, (x[:3000], c[:3000]), 200, batch_size=256, lr=1e-2, generator=g, progress=False)
    truth = torch.distributions.Normal(torch.cat([c, -c], 1)[3000:], 0.5).log_prob(x[3000:]).sum(1)
    with torch.no_grad():
        gap = float(-flow.log_prob(x[3000:], c[3000:]).mean() + truth.mean())
    assert abs(gap) < 0.05, f"held-out NLL is {gap:.3f} nats from the true conditional's"
    assert bool(flow.prepared) and flow.context_scale.item() > 0.5


def test_conditional_bad_inputs_raise_clear_errors():
    flow = flows.conditional_coupling_flow(2, 3, n_layers=1, hidden=8)
    with pytest.raises(ValueError, match=r"context must have shape \(3,\) or \(4, 3\)"):
        flow.log_prob(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"batch context must have shape \(4, 3\)"):
        flow.loss((torch.zeros(4, 2), torch.zeros(5, 3)))
    with pytest.raises(TypeError, match="context must be a tensor"):
        flow.sample(3, context=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="coupling needs dim >= 2"):
        flows.conditional_coupling_flow(1, 2)
    with pytest.raises(ValueError, match="context_dim must be >= 1"):
        flows.ConditionalAffineCoupling([1, 0], 0)
