r"""Optimization of the score objective: gradient descent on the DDPM loss of a Gaussian mixture.

Review Section 4.2 (*Optimization guarantees on score estimation*); book chapter *Optimization of the score
objective* (this module was ``diffnotes.gmm_learning``, which still re-exports it).  Primary reference
:cite:p:`shah2023learning`.

**The model.**  Data :math:`P_{\rm data} = \tfrac12\mathsf N(\mu^*, I_d) + \tfrac12\mathsf N(-\mu^*, I_d)`.  Under any
variance-preserving forward process (:mod:`diffnotes.sde`), :math:`X_t \mid X_0 \sim \mathsf N(\alpha X_0, hI)` with
:math:`\alpha^2 + h = 1`, so the diffused law is :math:`\tfrac12\mathsf N(\alpha\mu^*, I) + \tfrac12\mathsf
N(-\alpha\mu^*, I)`: the component covariance :math:`h' = \alpha^2\cdot 1 + h` equals 1 at every t.  Its score is

.. math::

    s_\mu(x, t) = \alpha\,\mu\,\tanh\big(\alpha\,\mu^\top x\big) - x
    \qquad(\mu = \mu^*\text{ gives the exact score}),

the parametric family whose single parameter :math:`\mu \in \mathbb R^d` gradient descent learns.  (For components
of variance :math:`v` the general form is :math:`s_\mu = \alpha\mu\tanh(\alpha\mu^\top x/h')/h' - x/h'` with
:math:`h' = \alpha^2 v + h`; here v = 1.)

**The objective** at one time t is the DDPM (denoising score matching) loss
:math:`L_t(\mu) = \mathbb E\|s_\mu(X_t, t) + \varepsilon/\sqrt h\|^2`, which equals, up to a constant in
:math:`\mu`, the explicit loss :math:`\mathbb E\|s_\mu(X_t) - s_{\mu^*}(X_t)\|^2
= \alpha^2\,\mathbb E\|\mu\tanh(a) - \mu^*\tanh(b)\|^2` with :math:`a = \alpha\mu^\top X_t`,
:math:`b = \alpha\mu^{*\top}X_t`.  Since :math:`(a, b)` is a two-dimensional Gaussian (given the component), the
population loss is a two-dimensional Gaussian integral, computed here by Gauss-Hermite quadrature
(:func:`population_loss`); autograd then gives the exact population gradient.

**The two regimes** :cite:p:`shah2023learning`.

* Large t (:math:`\alpha \to 0`): :math:`\tanh(u)\approx u` and :math:`X_t \approx \mathsf N(0, I)`, so
  :math:`L_t \approx \alpha^4(\|\mu\|^4 - 2(\mu^\top\mu^*)^2 + \|\mu^*\|^4)` and

  .. math:: -\nabla L_t(\mu) = 4\alpha^4\big[(\Sigma - I)\mu - \|\mu\|^2\mu\big] + O(\alpha^6),\qquad
     \Sigma = \mathbb E[X_0X_0^\top] = I + \mu^*\mu^{*\top}:

  a power-iteration step on :math:`\Sigma` with an Oja-type shrinkage, :func:`power_direction`, whose fixed points
  are 0 and :math:`\pm\mu^*` (as :math:`\Sigma\mu^* = (1 + \|\mu^*\|^2)\mu^*`).  The angle between the two
  directions is :math:`O(\alpha^2)`, so :math:`1 - \cos = O(\alpha^4) = O(e^{-2t})` for g = 1.
* Small t (:math:`\alpha \to 1`): the step approaches the EM step :math:`\mathrm{EM}(\mu) - \mu`,
  :math:`\mathrm{EM}(\mu) = \mathbb E[X_0\tanh(\mu^\top X_0)]` (:func:`em_update`), the closer the better separated
  the components are (the terms that differ carry :math:`\tanh'` and vanish for large :math:`\|\mu^*\|`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks
from .sde import VPSDE

__all__ = [
    "symmetric_mixture",
    "mixture_score",
    "mixture_dsm_loss",
    "population_loss",
    "population_gradient",
    "em_update",
    "power_direction",
    "power_iteration",
    "gradient_descent",
    "cosine",
    "step_alignment",
]


# -- validation ---------------------------------------------------------------------------------------------------
def _vector(name: str, v, d: int | None = None, nonzero: bool = False) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        try:
            v = torch.as_tensor(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a vector of numbers, got {v!r}") from err
    if not v.is_floating_point():
        v = v.to(torch.float64)
    if v.ndim != 1 or v.numel() < 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {tuple(v.shape)}")
    if d is not None and v.shape[0] != d:
        raise ValueError(f"{name} must have {d} entries, got {v.shape[0]}")
    if not torch.all(torch.isfinite(v)):
        raise ValueError(f"{name} must be finite")
    if nonzero and float(torch.linalg.vector_norm(v.detach())) == 0:
        raise ValueError(f"{name} must be non-zero")
    return v


def _one_time(sde: VPSDE, t) -> tuple[torch.Tensor, torch.Tensor]:
    t = sde.check_time(t)
    if t.ndim != 0:
        raise ValueError("the objective is taken at a single time t (a number)")
    return sde.alpha(t), sde.h(t)


# -- the model ----------------------------------------------------------------------------------------------------
def symmetric_mixture(mu_star, sde: VPSDE | None = None):
    r"""The data law :math:`\tfrac12\mathsf N(\mu^*, I) + \tfrac12\mathsf N(-\mu^*, I)` as a
    :class:`~diffnotes.targets.GaussianMixture` (exact diffused law, score and samples).

    Parameters
    ----------
    mu_star : array_like or torch.Tensor
        The mean :math:`\mu^*`, a finite vector (d,).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """
    from .targets import GaussianMixture

    mu_star = _vector("mu_star", mu_star).detach().to(torch.float64)
    return GaussianMixture([0.5, 0.5], torch.stack([mu_star, -mu_star]), [1.0, 1.0], _checks.sde_or_default(sde))


def mixture_score(mu, x: torch.Tensor, t, sde: VPSDE | None = None) -> torch.Tensor:
    r"""The parametric score :math:`s_\mu(x, t) = \alpha\mu\tanh(\alpha\mu^\top x) - x`, shape (n, d).

    Exact for :math:`\mu = \mu^*` (the diffused component covariance is :math:`\alpha^2 + h = 1` for every VP
    schedule).  Differentiable in ``mu`` (which may require grad).  t: one time in (0, T].

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The parameter :math:`\mu`, a finite vector (d,).
    x : torch.Tensor
        Points, shape (n, d).
    t : float
        One time in (0, T].
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    """
    mu = _vector("mu", mu)
    x = _checks.points(x, "x", mu.shape[0])
    a, _ = _one_time(_checks.sde_or_default(sde), t)
    a = a.to(x)
    return a * mu[None, :] * torch.tanh(a * (x @ mu))[:, None] - x


def mixture_dsm_loss(mu, x0: torch.Tensor, t, *, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, sde: VPSDE | None = None) -> torch.Tensor:
    r"""The empirical DDPM (denoising score matching) loss of the symmetric mixture's score family at one time t,
    :math:`\frac1n\sum_i\|s_\mu(x_t^i, t) + \varepsilon^i/\sqrt h\|^2` with
    :math:`x_t^i = \alpha x_0^i + \sqrt h\varepsilon^i`.

    Its expectation is :func:`population_loss` plus a constant (:math:`d/h - \mathbb E\|\nabla\log p_t\|^2`).
    ``eps`` (n, d) fixes the noise (common random numbers); otherwise it is drawn with ``generator``.
    Formerly ``dsm_loss`` (still importable under that name from ``diffnotes.gmm_learning``); the loss of any score
    model is :func:`diffnotes.losses.dsm_loss`.

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The parameter :math:`\mu`, a finite vector (d,).
    x0 : torch.Tensor
        Data, shape (n, d).
    t : float
        One time in (0, T].
    eps : torch.Tensor, optional
        The noise, shaped like ``x0``.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the noise when ``eps`` is not given.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).

    Returns
    -------
    torch.Tensor
        The loss, a scalar.
    """
    generator = _checks.generator(generator)
    sde = _checks.sde_or_default(sde)
    mu = _vector("mu", mu)
    x0 = _checks.points(x0, "x0", mu.shape[0])
    a, h = _one_time(sde, t)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    else:
        eps = _checks.points(eps, "eps", mu.shape[0])
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    sh = torch.sqrt(h).to(x0)
    xt = a.to(x0) * x0 + sh * eps
    return ((mixture_score(mu, xt, t, sde) + eps / sh) ** 2).sum(1).mean()


def _gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return torch.as_tensor(nodes), torch.as_tensor(weights / math.sqrt(2 * math.pi))


def population_loss(mu, mu_star, t, *, sde: VPSDE | None = None, n_nodes: int = 160) -> torch.Tensor:
    r"""The population score-matching loss :math:`\mathbb E\|s_\mu(X_t) - s_{\mu^*}(X_t)\|^2` at one time t, exactly.

    Equals the DDPM loss :math:`\mathbb E\|s_\mu(X_t) + \varepsilon/\sqrt h\|^2` minus a constant independent of
    :math:`\mu` (so it has the same gradient).  With :math:`x = \alpha\mu^* + z` (the sign of the component does not
    matter by symmetry), :math:`b = \alpha\mu^{*\top}x = \alpha^2 r^2 + \alpha r g_1` and
    :math:`a = \alpha\mu^\top x = \alpha^2 c + \alpha(c/r) g_1 + \alpha q g_2`, where :math:`r = \|\mu^*\|`,
    :math:`c = \mu^\top\mu^*`, :math:`q = \|(I - \hat\mu^*\hat\mu^{*\top})\mu\|` and :math:`g_1, g_2` are independent
    standard normals; the loss :math:`\alpha^2\,\mathbb E[\|\mu\|^2\tanh^2 a - 2c\tanh a\tanh b + r^2\tanh^2 b]` is
    then a two-dimensional Gauss-Hermite sum with ``n_nodes`` nodes per axis.  Differentiable in ``mu``.

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The parameter :math:`\mu`, a finite vector (d,).
    mu_star : array_like or torch.Tensor
        The true mean :math:`\mu^*`, a finite non-zero vector (d,).
    t : float
        One time in (0, T].
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    n_nodes : int
        Gauss-Hermite nodes per axis, >= 2 (default 160).

    Returns
    -------
    torch.Tensor
        The loss, a scalar.
    """
    mu = _vector("mu", mu)
    mu_star = _vector("mu_star", mu_star, mu.shape[0], nonzero=True).to(mu.dtype)
    n_nodes = _checks.positive_int(n_nodes, "n_nodes", 2, floats=True)
    a_t, _ = _one_time(_checks.sde_or_default(sde), t)
    alpha = a_t.to(mu.dtype)
    r = torch.linalg.vector_norm(mu_star)
    u = mu_star / r
    c = mu @ mu_star
    perp = mu - (mu @ u) * u
    q = torch.sqrt((perp**2).sum() + 1e-300)  # smooth at perp = 0; the loss is even in q
    g, w = _gauss_hermite(n_nodes)
    g1, g2 = g[:, None].to(mu.dtype), g[None, :].to(mu.dtype)
    W = (w[:, None] * w[None, :]).to(mu.dtype)
    b = alpha**2 * r**2 + alpha * r * g1
    a = alpha**2 * c + alpha * (c / r) * g1 + alpha * q * g2
    ta, tb = torch.tanh(a), torch.tanh(b)
    integrand = (mu @ mu) * ta**2 - 2 * c * ta * tb + r**2 * tb**2
    return alpha**2 * (W * integrand).sum()


def population_gradient(mu, mu_star, t, *, sde: VPSDE | None = None, n_nodes: int = 160) -> torch.Tensor:
    r"""The exact population gradient :math:`\nabla_\mu L_t(\mu)` of the DDPM objective at one time t (d,).

    Parameters
    ----------
    mu, mu_star, t, sde, n_nodes
        As in :func:`population_loss`.
    """
    mu = _vector("mu", mu).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = population_loss(mu, mu_star, t, sde=sde, n_nodes=n_nodes)
        (grad,) = torch.autograd.grad(loss, mu)
    return grad.detach()


# -- the classical algorithms ----------------------------------------------------------------------------------------
def em_update(mu, mu_star=None, *, x: torch.Tensor | None = None, n_nodes: int = 160) -> torch.Tensor:
    r"""One EM step for the symmetric mixture with unit covariances: :math:`\mathrm{EM}(\mu) =
    \mathbb E[X\tanh(\mu^\top X)]` (the E-step's responsibility is :math:`w = \sigma(2\mu^\top x)` and
    :math:`2w - 1 = \tanh(\mu^\top x)`).

    Population version (``mu_star`` given): with :math:`u \sim \mathsf N(\mu^\top\mu^*, \|\mu\|^2)` and Stein's
    lemma, :math:`\mathrm{EM}(\mu) = \mu^*\,\mathbb E\tanh(u) + \mu\,\mathbb E[1 - \tanh^2 u]`, by Gauss-Hermite
    quadrature; its fixed points include :math:`\pm\mu^*`.  Empirical version (``x`` (n, d) given): the sample mean
    of :math:`x\tanh(\mu^\top x)`.

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The current parameter, a finite vector (d,).
    mu_star : array_like or torch.Tensor, optional
        The true mean (d,), for the population step.
    x : torch.Tensor, optional
        A sample (n, d), for the empirical step.  Exactly one of ``mu_star`` and ``x`` must be given.
    n_nodes : int
        Gauss-Hermite nodes of the population step, >= 2 (default 160).

    Returns
    -------
    torch.Tensor
        :math:`\mathrm{EM}(\mu)`, shape (d,).
    """
    mu = _vector("mu", mu)
    if (mu_star is None) == (x is None):
        raise ValueError("give exactly one of mu_star (population EM) and x (empirical EM)")
    if x is not None:
        x = _checks.points(x, "x", mu.shape[0])
        return (x * torch.tanh(x @ mu.to(x))[:, None]).mean(0)
    mu_star = _vector("mu_star", mu_star, mu.shape[0]).to(mu.dtype)
    g, w = _gauss_hermite(_checks.positive_int(n_nodes, "n_nodes", 2, floats=True))
    u = mu @ mu_star + torch.linalg.vector_norm(mu) * g.to(mu.dtype)
    th = torch.tanh(u)
    w = w.to(mu.dtype)
    return mu_star * (w * th).sum() + mu * (w * (1 - th**2)).sum()


def power_direction(mu, second_moment) -> torch.Tensor:
    r"""The large-t limit of the negative DDPM gradient (up to the factor :math:`4\alpha^4`):
    :math:`(\Sigma - I)\mu - \|\mu\|^2\mu`, a power-iteration step on :math:`\Sigma = \mathbb E[X_0X_0^\top]`
    with an Oja-type shrinkage.  ``second_moment`` is :math:`\Sigma` (d, d), population or empirical.

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The current parameter, a finite vector (d,).
    second_moment : array_like or torch.Tensor
        :math:`\Sigma`, symmetric, shape (d, d).
    """
    mu = _vector("mu", mu)
    S = torch.as_tensor(second_moment).to(mu.dtype)
    d = mu.shape[0]
    if S.shape != (d, d):
        raise ValueError(f"second_moment must have shape ({d}, {d}), got {tuple(S.shape)}")
    if not torch.allclose(S, S.T, atol=1e-10 * (1 + float(S.abs().max()))):
        raise ValueError("second_moment must be symmetric")
    return S @ mu - mu - (mu @ mu) * mu


def power_iteration(second_moment, v0, n_iter: int) -> torch.Tensor:
    r"""Plain power iteration :math:`v \leftarrow \Sigma v/\|\Sigma v\|`: the unit iterates, shape (n_iter + 1, d).

    Converges to the top eigenvector of :math:`\Sigma` (for :math:`\Sigma = I + \mu^*\mu^{*\top}`, to
    :math:`\pm\mu^*/\|\mu^*\|`) at the rate :math:`(\lambda_2/\lambda_1)^k` in angle.

    Parameters
    ----------
    second_moment : array_like or torch.Tensor
        :math:`\Sigma`, shape (d, d).
    v0 : array_like or torch.Tensor
        The start, a finite non-zero vector (d,).
    n_iter : int
        Number of iterations, >= 0.
    """
    v = _vector("v0", v0, nonzero=True)
    S = torch.as_tensor(second_moment).to(v.dtype)
    if S.shape != (v.shape[0], v.shape[0]):
        raise ValueError(f"second_moment must have shape ({v.shape[0]}, {v.shape[0]}), got {tuple(S.shape)}")
    n_iter = _checks.positive_int(n_iter, "n_iter", 0, floats=True)
    v = v / torch.linalg.vector_norm(v)
    out = [v]
    for _ in range(n_iter):
        v = S @ v
        nrm = torch.linalg.vector_norm(v)
        if nrm == 0:
            raise ValueError("power iteration reached the null space of second_moment")
        v = v / nrm
        out.append(v)
    return torch.stack(out)


def gradient_descent(mu0, t, *, lr: float, n_steps: int, mu_star=None, x0: torch.Tensor | None = None,
                     sde: VPSDE | None = None, generator: torch.Generator | None = None,
                     n_nodes: int = 160, progress: bool = False) -> torch.Tensor:
    r"""Gradient descent on the DDPM objective in :math:`\mu` at a single time t; returns the iterates (n_steps+1, d).

    With ``mu_star`` it descends the exact population loss (:func:`population_gradient`); with ``x0`` (n, d) it
    descends the empirical :func:`mixture_dsm_loss` on that sample, drawing fresh noise at every step (``generator``).
    The gradient scales like :math:`\alpha^4` at large t; choose ``lr`` accordingly (e.g. :math:`\eta/\alpha^4`).

    Parameters
    ----------
    mu0 : array_like or torch.Tensor
        The start, a finite vector (d,).
    t : float
        One time in (0, T].
    lr : float
        The step size, positive.
    n_steps : int
        Number of steps, >= 0.
    mu_star : array_like or torch.Tensor, optional
        The true mean (d,), non-zero: descend the population loss.
    x0 : torch.Tensor, optional
        A sample (n, d): descend the empirical loss.  Exactly one of ``mu_star`` and ``x0`` must be given.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the noise of the empirical loss.
    n_nodes : int
        Gauss-Hermite nodes per axis of the population gradient (default 160).
    progress : bool
        Show a progress bar (default False).

    Raises
    ------
    FloatingPointError
        If the iterates stop being finite (lower ``lr``).
    """
    generator = _checks.generator(generator)
    sde = _checks.sde_or_default(sde)
    mu = _vector("mu0", mu0).detach().to(torch.float64).clone()
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr}")
    n_steps = _checks.positive_int(n_steps, "n_steps", 0, floats=True)
    if (mu_star is None) == (x0 is None):
        raise ValueError("give exactly one of mu_star (population objective) and x0 (empirical DSM objective)")
    if x0 is not None:
        x0 = _checks.points(x0, "x0", mu.shape[0])
    else:
        mu_star = _vector("mu_star", mu_star, mu.shape[0], nonzero=True)
    _one_time(sde, t)
    from tqdm.std import trange  # plain text bars: tqdm.auto warns in kernels without ipywidgets

    out = [mu.clone()]
    for _ in trange(n_steps, disable=not progress, desc="GD on the DDPM loss"):
        if x0 is None:
            grad = population_gradient(mu, mu_star, t, sde=sde, n_nodes=n_nodes)
        else:
            m = mu.clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(mixture_dsm_loss(m, x0, t, generator=generator, sde=sde), m)
        mu = mu - lr * grad
        if not torch.all(torch.isfinite(mu)):
            raise FloatingPointError("gradient descent diverged: lower lr")
        out.append(mu.clone())
    return torch.stack(out)


# -- comparing the steps ----------------------------------------------------------------------------------------------
def cosine(u, v) -> float:
    """The cosine of the angle between two non-zero vectors.

    Parameters
    ----------
    u, v : array_like or torch.Tensor
        Finite non-zero vectors of one length.
    """
    u = _vector("u", u, nonzero=True)
    v = _vector("v", v, u.shape[0], nonzero=True).to(u.dtype)
    return float(u @ v / (torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v)))


def step_alignment(mu, mu_star, t, *, sde: VPSDE | None = None, n_nodes: int = 160) -> dict[str, float]:
    r"""Cosines between one gradient step on the population DDPM objective, :math:`-\nabla L_t(\mu)`, and

    * ``"power"``: the power-iteration direction :func:`power_direction` with :math:`\Sigma = I + \mu^*\mu^{*\top}`;
    * ``"em"``: the EM step :math:`\mathrm{EM}(\mu) - \mu` (:func:`em_update`);
    * ``"power_vs_em"``: the two classical steps with each other (how different the reference directions are).

    :cite:p:`shah2023learning`: ``"power"`` tends to 1 as t grows, ``"em"`` is close to 1 at small t for well
    separated components.

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The current parameter, a finite non-zero vector (d,).
    mu_star : array_like or torch.Tensor
        The true mean, a finite non-zero vector (d,).
    t : float
        One time in (0, T].
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    n_nodes : int
        Gauss-Hermite nodes per axis (default 160).

    Returns
    -------
    dict of str to float
        The cosines ``"power"``, ``"em"`` and ``"power_vs_em"``.
    """
    mu = _vector("mu", mu, nonzero=True).detach().to(torch.float64)
    mu_star = _vector("mu_star", mu_star, mu.shape[0], nonzero=True).detach().to(torch.float64)
    g = -population_gradient(mu, mu_star, t, sde=sde, n_nodes=n_nodes)
    S = torch.eye(mu.shape[0], dtype=torch.float64) + torch.outer(mu_star, mu_star)
    d_pow = power_direction(mu, S)
    d_em = em_update(mu, mu_star, n_nodes=n_nodes) - mu
    return {"power": cosine(g, d_pow), "em": cosine(g, d_em), "power_vs_em": cosine(d_pow, d_em)}
