r"""Small spin models for the computational hardness of sampling: exact, mean-field and Glauber.

Review Section 4.3 (*Computational efficiency*; book chapter *Stochastic localization and computational hardness*).
A Gibbs measure on the hypercube,

.. math:: \mu(\sigma) = \frac{1}{Z}\,e^{-\beta H(\sigma)},\qquad \sigma \in \{-1, +1\}^N,

is a data law in :math:`\mathbb R^N` like any other, and a diffusion model samples it if it can compute the
posterior mean of the forward process.  For spins the SL posterior is a **tilted Gibbs measure**: since
:math:`\|\sigma\|^2 = N` is constant, :math:`\exp(-\|y - s\sigma\|^2/2s) \propto e^{\langle\sigma, y\rangle}` and

.. math::

    \mathbb P(\sigma \mid Y_s = y) \propto \mu(\sigma)\,e^{\langle \sigma, y\rangle} =: \mu_y(\sigma),\qquad
    m_s(y) = \mathbb E_{\mu_y}[\sigma]\quad\text{(no explicit dependence on } s\text{)},

and the OU score follows by the time change of :mod:`diffnotes.localization`: :math:`X_t = x` is the field
:math:`y = c(t)\,x`, :math:`c = \alpha/h`, and :math:`\nabla\log p_t(x) = (\alpha(t)\,m(c x) - x)/h(t)`.  Sampling by
diffusion is therefore as hard as computing magnetisations of tilted measures :cite:p:`elalaoui2022sampling`;
the physics heuristic of :cite:t:`ghio2024sampling` takes that hardness as the proxy, and locates it at first-order
phase transitions of :math:`\mu_y` along the denoising path.

What this module provides, for :math:`N \le 16` by enumeration of the :math:`2^N` configurations (the ground truth):
the Gibbs probabilities and magnetisation law, exact samples, the exact tilted mean (SL posterior mean) and OU score;
and the two approximations that practical algorithms use in their place: a **mean-field** (naive, or TAP for
pairwise models) fixed point for the tilted mean, and **Glauber** (heat-bath) dynamics, the standard MCMC.

Models: :class:`CurieWeiss` (the fully connected ferromagnet :math:`H = -N m^p/p - BNm`, :math:`m = \frac1N\sum_i
\sigma_i`; :math:`p = 2` is the Curie-Weiss model with its continuous transition at :math:`\beta = 1`, :math:`p \ge 3`
the p-spin ferromagnet with a first-order transition), whose exact tilted mean is also computed for any N by a
dynamic programme over the magnetisation; and :class:`SherringtonKirkpatrick`, the spin glass with Gaussian couplings
:math:`J_{ij} = g_{ij}/\sqrt N` of the hardness results of :cite:t:`elalaoui2022sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import _checks
from .sde import VPSDE

__all__ = ["MAX_ENUMERATION", "all_configurations", "tap_mean_field", "SpinModel", "CurieWeiss",
           "SherringtonKirkpatrick"]

#: Largest N for which configurations are enumerated (2^16 = 65 536 states).
MAX_ENUMERATION = 16

#: Rows of fields processed at once by the enumeration (memory: block x 2^N float64 numbers).
_BLOCK = 256

#: Stand-in for log 0 in the dynamic programme of :meth:`CurieWeiss.tilted_mean`.
_LOG_ZERO = -1e30


def _int(name, value, lo, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _real(name, value, *, nonneg=False) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number, got {value!r}") from err
    if not math.isfinite(value) or (nonneg and value < 0):
        raise ValueError(f"{name} must be finite{' and >= 0' if nonneg else ''}, got {value}")
    return value


def all_configurations(N: int) -> torch.Tensor:
    r"""All :math:`2^N` configurations of :math:`\{-1,+1\}^N`, shape (2^N, N), float64; row r is the binary expansion
    of r (bit i set means :math:`\sigma_i = +1`).  N must lie in [1, 16].

    Parameters
    ----------
    N : int
        Number of spins, an integer in [1, 16] (:data:`MAX_ENUMERATION`).
    """
    N = _int("N", N, 1, MAX_ENUMERATION)
    r = torch.arange(2**N)
    bits = (r[:, None] >> torch.arange(N)[None, :]) & 1
    return (2 * bits - 1).to(torch.float64)


class SpinModel:
    r"""A Gibbs measure :math:`\mu(\sigma) \propto e^{-\beta H(\sigma)}` on :math:`\{-1,+1\}^N`.

    Subclasses define :meth:`energy` and :meth:`flip_log_odds` (and may override the exact methods with faster
    ones); everything else -- enumeration, tilted means, the OU score, Glauber dynamics -- is generic.

    Parameters
    ----------
    N : int
        Number of spins, an integer >= 1 (the exact methods by enumeration need N <= 16).
    beta : float
        Inverse temperature, finite and >= 0.
    """

    def __init__(self, N: int, beta: float):
        self.N = _int("N", N, 1)
        self.beta = _real("beta", beta, nonneg=True)
        self._configs = None
        self._log_w = None

    # -- the model -------------------------------------------------------------------------------------------
    def energy(self, sigma: torch.Tensor) -> torch.Tensor:
        r"""The Hamiltonian :math:`H(\sigma)` of each row, shape (n,).

        Parameters
        ----------
        sigma : torch.Tensor
            Spins, -1 or +1, shape (n, N).
        """
        raise NotImplementedError

    def flip_log_odds(self, sigma: torch.Tensor, i: int) -> torch.Tensor:
        r"""The conditional log-odds of spin i, one per row (n,):

        :math:`\ell_i = \log \mu(\sigma_i = +1 \mid \sigma_{-i}) / \mu(\sigma_i = -1 \mid \sigma_{-i})`.

        Parameters
        ----------
        sigma : torch.Tensor
            Spins, -1 or +1, shape (n, N) (the value of spin i is ignored).
        i : int
            The spin, in [0, N).
        """
        plus, minus = sigma.clone(), sigma.clone()
        plus[:, i], minus[:, i] = 1.0, -1.0
        return -self.beta * (self.energy(plus) - self.energy(minus))

    def _check_sigma(self, sigma) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor) or sigma.ndim != 2 or sigma.shape[1] != self.N:
            raise ValueError(f"spins must be a tensor of shape (n, {self.N}), got {getattr(sigma, 'shape', sigma)}")
        sigma = sigma.to(torch.float64)
        if not torch.all((sigma == 1) | (sigma == -1)):
            raise ValueError("spins must be -1 or +1")
        return sigma

    def _check_field(self, y, name: str = "the field y") -> torch.Tensor:
        return _checks.points(y, name, self.N).to(torch.float64)

    # -- exact computations by enumeration ------------------------------------------------------------------
    def _enumerate(self):
        if self.N > MAX_ENUMERATION:
            raise ValueError(f"enumeration needs N <= {MAX_ENUMERATION} (2^N states), this model has N = {self.N}")
        if self._configs is None:
            self._configs = all_configurations(self.N)
            self._log_w = -self.beta * self.energy(self._configs)
        return self._configs, self._log_w

    def configurations(self) -> torch.Tensor:
        """All :math:`2^N` configurations (rows), in the order of :meth:`probabilities`."""
        return self._enumerate()[0]

    def probabilities(self) -> torch.Tensor:
        r"""Exact Gibbs probabilities :math:`\mu(\sigma)` of :meth:`configurations`, shape (2^N,)."""
        return torch.softmax(self._enumerate()[1], dim=0)

    def log_partition(self) -> float:
        r""":math:`\log Z = \log\sum_\sigma e^{-\beta H(\sigma)}`, by enumeration."""
        return float(torch.logsumexp(self._enumerate()[1], dim=0))

    def magnetization_law(self) -> tuple[np.ndarray, np.ndarray]:
        r"""Exact law of :math:`m = \frac1N\sum_i\sigma_i`: its N + 1 values :math:`-1, -1 + 2/N, \dots, 1` and their
        probabilities (by enumeration here; :class:`CurieWeiss` has a closed form)."""
        configs, _ = self._enumerate()
        k = ((configs.sum(1) + self.N) / 2).round().long()
        probs = torch.zeros(self.N + 1, dtype=torch.float64).index_add_(0, k, self.probabilities())
        return np.linspace(-1.0, 1.0, self.N + 1), probs.numpy()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of the Gibbs measure, shape (n, N).

        Parameters
        ----------
        n : int
            Number of draws, >= 1.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of randomness.
        """
        generator = _checks.generator(generator)
        n = _int("n", n, 1)
        idx = torch.multinomial(self.probabilities(), n, replacement=True, generator=generator)
        return self.configurations()[idx]

    def tilted_mean(self, y: torch.Tensor) -> torch.Tensor:
        r"""Exact mean of the tilted measure :math:`\mu_y(\sigma) \propto \mu(\sigma)e^{\langle\sigma, y\rangle}`,
        one field per row of ``y`` (n, N): the SL posterior mean :math:`m_s(y)` for every s.  By enumeration.

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, N).

        Returns
        -------
        torch.Tensor
            The tilted means, float64, shape (n, N).
        """
        y = self._check_field(y)
        configs, log_w = self._enumerate()
        out = torch.empty_like(y)
        for start in range(0, y.shape[0], _BLOCK):
            block = y[start:start + _BLOCK]
            w = torch.softmax(log_w[None, :] + block @ configs.T, dim=1)
            out[start:start + _BLOCK] = w @ configs
        return out

    # -- the diffusion view ----------------------------------------------------------------------------------
    def posterior_mean(self, method: str = "exact", **options) -> Callable:
        r"""The SL posterior mean ``m(y, s)`` (for :func:`diffnotes.localization.stochastic_localization`).

        ``method="exact"`` is :meth:`tilted_mean`; ``"mean_field"`` (and ``"tap"`` where the model has it) is
        :meth:`mean_field` from the uninformed start, with ``options`` passed on.

        Parameters
        ----------
        method : {"exact", "mean_field", "tap"}
            How the tilted mean is computed (default ``"exact"``).
        **options
            Passed to :meth:`mean_field`.

        Returns
        -------
        callable
            ``m(y, s)``, the posterior mean for fields y (n, N) (it does not depend on s).
        """
        if method == "exact":
            def m(y, s):
                return self.tilted_mean(y)
        elif method in ("mean_field", "tap"):
            def m(y, s):
                return self.mean_field(y, tap=(method == "tap"), **options)
        else:
            raise ValueError(f"method must be 'exact', 'mean_field' or 'tap', got {method!r}")
        return m

    def score_function(self, sde: VPSDE | None = None, method: str = "exact", **options) -> Callable:
        r"""A factory: the OU score ``score(x, t)`` of the diffused Gibbs measure, from the posterior mean:
        :math:`\nabla\log p_t(x) = (\alpha(t)\,m(c(t)x) - x)/h(t)`, :math:`c = \alpha/h`.

        With ``method="exact"`` this is the exact score (by enumeration); ``"mean_field"`` / ``"tap"`` give the
        score a mean-field denoiser implies.  ``sde`` defaults to :class:`~diffnotes.sde.ConstantVP`.

        Parameters
        ----------
        sde : VPSDE, optional
            The forward process (default :class:`~diffnotes.sde.ConstantVP`).
        method : {"exact", "mean_field", "tap"}
            As in :meth:`posterior_mean` (default ``"exact"``).
        **options
            Passed to :meth:`mean_field`.

        Returns
        -------
        callable
            ``score(x, t)`` for x (n, N) and t one time or one per row in (0, T].
        """
        sde = _checks.sde_or_default(sde)
        m = self.posterior_mean(method, **options)

        def score(x, t):
            x = self._check_field(x)
            a, h = sde.coefficients(t, x)
            return (a * m(a / h * x, None) - x) / h

        return score

    # -- approximations --------------------------------------------------------------------------------------
    def mean_field(self, y: torch.Tensor, *, tap: bool = False, init=None, damping: float = 0.5,
                   max_iter: int = 500, tol: float = 1e-10) -> torch.Tensor:
        """Mean-field approximation of :meth:`tilted_mean` (defined by the subclasses).

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, N).
        tap : bool
            Include the Onsager (TAP) correction (default False).
        init : torch.Tensor, optional
            Start of the iteration, in [-1, 1] (default 0, the uninformed start).
        damping : float
            Damping d in (0, 1] of the iteration (default 0.5).
        max_iter : int
            Most iterations, >= 1 (default 500).
        tol : float
            Stop when the largest change is at most this, >= 0 (default 1e-10).

        Returns
        -------
        torch.Tensor
            The magnetisations, shape (n, N).
        """
        raise NotImplementedError

    def glauber(self, start, n_sweeps: int, generator: torch.Generator | None = None):
        r"""Glauber (heat-bath) dynamics: systematic sweeps, each spin redrawn from its conditional law
        :math:`\mu(\sigma_i = +1 \mid \sigma_{-i}) = 1/(1 + e^{-\ell_i})`, :math:`\ell_i` = :meth:`flip_log_odds`.

        Parameters
        ----------
        start : torch.Tensor or str
            Initial spins (n, N); or ``("plus", n)`` / ``("random", n)``: n chains started all +1 (a cold start in
            one mode) or uniformly at random (infinite temperature).
        n_sweeps : int
            Number of sweeps (one sweep updates every spin once), >= 0.
        generator : torch.Generator, optional
            Source of randomness.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The final spins (n, N), and the magnetisation after each sweep, shape (n_sweeps + 1, n).
        """
        generator = _checks.generator(generator)
        if isinstance(start, tuple):
            if len(start) != 2 or start[0] not in ("plus", "random"):
                raise ValueError(f"start must be spins (n, N), ('plus', n) or ('random', n); got {start!r}")
            n = _int("n", start[1], 1)
            if start[0] == "plus":
                sigma = torch.ones(n, self.N, dtype=torch.float64)
            else:
                sigma = 2.0 * torch.randint(0, 2, (n, self.N), generator=generator).to(torch.float64) - 1.0
        else:
            sigma = self._check_sigma(start).clone()
        n_sweeps = _int("n_sweeps", n_sweeps, 0)
        trace = [sigma.mean(1)]
        for _ in range(n_sweeps):
            u = torch.rand(sigma.shape, generator=generator, dtype=torch.float64)
            for i in range(self.N):
                p_plus = torch.sigmoid(self.flip_log_odds(sigma, i))
                sigma[:, i] = torch.where(u[:, i] < p_plus, 1.0, -1.0)
            trace.append(sigma.mean(1))
        return sigma, torch.stack(trace)


def _iterate(update, init, damping, max_iter, tol):
    """Damped fixed-point iteration m <- (1 - d) m + d update(m); returns the last iterate."""
    damping = _real("damping", damping)
    if not 0 < damping <= 1:
        raise ValueError(f"damping must lie in (0, 1], got {damping}")
    max_iter = _int("max_iter", max_iter, 1)
    tol = _real("tol", tol, nonneg=True)
    m = init
    for _ in range(max_iter):
        new = (1 - damping) * m + damping * update(m)
        done = torch.max(torch.abs(new - m)) <= tol
        m = new
        if done:
            break
    return m


def tap_mean_field(J, y, *, tap: bool = True, beta: float = 1.0, field: float = 0.0, init=None, damping: float = 1.0,
                   max_iter: int = 500, tol: float = 1e-10) -> torch.Tensor:
    r"""The TAP (or naive mean-field) magnetisations of a pairwise spin model in the external fields y, the one TAP
    iteration of the package (:meth:`SherringtonKirkpatrick.mean_field`, :meth:`diffnotes.ising.IsingModel.mean_field`).

    The fixed point of

    .. math:: m_i = \tanh\Big(\beta (Jm)_i + \beta B + y_i - \beta^2 m_i \sum_j J_{ij}^2 (1 - m_j^2)\Big)

    (the last, Onsager reaction term only with ``tap=True``; without it, naive mean field), by the damped iteration
    :math:`m \leftarrow (1 - d)\,m + d\,\tanh(\cdot)` from ``init`` (default 0) until successive iterates differ by
    at most ``tol``, at most ``max_iter`` times (:cite:p:`mei2023deep,elalaoui2022sampling`).

    Parameters
    ----------
    J : torch.Tensor
        The symmetric couplings (N, N).
    y : torch.Tensor
        External fields, one row per problem (n, N).
    tap : bool
        Include the Onsager term.
    beta, field : float
        Inverse temperature and uniform field B.
    init : torch.Tensor, optional
        Start (n, N) or (N,), in [-1, 1].
    damping : float
        d in (0, 1]; 1 is the plain iteration.
    max_iter : int
        Most iterations.
    tol : float
        Stop when the largest change is at most this.
    """
    if init is None:
        m0 = torch.zeros_like(y)
    else:
        m0 = torch.as_tensor(init, dtype=torch.float64).expand_as(y).clone()
        if not torch.all(torch.abs(m0) <= 1):
            raise ValueError("init magnetisations must lie in [-1, 1]")
    b, J2 = beta, J**2

    def update(m):
        local = b * m @ J + b * field + y
        if tap:
            local = local - b**2 * m * ((1 - m**2) @ J2)
        return torch.tanh(local)

    return _iterate(update, m0, damping, max_iter, tol)


class CurieWeiss(SpinModel):
    r"""The Curie-Weiss model and its p-spin generalisation: :math:`H(\sigma) = -N\,m^p/p - B N m`,
    :math:`m = \frac1N\sum_i\sigma_i`.

    For p = 2, :math:`-\beta H = \frac{\beta}{2N}(\sum_i\sigma_i)^2 + \beta B\sum_i\sigma_i`: the mean-field
    ferromagnet, with a continuous transition at :math:`\beta = 1` (B = 0) below which (:math:`\beta > 1`) the
    magnetisation law is bimodal at :math:`\pm m^*`, :math:`m^* = \tanh(\beta m^*)`.  For p >= 3 the transition is
    first order.  Since :math:`\mu` depends on :math:`\sigma` only through m, the magnetisation law is
    :math:`\mathbb P(m) \propto \binom{N}{N(1+m)/2} e^{-\beta H(m)}` for every N, and the exact tilted mean is
    computed for every N by a dynamic programme over the number of up spins (:meth:`tilted_mean`).

    Parameters
    ----------
    N : int
        Number of spins (>= 1; enumeration needs N <= 16).
    beta : float
        Inverse temperature, >= 0.
    field : float
        Uniform external field B.
    p : int
        Interaction order, >= 2.
    """

    def __init__(self, N: int, beta: float, field: float = 0.0, p: int = 2):
        super().__init__(N, beta)
        self.field = _real("field", field)
        self.p = _int("p", p, 2)

    def _energy_of_m(self, m: torch.Tensor) -> torch.Tensor:
        return -self.N * (m**self.p / self.p + self.field * m)

    def energy(self, sigma):
        sigma = self._check_sigma(sigma)
        return self._energy_of_m(sigma.mean(1))

    def flip_log_odds(self, sigma, i):
        rest = sigma.sum(1) - sigma[:, i]
        return -self.beta * (self._energy_of_m((rest + 1) / self.N) - self._energy_of_m((rest - 1) / self.N))

    def magnetization_law(self):
        r"""Closed form :math:`\mathbb P(m = (2k - N)/N) \propto \binom Nk e^{-\beta H}`, k = 0..N (any N)."""
        k = torch.arange(self.N + 1, dtype=torch.float64)
        m = (2 * k - self.N) / self.N
        log_binom = torch.lgamma(torch.tensor(self.N + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(self.N - k + 1)
        return m.numpy(), torch.softmax(log_binom - self.beta * self._energy_of_m(m), 0).numpy()

    def sample(self, n, generator=None):
        """n exact draws (any N): m from its law, then a uniformly random configuration with that m.

        Parameters
        ----------
        n : int
            Number of draws, >= 1.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of randomness.
        """
        generator = _checks.generator(generator)
        n = _int("n", n, 1)
        _, probs = self.magnetization_law()
        k = torch.multinomial(torch.as_tensor(probs), n, replacement=True, generator=generator)
        order = torch.argsort(torch.rand(n, self.N, generator=generator), dim=1)
        return torch.where(order < k[:, None], 1.0, -1.0).to(torch.float64)

    def tilted_mean(self, y):
        r"""Exact tilted mean for every N, by the generating polynomial of the number k of up spins.

        :math:`Z(y) = \sum_k w_k\,e_k(y)` with :math:`w_k = e^{-\beta H((2k-N)/N)}` and
        :math:`e_k(y) = \sum_{|S| = k}\prod_{i\in S} e^{y_i}\prod_{i\notin S} e^{-y_i}`, built site by site in log
        space in :math:`O(N^2)` per row; then :math:`\mathbb E_{\mu_y}\sigma = \nabla_y\log Z(y)` by autograd.
        Agrees with the enumeration of :class:`SpinModel` to round-off (tested).

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, N).

        Returns
        -------
        torch.Tensor
            The tilted means, float64, shape (n, N).
        """
        y = self._check_field(y)
        N = self.N
        k = torch.arange(N + 1, dtype=torch.float64)
        log_w = -self.beta * self._energy_of_m((2 * k - N) / N)
        with torch.enable_grad():
            yy = y.detach().clone().requires_grad_(True)
            # A finite floor instead of log 0 = -inf keeps the gradients of logaddexp finite; its weight exp(-1e30)
            # is exactly zero in float64.
            E = torch.full((y.shape[0], N + 1), _LOG_ZERO, dtype=torch.float64)
            E[:, 0] = 0.0
            pad = torch.full((y.shape[0], 1), _LOG_ZERO, dtype=torch.float64)
            for j in range(N):
                up = torch.cat([pad, E[:, :-1]], dim=1) + yy[:, j:j + 1]
                E = torch.logaddexp(E - yy[:, j:j + 1], up)
            log_z = torch.logsumexp(E + log_w[None, :], dim=1)
            (grad,) = torch.autograd.grad(log_z.sum(), yy)
        return grad.detach()

    def mean_field(self, y, *, tap=False, init=None, grid: int = 33, bisections: int = 30):
        r"""Naive mean-field magnetisations of the tilted measure: the fixed point of

        .. math::

            m_i = \tanh\big(\beta\,\bar m^{\,p-1} + \beta B + y_i\big),\qquad
            \bar m = \tfrac1N\textstyle\sum_j m_j,

        that a (sufficiently) damped fixed-point iteration started at ``init`` reaches (default: the uninformed start
        :math:`\bar m = 0`, as for the AMP algorithms of :cite:t:`elalaoui2022sampling` and in the analysis of
        :cite:t:`ghio2024sampling`).  The equation is scalar in :math:`\bar m` for each row,
        :math:`F(\bar m) = \frac1N\sum_i\tanh(\dots) - \bar m = 0`, and the damped iteration
        :math:`\bar m \leftarrow \bar m + d\,F(\bar m)` (small d: the flow :math:`\dot{\bar m} = F(\bar m)`) moves
        from ``init`` in the direction of :math:`F(\mathrm{init})` to the first root it meets.  That root is located
        here directly, by a scan of ``grid`` points towards :math:`\pm 1` (where F has the opposite sign) and
        ``bisections`` bisection steps, which avoids the slow convergence of the iteration near the critical point
        (where the iteration converges at all, for example for p = 2, it converges to this root).  For this model the
        TAP (Onsager) correction is :math:`O(1/N)` and is not implemented: ``tap=True`` raises.

        ``init`` is None or the starting :math:`\bar m` (one number, or one per row, in [-1, 1]).  Returns (n, N).
        Where the equation has several stable solutions (below the transition, or on both sides of a first-order
        transition), the one found depends on ``init``: that choice is the point of the hardness discussion.

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, N).
        tap : bool
            Must be False (``ValueError`` otherwise): the TAP correction is not implemented for this model.
        init : float or torch.Tensor, optional
            The starting :math:`\bar m`, one number or one per row, in [-1, 1] (default 0).
        grid : int
            Number of scan points, >= 2 (default 33).
        bisections : int
            Number of bisection steps, >= 0 (default 30).
        """
        if tap:
            raise ValueError("the TAP correction of the Curie-Weiss model is O(1/N); use tap=False (naive mean field)")
        y = self._check_field(y)
        n = y.shape[0]
        grid = _int("grid", grid, 2)
        bisections = _int("bisections", bisections, 0)
        if init is None:
            start = torch.zeros(n, dtype=torch.float64)
        else:
            start = torch.as_tensor(init, dtype=torch.float64).expand(n).clone()
            if not torch.all(torch.abs(start) <= 1):
                raise ValueError("init magnetisations must lie in [-1, 1]")
        b, p, B = self.beta, self.p, self.field

        def F(mb):  # mb shaped (n,) or (n, K): the mean-field map minus the identity
            local = b * mb[..., None] ** (p - 1) + b * B + (y if mb.ndim == 1 else y[:, None, :])
            return torch.tanh(local).mean(-1) - mb

        direction = torch.sign(F(start))  # F(+1) < 0 < F(-1): a root lies between start and the end it heads to
        u = torch.linspace(0, 1, grid, dtype=torch.float64)[None, :]
        pts = start[:, None] + u * (direction[:, None] - start[:, None])
        crossed = direction[:, None] * F(pts) <= 0
        crossed[:, -1] = True
        k = torch.clamp(torch.argmax(crossed.to(torch.int8), dim=1), min=1)
        lo, hi = pts.gather(1, (k - 1)[:, None])[:, 0], pts.gather(1, k[:, None])[:, 0]
        for _ in range(bisections):
            mid = 0.5 * (lo + hi)
            same = direction * F(mid) > 0
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
        mbar = torch.where(direction == 0, start, 0.5 * (lo + hi))
        return torch.tanh(b * mbar[:, None] ** (p - 1) + b * B + y)

    def __repr__(self):
        return f"CurieWeiss(N={self.N}, beta={self.beta:g}, field={self.field:g}, p={self.p})"


class SherringtonKirkpatrick(SpinModel):
    r"""The Sherrington-Kirkpatrick spin glass, :math:`H(\sigma) = -\tfrac12\sigma^\top J\sigma - B\sum_i\sigma_i`,
    with symmetric Gaussian couplings :math:`J_{ij} = J_{ji} \sim \mathsf N(0, 1/N)`, :math:`J_{ii} = 0`.

    Replica symmetric (and sampled by SL with AMP :cite:p:`elalaoui2022sampling`) for :math:`\beta < 1` at B = 0;
    hard for stable algorithms at low temperature.

    Parameters
    ----------
    N : int
        Number of spins.
    beta : float
        Inverse temperature.
    couplings : array_like, optional
        A symmetric (N, N) matrix with zero diagonal; drawn with ``generator`` when omitted.
    field : float
        Uniform external field B.
    generator : torch.Generator, optional
        Source of the couplings.
    """

    def __init__(self, N: int, beta: float, couplings=None, field: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(N, beta)
        generator = _checks.generator(generator)
        self.field = _real("field", field)
        if couplings is None:
            g = torch.randn(self.N, self.N, generator=generator, dtype=torch.float64)
            J = torch.triu(g, diagonal=1) / math.sqrt(self.N)
            J = J + J.T
        else:
            J = torch.as_tensor(np.asarray(couplings, dtype=np.float64))
            if J.shape != (self.N, self.N):
                raise ValueError(f"couplings must have shape ({self.N}, {self.N}), got {tuple(J.shape)}")
            if not torch.all(torch.isfinite(J)) or not torch.allclose(J, J.T) or torch.any(torch.diagonal(J) != 0):
                raise ValueError("couplings must be finite, symmetric, with a zero diagonal")
        self.J = J

    def energy(self, sigma):
        sigma = self._check_sigma(sigma)
        return -0.5 * ((sigma @ self.J) * sigma).sum(1) - self.field * sigma.sum(1)

    def flip_log_odds(self, sigma, i):
        return 2 * self.beta * (sigma @ self.J[:, i] + self.field)

    def mean_field(self, y, *, tap=False, init=None, damping=0.5, max_iter=500, tol=1e-10):
        r"""Naive mean field :math:`m = \tanh(\beta J m + \beta B + y)`, or with ``tap=True`` the TAP equations

        .. math:: m_i = \tanh\Big(\beta (Jm)_i + \beta B + y_i - \beta^2 m_i \sum_j J_{ij}^2 (1 - m_j^2)\Big),

        by damped iteration from ``init`` (default 0, the uninformed start).  Returns (n, N).

        Parameters
        ----------
        y : torch.Tensor
            External fields, shape (n, N).
        tap : bool
            Include the Onsager term (default False).
        init : torch.Tensor, optional
            Start (n, N) or (N,), in [-1, 1] (default 0).
        damping : float
            d in (0, 1] (default 0.5).
        max_iter : int
            Most iterations, >= 1 (default 500).
        tol : float
            Stop when the largest change is at most this, >= 0 (default 1e-10).
        """
        return tap_mean_field(self.J, self._check_field(y), tap=tap, beta=self.beta, field=self.field, init=init,
                              damping=damping, max_iter=max_iter, tol=tol)

    def __repr__(self):
        return f"SherringtonKirkpatrick(N={self.N}, beta={self.beta:g}, field={self.field:g})"
