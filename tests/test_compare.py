"""Tests for minigen.compare: timing, evaluation counting, paired likelihood gaps, the HTML table."""
from __future__ import annotations

import math
import time

import pytest
import torch

from minigen import compare, data, diffusion, ode
from minigen import flow_matching as fm
from minigen.flows import monotone_flow
from minigen.nn import ConditionalMLP, mlp


def test_timed_returns_result_and_both_clocks():
    result, wall, cpu = compare.timed(lambda: sum(range(200_000)))
    assert result == sum(range(200_000))
    assert wall > 0 and cpu > 0


def test_timed_sleep_counts_wall_time_not_cpu_time():
    _, wall, cpu = compare.timed(lambda: time.sleep(0.2))
    assert wall >= 0.2 and cpu < 0.1


def test_count_rows_sums_batch_sizes_and_removes_hook():
    net = mlp(2, 1, hidden=4, depth=1)
    _, calls, rows = compare.count_rows(net, lambda: [net(torch.randn(b, 2)) for b in (3, 5, 7)])
    assert (calls, rows) == (3, 15)
    assert not net._forward_pre_hooks  # removed afterwards


def test_count_rows_removes_hook_on_error():
    net = mlp(2, 1, hidden=4, depth=1)

    def boom():
        net(torch.randn(2, 2))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compare.count_rows(net, boom)
    assert not net._forward_pre_hooks


def test_nfe_of_one_shot_generator_is_one():
    gen = mlp(3, 2, hidden=8, depth=2)
    nfe = compare.evaluations_per_sample(lambda n: gen(torch.randn(n, 3)), gen, 100)
    assert nfe == 1.0


@pytest.mark.parametrize("step", [ode.euler_step, ode.midpoint_step, ode.heun_step, ode.rk4_step])
def test_nfe_of_ode_sampler_is_steps_times_evaluations_per_step(step):
    field = ConditionalMLP(2, hidden=8, depth=1)
    nfe = compare.evaluations_per_sample(
        lambda n: fm.sample(field, torch.randn(n, 2), 5, step), field, 50)
    assert nfe == 5 * ode.NFE[step]


def test_nfe_of_reverse_sde_is_number_of_steps():
    sde = diffusion.VESDE()
    score = diffusion.ScoreNet(sde, 1, hidden=8, depth=1)
    with torch.no_grad():
        nfe = compare.evaluations_per_sample(
            lambda n: diffusion.reverse_sde_sample(score, sde, sde.prior_sample(n, 1), 13),
            score.net, 40)
    assert nfe == 13


def test_nfe_of_monotone_flow_counts_quadrature_nodes():
    flow = monotone_flow(hidden=8, n_nodes=4)
    nfe = compare.evaluations_per_sample(lambda n: flow.sample(n), flow.transforms[0].g, 200)
    rows = round(nfe * 200)
    assert rows % 5 == 0  # every evaluation of f(x) visits the K + 1 = 5 points s_k x and x
    assert nfe >= 2 * 5  # at least one Newton iteration and the final log-det pass


def test_evaluations_per_sample_rejects_bad_input():
    gen = mlp(1, 1, hidden=4, depth=1)
    other = mlp(1, 1, hidden=4, depth=1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        compare.evaluations_per_sample(lambda n: gen(torch.randn(n, 1)), gen, 0)
    with pytest.raises(ValueError, match="never called"):
        compare.evaluations_per_sample(lambda n: gen(torch.randn(n, 1)), other, 10)
    with pytest.raises(ValueError, match="instead of n"):
        compare.evaluations_per_sample(lambda n: gen(torch.randn(n + 1, 1)), gen, 10)


def test_loglik_gap_of_exact_density_is_zero():
    p = data.mixture_2d()
    x = p.sample(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    gap, se = compare.loglik_gap(p.log_prob(x), p.log_prob(x))
    assert gap == 0.0 and se == 0.0


def test_loglik_gap_estimates_kl_between_gaussians():
    # KL(N(0, 1) || N(m, s^2)) = log s + (1 + m^2) / (2 s^2) - 1/2
    m, s = 0.3, 1.5
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_p = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_q = -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    gap, se = compare.loglik_gap(log_p, log_q)
    kl = math.log(s) + (1 + m**2) / (2 * s**2) - 0.5
    assert abs(gap - kl) < 4 * se
    torch.testing.assert_close(se, float((log_p - log_q).std() / math.sqrt(len(x))))


def test_loglik_gap_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        compare.loglik_gap(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="not finite"):
        compare.loglik_gap(torch.zeros(3), torch.tensor([0.0, -math.inf, 0.0]))


def test_html_table_layout_formats_and_escaping():
    rows = [{"model": "a<b", "rho": 1.23456, "nfe": None}, {"model": "c", "rho": 2.0, "nfe": 4}]
    out = compare.html_table(rows, {"rho": ".2f"}, caption="1D & 2D")
    assert out.startswith("<table><caption>1D &amp; 2D</caption><thead><tr><th>model</th>")
    assert "<td>a&lt;b</td><td>1.23</td><td>&ndash;</td>" in out
    assert "<td>c</td><td>2.00</td><td>4</td>" in out
    assert out.count("<tr>") == 3


def test_html_table_rejects_bad_rows():
    with pytest.raises(ValueError, match="at least one row"):
        compare.html_table([])
    with pytest.raises(ValueError, match="row 1 has columns"):
        compare.html_table([{"a": 1}, {"b": 2}])
