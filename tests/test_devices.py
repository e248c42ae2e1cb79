"""Every tensor minigen creates follows its input's dtype and device.

No GPU is needed: a spy on ``torch.rand/randn/randint`` checks that every random draw names the
input's dtype and a device; ``torch.device("meta")`` tensors (shapes without storage) show that
noise lands on the input's device, not on the CPU; float64 inputs must give float64 outputs, so
a default-dtype float32 tensor creeping in shows up.
"""
import pytest
import torch

from minigen import diffusion, flow_matching, gan, mmd, ode, ot, sbi, simulators, sourcerer

F64 = torch.float64
META = torch.device("meta")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def draws(monkeypatch):
    """Record ``(name, device, dtype)`` of every ``torch.rand``, ``randn`` and ``randint`` call."""
    calls = []
    for name in ("rand", "randn", "randint"):
        original = getattr(torch, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs.get("device"), kwargs.get("dtype")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    return calls


def assert_every_draw_is(calls, dtype, device="cpu"):
    assert calls, "nothing was drawn"
    for name, dev, dt in calls:
        assert dev is not None and torch.device(dev) == torch.device(device), f"torch.{name} on {dev}"
        assert dt == dtype, f"torch.{name} drew {dt}, expected {dtype}"


def x64(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=F64, device="cpu")  # seen by the spy too


def score(x, t):
    return -x


DRAWING = {
    "reverse_sde_sample": lambda x, g: diffusion.reverse_sde_sample(score, diffusion.VPSDE(), x, 5, generator=g),
    "langevin": lambda x, g: diffusion.langevin(lambda y: -y, x, 0.01, 3, g),
    "annealed_langevin": lambda x, g: diffusion.annealed_langevin(
        score, diffusion.VESDE(), x, torch.linspace(1, 0.1, 3), 2, 0.01, g),
    "dsm_loss": lambda x, g: diffusion.dsm_loss(lambda y: -y, x, 0.5, g),
    "marginal_sample": lambda x, g: diffusion.marginal_sample(diffusion.VPSDE(), x, 0.5, g)[0],
    "cfm_loss": lambda x, g: flow_matching.cfm_loss(score, x, 2 * x, sigma=0.1, generator=g),
    "gradient_penalty": lambda x, g: gan.gradient_penalty(lambda y: (y**2).sum(1), x, 2 * x, g),
    "divergence_hutchinson": lambda x, g: ode.divergence_hutchinson(score, x, torch.zeros(len(x), dtype=x.dtype, device=x.device), g)[1],
}


@pytest.mark.parametrize("name", DRAWING)
@pytest.mark.parametrize("with_generator", [False, True])
def test_random_draws_name_the_input_dtype_and_device_and_give_float64(name, with_generator, draws):
    out = DRAWING[name](x64(6, 2), gen() if with_generator else None)
    assert out.dtype == F64
    assert_every_draw_is(draws, F64)


@pytest.mark.parametrize("name", [n for n in DRAWING if n != "annealed_langevin"])  # it reads float(sigma)
@pytest.mark.parametrize("with_generator", [False, True])
def test_noise_lands_on_the_input_device(name, with_generator):
    """A CPU generator draws on the CPU and the result moves to the input's device."""
    x = torch.empty(6, 2, dtype=F64, device=META)
    out = DRAWING[name](x, gen() if with_generator else None)
    assert out.device == META and out.dtype == F64


@pytest.mark.parametrize("sde", [diffusion.VPSDE(), diffusion.VESDE()], ids=["VP", "VE"])
def test_prior_sample_takes_dtype_and_device(sde, draws):
    assert sde.prior_sample(5, 2, gen(), dtype=F64).dtype == F64
    on_meta = sde.prior_sample(5, 2, dtype=F64, device=META)
    assert on_meta.device == META and on_meta.shape == (5, 2)
    # a CPU generator keeps its stream: the same numbers as the plain float64 draw
    scale = getattr(sde, "sigma_max", 1.0)
    torch.testing.assert_close(sde.prior_sample(5, 2, gen(1), dtype=F64),
                               scale * torch.randn(5, 2, generator=gen(1), dtype=F64))
    assert sde.prior_sample(5, 2, gen(1), dtype=F64, device=META).device == META


def test_ot_uniform_and_sinkhorn_divergence_follow_the_points(monkeypatch):
    assert ot.uniform(4, F64, META).device == META
    seen = []
    original = ot.uniform

    def spy(n, dtype=F64, device=None):
        seen.append((dtype, device))
        return original(n, dtype, device)

    monkeypatch.setattr(ot, "uniform", spy)
    x = torch.randn(5, 2, generator=gen(), dtype=torch.float32)
    s = ot.sinkhorn_divergence(x, x + 1, 0.5, 50)
    assert s.dtype == torch.float32
    assert seen == [(torch.float32, x.device)] * 2


def test_unmix_cutting_planes_gives_weights_in_the_dtype_of_H():
    rng = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(6, 2, generator=rng, dtype=F64), torch.randn(5, 2, generator=rng, dtype=F64)
    H = torch.zeros(6, 2, dtype=F64)
    H[:3, 0], H[3:, 1] = 1 / 3, 1 / 3
    w, losses = ot.unmix_cutting_planes(H, ot.uniform(5), ot.cost_matrix(xs, xt),
                                        torch.tensor([0.5, 0.5], dtype=F64))
    assert w.dtype == F64 and w.device == H.device and losses.dtype == F64


def test_curve_mixture_sample_follows_the_parameters(draws):
    model = mmd.CurveMixture(coef=(0.0, 1.0, -0.5), weight=0.3).double()
    assert model.sample(50, gen()).dtype == F64
    assert_every_draw_is(draws, F64)
    assert model.to(META).sample(50).device == META


def test_smeared_exponential_follows_theta(draws):
    sim = simulators.SmearedExponential()
    x, z = sim.simulate_joint(torch.full((20,), 0.8, dtype=F64), gen())
    assert x.dtype == z.dtype == F64
    assert_every_draw_is(draws, F64)
    assert sim.log_prob_quadrature(x, 0.8, n_points=101).dtype == F64


def test_simulators_draw_in_the_dtype_of_theta(draws):
    sim = simulators.TwoMoonsSimulator()
    assert sim(x64(10, 2), gen()).dtype == F64
    assert_every_draw_is(draws, F64)


def test_box_sampler_draws_on_its_own_device_and_dtype(draws):
    source = sourcerer.BoxSampler(torch.zeros(2), torch.ones(2), hidden=8, depth=1).double()
    assert source.sample(7, gen()).dtype == F64
    assert_every_draw_is(draws, F64)


def test_calibrated_log_ratio_keeps_float64():
    s0, s1 = x64(200, seed=1), x64(200, seed=2) + 1
    assert sbi.calibrated_log_ratio(x64(30), s0, s1, n_bins=8).dtype == F64


def test_odeint_and_flow_matching_sample_follow_the_input():
    x = torch.empty(4, 2, dtype=F64, device=META)
    assert flow_matching.sample(score, x, 3).device == META
    assert ode.odeint(score, x64(4, 2), 0.0, 1.0, 3).dtype == F64
