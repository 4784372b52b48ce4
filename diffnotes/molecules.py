r"""Molecules: torsion angles on the torus, their Boltzmann law from a force field, and torsional diffusion.

A small flexible molecule's conformers differ mostly in their torsion angles; bond lengths and angles are stiff.
Torsional diffusion :cite:p:`jing2022torsional` therefore keeps the local structure of one conformer from RDKit's
ETKDG :cite:p:`riniker2015better` and diffuses only the k torsions, a point of the torus
:math:`\mathbb T^k = (-\pi, \pi]^k`.  Review Section 3.3 (life science), book chapter *Diffusion for life science*
(Part 1).

**The data and the exact reference.**  :class:`TorsionalMolecule` builds the molecule from SMILES, embeds ETKDG
conformers, relaxes them with the MMFF94 force field :cite:p:`halgren1996merck` and keeps the lowest one.  Setting
its torsions to :math:`\varphi` (rigid rotation about the rotatable bonds) and evaluating MMFF gives the torsion
energy :math:`U(\varphi)`; the Boltzmann law :math:`\pi(\varphi) \propto e^{-U(\varphi)/k_BT}` on the torus is the
target (the torsional Boltzmann generator of :cite:t:`jing2022torsional`), computed on a grid
(:meth:`TorsionalMolecule.energy_grid`) and drawn exactly by rejection (:meth:`TorsionalMolecule.sample_boltzmann`).

**The diffusion.**  The forward process is Brownian motion on the torus, :math:`\varphi_t = \varphi_0 + \sigma(t) Z`
modulo :math:`2\pi`, with :math:`\sigma(t) = \sigma_{\min}^{1-t}\sigma_{\max}^{t}`, :math:`t \in [0, 1]`
(:class:`TorusVE`).  Its kernel is the wrapped normal

.. math::

    p_\sigma(x) = \sum_{m\in\mathbb Z} \frac{1}{\sqrt{2\pi}\sigma}e^{-(x + 2\pi m)^2/(2\sigma^2)}, \qquad
    \partial_x \log p_\sigma(x) = -\sum_m w_m(x)\,\frac{x + 2\pi m}{\sigma^2}, \quad
    w_m \propto e^{-(x+2\pi m)^2/(2\sigma^2)},

(:func:`wrapped_normal_log_prob`, :func:`wrapped_normal_score`), so denoising score matching has the closed-form
target :math:`\nabla\log p_{\sigma(t)}(\varphi_t - \varphi_0)` (:func:`torus_dsm_loss`), and
:math:`\sigma_{\max} = \pi` makes :math:`p_1` nearly uniform (the first Fourier mode of the kernel is
:math:`e^{-\sigma^2/2} < 0.01`).  The reverse SDE, :math:`\mathrm d\varphi = -\tfrac{\mathrm d\sigma^2}{\mathrm dt}
\nabla\log p_t\,\mathrm dt + \sqrt{\mathrm d\sigma^2/\mathrm dt}\,\mathrm d\bar W` run from t = 1 to 0 and wrapped
after every step, is :func:`torus_sampler`; :class:`TorusScoreMLP` is a small score network on
:math:`(\cos\varphi, \sin\varphi)`, so its output is periodic by construction.  The score protocol is the
package's ``score(x, t)``, with x of shape (n, k) in radians.

RDKit is imported only by :class:`TorsionalMolecule`; the torus functions need torch alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import _checks
from .networks import _mlp, seeded

__all__ = [
    "wrap",
    "wrapped_normal_log_prob",
    "wrapped_normal_score",
    "TorusVE",
    "torus_dsm_loss",
    "TorusScoreMLP",
    "torus_sampler",
    "cell_populations",
    "TorusGridDensity",
    "TorsionalMolecule",
    "KB_KCAL",
]

#: Boltzmann's constant in kcal/(mol K) (MMFF energies are in kcal/mol).
KB_KCAL = 0.0019872041
_TWO_PI = 2 * math.pi


def wrap(x) -> torch.Tensor:
    """Angles mapped to :math:`[-\\pi, \\pi)`.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Angles in radians.
    """
    x = torch.as_tensor(x)
    return torch.remainder(x + math.pi, _TWO_PI) - math.pi


def _sigma(sigma, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype if like.is_floating_point() else torch.float64)
    if not torch.all(torch.isfinite(s)) or torch.any(s <= 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    return s


def _windings(sigma: torch.Tensor) -> torch.Tensor:
    # enough images for a relative error below 1e-16: |x + 2 pi m| > 9 sigma for the omitted m
    m = int(math.ceil(9 * float(sigma.max()) / _TWO_PI)) + 1
    return torch.arange(-m, m + 1, dtype=sigma.dtype)


def _images(x, sigma):
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.double()
    if not torch.all(torch.isfinite(x)):
        raise ValueError("angles must be finite")
    s = _sigma(sigma, x).to(x)
    m = _windings(s).to(x)
    y = wrap(x)[..., None] + _TWO_PI * m  # (..., images)
    return y, s[..., None] if s.ndim else s


def wrapped_normal_log_prob(x, sigma) -> torch.Tensor:
    r"""Log-density of the wrapped normal :math:`\sum_m \mathsf N(x + 2\pi m; 0, \sigma^2)` on the circle,
    elementwise (``sigma`` broadcasts against ``x``).

    Parameters
    ----------
    x : tensor
        Angles in radians (any real numbers).
    sigma : float or tensor
        Scale(s) > 0, broadcastable to x.
    """
    y, s = _images(x, sigma)
    terms = -0.5 * (y / s) ** 2 - torch.log(s) - 0.5 * math.log(_TWO_PI)
    return torch.logsumexp(terms, -1)


def wrapped_normal_score(x, sigma) -> torch.Tensor:
    r""":math:`\partial_x \log p_\sigma(x) = -\sum_m w_m (x + 2\pi m)/\sigma^2` (module docstring), elementwise.

    Parameters
    ----------
    x : torch.Tensor
        Angles in radians (any real numbers).
    sigma : float or torch.Tensor
        Scale(s) > 0, broadcastable to x.
    """
    y, s = _images(x, sigma)
    w = torch.softmax(-0.5 * (y / s) ** 2, -1)
    return -(w * y).sum(-1) / (s[..., 0] if s.ndim else s) ** 2


class TorusVE:
    r"""Brownian motion on the torus with the geometric noise scale :math:`\sigma(t) = \sigma_{\min}^{1-t}
    \sigma_{\max}^t`, :math:`t\in[0, 1]` (torsional diffusion's defaults :math:`0.01\pi` and :math:`\pi`).

    Parameters
    ----------
    sigma_min, sigma_max : float
        :math:`0 < \sigma_{\min} < \sigma_{\max}`.
    """

    def __init__(self, sigma_min: float = 0.01 * math.pi, sigma_max: float = math.pi):
        lo, hi = float(sigma_min), float(sigma_max)
        if not (math.isfinite(hi) and 0 < lo < hi):
            raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = lo, hi

    def sigma(self, t) -> torch.Tensor:
        """:math:`\\sigma(t)` for t in [0, 1] (float64).

        Parameters
        ----------
        t : float or torch.Tensor
            Time(s) in [0, 1], a number or one per row.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if not torch.all(torch.isfinite(t)) or torch.any(t < 0) or torch.any(t > 1):
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def perturb(self, x0, t, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw :math:`\\varphi_t = \\mathrm{wrap}(\\varphi_0 + \\sigma(t)Z)`; returns it and :math:`\\sigma(t)Z`.

        Parameters
        ----------
        x0 : torch.Tensor
            Clean angles (n, k).
        t : float or torch.Tensor
            Time(s) in [0, 1], a number or one per row.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        x0 = _angles(x0, "x0")
        s = self.sigma(t).to(x0)
        s = s[:, None] if s.ndim == 1 else s
        z = torch.randn(x0.shape, generator=_checks.generator(generator), dtype=x0.dtype)
        return wrap(x0 + s * z), s * z

    def __repr__(self) -> str:
        return f"TorusVE(sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"


def _angles(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of angles (n, k)")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, k), got {tuple(x.shape)}")
    if not torch.all(torch.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite angles")
    return x


def torus_dsm_loss(model: Callable, x0, *, process: TorusVE, generator=None) -> torch.Tensor:
    r"""Denoising score matching on the torus :cite:p:`jing2022torsional`: :math:`\mathbb E\,\sigma^2\,
    |s_\theta(\varphi_t, t) - \nabla\log p_{\sigma(t)}(\varphi_t - \varphi_0)|^2` with :math:`t \sim U(0, 1)`.

    The target is :func:`wrapped_normal_score` of the (wrapped) displacement, per torsion; the weight
    :math:`\sigma^2` makes the terms O(1).  Fits :func:`diffnotes.training.train` (``loss_fn(model, x0,
    generator=...)``).

    Parameters
    ----------
    model : callable
        A score ``model(x, t)`` returning (n, k).
    x0 : torch.Tensor
        A batch of clean angles (n, k).
    process : TorusVE
        The forward process.
    generator : None, int, torch.Generator or numpy Generator
        Source of randomness.
    """
    x0 = _angles(x0, "x0")
    gen = _checks.generator(generator)
    t = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    xt, disp = process.perturb(x0, t, gen)
    s = process.sigma(t).to(x0)[:, None]
    target = wrapped_normal_score(disp, s.expand_as(disp))
    out = model(xt, t.to(x0))
    if not isinstance(out, torch.Tensor) or out.shape != x0.shape:
        raise ValueError(f"model(x, t) must return a tensor of shape {tuple(x0.shape)}")
    return (s**2 * (out - target) ** 2).sum(1).mean()


class TorusScoreMLP(nn.Module):
    r"""A score network on :math:`\mathbb T^k`: the Fourier features :math:`(\cos m\varphi_i, \sin m\varphi_i)_{m
    \le M}` and :math:`\log\sigma(t)` in, the score out, parameterised as :math:`s_\theta(\varphi, t) =
    \mathrm{MLP}(\cdot)/\sigma(t)` (periodic in every angle by construction).  Torsion energies are dominated by
    the first three harmonics (the threefold barriers of sp3-sp3 bonds), but M = 1 (the default) trains best in
    the chapter: the higher harmonics made the learned score rougher.

    Parameters
    ----------
    n_angles : int
        k, the number of torsions.
    process : TorusVE
        The noise scale (for :math:`\sigma(t)`).
    hidden, depth : int
        Width and number of hidden layers (SiLU).
    n_harmonics : int
        M, the number of harmonics per angle.
    generator : None, int, torch.Generator or numpy Generator
        Source of the initial weights.
    """

    def __init__(self, n_angles: int, process: TorusVE, hidden: int = 64, depth: int = 3, n_harmonics: int = 1,
                 generator=None):
        super().__init__()
        if not isinstance(process, TorusVE):
            raise TypeError(f"process must be a TorusVE, got {type(process).__name__}")
        self.k = _checks.positive_int(n_angles, "n_angles")
        self.process = process
        self.n_harmonics = _checks.positive_int(n_harmonics, "n_harmonics")
        with seeded(generator):
            self.net = _mlp(2 * self.k * self.n_harmonics + 1, _checks.positive_int(hidden, "hidden"),
                            _checks.positive_int(depth, "depth"), self.k)

    def forward(self, x, t) -> torch.Tensor:
        """The score :math:`s_\\theta(\\varphi, t)`, shape (n, k).

        Parameters
        ----------
        x : torch.Tensor
            Angles in radians, shape (n, k).
        t : float or torch.Tensor
            Time(s) in [0, 1], a number or one per row.
        """
        x = _angles(x)
        if x.shape[1] != self.k:
            raise ValueError(f"x must have {self.k} angles per row, got {x.shape[1]}")
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be a number or one time per row ({x.shape[0]}), got {t.shape[0]}")
        s = self.process.sigma(t).to(self.net[0].weight)
        m = torch.arange(1, self.n_harmonics + 1, dtype=x.dtype)
        arg = (x[:, :, None] * m).reshape(x.shape[0], -1)
        z = torch.cat([torch.cos(arg), torch.sin(arg)], 1).to(s)
        out = self.net(torch.cat([z, torch.log(s)[:, None]], 1)) / s[:, None]
        return out.to(x.dtype)


def torus_sampler(score: Callable, x, *, process: TorusVE, n_steps: int, generator=None,
                  return_trajectory: bool = False):
    r"""Euler-Maruyama for the reverse SDE on the torus, t from 1 to 0 on a uniform grid, wrapped every step.

    Step k: :math:`\varphi \leftarrow \mathrm{wrap}\big(\varphi + (\sigma_k^2 - \sigma_{k+1}^2)\,s(\varphi, t_k) +
    \sqrt{\sigma_k^2 - \sigma_{k+1}^2}\,Z\big)` with :math:`\sigma_k = \sigma(t_k)`.  ``x`` is the start (n, k) or
    its shape, then drawn uniformly on the torus (the law at :math:`\sigma_{\max}` is nearly uniform).  Returns the
    final angles, or ``(final, trajectory)`` with the n_steps + 1 states.

    Parameters
    ----------
    score : callable
        ``score(x, t)`` with t one time per row, returning (n, k).
    x : torch.Tensor or tuple
        The start (n, k), or its shape (then uniform on the torus).
    process : TorusVE
        The forward process.
    n_steps : int
        Number of Euler-Maruyama steps.
    generator : None, int, torch.Generator or numpy Generator
        Source of randomness.
    return_trajectory : bool
        Also return the states on the grid, (n_steps + 1, n, k).
    """
    _checks.score_callable(score)
    if not isinstance(process, TorusVE):
        raise TypeError(f"process must be a TorusVE, got {type(process).__name__}")
    n_steps = _checks.positive_int(n_steps, "n_steps")
    gen = _checks.generator(generator)
    if isinstance(x, torch.Tensor):
        x = wrap(_angles(x).clone())
    else:
        shape = tuple(int(s) for s in x)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"a start shape must be (n, k) with n, k >= 1, got {x!r}")
        x = _TWO_PI * torch.rand(shape, generator=gen, dtype=torch.float64) - math.pi
    times = torch.linspace(1, 0, n_steps + 1, dtype=torch.float64)
    var = process.sigma(times) ** 2
    traj = [x.clone()] if return_trajectory else None
    with torch.no_grad():
        for k in range(n_steps):
            dv = float(var[k] - var[k + 1])
            s = score(x, times[k].to(x.dtype).expand(x.shape[0]))
            if s.shape != x.shape or not torch.all(torch.isfinite(s)):
                raise ValueError("score(x, t) must return finite values of the shape of x")
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            x = wrap(x + dv * s + math.sqrt(dv) * noise)
            if traj is not None:
                traj.append(x.clone())
    return x if traj is None else (x, torch.stack(traj))


def cell_populations(x, edges, weights=None) -> torch.Tensor:
    r"""The fraction of the rows of ``x`` (n, k) in each cell of the product of the 1-D partitions ``edges``.

    ``edges`` are increasing angles spanning one turn, :math:`e_0 < \dots < e_m = e_0 + 2\pi`; angles are taken
    modulo :math:`2\pi` into :math:`[e_0, e_0 + 2\pi)`.  With ``weights`` (n,) the rows count in proportion to
    them (a quadrature of a density on grid nodes).  Result shape (m,) * k, summing to one.

    Parameters
    ----------
    x : torch.Tensor
        Angles in radians, shape (n, k).
    edges : array_like
        Increasing cell edges over one turn (m + 1,).
    weights : array_like, optional
        One non-negative weight per row.
    """
    x = _angles(torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x)
    e = torch.as_tensor(edges, dtype=torch.float64)
    if e.ndim != 1 or e.numel() < 2 or not torch.all(e[1:] > e[:-1]) or abs(float(e[-1] - e[0]) - _TWO_PI) > 1e-9:
        raise ValueError("edges must be increasing and span exactly one turn (last = first + 2 pi)")
    m, k = e.numel() - 1, x.shape[1]
    y = torch.remainder(x.double() - e[0], _TWO_PI) + e[0]
    cell = (torch.searchsorted(e[1:-1].contiguous(), y.contiguous(), right=True))  # (n, k) in 0..m-1
    flat = (cell * (m ** torch.arange(k - 1, -1, -1))).sum(1)
    if weights is None:
        w = torch.ones(x.shape[0], dtype=torch.float64)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape[0] != x.shape[0] or not torch.all(torch.isfinite(w)) or torch.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be finite, >= 0, not all zero, one per row of x")
    return (torch.bincount(flat, weights=w, minlength=m**k) / w.sum()).reshape((m,) * k)


class TorusGridDensity:
    r"""A law on :math:`\mathbb T^k` that is constant on the cells of a product grid, with its exact diffused law.

    The cells are :math:`[-\pi + 2\pi j/c, -\pi + 2\pi(j+1)/c)` per angle, with masses W (shape (c,) * k).
    Under :class:`TorusVE` the law at time t is the density convolved with wrapped normals of scale
    :math:`\sigma(t)` in every angle, which separates over the axes:

    .. math::

        p_t(\varphi) = \sum_{j_1\dots j_k} W_{j_1\dots j_k}\prod_i G_{j_i}(\varphi_i), \qquad
        G_j(x) = \frac1h\sum_m\Big[\Phi\Big(\frac{x - e_j + 2\pi m}{\sigma}\Big) -
        \Phi\Big(\frac{x - e_{j+1} + 2\pi m}{\sigma}\Big)\Big],

    :math:`h = 2\pi/c`, :math:`e_j` the cell edges, :math:`\Phi` the normal CDF; the score uses
    :math:`G_j'` (normal densities at the edges).  It is the exact diffused law of the piecewise-constant density,
    so a sampler driven by :meth:`score` can be checked against the cell masses without learning error: the
    torsional Boltzmann law of :class:`TorsionalMolecule` on a fine grid is such a law.

    Parameters
    ----------
    masses : array_like
        Non-negative cell masses, shape (c,) * k (normalised here).
    process : TorusVE, optional
        The forward process (default :class:`TorusVE`).
    """

    def __init__(self, masses, process: TorusVE | None = None):
        W = torch.as_tensor(np.asarray(masses, dtype=np.float64))
        if W.ndim < 1 or len(set(W.shape)) != 1 or W.shape[0] < 2:
            raise ValueError(f"masses must have shape (c,) * k with c >= 2, got {tuple(W.shape)}")
        if not torch.all(torch.isfinite(W)) or torch.any(W < 0) or not float(W.sum()) > 0:
            raise ValueError("masses must be finite, >= 0 and not all zero")
        self.masses = W / W.sum()
        self.k, self.c = W.ndim, W.shape[0]
        self.h = _TWO_PI / self.c
        self.edges = -math.pi + self.h * torch.arange(self.c + 1, dtype=torch.float64)
        self.process = TorusVE() if process is None else process
        if not isinstance(self.process, TorusVE):
            raise TypeError(f"process must be a TorusVE, got {type(self.process).__name__}")

    def _kernels(self, x, sigma: float):
        """G (n, c) and G' (n, c) for one angle x (n,) at scale sigma."""
        s = torch.tensor(sigma, dtype=torch.float64)
        m = _windings(s)
        z = (wrap(x)[:, None, None] + _TWO_PI * m[None, :, None] - self.edges[None, None, :]) / sigma  # (n, M, c+1)
        lo, hi = z[:, :, :-1], z[:, :, 1:]  # lo > hi
        # Phi(lo) - Phi(hi), written with the upper tail where both are positive (no cancellation)
        mass = torch.where(hi > 0, torch.special.ndtr(-hi) - torch.special.ndtr(-lo),
                           torch.special.ndtr(lo) - torch.special.ndtr(hi)).sum(1)
        dens = torch.exp(-0.5 * z**2) / (math.sqrt(_TWO_PI) * sigma)
        return mass / self.h, (dens[:, :, :-1] - dens[:, :, 1:]).sum(1) / self.h

    def _contract(self, factors):
        n = factors[0].shape[0]
        T = factors[0] @ self.masses.reshape(self.c, -1)  # (n, c^(k-1))
        for f in factors[1:]:
            T = (T.reshape(n, self.c, -1) * f[:, :, None]).sum(1)
        return T.reshape(n)

    def _sigma_of(self, t) -> float:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim and not bool(torch.all(t == t.reshape(-1)[0])):
            raise ValueError("TorusGridDensity evaluates one time for all rows (a number or equal times)")
        return float(self.process.sigma(t.reshape(-1)[0]))

    def _parts(self, x, t):
        x = _angles(x)
        if x.shape[1] != self.k:
            raise ValueError(f"x must have {self.k} angles per row, got {x.shape[1]}")
        sigma = self._sigma_of(t)
        return x, [self._kernels(x[:, i].double(), sigma) for i in range(self.k)]

    def log_prob(self, x, t) -> torch.Tensor:
        r""":math:`\log p_t(\varphi)` for each row of x (n, k), float64.

        Parameters
        ----------
        x : torch.Tensor
            Angles in radians, shape (n, k).
        t : float or torch.Tensor
            Time(s) in [0, 1], a number or one per row. (all rows share it).
        """
        _, parts = self._parts(x, t)
        return torch.log(self._contract([g for g, _ in parts]))

    def score(self, x, t) -> torch.Tensor:
        r""":math:`\nabla\log p_t(\varphi)` (n, k): the package's score protocol (one time for all rows).

        Parameters
        ----------
        x : torch.Tensor
            Angles in radians, shape (n, k).
        t : float or torch.Tensor
            Time(s) in [0, 1], a number or one per row. (all rows share it).
        """
        x, parts = self._parts(x, t)
        p = self._contract([g for g, _ in parts])
        grads = []
        for i in range(self.k):
            grads.append(self._contract([d if j == i else g for j, (g, d) in enumerate(parts)]) / p)
        return torch.stack(grads, 1).to(x.dtype)

    __call__ = score

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n`` exact draws of the piecewise-constant law (a cell by its mass, then uniform in it).

        Parameters
        ----------
        n : int
            Number of draws.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        n = _checks.positive_int(n, "n")
        gen = _checks.generator(generator)
        cell = torch.multinomial(self.masses.reshape(-1), n, replacement=True, generator=gen)
        idx = torch.stack([(cell // self.c ** (self.k - 1 - a)) % self.c for a in range(self.k)], 1)
        return self.edges[idx] + self.h * torch.rand(n, self.k, generator=gen, dtype=torch.float64)


class TorsionalMolecule:
    r"""A molecule from SMILES with ETKDG conformers, MMFF energies and its torsional Boltzmann law.

    The constructor adds hydrogens, embeds ``n_conformers`` ETKDG (v3) conformers :cite:p:`riniker2015better`
    with a seed drawn from ``generator``, relaxes ``n_relaxed`` of them with MMFF94 :cite:p:`halgren1996merck` and
    keeps the lowest as the reference geometry.  The torsions are those of the rotatable single bonds between two
    non-terminal heavy atoms, each defined by the first heavy neighbours on either side (methyl rotors are left
    out).  Angles are in radians.

    Parameters
    ----------
    smiles : str
        The molecule (e.g. ``"CCCCC"``, pentane: two torsions).
    n_conformers : int
        ETKDG conformers to embed (their torsions are :attr:`etkdg_torsions`).
    n_relaxed : int
        How many of them to relax with MMFF to choose the reference geometry.
    generator : None, int, torch.Generator or numpy Generator
        Source of the embedding seed.

    Attributes
    ----------
    torsions : list of tuple
        The atom quadruples (i, j, k, l).
    etkdg_torsions : torch.Tensor
        (n_conformers, k) torsions of the raw ETKDG conformers.
    minimum_energy : float
        MMFF energy of the reference geometry (kcal/mol).
    """

    def __init__(self, smiles: str, *, n_conformers: int = 100, n_relaxed: int = 10, generator=None):
        from rdkit import Chem
        from rdkit.Chem import AllChem, rdForceFieldHelpers, rdMolTransforms

        if not isinstance(smiles, str):
            raise TypeError(f"smiles must be a string, got {type(smiles).__name__}")
        heavy = Chem.MolFromSmiles(smiles)
        if heavy is None or heavy.GetNumAtoms() == 0:
            raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
        n_conformers = _checks.positive_int(n_conformers, "n_conformers")
        n_relaxed = min(_checks.positive_int(n_relaxed, "n_relaxed"), n_conformers)
        self.smiles = smiles
        self._T = rdMolTransforms
        pattern = Chem.MolFromSmarts("[!D1;!$(*#*)]-&!@[!D1;!$(*#*)]")
        torsions = []
        for j, k in heavy.GetSubstructMatches(pattern):
            i = min(a.GetIdx() for a in heavy.GetAtomWithIdx(j).GetNeighbors() if a.GetIdx() != k)
            m = min(a.GetIdx() for a in heavy.GetAtomWithIdx(k).GetNeighbors() if a.GetIdx() != j)
            torsions.append((i, j, k, m))
        if not torsions:
            raise ValueError(f"{smiles!r} has no rotatable bond between two non-terminal heavy atoms")
        self.torsions = torsions
        mol = Chem.AddHs(heavy)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(_checks.numpy_generator(generator).integers(0, 2**31 - 1))
        ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if len(ids) < n_conformers:
            raise RuntimeError(f"ETKDG embedded {len(ids)} of {n_conformers} conformers")
        self.etkdg_torsions = torch.tensor(
            [[rdMolTransforms.GetDihedralRad(mol.GetConformer(c), *q) for q in torsions] for c in ids],
            dtype=torch.float64)
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
        if props is None:
            raise ValueError(f"MMFF94 has no parameters for {smiles!r}")
        best, best_e = None, math.inf
        for c in ids[:n_relaxed]:
            ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props, confId=c)
            ff.Minimize(maxIts=2000)
            e = ff.CalcEnergy()
            if e < best_e:
                best, best_e = c, e
        self.mol, self._conf = mol, mol.GetConformer(best)
        self._ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props, confId=best)
        self.minimum_energy = float(best_e)
        self.reference_torsions = torch.tensor([rdMolTransforms.GetDihedralRad(self._conf, *q) for q in torsions],
                                               dtype=torch.float64)

    @property
    def n_torsions(self) -> int:
        return len(self.torsions)

    def __repr__(self) -> str:
        return f"TorsionalMolecule({self.smiles!r}, torsions={self.torsions})"

    def energy(self, phi) -> torch.Tensor:
        r"""MMFF energy (kcal/mol) of the reference geometry with its torsions set to each row of ``phi`` (n, k),
        minus :attr:`minimum_energy`: the torsion energy :math:`U(\varphi)` (rigid rotation about the bonds).

        Parameters
        ----------
        phi : torch.Tensor
            Torsion angles in radians, shape (n, k).
        """
        phi = _angles(torch.as_tensor(phi, dtype=torch.float64) if not isinstance(phi, torch.Tensor) else phi,
                      "phi")
        if phi.shape[1] != self.n_torsions:
            raise ValueError(f"phi must have {self.n_torsions} torsions per row, got {phi.shape[1]}")
        out = np.empty(phi.shape[0])
        conf, ff, T = self._conf, self._ff, self._T
        saved = conf.GetPositions()
        for r, row in enumerate(phi.tolist()):
            for q, a in zip(self.torsions, row, strict=True):
                T.SetDihedralRad(conf, *q, float(a))
            out[r] = ff.CalcEnergy(conf.GetPositions().ravel().tolist())
        for a, p in enumerate(saved):
            conf.SetAtomPosition(a, p.tolist())
        return torch.as_tensor(out - self.minimum_energy)

    def energy_grid(self, n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`energy` on the product grid of cell midpoints :math:`-\\pi + 2\\pi(j + 1/2)/n`: (nodes (n,),
        energies (n,) * k).

        Parameters
        ----------
        n_grid : int
            Grid points per torsion.
        """
        n = _checks.positive_int(n_grid, "n_grid", 4)
        nodes = -math.pi + _TWO_PI * (torch.arange(n, dtype=torch.float64) + 0.5) / n
        mesh = torch.cartesian_prod(*[nodes] * self.n_torsions).reshape(-1, self.n_torsions)
        return nodes, self.energy(mesh).reshape((n,) * self.n_torsions)

    @staticmethod
    def boltzmann_weights(energies, temperature: float) -> torch.Tensor:
        r""":math:`e^{-U/k_BT}` normalised to sum to one (a law on the grid cells), T in kelvin.

        Parameters
        ----------
        energies : array_like
            Energies in kcal/mol.
        temperature : float
            In kelvin.
        """
        T = float(temperature)
        if not (math.isfinite(T) and T > 0):
            raise ValueError(f"temperature must be finite and > 0 (kelvin), got {temperature}")
        u = torch.as_tensor(energies, dtype=torch.float64)
        w = torch.exp(-(u - u.min()) / (KB_KCAL * T))
        return w / w.sum()

    def sample_boltzmann(self, n: int, temperature: float, *, n_grid: int = 72, margin: float = 1.0,
                         generator=None) -> tuple[torch.Tensor, float]:
        r"""``n`` exact draws of :math:`\pi(\varphi) \propto e^{-U(\varphi)/k_BT}` by rejection sampling.

        The envelope is constant on each cell of an ``n_grid``-per-torsion grid, :math:`e^{-(\min U - m)/k_BT}`
        with :math:`\min U` over the cell's corners and the margin m (in :math:`k_BT`); a proposal is uniform in a
        cell drawn in proportion to the envelope's mass, and kept with probability :math:`e^{-U/k_BT}` over the
        envelope.  An acceptance ratio above one (an envelope that is not one) raises ``RuntimeError``.  Returns the
        draws (n, k) and the acceptance rate.

        Parameters
        ----------
        n : int
            Number of draws.
        temperature : float
            In kelvin.
        n_grid : int
            Envelope cells per torsion.
        margin : float
            Envelope margin, in units of k_B T.
        generator : None, int, torch.Generator or numpy Generator
            Source of randomness.
        """
        n = _checks.positive_int(n, "n")
        g = _checks.positive_int(n_grid, "n_grid", 4)
        kT = KB_KCAL * float(temperature)
        if not kT > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        k = self.n_torsions
        corners = -math.pi + _TWO_PI * torch.arange(g, dtype=torch.float64) / g
        mesh = torch.cartesian_prod(*[corners] * k).reshape(-1, k)
        u = self.energy(mesh).reshape((g,) * k)
        low = u
        for axis in range(k):  # min over the 2^k corners of each cell
            low = torch.minimum(low, torch.roll(low, -1, axis))
        log_env = -(low.reshape(-1) - margin * kT) / kT
        shift = float(log_env.max())
        cell_mass = torch.exp(log_env - shift)
        gen = _checks.generator(generator)
        kept, proposed, accepted = [], 0, 0
        while accepted < n:
            m = max(2 * (n - accepted), 64)
            cell = torch.multinomial(cell_mass, m, replacement=True, generator=gen)
            idx = torch.stack([(cell // g ** (k - 1 - a)) % g for a in range(k)], 1)
            phi = corners[idx] + _TWO_PI / g * torch.rand(m, k, generator=gen, dtype=torch.float64)
            ratio = torch.exp(-self.energy(phi) / kT - (log_env[cell]))
            if torch.any(ratio > 1):
                raise RuntimeError(f"the rejection envelope is below the density (ratio {float(ratio.max()):.3g});"
                                   " use a larger margin or a finer grid")
            ok = torch.rand(m, generator=gen, dtype=torch.float64) < ratio
            kept.append(phi[ok])
            proposed += m
            accepted += int(ok.sum())
        return wrap(torch.cat(kept)[:n]), accepted / proposed
