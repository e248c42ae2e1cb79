"""Tests for minigen.compare: timing, evaluation counting, paired likelihood gaps, the moment-matched
Gaussian, the HTML table."""
from __future__ import annotations

import math
import time

import pytest
import torch

from minigen import compare, data, diffusion, flows, gan, metrics, mmd, ode, plot, train
from minigen import flow_matching as fm
from minigen.flows import monotone_flow
from minigen.networks import mlp


def test_timed_returns_the_result_and_the_two_clock_differences(monkeypatch):
    """With fake clocks that fn advances by known amounts, timed returns exactly those amounts,
    wall time from perf_counter and CPU time from process_time."""
    clock = {"wall": 100.0, "cpu": 7.0}
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(train.time, "process_time", lambda: clock["cpu"])

    def work():
        clock["wall"] += 2.5
        clock["cpu"] += 0.75
        return "done"

    assert train.timed(work) == ("done", 2.5, 0.75)


def test_timed_sleep_counts_wall_time_not_cpu_time():
    _, wall, cpu = train.timed(lambda: time.sleep(0.2))
    assert wall >= 0.2 and cpu < 0.1


def test_count_rows_sums_batch_sizes_and_removes_hook():
    net = mlp(2, 1, hidden=4, depth=1)
    _, calls, rows = metrics.count_rows(net, lambda: [net(torch.randn(b, 2)) for b in (3, 5, 7)])
    assert (calls, rows) == (3, 15)
    assert not net._forward_pre_hooks  # removed afterwards


def test_count_rows_removes_hook_on_error():
    net = mlp(2, 1, hidden=4, depth=1)

    def boom():
        net(torch.randn(2, 2))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        metrics.count_rows(net, boom)
    assert not net._forward_pre_hooks


def test_count_rows_counts_several_networks():
    a, b = mlp(2, 1, hidden=4, depth=1), mlp(2, 1, hidden=4, depth=1)
    _, calls, rows = metrics.count_rows([a, b], lambda: (a(torch.randn(3, 2)), b(torch.randn(4, 2))))
    assert (calls, rows) == (2, 7)
    assert not a._forward_pre_hooks and not b._forward_pre_hooks


def test_input_layers_are_the_first_linear_of_each_network():
    gan_model = gan.GAN(2, hidden=8, depth=2)  # generator, critic, averaged generator
    layers = metrics.input_layers(gan_model)
    assert layers == [gan_model.generator_net[0], gan_model.critic[0], gan_model.average.module[0]]
    assert metrics.input_layers(compare.Gaussian(torch.zeros(2), torch.eye(2))) == []


def test_nfe_of_one_shot_generators_is_one():
    for model in (mmd.MMDGenerator(2, hidden=8, depth=2), gan.GAN(2, hidden=8, depth=2),
                  gan.GAN(1, hidden=8, depth=1, ema=None)):
        assert metrics.evaluations_per_sample(model, 100) == 1.0


def test_nfe_of_coupling_flow_is_one_per_coupling_layer():
    for n_layers in (1, 3, 5):
        flow = flows.coupling_flow(2, n_layers=n_layers, hidden=8)
        assert metrics.evaluations_per_sample(flow, 50) == n_layers


@pytest.mark.parametrize("step, per_step", [(ode.euler_step, 1), (ode.midpoint_step, 2),
                                            (ode.heun_step, 2), (ode.rk4_step, 4)])
def test_nfe_of_ode_sampler_is_steps_times_evaluations_per_step(step, per_step):
    """Euler evaluates the field once per step, midpoint and Heun twice, RK4 four times; the
    counted evaluations and the solver's own table ode.NFE both say so."""
    flow_matching = fm.FlowMatching(2, hidden=8, depth=1, solver=ode.Solver(n_steps=5, step=step))
    diff = diffusion.Diffusion(1, hidden=8, depth=1, sampler=ode.Solver(n_steps=3, step=step))
    assert metrics.evaluations_per_sample(flow_matching, 50) == 5 * per_step
    assert metrics.evaluations_per_sample(diff, 50) == 3 * per_step
    assert ode.NFE[step] == per_step


def test_nfe_counts_the_same_points_as_a_hand_made_counter():
    model = fm.FlowMatching(1, hidden=8, depth=1, solver=ode.Solver(n_steps=7))
    calls = []

    def counted(x, t):
        calls.append(len(x))
        return model.field(x, t)

    model.solver.transport(counted, torch.randn(30, 1), t_base=0.0, t_data=1.0)
    assert metrics.evaluations_per_sample(model, 30) == sum(calls) / 30 == 28


def test_nfe_of_reverse_sde_is_number_of_steps():
    model = diffusion.Diffusion(1, hidden=8, depth=1, sampler=diffusion.ReverseSDE(n_steps=13))
    assert metrics.evaluations_per_sample(model, 40) == 13


def test_nfe_of_monotone_flow_counts_quadrature_nodes():
    flow = monotone_flow(hidden=8, n_nodes=4)
    nfe = metrics.evaluations_per_sample(flow, 200)
    rows = round(nfe * 200)
    assert rows % 5 == 0  # every evaluation of f(x) visits the K + 1 = 5 points s_k x and x
    assert nfe >= 2 * 5  # at least one Newton iteration and the final log-det pass


def test_nfe_of_a_model_without_network_is_zero():
    assert metrics.evaluations_per_sample(compare.Gaussian(torch.zeros(3), torch.eye(3)), 10) == 0


def test_evaluations_per_sample_rejects_bad_input():
    gen = mmd.MMDGenerator(1, hidden=4, depth=1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        metrics.evaluations_per_sample(gen, 0)
    gen.sample = lambda n, generator=None: torch.randn(n + 1, 1)
    with pytest.raises(ValueError, match="instead of n"):
        metrics.evaluations_per_sample(gen, 10)
    gen.sample = lambda n, generator=None: torch.randn(n, 1)  # bypasses the network
    with pytest.raises(ValueError, match="none of the 1 networks"):
        metrics.evaluations_per_sample(gen, 10)


def test_moment_matched_gaussian_has_the_mixture_moments():
    mixture = data.mixture_2d()
    gauss = compare.moment_matched(mixture)
    x = mixture.sample(400_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(gauss.mean, x.mean(0), atol=6e-3, rtol=0)
    torch.testing.assert_close(gauss.chol @ gauss.chol.T, x.T.cov(), atol=1e-2, rtol=0)
    y = gauss.sample(400_000, torch.Generator().manual_seed(1))
    assert y.shape == (400_000, 2) and y.dtype == torch.float64
    torch.testing.assert_close(y.T.cov(), x.T.cov(), atol=1e-2, rtol=0)


def test_gaussian_log_prob_is_the_closed_form():
    mean, cov = torch.tensor([0.5, -1.0]), torch.tensor([[2.0, 0.3], [0.3, 0.5]])
    gauss = compare.Gaussian(mean, cov)
    x = torch.randn(7, 2, dtype=torch.float64)
    d = x - mean.double()
    quad = (d @ torch.linalg.inv(cov.double()) * d).sum(1)
    expected = -0.5 * quad - 0.5 * torch.logdet(2 * math.pi * cov.double())
    torch.testing.assert_close(gauss.log_prob(x), expected)
    with pytest.raises(ValueError, match="positive definite"):
        compare.Gaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="mean must be"):
        compare.Gaussian(torch.zeros(2), torch.eye(3))


def test_loglik_gap_of_exact_density_is_zero():
    p = data.mixture_2d()
    x = p.sample(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    gap, se = metrics.loglik_gap(p.log_prob(x), p.log_prob(x))
    assert gap == 0.0 and se == 0.0


def test_loglik_gap_estimates_kl_between_gaussians():
    # KL(N(0, 1) || N(m, s^2)) = log s + (1 + m^2) / (2 s^2) - 1/2
    m, s = 0.3, 1.5
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_p = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_q = -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    gap, se = metrics.loglik_gap(log_p, log_q)
    kl = math.log(s) + (1 + m**2) / (2 * s**2) - 0.5
    assert abs(gap - kl) < 4 * se
    torch.testing.assert_close(se, float((log_p - log_q).std() / math.sqrt(len(x))))


def test_loglik_gap_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        metrics.loglik_gap(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="not finite"):
        metrics.loglik_gap(torch.zeros(3), torch.tensor([0.0, -math.inf, 0.0]))


def test_html_table_layout_formats_and_escaping():
    rows = [{"model": "a<b", "rho": 1.23456, "nfe": None}, {"model": "c", "rho": 2.0, "nfe": 4}]
    out = plot.html_table(rows, {"rho": ".2f"}, caption="1D & 2D")
    assert out.startswith("<table><caption>1D &amp; 2D</caption><thead><tr><th>model</th>")
    assert "<td>a&lt;b</td><td>1.23</td><td>&ndash;</td>" in out
    assert "<td>c</td><td>2.00</td><td>4</td>" in out
    assert out.count("<tr>") == 3


def test_html_table_rejects_bad_rows():
    with pytest.raises(ValueError, match="at least one row"):
        plot.html_table([])
    with pytest.raises(ValueError, match="row 1 has columns"):
        plot.html_table([{"a": 1}, {"b": 2}])
