r"""Optimization through conditional sampling: reward models, reward-directed conditional diffusion, guidance.

Section 3.4 and Section 6 of the review (book part *Optimization through conditional sampling*) read data-driven
black-box optimization as conditional sampling :cite:p:`chen2024opportunities,li2024diffusion`: learn the law of the
data given a high value of the reward and sample from it, so that the designs stay close to the data while their
reward is raised.  This module holds every piece of that part.

**Reward models from labelled data** (step 1 of the review's Fig. 9):

* :func:`ridge_regression`, :math:`\hat\theta = (X^\top X + \lambda I)^{-1}X^\top y`, for real-valued noisy rewards
  :math:`y = \theta^{*\top}x + \varepsilon` :cite:p:`hoerl1970ridge`;
* :func:`btl_mle`, the maximum-likelihood estimate of the Bradley-Terry-Luce model
  :math:`\mathbb P(u = 1\mid x^1, x^2) = \sigma(\theta^\top(x^1 - x^2))` from pairwise preferences
  :cite:p:`bradley1952rank` (:func:`btl_preferences` draws such labels);
* :class:`RewardMLP` with :func:`fit_reward`, a small network for nonlinear rewards.

**The semi-supervised algorithm of Fig. 9** :cite:p:`yuan2023reward,li2024diffusion`: (1) estimate the reward on the
small labelled set; (2) pseudo-label the large unlabelled set, :math:`\hat y = \hat f(x) + \nu\xi` with Gaussian
:math:`\xi` (:func:`pseudo_label`); (3) train a conditional score :math:`s(x, \hat y, t)` by conditional denoising
score matching with a scalar condition (:class:`RewardConditionedScore`, :func:`reward_dsm_loss`,
:func:`train_conditional_score`); (4) sample at a target reward :math:`a` (:func:`sample_at_target`).
:func:`reward_directed_diffusion` runs the four steps.

**Other optimizers of the offline problem**: DDOM-style reweighting toward high reward with classifier-free guidance
(:func:`ddom_weights`, :func:`guided_reward_score`; :cite:p:`krishnamoorthy2023diffusion`); gradient guidance
(:func:`gradient_guidance`; :cite:p:`guo2024gradient`), the gradient of the reward at the look-ahead (denoised)
estimate, which for data on a subspace keeps the samples on it; plain gradient ascent on the learned surrogate
(:func:`gradient_ascent`), the classic offline baseline :cite:p:`trabucco2022design`.

**The exact oracle** :class:`LinearSubspaceOracle`: data :math:`x = Az`, :math:`z\sim\mathsf N(0, I_d)`,
:math:`A^\top A = I_d`, reward :math:`f^*(x) = \theta^{*\top}x` with :math:`\theta^* = A\beta\in\mathrm{span}(A)`.
With Gaussian pseudo-label noise the law of :math:`x` given :math:`\hat y = a` is Gaussian in closed form, and so is
its diffused version at every t: its exact conditional score and the exact SubOpt of the exact conditional sampler
separate the regression error, the diffusion (score) error and the early-stopping term of the review's theorem.

**Measures**: :func:`suboptimality` :math:`|a - \mathbb E_{x\sim\hat P_a}f^*(x)|`, :func:`off_subspace_deviation`
:math:`\mathbb E\|(I - AA^\top)x\|`, and :func:`design_bench_scores`, the normalised 100th-percentile and median of
128 candidates of design-bench's protocol :cite:p:`trabucco2022design`.

Book chapters: *Black-box optimization as conditional sampling*, *Reward-directed conditional diffusion*,
*Gradient guidance and a small design benchmark*.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _checks, samplers
from .losses import sample_times
from .networks import SinusoidalEmbedding, _mlp
from .sde import VPSDE
from .training import train

__all__ = [
    "RidgeFit",
    "ridge_regression",
    "btl_preferences",
    "btl_mle",
    "RewardMLP",
    "fit_reward",
    "linear_reward",
    "pseudo_label",
    "RewardConditionedScore",
    "reward_dsm_loss",
    "train_conditional_score",
    "guided_reward_score",
    "sample_at_target",
    "RewardDirected",
    "reward_directed_diffusion",
    "ddom_weights",
    "gradient_guidance",
    "gradient_ascent",
    "principal_basis",
    "LinearSubspaceOracle",
    "suboptimality",
    "off_subspace_deviation",
    "chi_mean",
    "design_bench_scores",
]


# -- input checks ------------------------------------------------------------------------------------------------
def _xy(x, y, name_x: str = "x", name_y: str = "y", min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled sample: x (n, D) and y (n,) as float64 tensors with the same n >= min_n."""
    x = _checks.data(x, name_x)
    y = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64))
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name_y} must hold one value per row of {name_x} (shape ({x.shape[0]},)), got shape "
                         f"{tuple(y.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} labelled points (n_label >= {min_n}), got {x.shape[0]}")
    if not torch.all(torch.isfinite(y)):
        raise ValueError(f"{name_y} contains NaN or infinite values")
    return x, y


def _nonnegative(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _target(a, name: str = "a") -> float:
    try:
        v = float(a)
    except (TypeError, ValueError) as err:
        raise TypeError(f"the target reward {name} must be a real number, got {a!r}") from err
    if not math.isfinite(v):
        raise ValueError(f"the target reward {name} must be finite, got {a!r}")
    return v


def _seeded_init(module: nn.Module, generator: torch.Generator | None) -> None:
    """Re-initialise every linear layer from ``generator`` (PyTorch's default uniform law, drawn reproducibly)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)


# -- step 1: reward models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RidgeFit:
    r"""A ridge estimate: ``theta`` (D,), its sampling ``covariance`` (D, D) and the noise variance ``sigma2``.

    Calling it, ``fit(x)``, gives the fitted reward :math:`\hat\theta^\top x` of points x (n, D).

    Parameters
    ----------
    theta : torch.Tensor
        The estimate :math:`\hat\theta_\lambda`, shape (D,).
    covariance : torch.Tensor
        Its sampling covariance, shape (D, D).
    sigma2 : float
        The noise variance :math:`\sigma^2` used (given or estimated).
    lam : float
        The ridge penalty :math:`\lambda`.
    """

    theta: torch.Tensor
    covariance: torch.Tensor
    sigma2: float
    lam: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted reward :math:`\\hat\\theta^\\top x` of points x (n, D)."""
        x = _checks.points(x, "x", self.theta.shape[0])
        return x @ self.theta.to(x)


def ridge_regression(x, y, lam: float = 1e-3, noise_var: float | None = None) -> RidgeFit:
    r"""Ridge regression of noisy rewards, step 1 of the review's Fig. 9 for a linear reward.

    .. math::

        \hat\theta_\lambda = (X^\top X + \lambda I)^{-1}X^\top y,\qquad
        \mathrm{Cov}(\hat\theta_\lambda) = \sigma^2 (X^\top X + \lambda I)^{-1}X^\top X(X^\top X + \lambda I)^{-1},

    without an intercept (the rewards of the book's oracles have mean zero).  For data on a subspace,
    :math:`X^\top X` has rank d < D and :math:`\lambda > 0` makes the estimate unique; it then lies in the span of
    the data, where the theorem of Section 6 measures its error through
    :math:`\hat\Sigma_\lambda = (X^\top X + \lambda I)/n` :cite:p:`hoerl1970ridge,yuan2023reward`.  The noise
    variance :math:`\sigma^2` is ``noise_var`` when given, else the residual estimate
    :math:`\|y - X\hat\theta\|^2/(n - \mathrm{tr}\,H)` with the hat matrix H.  Book chapter *Reward-directed
    conditional diffusion*.

    Parameters
    ----------
    x : array_like (n, D)
        Labelled points, n >= 2.
    y : array_like (n,)
        Their noisy rewards.
    lam : float
        The ridge penalty :math:`\lambda \ge 0` (0 needs :math:`X^\top X` invertible).
    noise_var : float, optional
        The known label-noise variance.
    """
    x, y = _xy(x, y)
    lam = _nonnegative(lam, "lam (the ridge penalty)")
    n, D = x.shape
    gram = x.T @ x
    reg = gram + lam * torch.eye(D, dtype=torch.float64)
    if lam == 0 and torch.linalg.matrix_rank(gram) < D:
        raise ValueError("X^T X is singular (data on a subspace, or n < D): use a ridge penalty lam > 0")
    inv = torch.linalg.inv(reg)
    theta = inv @ (x.T @ y)
    if noise_var is None:
        dof = n - float(torch.trace(x @ inv @ x.T))
        resid = y - x @ theta
        sigma2 = float(resid @ resid) / max(dof, 1.0)
    else:
        sigma2 = _nonnegative(noise_var, "noise_var")
    cov = sigma2 * inv @ gram @ inv
    return RidgeFit(theta, cov, sigma2, lam)


def btl_preferences(x1, x2, reward: Callable, generator=None) -> torch.Tensor:
    r"""Draw Bradley-Terry-Luce preferences :math:`u\sim\mathrm{Bernoulli}(\sigma(f(x^1) - f(x^2)))`.

    :math:`u = 1` means that :math:`x^1` is preferred :cite:p:`bradley1952rank`.  Review Section 6 (human-preference
    labels); book chapter *Reward-directed conditional diffusion*.

    Parameters
    ----------
    x1, x2 : torch.Tensor (n, D)
        The pairs.
    reward : callable
        The true reward :math:`f`, mapping (n, D) to (n,).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the Bernoulli draws.
    """
    x1 = _checks.points(x1, "x1")
    x2 = _checks.points(x2, "x2", x1.shape[1])
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    gen = _checks.generator(generator)
    p = torch.sigmoid(reward(x1) - reward(x2)).to(torch.float64)
    return (torch.rand(p.shape, generator=gen, dtype=torch.float64) < p).to(torch.float64)


def btl_mle(x1, x2, u, lam: float = 1e-3, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    r"""The (ridge-penalised) maximum-likelihood estimate of the Bradley-Terry-Luce model.

    .. math::

        \hat\theta = \arg\min_\theta\ -\sum_{i=1}^n\Big[u_i\log\sigma(\theta^\top\delta_i)
        + (1 - u_i)\log\sigma(-\theta^\top\delta_i)\Big] + \frac\lambda2\|\theta\|^2,\qquad
        \delta_i = x^1_i - x^2_i,

    a logistic regression on the differences without intercept, solved by Newton's method in float64 (the objective
    is strictly convex for :math:`\lambda > 0`).  The review's preference-label version of the theorem of Section 6
    replaces ridge regression by this estimate :cite:p:`bradley1952rank,li2024diffusion`.  Book chapter
    *Reward-directed conditional diffusion*.

    Parameters
    ----------
    x1, x2 : array_like (n, D)
        The compared points, n >= 2.
    u : array_like (n,)
        Preferences in {0, 1} (1: :math:`x^1` preferred).
    lam : float
        The penalty :math:`\lambda \ge 0` (needed for data on a subspace or separable preferences).
    max_iter : int
        The most Newton steps.
    tol : float
        Stop when the Newton decrement falls below ``tol``.
    """
    x1 = _checks.data(x1, "x1")
    x2 = _checks.data(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    delta, u = _xy(x1 - x2, u, "x1 - x2", "u")
    if not torch.all((u == 0) | (u == 1)):
        raise ValueError(f"preference labels u must lie in {{0, 1}}, got values {sorted(set(u.tolist()))[:5]}")
    lam = _nonnegative(lam, "lam (the penalty)")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    D = delta.shape[1]
    theta = torch.zeros(D, dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.sigmoid(delta @ theta)
        grad = delta.T @ (p - u) + lam * theta
        hess = delta.T @ (delta * (p * (1 - p))[:, None]) + lam * eye
        try:
            step = torch.linalg.solve(hess, grad)
        except torch.linalg.LinAlgError as err:
            raise ValueError("the BTL likelihood has no unique maximiser (separable preferences or data on a "
                             "subspace): use lam > 0") from err
        theta = theta - step
        if float(grad @ step) < tol:
            break
    if not torch.all(torch.isfinite(theta)):
        raise ValueError("the BTL estimate diverged (separable preferences): use lam > 0")
    return theta


def linear_reward(theta) -> Callable:
    r"""The linear reward :math:`x\mapsto\theta^\top x` as a differentiable callable (n, D) -> (n,).

    Parameters
    ----------
    theta : array_like
        The reward vector :math:`\theta`, finite, of length D.

    Returns
    -------
    callable
        ``reward(x)`` for x (n, D), returning (n,).
    """
    theta = _checks.data(torch.as_tensor(np.asarray(theta, dtype=np.float64)).reshape(1, -1), "theta")[0]

    def reward(x: torch.Tensor) -> torch.Tensor:
        x = _checks.points(x, "x", theta.shape[0])
        return x @ theta.to(x)

    return reward


class RewardMLP(nn.Module):
    r"""A small reward network :math:`\hat f_\phi: \mathbb R^D\to\mathbb R` for nonlinear rewards (step 1 of Fig. 9).

    ``depth`` hidden layers of width ``hidden`` with SiLU activations; inputs are standardised by the given
    ``loc`` and ``scale`` (set them from the training data).  Returns (n,) in the dtype of x.  Book chapters
    *Black-box optimization as conditional sampling* and *Gradient guidance and a small design benchmark*.

    Parameters
    ----------
    dim : int
        Input dimension D.
    hidden, depth : int
        Width and number of hidden layers.
    loc, scale : array_like (D,) or float
        Input standardisation :math:`(x - \mathrm{loc})/\mathrm{scale}`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, loc=0.0, scale=1.0, generator=None):
        super().__init__()
        _checks.sizes(dim=dim, hidden=hidden, depth=depth)
        self.dim = int(dim)
        self.net = _mlp(self.dim, int(hidden), int(depth), 1)
        _seeded_init(self.net, _checks.generator(generator))
        loc = torch.as_tensor(np.broadcast_to(np.asarray(loc, dtype=np.float32), (self.dim,)).copy())
        scale = torch.as_tensor(np.broadcast_to(np.asarray(scale, dtype=np.float32), (self.dim,)).copy())
        if not torch.all(scale > 0):
            raise ValueError("scale must be positive")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted reward of x (n, D), shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        """
        x = _checks.points(x, "x", self.dim)
        p = self.loc
        xp = (x.to(p.dtype) - self.loc) / self.scale
        return self.net(xp)[:, 0].to(x.dtype)


def _mse(model, x, y, generator=None):
    return ((model(x) - y) ** 2).mean()


def fit_reward(model: RewardMLP, x, y, *, steps: int = 1000, batch_size: int = 128, lr: float = 3e-3,
               weight_decay: float = 0.0, generator=None, progress: bool = False) -> RewardMLP:
    r"""Fit a :class:`RewardMLP` by least squares, :math:`\min_\phi \frac1n\sum_i(\hat f_\phi(x_i) - y_i)^2`, with
    :func:`diffnotes.training.train` (Adam).  Returns the trained model (in place).

    Parameters
    ----------
    model : RewardMLP
        The network.
    x, y : array_like (n, D) and (n,)
        Labelled data, n >= 2.
    steps, batch_size, lr, weight_decay, progress
        As in :func:`diffnotes.training.train`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the minibatches.
    """
    if not isinstance(model, RewardMLP):
        raise TypeError(f"model must be a RewardMLP, got {type(model).__name__}")
    x, y = _xy(x, y)
    if x.shape[1] != model.dim:
        raise ValueError(f"x must have {model.dim} columns, got {x.shape[1]}")
    gen = _checks.generator(generator) or torch.Generator().manual_seed(0)
    train(model, _mse, (x.float(), y.float()), steps=steps, batch_size=min(batch_size, x.shape[0]), lr=lr,
          weight_decay=weight_decay, generator=gen, progress=progress)
    return model


# -- step 2: pseudo-labels ---------------------------------------------------------------------------------------
def pseudo_label(reward: Callable, x, noise_std: float = 0.0, generator=None) -> torch.Tensor:
    r"""Pseudo-labels :math:`\hat y_j = \hat f(x_j) + \nu\,\xi_j`, :math:`\xi_j\sim\mathsf N(0, 1)`: step 2 of Fig. 9.

    The unlabelled data are labelled by the estimated reward, with Gaussian noise of standard deviation
    :math:`\nu` (``noise_std``) added, as in the algorithm of :cite:t:`yuan2023reward`: the noise makes the law of x
    given :math:`\hat y = a` non-degenerate, and :class:`LinearSubspaceOracle` computes it exactly.  Book chapter
    *Reward-directed conditional diffusion*.

    Parameters
    ----------
    reward : callable
        The estimated reward :math:`\hat f` (n, D) -> (n,), e.g. a :class:`RidgeFit` or a :class:`RewardMLP`.
    x : torch.Tensor (n, D)
        The unlabelled points.
    noise_std : float
        :math:`\nu \ge 0`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the noise.
    """
    x = _checks.points(x, "x")
    nu = _nonnegative(noise_std, "noise_std")
    gen = _checks.generator(generator)
    with torch.no_grad():
        y = reward(x).reshape(-1).to(torch.float64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"reward(x) must return one value per row ({x.shape[0]},), got {tuple(y.shape)}")
    return y + nu * torch.randn(y.shape, generator=gen, dtype=torch.float64)


# -- step 3: the conditional score with a scalar condition --------------------------------------------------------
class RewardConditionedScore(nn.Module):
    r"""A conditional score network :math:`s_\theta(x, y, t)` with a scalar (real-valued) condition y.

    The condition enters standardised, :math:`\tilde y = (y - \mathrm{loc})/\mathrm{scale}`, together with a flag
    for the null condition :math:`\varnothing` of classifier-free training, written ``NaN`` in ``y`` (an input
    sentinel only: the output is always finite).  Two forms:

    * ``latent_dim=None``: a plain MLP predicting the noise,
      :math:`s = -\varepsilon_\theta(x, \tilde y, t)/\sqrt{h(t)}`;
    * ``latent_dim=d``: the subspace encoder-decoder form of :cite:t:`chen2023score` used by
      :cite:t:`yuan2023reward` for the conditional score,

      .. math::

          s(x, y, t) = -\frac{1}{\sqrt{h(t)}}V\,\varepsilon_\theta(V^\top x, \tilde y, t)
          - \frac{1}{h(t)}(I - VV^\top)x,\qquad V^\top V = I_d,

      with a learned orthonormal basis :math:`V = \mathrm{qr}(W)`.  The exact conditional score of subspace data
      (:meth:`LinearSubspaceOracle.conditional_score`) has this form with :math:`V = A`; an untrained network
      (:math:`\varepsilon_\theta\approx0`) makes the DSM loss
      :math:`\|P_V\varepsilon\|^2 + \alpha^2\|(I - P_V)x_0\|^2/h`, so the basis is first pulled toward the
      principal subspace of the data.

    Review Sections 5.1 and 6; book chapter *Reward-directed conditional diffusion*.  Follows the conditional score
    protocol ``score(x, y, t)`` of the package (with a real y).

    Parameters
    ----------
    dim : int
        Data dimension D.
    latent_dim : int, optional
        Subspace dimension d of the encoder-decoder form.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    hidden, depth : int
        The MLP.
    embedding_dim : int
        Width of the log-time embedding.
    loc, scale : float
        Standardisation of the condition (set them from the training labels).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights and basis.
    """

    conditional = True

    def __init__(self, dim: int, latent_dim: int | None = None, *, sde: VPSDE | None = None, hidden: int = 64,
                 depth: int = 2, embedding_dim: int = 16, loc: float = 0.0, scale: float = 1.0, generator=None):
        super().__init__()
        _checks.sizes(dim=dim, hidden=hidden, depth=depth)
        self.dim = int(dim)
        self.sde = _checks.sde_or_default(sde)
        gen = _checks.generator(generator)
        if latent_dim is not None:
            latent_dim = _checks.positive_int(latent_dim, "latent_dim")
            if latent_dim > self.dim:
                raise ValueError(f"latent_dim = {latent_dim} cannot exceed dim = {self.dim}")
            w = torch.randn(self.dim, latent_dim, generator=gen, dtype=torch.float64)
            self.basis_weight = nn.Parameter(torch.linalg.qr(w)[0].to(torch.get_default_dtype()))
        self.latent_dim = latent_dim
        width = latent_dim if latent_dim is not None else self.dim
        self.embedding = SinusoidalEmbedding(embedding_dim, "log")
        self.net = _mlp(width + self.embedding.n_features + 2, int(hidden), int(depth), width)
        _seeded_init(self.net, gen)
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0) or not math.isfinite(float(loc)):
            raise ValueError(f"loc must be finite and scale positive, got {loc}, {scale}")
        self.loc, self.scale = float(loc), scale

    @property
    def basis(self) -> torch.Tensor | None:
        """The current orthonormal basis V (D, d) of the encoder-decoder form (None for the plain MLP)."""
        if self.latent_dim is None:
            return None
        q, r = torch.linalg.qr(self.basis_weight)
        return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q)[None, :]

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The score at x (n, D) given conditions y (a number or (n,); NaN is the null condition) and times t.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        y : float or array_like
            One condition, or one per row; NaN marks the null condition, infinite values are refused.
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = _checks.points(x, "x", self.dim)
        p = self.net[0].weight
        xp = x.to(p.dtype)
        y = torch.as_tensor(y, dtype=p.dtype)
        if y.ndim == 0:
            y = y.expand(x.shape[0])
        y = y.reshape(-1)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must be one condition or one per row (shape ({x.shape[0]},)), got {tuple(y.shape)}")
        if torch.any(torch.isinf(y)):
            raise ValueError("the condition y must be finite (NaN marks the null condition)")
        null = torch.isnan(y)
        ys = torch.where(null, torch.zeros_like(y), (y - self.loc) / self.scale)
        tp = self.sde.check_time(_checks.time_rows(t, x.shape[0], xp)).to(xp)
        h = self.sde.h(tp)[:, None]
        feats = [self.embedding(tp), ys[:, None], null.to(xp.dtype)[:, None]]
        if self.latent_dim is None:
            eps = self.net(torch.cat([xp] + feats, dim=1))
            out = -eps / torch.sqrt(h)
        else:
            V = self.basis
            zc = xp @ V
            eps = self.net(torch.cat([zc] + feats, dim=1))
            out = -(eps @ V.T) / torch.sqrt(h) - (xp - zc @ V.T) / h
        return out.to(x.dtype)


def reward_dsm_loss(model: Callable, x0, y, w=None, *, t0: float = 1e-3, T: float | None = None,
                    p_uncond: float = 0.0, sde: VPSDE | None = None, generator=None) -> torch.Tensor:
    r"""Conditional denoising score matching with a scalar condition (step 3 of Fig. 9), optionally weighted.

    .. math::

        \frac{\sum_i w_i\,h(t_i)\big\|s(x_{t_i}, \tau_i\hat y_i, t_i) + \varepsilon_i/\sqrt{h(t_i)}\big\|^2}
        {\sum_i w_i},\qquad x_{t_i} = \alpha(t_i)x_{0,i} + \sqrt{h(t_i)}\,\varepsilon_i,\ t_i\sim\mathsf U[t_0, T],

    where :math:`\tau_i\hat y_i` is the null condition with probability ``p_uncond`` (label dropout of
    classifier-free training, :cite:p:`ho2022classifier`) and the weights :math:`w_i` default to 1 (DDOM passes
    :func:`ddom_weights`).  The same estimate as :func:`diffnotes.losses.conditional_dsm_loss` with a real-valued
    condition; times come from :func:`diffnotes.losses.sample_times`.  Review Sections 4.1 and 6.

    Parameters
    ----------
    model : callable
        The conditional score ``s(x, y, t)``.
    x0 : torch.Tensor (n, D)
        Data.
    y : torch.Tensor (n,)
        Their (pseudo-)labels.
    w : torch.Tensor (n,), optional
        Non-negative sample weights.
    t0, T, sde
        The time interval and process.
    p_uncond : float
        Probability of the null condition.
    generator : torch.Generator, optional
        Source of times, noise and dropout.
    """
    sde = _checks.sde_or_default(sde)
    x0 = _checks.sample(x0)
    y = torch.as_tensor(y, dtype=x0.dtype).reshape(-1)
    if y.shape != (x0.shape[0],):
        raise ValueError(f"y must hold one condition per row of x0 (shape ({x0.shape[0]},)), got {tuple(y.shape)}")
    p = _checks.probability(p_uncond, "p_uncond")
    n = x0.shape[0]
    t = sample_times(n, t0, T, sde=sde, generator=generator, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    drop = torch.rand(n, generator=generator, dtype=x0.dtype) < p
    y_used = torch.where(drop, torch.full_like(y, float("nan")), y)
    xt, _ = sde.perturb(x0, t, eps)
    h = sde.h(t)[:, None]
    per = ((torch.sqrt(h) * model(xt, y_used, t) + eps) ** 2).sum(dim=1)
    if w is None:
        return per.mean()
    w = torch.as_tensor(w, dtype=x0.dtype).reshape(-1)
    if w.shape != (n,) or torch.any(w < 0) or not torch.all(torch.isfinite(w)):
        raise ValueError("w must be one finite non-negative weight per row of x0")
    return (w * per).sum() / w.sum().clamp_min(1e-300)


def train_conditional_score(x, y, *, weights=None, latent_dim: int | None = None, sde: VPSDE | None = None,
                            t0: float = 1e-3, p_uncond: float = 0.0, hidden: int = 64, depth: int = 2,
                            steps: int = 1500, batch_size: int = 256, lr: float = 2e-3, generator=None,
                            progress: bool = False) -> RewardConditionedScore:
    r"""Step 3 of Fig. 9: fit a :class:`RewardConditionedScore` to (x, y) by :func:`reward_dsm_loss` with Adam.

    The condition is standardised by the mean and standard deviation of y.  Returns the trained network, a
    conditional score ``s(x, y, t)``.  Book chapter *Reward-directed conditional diffusion*.

    Parameters
    ----------
    x, y : array_like (n, D) and (n,)
        The (pseudo-)labelled data.
    weights : array_like (n,), optional
        Sample weights (DDOM's reweighting).
    latent_dim : int, optional
        Use the subspace encoder-decoder form with this d.
    sde, t0, p_uncond
        As in :func:`reward_dsm_loss`.
    hidden, depth
        The network.
    steps, batch_size, lr, progress
        As in :func:`diffnotes.training.train`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        One source for the weights, minibatches, times and noise.
    """
    x, y = _xy(x, y)
    sde = _checks.sde_or_default(sde)
    gen = _checks.generator(generator) or torch.Generator().manual_seed(0)
    std = float(y.std()) if float(y.std()) > 0 else 1.0
    model = RewardConditionedScore(x.shape[1], latent_dim, sde=sde, hidden=hidden, depth=depth,
                                   loc=float(y.mean()), scale=std, generator=gen)
    data = [x.float(), y.float()]
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.shape != (x.shape[0],) or torch.any(w < 0) or not torch.all(torch.isfinite(w)):
            raise ValueError("weights must be one finite non-negative weight per row of x")
        data.append(w.float())
    loss = functools.partial(reward_dsm_loss, t0=t0, p_uncond=p_uncond, sde=sde)
    train(model, loss, tuple(data), steps=steps, batch_size=min(batch_size, x.shape[0]), lr=lr, generator=gen,
          progress=progress)
    return model


def guided_reward_score(cond_score: Callable, a, eta: float = 0.0) -> Callable:
    r"""The score :math:`x, t\mapsto(1 + \eta)s(x, a, t) - \eta\,s(x, \varnothing, t)` at a fixed target a.

    :math:`\eta = 0` is plain conditioning on :math:`\hat y = a` (step 4 of Fig. 9); :math:`\eta > 0` is
    classifier-free guidance :cite:p:`ho2022classifier` as DDOM uses it (strength 1 toward the data maximum,
    :cite:p:`krishnamoorthy2023diffusion`).  The null condition is NaN (see :class:`RewardConditionedScore`).

    Parameters
    ----------
    cond_score : callable
        ``s(x, y, t)`` with a real condition.
    a : float
        The target reward, finite.
    eta : float
        The guidance strength :math:`\eta \ge 0`.
    """
    a = _target(a)
    eta = _nonnegative(eta, "eta (the guidance strength)")
    if not callable(cond_score):
        raise TypeError("cond_score must be a callable s(x, y, t)")

    def score(x: torch.Tensor, t) -> torch.Tensor:
        s = cond_score(x, torch.full((x.shape[0],), a, dtype=x.dtype), t)
        if eta == 0:
            return s
        s0 = cond_score(x, torch.full((x.shape[0],), float("nan"), dtype=x.dtype), t)
        return (1 + eta) * s - eta * s0

    return score


def sample_at_target(cond_score: Callable, a, n: int, dim: int, *, eta: float = 0.0, sde: VPSDE | None = None,
                     t0: float = 1e-3, n_steps: int = 100, spacing: str = "log", sampler: str = "ddpm",
                     generator=None) -> torch.Tensor:
    r"""Step 4 of Fig. 9: draw n samples of :math:`\hat P_a`, the backward process driven by :math:`s(x, a, t)`.

    Starts from :math:`\mathsf N(0, I_D)` at T and stops at the early-stopping time :math:`t_0` (the state at
    :math:`t_0` is returned, not a denoised estimate: its off-subspace spread is the :math:`O(\sqrt{t_0D})` term
    of the theorem).  The default sampler is DDPM's ancestral step: for a score whose normal part is
    :math:`-(I - VV^\top)x/h(t)` (the exact score of subspace data, or :class:`RewardConditionedScore` in its
    encoder-decoder form) the denoised estimate has no normal part and the step draws the normal coordinates from
    their exact law :math:`\mathsf N(0, h(t')I)` whatever the step size, so the fidelity measured at :math:`t_0`
    carries no discretisation error.  Book chapter *Reward-directed conditional diffusion*.

    Parameters
    ----------
    cond_score : callable
        ``s(x, y, t)``.
    a : float
        The target reward, finite.
    n, dim : int
        Number of samples and dimension D.
    eta : float
        Classifier-free guidance strength (:func:`guided_reward_score`).
    sde, t0, n_steps, spacing, sampler
        The process, early stopping, grid (:func:`diffnotes.samplers.time_grid`) and a sampler of
        :data:`diffnotes.samplers.SAMPLERS`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the start and the noise.
    """
    score = guided_reward_score(cond_score, a, eta)
    return _sample(score, n, dim, sde=sde, t0=t0, n_steps=n_steps, spacing=spacing, sampler=sampler,
                   generator=generator)


def _sample(score, n, dim, *, sde, t0, n_steps, spacing, sampler, generator):
    sde = _checks.sde_or_default(sde)
    n = _checks.positive_int(n, "n")
    dim = _checks.positive_int(dim, "dim")
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(samplers.SAMPLERS)}, got {sampler!r}")
    gen = _checks.generator(generator)
    times = samplers.time_grid(sde, t0, n_steps, spacing)
    return samplers.SAMPLERS[sampler](score, (n, dim), times, sde=sde, generator=gen)


@dataclass
class RewardDirected:
    """The result of :func:`reward_directed_diffusion`: every step's output, and :meth:`sample` for step 4.

    Parameters
    ----------
    reward : RidgeFit
        Step 1: the fitted reward.
    pseudo_labels : torch.Tensor
        Step 2: the pseudo-labels of the unlabelled points, shape (n,).
    score : RewardConditionedScore
        Step 3: the trained conditional score.
    sde : VPSDE
        The forward process.
    t0 : float
        The early-stopping time of the training.
    """

    reward: Callable
    pseudo_labels: torch.Tensor
    score: RewardConditionedScore
    sde: VPSDE
    t0: float

    def sample(self, a, n: int, *, eta: float = 0.0, n_steps: int = 100, t0: float | None = None,
               sampler: str = "ddpm", generator=None) -> torch.Tensor:
        """Draw n samples at target a (step 4), stopped at ``t0`` (default: the training t0).

        Parameters
        ----------
        a : float
            The target reward, finite.
        n : int
            Number of samples, a positive integer.
        eta : float
            Classifier-free guidance strength (default 0).
        n_steps : int
            Number of sampler steps (default 100).
        t0 : float, optional
            Early-stopping time (default: the training t0).
        sampler : str
            A key of :data:`diffnotes.samplers.SAMPLERS` (default ``"ddpm"``).
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the start and the noise.
        """
        return sample_at_target(self.score, a, n, self.score.dim, eta=eta, sde=self.sde,
                                t0=self.t0 if t0 is None else t0, n_steps=n_steps, sampler=sampler,
                                generator=generator)


def reward_directed_diffusion(x_label, y_label, x_unlabel, *, lam: float = 1e-3, noise_std: float = 0.1,
                              latent_dim: int | None = None, sde: VPSDE | None = None, t0: float = 1e-3,
                              p_uncond: float = 0.0, hidden: int = 64, depth: int = 2, steps: int = 1500,
                              batch_size: int = 256, lr: float = 2e-3, generator=None) -> RewardDirected:
    r"""The semi-supervised reward-directed conditional diffusion of the review's Fig. 9, steps 1-3.

    (1) :func:`ridge_regression` on the labelled set; (2) :func:`pseudo_label` the unlabelled set with noise
    :math:`\nu` = ``noise_std``; (3) :func:`train_conditional_score` on :math:`(x, \hat y)`.  Step 4 is
    :meth:`RewardDirected.sample`.  :cite:p:`yuan2023reward,li2024diffusion`; book chapter *Reward-directed
    conditional diffusion*.

    Parameters
    ----------
    x_label, y_label : array_like (n_label, D), (n_label,)
        The small labelled set, n_label >= 2.
    x_unlabel : torch.Tensor (n, D)
        The large unlabelled set.
    lam : float
        Ridge penalty.
    noise_std : float
        Pseudo-label noise :math:`\nu`.
    latent_dim, sde, t0, p_uncond, hidden, depth, steps, batch_size, lr
        As in :func:`train_conditional_score`.
    generator : int, torch.Generator or numpy.random.Generator, optional
        One source for steps 2 and 3.
    """
    fit = ridge_regression(x_label, y_label, lam)
    x_unlabel = _checks.points(x_unlabel, "x_unlabel", fit.theta.shape[0])
    gen = _checks.generator(generator) or torch.Generator().manual_seed(0)
    sde = _checks.sde_or_default(sde)
    y_hat = pseudo_label(fit, x_unlabel.to(torch.float64), noise_std, generator=gen)
    score = train_conditional_score(x_unlabel, y_hat, latent_dim=latent_dim, sde=sde, t0=t0, p_uncond=p_uncond,
                                    hidden=hidden, depth=depth, steps=steps, batch_size=batch_size, lr=lr,
                                    generator=gen)
    return RewardDirected(fit, y_hat, score, sde, float(t0))


# -- DDOM reweighting ---------------------------------------------------------------------------------------------
def ddom_weights(y, n_bins: int = 20, temperature: float | None = None, clip: float = 5.0) -> torch.Tensor:
    r"""DDOM-style sample weights that tilt the training data toward high reward.

    The labels are binned into ``n_bins`` equal bins; bin b with upper edge :math:`e_b` gets the target mass
    :math:`q_b\propto\mathbb 1[n_b > 0]\exp(e_b/\tau)` (a softmax over the bin edges), and each point of bin b
    the weight :math:`w = q_b/(n_b/n)`, the ratio of target to data mass, clipped at ``clip`` and rescaled to mean
    1.  The temperature defaults to :math:`\tau = \max y - q_{0.9}(y)`, the spread of the top decile.  This follows
    the description of DDOM's reweighting (histogram of 20 bins, softmax over bin edges with a temperature from the
    90% quantile, weights clipped at 5) :cite:p:`krishnamoorthy2023diffusion`; the weights enter
    :func:`reward_dsm_loss`.  Book chapter *Black-box optimization as conditional sampling*.

    Parameters
    ----------
    y : array_like (n,)
        The labels, n >= 2, not all equal.
    n_bins : int
        Number of bins.
    temperature : float, optional
        :math:`\tau > 0`.
    clip : float
        The largest weight before rescaling, > 0.
    """
    y = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64))
    if y.ndim != 1 or y.shape[0] < 2 or not torch.all(torch.isfinite(y)):
        raise ValueError("y must be a finite one-dimensional array of at least 2 labels")
    n_bins = _checks.positive_int(n_bins, "n_bins")
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        raise ValueError("all labels are equal: nothing to reweight")
    tau = hi - float(torch.quantile(y, 0.9)) if temperature is None else float(temperature)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"temperature must be positive, got {tau}")
    clip = float(clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be positive, got {clip}")
    edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)
    b = torch.clamp(torch.bucketize(y, edges[1:-1], right=True), 0, n_bins - 1)
    counts = torch.bincount(b, minlength=n_bins).to(torch.float64)
    logits = torch.where(counts > 0, (edges[1:] - hi) / tau, torch.full_like(counts, -math.inf))
    q = torch.softmax(logits, 0)
    w = q[b] / (counts[b] / y.shape[0])
    w = torch.clamp(w, max=clip)
    return w / w.mean()


# -- gradient guidance and gradient ascent ------------------------------------------------------------------------
def principal_basis(x, d: int) -> torch.Tensor:
    r"""An orthonormal basis (D, d) of the top-d principal subspace of the (uncentred) data x: the subspace that
    :func:`gradient_guidance` and :func:`gradient_ascent` may project onto when the true one is unknown.

    Parameters
    ----------
    x : array_like or torch.Tensor
        The data, shape (n, D).
    d : int
        The subspace dimension, 1 <= d <= D.
    """
    x = _checks.data(x, "x")
    d = _checks.positive_int(d, "d")
    if d > x.shape[1]:
        raise ValueError(f"d = {d} exceeds the dimension {x.shape[1]}")
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:d].T.contiguous()


def _grad(reward: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = reward(xr)
        (g,) = torch.autograd.grad(out.sum(), xr)
    return g


def _projector(basis, D: int):
    if basis is None:
        return None
    V = _checks.data(basis, "basis")
    if V.shape[0] != D:
        raise ValueError(f"basis must have {D} rows, got {tuple(V.shape)}")
    if not torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=V.dtype), atol=1e-6):
        raise ValueError("basis must have orthonormal columns (V^T V = I)")
    return V


def gradient_guidance(score: Callable, reward: Callable, strength: float = 1.0, *, sde: VPSDE | None = None,
                      lookahead: bool = True, basis=None) -> Callable:
    r"""Gradient guidance of :cite:t:`guo2024gradient`: the score plus the reward's gradient at the denoised estimate.

    .. math::

        \tilde s(x, t) = s(x, t) + \eta\,\nabla_x \hat f\big(\hat x_0(x, t)\big),\qquad
        \hat x_0(x, t) = \frac{x + h(t)\,s(x, t)}{\alpha(t)}

    (``lookahead=True``; the gradient is taken through the denoiser by autograd).  For data on a subspace the
    Jacobian of the denoiser, :math:`\partial\hat x_0/\partial x = (\alpha/h)\,\mathrm{Cov}(x_0\mid x_t = x)` for
    the exact score, maps into the subspace, so the guidance term stays on it: the look-ahead is the projection that
    keeps samples near the data :cite:p:`guo2024gradient`.  ``lookahead=False`` is the naive gradient
    :math:`\eta\nabla\hat f(x)` at the noisy point; ``basis=V`` additionally projects the guidance term onto
    :math:`\mathrm{span}(V)`, e.g. a :func:`principal_basis` of the data.  Review Section 6; book chapter *Gradient
    guidance and a small design benchmark*.

    Parameters
    ----------
    score : callable
        The (unconditional) score ``s(x, t)``.
    reward : callable
        The differentiable surrogate :math:`\hat f` (n, D) -> (n,).
    strength : float or callable
        :math:`\eta \ge 0`, or a schedule :math:`\eta(t)`: a callable of the (n,) tensor of times returning a
        number or one non-negative strength per row (e.g. zero at large t, where a learned denoiser's Jacobian
        amplifies its errors by :math:`1/\alpha(t)`).
    sde : VPSDE, optional
        The forward process of the score.
    lookahead : bool
        Gradient at the denoised estimate (default) or at x.
    basis : array_like (D, d), optional
        Project the guidance term onto this orthonormal basis.
    """
    score = _checks.score_callable(score)
    eta = strength if callable(strength) else _nonnegative(strength, "strength")
    sde = _checks.sde_or_default(sde)
    if not callable(reward):
        raise TypeError("reward must be a differentiable callable f(x) -> (n,)")

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = score(xr, t)
            if lookahead:
                x0 = sde.denoise(xr, s, t)
                (g,) = torch.autograd.grad(reward(x0).sum(), xr)
            else:
                (g,) = torch.autograd.grad(reward(xr).sum(), xr)
        V = _projector(basis, x.shape[1])
        if V is not None:
            V = V.to(g)
            g = (g @ V) @ V.T
        if callable(eta):
            e = torch.as_tensor(eta(_checks.time_rows(t, x.shape[0], x)), dtype=x.dtype)
            e = e.expand(x.shape[0]) if e.ndim == 0 else e.reshape(-1)
            if e.shape != (x.shape[0],) or not torch.all(torch.isfinite(e)) or torch.any(e < 0):
                raise ValueError("strength(t) must return finite non-negative strengths, one per row")
            return s.detach() + e[:, None] * g
        return s.detach() + eta * g

    return guided


def gradient_ascent(reward: Callable, x_start, *, steps: int = 100, lr: float = 0.05, basis=None) -> torch.Tensor:
    r"""Plain gradient ascent on a learned surrogate: :math:`x_{k+1} = x_k + \gamma\nabla\hat f(x_k)`.

    The classic offline baseline of design-bench (started from the best designs of the data)
    :cite:p:`trabucco2022design`.  Nothing keeps :math:`x_k` near the data: a surrogate fitted on a subspace has an
    arbitrary gradient off it, and the iterates leave the subspace (``basis`` projects the steps, for comparison).
    Book chapter *Black-box optimization as conditional sampling*.

    Parameters
    ----------
    reward : callable
        The differentiable surrogate (n, D) -> (n,).
    x_start : torch.Tensor (n, D)
        The starting designs.
    steps : int
        Number of steps.
    lr : float
        Step size :math:`\gamma > 0`.
    basis : array_like (D, d), optional
        Project every step onto this orthonormal basis.
    """
    x = _checks.points(x_start, "x_start").detach().clone()
    steps = _checks.positive_int(steps, "steps")
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive, got {lr}")
    V = _projector(basis, x.shape[1])
    for _ in range(steps):
        g = _grad(reward, x)
        if V is not None:
            g = (g @ V.to(g)) @ V.to(g).T
        x = x + lr * g
    if not torch.all(torch.isfinite(x)):
        raise FloatingPointError("gradient ascent diverged: lower lr")
    return x


# -- the exact oracle --------------------------------------------------------------------------------------------
def chi_mean(k: int) -> float:
    r""":math:`\mathbb E\|\xi\|` for :math:`\xi\sim\mathsf N(0, I_k)`: :math:`\sqrt2\,\Gamma((k+1)/2)/\Gamma(k/2)`.

    Parameters
    ----------
    k : int
        The dimension, a positive integer.
    """
    k = _checks.positive_int(k, "k")
    return math.sqrt(2.0) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


class LinearSubspaceOracle:
    r"""The exact oracle of Section 6: subspace data, a linear reward and Gaussian pseudo-labels.

    .. math::

        x = Az,\ z\sim\mathsf N(0, I_d),\ A^\top A = I_d;\qquad f^*(x) = \theta^{*\top}x,\ \theta^* = A\beta;\qquad
        y = f^*(x) + \sigma\varepsilon;\qquad \hat y = \hat\theta^\top x + \nu\xi .

    With :math:`b = A^\top\hat\theta` and :math:`s^2 = \|b\|^2 + \nu^2 > 0`, the law of x given :math:`\hat y = a`
    is :math:`\mathsf N(m_a, C)` with :math:`m_a = Ab\,a/s^2` and :math:`C = A(I_d - bb^\top/s^2)A^\top`, and its
    diffused version is :math:`x_t\mid a\sim\mathsf N(\alpha m_a, \Sigma_t)`,
    :math:`\Sigma_t = \alpha^2C + hI_D`, whose inverse is
    :math:`A(\alpha^2(I_d - bb^\top/s^2) + hI_d)^{-1}A^\top + (I - AA^\top)/h`: the exact conditional score
    :math:`-\Sigma_t^{-1}(x - \alpha m_a)` at every t.  The exact conditional sampler stopped at :math:`t_0` draws
    from :math:`\mathsf N(\alpha(t_0)m_a, \Sigma_{t_0})` (up to the start at :math:`\mathsf N(0, I)`), so its mean
    reward is :math:`\alpha(t_0)\,\beta^\top b\,a/s^2` and its SubOpt is exact
    (:meth:`exact_suboptimality`); its off-subspace deviation is :math:`\sqrt{h(t_0)}\,\mathbb E\chi_{D-d}`
    (:meth:`exact_off_subspace`).  ``theta_hat`` defaults to :math:`\theta^*` (a perfect regression).
    :cite:p:`yuan2023reward,li2024diffusion`; book chapter *Reward-directed conditional diffusion*.

    Parameters
    ----------
    A : array_like (D, d)
        Orthonormal columns.
    beta : array_like (d,)
        The reward in latent coordinates, :math:`\theta^* = A\beta`.
    label_noise : float
        :math:`\sigma \ge 0` of the real labels.
    pseudo_noise : float
        :math:`\nu \ge 0` of the pseudo-labels.
    sde : VPSDE, optional
        The forward process.
    """

    def __init__(self, A, beta, label_noise: float = 0.5, pseudo_noise: float = 0.1, sde: VPSDE | None = None):
        A = _checks.data(A, "A")
        D, d = A.shape
        if d > D or not torch.allclose(A.T @ A, torch.eye(d, dtype=torch.float64), atol=1e-8):
            raise ValueError("A must be (D, d) with d <= D and orthonormal columns (A^T A = I)")
        beta = torch.as_tensor(np.asarray(beta, dtype=np.float64)).reshape(-1)
        if beta.shape != (d,) or not torch.all(torch.isfinite(beta)):
            raise ValueError(f"beta must be a finite vector of length d = {d}, got shape {tuple(beta.shape)}")
        self.A, self.beta, self.D, self.d = A, beta, D, d
        self.theta = A @ beta
        self.label_noise = _nonnegative(label_noise, "label_noise")
        self.pseudo_noise = _nonnegative(pseudo_noise, "pseudo_noise")
        self.sde = _checks.sde_or_default(sde)

    @classmethod
    def random(cls, D: int, d: int, beta=None, *, generator=None, **kwargs) -> LinearSubspaceOracle:
        """An oracle with a random orthonormal A (from ``generator``) and beta = e_1 by default.

        Parameters
        ----------
        D, d : int
            Ambient and subspace dimensions, positive, d <= D.
        beta : array_like, optional
            The reward in latent coordinates (d,) (default :math:`e_1`).
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of A.
        **kwargs
            ``label_noise``, ``pseudo_noise``, ``sde`` of the constructor.
        """
        D, d = _checks.positive_int(D, "D"), _checks.positive_int(d, "d")
        if d > D:
            raise ValueError(f"d = {d} exceeds D = {D}")
        gen = _checks.generator(generator)
        A = torch.linalg.qr(torch.randn(D, d, generator=gen, dtype=torch.float64))[0]
        if beta is None:
            beta = torch.zeros(d, dtype=torch.float64)
            beta[0] = 1.0
        return cls(A, beta, **kwargs)

    # data and labels
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n draws of x = A z.

        Parameters
        ----------
        n : int
            Number of draws, a positive integer.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of z.

        Returns
        -------
        torch.Tensor
            The points, float64, shape (n, D).
        """
        n = _checks.positive_int(n, "n")
        z = torch.randn(n, self.d, generator=_checks.generator(generator), dtype=torch.float64)
        return z @ self.A.T

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The true reward :math:`f^*(x) = \theta^{*\top}x`, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        """
        x = _checks.points(x, "x", self.D)
        return x @ self.theta.to(x)

    def labels(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        r"""Noisy labels :math:`y = f^*(x) + \sigma\varepsilon`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the noise.

        Returns
        -------
        torch.Tensor
            The labels, float64, shape (n,).
        """
        f = self.reward(x).to(torch.float64)
        return f + self.label_noise * torch.randn(f.shape, generator=_checks.generator(generator),
                                                  dtype=torch.float64)

    # the conditional law
    def _b(self, theta_hat):
        th = self.theta if theta_hat is None else torch.as_tensor(np.asarray(
            theta_hat.detach() if isinstance(theta_hat, torch.Tensor) else theta_hat, dtype=np.float64))
        if th.shape != (self.D,) or not torch.all(torch.isfinite(th)):
            raise ValueError(f"theta_hat must be a finite vector of length D = {self.D}")
        b = self.A.T @ th
        s2 = float(b @ b) + self.pseudo_noise ** 2
        if s2 <= 0:
            raise ValueError("theta_hat is orthogonal to the data subspace and the pseudo-labels carry no noise: "
                             "the conditional law given y_hat = a is undefined")
        return b, s2

    def conditional_law(self, a, theta_hat=None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean :math:`m_a` (D,) and covariance C (D, D) of x given :math:`\hat y = a` (at t = 0).

        Parameters
        ----------
        a : float
            The target, finite.
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        """
        a = _target(a)
        b, s2 = self._b(theta_hat)
        m = self.A @ b * (a / s2)
        C = self.A @ (torch.eye(self.d, dtype=torch.float64) - torch.outer(b, b) / s2) @ self.A.T
        return m, C

    def pseudo_label_std(self, theta_hat=None) -> float:
        r"""The standard deviation s of the pseudo-labels :math:`\hat y` over the data: the coverage scale of a.

        Parameters
        ----------
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        """
        return math.sqrt(self._b(theta_hat)[1])

    def _parts(self, x, a, t, theta_hat):
        x = _checks.points(x, "x", self.D)
        a = _target(a)
        t = self.sde.check_time(_checks.time_rows(t, x.shape[0], x))
        b, s2 = self._b(theta_hat)
        A, b = self.A.to(x), b.to(x)
        al = self.sde.alpha(t)[:, None, None]
        h = self.sde.h(t)[:, None, None]
        eye = torch.eye(self.d, dtype=x.dtype)
        M = al ** 2 * (eye - torch.outer(b, b) / s2) + h * eye  # (n, d, d)
        r = x - self.sde.alpha(t)[:, None] * (A @ b * (a / s2))[None, :]
        rz = r @ A  # (n, d)
        rp = r - rz @ A.T
        return r, rz, rp, M, h[:, :, 0]

    def conditional_score(self, x: torch.Tensor, a, t, theta_hat=None) -> torch.Tensor:
        r"""The exact :math:`\nabla_x\log p_t(x\mid\hat y = a) = -\Sigma_t^{-1}(x - \alpha(t)m_a)`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        a : float
            The target, finite.
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        """
        _, rz, rp, M, h = self._parts(x, a, t, theta_hat)
        sz = torch.linalg.solve(M, rz[:, :, None])[:, :, 0]
        return -(sz @ self.A.to(x).T) - rp / h

    def conditional_log_prob(self, x: torch.Tensor, a, t, theta_hat=None) -> torch.Tensor:
        r"""The exact :math:`\log p_t(x\mid\hat y = a)`, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        a : float
            The target, finite.
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        """
        _, rz, rp, M, h = self._parts(x, a, t, theta_hat)
        quad = (rz * torch.linalg.solve(M, rz[:, :, None])[:, :, 0]).sum(1) + (rp ** 2).sum(1) / h[:, 0]
        logdet = torch.logdet(M) + (self.D - self.d) * torch.log(h[:, 0])
        return -0.5 * (quad + logdet + self.D * math.log(2 * math.pi))

    def conditional_score_function(self, a, theta_hat=None) -> Callable:
        r"""The exact conditional score at target a as a plain score ``score(x, t)``.

        Parameters
        ----------
        a : float
            The target, finite.
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        """
        a = _target(a)
        self._b(theta_hat)
        return lambda x, t: self.conditional_score(x, a, t, theta_hat)

    def cond_score(self, theta_hat=None) -> Callable:
        r"""The exact conditional score as a conditional score ``s(x, y, t)`` (y one number per row).

        Parameters
        ----------
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).

        Returns
        -------
        callable
            ``s(x, y, t)`` with y one target for all rows or one per row.
        """

        def s(x, y, t):
            x = _checks.points(x, "x", self.D)
            y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
            if y.numel() == 1:
                return self.conditional_score(x, float(y), t, theta_hat)
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must be one target or one per row ({x.shape[0]},), got {tuple(y.shape)}")
            t_rows = _checks.time_rows(t, x.shape[0], x)
            out = torch.empty_like(x)
            for v in torch.unique(y):
                rows = y == v
                out[rows] = self.conditional_score(x[rows], float(v), t_rows[rows], theta_hat)
            return out

        return s

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact unconditional score of the data, :math:`-(\alpha^2AA^\top + hI)^{-1}x`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = _checks.points(x, "x", self.D)
        t = self.sde.check_time(_checks.time_rows(t, x.shape[0], x))
        h = self.sde.h(t)[:, None]
        xz = x @ self.A.to(x)
        return -(xz @ self.A.to(x).T) - (x - xz @ self.A.to(x).T) / h

    # exact measures
    def exact_mean_reward(self, a, theta_hat=None, t0: float | None = None) -> float:
        r""":math:`\mathbb E f^*` under the exact conditional law at :math:`t_0` (0: the law itself):
        :math:`\alpha(t_0)\,\beta^\top b\,a/s^2`.

        Parameters
        ----------
        a : float
            The target, finite.
        theta_hat : array_like, optional
            The regression estimate :math:`\hat\theta` (D,), finite (default :math:`\theta^*`).
        t0 : float, optional
            The early-stopping time, in (0, T]; None or 0 takes the conditional law itself.
        """
        a = _target(a)
        b, s2 = self._b(theta_hat)
        al = 1.0 if not t0 else float(self.sde.alpha(self.sde.check_time(t0)))
        return al * float(self.beta @ b) * a / s2

    def exact_suboptimality(self, a, theta_hat=None, t0: float | None = None) -> float:
        r"""The exact SubOpt :math:`|a - \alpha(t_0)\,\beta^\top b\,a/s^2|` of the exact conditional sampler.

        Parameters
        ----------
        a, theta_hat, t0
            As in :meth:`exact_mean_reward`.
        """
        return abs(_target(a) - self.exact_mean_reward(a, theta_hat, t0))

    def exact_off_subspace(self, t0: float) -> float:
        r""":math:`\mathbb E\|(I - AA^\top)x_{t_0}\| = \sqrt{h(t_0)}\,\mathbb E\chi_{D-d}` (0 when d = D).

        Parameters
        ----------
        t0 : float
            The early-stopping time, in (0, T].
        """
        if self.D == self.d:
            return 0.0
        h = float(self.sde.h(self.sde.check_time(t0)))
        return math.sqrt(h) * chi_mean(self.D - self.d)

    def off_subspace(self, x: torch.Tensor) -> float:
        """:func:`off_subspace_deviation` of x from this oracle's subspace.

        Parameters
        ----------
        x : torch.Tensor
            Samples, shape (n, D).
        """
        return off_subspace_deviation(x, self.A)


# -- measures ------------------------------------------------------------------------------------------------------
def suboptimality(x, a, reward: Callable) -> float:
    r"""SubOpt :math:`(\hat P_a; a) = |a - \mathbb E_{x\sim\hat P_a}f^*(x)|`, estimated by the sample mean.

    Review Section 6 :cite:p:`li2024diffusion`.

    Parameters
    ----------
    x : torch.Tensor (n, D)
        Samples of :math:`\hat P_a`.
    a : float
        The target, finite.
    reward : callable
        The true reward :math:`f^*`.
    """
    x = _checks.points(x, "x")
    a = _target(a)
    with torch.no_grad():
        return abs(a - float(reward(x).mean()))


def off_subspace_deviation(x, basis) -> float:
    r"""The mean distance :math:`\mathbb E\|(I - AA^\top)x\|_2` of samples to the span of an orthonormal basis A.

    The fidelity measure of review Section 6, of order :math:`\sqrt{t_0D}` for the reward-directed sampler.

    Parameters
    ----------
    x : torch.Tensor
        Samples, shape (n, D).
    basis : array_like or torch.Tensor
        The basis A, shape (D, d), with orthonormal columns (to 1e-6).
    """
    x = _checks.points(x, "x")
    A = _projector(basis, x.shape[1]).to(x)
    r = x - (x @ A) @ A.T
    return float(r.norm(dim=1).mean())


def design_bench_scores(values, full_values, n_candidates: int = 128) -> tuple[float, float]:
    r"""Design-bench's normalised 100th-percentile and median of the true objective over the candidates.

    .. math:: \mathrm{score} = \frac{f(x) - \min_{\mathcal D} f}{\max_{\mathcal D} f - \min_{\mathcal D} f},

    with min and max over the *full* data set (including the part hidden from the optimizer); the protocol
    proposes exactly 128 candidates per method and trial :cite:p:`trabucco2022design`.  Returns
    ``(p100, median)``.  Book chapter *Gradient guidance and a small design benchmark*.

    Parameters
    ----------
    values : array_like (n_candidates,)
        True objective values of the candidates.
    full_values : array_like (N,)
        The objective over the full data set, N >= 2, not constant.
    n_candidates : int
        The required number of candidates (128 in the protocol).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    full = np.asarray(full_values, dtype=np.float64).reshape(-1)
    n_candidates = _checks.positive_int(n_candidates, "n_candidates")
    if v.size != n_candidates:
        raise ValueError(f"the protocol scores exactly {n_candidates} candidates, got {v.size}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(full))) or full.size < 2:
        raise ValueError("values and full_values must be finite, full_values with at least 2 entries")
    lo, hi = full.min(), full.max()
    if hi <= lo:
        raise ValueError("full_values is constant: the normalisation is undefined")
    s = (v - lo) / (hi - lo)
    return float(s.max()), float(np.median(s))
