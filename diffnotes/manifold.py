r"""Manifold data: the uniform law on a circle, an exact target whose support has no density.

The review (Section 4.3, *Sampling theory*) cites :cite:t:`debortoli2022convergence` for the first convergence bound
of diffusion models when the data lie on a low-dimensional manifold: a Wasserstein-1 bound, with an early-stopping
time :math:`t_0 > 0`, whose constant grows exponentially with the manifold's diameter.  The simplest such data law is
the uniform law on a circle of radius :math:`r` in :math:`\mathbb R^2`, :math:`X_0 = r\,u(\Theta)` with
:math:`u(\theta) = (\cos\theta, \sin\theta)` and :math:`\Theta \sim \mathrm{Unif}[0, 2\pi)`.  Book chapter:
*Manifold data*.

**The diffused law.**  Under the forward process (:mod:`diffnotes.sde`), :math:`X_t = \alpha X_0 + \sqrt h\,\xi`, so

.. math::

    p_t(x) = \frac1{2\pi}\int_0^{2\pi} \mathsf N\big(x;\ \alpha r\,u(\theta),\ hI\big)\,\mathrm d\theta
           \approx \frac1N \sum_{j=0}^{N-1} \mathsf N\big(x;\ \alpha r\,u(\theta_j),\ hI\big),
    \qquad \theta_j = \frac{2\pi j}{N},

with :math:`\alpha = \alpha(t)`, :math:`h = h(t)`.  :class:`Circle` computes :math:`p_t` and its score by this
trapezoid rule.  The integrand is periodic and analytic in :math:`\theta`, so the rule converges exponentially: with
:math:`\kappa = \alpha r|x|/h` the rule's relative error on :math:`p_t` is exactly the aliasing sum

.. math:: \frac{p^{(N)}_t(x)}{p_t(x)} - 1 = \frac{2}{I_0(\kappa)}\sum_{m\ge1} I_{mN}(\kappa)\cos(mN\varphi),

(:math:`\varphi` the angle of :math:`x`, :math:`I_\nu` the modified Bessel functions), bounded by
:meth:`Circle.quadrature_error`; :math:`I_N(\kappa)/I_0(\kappa) \approx e^{-N^2/(2\kappa)}` while
:math:`N \lesssim \kappa`.  With the default :math:`N = 512` and :math:`r = 1`, the bound is below
:math:`10^{-19}` wherever :math:`\kappa \le 3000`, i.e. at :math:`t \ge 10^{-3}` for :math:`|x| \le 3`, and the score
agrees with autograd and with the closed form below to :math:`10^{-10}` (``tests/test_manifold.py``).  Smaller
:math:`t` or larger radii need more nodes (:math:`N \approx \sqrt{2\kappa\cdot 45}` for a relative error of
:math:`10^{-19}`).  The quadrature is the general recipe (any closed curve :math:`\gamma(\theta)` in place of
:math:`r\,u(\theta)`); for the circle alone the integral also has a closed form,

.. math::

    p_t(x) = \frac{1}{2\pi h}\,e^{-(|x|^2 + \alpha^2 r^2)/(2h)}\,I_0(\kappa),\qquad
    \nabla\log p_t(x) = \frac{\alpha r\,R(\kappa) - |x|}{h}\,\frac{x}{|x|},\qquad R = I_1/I_0,

available as :meth:`Circle.closed_form_log_prob` and :meth:`Circle.closed_form_score`: the independent reference
for the quadrature, exact at every :math:`t > 0`.  The score is radial (:math:`p_t` is rotation invariant); where
:math:`h \to 0` its normal component is :math:`-(|x| - \alpha r)/h - 1/(2|x|) + O(h)`: it blows up like
distance / :math:`h(t)`, which is why sampling stops at :math:`t_0 > 0`.

**The radial law and the Wasserstein distance.**  :math:`|X_t|` is Rice distributed with parameters
:math:`(\alpha r, \sqrt h)` (:meth:`Circle.radial_law`): the circle shrinks to radius :math:`\alpha r` and thickens by
:math:`\sqrt{h} \approx \sqrt t` in the normal direction.  Because :math:`P_t` is rotation invariant, the radial
projection :math:`x \mapsto r\,x/|x|` maps it onto the uniform law :math:`U_r` of the circle, and the 1-Lipschitz
function :math:`x \mapsto \operatorname{dist}(x, \text{circle})` shows the coupling is optimal, so

.. math:: W_1(P_t, U_r) = \mathbb E\,\big|\,|X_t| - r\,\big| = \sqrt{2h/\pi}\,\big(1 + O(\sqrt h)\big),

computed exactly by :meth:`Circle.w1`.  The same argument gives
:math:`W_1(Q, U_r) = \mathbb E_Q\operatorname{dist}(X, \text{circle})` for every rotation-invariant law :math:`Q`,
for example the output of any sampler driven by this (rotation-equivariant) score from :math:`\mathsf N(0, I)`.
For a finite sample, :meth:`Circle.w1_bounds` sandwiches the empirical distance between the mean distance to the
circle and that plus the exact angular distance :func:`angular_w1`, and :meth:`Circle.w1_samples` computes it with
POT :cite:p:`flamary2021pot`.

Everything is float64 unless the input says otherwise.  References: :cite:p:`debortoli2022convergence`,
:cite:p:`chen2024opportunities`.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from . import _checks
from .sde import VPSDE

__all__ = ["Circle", "angular_w1"]

_LOG_2PI = math.log(2 * math.pi)
#: Rows processed at once by the quadrature (an (rows, n_nodes) float64 block: 32 MB at 8192 x 512).
_BLOCK = 8192


class Circle:
    r"""The uniform law on the circle of radius :math:`r` in :math:`\mathbb R^2`, with its exact diffused law.

    The object provides the package's protocol ``score(x, t)`` (x of shape (n, 2); t a float or one time per row,
    in (0, T]), the log-density ``log_prob(x, t)``, data draws ``sample`` and draws of :math:`P_t`,
    ``sample_marginal``, plus the closed forms the chapter *Manifold data* uses: the radial law of :math:`P_t`
    (:meth:`radial_law`, :meth:`radial_moments`) and its exact distance to the data law (:meth:`w1`).

    Parameters
    ----------
    radius : float
        The radius :math:`r > 0`.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`, the review's :math:`g \equiv 1`).
    n_nodes : int
        Number :math:`N` of quadrature nodes over the angle (default 512: accurate to about :math:`10^{-10}` in the
        score for :math:`t \ge 10^{-3}` when :math:`r \le 1`; see the module docstring and the method
        :meth:`quadrature_error`).
    """

    dim = 2

    def __init__(self, radius: float = 1.0, sde: VPSDE | None = None, n_nodes: int = 512):
        try:
            radius = float(radius)
        except (TypeError, ValueError) as err:
            raise TypeError(f"radius must be a number, got {radius!r}") from err
        if not math.isfinite(radius) or radius <= 0:
            raise ValueError(f"radius must be a positive finite number, got {radius}")
        self.radius = radius
        self.n_nodes = _checks.positive_int(n_nodes, "n_nodes", 8)
        self.sde = _checks.sde_or_default(sde)
        theta = 2 * math.pi * torch.arange(self.n_nodes, dtype=torch.float64) / self.n_nodes
        #: The quadrature nodes :math:`u(\theta_j)` on the unit circle, shape (N, 2).
        self.nodes = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)

    # -- validation ------------------------------------------------------------------------------------
    def _check_x(self, x) -> torch.Tensor:
        return _checks.points(x, "x", 2)

    def _coefficients(self, x, t):
        return self.sde.coefficients(t, x)

    def _scalar_time(self, t) -> tuple[float, float]:
        t = self.sde.check_time(t)
        if t.ndim != 0:
            raise ValueError(f"this method takes one time, got shape {tuple(t.shape)}")
        return float(self.sde.alpha(t)), float(self.sde.h(t))

    # -- the diffused law by quadrature ------------------------------------------------------------------
    def log_prob(self, x, t) -> torch.Tensor:
        r"""Log-density :math:`\log p_t(x)` by the N-node trapezoid rule over the angle, shape (n,).

        .. math::

            \log p_t(x) = \operatorname{logsumexp}_j \frac{\alpha r\,(x\cdot u_j - |x|)}{h}
            - \frac{(|x| - \alpha r)^2}{2h} - \log N - \log(2\pi h),

        the exact rearrangement of :math:`\log\frac1N\sum_j \mathsf N(x; \alpha r u_j, hI)` in which every term is
        of order one.  t in (0, T]: a float or one time per row.  Differentiable in x (autograd).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_x(x)
        a, h = self._coefficients(x, t)
        a, h = a.expand(x.shape[0], 1), h.expand(x.shape[0], 1)
        out = []
        for lo in range(0, x.shape[0], _BLOCK):
            xb, ab, hb = x[lo : lo + _BLOCK], a[lo : lo + _BLOCK], h[lo : lo + _BLOCK]
            norm = torch.linalg.vector_norm(xb, dim=1, keepdim=True)
            logits = (ab * self.radius / hb) * (xb @ self.nodes.to(xb).T - norm)
            lse = torch.logsumexp(logits, dim=1)
            quad = ((norm - ab * self.radius) ** 2 / (2 * hb)).squeeze(1)
            out.append(lse - quad - math.log(self.n_nodes) - (_LOG_2PI + torch.log(hb)).squeeze(1))
        return torch.cat(out)

    def score(self, x, t) -> torch.Tensor:
        r"""Score :math:`\nabla\log p_t(x)` by the trapezoid rule, shape (n, 2).

        .. math::

            \nabla\log p_t(x) = \frac{\alpha r\sum_j w_j u_j - x}{h},\qquad
            w_j = \operatorname{softmax}_j\Big(\frac{\alpha r\,x\cdot u_j}{h}\Big),

        the posterior mean :math:`\mathbb E[X_0 \mid X_t = x]` by Tweedie's formula, with stable log-sum-exp
        weights.  t in (0, T]: a float or one time per row.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_x(x)
        a, h = self._coefficients(x, t)
        a, h = a.expand(x.shape[0], 1), h.expand(x.shape[0], 1)
        out = []
        nodes = self.nodes.to(x)
        for lo in range(0, x.shape[0], _BLOCK):
            xb, ab, hb = x[lo : lo + _BLOCK], a[lo : lo + _BLOCK], h[lo : lo + _BLOCK]
            w = torch.softmax((ab * self.radius / hb) * (xb @ nodes.T), dim=1)
            out.append((ab * self.radius * (w @ nodes) - xb) / hb)
        return torch.cat(out)

    def quadrature_error(self, x, t) -> torch.Tensor:
        r"""Bound on the relative error of the quadrature density, :math:`2\sum_{m=1}^{3} I_{mN}(\kappa)/I_0(\kappa)`.

        :math:`\kappa = \alpha r|x|/h`; the terms decay so fast in m that three are plenty.  Shape (n,).  The score's
        error is of the order of this number times :math:`\max(N/|x|,\ \alpha r/h)`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_x(x)
        a, h = self._coefficients(x, t)
        kappa = (a * self.radius * torch.linalg.vector_norm(x, dim=1, keepdim=True) / h).squeeze(1)
        k = kappa.detach().cpu().numpy().astype(np.float64)
        i0 = scipy.special.ive(0, k)
        alias = sum(scipy.special.ive(m * self.n_nodes, k) for m in (1, 2, 3))
        return torch.as_tensor(2 * alias / i0, dtype=torch.float64)

    # -- the closed form (circle only) ---------------------------------------------------------------------
    def closed_form_log_prob(self, x, t) -> torch.Tensor:
        r"""Exact :math:`\log p_t(x) = -\log(2\pi h) - (|x| - \alpha r)^2/(2h) + \log I_0^{\rm e}(\kappa)`, shape (n,).

        :math:`I_0^{\rm e}(\kappa) = e^{-\kappa}I_0(\kappa)` is the scaled Bessel function and
        :math:`\kappa = \alpha r|x|/h`.  The reference the quadrature is tested against.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_x(x)
        a, h = self._coefficients(x, t)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        kappa = a * self.radius * norm / h
        out = -_LOG_2PI - torch.log(h) - (norm - a * self.radius) ** 2 / (2 * h) + torch.log(torch.special.i0e(kappa))
        return out.squeeze(1)

    def closed_form_score(self, x, t) -> torch.Tensor:
        r"""Exact score :math:`\big(\alpha r\,R(\kappa)/|x| - 1\big)\,x/h`, :math:`R = I_1/I_0`, shape (n, 2).

        Written as :math:`\big((\alpha r)^2 q(\kappa)/h - 1\big)\,x/h` with :math:`q(\kappa) = R(\kappa)/\kappa`
        (:math:`q \to 1/2` at :math:`\kappa = 0`), so it is finite at the origin.  Exact at every t in (0, T],
        however small, at the cost of one pair of Bessel functions per row.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        x = self._check_x(x)
        a, h = self._coefficients(x, t)
        ar = a * self.radius
        kappa = ar * torch.linalg.vector_norm(x, dim=1, keepdim=True) / h
        small = kappa < 1e-6
        k_safe = torch.where(small, torch.ones_like(kappa), kappa)
        q = torch.where(small, 0.5 - kappa**2 / 16, torch.special.i1e(k_safe) / (k_safe * torch.special.i0e(k_safe)))
        return (ar**2 * q / h - 1) * x / h

    def score_components(self, x, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Normal (radial) and tangential components of the quadrature score, each shape (n,).

        The exact score is radial, so the tangential component is pure quadrature error; the normal component is
        :math:`-(|x| - \alpha r)/h - 1/(2|x|) + O(h)` near the circle.  Rows at the origin get 0 and 0.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The normal and the tangential components, each shape (n,).
        """
        x = self._check_x(x)
        s = self.score(x, t)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        e = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        return (s * e).sum(1), s[:, 1] * e[:, 0] - s[:, 0] * e[:, 1]

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw n points :math:`r\,u(\Theta)`, :math:`\Theta \sim \mathrm{Unif}[0, 2\pi)`: shape (n, 2), float64.

        Parameters
        ----------
        n : int
            Number of points, a positive integer.
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the angles.
        """
        generator = _checks.generator(generator)
        n = _checks.positive_int(n, "n", 1)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return self.radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)

    def sample_marginal(self, n: int, t, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw n points of :math:`P_t`: data, then the forward kernel :math:`\alpha x_0 + \sqrt h\,\xi`.

        Parameters
        ----------
        n : int
            Number of points, a positive integer.
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the data and of the noise.

        Returns
        -------
        torch.Tensor
            The points, shape (n, 2), float64.
        """
        generator = _checks.generator(generator)
        return self.sde.marginal_sample(self.sample(n, generator), t, generator)[0]

    def mean(self) -> torch.Tensor:
        """Mean of the data law: the origin, shape (2,)."""
        return torch.zeros(2, dtype=torch.float64)

    def covariance(self) -> torch.Tensor:
        r"""Covariance of the data law, :math:`(r^2/2) I`, shape (2, 2)."""
        return 0.5 * self.radius**2 * torch.eye(2, dtype=torch.float64)

    # -- geometry of samples -------------------------------------------------------------------------------
    def polar(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Radii :math:`|x|` and angles in :math:`[0, 2\pi)` of the rows of x, each shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The radii and the angles, each shape (n,).
        """
        x = self._check_x(x)
        angle = torch.remainder(torch.atan2(x[:, 1], x[:, 0]), 2 * math.pi)
        return torch.linalg.vector_norm(x, dim=1), angle

    def distance(self, x) -> torch.Tensor:
        r"""Euclidean distance :math:`\big|\,|x| - r\,\big|` of each row to the circle, shape (n,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        """
        return (self.polar(x)[0] - self.radius).abs()

    # -- closed forms for P_t ----------------------------------------------------------------------------------
    def radial_law(self, t):
        r"""The law of :math:`|X_t|`: Rice with :math:`\nu = \alpha(t) r`, :math:`\sigma = \sqrt{h(t)}` (scipy, frozen).

        One time t in (0, T].  Its density is :math:`\frac{\rho}{\sigma^2}e^{-(\rho^2+\nu^2)/(2\sigma^2)}
        I_0(\rho\nu/\sigma^2)`.

        Parameters
        ----------
        t : float
            One time in (0, T].

        Returns
        -------
        scipy.stats.rv_continuous
            The frozen Rice law of :math:`|X_t|`.
        """
        a, h = self._scalar_time(t)
        sigma = math.sqrt(h)
        return scipy.stats.rice(a * self.radius / sigma, scale=sigma)

    def radial_moments(self, t) -> tuple[float, float]:
        r"""Exact mean and standard deviation of :math:`|X_t|`, for one time t in (0, T].

        .. math::

            \mathbb E|X_t| = \sigma\sqrt{\pi/2}\,\Big[\big(1 + \tfrac{b^2}{2}\big)I^{\rm e}_0\big(\tfrac{b^2}4\big)
            + \tfrac{b^2}{2} I^{\rm e}_1\big(\tfrac{b^2}4\big)\Big],\qquad
            \mathbb E|X_t|^2 = \nu^2 + 2\sigma^2,

        with :math:`b = \nu/\sigma`.  As :math:`t \to 0`: mean :math:`\alpha r + h/(2\alpha r) + O(h^2)` (the circle
        shrunk by :math:`\alpha(t)`), standard deviation :math:`\sqrt{h}\,(1 + O(h))`: the normal-direction spread.

        Parameters
        ----------
        t : float
            One time in (0, T].

        Returns
        -------
        (float, float)
            The mean and the standard deviation of :math:`|X_t|`.
        """
        a, h = self._scalar_time(t)
        sigma, nu = math.sqrt(h), a * self.radius
        b2 = (nu / sigma) ** 2
        lag = (1 + b2 / 2) * scipy.special.i0e(b2 / 4) + (b2 / 2) * scipy.special.i1e(b2 / 4)
        mean = sigma * math.sqrt(math.pi / 2) * float(lag)
        var = nu**2 + 2 * h - mean**2
        return mean, math.sqrt(max(var, 0.0))

    def w1(self, t) -> float:
        r"""Exact :math:`W_1(P_t, U_r) = \mathbb E\,|\,|X_t| - r\,|` between the diffused law and the data law.

        Computed as :math:`(\mathbb E|X_t| - r) + 2\int_0^r (r - \rho)\,f_t(\rho)\,\mathrm d\rho` with the Rice
        density :math:`f_t` (adaptive quadrature, absolute error below :math:`10^{-12}`).  Equality holds because
        :math:`P_t` is rotation invariant (module docstring).  As :math:`t \to 0` it is
        :math:`\sqrt{2h(t)/\pi}\,(1 + O(\sqrt{h}))`.  One time t in (0, T].

        Parameters
        ----------
        t : float
            One time in (0, T].
        """
        law = self.radial_law(t)
        mean, std = self.radial_moments(t)
        lo = max(0.0, mean - 40 * std)
        r = self.radius
        below = 0.0
        if r > lo:
            points = [p for p in (mean,) if lo < p < r]
            below, _ = scipy.integrate.quad(lambda rho: (r - rho) * law.pdf(rho), lo, r, points=points or None,
                                            epsabs=1e-13, epsrel=1e-12, limit=200)
        return float(mean - r + 2 * below)

    # -- distances of samples to the data law -------------------------------------------------------------------
    def w1_bounds(self, x) -> tuple[float, float]:
        r"""Bounds on :math:`W_1(\hat Q_n, U_r)` for the empirical law :math:`\hat Q_n` of the rows of x.

        .. math::

            \frac1n\sum_i \operatorname{dist}(x_i) \;\le\; W_1(\hat Q_n, U_r) \;\le\;
            \frac1n\sum_i \operatorname{dist}(x_i) + r\,W_1^{S^1}(\hat\Theta_n, \mathrm{Unif}),

        the lower bound by the 1-Lipschitz test function :math:`\operatorname{dist}(\cdot, \text{circle})`, the
        upper one by projecting radially, then moving the projected points along the circle (:func:`angular_w1`
        of their angles, an exact geodesic distance).  The second term is the Monte Carlo floor of order
        :math:`r/\sqrt n`: it is there even for exact draws of :math:`U_r`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).

        Returns
        -------
        (float, float)
            The lower and the upper bound.
        """
        radii, angles = self.polar(x)
        lower = float((radii - self.radius).abs().mean())
        return lower, lower + self.radius * angular_w1(angles)

    def w1_samples(self, x, n_grid: int = 2048) -> float:
        r"""Empirical :math:`W_1(\hat Q_n, U_r)` in :math:`\mathbb R^2`, by exact optimal transport (POT).

        :math:`U_r` is replaced by the uniform law on ``n_grid`` points at angles :math:`2\pi(j + 1/2)/M`, which is
        within :math:`\pi r/(2M)` of :math:`U_r` in :math:`W_1`: that is the largest error of the result.  Cost
        :math:`O(n M)` memory and a network-simplex solve: a few thousand points each is cheap.
        :cite:p:`flamary2021pot`.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, 2).
        n_grid : int
            Number M of grid points standing in for :math:`U_r`, at least 8 (default 2048).
        """
        x = self._check_x(x).detach().cpu().numpy().astype(np.float64)
        m = _checks.positive_int(n_grid, "n_grid", 8)
        theta = 2 * np.pi * (np.arange(m) + 0.5) / m
        grid = self.radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        cost = ot.dist(x, grid, metric="euclidean")
        a = np.full(x.shape[0], 1.0 / x.shape[0])
        b = np.full(m, 1.0 / m)
        return float(ot.emd2(a, b, cost, numItermax=50_000_000))

    def __repr__(self) -> str:
        return f"Circle(radius={self.radius:g}, n_nodes={self.n_nodes}, sde={self.sde})"


def angular_w1(angles) -> float:
    r"""Exact geodesic :math:`W_1` on the unit circle between the empirical law of angles and the uniform law.

    On the circle, :math:`W_1(\mu, \nu) = \min_c \int_0^{2\pi} |F_\mu(\theta) - F_\nu(\theta) - c|\,\mathrm d\theta`
    (the optimal shift c is a median of :math:`F_\mu - F_\nu`; Rabin, Delon and Gousseau, 2011).  For an empirical
    law against the uniform one, :math:`F_\mu - F_\nu` is piecewise linear, so the integral and the median are
    computed exactly (the median by bisection to machine precision).  The result is in radians: multiply by the
    radius for arc length.  One point gives :math:`\pi/2`; n equally spaced points give :math:`\pi/(2n)`; n
    uniform draws give about :math:`1.5/\sqrt n` (Monte Carlo).

    Parameters
    ----------
    angles : array_like or torch.Tensor
        n angles in radians (any real numbers: taken modulo :math:`2\pi`).
    """
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().numpy()
    s = np.asarray(angles, dtype=np.float64).reshape(-1)
    if s.size < 1:
        raise ValueError("angular_w1 needs at least one angle")
    if not np.all(np.isfinite(s)):
        raise ValueError("angles contain NaN or infinite values")
    s = np.sort(np.mod(s / (2 * np.pi), 1.0))  # in turns, [0, 1)
    n = s.size
    edges = np.concatenate([[0.0], s, [1.0]])
    length = np.diff(edges)  # piece k = [edges[k], edges[k+1]) where F_n = k/n
    k = np.arange(n + 1) / n
    lo, hi = k - edges[1:], k - edges[:-1]  # F_n - F on piece k runs over [lo, hi] with unit density
    a, b = lo.min(), hi.max()
    for _ in range(200):  # the median c of F_n - F under the uniform measure on [0, 1)
        c = 0.5 * (a + b)
        if np.clip(c - lo, 0.0, length).sum() < 0.5:
            a = c
        else:
            b = c
        if b - a <= 1e-16 * max(1.0, abs(c)):
            break
    c = 0.5 * (a + b)
    above = np.clip(hi - c, 0.0, None) ** 2 - np.clip(lo - c, 0.0, None) ** 2
    below = np.clip(c - lo, 0.0, None) ** 2 - np.clip(c - hi, 0.0, None) ** 2
    return float(2 * np.pi * 0.5 * (above + below).sum())
