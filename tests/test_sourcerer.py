"""Sourcerer: the Kozachenko-Leonenko entropy against closed forms, sliced Wasserstein against POT,
the box sampler, the lambda schedule and the loss."""
import math

import pytest
import torch
from torch.testing import assert_close

from minigen import metrics, simulators, sourcerer, train


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_kl_entropy_of_a_gaussian_matches_the_closed_form(d):
    std = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    x = std * torch.randn(8000, d, generator=gen(d), dtype=torch.float64)
    exact = 0.5 * d * math.log(2 * math.pi * math.e) + float(std.log().sum())
    assert abs(float(sourcerer.kl_entropy(x)) - exact) < 0.05 * d


@pytest.mark.parametrize("d", [1, 2, 4])
def test_kl_entropy_of_a_uniform_box_matches_log_volume(d):
    side = torch.linspace(1.0, 3.0, d, dtype=torch.float64)
    x = side * torch.rand(8000, d, generator=gen(d), dtype=torch.float64)
    assert abs(float(sourcerer.kl_entropy(x)) - float(side.log().sum())) < 0.05 * d


def test_kl_entropy_on_the_torus_removes_the_boundary_bias_of_a_uniform_box():
    side = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    x = side * torch.rand(3000, 3, generator=gen(), dtype=torch.float64)
    exact = 3 * math.log(2)
    plain, torus = sourcerer.kl_entropy(x), sourcerer.kl_entropy(x, period=side)
    assert abs(float(torus) - exact) < abs(float(plain) - exact)


def test_kl_entropy_is_equivariant_under_translation_and_scaling():
    x = torch.randn(500, 3, generator=gen(), dtype=torch.float64)
    h = sourcerer.kl_entropy(x)
    assert_close(sourcerer.kl_entropy(2.5 * x + 7.0), h + 3 * math.log(2.5))


def test_kl_entropy_chunked_equals_unchunked():
    x = torch.randn(1000, 2, generator=gen(), dtype=torch.float64)
    assert_close(sourcerer.kl_entropy(x, chunk=97), sourcerer.kl_entropy(x, chunk=5000))


def test_kl_entropy_gradient_matches_finite_differences():
    x = torch.randn(50, 2, generator=gen(), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sourcerer.kl_entropy(x), x)
    e = torch.zeros_like(x)
    e[3, 1] = 1e-6
    fd = (sourcerer.kl_entropy(x.detach() + e) - sourcerer.kl_entropy(x.detach() - e)) / 2e-6
    assert_close(grad[3, 1], fd, atol=1e-6, rtol=1e-5)


def test_kl_entropy_rejects_a_single_point():
    with pytest.raises(ValueError, match="n >= 2"):
        sourcerer.kl_entropy(torch.zeros(1, 2))


@pytest.mark.parametrize("n, m", [(300, 300), (500, 200)])
def test_sliced_wasserstein_matches_pot(n, m):
    ot = pytest.importorskip("ot")
    x = torch.randn(n, 3, generator=gen(1), dtype=torch.float64)
    y = 0.7 * torch.randn(m, 3, generator=gen(2), dtype=torch.float64) + 0.5
    ours = metrics.sliced_wasserstein(x, y, n_projections=64, generator=gen(3))
    theta = torch.randn(3, 64, generator=gen(3), dtype=torch.float64)  # the same directions
    theta = theta / theta.norm(dim=0, keepdim=True)
    pot = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=64, p=2,
                                         projections=theta.numpy())
    # equal sizes: identical; unequal sizes: our quantile matching approximates POT's exact 1D OT
    assert_close(float(ours), float(pot), rtol=1e-10 if n == m else 0.03, atol=0)


def test_box_sampler_stays_inside_its_box_and_passes_gradients():
    low, high = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 0.5, 9.0])
    source = sourcerer.BoxSampler(low, high, hidden=16, depth=2)
    theta = source.sample(5000, gen())
    assert theta.shape == (5000, 3) and (theta > low).all() and (theta < high).all()
    theta.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in source.parameters())


def test_box_sampler_rejects_an_empty_box():
    with pytest.raises(ValueError, match="low < high"):
        sourcerer.BoxSampler(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))


def test_lambda_schedule_decays_linearly_then_stays():
    lam = sourcerer.lambda_schedule(10, 5, 0.2)
    assert_close(lam[:5], torch.linspace(1.0, 0.2, 5))
    assert_close(lam[5:], torch.full((5,), 0.2))
    with pytest.raises(ValueError, match="final"):
        sourcerer.lambda_schedule(10, 5, 1.5)


class _FixedSource:
    """A stand-in for a BoxSampler on the box [0, 1]^2 that returns given points for each sample size."""

    low, high = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)

    def __init__(self, points):
        self.points, self.calls = points, []

    def sample(self, n, generator=None):
        self.calls.append(n)
        return self.points[n]


SQUARE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)


def test_source_loss_matches_a_hand_computed_value():
    """Four points on the unit circle (a square) pushed forward to 1.5 times themselves: every 1D
    projection is scaled by 1.5 and has mean square 1/2, so SW_2 = 0.5 / sqrt(2) whatever the
    directions. Three entropy points (0.05, 0.5), (0.5, 0.5), (0.95, 0.5) on the torus [0, 1)^2
    have nearest-neighbour distances (0.1, 0.45, 0.1) (the first and last are neighbours across the
    glued edge), so H = 2 mean log eps + log pi - psi(1) + psi(3) = 2 mean log eps + log pi + 3/2."""
    grid = torch.tensor([[0.05, 0.5], [0.5, 0.5], [0.95, 0.5]], dtype=torch.float64)
    log_sw = math.log(0.5 / math.sqrt(2))
    entropy = 2 * (2 * math.log(0.1) + math.log(0.45)) / 3 + math.log(math.pi) + 1.5
    for lam in [0.0, 0.3, 1.0]:
        source = _FixedSource({4: 1.5 * SQUARE, 3: grid})
        loss, sw, h = sourcerer.source_loss(source, lambda theta: theta, SQUARE, lam, n_entropy=3,
                                            n_projections=7)
        h_exact = entropy if lam > 0 else 0.0  # no entropy sample is drawn when lambda = 0
        assert_close(sw, torch.tensor(log_sw, dtype=torch.float64))
        assert_close(h, torch.tensor(h_exact, dtype=torch.float64))
        assert_close(loss, torch.tensor((1 - lam) * log_sw - lam * h_exact, dtype=torch.float64))
        assert source.calls == ([4, 3] if lam > 0 else [4])


def test_source_loss_falls_as_the_source_spreads_at_equal_fit():
    """At lambda > 0 the entropy term rewards spread: the same pushforward with an entropy sample
    twice as wide has a loss lower by lambda d log 2 (the KL entropy is equivariant under scaling)."""
    inner = 0.5 + 0.05 * torch.randn(50, 2, generator=gen(), dtype=torch.float64)  # far from the edges
    losses = []
    for scale in (1.0, 2.0):
        source = _FixedSource({4: 1.5 * SQUARE, 50: 0.5 + scale * (inner - 0.5)})
        losses.append(sourcerer.source_loss(source, lambda theta: theta, SQUARE, 0.4, 50, 7)[0])
    assert_close(losses[0] - losses[1], torch.tensor(0.4 * 2 * math.log(2.0), dtype=torch.float64))


def test_estimate_source_without_entropy_moves_the_pushforward_towards_the_data():
    sim = simulators.GaussianMixtureSim()
    g = gen()
    x_obs = sim(sim.sample_source(1000, g), g)
    torch.manual_seed(0)
    source, result = sourcerer.estimate_source(sim, x_obs, None, n_steps=60, hidden=16, depth=2,
                                               batch_size=500, lr=1e-2, n_projections=20,
                                               generator=g, progress=False)
    assert result.losses.shape == (60, 1) and result.settings["batch_size"] == 500
    assert result.losses[-10:, 0].mean() < result.losses[:10, 0].mean() - 0.5  # log SW_2 fell


def test_estimate_source_recovers_the_mean_and_the_entropy_term_spreads_the_source():
    """x = theta + noise with zero-mean noise: a source whose pushforward fits the data has the data's
    mean, with or without the entropy term (the true source U[0.5, 1]^2 has mean (0.75, 0.75) and
    entropy 2 log 0.5 = -1.39). The entropy term (lambda -> 0.35) spreads the source: its KL entropy
    rises by more than one nat over the fit without it (measured: -1.6 without, 0.9 with)."""
    sim = simulators.GaussianMixtureSim()
    g = gen()
    x_obs = sim(sim.sample_source(2000, g), g)
    entropy = {}
    for lam in (None, 0.35):
        torch.manual_seed(0)
        source, _ = sourcerer.estimate_source(sim, x_obs, lam, n_steps=150, hidden=16, depth=2,
                                              n_entropy=256, batch_size=500, lr=1e-2, n_projections=20,
                                              generator=gen(1), progress=False)
        with torch.no_grad():
            theta = source.sample(4000, gen(2)).double()
        assert_close(theta.mean(0), x_obs.double().mean(0), atol=0.05, rtol=0)
        entropy[lam] = float(sourcerer.kl_entropy(theta, period=(source.high - source.low).double()))
    assert entropy[0.35] > entropy[None] + 1.0, entropy


def _tiny_sourcerer(lambdas, weight_decay=0.0):
    sim = simulators.GaussianMixtureSim()
    torch.manual_seed(0)
    source = sourcerer.BoxSampler(sim.low, sim.high, hidden=8, depth=1)
    return sim, sourcerer.Sourcerer(source, sim, lambdas, n_entropy=64, n_projections=10,
                                    weight_decay=weight_decay)


def test_sourcerer_loss_follows_the_lambda_schedule_step_by_step():
    """At step k the loss is source_loss with lambda_k; after the schedule, the last lambda."""
    lambdas = torch.tensor([1.0, 0.5, 0.2])
    sim, model = _tiny_sourcerer(lambdas)
    x_obs = sim(sim.sample_source(200, gen()), gen())
    for k, lam in enumerate([1.0, 0.5, 0.2, 0.2]):
        model.step = k
        torch.manual_seed(k)
        got = model.loss(x_obs)
        torch.manual_seed(k)
        assert_close(got, sourcerer.source_loss(model.source, sim, x_obs, lam, 64, 10)[0])
    seen = []
    train.fit(model, x_obs, 3, batch_size=50, callback=lambda k: seen.append(model.step),
              progress=False)
    assert seen == [1, 2, 3]  # fit restarts the counter (prepare) and advances it after each step
    with pytest.raises(ValueError, match=r"x_obs must have shape \(B, 2\)"):
        model.loss(torch.zeros(5, 3))


def test_sourcerer_weight_decay_term_has_the_gradient_of_adams_weight_decay():
    lambdas = torch.zeros(1)
    sim, model = _tiny_sourcerer(lambdas, weight_decay=0.1)
    _, plain = _tiny_sourcerer(lambdas)  # same seed: the same weights
    x_obs = sim(sim.sample_source(100, gen()), gen())
    torch.manual_seed(1)
    g_decay = torch.autograd.grad(model.loss(x_obs), list(model.source.parameters()))
    torch.manual_seed(1)
    g_plain = torch.autograd.grad(plain.loss(x_obs), list(plain.source.parameters()))
    for a, b, p in zip(g_decay, g_plain, model.source.parameters()):
        assert_close(a, b + 0.1 * p.detach())
    x = model.sample(7, gen())
    assert x.shape == (7, 2) and not x.requires_grad


def test_plot_samples_panels_and_tradeoff_draw_their_data():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minigen import plot

    x = torch.randn(200, 2)
    axes = plot.samples_panels({"a": x, "b": 2 * x}, bounds=(-3, 3, -3, 3))
    assert [ax.get_title() for ax in axes] == ["a", "b"] and axes[0].get_ylabel()
    assert_close(torch.as_tensor(axes[1].collections[0].get_offsets().data), 2 * x.double())
    ax = plot.tradeoff([1.0, 2.0], [0.6, 0.5], ["l=0", "l=1"], xlabel="H", ylabel="C2ST",
                       reference={"ref": (2.5, 0.5)})
    assert ax.get_xlabel() == "H" and [t.get_text() for t in ax.texts] == ["l=0", "l=1"]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"estimates", "ref"}
    plt.close("all")


def test_kl_entropy_kd_tree_path_equals_the_brute_force_search():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 3, generator=g, dtype=torch.float64, requires_grad=True)
    tree, brute = sourcerer.kl_entropy(x, chunk=1000), sourcerer.kl_entropy(x, chunk=5000)
    assert torch.equal(tree, brute)
    (g_tree,), (g_brute,) = torch.autograd.grad(tree, x), torch.autograd.grad(brute, x)
    assert torch.equal(g_tree, g_brute)
    dup = x.detach().clone()
    dup[7] = dup[11]  # a duplicate pair: both have a neighbour at distance 0, in either order
    assert torch.equal(sourcerer.kl_entropy(dup, chunk=1000), sourcerer.kl_entropy(dup, chunk=5000))
