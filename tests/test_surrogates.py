"""Surrogates of simulators: a linear-Gaussian simulator's moments and Jacobian recovered, samples and
likelihood consistent with the moments, ensembles, log-parameter inputs and sequential rounds."""

import pytest
import torch
from torch.testing import assert_close

from minigen import simulators, sourcerer, surrogates


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class LinearGaussian(simulators.Simulator):
    """x = A theta + b + C eps: the mean and covariance a surrogate must recover are known."""

    name, dim_theta, dim_x = "linear Gaussian", 2, 3
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    A = torch.tensor([[1.0, 0.5], [-0.5, 2.0], [0.0, 1.0]])
    b = torch.tensor([0.3, -0.2, 1.0])
    C = torch.tensor([[0.2, 0.0, 0.0], [0.1, 0.3, 0.0], [-0.05, 0.1, 0.1]])

    def simulate(self, theta, generator):
        eps = torch.randn(len(theta), 3, generator=generator, dtype=theta.dtype)
        return theta @ self.A.T.to(theta) + self.b.to(theta) + eps @ self.C.T.to(theta)


@pytest.fixture(scope="module")
def linear_surrogate():
    torch.manual_seed(0)
    return surrogates.fit_surrogate(LinearGaussian(), 4000, gen(), hidden=32, depth=2,
                                   n_steps=1000, progress=False)


def test_surrogate_recovers_a_linear_gaussian_simulators_mean_and_covariance(linear_surrogate):
    surrogate, result = linear_surrogate
    sim = LinearGaussian()
    assert result.losses.shape == (1000, 1)
    theta = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-0.7, 0.6], [0.6, 0.6]])  # inside the box
    mean, cov = surrogate.moments(theta)
    assert_close(mean, theta @ sim.A.T + sim.b, atol=0.03, rtol=0)  # the noise sd is 0.2 to 0.3
    assert_close(cov, (sim.C @ sim.C.T).expand(4, 3, 3), atol=0.015, rtol=0)  # entries 0.01 to 0.1


def test_surrogate_gradients_flow_to_theta_and_match_the_simulators_jacobian(linear_surrogate):
    surrogate, _ = linear_surrogate
    assert not any(p.requires_grad for p in surrogate.parameters())  # frozen: a source trains alone
    theta = torch.tensor([[0.2, -0.3], [-0.5, 0.4]], requires_grad=True)
    x = surrogate(theta, gen(1))
    (grad,) = torch.autograd.grad(x.sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().min() > 0
    jac = torch.autograd.functional.jacobian(lambda t: surrogate.moments(t)[0].sum(0), theta.detach())
    assert_close(jac, LinearGaussian.A[:, None, :].expand(3, 2, 2), atol=0.1, rtol=0)  # d mean / d theta = A


def test_surrogate_samples_and_log_likelihood_follow_its_moments():
    """log_likelihood is the Gaussian density of moments(); samples are mean + S eps."""
    torch.manual_seed(0)
    surrogate = surrogates.Surrogate(LinearGaussian(), hidden=8, depth=1).double()
    surrogate.x_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    surrogate.x_scale.copy_(torch.tensor([0.5, 2.0, 1.5]))
    theta = torch.rand(5, 2, generator=gen(), dtype=torch.float64) * 2 - 1
    x = torch.randn(5, 3, generator=gen(1), dtype=torch.float64)
    mean, cov = surrogate.moments(theta)
    exact = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    assert_close(surrogate.log_likelihood(theta, x), exact)
    draws = surrogate(theta[:1].expand(100_000, 2), gen(2))  # (100000, 3)
    assert_close(draws.mean(0), mean[0], atol=0.03, rtol=0)
    assert_close(torch.cov(draws.T), cov[0], atol=0.05, rtol=0.02)


def test_estimate_source_through_a_surrogate_trains_the_source_only(linear_surrogate):
    surrogate, _ = linear_surrogate
    before = [p.clone() for p in surrogate.parameters()]
    sim = LinearGaussian()
    x_obs = sim(0.5 * torch.rand(500, 2, generator=gen()), gen())
    torch.manual_seed(0)
    source, result = sourcerer.estimate_source(surrogate, x_obs, None, n_steps=40, hidden=16,
                                               depth=2, batch_size=250, lr=1e-2, n_projections=20,
                                               generator=gen(), progress=False)
    assert result.losses[-5:, 0].mean() < result.losses[:5, 0].mean() - 0.5  # log SW_2 fell
    for p, q in zip(before, surrogate.parameters()):
        assert torch.equal(p, q)


def test_fit_surrogate_rejects_a_plain_function():
    with pytest.raises(ValueError, match="need a minigen.simulators.Simulator"):
        surrogates.fit_surrogate(lambda theta: theta, 100)


class PositiveLinearGaussian(LinearGaussian):
    """The linear Gaussian simulator on a box of positive parameters (for inputs in log theta)."""

    low, high = torch.tensor([0.1, 0.2]), torch.tensor([2.0, 3.0])


def test_log_theta_maps_the_box_to_the_unit_square_in_log_coordinates():
    surrogate = surrogates.Surrogate(PositiveLinearGaussian(), hidden=8, depth=1, log_theta=True)
    seen = []
    surrogate.mean_net.register_forward_pre_hook(lambda net, args: seen.append(args[0]))  # the input u
    low, high = PositiveLinearGaussian.low, PositiveLinearGaussian.high
    surrogate.moments(torch.stack([low, high, (low * high).sqrt()]))  # corners and geometric centre
    assert_close(seen[0], torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="log_theta needs a box of positive parameters"):
        surrogates.Surrogate(LinearGaussian(), log_theta=True)


@pytest.fixture(scope="module")
def linear_ensemble():
    torch.manual_seed(0)
    return surrogates.fit_ensemble(LinearGaussian(), 500, 3, gen(), hidden=8, depth=1, n_steps=50,
                                  progress=False)


def test_ensemble_members_differ_and_its_moments_are_the_mixtures(linear_ensemble):
    ensemble, results = linear_ensemble
    assert len(results) == 3 and all(r.losses.shape == (50, 1) for r in results)
    theta = torch.tensor([[0.3, -0.4]])
    means = torch.stack([m.moments(theta)[0][0] for m in ensemble.members])  # (3, 3)
    assert (means[0] - means[1]).abs().max() > 1e-3 and (means[1] - means[2]).abs().max() > 1e-3
    mean, cov = ensemble.moments(theta)
    draws = ensemble(theta.expand(200_000, 2), gen(3))  # (200000, 3): member drawn per row
    assert_close(draws.mean(0), mean[0], atol=0.01, rtol=0)
    assert_close(torch.cov(draws.T), cov[0], atol=0.01, rtol=0.03)
    per_member = torch.stack([m.moments(theta)[1][0] for m in ensemble.members])  # (3, 3, 3)
    assert (cov[0].diagonal() > per_member.mean(0).diagonal()).all()  # the spread of the means adds


def test_ensemble_is_differentiable_in_theta_and_frozen(linear_ensemble):
    ensemble, _ = linear_ensemble
    assert not any(p.requires_grad for p in ensemble.parameters())
    theta = torch.tensor([[0.2, -0.3], [-0.5, 0.4]], requires_grad=True)
    (grad,) = torch.autograd.grad(ensemble(theta, gen(1)).sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().min() > 0
    with pytest.raises(ValueError, match="n_members >= 2"):
        surrogates.fit_ensemble(LinearGaussian(), 100, 1)


def test_proposal_sample_mixes_the_source_with_the_box():
    torch.manual_seed(0)
    source = sourcerer.BoxSampler(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 4.0]), hidden=8, depth=1)
    with torch.no_grad():
        assert torch.equal(surrogates.proposal_sample(source, 100, 0.0, gen(5)), source.sample(100, gen(5)))
    theta = surrogates.proposal_sample(source, 20_000, 0.25, gen(6))  # (20000, 2)
    assert theta.shape == (20_000, 2) and not theta.requires_grad
    box = theta[15_000:]  # the last quarter: uniform on [0, 1] x [0, 4]
    assert_close(box.mean(0), torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)
    assert_close(box.var(0), torch.tensor([1 / 12, 16 / 12]), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="box_fraction"):
        surrogates.proposal_sample(source, 10, 1.5)


def test_refine_surrogate_adds_the_new_simulations_and_trains_on_all(linear_surrogate):
    surrogate, _ = linear_surrogate
    surrogate = __import__("copy").deepcopy(surrogate)
    before = [p.clone() for p in surrogate.parameters()]
    assert surrogate.pairs.shape == (4000, 5)
    theta = torch.full((300, 2), 0.5)
    result = surrogates.refine_surrogate(surrogate, LinearGaussian(), theta, gen(9), n_steps=20,
                                        progress=False)
    assert surrogate.pairs.shape == (4300, 5) and result.losses.shape == (20, 1)
    assert torch.equal(surrogate.pairs[4000:, :2], theta)
    assert_close(surrogate.pairs[4000:, 2:], LinearGaussian()(theta, gen(9)))  # simulated there
    assert all(not torch.equal(p, q) for p, q in zip(before, surrogate.parameters()))
    assert not any(p.requires_grad for p in surrogate.parameters())
    with pytest.raises(ValueError, match=r"theta must be \(n, 2\)"):
        surrogates.refine_surrogate(surrogate, LinearGaussian(), torch.zeros(5, 3))
