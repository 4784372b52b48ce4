r"""A small training loop for score networks, noise-aware classifiers and anything trained by minibatch loss.

The review (Section 4.1; book chapter *Learning the score*) minimises the empirical denoising score-matching loss:
draw a minibatch of the n data points, a time :math:`t\sim\mathsf U[t_0, T]` and noise for each, and take a gradient
step.  :func:`train` does exactly that with Adam, and optionally keeps an exponential moving average (EMA) of the
parameters, the usual companion of diffusion training :cite:p:`ho2020denoising,song2021score`.

The loss is any callable ``loss_fn(model, *batch, generator=generator)`` returning a scalar tensor; the batch is a
minibatch of each tensor in ``data``.  For instance ``functools.partial(dsm_loss, t0=1e-3, sde=sde)`` with
``data = x`` or ``functools.partial(conditional_dsm_loss, p_uncond=0.2)`` with ``data = (x, y)``.

The same loop runs on several processes (``torchrun``) with ``DistributedDataParallel``: see :func:`train`
(``distributed=``), :func:`init_distributed` and :func:`dsm_draws`.  The global minibatch *and* the loss's times and
noise are drawn for the whole global batch, identically on every rank from the one seeded generator, and then split
by rank, so that for a given seed and global batch size the parameters do not depend on the number of processes
(up to floating-point rounding).  Run as a program, ``torchrun --nproc_per_node=2 -m diffnotes.training --help``
trains a small score network on a 2-D data set and saves its state dict.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.std import tqdm

from . import _checks

__all__ = ["TrainResult", "train", "ema_update", "DistributedContext", "init_distributed", "dsm_draws",
           "rank_slice", "main"]


@dataclass
class TrainResult:
    """What :func:`train` returns; it also unpacks as ``losses, model, ema_model``.

    Parameters
    ----------
    losses : numpy.ndarray
        The minibatch loss at every step, a float64 numpy array of shape (steps,).
    model : torch.nn.Module
        The trained model (the object that was passed in, trained in place).
    ema_model : torch.nn.Module or None
        A copy of the model holding the EMA of the parameters, or None if no EMA was requested (default).
    """

    losses: np.ndarray
    model: nn.Module
    ema_model: nn.Module | None = None

    def __iter__(self):
        """Unpack as ``losses, model, ema_model``."""
        return iter((self.losses, self.model, self.ema_model))


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
    r"""One EMA step :math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta` (floating buffers copied).

    Parameters
    ----------
    ema_model : torch.nn.Module
        The average :math:`\bar\theta`, updated in place; same parameters and buffers as ``model``.
    model : torch.nn.Module
        The current model :math:`\theta`.
    decay : float
        :math:`\beta`, in [0, 1] (not checked here; :func:`train` checks that its ``ema`` lies in (0, 1)).
    """
    _ema_step(list(ema_model.parameters()), list(model.parameters()), decay)
    for be, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        be.copy_(b)


@torch.no_grad()
def _ema_step(averages: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    if len(averages) != len(params):
        raise ValueError("the EMA model and the model must have the same parameters")
    # one fused call over all tensors: a + (1 - decay) (p - a) = decay a + (1 - decay) p
    torch._foreach_lerp_(averages, [p.detach() for p in params], 1 - decay)


# -- several processes ------------------------------------------------------------------------------------------
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a process group: what :func:`init_distributed` returns.

    Parameters
    ----------
    rank, world_size, local_rank : int
        As set by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    backend : str
        ``"nccl"`` or ``"gloo"``.
    device : torch.device
        Where this rank computes (``cuda:<local_rank>`` with NCCL, the CPU with gloo).
    created : bool
        Whether :func:`init_distributed` initialised the group (and so the caller may destroy it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    created: bool


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"the environment variable {name} must be an integer, got {raw!r} (start the program with "
                         "torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)") from None
    if value < 0:
        raise ValueError(f"the environment variable {name} must be >= 0, got {value}")
    return value


def _launched_by_torchrun() -> bool:
    """True when torchrun's variables say that this process is one of several."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def init_distributed(backend: str | None = None) -> DistributedContext:
    r"""Join (or create) the default process group, choosing the backend automatically.

    If a process group is already initialised it is used as it is.  Otherwise the group is initialised from
    torchrun's environment variables (``init_method="env://"``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU) with backend NCCL where CUDA GPUs exist and gloo otherwise.
    With NCCL the current CUDA device is set to ``cuda:<LOCAL_RANK>``.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Force a backend (default: ``"nccl"`` if CUDA is available, else ``"gloo"``).  Ignored when a group exists.

    Returns
    -------
    DistributedContext
        Rank, world size, local rank, backend, device of this rank, and whether the group was created here.

    Raises
    ------
    ValueError
        If no group exists and torchrun's variables are missing or malformed, or the backend is unknown.
    """
    dist = torch.distributed
    if not dist.is_available():
        raise ValueError("this build of torch has no torch.distributed")
    created = False
    if not dist.is_initialized():
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise ValueError(f"no process group is initialised and {', '.join(missing)} not set: start the program "
                             "with torchrun (e.g. torchrun --nproc_per_node=2 -m diffnotes.training) or call "
                             "torch.distributed.init_process_group first")
        rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
        if world < 1 or rank >= world:
            raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
        backend = _default_backend() if backend is None else backend
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ValueError("backend 'nccl' needs CUDA GPUs; use 'gloo' on CPUs")
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend, init_method="env://")
        created = True
    backend = str(dist.get_backend())
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if "nccl" in backend and torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world, local, backend, device, created)


def rank_slice(batch_size: int, world_size: int, rank: int) -> slice:
    r"""The rows of a global batch that one rank takes: contiguous, sizes differing by at most one.

    Rank r gets rows :math:`[\lfloor rB/W\rfloor, \lfloor (r+1)B/W\rfloor)` of the B rows, so the W slices
    partition the global batch in order (like ``numpy.array_split``, up to which ranks get the larger slices).

    Parameters
    ----------
    batch_size : int
        The global batch size B, at least the world size W (no rank may be idle).
    world_size : int
        Number of processes W, >= 1.
    rank : int
        This process, 0 <= rank < W.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    world_size = _checks.positive_int(world_size, "world_size")
    rank = _checks.positive_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    if batch_size < world_size:
        raise ValueError(f"the global batch_size ({batch_size}) must be at least the number of processes "
                         f"({world_size}): every rank needs at least one row")
    return slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)


def dsm_draws(t0: float = 1e-3, T: float | None = None, *, sde=None) -> Callable:
    r"""The randomness of :func:`~diffnotes.losses.dsm_loss` for a whole global batch, as ``train(draws=...)`` wants.

    Returns ``draws(batch, generator) -> {"t": t, "eps": eps}`` with :math:`t_i\sim\mathsf U[t_0, T]` of shape (B,)
    and :math:`\varepsilon_i\sim\mathsf N(0, I_D)` of shape (B, D), drawn from ``generator`` in the order and with
    the dtype that ``dsm_loss`` itself uses.  Hence ``dsm_loss(model, x, generator=g)`` and
    ``dsm_loss(model, x, **draws((x,), g))`` are the same number, and a run with ``draws`` on one process
    reproduces :func:`train` without it exactly.  On several processes :func:`train` draws them for the global
    batch on every rank and gives each rank its rows, so that every sample sees the same
    :math:`(t_i, \varepsilon_i)` whatever the number of processes.

    Parameters
    ----------
    t0, T, sde
        As in :func:`~diffnotes.losses.dsm_loss` (early-stopping time, horizon, forward process).
    """
    from .losses import sample_times

    sample_times(1, t0, T, sde=sde, generator=torch.Generator())  # a bad t0, T or sde fails here, not at step 1

    def draws(batch, generator):
        x0 = batch[0]
        t = sample_times(x0.shape[0], t0, T, sde=sde, generator=generator, dtype=x0.dtype, device=x0.device)
        # Gaussian noise made on the generator's device and moved to the data's, as dsm_loss draws it
        where = generator.device if generator is not None else x0.device
        eps = torch.randn(tuple(x0.shape), generator=generator, dtype=x0.dtype, device=where).to(x0.device)
        return {"t": t, "eps": eps}

    return draws


def _infer_draws(loss_fn):
    """``dsm_draws`` for ``functools.partial(dsm_loss, ...)``; None for a loss whose randomness is unknown."""
    from .losses import dsm_loss

    if isinstance(loss_fn, functools.partial) and loss_fn.func is dsm_loss and not loss_fn.args:
        kw = loss_fn.keywords
        if "t" not in kw and "eps" not in kw and "generator" not in kw:
            return dsm_draws(kw.get("t0", 1e-3), kw.get("T"), sde=kw.get("sde"))
    return None


class _ModuleView:
    """What the loss sees on several processes: calls go through DDP (so gradients are averaged), attribute look-ups
    (``n_classes``, ``null_label``, ...) reach the wrapped model."""

    def __init__(self, ddp):
        self._ddp = ddp

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ddp.module, name)


def _step_context(ddp):
    """Context of the forward and backward pass of one distributed step (DDP averages the gradients in backward).

    A no-op; the tests replace it by ``ddp.no_sync`` (which must cover the forward pass too) as a negative control.
    """
    return contextlib.nullcontext()


def _agree(values, device) -> None:
    """Raise ValueError on every rank unless all ranks hold the same ``values`` (checked before training)."""
    dist = torch.distributed
    v = torch.tensor(values, dtype=torch.float64, device=device)
    lo, hi = v.clone(), v.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise ValueError("the ranks disagree on the data size, the batch size, the number of steps or the state of "
                         "the generator: seed the generator identically on every rank (e.g. "
                         "torch.Generator().manual_seed(seed)) and give every rank the same data and arguments")


def _generator_checksum(generator: torch.Generator) -> float:
    state = generator.get_state().to(torch.float64)
    return float((state * torch.arange(1, state.numel() + 1, dtype=torch.float64).remainder(997)).sum())


def train(model: nn.Module, loss_fn: Callable, data, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
          generator: torch.Generator | None = None, ema: float | None = None, progress: bool = True,
          device=None, weight_decay: float = 0.0, callback: Callable | None = None,
          distributed: bool | None = None, draws=None, lr_schedule: str | None = None) -> TrainResult:
    r"""Minimise a minibatch loss with Adam, keeping the loss history and optionally an EMA of the parameters.

    At step k a minibatch of ``batch_size`` indices is taken from a stream of random permutations of the n data
    points (each epoch sees every point once; a batch larger than n spans several epochs), the loss
    ``loss_fn(model, *batch, generator=generator)`` is evaluated and one Adam step is made.  The same ``generator``
    draws the indices and is handed to the loss for its times and noise, so a run is reproducible from one seed.
    For denoising score matching the minimised objective is the Monte Carlo estimate over the batch
    :math:`\{x_{0,i}\}_{i=1}^B`,

    .. math::

        \hat L(\theta) = \frac1B\sum_{i=1}^B w(t_i)\Big\|s_\theta(x_{t_i}, t_i) + \frac{\varepsilon_i}{\sqrt{h(t_i)}}
        \Big\|_2^2,\qquad x_{t_i} = \alpha(t_i)x_{0,i} + \sqrt{h(t_i)}\,\varepsilon_i,\quad
        t_i\sim\mathsf U[t_0, T],\ \varepsilon_i\sim\mathsf N(0, I).

    With ``ema = d`` the returned ``ema_model`` holds the bias-corrected exponential average of the iterates
    :math:`\theta_1, \dots, \theta_K` (parameters after each step),

    .. math::

        \bar\theta_K = \frac{\sum_{k=1}^K (1-d)\,d^{K-k}\,\theta_k}{1 - d^K},

    computed by :math:`\bar\theta_k = \beta_k\bar\theta_{k-1} + (1-\beta_k)\theta_k` with
    :math:`\beta_k = d\,(1 - d^{k-1})/(1 - d^k)` (so :math:`\bar\theta_1 = \theta_1`: the initial parameters carry
    no weight).  Review Section 4.1; book chapter *Learning the score*; :cite:p:`song2021score`.

    **Several processes** (``distributed=True``, or automatically under ``torchrun`` with ``WORLD_SIZE > 1`` or
    inside an initialised process group; see :func:`init_distributed` for the backend, gloo or NCCL).  The model
    is wrapped in ``DistributedDataParallel`` (which starts every rank from rank 0's parameters), and at each step

    * the *global* batch of B indices is drawn from ``generator`` exactly as on one process -- identically on every
      rank, since every rank holds the same data and the same seeded generator (checked at the start);
    * the loss's randomness (times :math:`t_i` and noise :math:`\varepsilon_i`) is drawn by
      ``draws(global_batch, generator)`` for the *whole* global batch, again identically on every rank;
    * rank r keeps only its rows :func:`rank_slice` (B, W, r) of the batch and of the draws, evaluates
      ``loss_fn(model, *rows, generator=None, **draws_rows)`` and multiplies it by :math:`W\,B_r/B`;
    * DDP averages the gradients over the W ranks during the backward pass, so every rank gets
      :math:`\sum_r (B_r/B)\nabla\hat L_r = \nabla\hat L`, the gradient of the loss of the global batch, even when
      the slices :math:`B_r` are unequal; every rank makes the same Adam and EMA step.

    Splitting the draws instead of drawing them on each rank is what makes the result independent of the number of
    processes: with per-rank draws each rank would use other times and noise than one process would, the run would
    be a different (if equally valid) Monte Carlo estimate, and no comparison with single-process training could
    check it.  ``loss_fn`` must therefore be a *mean over per-sample terms* whose randomness all comes from
    ``draws``; for ``functools.partial(dsm_loss, ...)`` the draws are found automatically (:func:`dsm_draws`).
    The returned loss history is the loss of the global batch (all-reduced), the same on every rank; only rank 0
    shows the progress bar; ``callback`` runs on every rank.  Data are kept whole on every rank (fine for the
    small data sets of the book).  On one process (and on several) the result then depends on the seed and B only,
    up to the rounding of summing the gradient in slices.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train in place (e.g. ``as_score(ScoreMLP(2), "eps", sde)``); it stays on its device, except
        that with NCCL and no ``device`` it is moved to this rank's GPU.
    loss_fn : callable
        ``loss_fn(model, *batch, generator=generator)`` returning a scalar tensor (with ``draws``:
        ``loss_fn(model, *batch, generator=None, **draws)``).
    data : torch.Tensor or tuple of torch.Tensor
        The training set: tensors sharing the first dimension n, e.g. ``x`` or ``(x, y)``.  Minibatches are moved
        to the model's device and floating ones cast to the dtype of its parameters.
    steps : int
        Number of optimisation steps, >= 1.
    batch_size : int
        Minibatch size, >= 1; on several processes the *global* batch size, at least the number of processes.
    lr : float
        Adam learning rate, > 0.
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the minibatch indices and of the loss's randomness (a CPU generator works for any device; an int
        seed or a numpy generator is turned into one by ``diffnotes._checks.generator``).  Required on several
        processes, seeded identically on every rank.
    ema : float, optional
        EMA decay d in (0, 1), e.g. 0.99; None for no EMA.
    progress : bool
        Show a tqdm progress bar (with the running loss); False prints nothing.  Only rank 0 shows it.
    device : torch.device or str, optional
        Move the model there first (default: stay where it is).
    weight_decay : float
        Adam weight decay, >= 0.
    lr_schedule : None or "cosine"
        None: the constant rate ``lr``.  ``"cosine"``: the rate at step k (counted from 0) is
        :math:`\tfrac12\,\mathrm{lr}\,(1 + \cos(\pi k/K))` for K = ``steps`` (cosine annealing,
        ``torch.optim.lr_scheduler.CosineAnnealingLR``).
    callback : callable, optional
        Called as ``callback(step, model, loss)`` after every step (step counts from 1; loss is a float).
    distributed : bool, optional
        Train with ``DistributedDataParallel`` on the processes of the default process group (initialised here from
        torchrun's variables if needed, and then destroyed at the end).  Default: True if a group with more than one
        process is initialised or torchrun started several processes, else False (the single-process loop).
    draws : callable or "none", optional
        ``draws(batch, generator)`` returning a dict of tensors whose first dimension is the batch size, passed
        to the loss as keyword arguments (e.g. :func:`dsm_draws`); ``"none"`` for a loss that uses no randomness.
        Default: on one process the loss draws for itself from ``generator``; on several, inferred for
        ``functools.partial(dsm_loss, ...)`` and otherwise an error.

    Returns
    -------
    TrainResult
        ``losses`` (numpy array of length ``steps``), ``model`` (the module passed in, not the DDP wrapper) and
        ``ema_model`` (None without EMA).

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite (the step at which it happened is named; on every rank at once).
    ValueError
        On several processes: no generator, ``batch_size`` below the number of processes, a loss whose randomness
        cannot be drawn for the global batch (pass ``draws``), or ranks that disagree on the data or the seed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(model, *batch, generator=...)")
    steps = _checks.positive_int(steps, "steps")
    batch_size = _checks.positive_int(batch_size, "batch_size")
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
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    if draws is not None and not (callable(draws) or (isinstance(draws, str) and draws == "none")):
        raise TypeError(f"draws must be a callable draws(batch, generator) -> dict, 'none' or None, got {draws!r}")
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}")
    generator = _checks.generator(generator)  # None, an int seed, a torch or a numpy generator
    data = _as_batches(data)
    if distributed is None:
        dist = torch.distributed
        in_group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        distributed = in_group or _launched_by_torchrun()
    ctx = None
    if distributed:
        if generator is None:
            raise ValueError("training on several processes needs an explicit generator, seeded identically on "
                             "every rank: it draws the global batch and its noise")
        ctx = init_distributed()
        if device is None and ctx.device.type == "cuda":
            device = ctx.device
        if draws is None:
            draws = _infer_draws(loss_fn)
            if draws is None and ctx.world_size > 1:
                _finish(ctx)
                raise ValueError("on several processes the loss's randomness must be drawn for the global batch and "
                                 "split by rank: pass draws=callable(batch, generator) -> dict of per-sample "
                                 "tensors (e.g. dsm_draws(t0, sde=sde)), or draws='none' for a loss without "
                                 "randomness")
        if batch_size < ctx.world_size:
            _finish(ctx)
            raise ValueError(f"the global batch_size ({batch_size}) must be at least the number of processes "
                             f"({ctx.world_size}): every rank needs at least one row")
    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        if ctx is not None:
            _finish(ctx)
        raise ValueError("the model has no trainable parameters")
    device, dtype = params[0].device, params[0].dtype

    n = data[0].shape[0]
    ema_model = None
    if ema is not None:  # copied before DDP broadcasts rank 0's parameters: harmless, step 1 gives them no weight
        ema_model = copy.deepcopy(model)
        ema_model.requires_grad_(False)
        ema_params, model_params = list(ema_model.parameters()), list(model.parameters())
    ddp, view, rows, scale = None, model, None, 1.0
    if ctx is not None:
        try:
            if ctx.backend == "nccl" and device.type != "cuda":
                raise ValueError(f"the backend is NCCL but the model is on {device}: leave device=None or use gloo")
            comm = device if ctx.backend == "nccl" else torch.device("cpu")
            _agree([n, batch_size, steps, _generator_checksum(generator)], comm)
            ids = [device.index] if device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        except BaseException:
            _finish(ctx)
            raise
        view = _ModuleView(ddp)
        rows = rank_slice(batch_size, ctx.world_size, ctx.rank)
        scale = ctx.world_size * (rows.stop - rows.start) / batch_size
    # foreach: one fused update over all parameter tensors (the per-tensor loop costs about 20 % of a small step)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    scheduler = None if lr_schedule is None else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = np.empty(steps, dtype=np.float64)
    was_training = model.training
    model.train()
    index_device = generator.device if generator is not None else torch.device("cpu")
    pool = torch.empty(0, dtype=torch.long, device=index_device)

    show = progress and (ctx is None or ctx.rank == 0)
    bar = tqdm(range(1, steps + 1), disable=not show, desc="training", leave=False)
    try:
        for k in bar:
            while pool.numel() < batch_size:
                pool = torch.cat([pool, torch.randperm(n, generator=generator, device=index_device)])
            idx, pool = pool[:batch_size], pool[batch_size:]
            batch = []
            for d in data:
                b = d[idx.to(d.device)].to(device)
                batch.append(b.to(dtype) if b.is_floating_point() else b)
            with contextlib.nullcontext() if ddp is None else _step_context(ddp):
                if draws is None:
                    loss = loss_fn(view, *batch, generator=generator)
                else:
                    extra = {} if isinstance(draws, str) else _checked_draws(draws(tuple(batch), generator),
                                                                             batch_size)
                    if rows is not None:
                        batch = [b[rows] for b in batch]
                        extra = {key: v[rows] for key, v in extra.items()}
                    loss = loss_fn(view, *batch, generator=None, **extra)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError(f"loss_fn must return a scalar tensor, got "
                                     f"{getattr(loss, 'shape', type(loss))}")
                if ctx is None:
                    value = float(loss.detach())
                else:
                    loss = loss.reshape(()) * scale  # W B_r / B: DDP's average over ranks is the global mean
                    total = loss.detach().clone()
                    torch.distributed.all_reduce(total)
                    value = float(total) / ctx.world_size
                if not math.isfinite(value):
                    raise FloatingPointError(f"the loss became {value} at step {k}: lower lr or check t0 and the data")
                optimizer.zero_grad(set_to_none=True)
                loss.reshape(()).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses[k - 1] = value
            if ema_model is not None:
                beta = ema * (1 - ema ** (k - 1)) / (1 - ema**k)
                _ema_step(ema_params, model_params, beta)
            if show and (k % 25 == 0 or k == steps):
                bar.set_postfix(loss=f"{losses[max(0, k - 25):k].mean():.4g}")
            if callback is not None:
                callback(k, model, value)
    finally:
        bar.close()
        model.train(was_training)
        if ctx is not None:
            del ddp, view
            _finish(ctx)
    if ema_model is not None:
        with torch.no_grad():  # buffers are copied, not averaged (only their last value matters)
            for be, b in zip(ema_model.buffers(), model.buffers(), strict=True):
                be.copy_(b)
        ema_model.train(was_training)
    return TrainResult(losses, model, ema_model)


def _finish(ctx: DistributedContext) -> None:
    """Destroy the process group if this module created it."""
    if ctx.created and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _checked_draws(extra, batch_size: int) -> dict:
    if not isinstance(extra, dict):
        raise TypeError(f"draws(batch, generator) must return a dict of tensors, got {type(extra).__name__}")
    for key, v in extra.items():
        if not isinstance(key, str) or not isinstance(v, torch.Tensor) or v.ndim < 1 or v.shape[0] != batch_size:
            raise ValueError(f"draws must return per-sample tensors with first dimension {batch_size} (the global "
                             f"batch size); got {key!r}: {getattr(v, 'shape', type(v).__name__)}")
    return extra


# -- command line -------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffnotes.training",
        description="Train a small score network (ScoreMLP, noise prediction, DSM loss) on a 2-D data set and save "
                    "its state dict.  Run it with torchrun to train on several processes, e.g. "
                    "torchrun --nproc_per_node=2 -m diffnotes.training --out score.pt; for a given --seed and "
                    "--batch-size the result does not depend on the number of processes.")
    p.add_argument("--data", choices=["two_moons", "swiss_roll", "mixture"], default="two_moons",
                   help="the 2-D data set (mixture: three Gaussians, the target of the book's training tests)")
    p.add_argument("--n", type=int, default=4000, help="number of data points")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--t0", type=float, default=1e-3, help="early-stopping time of the DSM loss")
    p.add_argument("--T", type=float, default=10.0, help="horizon of the forward process dX = -X/2 dt + dW")
    p.add_argument("--hidden", type=int, default=128, help="width of the hidden layers")
    p.add_argument("--depth", type=int, default=3, help="number of hidden layers")
    p.add_argument("--ema", type=float, default=None, help="EMA decay in (0, 1) (default: no EMA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and the training")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of the network")
    p.add_argument("--out", required=True, help="where rank 0 saves the state dict (torch.save)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> TrainResult:
    r"""Command-line entry point: train a score network on a 2-D data set, on one or several processes.

    ``python -m diffnotes.training --out score.pt`` trains on one process; ``torchrun --nproc_per_node=W -m
    diffnotes.training --out score.pt`` trains the same network on W processes with
    ``DistributedDataParallel`` (gloo on CPUs, NCCL on GPUs) and, for the same ``--seed`` and ``--batch-size``,
    gives the same parameters up to floating-point rounding.  The data (:func:`diffnotes.data.two_moons`,
    :func:`~diffnotes.data.swiss_roll` or a three-component Gaussian mixture, seeded by ``--seed``) and the initial
    weights (``torch.manual_seed(seed)``) are built identically on every rank; the training generator is seeded
    with ``seed + 1``.  Rank 0 writes ``{"model": state_dict, "ema": state_dict or None, "losses": array,
    "args": dict, "world_size": W}`` to ``--out``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``); ``--help`` lists them.

    Returns
    -------
    TrainResult
        What :func:`train` returned on this rank.
    """
    from .data import mixture_data, swiss_roll, two_moons
    from .losses import dsm_loss
    from .networks import ScoreMLP, as_score
    from .sde import ConstantVP
    from .targets import GaussianMixture

    args = _parser().parse_args(argv)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    dtype = getattr(torch, args.dtype)
    sde = ConstantVP(T=args.T)
    if args.data == "mixture":
        target = GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.3, 0.3, 0.2], sde)
        x, _ = mixture_data(target, args.n, torch.Generator().manual_seed(args.seed))
    else:
        x = (two_moons if args.data == "two_moons" else swiss_roll)(args.n, generator=args.seed)
    torch.manual_seed(args.seed)
    model = as_score(ScoreMLP(2, hidden=args.hidden, depth=args.depth), "eps", sde).to(dtype)
    distributed = _launched_by_torchrun() or (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = init_distributed() if distributed else None
    try:
        result = train(model, functools.partial(dsm_loss, t0=args.t0, sde=sde), x, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, ema=args.ema, progress=not args.no_progress,
                       generator=torch.Generator().manual_seed(args.seed + 1), distributed=distributed)
        if ctx is None or ctx.rank == 0:
            torch.save({"model": model.state_dict(),
                        "ema": None if result.ema_model is None else result.ema_model.state_dict(),
                        "losses": result.losses, "args": vars(args),
                        "world_size": 1 if ctx is None else ctx.world_size}, args.out)
            print(f"saved {args.out}: {args.steps} steps on {1 if ctx is None else ctx.world_size} process(es), "
                  f"final loss {result.losses[-50:].mean():.4g}")
    finally:
        if ctx is not None:
            _finish(ctx)
    return result


if __name__ == "__main__":
    main()
