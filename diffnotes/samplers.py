r"""Samplers: discretisations of the backward process driven by a score function.

The backward SDE of the review (Section 2.1), written in the forward time t that runs from T down to t0,

.. math::

    \mathrm dX = \big[\tfrac12 g(t) X + g(t)\,\nabla\log p_t(X)\big]\,\mathrm d\tau + \sqrt{g(t)}\,\mathrm d\bar W_\tau,
    \qquad \tau = T - t,

and its probability-flow ODE :math:`\mathrm dX/\mathrm d\tau = \tfrac12 g(t)\,(X + \nabla\log p_t(X))` share one
signature here::

    sampler(score, x, times, *, sde=None, generator=None, noise=None, return_trajectory=False, **options)

* ``score(x, t)`` returns a tensor shaped like ``x`` (the package's one protocol; ``t`` is passed as a tensor with one
  time per row);
* ``x`` is the start (a tensor, usually draws from :math:`\mathsf N(0, I)`) or its shape, then drawn from
  :math:`\mathsf N(0, I)` with ``generator`` (None, an int seed, a torch or a numpy generator: the package's one
  convention);
* ``times`` is a strictly decreasing grid :math:`T \ge t_0 > t_1 > \dots > t_N > 0` (see :func:`time_grid`); the last
  time is the early-stopping time :math:`t_0` of the review;
* ``noise``, if given, replaces the Gaussian draws: it is called as ``noise(like)`` for every injection and returns a
  tensor shaped like ``like``.  It serves common-random-number comparisons and the exact output laws of
  :mod:`diffnotes.oracle`;
* ``final_denoise=True`` ends with one more score call that returns Tweedie's denoised estimate
  :math:`\hat x_0 = (x + h(t_0)\,s(x, t_0))/\alpha(t_0)` instead of the state at :math:`t_0`: the step to
  :math:`t = 0` that DDPM, DDIM and diffusers' schedulers take last;
* the result is the final state, or ``(final, trajectory)`` with the trajectory of shape (N + 1, n, D) (N + 2 with
  ``final_denoise``).

Book chapter: *Samplers*.  References: :cite:p:`song2021score,ho2020denoising,song2021denoising,zhang2023fast`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch

from . import _checks
from .sde import VPSDE, as_time

__all__ = [
    "time_grid",
    "euler_maruyama",
    "exponential_integrator",
    "probability_flow_euler",
    "probability_flow_heun",
    "ddpm",
    "ddim",
    "predictor_corrector",
    "dpm_solver_pp",
    "exponential_multistep",
    "block_noise",
    "diffusers_ddim_arrivals",
    "sample",
    "power_grid",
    "on_nodes",
    "DEFAULT_CONFIG",
    "SAMPLERS",
    "DETERMINISTIC",
    "EVALS_PER_STEP",
]

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(sde: VPSDE, t0: float, n_steps: int, spacing: str = "uniform", T: float | None = None):
    r"""A decreasing grid of ``n_steps + 1`` times from T down to the early-stopping time t0.

    Spacings: ``"uniform"`` in t; ``"quadratic"`` (uniform in :math:`\sqrt t`, dense near t0, the DDIM choice);
    ``"log"`` (uniform in :math:`\log t`); ``"logsnr"`` (uniform in :math:`\log(\alpha^2/h)`, the DPM-Solver choice).

    Parameters
    ----------
    sde : VPSDE
        The forward process (its horizon is the default T).
    t0 : float
        Early-stopping time, 0 < t0 < T.
    n_steps : int
        Number of steps, at least 1.
    spacing : str
        One of the spacings above.
    T : float, optional
        Start time, at most ``sde.T``.
    """
    T = sde.T if T is None else float(T)
    if not 0 < T <= sde.T * (1 + 1e-12):
        raise ValueError(f"T must lie in (0, {sde.T:g}], got {T}")
    t0 = float(t0)
    if not 0 < t0 < T:
        raise ValueError(f"the early-stopping time t0 must satisfy 0 < t0 < T = {T:g}, got t0 = {t0:g}")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    u = torch.linspace(0, 1, int(n_steps) + 1, dtype=torch.float64)
    if spacing == "uniform":
        grid = T + (t0 - T) * u
    elif spacing == "quadratic":
        grid = (math.sqrt(T) + (math.sqrt(t0) - math.sqrt(T)) * u) ** 2
    elif spacing == "log":
        grid = torch.exp(math.log(T) + (math.log(t0) - math.log(T)) * u)
    elif spacing == "logsnr":
        lo, hi = sde.log_snr(T), sde.log_snr(t0)
        grid = sde.time_of_log_snr(lo + (hi - lo) * u)
    else:
        raise ValueError(f"spacing must be 'uniform', 'quadratic', 'log' or 'logsnr', got {spacing!r}")
    grid[0], grid[-1] = T, t0  # exact end points despite round-off
    return grid


# -- the common driver ------------------------------------------------------------------------------------
def _check_times(times, sde: VPSDE) -> torch.Tensor:
    times = as_time(times).to(torch.float64)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 times (T, ..., t0), got shape {tuple(times.shape)}")
    if not torch.all(torch.isfinite(times)):
        raise ValueError("times must be finite")
    if not torch.all(times[1:] < times[:-1]):
        raise ValueError("times must be strictly decreasing, from T down to the early-stopping time t0")
    if times[-1] <= 0:
        raise ValueError(f"the last time t0 must be > 0 (scores blow up at t = 0), got {float(times[-1]):g}")
    if times[0] > sde.T * (1 + 1e-12):
        raise ValueError(f"the first time must not exceed the horizon T = {sde.T:g}, got {float(times[0]):g}")
    return times


def _start(x, generator, dim: int | None = None, fill=None) -> torch.Tensor:
    """The start of a sampling loop: a copy of a given (n, D) floating tensor (or numpy array), or draws of
    N(0, I) with ``generator`` for a shape (n, D) (``fill(shape)`` instead of the draws when given)."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        out = _checks.sample(x, "the start x").clone()
    else:
        try:
            shape = tuple(int(s) for s in x)
        except TypeError as err:
            raise TypeError(f"the start x must be a tensor (n, D) or a shape (n, D), got {x!r}") from err
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"a start shape must be (n, D) with n, D >= 1, got {x!r}")
        out = fill(shape) if fill is not None else torch.randn(shape, generator=generator, dtype=torch.float64)
    if dim is not None and out.shape[1] != dim:
        raise ValueError(f"the start must have {dim} columns, got {out.shape[1]}")
    return out


class _Loop:
    """The one sampling loop of the package: start, noise source, trajectory and the final finite check.

    Every sampler runs through it: the samplers of this module through :func:`_sampler` (via :class:`_Run`), and
    :func:`diffnotes.acceleration.flow_euler`, :func:`diffnotes.acceleration.consistency_sample`,
    :func:`diffnotes.localization.stochastic_localization`, the inpainting samplers of :mod:`diffnotes.inpainting`,
    :func:`diffnotes.control.ddpm_chain` and :func:`diffnotes.finetune.sample_chain` directly.  (The samplers of
    :mod:`diffnotes.discrete` move the tokens of a Markov chain, not Gaussian states: they keep loops of their own.)

    Parameters
    ----------
    x : torch.Tensor or tuple
        The start, or its shape (see :func:`_start`).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the start and of the Gaussian draws.
    noise : callable, optional
        ``noise(like)`` replaces every Gaussian draw (checked to return a tensor shaped like ``like``).
    return_trajectory : bool
        Keep the states passed to :meth:`record` (and the start, when ``record_start``).
    fill, dim
        See :func:`_start`.
    what : str
        The loop's name in the message of the finite check.
    """

    def __init__(self, x, generator=None, noise=None, return_trajectory=False, *, fill=None, dim=None,
                 record_start: bool = True, what: str = "the sampler"):
        if noise is not None and not callable(noise):
            raise TypeError("noise must be a callable noise(like) -> tensor, or None")
        self._generator = _checks.generator(generator)
        self._noise = noise
        self.what = what
        self.x = _start(x, self._generator, dim, fill)
        self.trajectory = ([self.x.clone()] if record_start else []) if return_trajectory else None

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Standard Gaussian noise shaped like ``like`` (from the noise hook when there is one)."""
        if self._noise is not None:
            xi = self._noise(like)
            if not isinstance(xi, torch.Tensor) or xi.shape != like.shape:
                raise ValueError(f"noise(like) must return a tensor shaped like its argument {tuple(like.shape)}")
            return xi
        return torch.randn(like.shape, generator=self._generator, dtype=like.dtype, device=like.device)

    def record(self, x: torch.Tensor) -> None:
        """Make ``x`` the current state (kept in the trajectory when one is returned)."""
        self.x = x
        if self.trajectory is not None:
            self.trajectory.append(x.clone())

    def result(self, hint: str = "the step is too large for this score, or t0 too small"):
        """The final state, or (final, trajectory); non-finite values raise FloatingPointError."""
        if not torch.all(torch.isfinite(self.x)):
            raise FloatingPointError(f"{self.what} produced non-finite values: {hint}")
        if self.trajectory is None:
            return self.x
        return self.x, torch.stack(self.trajectory)


class _Run(_Loop):
    """State shared by one call of a sampler of this module: the loop, the score with per-row times, the grid."""

    def __init__(self, score, x, times, sde, generator, noise, return_trajectory):
        if not callable(score):
            raise TypeError("score must be a callable score(x, t)")
        self.sde = _checks.sde_or_default(sde)
        self.times = _check_times(times, self.sde)
        super().__init__(x, generator, noise, return_trajectory)
        self._score = score
        self.memory: dict = {}  # state carried between the steps of multistep methods
        self.n_steps = self.times.numel() - 1
        self.step_index = 0

    def score(self, x, t):
        t_rows = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        s = self._score(x, t_rows)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            raise ValueError(f"score(x, t) must return a tensor shaped like x {tuple(x.shape)}, got "
                             f"{getattr(s, 'shape', type(s))}")
        return s

    def steps(self):
        for k in range(self.n_steps):
            self.step_index = k
            yield float(self.times[k]), float(self.times[k + 1])


def _ddim_rows(score, sde, x, t, t_next, substeps: int = 1) -> torch.Tensor:
    r"""Deterministic DDIM steps with one time per row, :math:`t \to t'` in ``substeps`` equal parts of
    :math:`G = \int_0^t g`: the DDIM step of :func:`ddim` (``eta = 0``) for a batch whose rows sit at different times
    (the teacher step of :func:`diffnotes.acceleration.consistency_distillation_loss`).  ``t`` and ``t_next`` are
    (n,) tensors; ``score(x, t)`` is called with (n,) times."""
    if not callable(score):
        raise TypeError(f"model must be callable, got {type(score).__name__}")
    G, G_next = sde.integral(t), sde.integral(t_next)
    for j in range(substeps):
        Ga, Gb = G + (G_next - G) * j / substeps, G + (G_next - G) * (j + 1) / substeps
        ta = sde.inverse_integral(Ga)
        a, h = torch.exp(-Ga / 2)[:, None], -torch.expm1(-Ga)[:, None]
        a2, h2 = torch.exp(-Gb / 2)[:, None], -torch.expm1(-Gb)[:, None]
        s = score(x, ta)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            raise ValueError(f"the model must return a tensor shaped like its input {tuple(x.shape)}, got "
                             f"{getattr(s, 'shape', type(s))}")
        x0 = (x + h * s) / a
        x = a2 * x0 - torch.sqrt(h2) * torch.sqrt(h) * s
    return x


#: The arguments every sampler of this module takes, added to each sampler's docstring by :func:`_sampler`.
_COMMON_PARAMETERS = """    score : callable
        The score ``score(x, t)``, called with the current points (n, D) and one time per row (shape (n,)): an exact
        target's ``.score``, an estimator's, or a network wrapped by :func:`~diffnotes.networks.as_score`.
    x : torch.Tensor or tuple of int
        The start: a floating tensor (n, D) (copied, never modified), or a shape (n, D) to start from N(0, I)
        draws of ``generator``.
    times : torch.Tensor
        The time grid, strictly decreasing inside (0, T] (e.g. :func:`time_grid`); one step per interval.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the start (for a shape) and of every Gaussian draw; None draws fresh entropy.
    noise : callable, optional
        ``noise(like)`` returns the standard Gaussian draw of a step (shaped like ``like``) instead of
        ``generator``: common random numbers across samplers or batches (e.g. :func:`block_noise`).
    return_trajectory : bool
        Also return the states after every step, the start first.
    final_denoise : bool
        After the last step, replace the state by Tweedie's denoised estimate
        :math:`\\hat x_0 = (x + h\\,s(x, t_N))/\\alpha` at the last grid time (one more score call).
"""

_RETURNS = """
    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The final states (n, D); with ``return_trajectory``, also the stack of states (steps + 1, n, D) (one
        more with ``final_denoise``).

    Raises
    ------
    FloatingPointError
        If the states become non-finite (the step is too large for this score, or t0 too small).
"""


def _sampler_doc(doc: str) -> str:
    """A step rule's docstring with the samplers' common parameters first in its Parameters section."""
    rows = inspect.cleandoc(doc or "").splitlines() or ["A sampler of the backward process."]
    head, body = rows[0], "\n".join("    " + line if line else "" for line in rows[1:])
    marker = "    Parameters\n    ----------\n"
    if marker in body:
        body = body.replace(marker, marker + _COMMON_PARAMETERS, 1)
    else:
        body = body.rstrip() + "\n\n" + marker + _COMMON_PARAMETERS
    return head + "\n" + body.rstrip() + "\n" + _RETURNS


#: Every sampler of this module, in the order defined; filled by :func:`_sampler` (the registry is the samplers).
_REGISTRY: dict = {}


def _sampler(step=None, *, check=None, deterministic: bool = False, evals_per_step: int = 1):
    """Turn a one-step rule ``step(run, x, t, t_next, **options) -> x_next`` into a sampler and register it.

    ``check(**options) -> options`` validates (and normalises) the options once per call, before the first step;
    ``deterministic`` (no noise injected at default options) and ``evals_per_step`` (score calls a step at default
    options) are recorded on the sampler and make :data:`DETERMINISTIC` and :data:`EVALS_PER_STEP`.
    """

    def wrap(step):
        def sampler(score: Score, x, times, *, sde=None, generator=None, noise=None, return_trajectory=False,
                    final_denoise=False, **options):
            run = _Run(score, x, times, sde, generator, noise, return_trajectory)
            if check is not None:
                options = check(**options)
            with torch.no_grad():
                for t, t_next in run.steps():
                    run.record(step(run, run.x, t, t_next, **options))
                if final_denoise:
                    t_last = float(run.times[-1])
                    run.record(run.sde.denoise(run.x, run.score(run.x, t_last), t_last))
            return run.result()

        sampler.__name__ = step.__name__.lstrip("_")
        sampler.__qualname__ = sampler.__name__
        sampler.__doc__ = _sampler_doc(step.__doc__)
        common = [p for p in inspect.signature(sampler).parameters.values() if p.kind != p.VAR_KEYWORD]
        extra = list(inspect.signature(step).parameters.values())[4:]
        sampler.__signature__ = inspect.Signature(common + [p.replace(kind=p.KEYWORD_ONLY) for p in extra])
        sampler.deterministic, sampler.evals_per_step = deterministic, evals_per_step
        _REGISTRY[sampler.__name__] = sampler
        return sampler

    return wrap if step is None else wrap(step)


def _scalar(sde_fn, t) -> float:
    return float(sde_fn(torch.tensor(t, dtype=torch.float64)))


# -- the samplers ---------------------------------------------------------------------------------------
@_sampler
def _euler_maruyama(run, x, t, t_next):
    r"""Euler-Maruyama for the reverse SDE (review Section 2.1).

    .. math:: x \leftarrow x + \Delta\,g(t)\,[\tfrac12 x + s(x, t)] + \sqrt{g(t)\Delta}\,\xi,\qquad \Delta = t - t'.
    """
    dt = t - t_next
    g = _scalar(run.sde.g, t)
    return x + dt * g * (0.5 * x + run.score(x, t)) + math.sqrt(g * dt) * run.draw(x)


@_sampler
def _exponential_integrator(run, x, t, t_next):
    r"""Exponential integrator: the linear drift is integrated exactly, the score frozen on the step.

    With :math:`A = G(t) - G(t')` (so :math:`e^{A/2} = \alpha(t')/\alpha(t)`),

    .. math:: x \leftarrow e^{A/2} x + 2(e^{A/2} - 1)\,s(x, t) + \sqrt{e^{A} - 1}\;\xi .

    :cite:p:`zhang2023fast`; the discretisation analysed by :cite:t:`chen2023sampling` and :cite:t:`benton2024nearly`.
    """
    A = _scalar(run.sde.integral, t) - _scalar(run.sde.integral, t_next)
    return math.exp(A / 2) * x + 2 * math.expm1(A / 2) * run.score(x, t) + math.sqrt(math.expm1(A)) * run.draw(x)


def _pf_drift(run, x, t):
    return 0.5 * _scalar(run.sde.g, t) * (x + run.score(x, t))


@_sampler(deterministic=True)
def _probability_flow_euler(run, x, t, t_next):
    r"""Euler steps on the probability-flow ODE :math:`\dot x = \tfrac12 g(t)(x + s(x, t))` (first order).

    :cite:p:`song2021score`.
    """
    return x + (t - t_next) * _pf_drift(run, x, t)


@_sampler(deterministic=True, evals_per_step=2)
def _probability_flow_heun(run, x, t, t_next):
    r"""Heun's method (explicit trapezoid) on the probability-flow ODE: second order, two score calls a step.

    :cite:p:`song2021score,karras2022elucidating`.
    """
    dt = t - t_next
    d1 = _pf_drift(run, x, t)
    x_euler = x + dt * d1
    return x + 0.5 * dt * (d1 + _pf_drift(run, x_euler, t_next))


def _abar(run, t):
    return _scalar(run.sde.alpha, t) ** 2


@_sampler
def _ddpm(run, x, t, t_next):
    r"""DDPM ancestral sampling on any grid: draw from :math:`q(x_{t'} \mid x_t, \hat x_0)`.

    With :math:`\bar\alpha = \alpha(t)^2`, :math:`\bar\alpha' = \alpha(t')^2` and
    :math:`\beta = 1 - \bar\alpha/\bar\alpha'`,

    .. math::

        x \leftarrow \frac{x + \beta\,s(x, t)}{\sqrt{1-\beta}} + \sqrt{\tilde\beta}\,\xi,\qquad
        \tilde\beta = \frac{1-\bar\alpha'}{1-\bar\alpha}\,\beta,

    which is Algorithm 2 of :cite:t:`ho2020denoising` with :math:`\epsilon = -\sqrt{1-\bar\alpha}\,s` and the posterior
    variance (diffusers' ``fixed_small``).  On :class:`~diffnotes.sde.DiscreteVP` node times it is exactly DDPM.
    """
    return _ddpm_update(run.sde, x, run.score(x, t), t, t_next, run.draw(x))


def _ddpm_update(sde: VPSDE, x: torch.Tensor, s: torch.Tensor, t: float, t_next: float, xi: torch.Tensor):
    """The DDPM ancestral step of :func:`ddpm` from ``x`` at ``t`` to ``t_next``, given the score value ``s`` at
    (x, t) and the standard Gaussian draw ``xi``: the one update that :func:`ddpm`, the inpainting samplers
    (:mod:`diffnotes.inpainting`) and the differentiable chain :func:`diffnotes.control.ddpm_chain` share."""
    ab, ab_next = _scalar(sde.alpha, t) ** 2, _scalar(sde.alpha, t_next) ** 2
    beta = 1 - ab / ab_next
    var = (1 - ab_next) / (1 - ab) * beta
    return (x + beta * s) / math.sqrt(1 - beta) + math.sqrt(var) * xi


def _check_ddim(eta: float = 0.0, arrival=None):
    eta = float(eta)
    if not 0 <= eta <= 1:
        raise ValueError(f"the DDIM parameter eta must lie in [0, 1], got {eta}")
    if arrival is not None:
        arrival = as_time(arrival).to(torch.float64).reshape(-1)
        if not torch.all(torch.isfinite(arrival)) or torch.any(arrival < 0):
            raise ValueError("arrival must hold finite times >= 0, one per step")
        arrival = arrival.tolist()
    return {"eta": eta, "arrival": arrival}


@_sampler(check=_check_ddim, deterministic=True)
def _ddim(run, x, t, t_next, eta: float = 0.0, arrival=None):
    r"""DDIM: predict :math:`\hat x_0` by Tweedie, then move to :math:`t'` along the predicted noise.

    .. math::

        \hat x_0 = \frac{x + (1-\bar\alpha)s}{\sqrt{\bar\alpha}},\quad \hat\epsilon = -\sqrt{1-\bar\alpha}\,s,\quad
        x \leftarrow \sqrt{\bar\alpha'}\,\hat x_0 + \sqrt{1-\bar\alpha'-\sigma^2}\,\hat\epsilon + \sigma\xi,

    with :math:`\sigma = \eta\sqrt{(1-\bar\alpha')/(1-\bar\alpha)}\sqrt{1-\bar\alpha/\bar\alpha'}`.  ``eta = 0``
    (default) is the deterministic DDIM, a first-order solver of the probability-flow ODE; ``eta = 1`` is DDPM.
    :cite:p:`song2021denoising`.

    ``arrival`` (optional, one time per step, each below its step's start) replaces the time :math:`t'` that step
    k arrives at, while the next step still evaluates the score at the next grid time.  This is not the method (it
    leaves the state at one time and calls it another); it exists to reproduce diffusers' ``DDIMScheduler``, which
    steps from timestep j to j - N // n whatever the next timestep is, so that for step counts n that do not
    divide N = 1000 its trailing and linspace grids are not what it integrates (:func:`diffusers_ddim_arrivals`
    gives its arrival times; book page *Parity with diffusers*).

    Parameters
    ----------
    eta : float
        The noise parameter in [0, 1] (0: deterministic DDIM, 1: DDPM).
    arrival : tensor, optional
        One arrival time per step, each below its step's start (default: the next grid time, the method).
    """
    if arrival is not None:
        if run.step_index == 0 and len(arrival) != run.n_steps:
            raise ValueError(f"arrival must hold one time per step ({run.n_steps}), got {len(arrival)}")
        t_next = arrival[run.step_index]
        if not t_next < t:
            raise ValueError(f"arrival time {t_next:g} of step {run.step_index} is not below its start {t:g}")
    ab, ab_next = _abar(run, t), _abar(run, t_next)
    s = run.score(x, t)
    x0 = (x + (1 - ab) * s) / math.sqrt(ab)
    eps = -math.sqrt(1 - ab) * s
    sigma = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
    out = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next - sigma**2) * eps
    return out + sigma * run.draw(x) if sigma > 0 else out


def _check_pc(n_corrector: int = 1, snr: float = 0.16):
    n_corrector = _checks.positive_int(n_corrector, "n_corrector", 0, floats=True)
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    return {"n_corrector": n_corrector, "snr": snr}


@_sampler(check=_check_pc, evals_per_step=2)
def _predictor_corrector(run, x, t, t_next, n_corrector: int = 1, snr: float = 0.16):
    r"""Predictor-corrector: an Euler-Maruyama reverse step, then Langevin corrector steps at the new time.

    Each corrector step is :math:`x \leftarrow x + \epsilon\,s(x, t') + \sqrt{2\epsilon}\,\xi` with
    :math:`\epsilon = 2\,\mathrm{snr}^2\,h(t')`.  This is the rule of :cite:t:`song2021score` with the noise variance
    :math:`h(t')` standing in for their ratio :math:`\|\xi\|^2/\|s\|^2` (the two agree for Gaussian data near the
    prior), chosen so that the step does not depend on x and the sampler stays linear on Gaussian data.
    Supporting material: not named in the review; :cite:t:`lee2022convergence` analyse such schemes.

    Parameters
    ----------
    n_corrector : int
        Langevin corrector steps after each predictor step, >= 0 (0: plain Euler-Maruyama).
    snr : float
        The signal-to-noise ratio of the corrector, > 0; the corrector step is :math:`2\,\mathrm{snr}^2 h(t')`.
    """
    dt = t - t_next
    g = _scalar(run.sde.g, t)
    x = x + dt * g * (0.5 * x + run.score(x, t)) + math.sqrt(g * dt) * run.draw(x)
    eps = 2 * snr**2 * _scalar(run.sde.h, t_next)
    for _ in range(n_corrector):
        x = x + eps * run.score(x, t_next) + math.sqrt(2 * eps) * run.draw(x)
    return x


def _check_dpm(order: int = 2, lower_order_final: bool = True):
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"DPM-Solver++ supports order 1 or 2, got {order!r}")
    return {"order": int(order), "lower_order_final": bool(lower_order_final)}


@_sampler(check=_check_dpm, deterministic=True)
def _dpm_solver_pp(run, x, t, t_next, order: int = 2, lower_order_final: bool = True):
    r"""DPM-Solver++ (2M): the multistep second-order solver of the probability-flow ODE in data prediction.

    With :math:`\lambda = \log(\alpha/\sigma)`, :math:`\sigma = \sqrt h`, step :math:`\delta = \lambda(t') - \lambda(t)`
    and Tweedie's data prediction :math:`\hat x_0(x, t)`, each step is

    .. math::

        x \leftarrow \frac{\sigma(t')}{\sigma(t)}\,x - \alpha(t')\,(e^{-\delta} - 1)\,D,\qquad
        D = \hat x_0^{(k)} + \frac{1}{2r}\big(\hat x_0^{(k)} - \hat x_0^{(k-1)}\big),\quad
        r = \frac{\delta_{k-1}}{\delta_k},

    reusing the previous step's prediction (one score call a step).  The first step, ``order=1``, and (with
    ``lower_order_final`` and fewer than 15 steps) the last step use :math:`D = \hat x_0^{(k)}`, which is DDIM.
    These are the choices of diffusers' ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
    ``solver_type="midpoint"``).  :cite:p:`lu2022dpmsolverpp`.

    Parameters
    ----------
    order : int
        1 (every step is DDIM) or 2 (the multistep second-order update, the default).
    lower_order_final : bool
        Take the last step at first order when there are fewer than 15 steps (diffusers' default, for stability).
    """
    sde = run.sde
    a, a_next = _scalar(sde.alpha, t), _scalar(sde.alpha, t_next)
    s, s_next = math.sqrt(_scalar(sde.h, t)), math.sqrt(_scalar(sde.h, t_next))
    lam, lam_next = math.log(a / s), math.log(a_next / s_next)
    delta = lam_next - lam
    x0 = (x + s**2 * run.score(x, t)) / a
    D = x0
    previous = run.memory.get("previous")
    final = run.step_index == run.n_steps - 1 and lower_order_final and run.n_steps < 15
    if order == 2 and previous is not None and not final:
        x0_prev, delta_prev = previous
        D = x0 + (x0 - x0_prev) / (2 * delta_prev / delta)
    run.memory["previous"] = (x0, delta)
    return (s_next / s) * x - a_next * math.expm1(-delta) * D


_SERIES_TERMS = 24  # for h < 1/2 the k-th term is at most 2^-k / k!: 24 terms leave less than 1e-30
_MAX_NODES = 4
#: m! / (m + k + 1)!, the coefficients of the series of J_m in powers of -h.
_SERIES = np.array([[math.factorial(m) / math.factorial(m + k + 1) for k in range(_SERIES_TERMS)]
                    for m in range(_MAX_NODES)])


def _exponential_moments(h, n: int) -> np.ndarray:
    r""":math:`J_m(h) = \int_0^1 e^{h(u-1)}\,u^m\,\mathrm du` for m = 0..n-1 (n <= 4) and h > 0 (shape of h + (n,)).

    By the series :math:`J_m = \sum_{k\ge0} (-h)^k\,m!/(m+k+1)!` for h < 1/2 (no cancellation), else by the
    recursion :math:`J_0 = (1-e^{-h})/h`, :math:`J_m = (1 - m J_{m-1})/h` (integration by parts), which is stable
    there.
    """
    h = np.asarray(h, dtype=np.float64)
    small = h < 0.5
    hl = np.where(small, 1.0, h)
    series = (-np.where(small, h, 0.0)[..., None]) ** np.arange(_SERIES_TERMS) @ _SERIES[:n].T
    recursion = [-np.expm1(-hl) / hl]
    for j in range(1, n):
        recursion.append((1 - j * recursion[-1]) / hl)
    return np.where(small[..., None], series, np.stack(recursion, -1))


def _exponential_weights(u, h, p=None) -> np.ndarray:
    r"""Exact exponential quadrature: weights :math:`w_j` with :math:`\int_0^h e^{s-h} P(s)\,\mathrm ds =
    \sum_j w_j P(h u_j)` for every polynomial P of degree < p, for a batch of node sets.

    ``u`` has shape (B, n) (nodes in units of the step: 0 at its start, 1 at its end), ``h`` shape (B,), ``p``
    (B,) the number of nodes of each set, the rest of its row being padding (default: all n).  Writing
    :math:`P(hu) = \sum_m c_m u^m` and :math:`V_{jm} = u_j^m`, the integral is :math:`h\,J\cdot c = (h V^{-T} J)
    \cdot P(hu)`, with :math:`J_m` from :func:`_exponential_moments`.  Padding enters as an identity block of V
    and zeros of J, so its weights are 0.
    """
    u, h = np.asarray(u, dtype=np.float64), np.asarray(h, dtype=np.float64)
    n = u.shape[-1]
    used = np.arange(n) < (np.full(h.shape, n) if p is None else np.asarray(p))[..., None]
    both = used[..., :, None] & used[..., None, :]
    V = np.where(both, np.where(used, u, 0.0)[..., :, None] ** np.arange(n), np.eye(n))
    J = np.where(used, _exponential_moments(h, n), 0.0)
    return h[..., None] * np.linalg.solve(np.swapaxes(V, -1, -2), J[..., None])[..., 0]


def _multistep_plan(times, sde, order: int, corrector: bool, lower_order_final: bool) -> list:
    """Everything :func:`exponential_multistep` needs that depends only on the grid, per step: h(t_k), the slot of
    node k in a ring buffer of ``order + 2`` slots (node j in slot j mod (order + 2)), and for the corrector (None
    when there is none) and the predictor the ratio sigma'/sigma and the (slot, weight) pairs of its nodes.  Weights
    are divided by alpha of their node, so that they act on x + h s (alpha times Tweedie's prediction), and
    multiplied by alpha of the target time.  All weights come from one batched solve."""
    G = sde.integral(times).numpy()  # alpha = exp(-G/2), h = 1 - exp(-G)
    a, sg = np.exp(-G / 2), np.sqrt(-np.expm1(-G))
    lam = np.log(a / sg)
    n_steps, slots, width = len(a) - 1, order + 2, order + 1
    # One quadrature per row: row k < n_steps is step k's predictor, row n_steps + k its corrector (from k - 1 to k).
    base, target, count = np.arange(2 * n_steps) % n_steps, np.arange(2 * n_steps) % n_steps + 1, []
    base[n_steps:] -= 1
    target[n_steps:] -= 1
    # Step k corrects step k - 1: every step with the corrector; without it only the first step of the third-order
    # predictor (a DDIM step, local error h^2, which would otherwise leave a global h^2 term), at no extra score call.
    corrected = [k > 0 and (corrector or (order == 3 and k == 1)) for k in range(n_steps)]
    used = 0
    for k in range(n_steps):
        p = min(order, k + 1)
        if lower_order_final:
            p = min(p, n_steps - k)
        count.append((p, used + 1 if corrected[k] else 0))  # corrector: the new node + the predictor's
        used = p
    count = np.array(count).T.reshape(-1)  # predictor counts, then corrector counts
    live = count > 0
    base, target, count = base[live], target[live], count[live]
    rows = np.flatnonzero(live)
    newest = np.where(rows >= n_steps, target, base)  # node k: the start of a predictor, the end of a corrector
    nodes = np.maximum(newest[:, None] - np.arange(width), 0)  # k, k - 1, ...; the padding is masked by count
    h = lam[target] - lam[base]
    w = _exponential_weights((lam[nodes] - lam[base][:, None]) / h[:, None], h, count)
    coef, slot = (a[target][:, None] * w / a[nodes]).tolist(), (nodes % slots).tolist()
    terms = [None] * (2 * n_steps)
    for i, row in enumerate(rows.tolist()):
        terms[row] = list(zip(slot[i][: count[i]], coef[i][: count[i]], strict=True))
    sg = sg.tolist()
    return [(sg[k] ** 2, k % slots, (sg[k] / sg[k - 1], terms[n_steps + k]) if corrected[k] else None,
             (sg[k + 1] / sg[k], terms[k])) for k in range(n_steps)]


def _check_multistep(order: int = 2, corrector: bool = True, lower_order_final: bool = True):
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if not isinstance(corrector, bool) or not isinstance(lower_order_final, bool):
        raise TypeError("corrector and lower_order_final must be True or False")
    return {"order": order, "corrector": corrector, "lower_order_final": lower_order_final}


@_sampler(check=_check_multistep, deterministic=True)
def _exponential_multistep(run, x, t, t_next, order: int = 2, corrector: bool = True, lower_order_final: bool = True):
    r"""Exponential Adams multistep solver of the probability-flow ODE, with an optional corrector (UniPC's idea).

    In the half log-SNR :math:`\lambda = \log(\alpha/\sigma)`, :math:`\sigma = \sqrt h`, the probability-flow ODE has
    the exact variation-of-constants solution in terms of Tweedie's data prediction :math:`\hat x_0(x, \lambda)`
    :cite:p:`lu2022dpmsolverpp`:

    .. math::

        x(\lambda') = \frac{\sigma(\lambda')}{\sigma(\lambda)}\,x(\lambda)
        + \alpha(\lambda') \int_\lambda^{\lambda'} e^{u-\lambda'}\,\hat x_0(x(u), u)\,\mathrm du .

    *Predictor* (exponential Adams-Bashforth of order p): :math:`\hat x_0` is replaced by the polynomial in
    :math:`\lambda` through the last p data predictions :math:`f_k, \dots, f_{k-p+1}` (one score call a step, the
    others reused), and the integral is done exactly, :math:`x_{k+1} = (\sigma_{k+1}/\sigma_k)\,x_k + \alpha_{k+1}
    \sum_j w_j f_{k-j}` with :math:`w_j = \int_{\lambda_k}^{\lambda_{k+1}} e^{u-\lambda_{k+1}}\ell_j(u)\,\mathrm du`
    (:math:`\ell_j` the Lagrange basis).  Order 1 is DDIM; order 2 is DPM-Solver++ 2M in the variant that integrates
    the linear interpolant exactly (``solver_type="heun"`` of the reference code).  Order 3 has the form of
    DPM-Solver++ 3M :cite:p:`lu2022dpmsolverpp` but is not diffusers' ``DPMSolverMultistepScheduler`` with
    ``solver_order=3``: writing the quadratic interpolant as :math:`D_0 + D_1 s + D_2 s^2` in
    :math:`s = (\lambda - \lambda_k)/\delta` (:math:`D_2` the second divided difference in units of the step, as
    there), we integrate it exactly, so :math:`D_2` gets the weight :math:`\delta J_2(\delta) = -2\varphi_3`,
    :math:`\varphi_3 = (e^{-\delta} - 1 + \delta)/\delta^2 - \tfrac12`, while diffusers (and the reference code)
    give it :math:`-\varphi_3`, half as much: theirs treats :math:`D_2` as :math:`\delta^2\hat x_0''` where it
    estimates :math:`\delta^2\hat x_0''/2`.  The divided differences agree, and so do the steps of orders 1
    and 2 (with ``solver_type="heun"``).  Also, our first step is corrected (below); diffusers' is plain DDIM.
    tests/test_parity_3m.py checks that these two differences account exactly for the gap between the two
    (about 1e-2 at 10 steps on the DDPM grid).  The exact quadrature of polynomials against the exponential kernel is
    that of DEIS :cite:p:`zhang2023fast`.

    *Corrector* (exponential Adams-Moulton): once :math:`f_{k+1}` has been computed at the predicted
    :math:`x_{k+1}` (the call the next step needs anyway), :math:`x_{k+1}` is recomputed from :math:`x_k` with the
    polynomial through :math:`f_{k+1}` and the predictor's nodes, which raises the order by one at no extra score
    call; :math:`f_{k+1}` is not re-evaluated at the corrected point.  This is the corrector idea of UniPC (Zhao,
    Bai, Rao, Zhou and Lu, NeurIPS 2023), here with exact exponential quadrature weights.  The last state is not
    corrected (that would cost a score call).  With ``return_trajectory`` the trajectory holds the corrected states.

    With ``lower_order_final`` the order is capped by the number of steps left (the last step is DDIM, the one before
    it at most second order), which keeps large final steps into small noise levels stable.  The grid's first steps
    use the orders their history allows; without the corrector, the third-order predictor's first step (a DDIM step,
    local error :math:`O(\delta^2)`) is still corrected, at no extra score call: otherwise it leaves a global
    :math:`O(\delta^2)` term, of size :math:`\mathrm{SNR}(T)\,\delta^2` (the data prediction moves at rate
    :math:`\alpha` near T), which is why it only showed below errors of about 1e-8 (issue 18).

    *Orders* (without ``lower_order_final``): p, or p + 1 with the corrector.  Measured on the exact Gaussian
    oracle (D = 3, full covariance, non-zero mean, started at the exact law at T = 1 of ``LinearVP()``,
    t0 = 1e-3; error of the output mean and covariance), local orders between 1536 and 3072 steps, errors at 3072:

    ===========  =====================  =====================  ======================
    order, AM    ``"uniform"``          ``"quadratic"``        ``"logsnr"``
    ===========  =====================  =====================  ======================
    1            1.00 (1.2e-3)          1.00 (1.0e-3)          1.00 (1.6e-3)
    1 + AM       1.91 (1.0e-5)          2.00 (1.1e-6)          2.00 (2.8e-6)
    2            2.03 (8.8e-6)          2.00 (7.0e-7)          2.00 (2.0e-6)
    2 + AM       2.74 (1.2e-6)          3.00 (2.9e-9)          3.00 (6.3e-9)
    3            2.97 (7.3e-7)          3.01 (2.7e-9)          3.74 (1.4e-11)
    3 + AM       3.52 (2.6e-7)          4.10 (1.5e-11)         4.01 (8.0e-12)
    ===========  =====================  =====================  ======================

    The uniform grid reaches the asymptotic orders late: its step next to t0 spans :math:`\tfrac12\log(1 +
    T/(n t_0))` in :math:`\lambda`, which is not small until :math:`n \gg T/t_0` (with ``ConstantVP(T=10)`` the local
    orders at 3072 steps are still 0.97-2.2).  On the log-SNR grid the plain third-order predictor measures more
    than 3 (3.9-4.0 at 100-1500 steps for ``LinearVP()``, 3.4-3.8 for ``ConstantVP(T=10)``, drifting down to 3; the
    4.5-4.7 measured before the first step was corrected came from its :math:`\delta^2` term of opposite sign): for
    Gaussian data the data prediction along the exact flow is :math:`\mu + c\,g(\lambda)` with
    :math:`g = e^\lambda/\sqrt{1 + \kappa e^{2\lambda}}` per eigen-direction (:math:`\kappa` the eigenvalue of the
    covariance), and the error at t0 sums the local errors :math:`\propto \delta^4\alpha\,\hat x_0'''` carried
    by the flow (a factor :math:`\propto g/\alpha`), so with a constant step the :math:`\delta^3` coefficient is
    :math:`\propto \int g\,g'''\,\mathrm d\lambda = [g g'' - g'^2/2]`, an exact derivative, left only with its small
    end values (:math:`O(\mathrm{SNR}(T))` and :math:`O(1/\mathrm{SNR}(t_0))`).  The next term does not
    cancel, so order 4 shows until the small :math:`\delta^3` term takes over.  On non-uniform grids (in
    :math:`\lambda`) and for non-Gaussian data nothing cancels.  With the corrector and p = 3 the first step has only
    two nodes (local error :math:`O(\delta^3)`), which leaves a global term :math:`\mathrm{SNR}(T)\,\delta^3`; here
    it does not show in the local orders down to errors of 5e-13 (4.04 from 3072 to 6144 steps on the log-SNR grid;
    tests/test_multistep_orders.py).  All weights depend only on the grid and are computed once,
    before the first step; they are exact to round-off (series below :math:`\delta = 1/2`, recursion above).
    Review Section 2 (faster sampling), book chapter *Samplers*; the review names the idea (fewer steps with a
    better ODE solver), not this solver.

    Parameters
    ----------
    order : int
        Predictor order p, 1, 2 or 3.
    corrector : bool
        Apply the corrector (default True).
    lower_order_final : bool
        Cap the order by the number of remaining steps (default True).
    """
    mem = run.memory
    if "plan" not in mem:  # first step: precompute every weight of the grid
        mem["plan"] = _multistep_plan(run.times, run.sde, order, corrector, lower_order_final)
        mem["slots"] = x.new_empty((order + 2, *x.shape)).unbind(0)  # x + h s at the last order + 2 nodes
    var, slot, corr, (ratio, terms) = mem["plan"][run.step_index]
    slots = mem["slots"]
    torch.add(x, run.score(x, t), alpha=var, out=slots[slot])  # alpha_k times Tweedie's data prediction
    if corr is not None:
        x = _combine(corr[0], mem["x"], corr[1], slots)
        if run.trajectory is not None:
            run.trajectory[-1] = x.clone()
    mem["x"] = x
    return _combine(ratio, x, terms, slots)


def _combine(ratio: float, x: torch.Tensor, terms, slots) -> torch.Tensor:
    """ratio * x + sum of weight * slots[slot] over the (slot, weight) terms."""
    out = torch.mul(x, ratio)
    for slot, weight in terms:
        out.add_(slots[slot], alpha=weight)
    return out


euler_maruyama = _euler_maruyama
exponential_integrator = _exponential_integrator
probability_flow_euler = _probability_flow_euler
probability_flow_heun = _probability_flow_heun
ddpm = _ddpm
ddim = _ddim
predictor_corrector = _predictor_corrector
dpm_solver_pp = _dpm_solver_pp
exponential_multistep = _exponential_multistep

#: Every sampler of this module by name, derived from the samplers themselves (tests/test_regressions.py checks that
#: it lists every public sampler).
SAMPLERS = dict(_REGISTRY)

#: The samplers that inject no noise (with their default options).
DETERMINISTIC = tuple(name for name, sampler in SAMPLERS.items() if sampler.deterministic)

#: Score evaluations per step of each sampler (at default options).
EVALS_PER_STEP = {name: sampler.evals_per_step for name, sampler in SAMPLERS.items()}


#: The default configuration of :func:`sample` (grid + solver + final step): the exponential Adams multistep solver of
#: order 3 with its corrector, on the grid uniform in :math:`t^{1/\rho}`, :math:`\rho = 2.5` (:func:`power_grid`),
#: from T down to ``t_last`` = 0.03 T, then one final denoising call (Tweedie's estimate, the step to t = 0): n score
#: evaluations are n - 1 steps and the final call.  (rho, t_last, solver, final step) minimise an error on a fixed
#: family of data laws that are not the benchmark's targets: bench/grid_rule.py (symmetric two-component 1-D Gaussian
#: mixtures +-m, std s, m in {0, 1, 2, 5}, s in {0.03, 0.1, 0.3, 1, 3}, exact score, mean over the family of the log
#: of the RMS distance to a 3000-step solve relative to the data scale, averaged over 5 and 10 evaluations, on the
#: DDPM grid); ``make bench`` measures it against diffusers.
DEFAULT_CONFIG = {"sampler": "exponential_multistep", "options": {"order": 3, "corrector": True,
                                                                 "lower_order_final": True},
                  "grid": "power", "rho": 2.5, "t_last": 0.03, "final_denoise": True}


def power_grid(sde: VPSDE, t_last: float, n_steps: int, rho: float, T: float | None = None) -> torch.Tensor:
    r"""A decreasing grid uniform in :math:`t^{1/\rho}`: :math:`t_k = (T^{1/\rho} + \tfrac kn (t_{\rm last}^{1/\rho}
    - T^{1/\rho}))^\rho`, k = 0..n.  :math:`\rho = 1` is uniform, 2 the ``"quadratic"`` grid of :func:`time_grid`;
    larger :math:`\rho` puts more nodes at small t.

    Parameters
    ----------
    sde : VPSDE
        The forward process (its horizon is the default T).
    t_last : float
        The last time, 0 < t_last < T.
    n_steps : int
        Number of steps, >= 1.
    rho : float
        The power, >= 1.
    T : float, optional
        Start time, at most ``sde.T``.
    """
    rho = float(rho)
    if not (math.isfinite(rho) and rho >= 1):
        raise ValueError(f"rho must be a finite number >= 1, got {rho}")
    grid = time_grid(sde, t_last, n_steps, "uniform", T=T)  # checks t_last, n_steps, T; uniform in t
    T, t_last = float(grid[0]), float(grid[-1])
    u = torch.linspace(0, 1, grid.numel(), dtype=torch.float64)
    grid = (T ** (1 / rho) + u * (t_last ** (1 / rho) - T ** (1 / rho))) ** rho
    grid[0], grid[-1] = T, t_last
    return grid


def on_nodes(times, N: int) -> torch.Tensor:
    """Round a decreasing grid in (0, 1] to the nodes k/N of a discrete grid, keeping it strictly decreasing.

    Where rounding makes nodes collide (a grid denser than 1/N, as log-SNR grids are near t0), each node is moved up
    to the next free one, working from t0 upwards; so every score call is at a timestep a discrete-time network
    (DDPM's) knows.

    Parameters
    ----------
    times : tensor
        A strictly decreasing grid in (0, 1].
    N : int
        The number of nodes (``DiscreteVP.N``).
    """
    N = _checks.positive_int(N, "N")
    times = as_time(times).to(torch.float64)
    k = torch.round(times * N).clamp(1, N).long().flip(0)  # increasing from t0
    r = torch.arange(k.numel())
    k = (torch.cummax(k - r, 0).values + r).flip(0)  # k_i >= k_(i+1) + 1, the smallest such change
    if k[0] > N:
        raise ValueError(f"a grid of {k.numel() - 1} steps does not fit on {N} nodes")
    return k.double() / N


def sample(score: Score, x, n_evals: int, *, sde=None, t_last: float | None = None, T: float | None = None,
           generator=None, return_trajectory: bool = False):
    r"""Sample with the package's default configuration :data:`DEFAULT_CONFIG`, in ``n_evals`` score evaluations.

    ``exponential_multistep(score, x, times, order=3, corrector=True, final_denoise=True)`` on ``times =
    power_grid(sde, t_last, n_evals - 1, 2.5)`` (``t_last`` = 0.03 T by default), rounded to the nodes k/N when
    ``sde`` is a :class:`~diffnotes.sde.DiscreteVP` (so that a discrete-time network is only asked about its own
    timesteps): n_evals - 1 steps, then Tweedie's denoised estimate at ``t_last``, so the output is a sample at
    t = 0.  Book chapter *Samplers*; ``make bench`` compares it with diffusers' schedulers, and bench/grid_rule.py
    is the rule that chose the configuration.

    Parameters
    ----------
    score : callable
        ``score(x, t)``.
    x : tensor or tuple
        The start (n, D), or its shape (drawn from N(0, I) with ``generator``).
    n_evals : int
        Score evaluations, >= 2 (n_evals - 1 steps and the final denoising call).
    sde : VPSDE, optional
        The forward process (default ``ConstantVP()``).
    t_last : float, optional
        The last time of the grid, where the final denoising call is made (default 0.03 T).
    T : float, optional
        Start time (default the horizon).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the start when ``x`` is a shape.
    return_trajectory : bool
        Also return the trajectory (n_evals + 1 states, the denoised output last).
    """
    sde = _checks.sde_or_default(sde)
    n_evals = _checks.positive_int(n_evals, "n_evals", 2)
    T_ = sde.T if T is None else float(T)
    t_last = DEFAULT_CONFIG["t_last"] * T_ if t_last is None else float(t_last)
    times = power_grid(sde, t_last, n_evals - 1, DEFAULT_CONFIG["rho"], T=T)
    N = getattr(sde, "N", None)
    if N is not None:
        times = on_nodes(times, N)
    sampler = SAMPLERS[DEFAULT_CONFIG["sampler"]]
    return sampler(score, x, times, sde=sde, generator=generator, return_trajectory=return_trajectory,
                   final_denoise=DEFAULT_CONFIG["final_denoise"], **DEFAULT_CONFIG["options"])


def diffusers_ddim_arrivals(sde, n_steps: int, set_alpha_to_one: bool = False, spacing: str = "trailing"):
    r"""The times diffusers' ``DDIMScheduler`` arrives at, step by step, on a :class:`~diffnotes.sde.DiscreteVP`.

    diffusers steps from its timestep :math:`j_k` to :math:`j_k - \lfloor N/n\rfloor` (N training steps, n
    inference steps), not to its next timestep :math:`j_{k+1}`; the two agree only when n divides N (trailing
    spacing).  A negative index stands for :math:`\bar\alpha_0 = \bar\alpha(1/N)` (``set_alpha_to_one=False``) or
    for :math:`\bar\alpha = 1`, t = 0 (``True``).  With diffusers index j at time (j + 1)/N,
    ``ddim(score, x, times, sde=sde, arrival=diffusers_ddim_arrivals(sde, n))`` on ``times`` =
    ``sde.timesteps(n)`` followed by 1/N reproduces ``DDIMScheduler(timestep_spacing="trailing",
    set_alpha_to_one=False)`` for every n (tests/test_parity_diffusers.py).

    Parameters
    ----------
    sde : DiscreteVP
        The discrete grid (N = ``sde.N``).
    n_steps : int
        Number of inference steps n.
    set_alpha_to_one : bool
        diffusers' option of the same name.
    spacing : str
        ``"trailing"`` or ``"leading"`` (as :meth:`~diffnotes.sde.DiscreteVP.timesteps`).
    """
    N = getattr(sde, "N", None)
    if N is None:
        raise TypeError(f"sde must be a DiscreteVP (diffusers' grid), got {type(sde).__name__}")
    times = sde.timesteps(n_steps, spacing)
    j = torch.round(times * N).long() - 1 - N // int(n_steps)
    floor = 0.0 if set_alpha_to_one else 1.0 / N
    return torch.where(j >= 0, (j + 1).double() / N, torch.full_like(times, floor))


def block_noise(rows: int, blocks: int, generator=None) -> Callable:
    """A ``noise`` hook for common random numbers across ``blocks`` stacked copies of a batch of ``rows`` rows.

    Each call ``noise(like)`` (``like`` of shape (rows * blocks, D)) draws one (rows, D) standard Gaussian block from
    ``generator`` and repeats it ``blocks`` times, so that every block of a stacked batch (one guidance strength or
    one schedule per block, say) sees the same noise at every step and differences between blocks are not Monte Carlo
    noise.  Pass it as ``sampler(..., noise=block_noise(n, B, gen))``; book chapters *The strength of guidance* and
    *Open questions*.

    Parameters
    ----------
    rows : int
        Rows of one block, >= 1.
    blocks : int
        Number of stacked blocks, >= 1.
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the draws (a torch generator is used as it is, so its stream continues in the caller).
    """
    rows = _checks.positive_int(rows, "rows")
    blocks = _checks.positive_int(blocks, "blocks")
    gen = _checks.generator(generator)

    def noise(like: torch.Tensor) -> torch.Tensor:
        if like.ndim != 2 or like.shape[0] != rows * blocks:
            raise ValueError(f"block_noise({rows}, {blocks}) serves batches of {rows * blocks} rows, got "
                             f"{tuple(like.shape)}")
        return torch.randn(rows, like.shape[1], generator=gen, dtype=like.dtype).repeat(blocks, 1)

    return noise
