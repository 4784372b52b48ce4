r"""The forward process: the variance-preserving (Ornstein-Uhlenbeck) SDE and its noise schedules.

The review (Section 2.1; book chapter *Forward and backward processes*) writes the forward process as

.. math::

    \mathrm dX_t = -\tfrac12 g(t) X_t\,\mathrm dt + \sqrt{g(t)}\,\mathrm dW_t, \qquad X_0 \sim P_{\rm data},

so that, given :math:`X_0 = x_0`, :math:`X_t \sim \mathsf N(\alpha(t) x_0, h(t) I)` with

.. math::

    \alpha(t) = \exp\Big(-\tfrac12 \int_0^t g(s)\,\mathrm ds\Big), \qquad h(t) = 1 - \alpha(t)^2 .

A schedule is fully described by the weighting :math:`g` and its integral :math:`G(t) = \int_0^t g`; every class below
provides both, the inverse of :math:`G` (used to place time grids uniformly in log-SNR), and the common operations built
on them.  The review's own choice is :class:`ConstantVP` (:math:`g \equiv 1`, :math:`\alpha = e^{-t/2}`); the linear
schedule of Ho et al. and Song et al. is :class:`LinearVP`, the cosine schedule of Nichol and Dhariwal is
:class:`CosineVP`, and the discrete DDPM grid is :class:`DiscreteVP`, a VP SDE whose :math:`g` is piecewise constant so
that :math:`\alpha(k/N)^2` equals the cumulative product :math:`\bar\alpha_k = \prod_{i\le k}(1-\beta_i)` exactly.

All computations are in the dtype of the input (float64 for Python floats).
References: :cite:p:`song2021score,ho2020denoising,nichol2021improved,chen2024opportunities`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks
from ._checks import time_column

__all__ = ["VPSDE", "ConstantVP", "LinearVP", "CosineVP", "DiscreteVP", "as_time"]


def as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """Convert a time (float, sequence, numpy array or tensor) to a floating tensor.

    Python floats become float64 unless ``like`` is given, whose dtype and device are then used.

    Parameters
    ----------
    t : float, sequence, numpy.ndarray or torch.Tensor
        The time(s); an integer tensor is converted to float64.
    like : torch.Tensor, optional
        A tensor whose dtype and device the result takes.

    Returns
    -------
    torch.Tensor
        The time(s) as a floating tensor (a floating tensor ``t`` is returned as is when ``like`` is not given).

    Raises
    ------
    TypeError
        If ``t`` is not a number or an array of numbers.
    """
    if isinstance(t, torch.Tensor):
        out = t if t.is_floating_point() else t.to(torch.float64)
        if like is not None:
            out = out.to(dtype=like.dtype, device=like.device)
        return out
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    try:
        return torch.as_tensor(np.asarray(t, dtype=np.float64), dtype=dtype, device=device)
    except (TypeError, ValueError) as err:
        raise TypeError(f"time must be a number or an array of numbers, got {t!r}") from err


class VPSDE:
    r"""A variance-preserving forward SDE :math:`\mathrm dX = -\frac12 g X\,\mathrm dt + \sqrt g\,\mathrm dW` on [0, T].

    Subclasses define :meth:`g`, :meth:`integral` (:math:`G(t)=\int_0^t g`) and :meth:`inverse_integral`.

    Parameters
    ----------
    T : float
        The horizon, a positive finite number (``ValueError`` otherwise).
    """

    T: float = 1.0

    def __init__(self, T: float):
        T = float(T)
        if not math.isfinite(T) or T <= 0:
            raise ValueError(f"the horizon T must be a positive finite number, got {T}")
        self.T = T

    # -- the schedule -------------------------------------------------------------------------------
    def g(self, t) -> torch.Tensor:
        """The weighting function g(t).

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, T] (not checked here; see :meth:`VPSDE.check_time`).

        Returns
        -------
        torch.Tensor
            g(t), shaped like ``t``.
        """
        raise NotImplementedError

    def integral(self, t) -> torch.Tensor:
        r""":math:`G(t) = \int_0^t g(s)\,\mathrm ds`.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, T] (not checked here).

        Returns
        -------
        torch.Tensor
            G(t), shaped like ``t``.
        """
        raise NotImplementedError

    def inverse_integral(self, G) -> torch.Tensor:
        """The time t with integral(t) = G (G must lie in [0, integral(T)]).

        Parameters
        ----------
        G : float or torch.Tensor
            Value(s) of the integral, in [0, integral(T)] (not checked here).

        Returns
        -------
        torch.Tensor
            The time(s) t, shaped like ``G``.
        """
        raise NotImplementedError

    # -- derived quantities -------------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        r"""Mean coefficient :math:`\alpha(t) = e^{-G(t)/2}` of the transition kernel.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, T] (not checked here).
        """
        return torch.exp(-0.5 * self.integral(t))

    def h(self, t) -> torch.Tensor:
        r"""Variance :math:`h(t) = 1 - \alpha(t)^2 = -\mathrm{expm1}(-G(t))` of the transition kernel.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, T] (not checked here).
        """
        return -torch.expm1(-self.integral(t))

    def sigma(self, t) -> torch.Tensor:
        r"""Noise level :math:`\sqrt{h(t)}`.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, T] (not checked here).
        """
        return torch.sqrt(self.h(t))

    def log_snr(self, t) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha^2/h) = -\log(\mathrm{expm1}(G(t)))`.

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in (0, T] (at t = 0 the log-SNR is infinite).
        """
        return -torch.log(torch.expm1(self.integral(t)))

    def time_of_log_snr(self, lam) -> torch.Tensor:
        r"""Inverse of :meth:`log_snr`: the time at which :math:`\log(\alpha^2/h) = \lambda`.

        Parameters
        ----------
        lam : float or torch.Tensor
            Log-SNR value(s) :math:`\lambda`, between ``log_snr(T)`` and infinity for a time in (0, T].
        """
        lam = as_time(lam)
        return self.inverse_integral(torch.log1p(torch.exp(-lam)))

    # -- validation ---------------------------------------------------------------------------------
    def check_time(self, t, *, allow_zero: bool = False, name: str = "t") -> torch.Tensor:
        """Return ``t`` as a tensor after checking it lies in (0, T] (or [0, T] with ``allow_zero``).

        Parameters
        ----------
        t : float, array_like or torch.Tensor
            The time(s) to check; must be finite.  T is allowed a relative slack of 1e-12.
        allow_zero : bool
            Accept t = 0 (default False: scores blow up as t -> 0).
        name : str
            The name used in the error message (default ``"t"``).

        Raises
        ------
        ValueError
            If a time is not finite or lies outside (0, T] (or [0, T]).
        """
        t = as_time(t)
        if not torch.all(torch.isfinite(t)):
            raise ValueError(f"{name} must be finite, got {t}")
        lo_ok = torch.all(t >= 0) if allow_zero else torch.all(t > 0)
        if not lo_ok or not torch.all(t <= self.T * (1 + 1e-12)):
            interval = "[0, T]" if allow_zero else "(0, T]"
            raise ValueError(
                f"{name} must lie in {interval} = {interval.replace('T', f'{self.T:g}')}; got values in "
                f"[{float(t.min()):g}, {float(t.max()):g}]. Scores blow up as t -> 0: use an early-stopping "
                "time t0 > 0."
            )
        return t

    # -- pieces shared by the targets, estimators and losses --------------------------------------------------
    def coefficients(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The checked coefficients :math:`\alpha(t)` and :math:`h(t)` as columns for the rows of ``x``.

        Parameters
        ----------
        t : float or torch.Tensor
            One time, or one per row (shape (n,) or (n, 1)), in (0, T].
        x : torch.Tensor
            The points, shape (n, D): give the dtype, the device and n.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            :math:`\alpha(t)` and :math:`h(t)`, each of shape (1, 1) or (n, 1).
        """
        t = self._time_column(t, x)
        return self.alpha(t), self.h(t)

    def _time_column(self, t, x: torch.Tensor) -> torch.Tensor:
        """The checked time(s) t as a column typed like x."""
        return time_column(as_time(self.check_time(t), like=x), x.shape[0])

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The noisy points :math:`x_t = \alpha(t)\,x_0 + \sqrt{h(t)}\,\varepsilon` and the noise :math:`\varepsilon`.

        Parameters
        ----------
        x0 : torch.Tensor
            Clean data, shape (n, D).
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        noise : torch.Tensor, optional
            The noise :math:`\varepsilon`, shaped like ``x0``; drawn from ``generator`` when not given.
        generator : torch.Generator, optional
            Source of the noise when it is drawn.
        """
        generator = _checks.generator(generator)
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2:
            raise ValueError(f"x0 must be a tensor of shape (n, D), got {getattr(x0, 'shape', type(x0))}")
        a, h = self.coefficients(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}, got "
                             f"{getattr(noise, 'shape', type(noise))}")
        return a * x0 + torch.sqrt(h) * noise, noise

    def reverse_drift(self, x: torch.Tensor, score_value: torch.Tensor, t) -> torch.Tensor:
        r"""Drift of the backward process in the forward clock, :math:`-\tfrac12 g(t)\,x - g(t)\,\nabla\log p_t(x)`.

        The reverse SDE run from T down to 0 is :math:`\mathrm dX = [-\frac12 g X - g\,\nabla\log p_t(X)]\,\mathrm dt
        + \sqrt g\,\mathrm d\bar W` with dt < 0.

        Parameters
        ----------
        x : torch.Tensor
            The points, shape (n, D).
        score_value : torch.Tensor
            The score at (x, t), shaped like x.
        t : float or torch.Tensor
            One time, or one per row, in (0, T].
        """
        g = self.g(self._time_column(t, x))
        return -0.5 * g * x - g * score_value

    # -- sampling -----------------------------------------------------------------------------------
    def marginal_sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None):
        r"""Draw :math:`x_t = \alpha(t) x_0 + \sqrt{h(t)}\,\varepsilon` given :math:`x_0`.

        Parameters
        ----------
        x0 : torch.Tensor
            Clean data, shape (n, D).
        t : float or torch.Tensor
            One time, or one time per row (shape (n,)), in (0, T].
        generator : torch.Generator, optional
            Source of the Gaussian noise.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The noisy points :math:`x_t` and the noise :math:`\varepsilon` that produced them.
        """
        return self.perturb(x0, t, generator=generator)

    def forward_path(self, x0: torch.Tensor, times, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Simulate forward paths exactly on an increasing grid of times (the first may be 0).

        Between grid times s < t the process moves by its exact transition
        :math:`X_t \mid X_s \sim \mathsf N\big(r X_s,\ 1 - r^2\big)` with :math:`r = \alpha(t)/\alpha(s)`,
        so there is no discretisation error.  Returns the paths, shape (len(times), n, D), starting at ``x0`` when
        the first time is 0.

        Parameters
        ----------
        x0 : torch.Tensor
            Starting points, shape (n, D).
        times : array_like or torch.Tensor
            A 1-D, strictly increasing grid in [0, T].
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the Gaussian increments.

        Returns
        -------
        torch.Tensor
            The paths, shape (len(times), n, D).
        """
        generator = _checks.generator(generator)
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2:
            raise ValueError(f"x0 must be a tensor of shape (n, D), got {getattr(x0, 'shape', type(x0))}")
        times = self.check_time(times, allow_zero=True, name="times")
        if times.ndim != 1 or not torch.all(torch.diff(times) > 0):
            raise ValueError("times must be a 1-D, strictly increasing grid")
        G = self.integral(times)
        path, x, G_prev = [], x0, torch.zeros((), dtype=G.dtype)
        for Gk in G:
            dG = Gk - G_prev
            if dG > 0:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = torch.exp(-dG / 2) * x + torch.sqrt(-torch.expm1(-dG)) * noise
            path.append(x)
            G_prev = Gk
        return torch.stack(path)

    def prior_sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        r"""Draw from the reference law :math:`\mathsf N(0, I)` that stands in for :math:`P_T`.

        Parameters
        ----------
        shape : tuple of int
            Shape of the draw, e.g. (n, D).
        generator : int, torch.Generator or numpy.random.Generator, optional
            Source of the noise.
        dtype : torch.dtype
            Floating dtype of the draw (default float64).
        """
        generator = _checks.generator(generator)
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)

    def denoise(self, x: torch.Tensor, score_value: torch.Tensor, t) -> torch.Tensor:
        r"""Tweedie's formula :math:`\mathbb E[X_0 \mid X_t = x] = (x + h(t)\,\nabla\log p_t(x))/\alpha(t)`.

        Parameters
        ----------
        x : torch.Tensor
            The noisy points, shape (n, D).
        score_value : torch.Tensor
            The score at (x, t), shaped like ``x``.
        t : float or torch.Tensor
            One time, or one per row (not checked here: give a time in (0, T]).

        Returns
        -------
        torch.Tensor
            The posterior mean of the clean point, shaped like ``x``.
        """
        t = _column(as_time(t, like=x), x.shape[0])
        return (x + self.h(t) * score_value) / self.alpha(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T:g})"


_column = time_column


class ConstantVP(VPSDE):
    r"""The review's forward process, :math:`g \equiv g_0` (default 1): :math:`\alpha(t) = e^{-g_0 t/2}`.

    With :math:`g_0 = 1` this is the Ornstein-Uhlenbeck process used throughout the review
    (Section 2.1, :cite:p:`chen2024opportunities`), and :math:`h(t) = 1 - e^{-t}`.

    Parameters
    ----------
    T : float
        The horizon, positive and finite (default 10).
    g0 : float
        The constant weighting, positive and finite (default 1).
    """

    def __init__(self, T: float = 10.0, g0: float = 1.0):
        super().__init__(T)
        g0 = float(g0)
        if not math.isfinite(g0) or g0 <= 0:
            raise ValueError(f"g0 must be positive, got {g0}")
        self.g0 = g0

    def g(self, t):
        t = as_time(t)
        return torch.full_like(t, self.g0)

    def integral(self, t):
        return self.g0 * as_time(t)

    def inverse_integral(self, G):
        return as_time(G) / self.g0

    def __repr__(self):
        return f"ConstantVP(T={self.T:g}, g0={self.g0:g})"


class LinearVP(VPSDE):
    r"""Linear schedule :math:`g(t) = \beta_{\min} + (\beta_{\max}-\beta_{\min})\,t/T`.

    With :math:`T = 1`, :math:`\beta_{\min} = 0.1`, :math:`\beta_{\max} = 20` this is the VP SDE of Song et al.,
    the continuous limit of the DDPM grid with :math:`\beta_k` from :math:`10^{-4}` to :math:`0.02` over 1000 steps
    (:cite:p:`song2021score,ho2020denoising`).

    Parameters
    ----------
    beta_min, beta_max : float
        g at t = 0 and at t = T (defaults 0.1 and 20); need 0 < beta_min <= beta_max < inf.
    T : float
        The horizon, positive and finite (default 1).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        if not (0 < beta_min <= beta_max) or not math.isfinite(beta_max):
            raise ValueError(f"need 0 < beta_min <= beta_max < inf, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def g(self, t):
        t = as_time(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def integral(self, t):
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def inverse_integral(self, G):
        G = as_time(G)
        a = 0.5 * (self.beta_max - self.beta_min) / self.T
        if a == 0:
            return G / self.beta_min
        # Stable root of a t^2 + b t - G = 0.
        return 2 * G / (self.beta_min + torch.sqrt(self.beta_min**2 + 4 * a * G))

    def __repr__(self):
        return f"LinearVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, T={self.T:g})"


class CosineVP(VPSDE):
    r"""Cosine schedule: :math:`\alpha(t)^2 = f(t)/f(0)`, :math:`f(t) = \cos^2\!\big(\frac{t+s}{1+s}\frac\pi2\big)`.

    Time runs in [0, T] with T < 1 (at t = 1, g is infinite); the default T = 0.9946 is the usual truncation.
    :cite:p:`nichol2021improved`.

    Parameters
    ----------
    s : float
        The offset, positive (default 0.008).
    T : float
        The horizon, in (0, 1) (default 0.9946).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        super().__init__(T)
        if not T < 1:
            raise ValueError(f"the cosine schedule needs T < 1 (g is infinite at t = 1), got T={T}")
        if not s > 0:
            raise ValueError(f"the offset s must be positive, got {s}")
        self.s = float(s)
        self._c = math.pi / (2 * (1 + self.s))
        self._log_cos0 = math.log(math.cos(self.s * self._c))

    def g(self, t):
        t = as_time(t)
        return 2 * self._c * torch.tan((t + self.s) * self._c)

    def integral(self, t):
        t = as_time(t)
        return -2 * (torch.log(torch.cos((t + self.s) * self._c)) - self._log_cos0)

    def inverse_integral(self, G):
        G = as_time(G)
        return torch.arccos(torch.exp(-G / 2 + self._log_cos0)) / self._c - self.s

    def __repr__(self):
        return f"CosineVP(s={self.s:g}, T={self.T:g})"


class DiscreteVP(VPSDE):
    r"""The discrete DDPM grid as a VP SDE with piecewise-constant :math:`g`.

    For betas :math:`\beta_1, \dots, \beta_N`, set :math:`g(t) = -N\log(1-\beta_k)` on :math:`((k-1)/N, k/N]`.
    Then :math:`\alpha(k/N)^2 = \bar\alpha_k = \prod_{i \le k}(1-\beta_i)` exactly, so every continuous-time sampler
    of :mod:`diffnotes.samplers` runs on the DDPM grid unchanged, and DDPM step :math:`k` (0-based index
    :math:`k-1` in diffusers) is time :math:`t = k/N`.  T = 1.  :cite:p:`ho2020denoising`.

    Parameters
    ----------
    betas : array_like
        The betas :math:`\beta_1, \dots, \beta_N`, a non-empty 1-D sequence with every entry in (0, 1).
    """

    def __init__(self, betas):
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1)")
        super().__init__(1.0)
        self.betas = betas
        self.N = betas.numel()
        self._G = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(-torch.log1p(-betas), 0)])

    @classmethod
    def ddpm(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """The DDPM grid of Ho et al.: n betas spaced linearly from beta_start to beta_end.

        Parameters
        ----------
        n : int
            Number of steps N, a positive integer (default 1000).
        beta_start, beta_end : float
            The first and last beta (defaults 1e-4 and 0.02); every beta must lie in (0, 1).
        """
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        return cls(np.linspace(beta_start, beta_end, int(n)))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        r""":math:`\bar\alpha_k` for k = 1..N (diffusers' ``alphas_cumprod``)."""
        return torch.exp(-self._G[1:])

    def _locate(self, t):
        t = as_time(t)
        u = t.to(torch.float64) * self.N
        k = torch.clamp(torch.ceil(u).long() - 1, 0, self.N - 1)  # interval ((k)/N, (k+1)/N]
        return t, u, k

    def g(self, t):
        t, _, k = self._locate(t)
        return (self.N * (self._G[k + 1] - self._G[k])).to(t.dtype)

    def integral(self, t):
        t, u, k = self._locate(t)
        G = self._G[k] + (u - k) * (self._G[k + 1] - self._G[k])
        return G.to(t.dtype)

    def inverse_integral(self, G):
        G = as_time(G)
        k = torch.clamp(torch.searchsorted(self._G, G.to(torch.float64).contiguous()) - 1, 0, self.N - 1)
        frac = (G - self._G[k]) / (self._G[k + 1] - self._G[k])
        return ((k + frac) / self.N).to(G.dtype)

    def timesteps(self, n_steps: int, spacing: str = "trailing") -> torch.Tensor:
        """Grid times k/N of an n-step sub-grid, decreasing, as diffusers places them.

        ``trailing`` takes diffusers indices ``round(arange(N, 0, -N/n)) - 1`` (the first step at the last node,
        t = 1); ``leading`` takes ``arange(n) * (N // n)`` reversed.  diffusers index j is time (j + 1)/N.

        Parameters
        ----------
        n_steps : int
            Number of steps n, an integer in [1, N].
        spacing : {"trailing", "leading"}
            How the sub-grid is placed (default ``"trailing"``).

        Returns
        -------
        torch.Tensor
            The n times, float64, decreasing.
        """
        if int(n_steps) != n_steps or not 1 <= n_steps <= self.N:
            raise ValueError(f"n_steps must be an integer in [1, {self.N}], got {n_steps}")
        n_steps = int(n_steps)
        if spacing == "trailing":
            j = np.round(np.arange(self.N, 0, -self.N / n_steps)).astype(np.int64) - 1
        elif spacing == "leading":
            j = (np.arange(n_steps) * (self.N // n_steps))[::-1]
        else:
            raise ValueError(f"spacing must be 'trailing' or 'leading', got {spacing!r}")
        return torch.as_tensor((j + 1) / self.N, dtype=torch.float64)

    def __repr__(self):
        return f"DiscreteVP(N={self.N}, beta_1={float(self.betas[0]):g}, beta_N={float(self.betas[-1]):g})"
