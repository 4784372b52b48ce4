r"""Planning by trajectory generation: Decision Diffuser, inverse dynamics, and Diffuser-style inpainting.

The review (Section 3.2 and Fig. 3; book chapter *Planning with diffusion*) describes planning as conditional
sequence generation: learn the law :math:`P(\tau \mid y)` of whole trajectories :math:`\tau = (s_0, \dots, s_H)`
given their cumulative reward :math:`y`, sample it at a target return, and turn the planned states into actions with
an **inverse-dynamics model** :math:`a_t = f(s_t, s_{t+1})`.  That is the Decision Diffuser of
:cite:t:`ajay2023conditional`, which conditions by classifier-free guidance :cite:p:`ho2022classifier`.  Diffuser
:cite:p:`janner2022planning` plans toward a goal by *inpainting*: the start and goal states are fixed and the model
fills in the states in between.  This module holds a small but complete version of both:

* :class:`RadialPointMassEnv`, a ``gymnasium.Env`` (checked by Gymnasium's own environment checker in the tests):
  a 2-D point mass near the origin whose reward is the radial distance gained, so that the return of an episode is
  :math:`\|s_H\| - \|s_0\|`.  Every direction is equally good: the law of good trajectories is a ring of modes;
* :func:`offline_trajectories`, logged episodes of scripted policies (a random heading and speed) and of a random
  policy, with a spread of returns (:class:`TrajectoryData`);
* :class:`InverseDynamics`, a least-squares model :math:`a_t = W^\top(s_t, s_{t+1}, 1)`;
* :class:`TrajectoryScoreMLP` (a return-conditioned noise network over flattened trajectories),
  :func:`trajectory_dsm_loss` (denoising score matching with return dropout, the classifier-free training),
  :func:`return_guidance` (classifier-free guidance to a target return), :func:`fit_decision_diffuser` and
  :class:`DecisionDiffuser`, whose :meth:`~DecisionDiffuser.plan` conditions on the current state and the goal by
  the inpainting samplers of :mod:`diffnotes.inpainting` (replacement, RePaint);
* :func:`reset_states`, :func:`execute` and :func:`plan_and_execute`: the pipeline of Fig. 3 (target returns
  :math:`\to` generated trajectories :math:`\to` inverse dynamics :math:`\to` actions executed in the environment),
  with every stage kept in a :class:`PlanResult`;
* :class:`GaussianTrajectoryPlanner`, the baseline: the trajectory regressed on the return by least squares, with
  the residual covariance, conditioned on the start (and goal) in closed form.  It predicts the conditional
  *mean* trajectory, which averages the ring of modes.

Conventions are the package's (``diffnotes``): a conditional score has the form ``score(x, y, t)``; a guided score
the form ``score(x, t)``; every function that draws takes ``generator=``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from . import _checks
from .control import _finite_array
from .guidance import _check_strength, _strength_column
from .inpainting import gaussian_posterior, repaint, replacement
from .losses import dsm_loss
from .networks import SinusoidalEmbedding, _mlp, seeded
from .parameterization import as_score
from .samplers import time_grid
from .sde import VPSDE, CosineVP
from .training import train

__all__ = [
    "RadialPointMassEnv",
    "TrajectoryData",
    "offline_trajectories",
    "InverseDynamics",
    "TrajectoryScoreMLP",
    "trajectory_dsm_loss",
    "return_guidance",
    "clean_data_weight",
    "DecisionDiffuser",
    "fit_decision_diffuser",
    "reset_states",
    "execute",
    "Execution",
    "plan_and_execute",
    "PlanResult",
    "GaussianTrajectoryPlanner",
    "PIPELINE",
]

#: The stages of the planning pipeline (review Fig. 3), in order, with the function or attribute behind each.
PIPELINE = (
    ("target return", "PlanResult.target"),
    ("generated trajectories", "DecisionDiffuser.plan"),
    ("inverse dynamics", "InverseDynamics.__call__"),
    ("actions executed", "execute"),
)


# -- the environment -------------------------------------------------------------------------------------------
class RadialPointMassEnv(gym.Env):
    r"""A 2-D point mass rewarded for moving away from the origin (Gymnasium API).

    The state is the position :math:`s \in [-2, 2]^2`, observed exactly (float64, shape (2,)).  An action
    :math:`a \in [-1, 1]^2` is a velocity: :math:`s_{k+1} = \Pi(s_k + \Delta\,\mathrm{clip}(a_k))` with
    :math:`\Delta = 0.1` and :math:`\Pi` the projection onto the box.  An episode starts at
    :math:`s_0 \sim \mathsf U([-0.05, 0.05]^2)` (the environment's ``np_random``, seeded by ``reset(seed=...)``) and
    is truncated after ``max_steps`` steps (default 16, the planning horizon); it never terminates early.  The reward
    is the radial distance gained, :math:`r_k = \|s_{k+1}\| - \|s_k\|`, so the return telescopes to
    :math:`\|s_H\| - \|s_0\|`.  Within 16 steps a coordinate moves by at most 1.6, so the walls are never reached and
    the dynamics are exactly linear, :math:`a_k = (s_{k+1} - s_k)/\Delta` for actions inside the box.  Every direction
    earns the same return: trajectories of a given return form a ring of modes, the setting in which a regression
    (mean) planner fails and a generative one does not (review Section 3.2; book chapter *Planning with diffusion*).

    Parameters
    ----------
    max_steps : int
        Episode length before truncation (default 16).
    """

    metadata = {"render_modes": []}
    dt = 0.1
    bound = 2.0
    start_half_width = 0.05

    def __init__(self, max_steps: int = 16):
        super().__init__()
        self.max_steps = _checks.positive_int(max_steps, "max_steps")
        b = self.bound
        self.observation_space = spaces.Box(np.array([-b, -b]), np.array([b, b]), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)
        self._s = np.zeros(2)
        self._k = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode at a uniform point of the start square; returns ``(observation, info)``.

        Parameters
        ----------
        seed : int, optional
            Seeds the environment's ``np_random``.
        options : dict, optional
            Unused (Gymnasium API).
        """
        super().reset(seed=seed)
        w = self.start_half_width
        self._s = self.np_random.uniform(-w, w, size=2)
        self._k = 0
        return self._s.copy(), {}

    def step(self, action):
        """Move by ``dt * clip(action)``; returns ``(obs, reward, terminated, truncated, info)``.

        Parameters
        ----------
        action : array_like
            A velocity, shape (2,); ``ValueError`` if it is not of that shape or not finite.
        """
        a = _finite_array(action, "action", (2,))
        s_next = np.clip(self._s + self.dt * np.clip(a, -1.0, 1.0), -self.bound, self.bound)
        reward = float(np.hypot(*s_next) - np.hypot(*self._s))
        self._s = s_next
        self._k += 1
        return self._s.copy(), reward, False, self._k >= self.max_steps, {}


# -- offline data ----------------------------------------------------------------------------------------------
@dataclass
class TrajectoryData:
    """Logged episodes of :func:`offline_trajectories`.

    Attributes
    ----------
    states : torch.Tensor
        The visited states, (n, H + 1, 2), float64.
    actions : torch.Tensor
        The actions played, (n, H, 2), float64.
    returns : torch.Tensor
        The returns, (n,), float64.
    random : torch.Tensor
        Whether each episode came from the random policy, (n,) bool.
    """

    states: torch.Tensor
    actions: torch.Tensor
    returns: torch.Tensor
    random: torch.Tensor

    @property
    def horizon(self) -> int:
        """The number of steps H."""
        return int(self.actions.shape[1])


def offline_trajectories(n_episodes: int, *, horizon: int = 16, random_fraction: float = 0.3,
                         max_speed: float = 0.75, action_noise: float = 0.1, generator=None) -> TrajectoryData:
    r"""Episodes of scripted and random policies in :class:`RadialPointMassEnv`: offline data with a spread of returns.

    A fraction ``random_fraction`` of the episodes plays i.i.d. uniform actions on :math:`[-1, 1]^2` (a random walk,
    returns mostly below 0.6 for H = 16).  The others are scripted: each draws a heading :math:`\theta \sim \mathsf U[0,
    2\pi)` and a speed :math:`v \sim \mathsf U[0, v_{\max}]` and plays :math:`a_k = v(\cos\theta, \sin\theta) +
    \xi_k`, :math:`\xi_k \sim \mathsf U[-\texttt{action\_noise}, \texttt{action\_noise}]^2`, with return close to
    :math:`v H \Delta` (at most about 1.2 for the defaults).  Every action lies inside the action box, so the logged
    transitions follow the linear dynamics exactly.  These are the offline data of the Decision Diffuser
    :cite:p:`ajay2023conditional` in miniature (book chapter *Planning with diffusion*).

    Parameters
    ----------
    n_episodes : int
        Number of episodes.
    horizon : int
        Steps per episode H.
    random_fraction : float
        Probability that an episode is played by the random policy, in [0, 1].
    max_speed : float
        :math:`v_{\max}`, in (0, 0.9] (keeps :math:`|a| \le 1` with the noise).
    action_noise : float
        Half-width of the scripted policies' action noise, in [0, 0.1].
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of every draw (policies and environment seeds).
    """
    n_episodes = _checks.positive_int(n_episodes, "n_episodes")
    horizon = _checks.positive_int(horizon, "horizon")
    random_fraction = _checks.probability(random_fraction, "random_fraction")
    max_speed, noise = float(max_speed), float(action_noise)
    if not (math.isfinite(max_speed) and 0 < max_speed <= 0.9):
        raise ValueError(f"max_speed must lie in (0, 0.9], got {max_speed!r}")
    if not (math.isfinite(noise) and 0 <= noise <= 0.1):
        raise ValueError(f"action_noise must lie in [0, 0.1], got {action_noise!r}")
    rng = _checks.numpy_generator(generator)
    env = RadialPointMassEnv(max_steps=horizon)
    states = np.empty((n_episodes, horizon + 1, 2))
    actions = np.empty((n_episodes, horizon, 2))
    returns = np.empty(n_episodes)
    is_random = rng.random(n_episodes) < random_fraction
    for i in range(n_episodes):
        s, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
        if is_random[i]:
            acts = rng.uniform(-1.0, 1.0, size=(horizon, 2))
        else:
            theta, v = rng.uniform(0, 2 * math.pi), rng.uniform(0, max_speed)
            acts = v * np.array([math.cos(theta), math.sin(theta)]) + rng.uniform(-noise, noise, size=(horizon, 2))
        states[i, 0], total = s, 0.0
        for k in range(horizon):
            s, r, _, _, _ = env.step(acts[k])
            states[i, k + 1], total = s, total + r
        actions[i], returns[i] = acts, total
    return TrajectoryData(torch.as_tensor(states), torch.as_tensor(actions), torch.as_tensor(returns),
                          torch.as_tensor(is_random))


# -- inverse dynamics -------------------------------------------------------------------------------------------
def _states(x, name: str, dim: int | None = None, ndim: int = 3) -> torch.Tensor:
    """A finite float tensor with ``ndim`` axes whose last has ``dim`` entries (a numpy array is converted)."""
    if isinstance(x, np.ndarray):
        x = torch.as_tensor(x, dtype=torch.float64)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating torch tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    want = "(n, H + 1, d)" if ndim == 3 else "(n, d)"
    if x.ndim != ndim or (dim is not None and x.shape[-1] != dim) or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape {want}" + (f" with d = {dim}" if dim is not None else "")
                         + f", got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


class InverseDynamics:
    r"""An inverse-dynamics model :math:`a_t = f(s_t, s_{t+1})`, fitted by least squares to logged transitions.

    .. math::

        f(s, s') = W^\top \phi(s, s'),\qquad \phi(s, s') = (s, s', 1),\qquad
        W = \arg\min_W \sum_{i, t}\|a_{i,t} - W^\top\phi(s_{i,t}, s_{i,t+1})\|^2 + \lambda\|W\|^2 .

    The Decision Diffuser :cite:p:`ajay2023conditional` learns :math:`f` by an MLP; for the linear dynamics of
    :class:`RadialPointMassEnv` the linear model is the right class, and on noiseless transitions with actions inside
    the box it is exact: :math:`f(s, s') = (s' - s)/\Delta` (tested to round-off).  It turns the *states* of a plan
    into the *actions* that realise them (review Fig. 3; book chapter *Planning with diffusion*).

    Parameters
    ----------
    states : torch.Tensor
        Logged states (n, H + 1, d).
    actions : torch.Tensor
        The actions between them (n, H, d_a).
    ridge : float
        :math:`\lambda \ge 0` (default 0: plain least squares).
    """

    def __init__(self, states, actions, *, ridge: float = 0.0):
        s = _states(states, "states").detach().to(torch.float64)
        a = _states(actions, "actions").detach().to(torch.float64)
        if a.shape[:2] != (s.shape[0], s.shape[1] - 1):
            raise ValueError(f"actions must have shape ({s.shape[0]}, {s.shape[1] - 1}, d_a) for states of shape "
                             f"{tuple(s.shape)}, got {tuple(a.shape)}")
        ridge = float(ridge)
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        self.state_dim, self.action_dim = s.shape[-1], a.shape[-1]
        phi = self._features(s[:, :-1].reshape(-1, self.state_dim), s[:, 1:].reshape(-1, self.state_dim))
        A = phi.T @ phi + ridge * torch.eye(phi.shape[1], dtype=torch.float64)
        self.weights = torch.linalg.lstsq(A, phi.T @ a.reshape(-1, self.action_dim)).solution
        self.residual = float((phi @ self.weights - a.reshape(-1, self.action_dim)).abs().max())

    @staticmethod
    def _features(s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        return torch.cat([s, s_next, torch.ones(s.shape[0], 1, dtype=s.dtype)], dim=1)

    def __call__(self, s, s_next) -> torch.Tensor:
        """The actions :math:`f(s, s')` for states and next states (n, d); returns (n, d_a) float64."""
        s = _states(s, "s", self.state_dim, ndim=2).to(torch.float64)
        s_next = _states(s_next, "s_next", self.state_dim, ndim=2).to(torch.float64)
        if s.shape != s_next.shape:
            raise ValueError(f"s and s_next must have the same shape, got {tuple(s.shape)} and {tuple(s_next.shape)}")
        return self._features(s, s_next) @ self.weights

    def on_trajectories(self, states) -> torch.Tensor:
        """The actions between consecutive states of trajectories; returns (n, H, d_a).

        Parameters
        ----------
        states : torch.Tensor
            Trajectories (n, H + 1, d), H >= 1.
        """
        s = _states(states, "states", self.state_dim)
        n, L, d = s.shape
        if L < 2:
            raise ValueError(f"a trajectory needs at least 2 states, got {L}")
        a = self(s[:, :-1].reshape(-1, d), s[:, 1:].reshape(-1, d))
        return a.reshape(n, L - 1, self.action_dim)


# -- the return-conditioned trajectory model ---------------------------------------------------------------------
class TrajectoryScoreMLP(nn.Module):
    r"""A return-conditioned noise network :math:`(x, y, t) \mapsto \varepsilon_\theta(x, y, t)` over trajectories.

    ``x`` is a trajectory of H + 1 states flattened to :math:`D = (H + 1)d` numbers, ``y`` its return.  The input is
    the concatenation of x, the condition features :math:`(y / y_{\rm scale}, 1)`, or :math:`(0, 0)` for the null
    condition :math:`\varnothing`, and a :class:`~diffnotes.networks.SinusoidalEmbedding` of :math:`\log t`; ``depth``
    hidden layers of width ``hidden`` with SiLU activations follow.  A NaN return marks a row as unconditional (the
    dropped label of classifier-free training :cite:p:`ho2022classifier`); the public planners refuse non-finite
    target returns before they get here.  It is the fully connected analogue of the temporal U-Net of
    :cite:t:`janner2022planning` and :cite:t:`ajay2023conditional`.  Wrapped by ``as_score(net, "eps", sde,
    conditional=True)`` it is a conditional score ``score(x, y, t)`` (book chapter *Planning with diffusion*).
    Computations use the parameters' dtype; the output has the dtype of ``x``.

    Parameters
    ----------
    horizon : int
        H, the number of steps (H + 1 states).
    state_dim : int
        d, the dimension of a state.
    hidden, depth : int
        Width and number of the hidden layers.
    embedding_dim : int
        Width of the time embedding (even).
    return_scale : float
        :math:`y_{\rm scale} > 0`, the scale of the returns fed to the network.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`diffnotes.networks.seeded`).
    """

    conditional = True

    def __init__(self, horizon: int, state_dim: int, hidden: int = 128, depth: int = 3, embedding_dim: int = 32,
                 return_scale: float = 1.0, *, generator=None):
        super().__init__()
        _checks.sizes(horizon=horizon, state_dim=state_dim, hidden=hidden, depth=depth)
        self.horizon, self.state_dim = int(horizon), int(state_dim)
        self.dim = (self.horizon + 1) * self.state_dim
        self.return_scale = float(return_scale)
        if not (math.isfinite(self.return_scale) and self.return_scale > 0):
            raise ValueError(f"return_scale must be a finite number > 0, got {return_scale!r}")
        self.embedding = SinusoidalEmbedding(embedding_dim)
        with seeded(generator):
            self.net = _mlp(self.dim + 2 + self.embedding.n_features, int(hidden), int(depth), self.dim)

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The network output, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Noisy flattened trajectories (n, D).
        y : float or torch.Tensor
            Returns, one or one per row; NaN marks the null condition.
        t : float or torch.Tensor
            Times, one or one per row.
        """
        x = _checks.points(x, "x", self.dim)
        p = next(self.parameters())
        y = torch.as_tensor(y, dtype=p.dtype, device=x.device).reshape(-1)
        if y.numel() == 1:
            y = y.expand(x.shape[0])
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must hold one return per row ({x.shape[0]}), got shape {tuple(y.shape)}")
        if bool(torch.isinf(y).any()):
            raise ValueError("returns y must be finite (NaN marks the null condition)")
        keep = ~torch.isnan(y)
        cond = torch.stack([torch.where(keep, y, torch.zeros_like(y)) / self.return_scale, keep.to(p.dtype)], 1)
        xp = x.to(p.dtype)
        tp = _checks.time_rows(t, x.shape[0], xp)
        return self.net(torch.cat([xp, cond, self.embedding(tp)], dim=1)).to(x.dtype)


def _returns(y, n: int, name: str = "returns") -> torch.Tensor:
    """Finite returns: one number for every row, or one per row; an (n,) float64 tensor."""
    try:
        y = torch.as_tensor(y, dtype=torch.float64).detach().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a number or an array of numbers, got {type(y).__name__}") from err
    if y.numel() == 1:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"{name} must be one number or one per row (shape ({n},)), got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} must be finite, got {y[~torch.isfinite(y)][:3].tolist()}")
    return y


def trajectory_dsm_loss(model: Callable, x0: torch.Tensor, returns, t0: float = 1e-3, T: float | None = None, *,
                        p_uncond: float = 0.25, weight="h", sde: VPSDE | None = None, generator=None, t=None,
                        eps=None, reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score matching of the return-conditioned trajectory law, with return dropout (classifier-free).

    .. math::

        L(\theta) = \frac{1}{T - t_0}\int_{t_0}^T h(t)\,\mathbb E_{(\tau_0, y)}\mathbb E_{\beta}\mathbb E_\varepsilon
        \Big\|s_\theta(\tau_t, \beta y, t) + \frac{\varepsilon}{\sqrt{h(t)}}\Big\|^2\mathrm dt,\qquad
        \beta \sim \mathrm{Bernoulli}(1 - p_{\rm uncond}),\ 0\cdot y := \varnothing,

    so that one network learns :math:`\nabla\log p_t(\tau\mid y)` and :math:`\nabla\log p_t(\tau)`; the training loss
    of the Decision Diffuser :cite:p:`ajay2023conditional` (which drops the return with probability 0.25).  It is
    :func:`diffnotes.losses.dsm_loss` applied to the score with each row's (possibly dropped) return fixed; the
    dropout draws come first from ``generator``.  Book chapter *Planning with diffusion*.

    Parameters
    ----------
    model : callable
        The conditional score ``model(x, y, t)`` (NaN y: unconditional).
    x0 : torch.Tensor
        Flattened trajectories (n, D).
    returns : array_like
        Their returns (n,), finite.
    t0, T
        The time interval, as in :func:`diffnotes.losses.dsm_loss`.
    p_uncond : float
        Dropout probability of the return, in [0, 1].
    weight, sde, generator, t, eps, reduction
        As in :func:`diffnotes.losses.dsm_loss` (``weight=clean_data_weight(sde)`` makes it the clean-trajectory
        MSE of Diffuser).
    """
    x0 = _checks.sample(x0)
    y = _returns(returns, x0.shape[0]).to(device=x0.device)
    p = _checks.probability(p_uncond, "p_uncond")
    gen = _checks.generator(generator)
    drop = torch.rand(y.shape, generator=gen, dtype=torch.float64) < p
    y_used = torch.where(drop.to(y.device), torch.full_like(y, math.nan), y)
    return dsm_loss(lambda x, tt: model(x, y_used, tt), x0, t0, T, weight=weight, sde=sde, generator=gen, t=t,
                    eps=eps, reduction=reduction)


def clean_data_weight(sde: VPSDE | None = None) -> Callable:
    r"""The DSM weight :math:`w(t) = h(t)^2/\alpha(t)^2` that turns the loss of a data-predicting network into the
    clean-data MSE :math:`\|\hat x_0(x_t, t) - x_0\|^2`.

    For :math:`s = (\alpha\hat x_0 - x)/h` (the ``"x0"`` parameterisation of :func:`diffnotes.networks.as_score`)
    and :math:`x_t = \alpha x_0 + \sqrt h\,\varepsilon`, :math:`s + \varepsilon/\sqrt h = \alpha(\hat x_0 - x_0)/h`,
    so :math:`w\,\|s + \varepsilon/\sqrt h\|^2 = \|\hat x_0 - x_0\|^2`: the loss Diffuser trains with
    :cite:p:`janner2022planning` (it predicts clean trajectories).  Book chapter *Planning with diffusion*.

    Parameters
    ----------
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """
    sde = _checks.sde_or_default(sde)

    def weight(t: torch.Tensor) -> torch.Tensor:
        return sde.h(t) ** 2 / sde.alpha(t) ** 2

    return weight


def return_guidance(cond_score: Callable, target, eta=1.0) -> Callable:
    r"""Classifier-free guidance to a target return: :math:`(1 + \eta)\,s(x, y^\star, t) - \eta\,s(x, \varnothing, t)`.

    The continuous-condition form of :func:`diffnotes.guidance.classifier_free_guidance` (review Section 5.1): the
    condition is a return :math:`y^\star` instead of a class id, and the null condition is a NaN return (see
    :class:`TrajectoryScoreMLP`).  The Decision Diffuser :cite:p:`ajay2023conditional` writes the guidance weight as
    :math:`\omega = 1 + \eta`.  Book chapter *Planning with diffusion*.

    Parameters
    ----------
    cond_score : callable
        ``cond_score(x, y, t)``, accepting NaN returns as the null condition.
    target : float or array_like
        The target return(s): one, or one per row; finite (``ValueError`` otherwise).
    eta : float or callable
        Strength :math:`\eta \ge 0` (0: plain conditioning), or a function of the (n,) times.

    Returns
    -------
    callable
        The guided score ``score(x, t)``.
    """
    if not callable(cond_score):
        raise TypeError("cond_score must be a callable cond_score(x, y, t)")
    eta = _check_strength(eta)
    target = torch.as_tensor(target, dtype=torch.float64) if not isinstance(target, torch.Tensor) else target
    _returns(target, max(target.numel(), 1), "target")

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        x = _checks.points(x, "x")
        n = x.shape[0]
        t_rows = _checks.time_rows(t, n, x)
        y = _returns(target, n, "target").to(dtype=x.dtype, device=x.device)
        cond = cond_score(x, y, t_rows)
        if not callable(eta) and eta == 0:
            return cond
        w = _strength_column(eta, t_rows)
        return (1 + w) * cond - w * cond_score(x, torch.full_like(y, math.nan), t_rows)

    guided.eta, guided.target = eta, target
    return guided


class _Planner:
    """What every planner shares: the inverse-dynamics model that turns planned states into actions."""

    inverse_dynamics: InverseDynamics
    horizon: int
    state_dim: int

    def _fixed(self, start, goal) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The checked ``start`` (n, d) and ``goal`` (n, d) or None, and the states they fix in a plan: values
        (n, H + 1, d) and mask (H + 1, d) (the first state, and the last with a goal)."""
        start = _states(start, "start", self.state_dim, ndim=2).detach().to(torch.float64)
        n, d = start.shape
        y = torch.zeros(n, self.horizon + 1, d, dtype=torch.float64)
        mask = torch.zeros(self.horizon + 1, d, dtype=torch.bool)
        y[:, 0], mask[0] = start, True
        if goal is not None:
            goal = _states(goal, "goal", d, ndim=2).detach().to(torch.float64)
            if goal.shape[0] != n:
                raise ValueError(f"goal must have one row per start ({n}), got {goal.shape[0]}")
            y[:, -1], mask[-1] = goal, True
        return start, goal, y, mask

    def actions(self, plans) -> torch.Tensor:
        """The inverse-dynamics actions (n, H, d_a) of the plans.

        Parameters
        ----------
        plans : torch.Tensor
            Plans (n, H + 1, d).
        """
        return self.inverse_dynamics.on_trajectories(plans)


class DecisionDiffuser(_Planner):
    r"""A planner that samples trajectories from a learned :math:`P(\tau \mid y)` and acts by inverse dynamics.

    :meth:`plan` draws plans of H + 1 states with the current state (and, for Diffuser-style goal reaching, the goal
    state) fixed by inpainting: :func:`diffnotes.inpainting.replacement` (the conditioning of the Decision Diffuser
    :cite:p:`ajay2023conditional` and of Diffuser :cite:p:`janner2022planning`) or :func:`diffnotes.inpainting.repaint`
    :cite:p:`lugmayr2022repaint`, on the score guided to a target return by :func:`return_guidance` (or the
    unconditional score when no target is given).  ``actions(plans)`` turns the plans into actions with the
    :class:`InverseDynamics` model.  A plan is Tweedie's estimate :math:`(x + h\,s(x, t_0))/\alpha(t_0)` at the
    last time of the grid, with the fixed states put back exactly.  The network sees trajectories divided by
    ``scale``.  Book chapter *Planning with
    diffusion*.

    Parameters
    ----------
    score : callable
        The conditional score ``score(x, y, t)`` on scaled, flattened trajectories.
    inverse_dynamics : InverseDynamics
        The model :math:`a_t = f(s_t, s_{t+1})`.
    horizon, state_dim : int
        H and d.
    scale : float
        Trajectories are divided by it before they reach the network.
    sde : VPSDE, optional
        The forward process the score was trained with.
    t0 : float
        Early-stopping time of the sampler.
    """

    def __init__(self, score: Callable, inverse_dynamics: InverseDynamics, horizon: int, state_dim: int, *,
                 scale: float = 1.0, sde: VPSDE | None = None, t0: float = 1e-3):
        if not callable(score):
            raise TypeError("score must be a callable score(x, y, t)")
        if not isinstance(inverse_dynamics, InverseDynamics):
            raise TypeError(f"inverse_dynamics must be an InverseDynamics, got {type(inverse_dynamics).__name__}")
        _checks.sizes(horizon=horizon, state_dim=state_dim)
        self.score, self.inverse_dynamics = score, inverse_dynamics
        self.horizon, self.state_dim = int(horizon), int(state_dim)
        self.dim = (self.horizon + 1) * self.state_dim
        self.scale = float(scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.sde = _checks.sde_or_default(sde)
        self.t0 = float(t0)

    def plan(self, start, target=None, *, goal=None, eta=1.0, n_steps: int = 50, method: str = "replacement",
             jump_length: int = 5, n_resample: int = 5, generator=None) -> torch.Tensor:
        r"""Sample plans (n, H + 1, d) that start at ``start`` (n, d), guided to ``target`` and/or ending at ``goal``.

        Parameters
        ----------
        start : torch.Tensor
            The current states, (n, d); plan i starts exactly there.
        target : float or array_like, optional
            The target return(s), finite; None samples the unconditional law (Diffuser).
        goal : torch.Tensor, optional
            Goal states (n, d): the last state of each plan is fixed there too.
        eta : float
            Guidance strength of :func:`return_guidance` (ignored without a target).
        n_steps : int
            Steps of the reverse grid (log-SNR spacing from T to ``t0``).
        method : {"replacement", "repaint"}
            The inpainting sampler.
        jump_length, n_resample : int
            RePaint's block length and number of passes.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the sampler's draws.
        """
        start, goal, y, mask = self._fixed(start, goal)
        n, d = start.shape
        if target is None:
            score = functools.partial(_unconditional, self.score)
        else:
            score = return_guidance(self.score, _returns(target, n, "target"), eta)
        times = time_grid(self.sde, self.t0, _checks.positive_int(n_steps, "n_steps"), spacing="logsnr")
        y, mask = y.reshape(n, -1) / self.scale, mask.reshape(-1)
        if method == "replacement":
            x = replacement(score, y, mask, times, sde=self.sde, generator=generator)
        elif method == "repaint":
            x = repaint(score, y, mask, times, jump_length=jump_length, n_resample=n_resample, sde=self.sde,
                        generator=generator)
        else:
            raise ValueError(f"method must be 'replacement' or 'repaint', got {method!r}")
        with torch.no_grad():  # Tweedie's estimate at t0, the known states kept
            t_last = float(times[-1])
            x0 = self.sde.denoise(x, score(x, torch.full((n,), t_last, dtype=x.dtype)), t_last)
        plans = (torch.where(mask, y, x0) * self.scale).reshape(n, self.horizon + 1, d)
        plans[:, 0] = start  # exactly, not up to the round-off of the scaling
        if goal is not None:
            plans[:, -1] = goal
        return plans



def _unconditional(cond_score, x, t):
    return cond_score(x, torch.full((x.shape[0],), math.nan, dtype=x.dtype, device=x.device), t)


def fit_decision_diffuser(data: TrajectoryData, *, sde: VPSDE | None = None, t0: float = 1e-3,
                          p_uncond: float = 0.25, prediction: str = "x0", steps: int = 2000, batch_size: int = 256,
                          lr: float = 2e-3, hidden: int = 128, depth: int = 3, ema: float | None = 0.99,
                          lr_schedule: str | None = "cosine", normalization: str = "max", generator=None,
                          progress: bool = False) -> DecisionDiffuser:
    r"""Train a :class:`TrajectoryScoreMLP` by :func:`trajectory_dsm_loss` and fit the :class:`InverseDynamics`.

    The trajectories are flattened and divided by one number, ``scale``: the largest absolute state of the data
    (``normalization="max"``), or the root mean square of all their coordinates (``"rms"``), so that the network
    sees data of unit second moment, the scale the noise schedules of :mod:`diffnotes.sde` are made for.  One number
    for every coordinate keeps the geometry of a trajectory (its direction, the proportions of its steps).  The
    returns are fed to the network divided by their largest absolute value.  Training is
    :func:`diffnotes.training.train` (Adam, EMA of the weights, whose average is the planner's network when ``ema``
    is given).  Book chapter *Planning with diffusion*; :cite:p:`ajay2023conditional`.

    Parameters
    ----------
    data : TrajectoryData
        The offline episodes.
    sde : VPSDE, optional
        Forward process (default :class:`~diffnotes.sde.CosineVP`, whose uniform training times reach the low noise
        levels at which a plan's fine structure, and hence its actions, are resolved).
    t0 : float
        Early-stopping time of the loss and of the sampler.
    p_uncond : float
        Return-dropout probability.
    prediction : {"x0", "eps"}
        What the network predicts: clean trajectories, trained by the clean-data MSE (:func:`clean_data_weight`),
        as in Diffuser :cite:p:`janner2022planning` (default), or the noise, trained by the usual :math:`w = h`.
    steps, batch_size, lr, ema, lr_schedule
        As in :func:`diffnotes.training.train`.
    normalization : {"max", "rms"}
        How the trajectories are scaled for the network (see above).
    hidden, depth
        Of the network.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights and of the training draws.
    progress : bool
        Show a progress bar.
    """
    if not isinstance(data, TrajectoryData):
        raise TypeError(f"data must be a TrajectoryData (see offline_trajectories), got {type(data).__name__}")
    sde = _checks.sde_or_default(sde) if sde is not None else CosineVP()
    gen = _checks.generator(generator)
    if gen is None:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    states = _states(data.states, "data.states").to(torch.float64)
    n, L, d = states.shape
    returns = _returns(data.returns, n, "data.returns")
    if normalization == "max":
        scale = float(states.abs().max())
    elif normalization == "rms":
        scale = float(states.pow(2).mean().sqrt())
    else:
        raise ValueError(f"normalization must be 'max' or 'rms', got {normalization!r}")
    net = TrajectoryScoreMLP(L - 1, d, hidden, depth, return_scale=float(returns.abs().max().clamp_min(1e-12)),
                             generator=gen)
    if prediction not in ("x0", "eps"):
        raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
    model = as_score(net, prediction, sde, conditional=True)
    weight = clean_data_weight(sde) if prediction == "x0" else "h"
    loss = functools.partial(trajectory_dsm_loss, t0=t0, p_uncond=p_uncond, weight=weight, sde=sde)
    result = train(model, loss, ((states.reshape(n, -1) / scale).float(), returns.float()), steps=steps,
                   batch_size=batch_size, lr=lr, generator=gen, ema=ema, progress=progress, lr_schedule=lr_schedule)
    final = result.ema_model if result.ema_model is not None else result.model
    final.requires_grad_(False)
    planner = DecisionDiffuser(final, InverseDynamics(data.states, data.actions), L - 1, d, scale=scale, sde=sde,
                               t0=t0)
    planner.losses = result.losses
    return planner


# -- the pipeline in the environment ----------------------------------------------------------------------------
def reset_states(n_episodes: int, *, seed: int = 0, max_steps: int = 16) -> torch.Tensor:
    """The start states (n, 2) of :class:`RadialPointMassEnv` episodes reset with seeds ``seed + i`` (float64).

    Parameters
    ----------
    n_episodes : int
        Number of episodes.
    seed : int
        Episode i is reset with seed ``seed + i``.
    max_steps : int
        Episode length of the environment.
    """
    n_episodes = _checks.positive_int(n_episodes, "n_episodes")
    seed = _checks.positive_int(seed, "seed", minimum=0)
    env = RadialPointMassEnv(max_steps=max_steps)
    return torch.as_tensor(np.stack([env.reset(seed=seed + i)[0] for i in range(n_episodes)]))


@dataclass
class Execution:
    """Outcome of :func:`execute`.

    Attributes
    ----------
    states : numpy.ndarray
        The visited states, (n, H + 1, 2).
    returns : numpy.ndarray
        The returns, (n,).
    """

    states: np.ndarray
    returns: np.ndarray


def execute(actions, *, seed: int = 0) -> Execution:
    r"""Play action sequences open loop in :class:`RadialPointMassEnv` episodes reset with seeds ``seed + i``.

    Episode i starts where :func:`reset_states` (``seed=seed``) says and plays ``actions[i]``, H steps (the
    environment clips each action to the box); its return is the sum of the rewards, :math:`\|s_H\| - \|s_0\|`.
    Open-loop execution is exact here because the dynamics are deterministic; the Decision Diffuser replans at every
    step on real systems (book chapter *Planning with diffusion*).

    Parameters
    ----------
    actions : torch.Tensor or numpy.ndarray
        Actions (n, H, 2), finite.
    seed : int
        Episode i is reset with seed ``seed + i``.
    """
    a = _states(actions, "actions")
    if a.shape[-1] != 2:
        raise ValueError(f"actions must have shape (n, H, 2), got {tuple(a.shape)}")
    a = a.detach().to(torch.float64).cpu().numpy()
    n, H, _ = a.shape
    seed = _checks.positive_int(seed, "seed", minimum=0)
    env = RadialPointMassEnv(max_steps=H)
    states, returns = np.empty((n, H + 1, 2)), np.zeros(n)
    for i in range(n):
        states[i, 0], _ = env.reset(seed=seed + i)
        for k in range(H):
            states[i, k + 1], r, _, _, _ = env.step(a[i, k])
            returns[i] += r
    return Execution(states, returns)


@dataclass
class PlanResult:
    """Every stage of :func:`plan_and_execute` (review Fig. 3), as numpy arrays.

    Attributes
    ----------
    target : numpy.ndarray
        The target returns, (n,).
    start : numpy.ndarray
        The start states, (n, 2).
    plans : numpy.ndarray
        The plans, (n, H + 1, 2).
    actions : numpy.ndarray
        The inverse-dynamics actions, (n, H, 2).
    executed : numpy.ndarray
        The executed states, (n, H + 1, 2).
    planned_returns : numpy.ndarray
        :math:`\\|\\hat s_H\\| - \\|s_0\\|` of the plans, (n,).
    returns : numpy.ndarray
        The executed returns, (n,).
    """

    target: np.ndarray
    start: np.ndarray
    plans: np.ndarray
    actions: np.ndarray
    executed: np.ndarray
    planned_returns: np.ndarray
    returns: np.ndarray


def plan_and_execute(planner, target, n_episodes: int, *, seed: int = 0, generator=None, **plan_kw) -> PlanResult:
    r"""The planning pipeline: reset, plan to a target return, act by inverse dynamics, execute, score.

    ``planner`` is a :class:`DecisionDiffuser` or a :class:`GaussianTrajectoryPlanner`; ``target`` one return or
    one per episode; further keywords go to ``planner.plan``.  Book chapter *Planning with diffusion*.

    Parameters
    ----------
    planner : DecisionDiffuser or GaussianTrajectoryPlanner
        Anything with ``plan(start, target, generator=..., **kw)`` and ``actions(plans)``.
    target : float or array_like
        Target return(s), finite.
    n_episodes : int
        Number of episodes (seeds ``seed + i``).
    seed : int
        First episode seed.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the planner's draws.
    """
    n_episodes = _checks.positive_int(n_episodes, "n_episodes")
    target = _returns(target, n_episodes, "target")
    start = reset_states(n_episodes, seed=seed, max_steps=planner.horizon)
    plans = planner.plan(start, target, generator=generator, **plan_kw)
    actions = planner.actions(plans)
    run = execute(actions, seed=seed)
    planned = (plans[:, -1].norm(dim=1) - plans[:, 0].norm(dim=1)).numpy()
    return PlanResult(target.numpy(), start.numpy(), plans.numpy(), actions.numpy(), run.states, planned,
                      run.returns)


# -- the Gaussian (least-squares) baseline ----------------------------------------------------------------------
class GaussianTrajectoryPlanner(_Planner):
    r"""The Gaussian trajectory model :math:`\tau \mid y \sim \mathsf N(\mu(y), \Sigma)` fitted by least squares.

    The mean is polynomial in the return, :math:`\mu(y) = W^\top(1, y, \dots, y^p)`, with :math:`W` minimising
    :math:`\sum_i\|\tau_i - W^\top\phi(y_i)\|^2`, and :math:`\Sigma` is the covariance of the residuals.  A plan
    conditions this Gaussian on the start (and goal) states in closed form, by
    :func:`diffnotes.inpainting.gaussian_posterior`: its mean (``mode="mean"``) or a draw (``mode="sample"``).  It
    is the regression (MSE) counterpart of :class:`DecisionDiffuser` with the same inputs.  For the ring of modes of
    :class:`RadialPointMassEnv` the conditional mean of the trajectories of any return stays near the origin: the
    average of trajectories going in every direction (book chapter *Planning with diffusion*).

    Parameters
    ----------
    data : TrajectoryData
        The offline episodes.
    degree : int
        p, the degree of the polynomial in the return (>= 0).
    mode : {"mean", "sample"}
        Whether a plan is the conditional mean or a draw.
    """

    def __init__(self, data: TrajectoryData, *, degree: int = 2, mode: str = "mean"):
        if not isinstance(data, TrajectoryData):
            raise TypeError(f"data must be a TrajectoryData, got {type(data).__name__}")
        if mode not in ("mean", "sample"):
            raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
        self.degree = _checks.positive_int(degree, "degree", minimum=0)
        states = _states(data.states, "data.states").to(torch.float64)
        n, L, d = states.shape
        self.horizon, self.state_dim, self.mode = L - 1, d, mode
        self.inverse_dynamics = InverseDynamics(data.states, data.actions)
        tau = states.reshape(n, -1)
        phi = self.features(_returns(data.returns, n, "data.returns"))
        self.weights = torch.linalg.lstsq(phi, tau).solution
        resid = tau - phi @ self.weights
        self.cov = resid.T @ resid / n + 1e-10 * torch.eye(tau.shape[1], dtype=torch.float64)

    def features(self, y: torch.Tensor) -> torch.Tensor:
        r"""The features :math:`(1, y, \dots, y^p)`, shape (n, p + 1).

        Parameters
        ----------
        y : torch.Tensor
            Returns, (n,).
        """
        return torch.stack([y**k for k in range(self.degree + 1)], dim=1)

    def plan(self, start, target=None, *, goal=None, generator=None) -> torch.Tensor:
        """Plans (n, H + 1, d): the conditional mean, or a draw, of the Gaussian given the fixed states.

        Parameters
        ----------
        start : torch.Tensor
            The start states (n, d).
        target : float or array_like, optional
            Target return(s), finite; None only for ``degree=0`` (an unconditional model).
        goal : torch.Tensor, optional
            Goal states (n, d), fixed as the last state.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the draws (``mode="sample"``).
        """
        start, goal, y, mask = self._fixed(start, goal)
        n, d = start.shape
        if target is None:
            mean = (self.features(torch.zeros(1, dtype=torch.float64)) @ self.weights).expand(n, -1)
            if self.degree > 0:
                raise ValueError("pass a target return (or fit with degree=0 for an unconditional model)")
        else:
            mean = self.features(_returns(target, n, "target")) @ self.weights
        y, mask = y.reshape(n, -1), mask.reshape(-1)
        # the posterior of a Gaussian with a per-row mean: shift the data by the row's mean, condition at mean 0
        m, C = gaussian_posterior(torch.zeros(y.shape[1], dtype=torch.float64), self.cov, mask, y - mean)
        m = m + mean[:, ~mask]
        if self.mode == "sample":
            L = torch.linalg.cholesky(C + 1e-12 * torch.eye(C.shape[0], dtype=torch.float64))
            z = torch.randn(m.shape, generator=_checks.generator(generator), dtype=torch.float64)
            m = m + z @ L.T
        x = y.clone()
        x[:, ~mask] = m
        return x.reshape(n, self.horizon + 1, d)

