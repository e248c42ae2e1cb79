"""Learned likelihood ratios: the classifier identity, the mining-gold losses, calibration and
a mixture density for SCANDAL."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from minigen import sbi, simulators


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gaussian_log_ratio(x):  # log N(x; 0, 1) - log N(x; 1, 1)
    return 0.5 - x


def test_optimal_classifier_output_gives_the_likelihood_ratio():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    p0, p1 = torch.exp(-0.5 * x**2), torch.exp(-0.5 * (x - 1) ** 2)
    assert_close(sbi.ratio_from_classifier(p1 / (p0 + p1)), p0 / p1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        sbi.ratio_from_classifier(torch.tensor([0.0, 0.5]))


class Fixed(nn.Module):
    """A 'network' returning a known function of (x, theta) plus a trainable offset."""

    def __init__(self, f):
        super().__init__()
        self.f, self.c = f, nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, theta):
        return self.f(x, theta)[:, 0] + self.c


def test_classifier_loss_is_stationary_at_the_true_log_ratio():
    g = gen()
    x0 = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    x1 = 1 + torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    batch = {"x": torch.cat([x0, x1]), "theta": torch.zeros(400_000, 1, dtype=torch.float64),
             "y": torch.cat([torch.zeros(200_000), torch.ones(200_000)]).double()}
    net = Fixed(lambda x, t: gaussian_log_ratio(x))
    (grad,) = torch.autograd.grad(sbi.classifier_loss(net, batch), net.c)
    assert abs(float(grad)) < 5e-3  # d loss / d offset = E_0[s] - E_1[1 - s] = 0 at the optimum


def test_rolr_and_rascal_vanish_when_targets_are_met_and_rascal_adds_the_score_term():
    x = torch.randn(100, 1, generator=gen(), dtype=torch.float64)
    theta = torch.rand(100, 1, generator=gen(1), dtype=torch.float64) + 0.5
    net = Fixed(lambda x, t: t**2 * x)
    batch = {"x": x, "theta": theta, "y": (torch.arange(100) % 2).double(),
             "log_r_joint": (theta**2 * x)[:, 0], "t_joint": (2 * theta * x)[:, 0]}
    assert float(sbi.rolr_loss(net, batch).detach()) == 0.0
    assert_close(sbi.rascal_loss(net, batch), torch.tensor(0.0, dtype=torch.float64))
    batch["t_joint"] = batch["t_joint"] + 1.0
    assert_close(sbi.rascal_loss(net, batch, alpha=3.0), torch.tensor(1.5, dtype=torch.float64))


def posterior_latents(sim, x, theta, k=20_001):
    """``k`` equal-mass nodes ``(k, 1)`` of p(z|x, theta) for the decay simulator (midpoint rule in its CDF).

    p(z|x, theta) is proportional to exp(-theta z) N(x; z, sigma^2) on z > 0: a normal with mean
    x - theta sigma^2 and standard deviation sigma, truncated to z > 0.
    """
    mu, s = x - theta * sim.sigma**2, sim.sigma
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    below = torch.special.ndtr(torch.tensor(-mu / s, dtype=torch.float64))  # mass cut off at z < 0
    return (mu + s * torch.special.ndtri(below + u * (1 - below)))[:, None]


@pytest.mark.parametrize("loss", [sbi.rolr_loss, sbi.rascal_loss])
@pytest.mark.parametrize("theta, x", [(1.4, 3.0), (1.4, 0.3), (0.7, 3.0), (0.7, 0.3)])
def test_rolr_minimiser_at_fixed_x_is_the_exact_likelihood_ratio(loss, theta, x):
    # The loss at one x, integrated over the latent: rows y = 0 hold z ~ p(z|x, theta), rows
    # y = 1 hold z ~ p(z|x, theta_ref). Its minimiser over r_hat(x) must be p(x|theta)/p(x|theta_ref).
    sim, theta_ref = simulators.SmearedExponential(sigma=0.5), 1.0
    z = torch.cat([posterior_latents(sim, x, theta), posterior_latents(sim, x, theta_ref)])
    n = len(z) // 2
    batch = {"x": torch.full_like(z, x), "theta": torch.full_like(z, theta),
             "y": torch.cat([torch.zeros(n), torch.ones(n)]).double(),
             "log_r_joint": sim.joint_log_ratio(z, theta, theta_ref),
             "t_joint": sim.joint_score(z, theta)}
    x_ = torch.tensor([[x]], dtype=torch.float64)
    exact = float(sim.log_prob(x_, theta) - sim.log_prob(x_, theta_ref))
    # the nodes integrate eq-sbi-unbiased (error ~1/k): E[r(x, z)] over p(z|x, theta_ref) is
    # r(x), and E[1/r(x, z)] over p(z|x, theta) is 1/r(x)
    assert math.isclose(float(batch["log_r_joint"][n:].exp().mean().log()), exact, abs_tol=1e-5)
    assert math.isclose(float((-batch["log_r_joint"][:n]).exp().mean().log()), -exact, abs_tol=1e-5)
    net = Fixed(lambda x, t: 0 * t)  # log r_hat(x) = c, one free number (zero score)

    def slope(c: float) -> float:
        with torch.no_grad():
            net.c.fill_(c)
        (grad,) = torch.autograd.grad(loss(net, batch), net.c)
        return float(grad)

    low, high = -5.0, 5.0  # d loss / dc < 0 at c = -5 and > 0 at c = 5
    assert slope(low) < 0 < slope(high)
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if slope(mid) < 0 else (low, mid)
    assert math.isclose(0.5 * (low + high), exact, abs_tol=1e-5)


def test_rascal_without_the_score_term_is_rolr():
    g = gen(2)
    x = torch.randn(64, 1, generator=g, dtype=torch.float64)
    theta = 0.7 + 0.7 * torch.rand(64, 1, generator=g, dtype=torch.float64)
    batch = {"x": x, "theta": theta, "y": (torch.arange(64) % 2).double(),
             "log_r_joint": torch.randn(64, generator=g, dtype=torch.float64),
             "t_joint": torch.randn(64, generator=g, dtype=torch.float64)}
    net = Fixed(lambda x, t: t * x)
    assert_close(sbi.rascal_loss(net, batch, alpha=0.0), sbi.rolr_loss(net, batch))


class ExactLogRatio(nn.Module):
    """The decay simulator's exact log p(x|theta) - log p(x|theta_ref), times a trainable weight w = 1."""

    def __init__(self, sim, theta_ref):
        super().__init__()
        self.sim, self.theta_ref = sim, theta_ref
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x, theta):
        return self.w * (self.sim.log_prob(x, theta[:, 0]) - self.sim.log_prob(x, self.theta_ref))


def test_log_ratio_and_score_of_the_exact_ratio_match_the_latent_averages():
    """For the exact log ratio, log_ratio_and_score returns log r(x|theta) = log E[r(x, z)] over
    p(z|x, theta_ref) and the score d/dtheta log p(x|theta) = E[t(x, z|theta)] over p(z|x, theta)
    (eq-sbi-unbiased), both computed from the simulator's latent; the score keeps its graph, so
    its gradient in the weight w is the score itself (log r is linear in w, w = 1)."""
    sim, theta_ref = simulators.SmearedExponential(sigma=0.5), 1.0
    cases = [(1.4, 3.0), (1.4, 0.3), (0.7, 3.0), (0.7, 0.3)]
    x = torch.tensor([[xi] for _, xi in cases], dtype=torch.float64)
    theta = torch.tensor([[th] for th, _ in cases], dtype=torch.float64)
    net = ExactLogRatio(sim, theta_ref)
    log_r, score = sbi.log_ratio_and_score(net, x, theta)
    for i, (th, xi) in enumerate(cases):
        z_ref, z_theta = posterior_latents(sim, xi, theta_ref), posterior_latents(sim, xi, th)
        expected_log_r = sim.joint_log_ratio(z_ref, th, theta_ref).exp().mean().log()
        expected_score = sim.joint_score(z_theta, th).mean()
        assert math.isclose(float(log_r[i].detach()), float(expected_log_r), abs_tol=1e-5)
        assert math.isclose(float(score[i].detach()), float(expected_score), abs_tol=1e-5)
    assert float(score.detach().abs().min()) > 0.1 and float(log_r.detach().abs().min()) > 0.1  # not trivially 0
    (dw,) = torch.autograd.grad(score.sum(), net.w)
    assert_close(dw, score.detach().sum())


def test_sally_loss_is_noise_plus_squared_bias_and_minimal_at_the_conditional_mean():
    """With t = 2 x + noise (sd 0.5), the loss of t_hat(x) = w x is 0.25 + (w - 2)^2 E[x^2]:
    the conditional mean (w = 2) minimises it, with zero gradient there."""
    g = gen()
    x = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    batch = {"x": x, "t_joint": 2 * x[:, 0] + 0.5 * torch.randn(200_000, generator=g, dtype=torch.float64)}
    for w, expected in ((2.0, 0.25), (2.5, 0.25 + 0.25), (1.0, 0.25 + 1.0)):
        net = nn.Linear(1, 1, bias=False).double()
        nn.init.constant_(net.weight, w)
        loss = sbi.sally_loss(net, batch)
        assert abs(loss.item() - expected) < 0.01, (w, loss.item())
        loss.backward()
        if w == 2.0:
            assert abs(net.weight.grad.item()) < 0.01
        else:  # the gradient points back towards w = 2
            assert net.weight.grad.item() * (w - 2.0) > 0


def test_ratio_net_with_reference_vanishes_at_the_reference():
    net = sbi.RatioNet(dim_x=2, theta_ref=1.5)
    x = torch.randn(30, 2)
    assert_close(net(x, torch.full((30, 1), 1.5)), torch.zeros(30))
    assert net(x, torch.full((30, 1), 0.5)).abs().sum() > 0


def test_ratio_training_set_pairs_each_theta_with_a_reference_simulation():
    sim = simulators.SmearedExponential()
    data = sbi.ratio_training_set(sim, torch.tensor([0.8, 1.2, 0.9]), 1.0, gen())
    assert data["x"].shape == (6, 1) and data["theta"].shape == (6, 1)
    assert data["y"].tolist() == [0, 0, 0, 1, 1, 1]
    assert_close(data["theta"][:3, 0], data["theta"][3:, 0])
    batch = sbi.minibatches(data, 4, gen())(0)
    assert set(batch) == set(data) and batch["x"].shape == (4, 1)


def test_histogram_calibration_recovers_the_ratio_and_ignores_monotone_distortions():
    g = gen()
    x0 = torch.randn(100_000, generator=g, dtype=torch.float64)
    x1 = 1 + torch.randn(100_000, generator=g, dtype=torch.float64)
    stat0, stat1 = gaussian_log_ratio(x0), gaussian_log_ratio(x1)
    cal = sbi.calibrated_log_ratio(stat0[:2000], stat0, stat1, n_bins=50)
    assert float((cal - stat0[:2000]).abs().mean()) < 0.1
    distorted = sbi.calibrated_log_ratio(torch.tanh(stat0[:2000]), torch.tanh(stat0), torch.tanh(stat1), 50)
    assert_close(distorted, cal)  # equal-mass bins move with any increasing map


def test_calibration_rejects_2d_input():
    with pytest.raises(ValueError, match="1D"):
        sbi.calibrated_log_ratio(torch.zeros(3, 1), torch.zeros(3), torch.zeros(3))


def test_train_estimator_is_adam_with_a_cosine_decay_on_minibatches():
    torch.manual_seed(0)
    data = {"x": torch.randn(64, 1), "theta": torch.rand(64, 1), "y": (torch.rand(64) < 0.5).float()}
    net_a = sbi.RatioNet(dim_x=1, hidden=8, depth=1)
    net_b = copy.deepcopy(net_a)
    history = sbi.train_estimator(net_a, sbi.classifier_loss, data, 5, batch_size=16, lr=1e-2,
                                  generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(net_b.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5)
    batches = sbi.minibatches(data, 16, torch.Generator().manual_seed(1))
    for k in range(5):
        loss = sbi.classifier_loss(net_b, batches(k))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        assert abs(loss.item() - float(history[k])) < 1e-6
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b)


F64 = torch.float64


def test_mixture_density_is_a_normalised_gaussian_mixture():
    torch.manual_seed(0)
    q = sbi.MixtureDensity(n_components=3, loc=1.0, scale=2.0).double()
    theta = torch.tensor([[0.8], [1.3]], dtype=torch.float64)
    x = torch.linspace(-30, 30, 20_001, dtype=torch.float64)[:, None]
    for th in theta:
        dens = q.log_prob(x, th.expand(len(x), 1)).exp().detach()
        assert abs(float(torch.trapezoid(dens, x[:, 0])) - 1) < 1e-6
    logits, mu, log_s = q.net(theta).chunk(3, 1)
    x2 = torch.tensor([[0.1], [2.5]], dtype=torch.float64)
    loc, s = 1.0 + 2.0 * mu, 2.0 * log_s.exp()  # each component in x units
    by_hand = (logits.softmax(1) * torch.exp(-0.5 * ((x2 - loc) / s) ** 2) / (s * math.sqrt(2 * math.pi))).sum(1).log()
    assert_close(q.log_prob(x2, theta), by_hand)


def test_scandal_is_nll_plus_alpha_times_the_squared_score_error():
    torch.manual_seed(1)
    q = sbi.MixtureDensity(n_components=2).double()
    sim = simulators.SmearedExponential()
    batch = sbi.likelihood_training_set(sim, torch.tensor([0.8, 1.0, 1.2], dtype=torch.float64), gen())
    assert batch["x"].shape == (3, 1) and batch["theta"].shape == (3, 1)
    h = 1e-6  # the density's theta-derivative by central differences
    score = (q.log_prob(batch["x"], batch["theta"] + h) - q.log_prob(batch["x"], batch["theta"] - h)) / (2 * h)
    expected = sbi.nle_loss(q, batch) + 0.7 * ((batch["t_joint"] - score) ** 2).mean()
    assert_close(sbi.scandal_loss(q, batch, alpha=0.7), expected, atol=1e-8, rtol=0)
    assert_close(sbi.scandal_loss(q, batch, alpha=0.0), sbi.nle_loss(q, batch))
    sbi.scandal_loss(q, batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_calibration_with_bins_from_the_second_sample_gives_it_equal_counts():
    s1 = torch.randn(4000, dtype=torch.float64, generator=gen(4))
    s0 = s1 + 1.0
    edges = torch.quantile(s1, torch.linspace(0, 1, 11, dtype=torch.float64))[1:-1]
    out = sbi.calibrated_log_ratio(s1, s0, s1, n_bins=10, bins_from_stat1=True)
    counts0 = torch.bincount(torch.bucketize(s0, edges), minlength=10) + 1.0
    expected = ((counts0 / counts0.sum()).log() - math.log(1 / 10)).double()  # every s1 bin holds 401
    assert_close(out, expected[torch.bucketize(s1, edges)])


def test_alices_soft_label_averages_to_the_optimal_classifier_and_alpha_zero_with_hard_labels_is_the_classifier():
    torch.manual_seed(2)
    net = sbi.RatioNet(dim_x=1, hidden=8, depth=1).double()
    sim = simulators.SmearedExponential()
    batch = sbi.ratio_training_set(sim, torch.full((6,), 0.8, dtype=F64), 1.0, gen())
    hard = dict(batch, log_r_joint=torch.where(batch["y"] == 1, -50.0, 50.0).double())  # s = y
    assert_close(sbi.alices_loss(net, hard, alpha=0.0), sbi.classifier_loss(net, batch), atol=1e-12, rtol=0)
    log_r, score = sbi.log_ratio_and_score(net, batch["x"], batch["theta"])
    s = 1 / (1 + batch["log_r_joint"].exp())
    c = 1 / (1 + log_r.exp())
    expected = (-(s * c.log() + (1 - s) * (1 - c).log()) + 0.5 * (1 - batch["y"]) * (batch["t_joint"] - score) ** 2).mean()
    assert_close(sbi.alices_loss(net, batch, alpha=0.5), expected)
    # E[s(x, z) | x] over both classes = p(x|ref) / (p(x|theta) + p(x|ref)): the reweighting identity
    x_ref, z_ref = sim.simulate_joint(torch.full((400_000,), 1.0, dtype=F64), gen(5))
    x_th, z_th = sim.simulate_joint(torch.full((400_000,), 0.8, dtype=F64), gen(6))
    w = lambda x: torch.exp(-0.5 * ((x[:, 0] - 1.5) / 0.2) ** 2)  # a window around x = 1.5
    soft = lambda z: 1 / (1 + sim.joint_log_ratio(z, 0.8, 1.0).exp())
    mean_s = ((w(x_ref) * soft(z_ref)).sum() + (w(x_th) * soft(z_th)).sum()) / (w(x_ref).sum() + w(x_th).sum())
    xs = torch.linspace(0.5, 2.5, 2001, dtype=F64)[:, None]
    p_ref, p_th = sim.log_prob(xs, 1.0).exp(), sim.log_prob(xs, 0.8).exp()
    exact = (w(xs) * p_ref).sum() / (w(xs) * (p_ref + p_th)).sum()
    assert abs(float(mean_s) - float(exact)) < 0.003


def test_log_ratio_grid_evaluates_every_event_at_every_grid_point():
    f = lambda x, theta: (x * theta)[:, 0]
    x, theta = torch.tensor([[1.0], [2.0]]), torch.tensor([0.5, 1.0, 3.0])
    assert_close(sbi.log_ratio_grid(f, x, theta), x * theta)
