"""Tests of diffnotes.training: learning a score, the loss history, the EMA, the progress bar, validation."""

import functools

import numpy as np
import pytest
import torch

from diffnotes.data import mixture_data
from diffnotes.losses import conditional_dsm_loss, dsm_loss, esm_loss
from diffnotes.networks import ConditionalScoreMLP, ScoreMLP, as_score, with_label
from diffnotes.sde import ConstantVP
from diffnotes.targets import GaussianMixture
from diffnotes.training import TrainResult, train

SDE = ConstantVP(T=10.0)
TARGET = GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.3, 0.3, 0.2], SDE)
T0 = 1e-2


def _score_error(score, x0):
    """Mean squared error to the exact score, averaged over t ~ U[t0, T] and x ~ P_t (unweighted ESM)."""
    with torch.no_grad():
        return float(esm_loss(score, TARGET.score, x0, T0, weight="none", sde=SDE,
                              generator=torch.Generator().manual_seed(7)))


def test_dsm_training_learns_the_score():
    """A few hundred DSM steps cut the L2 score error by a large factor (measured about 11x; asserted >= 5x)."""
    g = torch.Generator().manual_seed(0)
    x, _ = mixture_data(TARGET, 4000, g)
    x_eval = TARGET.sample(4000, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    model = as_score(ScoreMLP(2, hidden=64, depth=2), "eps", SDE)
    before = _score_error(model, x_eval)
    result = train(model, functools.partial(dsm_loss, t0=T0, sde=SDE), x, steps=300, batch_size=256, lr=3e-3,
                   generator=torch.Generator().manual_seed(3), progress=False, ema=0.99)
    after = _score_error(model, x_eval)
    assert before / after >= 5, (before, after)
    assert _score_error(result.ema_model, x_eval) < before / 5
    assert result.losses[-50:].mean() < result.losses[:50].mean()


def _toy(seed=0):
    """A tiny linear regression whose minibatch gradients are noisy, so iterates keep fluctuating."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(256, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, xb, yb, generator=None):
        return ((m(xb).squeeze(1) - yb) ** 2).mean()

    return model, loss_fn, (x, y)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_history_and_ema():
    model, loss_fn, data = _toy()
    iterates = []
    result = train(model, loss_fn, data, steps=200, batch_size=8, lr=0.05, ema=0.9, progress=False,
                   generator=torch.Generator().manual_seed(0), callback=lambda k, m, v: iterates.append(_flat(m)))
    assert isinstance(result, TrainResult)
    losses, trained, ema_model = result
    assert isinstance(losses, np.ndarray) and losses.shape == (200,) and np.isfinite(losses).all()
    assert trained is model and ema_model is not model
    assert torch.allclose(_flat(ema_model), _ema_of(iterates, 0.9), atol=1e-5)
    # It differs from the raw model and is closer to the mean of the recent iterates.
    recent = torch.stack(iterates[-20:]).mean(0)
    assert not torch.allclose(_flat(ema_model), _flat(model))
    assert (_flat(ema_model) - recent).norm() < (_flat(model) - recent).norm()
    assert all(not p.requires_grad for p in ema_model.parameters())


def _ema_of(iterates, d):
    """The bias-corrected exponential average of the iterates theta_1..theta_K."""
    K = len(iterates)
    weights = torch.tensor((1 - d) * d ** np.arange(K - 1, -1, -1), dtype=torch.float32)
    return (torch.stack(iterates) * weights[:, None]).sum(0) / (1 - d**K)


def test_ema_of_a_short_run_gives_the_initial_parameters_no_weight():
    model, loss_fn, data = _toy(1)
    initial, iterates = _flat(model), []
    result = train(model, loss_fn, data, steps=6, batch_size=8, lr=0.05, ema=0.9, progress=False,
                   generator=torch.Generator().manual_seed(0), callback=lambda k, m, v: iterates.append(_flat(m)))
    assert torch.allclose(_flat(result.ema_model), _ema_of(iterates, 0.9), atol=1e-6)
    # Without the bias correction the initial parameters would keep weight 0.9**6 = 0.53: clearly different.
    naive = 0.9**6 * initial + (_ema_of(iterates, 0.9) * (1 - 0.9**6))
    assert (naive - _flat(result.ema_model)).norm() > 1e-2


def test_reproducible_from_the_generator():
    runs = []
    for _ in range(2):
        model, loss_fn, data = _toy()
        runs.append(train(model, loss_fn, data, steps=20, batch_size=16, lr=0.01, progress=False,
                          generator=torch.Generator().manual_seed(4)).losses)
    assert np.array_equal(runs[0], runs[1])


def test_progress_bar_can_be_turned_off(capsys):
    model, loss_fn, data = _toy()
    train(model, loss_fn, data, steps=30, batch_size=16, lr=0.01, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    train(model, loss_fn, data, steps=30, batch_size=16, lr=0.01, progress=True)
    assert "training" in capsys.readouterr().err


def test_bad_arguments_raise():
    model, loss_fn, data = _toy()
    good = dict(steps=2, batch_size=4, lr=0.01, progress=False)
    for key, bad in [("steps", 0), ("steps", 1.5), ("batch_size", 0), ("lr", 0.0), ("lr", -1.0),
                     ("lr", float("nan")), ("ema", 0.0), ("ema", 1.0), ("ema", 1.5)]:
        with pytest.raises(ValueError):
            train(model, loss_fn, data, **{**good, key: bad})
    with pytest.raises(ValueError, match="first dimension"):
        train(model, loss_fn, (data[0], data[1][:10]), **good)
    with pytest.raises(TypeError):
        train(lambda x: x, loss_fn, data, **good)
    with pytest.raises(ValueError, match="scalar"):
        train(model, lambda m, xb, yb, generator=None: m(xb), data, **good)
    with pytest.raises(FloatingPointError, match="step 1"):
        train(model, lambda m, xb, yb, generator=None: m(xb).sum() * float("nan"), data, **good)


def test_batches_larger_than_the_data_and_dtype_casting():
    """A batch may span several epochs; float64 data are cast to the float32 model."""
    seen = []

    def loss_fn(m, xb, generator=None):
        seen.append(xb)
        return m(xb).pow(2).mean()

    model = torch.nn.Linear(2, 1)
    data = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    train(model, loss_fn, data, steps=2, batch_size=8, lr=0.01, progress=False,
          generator=torch.Generator().manual_seed(0))
    assert seen[0].dtype == torch.float32 and seen[0].shape == (8, 2)
    rows = torch.cat(seen)[:, 0].long().tolist()
    assert sorted(rows[:5]) == [0, 2, 4, 6, 8]  # the first epoch sees every point once


def test_conditional_training_with_label_dropout():
    g = torch.Generator().manual_seed(0)
    x, y = mixture_data(TARGET, 2000, g)
    torch.manual_seed(0)
    model = as_score(ConditionalScoreMLP(2, 3, hidden=32, depth=2), "eps", SDE)
    loss = functools.partial(conditional_dsm_loss, t0=T0, sde=SDE, p_uncond=0.2)
    result = train(model, loss, (x, y), steps=150, batch_size=128, lr=3e-3, generator=g, progress=False)
    assert result.losses[-30:].mean() < result.losses[:30].mean()
    x_eval = TARGET.sample(1000, torch.Generator().manual_seed(1))
    uncond = with_label(model, model.null_label)
    assert np.isfinite(_score_error(uncond, x_eval))


def test_cosine_schedule_sets_the_adam_step_sizes():
    """With a constant gradient each Adam step moves a parameter by its learning rate (up to eps), so the iterates
    of a loss linear in w give the schedule lr_k = lr (1 + cos(pi k / K)) / 2 step by step."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    data = torch.zeros(4, 1)
    path = []
    steps, lr = 10, 0.1
    train(model, lambda m, xb, generator=None: m.w * 1.0, data, steps=steps, batch_size=2, lr=lr, progress=False,
          lr_schedule="cosine", callback=lambda k, m, v: path.append(float(m.w.detach())))
    moves = -np.diff([0.0, *path])
    expected = 0.5 * lr * (1 + np.cos(np.pi * np.arange(steps) / steps))
    np.testing.assert_allclose(moves, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        train(model, lambda m, xb, generator=None: m.w * 1.0, data, steps=2, lr_schedule="linear", progress=False)
