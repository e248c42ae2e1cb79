"""Every generative model shares one interface (loss, sample, log_prob) and one trainer (fit)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from minigen import data, diffusion, flows, gan, mmd, ode, train
from minigen import flow_matching as fm

MODELS = {
    "monotone flow": lambda: flows.monotone_flow(hidden=8, n_nodes=8),
    "coupling flow": lambda: flows.coupling_flow(2, n_layers=2, hidden=8),
    "MMD generator": lambda: mmd.MMDGenerator(2, hidden=8, depth=1),
    "WGAN": lambda: gan.GAN(2, hidden=8, depth=1),
    "vanilla GAN": lambda: gan.GAN(1, hidden=8, depth=1, critic_loss=gan.discriminator_loss,
                                   generator_loss=gan.generator_loss_nonsaturating, n_critic=1,
                                   ema=None),
    "diffusion ODE": lambda: diffusion.Diffusion(2, hidden=8, depth=1, stable_target=4,
                                                 sampler=ode.Solver(n_steps=3, ll_steps=3)),
    "diffusion SDE": lambda: diffusion.Diffusion(1, hidden=8, depth=1, stable_target=0,
                                                 sampler=diffusion.ReverseSDE(n_steps=5)),
    "flow matching": lambda: fm.FlowMatching(2, hidden=8, depth=1,
                                             solver=ode.Solver(n_steps=3, ll_steps=3)),
    "flow matching (OT, 1D)": lambda: fm.FlowMatching(1, hidden=8, depth=1, coupling=fm.ot_coupling,
                                                      solver=ode.Solver(n_steps=3, ll_steps=3)),
}
HAS_DENSITY = {"monotone flow", "coupling flow", "diffusion ODE", "diffusion SDE", "flow matching",
               "flow matching (OT, 1D)"}


def _build(name: str, dtype: torch.dtype = torch.float32) -> train.Model:
    torch.manual_seed(0)
    return MODELS[name]().to(dtype)


def _target(dim: int):
    return data.mixture_1d() if dim == 1 else data.mixture_2d()


@pytest.mark.parametrize("name", MODELS)
def test_loss_is_scalar_and_reaches_every_parameter(name):
    model = _build(name)
    for player, loss in model.training_losses(lambda: _target(model.dim).sample(8)):
        assert loss.dim() == 0 and torch.isfinite(loss)
        params = model.players()[player]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        # connected to the loss (a zero-initialised last layer or a critic's output bias, which
        # cancels in E_q f - E_p f, can give exact zeros at this point)
        missing = [i for i, g in enumerate(grads) if g is None or not torch.isfinite(g).all()]
        assert not missing, f"{name}: {player} parameters {missing} receive no gradient"
    assert model.loss(_target(model.dim).sample(8)).dim() == 0


@pytest.mark.parametrize("name", MODELS)
def test_players_cover_every_trainable_parameter_once(name):
    model = _build(name)
    ids = [id(p) for ps in model.players().values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", MODELS)
def test_sample_and_log_prob_follow_the_parameters_dtype(name, dtype):
    model = _build(name, dtype)
    x = model.sample(7, torch.Generator().manual_seed(1))
    assert x.shape == (7, model.dim) and x.dtype == dtype and not x.requires_grad
    if name in HAS_DENSITY:
        lp = model.log_prob(_target(model.dim).sample(5, dtype=dtype))
        assert lp.shape == (5,) and lp.dtype == dtype and torch.isfinite(lp).all()
    else:
        with pytest.raises(NotImplementedError, match="no tractable density"):
            model.log_prob(x)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_reproduces_samples(name):
    model = _build(name)
    train.fit(model, _target(model.dim), n_steps=3, batch_size=8, progress=False)
    clone = _build(name)  # same architecture, other weights after loading
    clone.load_state_dict(model.state_dict())
    g = lambda: torch.Generator().manual_seed(3)
    assert_close(clone.sample(11, g()), model.sample(11, g()))
    assert not torch.equal(model.sample(11, g()), _build(name).sample(11, g()))


@pytest.mark.parametrize("name", MODELS)
def test_wrong_batch_shape_names_the_expected_shape(name):
    model = _build(name)
    with pytest.raises(ValueError, match=rf"\(B, {model.dim}\)"):
        model.loss(torch.zeros(8, model.dim + 1))


def test_fit_uses_the_recipe_and_records_losses_and_time():
    model = _build("coupling flow")
    model.recipe = dict(n_steps=5, batch_size=16, lr=1e-3)
    result = train.fit(model, data.mixture_2d(), progress=False)
    assert result.losses.shape == (5, 1) and result.wall > 0 and result.cpu > 0
    assert result.settings["n_steps"] == 5 and result.settings["schedule"] == "cosine"


@pytest.mark.parametrize("family", [mmd.MMDGenerator, gan.GAN, diffusion.Diffusion, fm.FlowMatching])
def test_recipe_argument_overrides_the_family_defaults_and_keeps_the_rest(family):
    default = family(1).recipe
    changed = family(1, recipe=dict(n_steps=7, batch_size=5)).recipe
    assert (changed["n_steps"], changed["batch_size"]) == (7, 5)
    assert {k: v for k, v in changed.items() if k not in ("n_steps", "batch_size")} == \
        {k: v for k, v in default.items() if k not in ("n_steps", "batch_size")}


def test_fit_gan_alternates_players_with_their_own_learning_rates():
    model = _build("WGAN")
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    result = train.fit(model, data.mixture_2d(), n_steps=4, batch_size=16, progress=False)
    assert result.losses.shape == (4, model.n_critic + 1)
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, model.critic.parameters()))
    assert model.average.n_averaged == 4  # the average follows every generator step
    with pytest.raises(ValueError, match="players"):
        train.fit(model, data.mixture_2d(), n_steps=1, lr={"generator": 1e-3}, progress=False)


def test_fit_on_a_data_tensor_reproduces_with_a_generator():
    points = data.mixture_1d().sample(100, torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        model = _build("monotone flow")
        runs.append(train.fit(model, points, n_steps=5, batch_size=10, progress=False,
                              generator=torch.Generator().manual_seed(4)).losses)
    assert_close(runs[0], runs[1])


def test_fit_stops_at_the_first_non_finite_loss_naming_step_and_player():
    model = _build("WGAN")
    calls = {"n": 0}

    def data_fn(n):
        calls["n"] += 1
        return torch.full((n, 2), math.nan) if calls["n"] > 7 else torch.zeros(n, 2)

    # each step takes n_critic = 2 batches (prepare() sees step 0's first): the 8th is step 3's
    with pytest.raises(train.NonFiniteLossError, match=r"\(critic\).*step 3") as err:
        train.fit(model, data_fn, n_steps=10, batch_size=4, progress=False)
    assert err.value.step == 3 and err.value.player == "critic"


@pytest.mark.parametrize("bad", [dict(n_steps=0), dict(batch_size=0), dict(lr=-1.0),
                                 dict(clip_grad=0.0), dict(schedule="linear")])
def test_fit_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        train.fit(_build("monotone flow"), data.mixture_1d(), **{"n_steps": 1, **bad},
                  progress=False)


def test_fit_rejects_data_it_cannot_draw_from():
    with pytest.raises(TypeError, match="data must be"):
        train.fit(_build("monotone flow"), 3.0, n_steps=1, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        train.fit(_build("monotone flow"), torch.tensor([[0.0], [math.inf]]), n_steps=1,
                  progress=False)


def test_diffusion_prepare_sets_the_data_scale_from_the_first_batch():
    model = diffusion.Diffusion(1, hidden=8, depth=1)
    batch = 3.0 * torch.randn(4096, 1)
    model.prepare(batch)
    assert_close(float(model.score.sigma_data), float(batch.std()))
    fixed = diffusion.Diffusion(1, sigma_data=0.5, hidden=8, depth=1)
    fixed.prepare(batch)
    assert float(fixed.score.sigma_data) == 0.5


def test_diffusion_ode_log_prob_is_the_flow_matching_solver_on_the_probability_flow():
    model = _build("diffusion ODE", torch.float64)
    x = data.mixture_2d().sample(6, dtype=torch.float64)
    direct = diffusion.ode_log_prob(model.score, model.sde, x, n_steps=3, t_min=model.t_min)
    assert_close(model.log_prob(x), direct)


def test_flow_matching_defaults_follow_the_dimension():
    """1D: the sorted (OT) coupling and its recipe; 2D: the independent coupling; overrides win."""
    one, two = fm.FlowMatching(1, hidden=8, depth=1), fm.FlowMatching(2, hidden=8, depth=1)
    assert one.coupling is fm.ot_coupling and one.recipe == fm.FM_RECIPE_1D
    assert two.coupling is fm.independent_coupling and two.recipe == fm.FM_RECIPE_2D
    # the 1D default pairs the i-th smallest source point with the i-th smallest data point
    x0, x1 = torch.randn(64, 1, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    a, b = one.coupling(x0, x1)
    assert_close(b[a[:, 0].argsort()], x1.sort(0).values)
    own = fm.FlowMatching(1, coupling=fm.independent_coupling, recipe=dict(n_steps=7))
    assert own.coupling is fm.independent_coupling and own.recipe["n_steps"] == 7
    assert own.recipe["batch_size"] == fm.FM_RECIPE_1D["batch_size"]
