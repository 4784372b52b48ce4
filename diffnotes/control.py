r"""Control and reinforcement learning with diffusion models: diffusion policies and Diffusion-QL.

The review (Section 3.2; book chapter *Control and reinforcement learning*) names two uses of conditional diffusion in
control: a **policy** :math:`P(a \mid y = \text{state})` learned from expert pairs :math:`(y_i, a_i)` by conditional
score matching (Diffusion Policy, :cite:t:`chi2023diffusion`), and **Diffusion-QL** :cite:p:`wang2023diffusion`,
which adds a Q-value term to the policy's loss to learn better-than-behaviour actions from offline data.  This module
holds the pieces of a small but complete version of both:

* :class:`PointMassObstacleEnv`, a ``gymnasium.Env`` (checked by Gymnasium's own environment checker in the
  tests): a 2-D point mass must reach a goal behind a round obstacle;
* :func:`expert_action` and :func:`expert_dataset`, scripted experts that pass the obstacle on the left or on the
  right (chosen at random per episode): the expert's action law at the start is **bimodal by construction**;
* :class:`ObservationScoreMLP`, a conditional noise-prediction network :math:`\varepsilon_\theta(a, s, t)` over
  actions or action chunks given an observation vector, :func:`policy_dsm_loss` (denoising score matching of the
  conditional law, through :func:`diffnotes.losses.dsm_loss`), :func:`fit_diffusion_policy` (trained by
  :func:`diffnotes.training.train`) and :class:`DiffusionPolicy` (sampled by :func:`diffnotes.samplers.ddpm`);
* :class:`GaussianPolicy`, the baseline: least-squares (MSE) regression of the action chunk on radial-basis features
  of the observation, with the residual covariance: it predicts the conditional *mean*, which averages the two modes;
* :func:`rollout`, closed-loop evaluation in the environment (success and collision rates over seeded episodes) with
  receding-horizon execution of action chunks;
* :class:`BimodalBandit`, :func:`ddpm_chain` (a differentiable reverse chain, optionally clipped to the action
  box), :func:`diffusion_ql_loss`, :func:`fit_diffusion_ql` and :class:`DiffusionQLPolicy`: Diffusion-QL on a
  contextual bandit with a two-mode behaviour policy inside the action box, its exact Q and the exact law of its
  behaviour (for the comparison of a cloned policy with it).

Conventions are the package's (``diffnotes``): the conditional score has the form ``score(a, s, t)``; every
function that draws takes ``generator=``.
"""

from __future__ import annotations

import copy
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
from .losses import dsm_loss
from .networks import SinusoidalEmbedding, as_score, seeded
from .samplers import _check_times, _ddpm_update, _Loop, ddpm, time_grid
from .sde import VPSDE, LinearVP
from .training import train

__all__ = [
    "PointMassObstacleEnv",
    "expert_action",
    "expert_dataset",
    "ExpertData",
    "ObservationScoreMLP",
    "policy_dsm_loss",
    "DiffusionPolicy",
    "fit_diffusion_policy",
    "GaussianPolicy",
    "rollout",
    "RolloutResult",
    "binomial_se",
    "BimodalBandit",
    "ddpm_chain",
    "diffusion_ql_loss",
    "DiffusionQLPolicy",
    "fit_diffusion_ql",
]


def _finite_array(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 numpy array of exactly ``shape`` with finite entries, or a clear error naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers of shape {shape}, got {type(value).__name__}") from err
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr


# -- the environment -------------------------------------------------------------------------------------------
class PointMassObstacleEnv(gym.Env):
    r"""A 2-D point mass that must reach a goal behind a round obstacle (Gymnasium API).

    The state is the position :math:`p \in [-1.5, 1.5] \times [-0.5, 2.5]`, observed exactly (float64, shape (2,)).
    An action :math:`a \in [-1, 1]^2` is a velocity; the dynamics are :math:`p_{k+1} = \Pi(p_k + \Delta\,
    \mathrm{clip}(a_k))` with :math:`\Delta = 0.1` and :math:`\Pi` the projection onto the box (walls).  An episode
    starts at :math:`p_0 \sim \mathsf U([-0.05, 0.05]^2)` (drawn from the environment's ``np_random``, seeded by
    ``reset(seed=...)``); the obstacle is the disc of radius 0.35 around :math:`(0, 1)`, the goal the disc of radius
    0.15 around :math:`(0, 2)`.  The episode *terminates* with reward +1 when the goal is reached and with reward
    -1 (``info["collision"] = True``) when the segment :math:`[p_k, p_{k+1}]` enters the obstacle; it is *truncated*
    after ``max_steps`` steps; all other steps have reward 0.  The straight path from start to goal goes through the
    obstacle, and the two ways around it are mirror images: the setting of the bimodal-expert example that motivates
    diffusion policies :cite:p:`chi2023diffusion` (review Section 3.2; book chapter *Control and reinforcement
    learning*).

    Parameters
    ----------
    max_steps : int
        Episode length before truncation (default 60; an expert needs about 25 steps).
    """

    metadata = {"render_modes": []}
    dt = 0.1
    obstacle_centre = (0.0, 1.0)
    obstacle_radius = 0.35
    goal = (0.0, 2.0)
    goal_radius = 0.15
    low = (-1.5, -0.5)
    high = (1.5, 2.5)
    start_half_width = 0.05

    def __init__(self, max_steps: int = 60):
        super().__init__()
        self.max_steps = _checks.positive_int(max_steps, "max_steps")
        self.observation_space = spaces.Box(np.array(self.low), np.array(self.high), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)
        self._p = np.zeros(2)
        self._k = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode at a uniform point of the start square; returns ``(observation, info)``.

        Parameters
        ----------
        seed : int, optional
            Seeds the environment's ``np_random`` (Gymnasium's convention; None keeps its current state).
        options : dict, optional
            Unused (Gymnasium's signature).
        """
        super().reset(seed=seed)
        w = self.start_half_width
        self._p = self.np_random.uniform(-w, w, size=2)
        self._k = 0
        return self._p.copy(), {"collision": False, "success": False}

    @classmethod
    def segment_hits_obstacle(cls, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Whether the segment from ``p`` to ``q`` (arrays (..., 2)) meets the obstacle disc (exact geometry).

        Parameters
        ----------
        p, q : numpy.ndarray
            The segments' end points, arrays of shape (..., 2).

        Returns
        -------
        numpy.ndarray
            A boolean array of shape (...).
        """
        c = np.asarray(cls.obstacle_centre)
        d = q - p
        dd = np.sum(d * d, axis=-1)
        u = np.where(dd > 0, np.sum((c - p) * d, axis=-1) / np.where(dd > 0, dd, 1.0), 0.0)
        closest = p + np.clip(u, 0.0, 1.0)[..., None] * d
        return np.sum((closest - c) ** 2, axis=-1) < cls.obstacle_radius**2

    def step(self, action):
        """Move by ``dt * clip(action)``; returns ``(obs, reward, terminated, truncated, info)``.

        Raises ``ValueError`` for an action that is not of shape (2,) or not finite.

        Parameters
        ----------
        action : array_like
            The velocity, shape (2,), finite; clipped to [-1, 1]^2.
        """
        a = _finite_array(action, "action", (2,))
        p_next = np.clip(self._p + self.dt * np.clip(a, -1.0, 1.0), self.low, self.high)
        collision = bool(self.segment_hits_obstacle(self._p, p_next))
        self._p = p_next
        self._k += 1
        success = (not collision) and float(np.hypot(*(p_next - np.asarray(self.goal)))) < self.goal_radius
        reward = 1.0 if success else (-1.0 if collision else 0.0)
        terminated = success or collision
        truncated = (not terminated) and self._k >= self.max_steps
        return self._p.copy(), reward, terminated, truncated, {"collision": collision, "success": success}


def expert_action(obs, side, noise=None) -> np.ndarray:
    r"""The scripted expert's action at observation(s) ``obs`` (n, 2) for sides ``side`` (n,) in {-1, +1}.

    Below the height 0.9 the expert heads at unit speed for the waypoint :math:`(0.6\,\sigma, 1)` beside the obstacle
    (:math:`\sigma = -1`: left, +1: right), then for the goal: :math:`a = (w - p)/\|w - p\|` plus ``noise`` (n, 2),
    clipped to :math:`[-1, 1]^2`.  From every start point of :class:`PointMassObstacleEnv` and with noise bounded by
    0.1 per coordinate the first action's horizontal component has the sign of :math:`\sigma` and modulus at least
    :math:`0.55/\sqrt{0.65^2 + 1.05^2} - 0.1 > 0.3`: the action law at the start is bimodal with no mass near its
    mean.  Book chapter *Control and reinforcement learning*.

    Parameters
    ----------
    obs : array_like
        Positions, shape (n, 2).
    side : array_like
        The side of each row, -1 or +1, shape (n,).
    noise : array_like, optional
        Added to the direction, shape (n, 2).
    """
    p = np.asarray(obs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"obs must have shape (n, 2), got {p.shape}")
    sigma = np.asarray(side, dtype=np.float64)
    if sigma.shape != (p.shape[0],) or not np.all(np.abs(sigma) == 1):
        raise ValueError(f"side must hold -1 or +1 for each of the {p.shape[0]} rows")
    waypoint = np.stack([0.6 * sigma, np.ones_like(sigma)], axis=1)
    target = np.where((p[:, 1] < 0.9)[:, None], waypoint, np.asarray(PointMassObstacleEnv.goal))
    d = target - p
    a = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    if noise is not None:
        a = a + np.asarray(noise, dtype=np.float64)
    return np.clip(a, -1.0, 1.0)


@dataclass
class ExpertData:
    """Expert pairs: observations (N, 2), action chunks (N, 2K), the side of each pair's episode (N,), the step
    of each pair within its episode (N,), the chunk length K, and the episodes' position paths (a list of (L, 2)
    arrays).

    Parameters
    ----------
    obs : torch.Tensor
        Observations, shape (N, 2).
    actions : torch.Tensor
        Action chunks, shape (N, 2K).
    side : torch.Tensor
        The side (-1 or +1) of each pair's episode, shape (N,).
    step : torch.Tensor
        The step of each pair within its episode, shape (N,).
    chunk : int
        The chunk length K.
    paths : list of numpy.ndarray
        The episodes' position paths, each of shape (L, 2).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    side: torch.Tensor
    step: torch.Tensor
    chunk: int
    paths: list


def expert_dataset(n_episodes: int, chunk: int = 8, *, action_noise: float = 0.1, max_steps: int = 60,
                   generator=None) -> ExpertData:
    r"""Demonstrations of the scripted bimodal expert, rolled out in :class:`PointMassObstacleEnv`.

    Each episode draws its side :math:`\sigma \in \{-1, +1\}` with probability 1/2 and runs :func:`expert_action`
    with noise :math:`\mathsf U[-\texttt{action\_noise}, \texttt{action\_noise}]^2` until it terminates.  Every
    visited observation :math:`s_k` is paired with the *action chunk* :math:`(a_k, \dots, a_{k+K-1})` (flattened to
    length 2K; past the episode's end the last action is repeated), the training pairs of Diffusion Policy
    :cite:p:`chi2023diffusion`, whose policies predict a short sequence of actions and execute it open loop.

    Parameters
    ----------
    n_episodes : int
        Number of demonstrations.
    chunk : int
        Chunk length K >= 1 (K = 1: single actions).
    action_noise : float
        Half-width of the uniform action noise, in [0, 0.1] (above 0.1 the bimodality guarantee of
        :func:`expert_action` is lost).
    max_steps : int
        Episode length limit of the environment.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the sides, the environment seeds and the action noise.
    """
    n_episodes = _checks.positive_int(n_episodes, "n_episodes")
    chunk = _checks.positive_int(chunk, "chunk")
    noise = float(action_noise)
    if not (math.isfinite(noise) and 0 <= noise <= 0.1):
        raise ValueError(f"action_noise must lie in [0, 0.1], got {action_noise!r}")
    gen = _checks.generator(generator)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
    env = PointMassObstacleEnv(max_steps=max_steps)
    obs_all, act_all, side_all, step_all, paths = [], [], [], [], []
    for _ in range(n_episodes):
        sigma = 1.0 if rng.random() < 0.5 else -1.0
        p, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
        obs, acts, path = [], [], [p]
        done = False
        while not done:
            a = expert_action(p[None], [sigma], rng.uniform(-noise, noise, size=(1, 2)))[0]
            obs.append(p)
            acts.append(a)
            p, _, terminated, truncated, _ = env.step(a)
            path.append(p)
            done = terminated or truncated
        acts = np.asarray(acts)
        L = len(obs)
        idx = np.minimum(np.arange(L)[:, None] + np.arange(chunk)[None, :], L - 1)
        obs_all.append(np.asarray(obs))
        act_all.append(acts[idx].reshape(L, 2 * chunk))
        side_all.append(np.full(L, sigma))
        step_all.append(np.arange(L))
        paths.append(np.asarray(path))
    return ExpertData(torch.as_tensor(np.concatenate(obs_all)), torch.as_tensor(np.concatenate(act_all)),
                      torch.as_tensor(np.concatenate(side_all)), torch.as_tensor(np.concatenate(step_all)),
                      chunk, paths)


# -- the diffusion policy --------------------------------------------------------------------------------------
def _pairs(obs, actions) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked (observation, action) pairs: ``(obs, actions)``, one observation row per action row."""
    actions = _checks.sample(actions, "actions")
    obs = _checks.points(obs, "obs", numpy=True)
    if obs.shape[0] != actions.shape[0]:
        raise ValueError(f"obs must have one row per action ({actions.shape[0]}), got {obs.shape[0]}")
    return obs, actions


def _training_generator(generator) -> torch.Generator:
    """The generator of a training run: the caller's, or (for None) one seeded once from torch's global stream."""
    gen = _checks.generator(generator)
    if gen is None:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    return gen


class ObservationScoreMLP(nn.Module):
    r"""A conditional network :math:`(a, s, t) \mapsto \varepsilon_\theta(a, s, t)` over actions given an observation.

    The input is the concatenation of the (noisy) action or action chunk :math:`a \in \mathbb R^{d_a}`, the
    observation vector :math:`s \in \mathbb R^{d_s}` and a :class:`~diffnotes.networks.SinusoidalEmbedding` of
    :math:`\log t`; ``depth`` hidden layers of width ``hidden`` with SiLU activations follow.  It is the small,
    fully connected analogue of the observation-conditioned noise network of Diffusion Policy
    :cite:p:`chi2023diffusion` (which uses a 1-D temporal U-Net with FiLM conditioning).  Wrapped by
    ``as_score(net, "eps", sde, conditional=True)`` it is a conditional score ``score(a, s, t)`` (review Sections 3.2
    and 5.1; book chapter *Control and reinforcement learning*).  Computations use the parameters' dtype; the output
    has the dtype of ``a``.

    Parameters
    ----------
    action_dim : int
        Dimension :math:`d_a` of the action (chunk).
    obs_dim : int
        Dimension :math:`d_s` of the observation.
    hidden, depth : int
        Width and number of the hidden layers.
    embedding_dim : int
        Width of the time embedding (even).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`diffnotes.networks.seeded`).
    """

    conditional = True

    def __init__(self, action_dim: int, obs_dim: int, hidden: int = 128, depth: int = 3, embedding_dim: int = 32,
                 *, generator=None):
        super().__init__()
        _checks.sizes(action_dim=action_dim, obs_dim=obs_dim, hidden=hidden, depth=depth)
        self.action_dim, self.obs_dim = int(action_dim), int(obs_dim)
        self.embedding = SinusoidalEmbedding(embedding_dim)
        layers: list[nn.Module] = []
        width = self.action_dim + self.obs_dim + self.embedding.n_features
        with seeded(generator):
            for _ in range(int(depth)):
                layers += [nn.Linear(width, int(hidden)), nn.SiLU()]
                width = int(hidden)
            layers.append(nn.Linear(width, self.action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor, s: torch.Tensor, t) -> torch.Tensor:
        """The network output for actions a (n, d_a), observations s (n, d_s) and times t, shaped like a.

        Parameters
        ----------
        a : torch.Tensor
            Noisy actions (or chunks), shape (n, d_a).
        s : torch.Tensor
            Observations, shape (n, d_s), one per action.
        t : float or torch.Tensor
            One time, or one per row.
        """
        a = _checks.points(a, "a", self.action_dim)
        s = _checks.points(s, "s", self.obs_dim)
        if s.shape[0] != a.shape[0]:
            raise ValueError(f"s must have one row per action ({a.shape[0]}), got {s.shape[0]}")
        p = next(self.parameters())
        ap, sp = a.to(p.dtype), s.to(p.dtype)
        tp = _checks.time_rows(t, a.shape[0], ap)
        return self.net(torch.cat([ap, sp, self.embedding(tp)], dim=1)).to(a.dtype)


def policy_dsm_loss(model: Callable, actions: torch.Tensor, obs: torch.Tensor, t0: float = 1e-3,
                    T: float | None = None, *, sde: VPSDE | None = None, generator=None, t=None, eps=None,
                    reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score matching of the conditional action law :math:`P(a \mid s)` from expert pairs.

    .. math::

        L(\theta) = \frac{1}{T - t_0}\int_{t_0}^T h(t)\,\mathbb E_{(s, a_0)}\mathbb E_\varepsilon
        \Big\|s_\theta(a_t, s, t) + \frac{\varepsilon}{\sqrt{h(t)}}\Big\|^2\,\mathrm dt,\qquad
        a_t = \alpha(t)\,a_0 + \sqrt{h(t)}\,\varepsilon,

    minimised by the conditional score :math:`\nabla_a\log p_t(a \mid s)`; with the noise parameterisation it is
    the loss of Diffusion Policy :cite:p:`chi2023diffusion` and of Diffusion-QL's behaviour-cloning term
    :cite:p:`wang2023diffusion`.  It is :func:`diffnotes.losses.dsm_loss` applied to the score with each row's
    observation fixed (review Sections 3.2 and 5.1; book chapter *Control and reinforcement learning*).

    Parameters
    ----------
    model : callable
        The conditional score ``model(a, s, t)``.
    actions : torch.Tensor
        Expert actions (or chunks) :math:`a_0`, shape (n, d_a).
    obs : torch.Tensor
        Their observations, shape (n, d_s).
    t0, T, sde, generator, t, eps, reduction
        As in :func:`diffnotes.losses.dsm_loss`.
    """
    obs, actions = _pairs(obs, actions)
    return dsm_loss(lambda a, tt: model(a, obs, tt), actions, t0, T, sde=sde, generator=_checks.generator(generator),
                    t=t, eps=eps, reduction=reduction)


class DiffusionPolicy:
    r"""A policy that samples an action (chunk) from a learned conditional law :math:`P(a \mid s)`.

    ``policy(obs, generator)`` runs the DDPM ancestral sampler (:func:`diffnotes.samplers.ddpm`, ``n_steps`` steps on
    the log-SNR grid down to ``t0``, ending with Tweedie's denoised estimate) on the score
    :math:`a \mapsto s_\theta(a, s, t)` for each row's observation, from :math:`a_T \sim \mathsf N(0, I)`, and clips the
    result to :math:`[-1, 1]`: the inference of Diffusion Policy :cite:p:`chi2023diffusion` (book chapter *Control and
    reinforcement learning*).

    Parameters
    ----------
    score : callable
        The conditional score ``score(a, s, t)``.
    action_dim, obs_dim : int
        Dimensions of the action (chunk) and of the observation.
    sde : VPSDE, optional
        The forward process the score was trained with.
    t0 : float
        Early-stopping time.
    n_steps : int
        Number of sampler steps, >= 1.
    """

    def __init__(self, score: Callable, action_dim: int, obs_dim: int, *, sde: VPSDE | None = None,
                 t0: float = 1e-3, n_steps: int = 30):
        if not callable(score):
            raise TypeError("score must be a callable score(a, s, t)")
        _checks.sizes(action_dim=action_dim, obs_dim=obs_dim)
        self.score, self.action_dim, self.obs_dim = score, int(action_dim), int(obs_dim)
        self.sde = _checks.sde_or_default(sde)
        self.times = time_grid(self.sde, t0, _checks.positive_int(n_steps, "n_steps"), spacing="logsnr")

    def __call__(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Actions (n, action_dim) for observations ``obs`` (n, obs_dim), one independent draw per row."""
        obs = _checks.points(obs, "obs", self.obs_dim)
        gen = _checks.generator(generator)
        with torch.no_grad():
            a = ddpm(lambda x, t: self.score(x, obs, t), (obs.shape[0], self.action_dim), self.times, sde=self.sde,
                     generator=gen, final_denoise=True)
        return a.clamp(-1.0, 1.0)


def fit_diffusion_policy(obs: torch.Tensor, actions: torch.Tensor, *, sde: VPSDE | None = None, t0: float = 1e-3,
                         steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, hidden: int = 128,
                         depth: int = 3, n_steps: int = 30, ema: float | None = 0.99, prediction: str = "eps",
                         generator=None, progress: bool = False) -> DiffusionPolicy:
    r"""Train an :class:`ObservationScoreMLP` by :func:`policy_dsm_loss` on expert pairs and return the policy.

    Training is :func:`diffnotes.training.train` (Adam, minibatches from one seeded generator, EMA of the weights,
    whose average is the returned policy's network when ``ema`` is given).  Book chapter *Control and reinforcement
    learning*; :cite:p:`chi2023diffusion`.

    Parameters
    ----------
    obs, actions : torch.Tensor
        The expert pairs, shapes (n, d_s) and (n, d_a).
    sde, t0
        Forward process and early-stopping time of the loss and of the sampler.
    steps, batch_size, lr, ema
        As in :func:`diffnotes.training.train`.
    hidden, depth
        Of the network.
    n_steps
        Sampler steps of the returned policy.
    prediction : {"eps", "x0", "v", "score"}
        What the network predicts (see :func:`diffnotes.networks.as_score`); default the noise, as in Diffusion
        Policy.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights and of the training draws.
    progress : bool
        Show a progress bar.
    """
    obs, actions = _pairs(obs, actions)
    sde = _checks.sde_or_default(sde)
    gen = _training_generator(generator)
    net = ObservationScoreMLP(actions.shape[1], obs.shape[1], hidden, depth, generator=gen)
    model = as_score(net, prediction, sde, conditional=True)
    loss = functools.partial(policy_dsm_loss, t0=t0, sde=sde)
    result = train(model, loss, (actions.float(), obs.float()), steps=steps, batch_size=batch_size, lr=lr,
                   generator=gen, ema=ema, progress=progress)
    final = result.ema_model if result.ema_model is not None else result.model
    final.requires_grad_(False)
    policy = DiffusionPolicy(final, actions.shape[1], obs.shape[1], sde=sde, t0=t0, n_steps=n_steps)
    policy.losses = result.losses
    return policy


# -- the Gaussian (MSE) baseline -------------------------------------------------------------------------------
class GaussianPolicy:
    r"""The Gaussian policy :math:`\mathsf N(\mu(s), \Sigma)` fitted by least squares: the MSE-regression baseline.

    The mean is linear in fixed features, :math:`\mu(s) = W^\top\phi(s)` with :math:`\phi(s) = (1,
    \exp(-\|s - c_j\|^2/2\ell^2))_{j}` for centres :math:`c_j` on a grid over the observations' bounding box, and
    :math:`W` minimises :math:`\sum_i\|a_i - W^\top\phi(s_i)\|^2 + \lambda\|W_{1:}\|^2` (the intercept is not
    penalised); :math:`\Sigma` is the covariance of the residuals.  Maximising the Gaussian likelihood gives the
    same mean, so this is the usual behaviour-cloning policy with an MSE loss.  Because the intercept is free, the
    fitted means average exactly to the data mean, :math:`\frac1n\sum_i\mu(s_i) = \frac1n\sum_i a_i`; and where one
    observation is followed by two modes, :math:`\mu(s)` is their average, which for the bimodal expert points at
    the obstacle (book chapter *Control and reinforcement learning*; the failure mode that motivates
    :cite:t:`chi2023diffusion`).

    Parameters
    ----------
    obs, actions : torch.Tensor
        The expert pairs, (n, d_s) and (n, d_a).
    n_centres : int
        Centres per observation axis (a grid of ``n_centres ** d_s``), >= 1.
    lengthscale : float, optional
        :math:`\ell` (default: the grid spacing).
    ridge : float
        :math:`\lambda \ge 0`.
    mode : {"mean", "sample"}
        Whether the policy returns :math:`\mu(s)` or a draw of :math:`\mathsf N(\mu(s), \Sigma)`.
    """

    def __init__(self, obs: torch.Tensor, actions: torch.Tensor, *, n_centres: int = 10,
                 lengthscale: float | None = None, ridge: float = 1e-6, mode: str = "mean"):
        a = _checks.data(actions, "actions")
        s = _checks.data(obs, "obs")
        if s.shape[0] != a.shape[0]:
            raise ValueError(f"obs must have one row per action ({a.shape[0]}), got {s.shape[0]}")
        n_centres = _checks.positive_int(n_centres, "n_centres")
        ridge = float(ridge)
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        if mode not in ("mean", "sample"):
            raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
        self.mode, self.obs_dim, self.action_dim = mode, s.shape[1], a.shape[1]
        lo, hi = s.min(0).values, s.max(0).values
        axes = [torch.linspace(float(lo[j]), float(hi[j]), n_centres, dtype=torch.float64) for j in range(s.shape[1])]
        self.centres = torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], dim=1)
        spacing = float(((hi - lo) / max(n_centres - 1, 1)).max())
        self.lengthscale = float(lengthscale) if lengthscale is not None else max(spacing, 1e-6)
        if not (math.isfinite(self.lengthscale) and self.lengthscale > 0):
            raise ValueError(f"lengthscale must be > 0, got {lengthscale!r}")
        phi = self.features(s)
        penalty = ridge * torch.eye(phi.shape[1], dtype=torch.float64)
        penalty[0, 0] = 0.0
        self.weights = torch.linalg.solve(phi.T @ phi + penalty, phi.T @ a)
        resid = a - phi @ self.weights
        self.cov = resid.T @ resid / a.shape[0]
        self._chol = torch.linalg.cholesky(self.cov + 1e-12 * torch.eye(a.shape[1], dtype=torch.float64))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        r"""The features :math:`\phi(s)`: a constant and the radial basis functions, shape (n, 1 + n_centres^d).

        Parameters
        ----------
        obs : torch.Tensor
            Observations, shape (n, d_s) (not checked here).
        """
        s = obs.to(torch.float64)
        d2 = torch.cdist(s, self.centres) ** 2
        return torch.cat([torch.ones(s.shape[0], 1, dtype=torch.float64), torch.exp(-d2 / (2 * self.lengthscale**2))],
                         dim=1)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        r"""The regression mean :math:`\mu(s)` at observations (n, d_s).

        Parameters
        ----------
        obs : torch.Tensor
            Observations, shape (n, d_s).
        """
        obs = _checks.points(obs, "obs", self.obs_dim)
        return self.features(obs) @ self.weights

    def __call__(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Actions for observations ``obs`` (n, d_s): the mean, or a Gaussian draw (``mode="sample"``), clipped."""
        mu = self.mean(obs)
        if self.mode == "sample":
            z = torch.randn(mu.shape, generator=_checks.generator(generator), dtype=torch.float64)
            mu = mu + z @ self._chol.T
        return mu.clamp(-1.0, 1.0)


# -- closed-loop evaluation ------------------------------------------------------------------------------------
@dataclass
class RolloutResult:
    """Outcome of :func:`rollout`: per-episode success and collision flags (n,), episode lengths (n,), the position
    paths (a list of (L, 2) arrays) and the success and collision rates with their binomial standard errors.

    Parameters
    ----------
    success, collision : numpy.ndarray
        Per-episode flags, shape (n,).
    length : numpy.ndarray
        Per-episode lengths in steps, shape (n,).
    paths : list of numpy.ndarray
        The position paths, each of shape (L, 2).
    """

    success: np.ndarray
    collision: np.ndarray
    length: np.ndarray
    paths: list

    @property
    def success_rate(self) -> float:
        """The fraction of episodes that reached the goal."""
        return float(self.success.mean())

    @property
    def collision_rate(self) -> float:
        """The fraction of episodes that hit the obstacle."""
        return float(self.collision.mean())

    @property
    def success_se(self) -> float:
        """The binomial standard error of the success rate."""
        return binomial_se(self.success_rate, self.success.size)

    @property
    def collision_se(self) -> float:
        """The binomial standard error of the collision rate."""
        return binomial_se(self.collision_rate, self.collision.size)


def binomial_se(p: float, n: int) -> float:
    r"""The standard error :math:`\sqrt{p(1-p)/n}` of a rate p estimated from n independent episodes.

    Parameters
    ----------
    p : float
        The rate, in [0, 1].
    n : int
        The number of episodes, a positive integer.
    """
    p = _checks.probability(p, "p")
    return math.sqrt(p * (1 - p) / _checks.positive_int(n, "n"))


def rollout(policy: Callable, n_episodes: int, *, chunk: int = 1, execute: int | None = None, max_steps: int = 60,
            seed: int = 0, generator=None) -> RolloutResult:
    r"""Run ``policy`` in ``n_episodes`` :class:`PointMassObstacleEnv` episodes (seeds ``seed + i``) and score them.

    The policy is called on the stacked observations of all running episodes, ``policy(obs, generator)`` with
    ``obs`` of shape (m, 2), and returns action chunks (m, 2K) for ``chunk = K``.  The first ``execute`` actions of
    each chunk (default all K) are applied open loop, then the policy is queried again: the receding-horizon
    execution of Diffusion Policy :cite:p:`chi2023diffusion` (``chunk = execute = 1`` is an ordinary closed-loop
    policy).  An episode is a success if it reaches the goal, a collision if it hits the obstacle (book chapter
    *Control and reinforcement learning*).

    Parameters
    ----------
    policy : callable
        ``policy(obs, generator) -> (m, 2 * chunk)`` tensor.
    n_episodes : int
        Number of episodes, >= 1.
    chunk : int
        The chunk length K the policy returns, >= 1.
    execute : int, optional
        Actions executed per query, 1 <= execute <= K.
    max_steps : int
        Episode length before truncation.
    seed : int
        Episode i is reset with seed ``seed + i``.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Handed to the policy (the source of its draws).
    """
    if not callable(policy):
        raise TypeError("policy must be a callable policy(obs, generator)")
    n_episodes = _checks.positive_int(n_episodes, "n_episodes")
    chunk = _checks.positive_int(chunk, "chunk")
    execute = chunk if execute is None else _checks.positive_int(execute, "execute")
    if execute > chunk:
        raise ValueError(f"execute must be at most chunk = {chunk}, got {execute}")
    seed = _checks.positive_int(seed, "seed", minimum=0)
    gen = _checks.generator(generator)
    envs = [PointMassObstacleEnv(max_steps=max_steps) for _ in range(n_episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    paths = [[o.copy()] for o in obs]
    success = np.zeros(n_episodes, dtype=bool)
    collision = np.zeros(n_episodes, dtype=bool)
    length = np.zeros(n_episodes, dtype=int)
    active = np.ones(n_episodes, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        plan = policy(torch.as_tensor(obs[idx]), gen)
        if not isinstance(plan, torch.Tensor) or plan.shape != (idx.size, 2 * chunk):
            raise ValueError(f"the policy must return a tensor of shape ({idx.size}, {2 * chunk}), got "
                             f"{getattr(plan, 'shape', type(plan))}")
        plan = plan.detach().to(torch.float64).numpy().reshape(idx.size, chunk, 2)
        for j in range(execute):
            for row, i in enumerate(idx):
                if not active[i]:
                    continue
                o, _, terminated, truncated, info = envs[i].step(plan[row, j])
                obs[i] = o
                paths[i].append(o)
                length[i] += 1
                if terminated or truncated:
                    active[i] = False
                    success[i], collision[i] = info["success"], info["collision"]
    return RolloutResult(success, collision, length, [np.asarray(p) for p in paths])


# -- Diffusion-QL on a contextual bandit -----------------------------------------------------------------------
def _log_mass(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(u) - \Phi(l))` for :math:`l < u`, stable in both tails (Gaussian mass of an interval)."""
    flip = (upper + lower) > 0  # for an interval on the right, use the mirror one on the left (same mass)
    u, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_u, log_l = torch.special.log_ndtr(u), torch.special.log_ndtr(lo)
    return log_u + torch.log1p(-torch.exp(log_l - log_u))


class BimodalBandit:
    r"""A contextual bandit with a two-mode behaviour policy inside the action box and an exact Q-function.

    Contexts :math:`s \sim \mathsf U[-1, 1]`; the behaviour policy ignores the context and plays
    :math:`a \sim \tfrac12\,\mathsf{TN}(-\mu, \sigma_b^2) + \tfrac12\,\mathsf{TN}(+\mu, \sigma_b^2)`, where
    :math:`\mathsf{TN}(m, \sigma_b^2)` is the normal law :math:`\mathsf N(m, \sigma_b^2)` truncated to the action box
    :math:`[-b, b]` (so every logged action is a valid action, as in offline-RL data sets); the reward is
    :math:`r = s\,a + \xi`, :math:`\xi \sim \mathsf N(0, \sigma_r^2)`, so that the exact Q-function is
    :math:`Q(s, a) = s\,a`.  With the defaults (:math:`\mu = 0.7`, :math:`\sigma_b = 0.1`, :math:`b = 1`) the box
    edge lies :math:`3\sigma_b` beyond each mode's centre and the truncation removes 0.13 % of the mode's mass.  The
    better of the two modes is :math:`\operatorname{sign}(s)`, worth :math:`|s|\,\bar a` on average with
    :math:`\bar a` the mean of the positive mode (:attr:`mode_mean`), while behaviour cloning earns 0 on average;
    the maximiser of Q over the box, :math:`a = b\,\operatorname{sign}(s)`, lies at the edge of the logged support.
    The behaviour law is known in closed form (:meth:`behaviour_cdf`, :meth:`behaviour_sample`, and
    :meth:`noised_score`, the exact score of the noised law), so that a cloned policy can be compared with it
    exactly.  A small version of the offline-RL setting of Diffusion-QL :cite:p:`wang2023diffusion` (review
    Section 3.2; book chapter *Control and reinforcement learning*).

    Parameters
    ----------
    mode : float
        The modes' centre :math:`\mu`, with :math:`0 < \mu < b`.
    sigma_b : float
        Width :math:`\sigma_b > 0` of each behaviour mode (before truncation).
    sigma_r : float
        Reward noise, >= 0.
    bound : float
        Half-width :math:`b` of the action box :math:`[-b, b]`, finite.
    """

    def __init__(self, mode: float = 0.7, sigma_b: float = 0.1, sigma_r: float = 0.1, bound: float = 1.0):
        self.mode, self.sigma_b, self.sigma_r, self.bound = float(mode), float(sigma_b), float(sigma_r), float(bound)
        if not (math.isfinite(self.sigma_b) and self.sigma_b > 0):
            raise ValueError(f"sigma_b must be > 0, got {sigma_b!r}")
        if not (math.isfinite(self.sigma_r) and self.sigma_r >= 0):
            raise ValueError(f"sigma_r must be >= 0, got {sigma_r!r}")
        if not (math.isfinite(self.bound) and 0 < self.mode < self.bound):
            raise ValueError(f"need 0 < mode < bound < inf, got mode={mode!r}, bound={bound!r}")
        # standardised ends of the positive mode's truncation interval, and the mode's mass inside the box
        self._lo = (-self.bound - self.mode) / self.sigma_b
        self._hi = (self.bound - self.mode) / self.sigma_b
        self._phi_lo, self._phi_hi = (float(torch.special.ndtr(torch.tensor(v, dtype=torch.float64)))
                                      for v in (self._lo, self._hi))

    @property
    def mode_mean(self) -> float:
        r"""The mean :math:`\bar a = \mu + \sigma_b\,(\varphi(\ell) - \varphi(u))/(\Phi(u) - \Phi(\ell))` of the
        positive (truncated) mode, with :math:`\ell, u` the standardised ends of the box."""
        def pdf(z):
            return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

        return self.mode + self.sigma_b * (pdf(self._lo) - pdf(self._hi)) / (self._phi_hi - self._phi_lo)

    def q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The exact Q-function :math:`Q(s, a) = s a` for contexts (n, 1) and actions (n, 1), shape (n,).

        Parameters
        ----------
        s : torch.Tensor
            Contexts, shape (n, 1).
        a : torch.Tensor
            Actions, shape (n, 1).
        """
        s = _checks.points(s, "s", 1)
        a = _checks.points(a, "a", 1)
        if s.shape[0] != a.shape[0]:
            raise ValueError(f"s and a must have the same number of rows, got {s.shape[0]} and {a.shape[0]}")
        return (s * a).reshape(-1)

    def behaviour_sample(self, n: int, *, generator=None) -> torch.Tensor:
        r"""Exact draws of the behaviour policy, shape (n, 1), float64: a fair sign times a draw of the positive mode
        by inversion, :math:`\mu + \sigma_b\,\Phi^{-1}\big(\Phi(\ell) + U\,(\Phi(u) - \Phi(\ell))\big)`.

        Parameters
        ----------
        n : int
            Number of draws, a positive integer.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the signs and of the uniforms.
        """
        n = _checks.positive_int(n, "n")
        gen = _checks.generator(generator)
        sign = torch.where(torch.rand(n, 1, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
        u = self._phi_lo + (self._phi_hi - self._phi_lo) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        a = (self.mode + self.sigma_b * torch.special.ndtri(u)).clamp(-self.bound, self.bound)  # round-off only
        return sign * a

    def behaviour_cdf(self, a) -> np.ndarray:
        r"""The behaviour policy's CDF :math:`F(a) = \tfrac12\big(F_+(a) + 1 - F_+(-a)\big)` at the points ``a``, with
        :math:`F_+` the CDF of the positive truncated mode; returns a numpy array shaped like ``a``.

        Parameters
        ----------
        a : array_like
            Points (any shape).
        """
        x = torch.as_tensor(np.asarray(a, dtype=np.float64))

        def f_plus(y):
            z = ((y.clamp(-self.bound, self.bound) - self.mode) / self.sigma_b)
            return (torch.special.ndtr(z) - self._phi_lo) / (self._phi_hi - self._phi_lo)

        return (0.5 * (f_plus(x) + 1 - f_plus(-x))).clamp(0.0, 1.0).numpy()

    def behaviour_pdf(self, a) -> np.ndarray:
        r"""The behaviour policy's density :math:`\tfrac12\big(f_+(a) + f_+(-a)\big)`, with
        :math:`f_+(a) = \varphi((a - \mu)/\sigma_b)/(\sigma_b(\Phi(u) - \Phi(\ell)))` on the box and 0 outside;
        returns a numpy array shaped like ``a``.

        Parameters
        ----------
        a : array_like
            Points (any shape).
        """
        x = np.asarray(a, dtype=np.float64)
        z = (self.sigma_b * (self._phi_hi - self._phi_lo) * math.sqrt(2 * math.pi))

        def f_plus(y):
            return np.exp(-0.5 * ((y - self.mode) / self.sigma_b) ** 2) / z

        return np.where(np.abs(x) <= self.bound, 0.5 * (f_plus(x) + f_plus(-x)), 0.0)

    def dataset(self, n: int, *, generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logged data ``(s, a, r)`` of the behaviour policy: shapes (n, 1), (n, 1), (n,), float64.

        Parameters
        ----------
        n : int
            Number of logged rounds, a positive integer.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the contexts, actions and reward noise.
        """
        n = _checks.positive_int(n, "n")
        gen = _checks.generator(generator)
        s = 2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1
        a = self.behaviour_sample(n, generator=gen)
        r = self.q(s, a) + self.sigma_r * torch.randn(n, generator=gen, dtype=torch.float64)
        return s, a, r

    def in_support(self, a: torch.Tensor, width: float = 3.0) -> torch.Tensor:
        r"""Whether each action lies in the box and within ``width`` behaviour standard deviations of a mode,
        :math:`|a| \le b` and :math:`||a| - \mu| \le \text{width}\,\sigma_b` (up to round-off); shape (n,).

        Parameters
        ----------
        a : torch.Tensor
            Actions, shape (n, 1).
        width : float
            The half-width in behaviour standard deviations (default 3).
        """
        a = _checks.points(a, "a", 1).abs()
        slack = 1e-9 * self.bound
        return ((a <= self.bound + slack) & ((a - self.mode).abs() <= float(width) * self.sigma_b + slack)).reshape(-1)

    def wasserstein(self, a) -> float:
        r"""The 1-Wasserstein distance between the empirical law of the actions ``a`` (n, 1) and the behaviour law,
        :math:`\int|F_n - F|`, by :func:`diffnotes.metrics.wasserstein_1d_to_cdf` on a grid of step
        :math:`10^{-4}\,b` over the box (widened to hold every action).

        Parameters
        ----------
        a : array_like or torch.Tensor
            Actions, shape (n, 1) or (n,).
        """
        from .metrics import wasserstein_1d_to_cdf

        x = np.asarray(torch.as_tensor(a).detach().to(torch.float64).reshape(-1).cpu())
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError("a must hold at least one finite action")
        lo, hi = min(-self.bound, float(x.min())), max(self.bound, float(x.max()))
        grid = np.linspace(lo, hi, int(math.ceil((hi - lo) / (1e-4 * self.bound))) + 1)
        return wasserstein_1d_to_cdf(x, self.behaviour_cdf, grid)

    def wasserstein_floor(self, n: int, reps: int = 200, *, generator=None) -> np.ndarray:
        r"""The Monte Carlo law of :meth:`wasserstein` for n *exact* draws: ``reps`` replicate distances (numpy array).

        A cloned policy evaluated on n actions cannot be expected to come closer to the behaviour law than n exact
        draws do; a quantile of these replicates (e.g. 97.5 %) is the tolerance of such a comparison.

        Parameters
        ----------
        n : int
            Draws per replicate.
        reps : int
            Number of replicates.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the draws.
        """
        n, reps = _checks.positive_int(n, "n"), _checks.positive_int(reps, "reps")
        gen = _checks.generator(generator)
        return np.array([self.wasserstein(self.behaviour_sample(n, generator=gen)) for _ in range(reps)])

    def noised_score(self, sde: VPSDE) -> Callable:
        r"""The exact score :math:`\nabla_a\log p_t(a)` of the behaviour law noised by ``sde``, as ``score(a, t)``.

        With :math:`a_t = \alpha a_0 + \sqrt h\,\varepsilon`, each truncated mode gives the closed form

        .. math::

            p_t^{\pm}(x) = \frac{\mathsf N(x; \pm\alpha\mu, \alpha^2\sigma_b^2 + h)}{\Phi(u) - \Phi(\ell)}\,
            \big(\Phi(\tfrac{b - m}{v}) - \Phi(\tfrac{-b - m}{v})\big),\qquad
            v^2 = \Big(\frac{1}{\sigma_b^2} + \frac{\alpha^2}{h}\Big)^{-1},\quad
            m = v^2\Big(\frac{\pm\mu}{\sigma_b^2} + \frac{\alpha x}{h}\Big),

        the last factor being the probability of the box under the Gaussian posterior of :math:`a_0` given
        :math:`x`; :math:`p_t = \frac12(p_t^+ + p_t^-)`, and the score is the gradient of its logarithm (by
        automatic differentiation, in float64).  It is the score a perfect network would learn, which separates
        the error of a sampler from that of training (book chapter *Control and reinforcement learning*).

        Parameters
        ----------
        sde : VPSDE
            The forward process.

        Returns
        -------
        callable
            ``score(a, t)`` for actions (n, 1) and one time or one per row; returns (n, 1) in the dtype of ``a``.
        """
        sde = _checks.sde_or_default(sde, default=False)
        mu, sig, b = self.mode, self.sigma_b, self.bound

        def score(a: torch.Tensor, t) -> torch.Tensor:
            a = _checks.points(a, "a", 1)
            t = _checks.time_rows(t, a.shape[0], a.to(torch.float64)).reshape(-1, 1)
            alpha, h = sde.alpha(t), sde.h(t)
            with torch.enable_grad():
                x = a.detach().to(torch.float64).requires_grad_(True)
                var = alpha**2 * sig**2 + h
                v2 = 1.0 / (1.0 / sig**2 + alpha**2 / h)
                logs = []
                for c in (mu, -mu):
                    m = v2 * (c / sig**2 + alpha * x / h)
                    v = torch.sqrt(v2)
                    logs.append(-0.5 * (x - alpha * c) ** 2 / var + _log_mass((b - m) / v, (-b - m) / v))
                logp = torch.logsumexp(torch.cat(logs, dim=1), dim=1)
                (grad,) = torch.autograd.grad(logp.sum(), x)
            return grad.to(a.dtype)

        return score


def ddpm_chain(score: Callable, start: torch.Tensor, times: torch.Tensor, *, sde: VPSDE | None = None,
               generator=None, noise: Callable | None = None, clip: float | None = None) -> torch.Tensor:
    r"""The DDPM ancestral chain of :func:`diffnotes.samplers.ddpm`, differentiable in the score's parameters.

    With :math:`\bar\alpha = \alpha(t)^2`, :math:`\bar\alpha' = \alpha(t')^2`,
    :math:`\beta = 1 - \bar\alpha/\bar\alpha'` and :math:`\tilde\beta = \beta\,(1-\bar\alpha')/(1-\bar\alpha)`,
    each step is

    .. math::

        x \leftarrow \frac{x + \beta\,s(x, t)}{\sqrt{1-\beta}} + \sqrt{\tilde\beta}\,\xi,

    and the chain ends with Tweedie's estimate :math:`(x + h(t_0)\,s(x, t_0))/\alpha(t_0)`, exactly as
    ``ddpm(..., final_denoise=True)``; unlike the package's samplers (which run without gradients) the graph is
    kept, so that a loss of the *sampled* action can be back-propagated through the reverse process: the
    reparameterised policy of Diffusion-QL :cite:p:`wang2023diffusion` (book chapter *Control and reinforcement
    learning*).

    With ``clip = c`` the denoised estimate :math:`\hat x_0 = (x + h\,s)/\alpha` is clipped to :math:`[-c, c]` at
    every step and the step uses the score :math:`(\alpha\,\hat x_0 - x)/h` of the clipped estimate (the DDPM step
    is the posterior mean given :math:`\hat x_0`, so this is the clipping of the predicted action to the action
    box of :cite:t:`wang2023diffusion`); the result then lies in :math:`[-c, c]`.  The default (no clipping) is
    the plain chain.

    Parameters
    ----------
    score : callable
        ``score(x, t)`` with t one time per row.
    start : torch.Tensor
        The start :math:`x_T`, (n, D).
    times : torch.Tensor
        A strictly decreasing time grid inside (0, T] (see :func:`diffnotes.samplers.time_grid`).
    sde : VPSDE, optional
        The forward process.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the injected noise.
    noise : callable, optional
        ``noise(like)`` replacing the Gaussian draws (as in the samplers).
    clip : float, optional
        Half-width :math:`c > 0` of the box the denoised estimates are clipped to (default: none).

    Returns
    -------
    torch.Tensor
        The denoised end of the chain, (n, D), attached to the graph of the score's parameters.

    Raises
    ------
    FloatingPointError
        If the chain becomes non-finite (the samplers' check: the chain runs through their loop).
    """
    sde = _checks.sde_or_default(sde)
    times = _check_times(times, sde)
    if clip is not None:
        clip = float(clip)
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a finite number > 0 or None, got {clip!r}")
    loop = _Loop(_checks.points(start, "start"), generator, noise, what="the DDPM chain")  # the samplers' loop

    def rows(t):
        return torch.full((loop.x.shape[0],), float(t), dtype=loop.x.dtype, device=loop.x.device)

    def clipped(x, s, t):
        if clip is None:
            return s
        alpha, h = float(sde.alpha(t)), float(sde.h(t))
        return (alpha * sde.denoise(x, s, t).clamp(-clip, clip) - x) / h

    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        x = loop.x
        xi = loop.draw(x)
        loop.record(_ddpm_update(sde, x, clipped(x, score(x, rows(t)), t), t, t_next, xi))
    t_last = float(times[-1])
    x0 = sde.denoise(loop.x, score(loop.x, rows(t_last)), t_last)
    loop.record(x0 if clip is None else x0.clamp(-clip, clip))
    return loop.result()


def diffusion_ql_loss(model: Callable, actions: torch.Tensor, obs: torch.Tensor, *, q: Callable, eta: float,
                      times: torch.Tensor, t0: float = 1e-3, sde: VPSDE | None = None, clip: float | None = None,
                      dsm_times: str = "uniform", generator=None) -> torch.Tensor:
    r"""The Diffusion-QL policy loss: behaviour cloning by DSM plus a Q-value term on the policy's own actions.

    .. math::

        L(\theta) = L_{\rm DSM}(\theta) - \frac{\eta}{\mathbb E|Q(s, a_\theta)|}\,\mathbb E_{s}\big[Q(s, a_\theta)\big],
        \qquad a_\theta = \text{DDPM chain of } s_\theta(\cdot, s, \cdot) \text{ from } a_T\sim\mathsf N(0, I),

    with :math:`L_{\rm DSM}` of :func:`policy_dsm_loss` and the reverse chain of :func:`ddpm_chain` on the grid
    ``times`` (clipped to the action box with ``clip``), through which the gradient of Q flows to :math:`\theta`.
    The DSM term keeps the policy on the support of the behaviour data; the Q term moves its mass to the better
    actions there.  ``dsm_times="uniform"`` draws the DSM times uniformly in :math:`[t_0, T]`; ``"chain"`` draws
    them uniformly among the chain's own times, the discrete-time DDPM loss that :cite:t:`wang2023diffusion`
    train with, so that the network is fitted exactly where the chain evaluates it.  :cite:t:`wang2023diffusion`
    write the normaliser :math:`\mathbb E|Q|` over the data's actions; their code normalises by the mean
    :math:`|Q|` of the new actions (detached), which is what is done here.  Review Section 3.2; book chapter
    *Control and reinforcement learning*.

    Parameters
    ----------
    model : callable
        The conditional score ``model(a, s, t)``.
    actions, obs : torch.Tensor
        A batch of logged pairs, (n, d_a) and (n, d_s).
    q : callable
        ``q(s, a) -> (n,)``, a learned or exact Q-function, differentiable in a.
    eta : float
        Weight :math:`\eta \ge 0` of the Q term (0: behaviour cloning).
    times : torch.Tensor
        Grid of the reverse chain.
    t0, sde
        As in :func:`policy_dsm_loss` (t0 is used by ``dsm_times="uniform"`` only).
    clip : float, optional
        As in :func:`ddpm_chain`.
    dsm_times : {"uniform", "chain"}
        Where the DSM term draws its times (see above).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the DSM draws and of the chain's start and noise.
    """
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if not callable(q):
        raise TypeError("q must be a callable q(s, a)")
    if dsm_times not in ("uniform", "chain"):
        raise ValueError(f"dsm_times must be 'uniform' or 'chain', got {dsm_times!r}")
    gen = _checks.generator(generator)
    if dsm_times == "uniform":
        loss = policy_dsm_loss(model, actions, obs, t0, sde=sde, generator=gen)
    else:
        grid = _check_times(times, _checks.sde_or_default(sde))
        pick = torch.randint(0, grid.numel(), (actions.shape[0],), generator=gen, device=grid.device)
        loss = policy_dsm_loss(model, actions, obs, float(grid[-1]) / 2, sde=sde, generator=gen,
                               t=grid[pick].to(actions.dtype))
    if eta == 0:
        return loss
    obs = obs.to(actions.dtype)
    start = torch.randn(actions.shape, generator=gen, dtype=actions.dtype, device=actions.device)
    a_new = ddpm_chain(lambda a, t: model(a, obs, t), start, times, sde=sde, generator=gen, clip=clip)
    q_new = q(obs, a_new)
    return loss - eta * q_new.mean() / q_new.detach().abs().mean().clamp_min(1e-12)


class DiffusionQLPolicy:
    r"""The policy of :func:`fit_diffusion_ql`: the differentiable training chain, run without gradients.

    ``policy(obs, generator)`` draws :math:`a_T \sim \mathsf N(0, I)` and runs :func:`ddpm_chain` on the score
    :math:`a \mapsto s_\theta(a, s, t)` of each row's observation, on the grid ``times`` and with the clipping
    ``clip`` of training: the policy sampled at test time is exactly the chain whose actions the Q term improved
    (book chapter *Control and reinforcement learning*; :cite:p:`wang2023diffusion`).

    Parameters
    ----------
    score : callable
        The conditional score ``score(a, s, t)``.
    action_dim, obs_dim : int
        Dimensions of the action and of the observation.
    times : torch.Tensor
        The chain's time grid.
    sde : VPSDE, optional
        The forward process the score was trained with.
    clip : float, optional
        The action box's half-width (see :func:`ddpm_chain`).
    """

    def __init__(self, score: Callable, action_dim: int, obs_dim: int, *, times: torch.Tensor,
                 sde: VPSDE | None = None, clip: float | None = None):
        if not callable(score):
            raise TypeError("score must be a callable score(a, s, t)")
        _checks.sizes(action_dim=action_dim, obs_dim=obs_dim)
        self.score, self.action_dim, self.obs_dim = score, int(action_dim), int(obs_dim)
        self.sde = _checks.sde_or_default(sde)
        self.times = _check_times(times, self.sde)
        self.clip = clip

    def __call__(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Actions (n, action_dim) for observations ``obs`` (n, obs_dim), one independent draw per row.

        Parameters
        ----------
        obs : torch.Tensor
            Observations, shape (n, obs_dim).
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the chain's start and noise.
        """
        obs = _checks.points(obs, "obs", self.obs_dim)
        gen = _checks.generator(generator)
        start = torch.randn((obs.shape[0], self.action_dim), generator=gen, dtype=obs.dtype, device=obs.device)
        with torch.no_grad():
            return ddpm_chain(lambda a, t: self.score(a, obs, t), start, self.times, sde=self.sde, generator=gen,
                              clip=self.clip)


def fit_diffusion_ql(obs: torch.Tensor, actions: torch.Tensor, *, q: Callable, eta: float,
                     sde: VPSDE | None = None, t0: float = 3e-3, n_steps: int = 29, spacing: str = "log",
                     clip: float | None = None, dsm_times: str = "chain", steps: int = 1000, batch_size: int = 256,
                     lr: float = 2e-3, lr_schedule: str | None = None, ema: float | None = None, hidden: int = 64,
                     depth: int = 3, init: DiffusionQLPolicy | None = None, generator=None,
                     progress: bool = False) -> DiffusionQLPolicy:
    r"""Train a diffusion policy by :func:`diffusion_ql_loss` (``eta = 0``: behaviour cloning) on logged pairs.

    The chain runs on ``time_grid(sde, t0, n_steps, spacing)``: ``n_steps`` DDPM steps and a final denoising, so
    ``n_steps + 1`` evaluations of the network (default 30, on a grid uniform in :math:`\log t`: on the bandit of
    the book chapter the published :math:`N = 5` leaves, even with the exact score, a quarter of the actions
    between the behaviour modes).  The default forward process is the variance-preserving schedule of
    :cite:t:`wang2023diffusion`, :class:`~diffnotes.sde.LinearVP` with :math:`\beta_{\min} = 0.1`,
    :math:`\beta_{\max} = 10` and :math:`T = 1` (their discrete schedule for N steps is this process on the uniform
    grid :math:`t_k = k/N`).  The network is an :class:`ObservationScoreMLP` of ``depth`` hidden layers of width
    ``hidden`` predicting the noise.  ``init`` starts the network from a trained policy's (a warm start: e.g.
    Diffusion-QL from behaviour cloning; it must have the same network shape).  The returned
    :class:`DiffusionQLPolicy` samples with the training chain.  Book chapter *Control and reinforcement
    learning*.

    Parameters
    ----------
    obs, actions : torch.Tensor
        Logged contexts (n, d_s) and actions (n, d_a).
    q, eta
        As in :func:`diffusion_ql_loss`.
    sde : VPSDE, optional
        Forward process (default ``LinearVP(0.1, 10, T=1)``).
    t0, n_steps, spacing
        The chain's last time, number of DDPM steps and grid spacing (:func:`diffnotes.samplers.time_grid`).
    clip : float, optional
        Half-width of the action box the chain clips to (:func:`ddpm_chain`).
    dsm_times : {"chain", "uniform"}
        Where the DSM term draws its times (:func:`diffusion_ql_loss`; default the chain's times).
    steps, batch_size, lr, lr_schedule, ema
        As in :func:`diffnotes.training.train` (with ``ema`` the policy uses the averaged weights).
    hidden, depth
        Of the :class:`ObservationScoreMLP` (ignored with ``init``).
    init : DiffusionQLPolicy, optional
        A policy returned by this function whose network starts the training (copied, not modified).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the weights and of every draw of training.
    progress : bool
        Show a progress bar.
    """
    obs, actions = _pairs(obs, actions)
    sde = _checks.sde_or_default(sde) if sde is not None else LinearVP(beta_min=0.1, beta_max=10.0, T=1.0)
    n_steps = _checks.positive_int(n_steps, "n_steps")
    gen = _training_generator(generator)
    times = time_grid(sde, t0, n_steps, spacing=spacing)
    if init is not None:
        if not isinstance(init, DiffusionQLPolicy) or not isinstance(init.score, nn.Module):
            raise TypeError("init must be a DiffusionQLPolicy returned by fit_diffusion_ql")
        if (init.action_dim, init.obs_dim) != (actions.shape[1], obs.shape[1]):
            raise ValueError(f"init has action and observation dimensions {(init.action_dim, init.obs_dim)}, the "
                             f"data {(actions.shape[1], obs.shape[1])}")
        model = copy.deepcopy(init.score).requires_grad_(True)
    else:
        net = ObservationScoreMLP(actions.shape[1], obs.shape[1], hidden, depth, generator=gen)
        model = as_score(net, "eps", sde, conditional=True)
    loss = functools.partial(diffusion_ql_loss, q=q, eta=eta, times=times, t0=t0, sde=sde, clip=clip,
                             dsm_times=dsm_times)
    result = train(model, loss, (actions.float(), obs.float()), steps=steps, batch_size=batch_size, lr=lr,
                   lr_schedule=lr_schedule, ema=ema, generator=gen, progress=progress)
    final = result.ema_model if result.ema_model is not None else result.model
    final.requires_grad_(False)
    policy = DiffusionQLPolicy(final, actions.shape[1], obs.shape[1], times=times, sde=sde, clip=clip)
    policy.losses = result.losses
    return policy
