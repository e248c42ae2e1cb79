"""GAN losses and penalties: closed forms for linear critics, sign conventions, who moves in a step."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from minigen import gan, train


def linear_critic(w: list[float], b: float = 0.3) -> nn.Linear:
    f = nn.Linear(len(w), 1).double()
    with torch.no_grad():
        f.weight.copy_(torch.tensor([w], dtype=torch.float64))
        f.bias.fill_(b)
    return f


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(64, 2, generator=g, dtype=torch.float64) + 1
    fake = torch.randn(64, 2, generator=g, dtype=torch.float64) - 1
    return real, fake


@pytest.mark.parametrize("w", [[0.6, 0.8], [3.0, -4.0], [0.1, 0.0]])
def test_gradient_penalty_of_linear_critic_is_norm_minus_one_squared(w, batch):
    f = linear_critic(w)
    norm = math.hypot(*w)
    assert_close(gan.gradient_penalty(f, *batch), torch.tensor((norm - 1) ** 2, dtype=torch.float64))


@pytest.mark.parametrize("w", [[0.6, 0.8], [3.0, -4.0]])
def test_r1_and_r2_of_linear_critic_are_squared_norm(w, batch):
    f = linear_critic(w)
    expected = torch.tensor(w[0] ** 2 + w[1] ** 2, dtype=torch.float64)
    assert_close(gan.r1_penalty(f, batch[0]), expected)
    assert_close(gan.r2_penalty(f, batch[1]), expected)


def test_r1_of_quadratic_critic_matches_closed_form(batch):
    """f(x) = |x|^2 / 2 has gradient x, so R1 = E|x|^2."""
    real = batch[0]
    assert_close(gan.r1_penalty(lambda x: 0.5 * (x**2).sum(1), real), (real**2).sum(1).mean())


def test_critic_loss_sign_is_fake_minus_real(batch):
    """The critic loss is minimised by scoring data high: E_q f - E_p f."""
    real, fake = batch
    f = linear_critic([1.0, 1.0], b=0.0)
    expected = fake.sum(1).mean() - real.sum(1).mean()
    assert_close(gan.critic_loss(f, real, fake), expected)
    assert gan.critic_loss(f, real, fake) < 0  # data (around +1) already score higher
    assert_close(gan.generator_loss_wgan(f, fake), -fake.sum(1).mean())


def test_discriminator_loss_is_binary_cross_entropy(batch):
    real, fake = batch
    d = linear_critic([0.5, -0.2])
    logits = torch.cat([d(real)[:, 0], d(fake)[:, 0]])
    labels = torch.cat([torch.ones(64), torch.zeros(64)]).double()
    bce = nn.functional.binary_cross_entropy_with_logits(logits[:64], labels[:64]) + \
        nn.functional.binary_cross_entropy_with_logits(logits[64:], labels[64:])
    assert_close(gan.discriminator_loss(d, real, fake), bce)


def test_generator_losses_signs_and_value_at_chance():
    """At D = 1/2 (logit 0): non-saturating loss log 2, minimax loss -log 2."""
    x = torch.zeros(5, 1, dtype=torch.float64)
    d = lambda y: torch.zeros(y.shape[0], dtype=torch.float64)
    assert_close(gan.generator_loss_nonsaturating(d, x), torch.tensor(math.log(2), dtype=torch.float64))
    assert_close(gan.generator_loss_minimax(d, x), torch.tensor(-math.log(2), dtype=torch.float64))
    assert_close(gan.discriminator_loss(d, x, x), torch.tensor(2 * math.log(2), dtype=torch.float64))


def test_optimal_discriminator_logit_is_log_density_ratio():
    """For p = N(1, 1), q = N(-1, 1): the loss is minimised by the logit log p/q = 2x."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(20000, 1, generator=g, dtype=torch.float64) + 1
    fake = torch.randn(20000, 1, generator=g, dtype=torch.float64) - 1
    best = gan.discriminator_loss(lambda x: 2 * x[:, 0], real, fake)
    for scale in (1.8, 2.2):
        assert gan.discriminator_loss(lambda x: scale * x[:, 0], real, fake) > best
    assert_close(gan.log_ratio(lambda x: 2 * x, torch.ones(3, 1)), torch.full((3,), 2.0))


def _players():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), \
        nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))


def _snapshot(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _changed(m: nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_generator_step_moves_only_the_generator():
    G, C = _players()
    g_before, c_before = _snapshot(G), _snapshot(C)
    opt = torch.optim.SGD(G.parameters(), lr=0.1)
    gan.generator_step(G, C, opt, gan.generator_loss_wgan, torch.randn(16, 3))
    assert _changed(G, g_before)
    assert not _changed(C, c_before)
    assert all(p.grad is None for p in C.parameters())  # no stray gradients left on the critic


def test_critic_step_moves_only_the_critic():
    G, C = _players()
    g_before, c_before = _snapshot(G), _snapshot(C)
    opt = torch.optim.SGD(C.parameters(), lr=0.1)

    def loss(f, x, y):
        return gan.critic_loss(f, x, y) + 10 * gan.gradient_penalty(f, x, y)

    gan.critic_step(C, opt, loss, torch.randn(16, 2), G(torch.randn(16, 3)))
    assert _changed(C, c_before)
    assert not _changed(G, g_before)
    assert all(p.grad is None for p in G.parameters())


def test_mode_masses_counts_nearest_mode_within_radius():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[0.1, 0.0], [9.9, 0.2], [10.1, 0.0], [5.0, 5.0]])
    assert_close(gan.mode_masses(x, means, radius=1.0),
                 torch.tensor([0.25, 0.5, 0.0], dtype=torch.float64))


def test_bad_shapes_raise_clear_errors(batch):
    real, fake = batch
    f = linear_critic([1.0, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        gan.gradient_penalty(f, real, fake[:10])
    with pytest.raises(ValueError, match=r"critic must return \(B,\)"):
        gan.critic_loss(lambda x: x, real, fake)
    with pytest.raises(ValueError, match="means"):
        gan.mode_masses(real, torch.zeros(3, 5), 1.0)


def test_plot_mode_masses_draws_one_bar_per_mode_and_model():
    import matplotlib

    matplotlib.use("Agg")
    from minigen import plot

    masses = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.3, 0.3, 0.3])}
    ax = plot.mode_mass_bars(masses, expected=1 / 3)
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    assert ax.get_xlabel() == "mode" and ax.get_ylabel() == "mass"


def test_mode_masses_without_radius_are_voronoi_masses_summing_to_one():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    x = torch.tensor([[1.0, 0.0], [4.0, 0.0], [6.0, 0.0], [30.0, 0.0]])
    assert_close(gan.mode_masses(x, means), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_fused_r1_r2_loss_equals_sum_of_its_parts(batch):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    real, fake = batch
    expected = gan.critic_loss(f, real, fake) + 2.5 * (gan.r1_penalty(f, real) + gan.r2_penalty(f, fake))
    got = gan.wgan_r1_r2_loss(f, real, fake, 5.0)
    assert_close(got, expected)
    g1 = torch.autograd.grad(got, list(f.parameters()))
    g2 = torch.autograd.grad(expected, list(f.parameters()))
    for a, b in zip(g1, g2):
        assert_close(a, b)


def test_averaged_generator_is_the_exponential_moving_average_started_at_the_first_update():
    net = nn.Linear(3, 2).double()
    beta = 0.9
    avg = gan.averaged(net, beta)
    iterates = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]
    expected = iterates[0]  # the first update copies: the initial weights carry no weight
    for k, w in enumerate(iterates):
        with torch.no_grad():
            net.weight.copy_(w)
        avg.update_parameters(net)
        if k > 0:
            expected = beta * expected + (1 - beta) * w
        assert_close(avg.module.weight, expected)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_close(avg(x), x @ expected.T + avg.module.bias)  # it is called like the generator
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="decay must be in"):
            gan.averaged(net, bad)


def _gan(n_critic: int = 1, ema: float | None = None, **losses) -> gan.GAN:
    G, C = _players()
    return gan.GAN(2, latent_dim=3, generator_net=G, critic=C, n_critic=n_critic, ema=ema, **losses)


def test_fit_gan_returns_every_loss_and_moves_both_players():
    model = _gan(n_critic=2, critic_loss=gan.critic_loss)
    g_before, c_before = _snapshot(model.generator_net), _snapshot(model.critic)
    seen = []
    result = train.fit(model, lambda n: torch.randn(n, 2) + 2, 5, batch_size=8, callback=seen.append,
                       progress=False)
    assert result.losses.shape == (5, 3) and seen == [0, 1, 2, 3, 4]  # two critic losses, then G's
    assert _changed(model.generator_net, g_before) and _changed(model.critic, c_before)
    with pytest.raises(ValueError, match="n_critic must be >= 1"):
        _gan(n_critic=0)


def test_fit_gan_critic_step_moves_only_the_critic_and_generator_step_only_the_generator():
    """Snapshots taken when each loss is evaluated, inside one step of fit (critic, then generator)."""
    seen = {}

    def critic_loss(f, real, fake):
        seen["G at critic loss"] = _snapshot(model.generator_net)
        return gan.critic_loss(f, real, fake)

    def generator_loss(f, fake):
        seen["G at generator loss"] = _snapshot(model.generator_net)
        seen["C at generator loss"] = _snapshot(model.critic)
        seen["C grads at generator loss"] = [p.grad.clone() for p in model.critic.parameters()]
        seen["G grads at generator loss"] = [p.grad for p in model.generator_net.parameters()]
        return gan.generator_loss_wgan(f, fake)

    model = _gan(critic_loss=critic_loss, generator_loss=generator_loss)
    c_before = _snapshot(model.critic)
    train.fit(model, lambda n: torch.randn(n, 2) + 2, 1, batch_size=8, progress=False)
    # the critic step moved the critic, not the generator, and gave the generator no gradient
    assert _changed(model.critic, c_before)
    for p, q in zip(seen["G at critic loss"], seen["G at generator loss"]):
        assert torch.equal(p, q)
    assert all(gr is None for gr in seen["G grads at generator loss"])
    # the generator step moved the generator, not the critic, and left the critic's grads alone
    assert _changed(model.generator_net, seen["G at generator loss"])
    assert not _changed(model.critic, seen["C at generator loss"])
    for p, gr in zip(model.critic.parameters(), seen["C grads at generator loss"]):
        assert torch.equal(p.grad, gr)


def test_fit_gan_equals_critic_step_and_generator_step_alternated_by_hand():
    """The object runs the teaching layer: same data, latents and Adam settings, same weights."""
    real = [torch.randn(16, 2, dtype=torch.float64) + 2 for _ in range(4)]
    G, C = (m.double() for m in _players())
    by_hand = [copy.deepcopy(G), copy.deepcopy(C)]
    model = gan.GAN(2, 3, generator_net=G, critic=C, critic_loss=gan.discriminator_loss,
                    generator_loss=gan.generator_loss_nonsaturating, n_critic=1, ema=None)
    batches = iter(real)
    torch.manual_seed(3)
    train.fit(model, lambda n: next(batches), 4, batch_size=16, lr=1e-2, progress=False)

    G_h, C_h = by_hand
    g_opt = torch.optim.Adam(G_h.parameters(), lr=1e-2, betas=(0.5, 0.9))
    c_opt = torch.optim.Adam(C_h.parameters(), lr=1e-2, betas=(0.5, 0.9))
    torch.manual_seed(3)
    for x in real:
        with torch.no_grad():
            fake = G_h(torch.randn(16, 3, dtype=torch.float64))
        gan.critic_step(C_h, c_opt, gan.discriminator_loss, x, fake)
        gan.generator_step(G_h, C_h, g_opt, gan.generator_loss_nonsaturating,
                           torch.randn(16, 3, dtype=torch.float64))
    for a, b in zip([*G.parameters(), *C.parameters()], [*G_h.parameters(), *C_h.parameters()]):
        assert_close(a, b)


def test_fit_gan_updates_the_average_after_every_step():
    model = _gan(n_critic=1, ema=0.5, critic_loss=gan.critic_loss)
    snapshots = []
    train.fit(model, lambda n: torch.randn(n, 2) + 2, 3, batch_size=8, progress=False,
              callback=lambda k: snapshots.append(_snapshot(model.generator_net)))
    expected = snapshots[0]
    for snap in snapshots[1:]:
        expected = [0.5 * e + 0.5 * s for e, s in zip(expected, snap)]
    for a, e in zip(model.average.module.parameters(), expected):
        assert_close(a, e)
    assert int(model.average.n_averaged) == 3
    torch.manual_seed(0)
    from_average = model.sample(4)
    torch.manual_seed(0)
    assert_close(from_average, model.average.module(torch.randn(4, 3)))  # samples come from it
