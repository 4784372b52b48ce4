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

**Finite samples.**  :cite:p:`shah2023learning` prove that gradient descent on the *empirical* DDPM objective, a
phase at a large noise level and then one at a small noise level, from a random start, recovers :math:`\mu^*` (up
to sign) to accuracy :math:`\epsilon` from a number of samples polynomial in :math:`d` and :math:`1/\epsilon`.
:func:`learn_mixture` runs that algorithm to convergence on :func:`integrated_dsm_loss`, the empirical loss with its
noise integrated out exactly.  The limit is an M-estimator whose error has the exact asymptotic constant
:math:`n\,\mathbb E\|\hat\mu_t - \mu^*\|^2 \to {\rm tr}\,V_t` (:func:`dsm_asymptotic_covariance`), above the
maximum-likelihood (EM fixed point) constant :math:`{\rm tr}\,I(\mu^*)^{-1}` (:func:`fisher_information`); errors
are measured up to sign (:func:`error_up_to_sign`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    "error_up_to_sign",
    "integrated_dsm_loss",
    "MixtureFit",
    "learn_mixture",
    "fisher_information",
    "dsm_asymptotic_covariance",
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


# -- finite samples ---------------------------------------------------------------------------------------------------
def error_up_to_sign(mu_hat, mu_star) -> float:
    r"""The estimation error up to the unidentifiable sign, :math:`\min(\|\hat\mu - \mu^*\|, \|\hat\mu + \mu^*\|)`.

    The mixture :math:`\tfrac12\mathsf N(\mu, I) + \tfrac12\mathsf N(-\mu, I)` is the same law for :math:`\pm\mu`.

    Parameters
    ----------
    mu_hat : array_like or torch.Tensor
        The estimate, a finite vector (d,).
    mu_star : array_like or torch.Tensor
        The true mean, a finite vector (d,).
    """
    mu_hat = _vector("mu_hat", mu_hat).detach().to(torch.float64)
    mu_star = _vector("mu_star", mu_star, mu_hat.shape[0]).detach().to(torch.float64)
    return float(torch.minimum(torch.linalg.vector_norm(mu_hat - mu_star), torch.linalg.vector_norm(mu_hat + mu_star)))


def _dsm_terms(c: torch.Tensor, q: torch.Tensor, alpha, h, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""The :math:`\mu`-dependent part of the noise-averaged DDPM loss of one point, elementwise in (c, q):
    :math:`F(c, q) = \mathbb E_g[\alpha^2 q(2 - \tanh^2 a) - 2a\tanh a]`, :math:`a = \alpha^2 c + \alpha\sqrt{hq}\,g`,
    with :math:`c = \mu^\top x_0`, :math:`q = \|\mu\|^2` and Gauss-Hermite nodes ``g``, weights ``w``."""
    a = alpha**2 * c[..., None] + alpha * torch.sqrt(h * q)[..., None] * g
    ta = torch.tanh(a)
    return ((alpha**2 * q[..., None] * (2 - ta**2) - 2 * a * ta) * w).sum(-1)


def _dsm_gradient(mu: torch.Tensor, x0: torch.Tensor, alpha, h, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""The gradient of :func:`integrated_dsm_loss` in closed form (no autograd: the inner loop of
    :func:`learn_mixture`): :math:`\frac1n\sum_i F_c(c_i, q)\,x_0^i + 2\,\overline{F_q}\,\mu` with, for the
    integrand :math:`\phi = \alpha^2q(2 - T^2) - 2aT`, :math:`T = \tanh a`, :math:`T' = 1 - T^2`,
    :math:`\phi_a = -2[(\alpha^2qT + a)T' + T]`, :math:`F_c = \alpha^2\mathbb E\phi_a` and
    :math:`F_q = \alpha^2(1 + \mathbb ET') + \alpha\sqrt h\,\mathbb E[\phi_a g]/(2\sqrt q)`."""
    q = mu @ mu
    sq, sh = torch.sqrt(q), torch.sqrt(h)
    a = (alpha**2 * (x0 @ mu))[:, None] + (alpha * sh * sq) * g
    ta = 2 * torch.sigmoid(2 * a) - 1  # tanh, computed faster (float64 tanh is slow on CPUs)
    dt = 1 - ta * ta
    half = torch.addcmul(ta, torch.add(a, ta, alpha=float(alpha**2 * q)), dt)  # -phi_a / 2, in place of phi_a
    f_c = -2 * alpha**2 * (half @ w)
    f_q = alpha**2 * (1 + dt @ w) - (alpha * sh / sq) * (half @ (w * g))
    return (f_c @ x0) / x0.shape[0] + 2 * f_q.mean() * mu


def integrated_dsm_loss(mu, x0: torch.Tensor, t, *, sde: VPSDE | None = None, n_nodes: int = 24) -> torch.Tensor:
    r"""The empirical DDPM loss of the mixture's score family with its noise integrated out exactly:
    :math:`\hat L_t(\mu) = \frac1n\sum_i\mathbb E_\varepsilon\|s_\mu(\alpha x_0^i + \sqrt h\varepsilon, t)
    + \varepsilon/\sqrt h\|^2`, the expectation of :func:`mixture_dsm_loss` over its noise for the sample ``x0``.

    It is the limit of :func:`mixture_dsm_loss` with infinitely many noise draws per data point: a deterministic
    function of the sample, whose minimiser is a finite-sample estimator of :math:`\pm\mu^*`.  By Stein's lemma
    (:math:`\mathbb E[s(x_t)\cdot\varepsilon] = \sqrt h\,\mathbb E[\nabla\cdot s(x_t)]`),

    .. math::

        \mathbb E_\varepsilon\|s_\mu(x_t) + \varepsilon/\sqrt h\|^2
        = \mathbb E_\varepsilon\big[\|s_\mu(x_t)\|^2 + 2\nabla\cdot s_\mu(x_t)\big] + d/h
        = \mathbb E_g\big[\alpha^2\|\mu\|^2(2 - \tanh^2 a) - 2a\tanh a\big]
          + \alpha^2\|x_0\|^2 + hd - 2d + d/h,

    since :math:`\|s_\mu(x)\|^2 = \alpha^2\|\mu\|^2\tanh^2 a - 2a\tanh a + \|x\|^2` and
    :math:`\nabla\cdot s_\mu(x) = \alpha^2\|\mu\|^2(1 - \tanh^2 a) - d` with :math:`a = \alpha\mu^\top x`, and given
    :math:`x_0` the only random quantity, :math:`a = \alpha^2\mu^\top x_0 + \alpha\sqrt h\|\mu\|\,g` with
    :math:`g \sim \mathsf N(0, 1)`, is one-dimensional: a Gauss-Hermite sum with ``n_nodes`` nodes per point.
    Differentiable in ``mu`` (not at :math:`\mu = 0`, where :math:`\|\mu\|` is not).

    Parameters
    ----------
    mu : array_like or torch.Tensor
        The parameter :math:`\mu`, a finite vector (d,).
    x0 : torch.Tensor
        Data, shape (n, d).
    t : float
        One time in (0, T].
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    n_nodes : int
        Gauss-Hermite nodes of the noise expectation, >= 2 (default 24).

    Returns
    -------
    torch.Tensor
        The loss, a scalar.
    """
    sde = _checks.sde_or_default(sde)
    mu = _vector("mu", mu)
    x0 = _checks.points(x0, "x0", mu.shape[0])
    n_nodes = _checks.positive_int(n_nodes, "n_nodes", 2, floats=True)
    a_t, h_t = _one_time(sde, t)
    alpha, h = a_t.to(x0), h_t.to(x0)
    g, w = (v.to(x0) for v in _gauss_hermite(n_nodes))
    mu = mu.to(x0)
    d = x0.shape[1]
    q = (mu @ mu).expand(x0.shape[0])
    f = _dsm_terms(x0 @ mu, q, alpha, h, g, w)
    return (f + alpha**2 * (x0**2).sum(1)).mean() + h * d - 2 * d + d / h


@dataclass(frozen=True)
class MixtureFit:
    r"""The result of :func:`learn_mixture`.

    Attributes
    ----------
    mu : torch.Tensor
        The estimate of :math:`\pm\mu^*` at the end of the small-noise phase (d,).
    mu_large : torch.Tensor
        The iterate at the end of the large-noise phase (d,).
    steps_large : int
        The gradient steps of the large-noise phase.
    steps_small : int
        The gradient steps of the small-noise phase.
    converged : bool
        Whether the small-noise phase met its tolerance within ``max_steps_small`` steps.
    """

    mu: torch.Tensor
    mu_large: torch.Tensor
    steps_large: int
    steps_small: int
    converged: bool


def learn_mixture(x0: torch.Tensor, *, t_large: float = 4.0, t_small: float = 0.05, mu0=None,
                  lr_large: float = 0.04, lr_small: float = 0.5, steps_large: int = 20,
                  max_steps_small: int = 1000, tol: float = 1e-10, noise_draws: int | None = None,
                  generator: torch.Generator | None = None, sde: VPSDE | None = None,
                  n_nodes: int = 16) -> MixtureFit:
    r"""Learn the mean of the symmetric mixture from a sample by the two-phase gradient descent of
    :cite:p:`shah2023learning` on the empirical DDPM objective.

    Phase 1 runs ``steps_large`` gradient steps at the large noise level ``t_large`` from a random start (there the
    step is a power-iteration step on the sample's second moment, :func:`power_direction`, and finds the direction
    of :math:`\mu^*`); phase 2 continues at the small noise level ``t_small`` (there the step is close to an EM step)
    until the step is shorter than ``tol`` :math:`\cdot\max(1, \|\mu\|)`, i.e. to a stationary point of the
    empirical objective at ``t_small`` (its minimiser near :math:`\pm\mu^*`).  The gradient at ``t_large`` is of
    order :math:`\alpha^4`, so the step there is ``lr_large`` :math:`/\alpha(t_{\rm large})^4`.  With the noise
    integrated out the gradient is computed in closed form (that of :func:`integrated_dsm_loss` with the same
    ``n_nodes``).

    The objective's noise :math:`\varepsilon` is handled in one of two ways, each a genuine finite-sample objective
    (a fixed function of the sample, so that gradient descent converges rather than fluctuates):

    * ``noise_draws=None`` (default): integrated out exactly, :func:`integrated_dsm_loss`, the limit of infinitely
      many draws per point; the minimiser's error is then the sample's alone, with the asymptotic covariance
      :func:`dsm_asymptotic_covariance`;
    * ``noise_draws=m``: :math:`m` draws per point, drawn once per phase with ``generator`` and kept fixed
      (:func:`mixture_dsm_loss` on the sample repeated :math:`m` times).  Their variance grows like :math:`1/(mh)`
      as :math:`t \to 0` and adds to the error unless :math:`m \gg 1/h`.

    Parameters
    ----------
    x0 : torch.Tensor
        The sample, shape (n, d), floating.
    t_large : float
        The large noise level, in (0, T] (default 4).
    t_small : float
        The small noise level, in (0, ``t_large``) (default 0.05).
    mu0 : array_like or torch.Tensor, optional
        The start, a finite non-zero vector (d,); by default a uniformly random direction of norm 1/2 drawn with
        ``generator``.
    lr_large : float
        The step of phase 1 in units of :math:`\alpha(t_{\rm large})^{-4}`, positive (default 0.04; the
        population Hessian at :math:`\mu^*` tends to :math:`4\alpha^4(\|\mu^*\|^2 I + \mu^*\mu^{*\top})` at large
        t, so the step must stay below :math:`1/(4\|\mu^*\|^2)`).
    lr_small : float
        The step of phase 2, positive (default 0.5; the population Hessian at :math:`\mu^*` is about
        :math:`2I` at :math:`t = 0.05` for :math:`\|\mu^*\| = 2`).
    steps_large : int
        The number of steps of phase 1, >= 0 (default 20).
    max_steps_small : int
        The most steps of phase 2, >= 1 (default 1000).
    tol : float
        The convergence tolerance of phase 2 on the step length, relative to :math:`\max(1, \|\mu\|)`, positive
        (default 1e-10).
    noise_draws : int, optional
        None (default) to integrate the noise out, or the number m >= 1 of fixed noise draws per point.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the random start and of the fixed noise draws.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    n_nodes : int
        Gauss-Hermite nodes of the integrated noise, >= 2 (default 16; relative error of the gradient near
        :math:`\mu^*` below 1e-9 at both default times).

    Returns
    -------
    MixtureFit
        The estimate and the step counts; ``converged`` is False when phase 2 ran out of steps.

    Raises
    ------
    FloatingPointError
        If the iterates stop being finite (lower the steps).
    """
    generator = _checks.generator(generator)
    sde = _checks.sde_or_default(sde)
    x0 = _checks.points(x0, "x0", min_n=1)
    n, d = x0.shape
    x0 = x0.detach().to(torch.float64)
    _one_time(sde, t_large), _one_time(sde, t_small)
    t_large, t_small = float(t_large), float(t_small)
    if not t_small < t_large:
        raise ValueError(f"t_small must be below t_large, got t_small = {t_small}, t_large = {t_large}")
    lrs = {}
    for name, value in [("lr_large", lr_large), ("lr_small", lr_small), ("tol", tol)]:
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value}")
        lrs[name] = value
    steps_large = _checks.positive_int(steps_large, "steps_large", 0, floats=True)
    max_steps_small = _checks.positive_int(max_steps_small, "max_steps_small", 1, floats=True)
    n_nodes = _checks.positive_int(n_nodes, "n_nodes", 2, floats=True)
    if noise_draws is not None:
        noise_draws = _checks.positive_int(noise_draws, "noise_draws", 1)
    if mu0 is None:
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        mu = 0.5 * v / torch.linalg.vector_norm(v)
    else:
        mu = _vector("mu0", mu0, d, nonzero=True).detach().to(torch.float64).clone()

    g, w = _gauss_hermite(n_nodes)

    def objective(t):
        """The gradient of the phase's objective, as a function of mu."""
        if noise_draws is None:
            alpha, h = _one_time(sde, t)
            return lambda m: _dsm_gradient(m, x0, alpha.to(x0), h.to(x0), g, w)
        xs = x0.repeat(noise_draws, 1)
        eps = torch.randn(xs.shape, generator=generator, dtype=torch.float64)

        def gradient(m):
            m = m.clone().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(mixture_dsm_loss(m, xs, t, eps=eps, sde=sde), m)[0]

        return gradient

    def step(gradient, mu, lr):
        new = mu - lr * gradient(mu)
        if not torch.all(torch.isfinite(new)):
            raise FloatingPointError("gradient descent diverged: lower the step")
        return new

    gradient = objective(t_large)
    lr = lrs["lr_large"] / float(sde.alpha(t_large)) ** 4
    for _ in range(steps_large):
        mu = step(gradient, mu, lr)
    mu_large = mu.clone()
    gradient = objective(t_small)
    converged = False
    k = 0
    while k < max_steps_small:
        new = step(gradient, mu, lrs["lr_small"])
        k += 1
        done = float(torch.linalg.vector_norm(new - mu)) <= lrs["tol"] * max(1.0, float(torch.linalg.vector_norm(mu)))
        mu = new
        if done:
            converged = True
            break
    return MixtureFit(mu, mu_large, steps_large, k, converged)


def fisher_information(mu_star, *, n_nodes: int = 160) -> torch.Tensor:
    r"""The Fisher information :math:`I(\mu^*)` of the symmetric mixture in its mean, (d, d).

    The log-density :math:`\log p_\mu(x) = \log\cosh(\mu^\top x) - \|\mu\|^2/2 + {\rm const}(x)` has the score
    :math:`\nabla_\mu\log p_\mu(x) = \tanh(\mu^\top x)\,x - \mu`, and
    :math:`I = \mathbb E[(\tanh(\mu^{*\top}X)X - \mu^*)(\tanh(\mu^{*\top}X)X - \mu^*)^\top]`.  Write
    :math:`X = Y u + X_\perp` with :math:`u = \mu^*/r`, :math:`r = \|\mu^*\|`: given the component,
    :math:`X_\perp \sim \mathsf N(0, I - uu^\top)` is independent of :math:`Y`, so the cross terms vanish and

    .. math::

        I = I_\parallel\,uu^\top + I_\perp\,(I_d - uu^\top),\qquad
        I_\parallel = \mathbb E[(Y\tanh(rY) - r)^2],\quad I_\perp = \mathbb E[\tanh^2(rY)],

    with :math:`Y \sim \mathsf N(r, 1)` (both integrands are even in :math:`Y`, so one component suffices), by
    Gauss-Hermite quadrature.  The maximum-likelihood estimator (the fixed point of empirical EM,
    :func:`em_update`) has :math:`n\,\mathbb E\|\hat\mu - \mu^*\|^2 \to {\rm tr}\,I^{-1}
    = 1/I_\parallel + (d-1)/I_\perp` (up to sign), the Cramer-Rao bound for every regular estimator.

    Parameters
    ----------
    mu_star : array_like or torch.Tensor
        The true mean, a finite non-zero vector (d,).
    n_nodes : int
        Gauss-Hermite nodes, >= 2 (default 160).

    Returns
    -------
    torch.Tensor
        :math:`I(\mu^*)`, float64, shape (d, d).
    """
    mu_star = _vector("mu_star", mu_star, nonzero=True).detach().to(torch.float64)
    g, w = _gauss_hermite(_checks.positive_int(n_nodes, "n_nodes", 2, floats=True))
    r = torch.linalg.vector_norm(mu_star)
    y = r + g
    th = torch.tanh(r * y)
    i_par = (w * (y * th - r) ** 2).sum()
    i_perp = (w * th**2).sum()
    return _radial(mu_star / r, i_par, i_perp)


def _radial(u: torch.Tensor, along: torch.Tensor, across: torch.Tensor) -> torch.Tensor:
    """The matrix ``along`` u u^T + ``across`` (I - u u^T) for a unit vector u."""
    uu = torch.outer(u, u)
    return along * uu + across * (torch.eye(u.shape[0], dtype=u.dtype) - uu)


def dsm_asymptotic_covariance(mu_star, t, *, sde: VPSDE | None = None, n_nodes: int = 160,
                              n_nodes_noise: int = 40) -> torch.Tensor:
    r"""The asymptotic covariance :math:`V_t` of the minimiser of the noise-integrated empirical DDPM loss at one
    time t (:func:`integrated_dsm_loss`): :math:`\sqrt n(\hat\mu_t \mp \mu^*) \to \mathsf N(0, V_t)`, (d, d).

    The minimiser is an M-estimator, so :math:`V_t = A^{-1}BA^{-1}` with :math:`A` the Hessian of the population
    loss at :math:`\mu^*` and :math:`B` the covariance of one point's gradient.  One point's loss depends on
    :math:`\mu` through :math:`c = \mu^\top x_0` and :math:`q = \|\mu\|^2` only, :math:`F(c, q)` (see
    :func:`integrated_dsm_loss`), so its gradient is :math:`F_c\,x_0 + 2F_q\,\mu`.  With
    :math:`x_0 = Yu + X_\perp`, :math:`u = \mu^*/r`, both matrices are radial (:math:`a_\parallel uu^\top +
    a_\perp(I - uu^\top)`), with, at :math:`c = rY`, :math:`q = r^2` and :math:`Y \sim \mathsf N(r, 1)`,

    .. math::

        B_\parallel = \mathbb E[(F_cY + 2rF_q)^2],\quad B_\perp = \mathbb E[F_c^2],\quad
        A_\parallel = \mathbb E[F_{cc}Y^2 + 4rF_{cq}Y + 4r^2F_{qq} + 2F_q],\quad
        A_\perp = \mathbb E[F_{cc} + 2F_q],

    so :math:`{\rm tr}\,V_t = B_\parallel/A_\parallel^2 + (d-1)B_\perp/A_\perp^2`.  The derivatives of
    :math:`F` come from autograd, the expectations from Gauss-Hermite quadrature (``n_nodes`` in :math:`Y`,
    ``n_nodes_noise`` in the noise).  :math:`V_t \succeq I(\mu^*)^{-1}` (:func:`fisher_information`): the DDPM
    estimator is not the maximum-likelihood one.  As :math:`t \to 0` it tends to the score-matching estimator
    of :cite:p:`hyvarinen2005estimation` (the noise-averaged loss tends to :math:`\|s_\mu\|^2 + 2\nabla\cdot s_\mu`).

    Parameters
    ----------
    mu_star : array_like or torch.Tensor
        The true mean, a finite non-zero vector (d,).
    t : float
        One time in (0, T].
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    n_nodes : int
        Gauss-Hermite nodes in the data direction, >= 2 (default 160).
    n_nodes_noise : int
        Gauss-Hermite nodes in the noise, >= 2 (default 40).

    Returns
    -------
    torch.Tensor
        :math:`V_t`, float64, shape (d, d).
    """
    mu_star = _vector("mu_star", mu_star, nonzero=True).detach().to(torch.float64)
    a_t, h_t = _one_time(_checks.sde_or_default(sde), t)
    alpha, h = a_t.to(torch.float64), h_t.to(torch.float64)
    gy, wy = _gauss_hermite(_checks.positive_int(n_nodes, "n_nodes", 2, floats=True))
    g, w = _gauss_hermite(_checks.positive_int(n_nodes_noise, "n_nodes_noise", 2, floats=True))
    r = torch.linalg.vector_norm(mu_star)
    y = r + gy
    with torch.enable_grad():
        c = (r * y).requires_grad_(True)
        q = torch.full_like(y, float(r) ** 2).requires_grad_(True)
        f = _dsm_terms(c, q, alpha, h, g, w)
        # F depends on (c_k, q_k) alone, so the gradients of sums are the elementwise derivatives.
        fc, fq = torch.autograd.grad(f.sum(), (c, q), create_graph=True)
        fcc, fcq = torch.autograd.grad(fc.sum(), (c, q), retain_graph=True)
        (fqq,) = torch.autograd.grad(fq.sum(), q)
    fc, fq, fcc, fcq, fqq = (v.detach() for v in (fc, fq, fcc, fcq, fqq))

    def mean(v):
        return (wy * v).sum()

    b_par = mean((fc * y + 2 * r * fq) ** 2)
    b_perp = mean(fc**2)
    a_par = mean(fcc * y**2 + 4 * r * fcq * y + 4 * r**2 * fqq + 2 * fq)
    a_perp = mean(fcc + 2 * fq)
    return _radial(mu_star / r, b_par / a_par**2, b_perp / a_perp**2)
