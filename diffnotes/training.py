r"""A small training loop for score networks, noise-aware classifiers and anything trained by minibatch loss.

The review (Section 4.1; book chapter *Learning the score*) minimises the empirical denoising score-matching loss:
draw a minibatch of the n data points, a time :math:`t\sim\mathsf U[t_0, T]` and noise for each, and take a gradient
step.  :func:`train` does exactly that with Adam, and optionally keeps an exponential moving average (EMA) of the
parameters, the usual companion of diffusion training :cite:p:`ho2020denoising,song2021score`.

The loss is any callable ``loss_fn(model, *batch, generator=generator)`` returning a scalar tensor; the batch is a
minibatch of each tensor in ``data``.  For instance ``functools.partial(dsm_loss, t0=1e-3, sde=sde)`` with
``data = x`` or ``functools.partial(conditional_dsm_loss, p_uncond=0.2)`` with ``data = (x, y)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.std import tqdm

__all__ = ["TrainResult", "train", "ema_update"]


@dataclass
class TrainResult:
    """What :func:`train` returns; it also unpacks as ``losses, model, ema_model``.

    * ``losses``: the minibatch loss at every step, a float64 numpy array of shape (steps,);
    * ``model``: the trained model (the object that was passed in, trained in place);
    * ``ema_model``: a copy of the model holding the EMA of the parameters, or None if no EMA was requested.
    """

    losses: np.ndarray
    model: nn.Module
    ema_model: nn.Module | None = None

    def __iter__(self):
        """Unpack as ``losses, model, ema_model``."""
        return iter((self.losses, self.model, self.ema_model))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _as_batches(data) -> tuple[torch.Tensor, ...]:
    tensors = data if isinstance(data, (tuple, list)) else (data,)
    if len(tensors) == 0:
        raise ValueError("data must be a tensor or a non-empty tuple of tensors")
    out = []
    for k, d in enumerate(tensors):
        if isinstance(d, np.ndarray):
            d = torch.as_tensor(d)
        if not isinstance(d, torch.Tensor) or d.ndim < 1:
            raise TypeError(f"data[{k}] must be a tensor with a first (sample) dimension, got "
                            f"{getattr(d, 'shape', type(d).__name__)}")
        out.append(d)
    n = out[0].shape[0]
    if n < 1:
        raise ValueError("data is empty")
    if any(d.shape[0] != n for d in out):
        raise ValueError(f"all data tensors must share the first dimension, got {[d.shape[0] for d in out]}")
    return tuple(out)


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    r"""One EMA step :math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta` (floating buffers copied)."""
    for pe, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for be, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        be.copy_(b)


def train(model: nn.Module, loss_fn: Callable, data, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
          generator: torch.Generator | None = None, ema: float | None = None, progress: bool = True,
          device=None, weight_decay: float = 0.0, callback: Callable | None = None) -> TrainResult:
    r"""Minimise a minibatch loss with Adam, keeping the loss history and optionally an EMA of the parameters.

    At step k a minibatch of ``batch_size`` indices is taken from a stream of random permutations of the n data
    points (each epoch sees every point once; a batch larger than n spans several epochs), the loss
    ``loss_fn(model, *batch, generator=generator)`` is evaluated and one Adam step is made.  The same ``generator``
    draws the indices and is handed to the loss for its times and noise, so a run is reproducible from one seed.

    With ``ema = d`` the returned ``ema_model`` holds the bias-corrected exponential average of the iterates
    :math:`\theta_1, \dots, \theta_K` (parameters after each step),

    .. math::

        \bar\theta_K = \frac{\sum_{k=1}^K (1-d)\,d^{K-k}\,\theta_k}{1 - d^K},

    computed by :math:`\bar\theta_k = \beta_k\bar\theta_{k-1} + (1-\beta_k)\theta_k` with
    :math:`\beta_k = d\,(1 - d^{k-1})/(1 - d^k)` (so :math:`\bar\theta_1 = \theta_1`: the initial parameters carry
    no weight).  Review Section 4.1; book chapter *Learning the score*; :cite:p:`song2021score`.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train in place (e.g. ``as_score(ScoreMLP(2), "eps", sde)``); it stays on its device.
    loss_fn : callable
        ``loss_fn(model, *batch, generator=generator)`` returning a scalar tensor.
    data : torch.Tensor or tuple of torch.Tensor
        The training set: tensors sharing the first dimension n, e.g. ``x`` or ``(x, y)``.  Minibatches are moved
        to the model's device and floating ones cast to the dtype of its parameters.
    steps : int
        Number of optimisation steps, >= 1.
    batch_size : int
        Minibatch size, >= 1.
    lr : float
        Adam learning rate, > 0.
    generator : torch.Generator, optional
        Source of the minibatch indices and of the loss's randomness (a CPU generator works for any device).
    ema : float, optional
        EMA decay d in (0, 1), e.g. 0.99; None for no EMA.
    progress : bool
        Show a tqdm progress bar (with the running loss); False prints nothing.
    device : torch.device or str, optional
        Move the model there first (default: stay where it is).
    weight_decay : float
        Adam weight decay, >= 0.
    callback : callable, optional
        Called as ``callback(step, model, loss)`` after every step (step counts from 1; loss is a float).

    Returns
    -------
    TrainResult
        ``losses`` (numpy array of length ``steps``), ``model`` and ``ema_model`` (None without EMA).

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite (the step at which it happened is named).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(model, *batch, generator=...)")
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if ema is not None:
        ema = float(ema)
        if not 0 < ema < 1:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {ema}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable(step, model, loss)")
    data = _as_batches(data)
    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    device, dtype = params[0].device, params[0].dtype

    n = data[0].shape[0]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    ema_model = None
    if ema is not None:
        ema_model = copy.deepcopy(model)
        ema_model.requires_grad_(False)
    losses = np.empty(steps, dtype=np.float64)
    was_training = model.training
    model.train()
    index_device = generator.device if generator is not None else torch.device("cpu")
    pool = torch.empty(0, dtype=torch.long, device=index_device)

    bar = tqdm(range(1, steps + 1), disable=not progress, desc="training", leave=False)
    try:
        for k in bar:
            while pool.numel() < batch_size:
                pool = torch.cat([pool, torch.randperm(n, generator=generator, device=index_device)])
            idx, pool = pool[:batch_size], pool[batch_size:]
            batch = []
            for d in data:
                b = d[idx.to(d.device)].to(device)
                batch.append(b.to(dtype) if b.is_floating_point() else b)
            loss = loss_fn(model, *batch, generator=generator)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} at step {k}: lower lr or check t0 and the data")
            optimizer.zero_grad(set_to_none=True)
            loss.reshape(()).backward()
            optimizer.step()
            losses[k - 1] = value
            if ema_model is not None:
                beta = ema * (1 - ema ** (k - 1)) / (1 - ema**k)
                ema_update(ema_model, model, beta)
            if progress and (k % 25 == 0 or k == steps):
                bar.set_postfix(loss=f"{losses[max(0, k - 25):k].mean():.4g}")
            if callback is not None:
                callback(k, model, value)
    finally:
        bar.close()
        model.train(was_training)
    if ema_model is not None:
        ema_model.train(was_training)
    return TrainResult(losses, model, ema_model)
