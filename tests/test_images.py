"""Labelled image models (minigen.images), the digits loader and the image metrics (chapter 12)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.testing import assert_close

from minigen import data, diffusion, images, metrics, ode


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def test_digits_split_is_fixed_disjoint_and_scaled(digits):
    again = data.digits()
    for a, b in zip(digits, again):
        assert torch.equal(a, b)
    assert digits.x_train.shape == (1_437, 64) and digits.x_held.shape == (360, 64)
    assert digits.x_train.min() == -1 and digits.x_train.max() == 1
    assert set(digits.y_held.tolist()) == set(range(10)) == set(digits.y_train.tolist())
    rows = digits.rows()
    assert rows.shape == (1_437, 65) and torch.equal(rows[:, -1].long(), digits.y_train)
    # no held-out image is a training row (same pixels and same index): the permutation splits indices
    assert len({tuple(r) for r in torch.cat([digits.x_train, digits.x_held]).tolist()}) <= 1_797
    with pytest.raises(ValueError, match="n_held"):
        data.digits(n_held=0)


def _spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_gaussian_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(4, generator=g, dtype=torch.float64) + 0.1, torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    # commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt v1 - sqrt v2)^2
    exact = float(((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())
    assert math.isclose(metrics.frechet_distance_gaussian(mu1, v1.diag(), mu2, v2.diag()), exact, rel_tol=1e-10)
    # general covariances: Tr (S1 S2)^{1/2} by scipy's (non-symmetric) matrix square root
    s1, s2 = _spd(4, g), _spd(4, g)
    cross = np.trace(scipy.linalg.sqrtm((s1 @ s2).numpy())).real
    exact = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace()) - 2 * cross
    got = metrics.frechet_distance_gaussian(mu1, s1, mu2, s2)
    assert math.isclose(got, exact, rel_tol=1e-8)
    assert math.isclose(got, metrics.frechet_distance_gaussian(mu2, s2, mu1, s1), rel_tol=1e-8)
    assert abs(metrics.frechet_distance_gaussian(mu1, s1, mu1, s1)) < 1e-10


def test_frechet_distance_of_samples():
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(300, 3, generator=g, dtype=torch.float64)
    f2 = torch.randn(200, 3, generator=g, dtype=torch.float64) * 2 + 1
    # exactly the Gaussian formula at the sample moments
    moments = [(f.mean(0), torch.as_tensor(np.cov(f.numpy().T))) for f in (f1, f2)]
    assert math.isclose(metrics.frechet_distance(f1, f2),
                        metrics.frechet_distance_gaussian(*moments[0], *moments[1]), rel_tol=1e-10)
    # and close to the population value for large samples: 3 + 3 (2 - 1)^2 = 6
    big1 = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    big2 = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * 2 + 1
    assert abs(metrics.frechet_distance(big1, big2) - 6.0) < 0.05
    with pytest.raises(ValueError, match="feature dimension"):
        metrics.frechet_distance(f1, f2[:, :2])


def test_conditional_accuracy_counts_per_class():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    acc = metrics.conditional_accuracy(lambda x: predicted, torch.zeros(6, 4), y)
    assert_close(acc, torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))


def test_nearest_distances_brute_force():
    g = torch.Generator().manual_seed(2)
    x, ref = torch.randn(50, 5, generator=g), torch.randn(70, 5, generator=g)
    brute = torch.stack([min((xi - r).norm() for r in ref) for xi in x])
    assert_close(metrics.nearest_distances(x, ref, chunk=16), brute)


def test_memorisation_catches_copies_and_passes_fresh_samples(digits):
    copies = metrics.memorisation(digits.x_train[:500], digits.x_train, digits.x_held)
    assert copies.p_closer > 0.5 + 20 * copies.se
    g = torch.Generator().manual_seed(3)
    pool = torch.randn(3_000, 8, generator=g)
    fresh = metrics.memorisation(pool[:1_000], pool[1_000:2_500], pool[2_500:])
    assert abs(fresh.p_closer - 0.5) < 4 * fresh.se
    # a generator that copies with a little noise is still caught
    noisy = digits.x_train[:500] + 0.05 * torch.randn(500, 64, generator=g)
    assert metrics.memorisation(noisy, digits.x_train, digits.x_held).p_closer > 0.9


def test_drop_labels_and_guidance():
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 10, (20_000,), generator=g)
    assert torch.equal(images.drop_labels(y, 0.0, 10, g), y)
    dropped = images.drop_labels(y, 0.2, 10, g)
    frac = float((dropped == 10).double().mean())
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20_000)
    assert torch.equal(dropped[dropped != 10], y[dropped != 10])

    def field(x, t, labels):  # a field whose value depends on the label
        return x * t[:, None] + labels[:, None].double()

    x, t, lab = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64), torch.arange(5)
    assert_close(images.guided(field, lab, 0.0, 10)(x, t), field(x, t, lab))
    w = 2.5
    expected = (1 + w) * field(x, t, lab) - w * field(x, t, torch.full_like(lab, 10))
    assert_close(images.guided(field, lab, w, 10)(x, t), expected)


@pytest.mark.parametrize("make_net", [lambda: images.LabelledMLP(hidden=32),
                                      lambda: images.LabelledConvNet(channels=8)], ids=["mlp", "conv"])
@pytest.mark.parametrize("family", [images.LabelledFlowMatching, images.LabelledDiffusion])
def test_models_train_and_sample_rows(make_net, family, digits):
    torch.manual_seed(0)
    model = family(net=make_net(), solver=ode.Solver(n_steps=2, ll_steps=2))
    rows = digits.rows()[:64]
    model.prepare(rows)
    loss = model.loss(rows)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    labels = torch.arange(6) % 10
    out = model.sample(6, torch.Generator().manual_seed(0), labels=labels, guidance=2.0)
    assert out.shape == (6, 65) and torch.equal(out[:, -1].long(), labels)
    assert model.sample(4).shape == (4, 65)
    with pytest.raises(ValueError, match="labels must lie"):
        model.loss(torch.cat([rows[:, :-1], torch.full((64, 1), 10.0)], 1))
    with pytest.raises(ValueError, match=r"\(B, 65\)"):
        model.loss(rows[:, :-1])


class _ExactGaussianVelocity(nn.Module):
    """The marginal velocity of the linear interpolant from N(0, I) to N(0, s^2 I), label ignored."""

    def __init__(self, s):
        super().__init__()
        self.s = s
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, y):
        t = t[:, None]
        return (t * self.s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * self.s**2) * x + 0 * self.dummy


def _gaussian_log_prob(x, var):
    return -0.5 * (x**2).sum(1) / var - 0.5 * x.shape[1] * math.log(2 * math.pi * var)


def test_flow_matching_density_and_samples_with_exact_field():
    s = 0.5
    model = images.LabelledFlowMatching(image_dim=3, n_classes=4, net=_ExactGaussianVelocity(s),
                                        solver=ode.Solver(n_steps=40, ll_steps=40))
    x = torch.randn(10, 3, dtype=torch.float64)
    rows = torch.cat([x, torch.arange(10)[:, None].double() % 4], 1)
    assert_close(model.log_prob(rows), _gaussian_log_prob(x, s**2) - math.log(4), rtol=1e-6, atol=1e-6)
    out = model.sample(20_000, torch.Generator().manual_seed(0))
    assert abs(float(out[:, :-1].std()) - s) < 0.01
    assert torch.bincount(out[:, -1].long(), minlength=4).min() > 4_500  # labels uniform by default


def test_diffusion_with_zero_network_is_the_gaussian_solution():
    # F = 0 makes eps the exact noise prediction for data N(0, sigma_data^2 I) (eq-diff-eps): the
    # model's law at t_min is N(0, (sigma_data^2 + sigma_{t_min}^2) I)
    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, t, y):
            return torch.zeros_like(x) * self.dummy

    sde = diffusion.VPSDE()
    model = images.LabelledDiffusion(image_dim=2, n_classes=3, net=Zero(), sde=sde, sigma_data=0.7,
                                     solver=ode.Solver(n_steps=60, ll_steps=60), t_min=0.01)
    model.double()
    t = torch.tensor([0.01], dtype=torch.float64)
    var = float(sde.alpha(t) ** 2 * 0.49 + sde.sigma(t) ** 2)
    x = torch.randn(8, 2, dtype=torch.float64)
    rows = torch.cat([x, torch.zeros(8, 1, dtype=torch.float64)], 1)
    # the prior N(0, I) differs from the t = 1 marginal by alpha_1^2 sigma_data^2 ~ 2e-5 in variance,
    # worth about |x|^2 1e-5 nats: the tolerance
    assert_close(model.log_prob(rows), _gaussian_log_prob(x, var) - math.log(3), rtol=0, atol=5e-4)
    out = model.sample(20_000, torch.Generator().manual_seed(1), guidance=3.0)
    assert abs(float(out[:, :-1].var()) - var) < 0.02


def test_classifier_learns_digits(digits):
    torch.manual_seed(0)
    clf = images.fit_classifier(digits.x_train, digits.y_train, n_steps=300,
                                generator=torch.Generator().manual_seed(0))
    assert clf.features(digits.x_held).shape == (360, 32)
    assert float((clf.predict(digits.x_held) == digits.y_held).double().mean()) > 0.93
