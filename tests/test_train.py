"""The training loop: it minimises, records the history, and names the step of a non-finite loss."""
import pytest
import torch

from minigen import networks, train


def test_train_fits_a_linear_map_and_returns_the_history():
    torch.manual_seed(0)
    x = torch.randn(256, 3, dtype=torch.float64)
    w = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    loss_fn = lambda m, batch: ((m(batch) - batch @ w) ** 2).mean()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train.train(model, loss_fn, opt, x, n_steps=200, progress=False)
    assert history.shape == (200,)
    assert history[-1] < 1e-10 < history[0]
    torch.testing.assert_close(model.weight.data, w.T)


def test_train_draws_a_fresh_batch_per_step():
    seen = []
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train.train(model, lambda m, b: m(b).sum() * 0, opt, lambda step: seen.append(step) or torch.ones(1, 1),
                n_steps=5, progress=False)
    assert seen == [0, 1, 2, 3, 4]


def test_non_finite_loss_names_the_step():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = lambda m, step_batch: m(step_batch).sum() * (float("nan") if step_batch[0, 0] > 6 else 1.0)
    with pytest.raises(train.NonFiniteLossError, match="at step 7") as err:
        train.train(model, loss_fn, opt, lambda step: torch.full((1, 1), float(step)), 20, progress=False)
    assert err.value.step == 7


def test_loop_records_several_losses_and_rejects_infinite_ones():
    history = train.loop(lambda k: (k, 2 * k), 4, progress=False)
    torch.testing.assert_close(history, torch.tensor([[0.0, 0], [1, 2], [2, 4], [3, 6]]))
    with pytest.raises(train.NonFiniteLossError, match=r"\(inf\) at step 2"):
        train.loop(lambda k: (1.0, float("inf") if k == 2 else 0.0), 4, progress=False)
    with pytest.raises(ValueError, match="n_steps"):
        train.loop(lambda k: 0.0, 0)


def test_train_updates_every_parameter_of_an_mlp():
    model = networks.mlp(2, 1, hidden=8, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    train.train(model, lambda m, b: m(b).pow(2).mean(), opt, torch.randn(16, 2), 3, progress=False)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


class _Centre(train.Model):
    """A toy model: loss E|x - w|^2, minimised at the data mean."""

    def __init__(self):
        super().__init__()
        self.dim, self.recipe = 2, {}
        self.w = torch.nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.w) ** 2).sum(1).mean()


def test_fit_is_train_with_fused_adam_its_schedule_and_the_same_batches():
    """fit = the teaching loop with Adam (fused), a cosine decay and clipping, on the same batches;
    the batch prepare() sees is the one step 0 trains on, so no draw is wasted."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 2, generator=g, dtype=torch.float64) for _ in range(6)]
    by_fit, by_train = _Centre(), _Centre()
    stream = iter(batches)
    result = train.fit(by_fit, lambda n: next(stream), 6, batch_size=8, lr=0.1, schedule="cosine",
                       clip_grad=0.5, progress=False)
    opt = torch.optim.Adam(by_train.parameters(), lr=0.1, fused=True)
    history = train.train(by_train, lambda m, b: m.loss(b), opt, lambda k: batches[k], 6,
                          scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, 6),
                          clip_grad=0.5, progress=False)
    torch.testing.assert_close(result.losses[:, 0], history)
    torch.testing.assert_close(by_fit.w, by_train.w)
    assert result.settings["schedule"] == "cosine"
    assert not torch.equal(by_fit.w.detach(), torch.tensor([3.0, -1.0], dtype=torch.float64))


def test_train_steps_the_scheduler_once_per_step():
    """SGD on loss = w (gradient 1) with lr 0.1 halved after every step: step k runs at 0.1 / 2^k,
    and after 4 steps w = -0.1 (1 + 1/2 + 1/4 + 1/8) = -0.1875."""
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    seen = []

    def loss_fn(m, batch):
        seen.append(opt.param_groups[0]["lr"])
        return m.w * batch

    train.train(model, loss_fn, opt, torch.ones((), dtype=torch.float64), 4,
                scheduler=torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), progress=False)
    assert seen == [0.1, 0.05, 0.025, 0.0125]
    torch.testing.assert_close(w.detach(), torch.tensor(-0.1875, dtype=torch.float64))


@pytest.mark.parametrize("clip, step", [(0.5, 0.1), (2.5, 0.5), (10.0, 1.0), (None, 1.0)])
def test_train_clips_the_joint_gradient_norm(clip, step):
    """loss = 3 a + 4 b has the gradient (3, 4) of norm 5 over the two parameters together: one SGD
    step at lr 1 moves (a, b) by -(3, 4) scaled to norm min(5, clip), i.e. by a factor min(1, clip/5)."""
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    model.b = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train.train(model, lambda m, _: 3 * m.a + 4 * m.b, opt, torch.zeros(1), 1, clip_grad=clip,
                progress=False)
    moved = torch.stack([model.a.detach(), model.b.detach()])
    # clip_grad_norm_ scales by clip / (norm + 1e-6): a relative error of 2e-7
    torch.testing.assert_close(moved, -step * torch.tensor([3.0, 4.0], dtype=torch.float64),
                               rtol=1e-6, atol=0)

class _Pairs(train.Model):
    """Records the batches fit hands it; its loss reads a pair (theta, x)."""

    def __init__(self):
        super().__init__()
        self.dim, self.recipe, self.seen = 1, {}, []
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def loss(self, batch):
        theta, x = batch
        self.seen.append((theta.clone(), x.clone()))
        return ((theta + x - self.w) ** 2).mean()


def test_fit_draws_the_rows_of_a_tuple_of_tensors_jointly():
    theta = torch.arange(50, dtype=torch.float64)[:, None]  # (50, 1)
    x = 10 * theta  # (50, 1): row i is 10 i
    model = _Pairs()
    train.fit(model, (theta, x), 4, batch_size=16, lr=0.1,
              generator=torch.Generator().manual_seed(0), progress=False)
    assert len(model.seen) == 4
    rows = torch.cat([t for t, _ in model.seen])[:, 0]
    assert len(rows.unique()) > 16  # different rows per step, drawn with replacement from all 50
    for t, xb in model.seen:
        assert t.shape == (16, 1) and xb.shape == (16, 1)
        torch.testing.assert_close(xb, 10 * t)  # the pairs stay paired


def test_fit_rejects_a_tuple_of_unequal_or_non_finite_tensors():
    with pytest.raises(ValueError, match=r"equal length, got \[5, 4\]"):
        train.fit(_Pairs(), (torch.zeros(5, 1), torch.zeros(4, 1)), 1, progress=False)
    with pytest.raises(ValueError, match=r"data\[1\] holds 1 non-finite"):
        train.fit(_Pairs(), (torch.zeros(5, 1), torch.tensor([[0.0]] * 4 + [[float("nan")]])), 1,
                  progress=False)
    with pytest.raises(ValueError, match=r"data\[0\] must be \(N, d\)"):
        train.fit(_Pairs(), (torch.zeros(5), torch.zeros(5, 1)), 1, progress=False)
