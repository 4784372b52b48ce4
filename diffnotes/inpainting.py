r"""Inpainting with a diffusion prior: the replacement method, RePaint resampling, DPS, and the exact posterior.

Inpainting samples the conditional law :math:`P(x \mid y)` of a whole image :math:`x\in\mathbb R^D` given a known
region :math:`y = x_{\mathcal K}` (the review, Section 3.1, "editing, restoration and inpainting";
:cite:p:`chen2024opportunities`).  A ``mask`` of D booleans marks the known coordinates :math:`\mathcal K` (True)
and the missing ones :math:`\mathcal U` (False).  Observed images ``y`` are given at full size (n, D); their missing
entries are ignored.  Three samplers use only an unconditional score :math:`s(x, t)\approx\nabla\log p_t(x)`:

* **Replacement** (:func:`replacement`; the imputation of :cite:t:`song2021score`, Appendix I.2): a DDPM reverse
  step from :math:`t` to :math:`t'` on the whole image, then the known coordinates are overwritten by a fresh forward
  sample of the observation, :math:`x_{\mathcal K} \leftarrow \alpha(t')\,y + \sqrt{h(t')}\,\xi`.  The missing
  coordinates only ever see noisy versions of :math:`y` drawn independently of their own past, so the output law is
  in general **not** the posterior, however many steps are taken (:cite:t:`trippe2023diffusion` make this
  precise).  It is exact when the missing coordinates are independent of the known ones, since the reverse
  process then never couples them.
* **RePaint** (:func:`repaint`; :cite:t:`lugmayr2022repaint`): replacement, but the time grid is walked in blocks
  of ``jump_length`` steps, each block ``n_resample`` times: after a pass down the block the state is pushed back up
  by the exact forward transition :math:`x_{t} = \tfrac{\alpha(t)}{\alpha(t')}\,x_{t'} +
  \sqrt{1 - \alpha(t)^2/\alpha(t')^2}\,\xi` and the block is walked down again.  The resampling lets the missing
  coordinates "harmonise" with the known ones; ``n_resample = 1`` is the replacement method.
* **DPS** (:func:`dps`; diffusion posterior sampling, :cite:t:`chung2023diffusion`, Algorithm 1): a DDPM reverse
  step followed by a gradient step on the data fit evaluated at Tweedie's denoised estimate,

  .. math::

      x_{t'} \leftarrow x'_{t'} - \zeta_t\,\nabla_{x_t}\big\|y - x_{\mathcal K}^{0}(x_t)\big\|^2,\qquad
      x^0(x_t) = \frac{x_t + h(t)\,s(x_t, t)}{\alpha(t)},\qquad
      \zeta_t = \frac{\zeta'}{\|y - x^0_{\mathcal K}(x_t)\|},

  the step size of the paper's experiments (Section 4 and Appendix C of :cite:t:`chung2023diffusion`), per row.
  The authors' code differentiates the norm itself, i.e. uses :math:`\zeta'/(2\|r\|)` and a norm over the whole
  batch; ``normalise="code"`` gives that variant row by row, ``normalise=None`` a constant step :math:`\zeta_t =
  \zeta'`.  DPS replaces :math:`p_t(y\mid x_t)` by :math:`p(y\mid \hat x_0(x_t))`, so it is biased too, and its
  bias depends on the guidance strength :math:`\zeta'` and on the number of steps.

**Exact posteriors.**  For a Gaussian "image" :math:`\mathsf N(\mu, \Sigma)` the missing pixels given the known ones
are Gaussian (:func:`gaussian_posterior`),

.. math::

    x_{\mathcal U}\mid y \sim \mathsf N\big(\mu_{\mathcal U} + \Sigma_{\mathcal{UK}}\Sigma_{\mathcal{KK}}^{-1}
    (y - \mu_{\mathcal K}),\ \Sigma_{\mathcal{UU}} - \Sigma_{\mathcal{UK}}\Sigma_{\mathcal{KK}}^{-1}
    \Sigma_{\mathcal{KU}}\big),

and for a mixture :math:`\sum_k\pi_k\mathsf N(\mu_k, \Sigma_k)` they are the mixture of the components' conditional
Gaussians with the reweighted weights :math:`\pi_k\,\mathsf N(y;\mu_{k,\mathcal K},\Sigma_{k,\mathcal{KK}})` normalised
(:func:`exact_posterior`, a :class:`~diffnotes.targets.GaussianMixture` on the missing coordinates, so that its
diffused score gives a fourth, exact conditional sampler).  :func:`posterior_error` measures a sample of missing
pixels against it: the closed-form Gaussian :math:`W_2` between the sample's mean and covariance and the exact
Gaussian posterior, or a sliced Wasserstein distance to a sample of the exact posterior (POT) for mixtures.

Book chapter: *Inpainting and restoration* (Part 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import _checks
from .metrics import gaussian_w2, sliced_wasserstein
from .samplers import _check_times, _ddpm_update, _Loop
from .sde import VPSDE
from .targets import Gaussian, GaussianMixture

__all__ = ["check_mask", "gaussian_posterior", "exact_posterior", "replacement", "repaint", "repaint_schedule",
           "dps", "posterior_error"]


# -- inputs -------------------------------------------------------------------
def check_mask(mask, dim: int | None = None) -> torch.Tensor:
    """Check a mask of known coordinates: a boolean tensor or array of shape (D,), with known and missing entries.

    Parameters
    ----------
    mask : torch.Tensor or numpy.ndarray of bool, shape (D,)
        True where the coordinate is known (observed), False where it is to be inpainted.
    dim : int, optional
        The required length D.

    Returns
    -------
    torch.Tensor
        The mask as a bool tensor.

    Raises
    ------
    TypeError
        If the mask is not boolean (an integer 0/1 mask is refused: it is too easily confused with indices).
    ValueError
        If its shape is not (D,), or it has no known or no missing coordinate.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a boolean tensor of shape (D,), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = known), got dtype {mask.dtype}")
    want = f"({dim},)" if dim is not None else "(D,)"
    if mask.ndim != 1 or (dim is not None and mask.shape[0] != dim):
        raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")
    if bool(mask.all()) or not bool(mask.any()):
        raise ValueError("mask must mark at least one known (True) and one missing (False) coordinate")
    return mask


def _observations(y, mask: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Observed images (n, D), n >= 1, finite on the known coordinates (missing entries may be anything)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of shape (n, {mask.shape[0]}), got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {y.dtype}")
    if y.ndim != 2 or y.shape[1] != mask.shape[0]:
        raise ValueError(f"{name} must have shape (n, {mask.shape[0]}) like the mask, got {tuple(y.shape)}")
    if y.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch: give at least one observed image")
    if not bool(torch.isfinite(y[:, mask.to(y.device)]).all()):
        raise ValueError(f"{name} contains NaN or infinite values on the known coordinates")
    return y


def _setup(score, y, mask, times, sde):
    score = _checks.score_callable(score)
    sde = _checks.sde_or_default(sde)
    mask = check_mask(mask)
    y = _observations(y, mask)
    times = _check_times(times, sde)
    return score, y, mask.to(y.device), times, sde


def _score_at(score, x, t: float) -> torch.Tensor:
    s = score(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score(x, t) must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{getattr(s, 'shape', type(s))}")
    return s


def _loop(y, generator, return_trajectory: bool, what: str) -> _Loop:
    """The samplers' loop (:class:`diffnotes.samplers._Loop`) started from N(0, I) draws shaped, typed and placed
    like the observations ``y``; the start is not recorded yet (the caller records it)."""
    gen = _checks.generator(generator, device=y.device)

    def fill(shape):
        return torch.randn(shape, generator=gen, dtype=y.dtype, device=y.device)

    return _Loop(tuple(y.shape), gen, None, return_trajectory, fill=fill, record_start=False, what=what)


def _noisy_known(y, t: float, sde: VPSDE, xi: torch.Tensor) -> torch.Tensor:
    """A forward sample of the observations at time t, given the standard Gaussian draw ``xi``."""
    a = float(sde.alpha(torch.tensor(t, dtype=torch.float64)))
    return a * y + math.sqrt(1 - a * a) * xi


# -- the exact posterior -------------------------------------------------------------------
def gaussian_posterior(mean, cov, mask, y) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and covariance of the missing coordinates of :math:`\mathsf N(\mu,\Sigma)` given the known ones.

    .. math::

        m = \mu_{\mathcal U} + \Sigma_{\mathcal{UK}}\Sigma_{\mathcal{KK}}^{-1}(y_{\mathcal K} - \mu_{\mathcal K}),
        \qquad C = \Sigma_{\mathcal{UU}} - \Sigma_{\mathcal{UK}}\Sigma_{\mathcal{KK}}^{-1}\Sigma_{\mathcal{KU}}

    (the Schur complement), computed in float64 through a Cholesky factor of :math:`\Sigma_{\mathcal{KK}}`.

    Parameters
    ----------
    mean : array_like, shape (D,)
    cov : array_like, shape (D, D)
        Symmetric positive definite.
    mask : bool tensor, shape (D,)
        True where known (see :func:`check_mask`).
    y : torch.Tensor, shape (D,) or (n, D)
        Observed image(s); entries at missing coordinates are ignored.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The posterior mean, shape ``(m,)`` (or ``(n, m)`` for n images; m is the number of unknown pixels), and
        covariance ``(m, m)``, the same for every image.
    """
    mean = _checks.data(torch.as_tensor(np.asarray(mean, dtype=np.float64))[None], "mean", shape="(D,)")[0]
    D = mean.shape[0]
    cov = torch.as_tensor(np.asarray(cov, dtype=np.float64))
    if cov.shape != (D, D) or not bool(torch.isfinite(cov).all()):
        raise ValueError(f"cov must be a finite ({D}, {D}) matrix, got shape {tuple(cov.shape)}")
    mask = check_mask(mask, D).cpu()
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch tensor of shape ({D},) or (n, {D}), got {type(y).__name__}")
    single = y.ndim == 1
    y = _observations(y[None] if single else y, mask).detach().to(torch.float64).cpu()
    k, u = mask, ~mask
    try:
        L = torch.linalg.cholesky(cov[k][:, k])
    except torch.linalg.LinAlgError as err:
        raise ValueError("cov restricted to the known coordinates is not positive definite") from err
    gain = torch.cholesky_solve(cov[k][:, u], L).T  # Sigma_UK Sigma_KK^{-1}, shape (|U|, |K|)
    m = mean[u] + (y[:, k] - mean[k]) @ gain.T
    C = cov[u][:, u] - gain @ cov[k][:, u]
    C = 0.5 * (C + C.T)
    return (m[0] if single else m), C


def exact_posterior(target: GaussianMixture, mask, y) -> GaussianMixture:
    r"""The exact law of the missing coordinates of a Gaussian-mixture image given its known ones.

    For :math:`x\sim\sum_k\pi_k\mathsf N(\mu_k,\Sigma_k)` the posterior of :math:`x_{\mathcal U}` given
    :math:`x_{\mathcal K} = y` is the mixture of the components' conditional Gaussians
    (:func:`gaussian_posterior`) with weights

    .. math::

        \tilde\pi_k = \frac{\pi_k\,\mathsf N(y;\mu_{k,\mathcal K},\Sigma_{k,\mathcal{KK}})}
        {\sum_j\pi_j\,\mathsf N(y;\mu_{j,\mathcal K},\Sigma_{j,\mathcal{KK}})},

    computed with log-sum-exp.  The result is a target on :math:`\mathbb R^{|\mathcal U|}` with the forward process
    of ``target``, so its ``.sample`` draws exact posterior samples and its ``.score`` is the exact score of the
    diffused posterior, which drives an exact conditional sampler (up to discretisation).

    Parameters
    ----------
    target : GaussianMixture
        The law of the images (a :class:`~diffnotes.targets.Gaussian` gives a :class:`~diffnotes.targets.Gaussian`).
    mask : bool tensor, shape (D,)
        True where known.
    y : torch.Tensor, shape (D,)
        One observed image (entries at missing coordinates are ignored).

    Returns
    -------
    GaussianMixture
        The posterior of the missing coordinates, in the order they appear in the image.
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture (diffnotes.targets), got {type(target).__name__}")
    D = target.dim
    mask = check_mask(mask, D).cpu()
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != D:
        raise ValueError(f"y must be one observed image, a tensor of shape ({D},), got "
                         f"{getattr(y, 'shape', type(y).__name__)}")
    k = mask
    means, covs, logw = [], [], []
    for j in range(target.n_components):
        m, C = gaussian_posterior(target.means[j], target.covs[j], mask, y)
        means.append(m)
        covs.append(C)
        known = torch.distributions.MultivariateNormal(target.means[j][k], target.covs[j][k][:, k])
        logw.append(torch.log(target.weights[j]) + known.log_prob(y.detach().to(torch.float64).cpu()[k]))
    logw = torch.stack(logw)
    w = torch.exp(logw - torch.logsumexp(logw, 0))
    if isinstance(target, Gaussian):
        return Gaussian(means[0], covs[0], sde=target.sde)
    return GaussianMixture(w / w.sum(), torch.stack(means), torch.stack(covs), sde=target.sde)


# -- replacement and RePaint -------------------------------------------------------------------
def repaint_schedule(n_steps: int, jump_length: int = 1, n_resample: int = 1) -> list[int]:
    r"""The walk over the grid indices :math:`0, \dots, N` (0 is T, N is :math:`t_0`) that RePaint takes.

    The grid is cut into consecutive blocks of ``jump_length`` steps (the last may be shorter); each block is walked
    down ``n_resample`` times (U of :cite:t:`lugmayr2022repaint`), with a walk back up to its start after every pass
    but the last.  A step to a larger index is a reverse step, to a smaller index a forward (noising) step.  With
    ``n_resample = 1`` the walk is :math:`0, 1, \dots, N`; the number of reverse steps is
    :math:`N \times` ``n_resample``.

    Parameters
    ----------
    n_steps : int
        N, the number of steps of the grid.
    jump_length : int
        The length of a jump back (j in the paper).
    n_resample : int
        U, the number of passes over each block.
    """
    n_steps = _checks.positive_int(n_steps, "n_steps")
    jump_length = _checks.positive_int(jump_length, "jump_length")
    n_resample = _checks.positive_int(n_resample, "n_resample")
    path = [0]
    for start in range(0, n_steps, jump_length):
        stop = min(start + jump_length, n_steps)
        for r in range(n_resample):
            path.extend(range(start + 1, stop + 1))
            if r < n_resample - 1:
                path.extend(range(stop - 1, start - 1, -1))
    return path


def _run_repaint(score, y, mask, times, sde, generator, path, return_trajectory):
    loop = _loop(y, generator, return_trajectory, "the sampler")
    loop.record(torch.where(mask, _noisy_known(y, float(times[0]), sde, loop.draw(y)), loop.x))
    with torch.no_grad():
        for i, j in zip(path[:-1], path[1:], strict=False):
            t, t_next = float(times[i]), float(times[j])
            x = loop.x
            if j > i:  # reverse step, then the known coordinates from a fresh forward sample of y
                x = _ddpm_update(sde, x, _score_at(score, x, t), t, t_next, loop.draw(x))
                x = torch.where(mask, _noisy_known(y, t_next, sde, loop.draw(y)), x)
            else:  # RePaint's jump back: the exact forward transition from t to t_next > t
                r = float(sde.alpha(torch.tensor(t_next, dtype=torch.float64))
                          / sde.alpha(torch.tensor(t, dtype=torch.float64)))
                x = r * x + math.sqrt(1 - r * r) * loop.draw(x)
            loop.record(x)
    loop.x = torch.where(mask, y, loop.x)  # the output carries y exactly (the trajectory keeps the last state)
    return loop.result("a smaller step or a larger t0 is needed")


def replacement(score: Callable, y: torch.Tensor, mask, times, *, sde: VPSDE | None = None, generator=None,
                return_trajectory: bool = False):
    r"""Inpainting by replacement: DDPM reverse steps, the known coordinates overwritten by noised observations.

    At every step of the grid :math:`T = t_0 > \dots > t_N`,

    .. math::

        x \leftarrow \mathrm{DDPM}(x, t_i \to t_{i+1}),\qquad
        x_{\mathcal K} \leftarrow \alpha(t_{i+1})\,y_{\mathcal K} + \sqrt{h(t_{i+1})}\,\xi ,

    starting from :math:`x_{\mathcal U}\sim\mathsf N(0, I)` and :math:`x_{\mathcal K}` the noised observation at T;
    the output carries :math:`y` on the known coordinates.  The reverse step is that of
    :func:`diffnotes.samplers.ddpm`.  :cite:t:`song2021score` (Appendix I.2) propose it; it is exact only when the
    missing coordinates are independent of the known ones (module docstring).  Book chapter: *Inpainting and
    restoration*.

    Parameters
    ----------
    score : callable
        The unconditional score ``score(x, t)`` on (n, D) images.
    y : torch.Tensor, shape (n, D)
        One observed image per sample; entries at missing coordinates are ignored.
    mask : bool tensor, shape (D,)
        True where known.
    times : sequence of float
        Strictly decreasing grid from T to the early-stopping time (see :func:`diffnotes.samplers.time_grid`).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of every Gaussian draw.
    return_trajectory : bool
        Also return the states after every step, shape (N + 1, n, D).
    """
    score, y, mask, times, sde = _setup(score, y, mask, times, sde)
    path = list(range(times.numel()))
    return _run_repaint(score, y, mask, times, sde, generator, path, return_trajectory)


def repaint(score: Callable, y: torch.Tensor, mask, times, *, jump_length: int = 10, n_resample: int = 10,
            sde: VPSDE | None = None, generator=None, return_trajectory: bool = False):
    r"""RePaint :cite:p:`lugmayr2022repaint`: replacement with jumps back along the forward process.

    The grid is walked as :func:`repaint_schedule` says: blocks of ``jump_length`` steps, each passed
    ``n_resample`` times; a reverse step is the replacement step of :func:`replacement`, a step back up from
    :math:`t'` to :math:`t > t'` is the exact forward transition

    .. math::

        x \leftarrow \frac{\alpha(t)}{\alpha(t')}\,x + \sqrt{1-\frac{\alpha(t)^2}{\alpha(t')^2}}\,\xi .

    The paper's defaults are ``jump_length = 10`` and ``n_resample = 10`` on 250 steps.  Each pass lets the missing
    coordinates adjust to the known ones, which reduces the bias of replacement; the cost is ``n_resample`` times
    the score evaluations.  Book chapter: *Inpainting and restoration*.

    Parameters
    ----------
    score, y, mask, times, sde, generator, return_trajectory
        As in :func:`replacement`; the trajectory holds the state after every move of the walk.
    jump_length : int
        j, the number of steps of a jump back.
    n_resample : int
        U, the number of passes over each block (1 is :func:`replacement`).
    """
    score, y, mask, times, sde = _setup(score, y, mask, times, sde)
    path = repaint_schedule(times.numel() - 1, jump_length, n_resample)
    return _run_repaint(score, y, mask, times, sde, generator, path, return_trajectory)


# -- DPS -------------------------------------------------------------------
_NORMALISE = (None, "paper", "code")


def dps(score: Callable, y: torch.Tensor, mask, times, *, zeta: float = 1.0, normalise: str | None = "paper",
        sde: VPSDE | None = None, generator=None, return_trajectory: bool = False):
    r"""Diffusion posterior sampling :cite:p:`chung2023diffusion` for inpainting (noise-free observation).

    Each step of the grid is the DDPM reverse step :math:`x'` of :func:`diffnotes.samplers.ddpm`, then

    .. math::

        x \leftarrow x' - \zeta_t\,\nabla_{x}\,\|y_{\mathcal K} - \hat x_{0,\mathcal K}(x)\|^2,\qquad
        \hat x_0(x) = \frac{x + h(t)\,s(x, t)}{\alpha(t)},

    the gradient taken through the score (autograd), with the step size

    * ``normalise="paper"`` (default): :math:`\zeta_t = \zeta'/\|y_{\mathcal K}-\hat x_{0,\mathcal K}\|`, per row,
      as in the experiments of the paper (Chung et al. 2023, Section 4 and Appendix C);
    * ``normalise="code"``: :math:`\zeta'/(2\|r\|)`, i.e. the gradient of the norm itself, as the authors' code does
      (their norm runs over the whole batch; here over each row);
    * ``normalise=None``: the constant :math:`\zeta_t=\zeta'`.

    The output is the final state: DPS does not overwrite the known coordinates, so they match :math:`y` only
    approximately.  The Tweedie plug-in :math:`p(y\mid\hat x_0(x_t))` for :math:`p_t(y\mid x_t)` makes DPS biased;
    its bias depends on :math:`\zeta'` and on the number of steps.  Book chapter: *Inpainting and restoration*.

    Parameters
    ----------
    score, y, mask, times, sde, generator, return_trajectory
        As in :func:`replacement`; the score must support autograd with respect to x.
    zeta : float
        The guidance strength :math:`\zeta' \ge 0` (0 gives unconditional DDPM).
    normalise : {"paper", "code", None}
        The step-size rule above.
    """
    score, y, mask, times, sde = _setup(score, y, mask, times, sde)
    try:
        zeta = float(zeta)
    except (TypeError, ValueError) as err:
        raise TypeError(f"zeta must be a number, got {zeta!r}") from err
    if not (math.isfinite(zeta) and zeta >= 0):
        raise ValueError(f"zeta must be a finite number >= 0, got {zeta}")
    if normalise not in _NORMALISE:
        raise ValueError(f"normalise must be 'paper', 'code' or None, got {normalise!r}")
    loop = _loop(y, generator, return_trajectory, "DPS")
    loop.record(loop.x)
    yk = y[:, mask].detach()
    for i in range(times.numel() - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        x = loop.x
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            s = _score_at(score, xr, t)
            x0 = sde.denoise(xr, s, torch.tensor(t, dtype=x.dtype))
            resid = ((yk - x0[:, mask]) ** 2).sum(dim=1)
            (grad,) = torch.autograd.grad(resid.sum(), xr)
        with torch.no_grad():
            x = _ddpm_update(sde, x, s.detach(), t, t_next, loop.draw(x))
            if normalise is None:
                step = torch.full_like(resid, zeta)
            else:
                norm = torch.sqrt(resid.detach()).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
                step = zeta / norm if normalise == "paper" else zeta / (2 * norm)
            loop.record(x - step[:, None] * grad)
    return loop.result("the guidance strength zeta is too large for this grid")


# -- error to the exact posterior -------------------------------------------------------------------
def posterior_error(samples, posterior: GaussianMixture, *, kind: str = "w2", n_reference: int | None = None,
                    n_projections: int = 200, generator=None) -> float:
    r"""Distance between a sample of missing pixels and the exact posterior (:func:`exact_posterior`).

    * ``kind="w2"`` (Gaussian posteriors): the closed-form :math:`W_2` (:func:`diffnotes.metrics.gaussian_w2`)
      between :math:`\mathsf N(\hat m, \hat C)`, the sample's mean and covariance, and the exact posterior.  For a
      sampler whose output is Gaussian (replacement, RePaint and the exact sampler on Gaussian data are affine in
      their Gaussian draws) this is the Wasserstein distance of the laws up to the Monte Carlo error of
      :math:`\hat m, \hat C`; the floor is measured by the same call on exact posterior draws.
    * ``kind="sliced"``: the sliced 2-Wasserstein distance (:func:`diffnotes.metrics.sliced_wasserstein`, POT)
      between the sample and ``n_reference`` exact posterior draws (default: as many as the sample).

    Parameters
    ----------
    samples : torch.Tensor, shape ``(n, m)`` (m unknown pixels)
        Missing coordinates of the inpainted images (``x[:, ~mask]``), n >= 2.
    posterior : GaussianMixture
        The exact posterior; for ``kind="w2"`` a :class:`~diffnotes.targets.Gaussian`.
    kind : {"w2", "sliced"}
    n_reference : int, optional
        Number of exact draws for ``kind="sliced"``.
    n_projections : int
        Number of directions of the sliced distance.
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the exact draws and of the directions.
    """
    if not isinstance(posterior, GaussianMixture):
        raise TypeError(f"posterior must be a GaussianMixture (see exact_posterior), got {type(posterior).__name__}")
    samples = _checks.points(samples, "samples", posterior.dim, min_n=2).detach().to(torch.float64).cpu()
    if kind == "w2":
        if not isinstance(posterior, Gaussian):
            raise ValueError("kind='w2' is the closed form for a Gaussian posterior; use kind='sliced' for mixtures")
        m = samples.mean(0)
        C = torch.cov(samples.T).reshape(posterior.dim, posterior.dim)
        return gaussian_w2(m, C, posterior.means[0], posterior.covs[0])
    if kind == "sliced":
        n_ref = samples.shape[0] if n_reference is None else _checks.positive_int(n_reference, "n_reference", 2)
        gen = _checks.generator(generator)
        ref = posterior.sample(n_ref, generator=gen)
        seed = int(torch.randint(0, 2**62, (), generator=gen)) if gen is not None else 0
        return sliced_wasserstein(samples.numpy(), ref.numpy(), n_projections=n_projections, generator=seed)
    raise ValueError(f"kind must be 'w2' or 'sliced', got {kind!r}")
