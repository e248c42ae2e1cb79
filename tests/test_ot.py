"""minigen.ot: plan marginals, emd2 gradients, the simplex projection, unmixing, Sinkhorn."""
import numpy as np
import ot as pot
import pytest
import torch
from torch.testing import assert_close

from minigen import ot

F64 = dict(dtype=torch.float64)


def clouds(n=12, m=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, **F64, generator=g)
    y = torch.randn(m, 2, **F64, generator=g) * 0.5 + torch.tensor([1.0, 0.5], **F64)
    a = torch.rand(n, **F64, generator=g) + 0.5
    b = torch.rand(m, **F64, generator=g) + 0.5
    return x, y, a / a.sum(), b / b.sum()


def peer_data():
    """POT's unmixing example, exactly: np.random.RandomState(2)."""
    rng = np.random.RandomState(2)
    xt = rng.randn(100, 2) * 0.2
    xt[:10, 0] += 1
    xt[10:, 1] += 1
    xs1 = rng.randn(50, 2) * 0.2
    xs1[:, 0] += 1
    xs2 = rng.randn(50, 2) * 0.2
    xs2[:, 1] += 1
    H = torch.zeros(100, 2, **F64)
    H[:50, 0], H[50:, 1] = 1 / 50, 1 / 50
    M = ot.cost_matrix(torch.from_numpy(np.concatenate([xs1, xs2])), torch.from_numpy(xt))
    return H, ot.uniform(100), M


def test_cost_matrix_is_the_squared_distance_and_matches_pot():
    x, y, _, _ = clouds()
    M = ot.cost_matrix(x, y)
    assert_close(M[3, 4], ((x[3] - y[4]) ** 2).sum())
    assert_close(M, torch.from_numpy(pot.dist(x.numpy(), y.numpy())))


def test_exact_plan_has_the_prescribed_marginals_and_its_cost_is_emd2():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    P = ot.emd(a, b, M)
    assert (P >= 0).all()
    assert_close(P.sum(1), a)
    assert_close(P.sum(0), b)
    assert_close((P * M).sum(), ot.emd2(a, b, M))


def test_wasserstein2_of_a_translated_cloud_is_the_translation_length():
    x, _, _, _ = clouds()
    assert ot.wasserstein2(x, x + torch.tensor([3.0, 4.0], **F64)) == pytest.approx(5.0, rel=1e-9)


def test_ot_permutation_matches_brute_force_pairing_cost():
    import itertools

    x, y, _, _ = clouds(n=6, m=6, seed=3)
    sigma = ot.ot_permutation(x, y)
    assert sorted(sigma.tolist()) == list(range(6))
    cost = lambda p: float(((x - y[list(p)]) ** 2).sum())
    assert cost(sigma.tolist()) == pytest.approx(min(map(cost, itertools.permutations(range(6)))))


def test_gradient_of_emd2_in_the_weights_matches_finite_differences():
    H, b, M = peer_data()
    # a generic point: at w1 = 0.3 the source weights 0.006 tie with sums of the target's 0.01,
    # the LP is degenerate, the loss has a kink and its gradient is only a subgradient
    w = torch.tensor([0.3183, 0.6817], **F64, requires_grad=True)
    (grad,) = torch.autograd.grad(ot.emd2(H @ w, b, M), w)
    direction = torch.tensor([1.0, -1.0], **F64)  # stays on the simplex: the loss is defined there
    h = 1e-6
    loss = lambda v: float(ot.emd2(H @ v, b, M))
    fd = (loss(w.detach() + h * direction) - loss(w.detach() - h * direction)) / (2 * h)
    assert fd == pytest.approx(float(grad @ direction), rel=1e-6)


def test_gradient_of_emd2_in_a_is_a_dual_potential():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    a = a.clone().requires_grad_(True)
    (f,) = torch.autograd.grad(ot.emd2(a, b, M), a)
    _, log = pot.emd(a.detach().numpy(), b.numpy(), M.numpy(), log=True)
    g = torch.from_numpy(log["v"])
    P = ot.emd(a.detach(), b, M)
    # complementary slackness: f_i + g_j = M_ij wherever P_ij > 0, up to a constant shift
    support = P > 1e-12
    shift = (M - f[:, None] - g[None, :])[support]
    assert_close(shift, shift.mean().expand_as(shift), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_projection_lies_on_the_simplex_is_idempotent_and_satisfies_kkt(seed):
    v = torch.randn(7, **F64, generator=torch.Generator().manual_seed(seed)) * 2
    x = ot.project_simplex(v)
    assert (x >= 0).all() and float(x.sum()) == pytest.approx(1.0, abs=1e-12)
    assert_close(ot.project_simplex(x), x)
    # KKT: v_i - x_i = tau on the support, v_i - x_i <= tau off it
    tau = (v - x)[x > 0]
    assert_close(tau, tau.mean().expand_as(tau))
    assert ((v - x)[x == 0] <= tau.mean() + 1e-12).all()
    assert_close(x, torch.from_numpy(pot.utils.proj_simplex(v.numpy())))


def test_projection_is_closer_than_any_other_simplex_point():
    g = torch.Generator().manual_seed(9)
    v = torch.randn(5, **F64, generator=g)
    x = ot.project_simplex(v)
    others = torch.distributions.Dirichlet(torch.ones(5, **F64)).sample((2000,))
    # variational inequality <v - x, y - x> <= 0 for every y in the simplex
    assert (((v - x) * (others - x)).sum(1) <= 1e-12).all()


def test_projection_rejects_a_matrix():
    with pytest.raises(ValueError, match="non-empty vector"):
        ot.project_simplex(torch.zeros(2, 2))


def test_unmix_reproduces_pots_published_estimate():
    H, b, M = peer_data()
    w, losses = ot.unmix_projected_gradient(H, b, M, torch.tensor([0.5, 0.5], **F64), lr=2e-3, n_iter=500)
    assert_close(w, torch.tensor([0.09980706, 0.90019294], **F64), rtol=0, atol=1e-8)
    assert losses.shape == (500,)


def test_adaptive_unmix_reaches_the_exact_lp_optimum():
    H, b, M = peer_data()
    w_lp, cost = ot.unmix_lp(H, b, M)
    w, _ = ot.unmix_projected_gradient(H, b, M, torch.tensor([0.5, 0.5], **F64), adaptive=True)
    assert_close(w, w_lp, rtol=0, atol=1e-9)
    assert float(ot.emd2(H @ w_lp, b, M)) == pytest.approx(cost, rel=1e-9)


def test_lp_optimum_is_below_the_loss_on_a_grid_of_weights():
    H, b, M = peer_data()
    _, cost = ot.unmix_lp(H, b, M)
    for s in torch.linspace(0, 1, 11, **F64):
        assert float(ot.emd2(H @ torch.stack([s, 1 - s]), b, M)) >= cost - 1e-12


def test_log_domain_sinkhorn_matches_pot_in_float64():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    for eps in (1.0, 0.1):
        P, _, _ = ot.sinkhorn_log(a, b, M, eps, n_iter=5000)
        ref = pot.sinkhorn2(a, b, M, eps, numItermax=100_000, stopThr=1e-14)
        assert_close((P * M).sum(), ref, rtol=0, atol=1e-8)
        assert_close(P.sum(0), b, rtol=0, atol=1e-10)
        assert_close(P.sum(1), a, rtol=0, atol=1e-10)


def test_scaling_and_log_domain_sinkhorn_agree_where_both_work():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    assert_close(ot.sinkhorn_scaling(a, b, M, 0.5, 2000), ot.sinkhorn_log(a, b, M, 0.5, 2000)[0])


def test_scaling_sinkhorn_fails_at_a_small_blur_where_the_log_domain_one_stays_finite():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    assert torch.isnan(ot.sinkhorn_scaling(a, b, M, 1e-3, 10)).any()
    P, f, g = ot.sinkhorn_log(a, b, M, 1e-3, 10)
    assert torch.isfinite(P).all() and torch.isfinite(f).all() and torch.isfinite(g).all()


def test_entropic_cost_is_plan_cost_plus_eps_kl_and_tends_to_emd2():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    eps = 0.2
    P, _, _ = ot.sinkhorn_log(a, b, M, eps, 5000)
    kl = (P * (P / (a[:, None] * b[None, :])).log()).sum()
    assert_close(ot.entropic_ot(a, b, M, eps, 5000), (P * M).sum() + eps * kl)
    exact = float(ot.emd2(a, b, M))
    gaps = [abs(float((ot.sinkhorn_log(a, b, M, e, 20_000, tol=1e-12)[0] * M).sum()) - exact)
            for e in (0.3, 0.03, 0.003)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_sinkhorn_divergence_is_zero_on_equal_clouds_symmetric_and_positive_otherwise():
    x, y, _, _ = clouds(n=10, m=10)
    # zero at convergence: the cross term (alternating updates) and the self terms (averaged
    # symmetric updates) are solved differently, so they cancel only once both have converged
    assert abs(float(ot.sinkhorn_divergence(x, x, 1.0, 5000, tol=1e-14))) < 1e-12
    assert_close(ot.sinkhorn_divergence(x, y, 0.1), ot.sinkhorn_divergence(y, x, 0.1))
    assert float(ot.sinkhorn_divergence(x, y, 0.1)) > 0


def test_bad_input_is_rejected_with_a_message():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y)
    with pytest.raises(ValueError, match="eps must be positive"):
        ot.sinkhorn_log(a, b, M, 0.0)
    with pytest.raises(ValueError, match="equal mass"):
        ot.emd(a, 2 * b, M)
    with pytest.raises(ValueError, match="M must have shape"):
        ot.emd2(a, b, M.T)
    with pytest.raises(ValueError, match="x and y must be"):
        ot.cost_matrix(x, y[:, :1])


def three_source_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.8, -0.6]], **F64)
    xs = centres.repeat_interleave(n, 0) + 0.25 * torch.randn(3 * n, 2, **F64, generator=g)
    k = torch.multinomial(torch.tensor([0.2, 0.3, 0.5], **F64), n, replacement=True, generator=g)
    xt = centres[k] + 0.25 * torch.randn(n, 2, **F64, generator=g)
    return torch.eye(3, **F64).repeat_interleave(n, 0) / n, ot.uniform(n), ot.cost_matrix(xs, xt)


@pytest.mark.parametrize("seed", range(3))
def test_cutting_planes_reach_the_lp_optimum_with_three_sources(seed):
    H, b, M = three_source_problem(seed=seed)
    w_lp, cost = ot.unmix_lp(H, b, M)
    w, losses = ot.unmix_cutting_planes(H, b, M, torch.full((3,), 1 / 3, **F64))
    assert_close(w, w_lp, rtol=0, atol=1e-9)
    assert float(losses.min()) == pytest.approx(cost, abs=1e-12)


def test_cutting_planes_agree_with_the_adaptive_gradient_on_two_sources():
    H, b, M = peer_data()
    w0 = torch.tensor([0.5, 0.5], **F64)
    assert_close(ot.unmix_cutting_planes(H, b, M, w0)[0], ot.unmix_projected_gradient(H, b, M, w0, adaptive=True)[0],
                 rtol=0, atol=1e-9)


def test_unmix_default_reaches_the_linear_program_optimum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    sources = [x[:20], x[20:40] + 2.0, x[40:] - 2.0]  # three sources of 20 points
    y = torch.cat([sources[0][:6], sources[1][:10], sources[2][:4]])  # observed: 0.3, 0.5, 0.2
    support = torch.cat(sources)
    H = torch.zeros(60, 3, dtype=torch.float64)
    for k in range(3):
        H[20 * k:20 * (k + 1), k] = 1 / 20
    M = ot.cost_matrix(support, y)
    b = ot.uniform(len(y))
    w, losses = ot.unmix(H, b, M)
    w_lp, cost_lp = ot.unmix_lp(H, b, M)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12) and bool((w >= 0).all())
    assert float(losses.min()) == pytest.approx(float(cost_lp), abs=1e-9)


def test_entropic_ot_gradient_in_the_cost_is_the_plan_envelope_theorem():
    x, y, a, b = clouds()
    M = ot.cost_matrix(x, y).requires_grad_(True)
    (grad_M,) = torch.autograd.grad(ot.entropic_ot(a, b, M, 0.2, 5000, tol=1e-14), M)
    P, _, _ = ot.sinkhorn_log(a, b, M.detach(), 0.2, 5000, tol=1e-14)
    assert_close(grad_M, P, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [1.0, 0.25])
def test_sinkhorn_divergence_gradients_match_finite_differences(eps):
    x, y, a, b = clouds(n=7, m=5, seed=4)
    S = lambda x, a: ot.sinkhorn_divergence(x, y, eps, 5_000, a=a, b=b, tol=1e-13)
    xg, ag = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
    grad_x, grad_a = torch.autograd.grad(S(xg, ag), (xg, ag))
    h = 1e-5
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # random directions in the positions
        v = torch.randn(x.shape, **F64, generator=g)
        fd = (float(S(x + h * v, a)) - float(S(x - h * v, a))) / (2 * h)
        assert fd == pytest.approx(float((grad_x * v).sum()), rel=1e-6, abs=1e-9)
    v = torch.randn(a.shape, **F64, generator=g)
    v = v - v.mean()  # a direction that stays on the simplex
    fd = (float(S(x, a + h * v)) - float(S(x, a - h * v))) / (2 * h)
    assert fd == pytest.approx(float(grad_a @ v), rel=1e-6, abs=1e-9)


def test_weighted_sinkhorn_divergence_with_uniform_weights_is_the_unweighted_one_and_zero_on_equal_measures():
    x, y, a, _ = clouds(n=10, m=8)
    assert_close(ot.sinkhorn_divergence(x, y, 0.3, a=ot.uniform(10), b=ot.uniform(8)),
                 ot.sinkhorn_divergence(x, y, 0.3))
    assert abs(float(ot.sinkhorn_divergence(x, x, 1.0, 5000, a=a, b=a, tol=1e-14))) < 1e-12
    assert float(ot.sinkhorn_divergence(x, x, 1.0, 5000, a=a, b=ot.uniform(10), tol=1e-14)) > 1e-4
    with pytest.raises(ValueError, match="weights a must have shape"):
        ot.sinkhorn_divergence(x, y, 0.3, a=ot.uniform(9))


def test_symmetric_self_transport_solver_matches_the_alternating_iteration():
    x, _, a, _ = clouds(n=10, m=10)
    M = ot.cost_matrix(x, x)
    assert_close(ot._entropic_ot_self(a, M, 1.0, 200, 0.0), ot.entropic_ot(a, a, M, 1.0, 5000, tol=1e-14),
                 rtol=0, atol=1e-12)
