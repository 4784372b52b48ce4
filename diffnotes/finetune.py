r"""Prompt-conditioned generation and reward fine-tuning: the sampler as a policy.

Section 3.1 of the review (book chapter *Text-to-image style generation and reward fine-tuning*) describes
text-to-image models fine-tuned toward a reward by reading the sampler as a finite-horizon Markov decision process and
solving it by policy gradient (DDPO, :cite:t:`black2024training`; DPOK, :cite:t:`fan2023dpok`), and Section 7.1 (book
chapter *Diffusion models and stochastic control*) reads the same sampler as a controlled process.  This module holds
the machinery both chapters use:

* **prompts** as attribute vectors: :data:`ATTRIBUTES` (shape x intensity x position) give the 12 prompts of
  :data:`PROMPTS`; :func:`make_images` draws synthetic 8x8 images of each prompt (made in code, nothing is
  downloaded), :func:`read_prompt` reads the prompt of an image back by template matching;
* **a prompt-conditioned score**: :class:`PromptScoreMLP` embeds each attribute separately and sums the embeddings
  (one null embedding per attribute, used when the prompt is dropped), :func:`train_prompt_score` trains it by
  denoising score matching with label dropout (:func:`diffnotes.losses.conditional_dsm_loss`) and
  :func:`prompt_score` applies classifier-free guidance (:func:`diffnotes.guidance.classifier_free_guidance`);
* **the sampler as a policy**: the stochastic DDIM chain (:math:`\eta > 0`; :math:`\eta = 1` is DDPM) as Gaussian
  transitions :math:`\pi_\theta(x_{k+1}\mid x_k) = \mathsf N(c_k x_k + d_k\,s_\theta(x_k, t_k), \sigma_k^2 I)`
  whose log-probabilities are exact (:func:`step_coefficients`, :func:`transition_log_prob`,
  :func:`sample_chain`);
* **fine-tuning methods with one signature** (:func:`finetune`): ``"ddpo"`` (REINFORCE with per-step importance
  ratios and clipping), ``"dpok"`` (REINFORCE plus the KL divergence to the pretrained chain), ``"backprop"``
  (reward back-propagated through the last K steps of the sampler, DRaFT-K / AlignProp) and ``"guidance"`` (no
  training: the reward's gradient added to the pretrained score while sampling,
  :func:`diffnotes.reward.gradient_guidance`);
* small pieces for the control view: :class:`StepControl` (a learned offset of the score at each grid time, the
  exact family for Gaussian data and a linear reward) and :class:`ControlledScore`.

The exact answers (the tilted law :math:`p(x)e^{r(x)/\beta}` of Gaussian data, its score at every t, the Girsanov path
KL) are in :mod:`diffnotes.stochastic_control`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import _checks
from .guidance import classifier_free_guidance
from .losses import conditional_dsm_loss
from .networks import SinusoidalEmbedding, _mlp, _param_like, as_score, seeded
from .reward import gradient_guidance
from .samplers import _check_times, _Loop
from .sde import VPSDE, ConstantVP
from .training import TrainResult, train

__all__ = [
    "ATTRIBUTES",
    "PROMPTS",
    "N_PROMPTS",
    "prompt_index",
    "prompt_attributes",
    "prompt_images",
    "make_images",
    "read_prompt",
    "PromptScoreMLP",
    "train_prompt_score",
    "prompt_score",
    "step_coefficients",
    "transition_log_prob",
    "Chain",
    "sample_chain",
    "chain_log_probs",
    "chain_kl",
    "StepControl",
    "ControlledScore",
    "FinetuneResult",
    "finetune",
    "METHODS",
    "diversity",
    "brightness",
]

#: The attributes of a prompt and their values (a "prompt" picks one value of each).
ATTRIBUTES = {
    "shape": ("square", "bar", "cross"),
    "intensity": ("dim", "bright"),
    "position": ("left", "right"),
}
#: Every prompt, as a tuple (shape, intensity, position); its index is the model's label.
PROMPTS = tuple(itertools.product(*ATTRIBUTES.values()))
#: The number of prompts (the null prompt has index N_PROMPTS).
N_PROMPTS = len(PROMPTS)
_SIDE = 8
_LEVEL = {"dim": 0.0, "bright": 1.0}
_COLUMN = {"left": 2, "right": 5}


# -- prompts and images ------------------------------------------------------------------------------------------
def prompt_index(prompt) -> int:
    """The index of a prompt given as a tuple ``(shape, intensity, position)`` or a dict of the three attributes.

    Raises ``ValueError`` for a value outside :data:`ATTRIBUTES` (the message lists the allowed values).

    Parameters
    ----------
    prompt : tuple, list or dict
        ``(shape, intensity, position)`` (values from :data:`ATTRIBUTES`), or a dict with exactly the keys
        ``"shape"``, ``"intensity"`` and ``"position"``.

    Returns
    -------
    int
        The prompt's position in :data:`PROMPTS`, its label.
    """
    if isinstance(prompt, dict):
        missing = set(ATTRIBUTES) - set(prompt)
        if missing or len(prompt) != len(ATTRIBUTES):
            raise ValueError(f"a prompt needs exactly the attributes {list(ATTRIBUTES)}, got {sorted(prompt)}")
        prompt = tuple(prompt[k] for k in ATTRIBUTES)
    if not isinstance(prompt, (tuple, list)) or len(prompt) != len(ATTRIBUTES):
        raise ValueError(f"a prompt is a tuple {tuple(ATTRIBUTES)}, got {prompt!r}")
    for (name, values), value in zip(ATTRIBUTES.items(), prompt, strict=True):
        if value not in values:
            raise ValueError(f"{name} must be one of {values}, got {value!r}")
    return PROMPTS.index(tuple(prompt))


def prompt_attributes(y) -> torch.Tensor:
    """The attribute indices (n, 3) of prompt labels y (n,), in 0..N_PROMPTS (N_PROMPTS: the null prompt, -1 each).

    Parameters
    ----------
    y : int or array_like of int
        Prompt labels in 0..N_PROMPTS (flattened to (n,)); a label outside raises ``ValueError``.

    Returns
    -------
    torch.Tensor
        Long tensor (n, 3): the index of each row's shape, intensity and position in :data:`ATTRIBUTES` (-1 for the
        null prompt).
    """
    y = torch.as_tensor(y).long().reshape(-1)
    if torch.any((y < 0) | (y > N_PROMPTS)):
        raise ValueError(f"prompt labels must lie in 0..{N_PROMPTS} ({N_PROMPTS} is the null prompt), got "
                         f"{sorted(set(y.tolist()))}")
    sizes = [len(v) for v in ATTRIBUTES.values()]
    table = torch.tensor([list(np.unravel_index(i, sizes)) for i in range(N_PROMPTS)] + [[-1] * len(sizes)])
    return table[y]


def _check_prompts(y, n: int | None = None) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"prompt labels must be integers, got dtype {y.dtype}")
    y = y.long().reshape(-1) if y.ndim else y.long().expand(1 if n is None else n)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"need one prompt label per row ({n}), got {y.shape[0]}")
    if torch.any((y < 0) | (y >= N_PROMPTS)):
        raise ValueError(f"prompt labels must lie in 0..{N_PROMPTS - 1} (see PROMPTS), got {sorted(set(y.tolist()))}")
    return y


def _draw(shape: str, level: float, col: int, row: int) -> np.ndarray:
    img = -np.ones((_SIDE, _SIDE))
    if shape == "square":
        img[row - 1:row + 2, col - 1:col + 2] = level
    elif shape == "bar":
        img[row - 2:row + 3, col] = level
    else:  # cross
        img[row, col - 1:col + 2] = level
        img[row - 1:row + 2, col] = level
    return img


def prompt_images(y, row) -> torch.Tensor:
    """The clean (noise-free) image of each prompt label y (n,) with its shape centred on row ``row`` (n,), (n, 64).

    Parameters
    ----------
    y : int or array_like of int
        Prompt labels in 0..N_PROMPTS-1, shape (n,) (or one label).
    row : int or array_like of int
        The centre row of each image's shape, broadcast to (n,); 2..5 keeps every shape inside the 8x8 image.

    Returns
    -------
    torch.Tensor
        The flat images, (n, 64), float64, background -1.
    """
    y = _check_prompts(y)
    rows = np.broadcast_to(np.asarray(row), y.shape)
    out = [_draw(*PROMPTS[int(i)][:1], _LEVEL[PROMPTS[int(i)][1]], _COLUMN[PROMPTS[int(i)][2]], int(r)).ravel()
           for i, r in zip(y.tolist(), rows.tolist(), strict=True)]
    return torch.as_tensor(np.array(out), dtype=torch.float64)


def make_images(n: int, prompts=None, *, noise: float = 0.05, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Synthetic 8x8 images of prompts: a shape of one grey level at one side on a dark background.

    Each image is the clean drawing of its prompt (:func:`prompt_images`: a 3x3 square, a vertical bar of 5 pixels
    or a plus of 5 pixels, of level 0 ("dim") or 1 ("bright") on the background -1, centred on column 2 ("left")
    or 5 ("right")), with its centre row drawn uniformly from {2, ..., 5}, plus independent Gaussian pixel noise of
    standard deviation ``noise``.  Flat rows of 64 numbers, the package's ``(n, D)`` protocol.  Book chapter
    *Text-to-image style generation and reward fine-tuning*.

    Parameters
    ----------
    n : int
        Number of images.
    prompts : array of ints, optional
        The prompt label of each row (n,) or of all rows; default uniform over :data:`PROMPTS`.
    noise : float
        Pixel noise standard deviation, >= 0.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the prompts, rows and noise.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Images (n, 64) float64 and prompt labels (n,).
    """
    n = _checks.positive_int(n, "n")
    noise = float(noise)
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    gen = _checks.generator(generator)
    y = torch.randint(0, N_PROMPTS, (n,), generator=gen) if prompts is None else _check_prompts(prompts, None)
    if y.shape[0] == 1 and n > 1:
        y = y.expand(n)
    if y.shape[0] != n:
        raise ValueError(f"prompts must be one label or one per image ({n}), got {y.shape[0]}")
    rows = torch.randint(2, 6, (n,), generator=gen)
    x = prompt_images(y, rows.numpy()) + noise * torch.randn(n, _SIDE * _SIDE, generator=gen, dtype=torch.float64)
    return x, y.clone()


def read_prompt(x: torch.Tensor) -> torch.Tensor:
    """The prompt of each image (n, 64): the nearest clean drawing (any prompt, any centre row) in Euclidean distance.

    A fixed, exact reader of the synthetic images (their "CLIP"): on images of :func:`make_images` with noise 0.05
    it is always right.

    Parameters
    ----------
    x : torch.Tensor
        Flat images, (n, 64).

    Returns
    -------
    torch.Tensor
        The prompt label of each image, long (n,).
    """
    x = _checks.points(x, "x", _SIDE * _SIDE)
    labels = torch.arange(N_PROMPTS).repeat_interleave(4)
    rows = np.tile(np.arange(2, 6), N_PROMPTS)
    templates = prompt_images(labels, rows).to(x)
    d = torch.cdist(x.detach(), templates)
    return labels[d.argmin(dim=1)]


def brightness(x: torch.Tensor) -> torch.Tensor:
    r"""The mean pixel value of each image clipped to the pixel range, :math:`r(x) = \frac1{D}\sum_j
    \mathrm{clip}(x_j, -1, 1)` (a simple "aesthetic" reward in [-1, 1]), (n,).

    Parameters
    ----------
    x : torch.Tensor
        Images, (n, D); differentiable (the reward of ``"backprop"`` and ``"guidance"``).
    """
    x = _checks.points(x, "x")
    return x.clamp(-1.0, 1.0).mean(dim=1)


def diversity(x: torch.Tensor) -> float:
    r"""The mean per-pixel standard deviation of a set of images (n, D), :math:`\frac1D\sum_j\mathrm{sd}(x_{\cdot j})`.

    Zero when every image is the same: the collapse of diversity that reward hacking produces.

    Parameters
    ----------
    x : torch.Tensor
        Images, (n, D), n >= 2.
    """
    x = _checks.points(x, "x", min_n=2)
    return float(x.detach().std(dim=0).mean())


# -- the prompt-conditioned score network -------------------------------------------------------------------------
class PromptScoreMLP(nn.Module):
    r"""A prompt-conditioned network :math:`(x, y, t)\mapsto f_\theta(x, e(y), t)` with a compositional prompt encoder.

    The prompt embedding is the sum of one learned embedding per attribute,
    :math:`e(y) = E_{\rm shape}[y_1] + E_{\rm intensity}[y_2] + E_{\rm position}[y_3]`, the bag-of-attributes analogue
    of a text encoder; the null prompt (label :data:`N_PROMPTS`) uses each table's extra null row, so a network
    trained with label dropout gives the unconditional output too (classifier-free guidance,
    :cite:p:`ho2022classifier`).  The input of the MLP is the concatenation of x, a sinusoidal embedding of
    :math:`\log t` and e(y).  Book chapter *Text-to-image style generation and reward fine-tuning*.

    Parameters
    ----------
    hidden, depth : int
        Width and number of the hidden layers.
    prompt_dim : int
        Width of the prompt embedding.
    embedding_dim : int
        Width of the time embedding (even).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    """

    conditional = True
    n_classes = N_PROMPTS

    def __init__(self, hidden: int = 128, depth: int = 2, prompt_dim: int = 16, embedding_dim: int = 16, *,
                 generator=None):
        super().__init__()
        _checks.sizes(hidden=hidden, depth=depth, prompt_dim=prompt_dim)
        self.dim = _SIDE * _SIDE
        self.embedding = SinusoidalEmbedding(embedding_dim)
        with seeded(generator):
            self.attributes = nn.ModuleList(nn.Embedding(len(v) + 1, int(prompt_dim)) for v in ATTRIBUTES.values())
            self.net = _mlp(self.dim + self.embedding.n_features + int(prompt_dim), int(hidden), int(depth), self.dim)

    @property
    def null_label(self) -> int:
        """The index of the null prompt, :data:`N_PROMPTS`."""
        return N_PROMPTS

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """The prompt embeddings e(y), (n, prompt_dim), of labels in 0..N_PROMPTS.

        Parameters
        ----------
        y : int or array_like of int
            Prompt labels in 0..N_PROMPTS (N_PROMPTS: the null prompt), shape (n,).
        """
        idx = prompt_attributes(y)
        return sum(table(torch.where(idx[:, j] < 0, table.num_embeddings - 1, idx[:, j]))
                   for j, table in enumerate(self.attributes))

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The output for flat images x (n, 64), prompt labels y (an int or (n,)) and times t, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Flat (noisy) images, (n, 64).
        y : int or array_like of int
            One prompt label for all rows or one per row, in 0..N_PROMPTS (N_PROMPTS: the null prompt).
        t : float or torch.Tensor
            One time, or one per row.
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        y = _checks.labels(y, x.shape[0], device=p.device)
        xp = x.to(dtype=p.dtype, device=p.device)
        tp = _checks.time_rows(t, x.shape[0], xp)
        features = torch.cat([xp, self.embedding(tp), self.encode(y).to(xp.dtype)], dim=1)
        return self.net(features).to(dtype=x.dtype, device=x.device)


def train_prompt_score(x, y, *, steps: int, sde: VPSDE | None = None, hidden: int = 128, depth: int = 2,
                       t0: float = 1e-3, p_uncond: float = 0.1, batch_size: int = 128, lr: float = 3e-3,
                       ema: float | None = 0.99, generator=None, progress: bool = False) -> TrainResult:
    r"""Train a prompt-conditioned score by denoising score matching with label dropout.

    Minimises :func:`~diffnotes.losses.conditional_dsm_loss` of ``as_score(PromptScoreMLP(...), "eps", sde)``
    with :func:`~diffnotes.training.train`: the prompt is replaced by the null prompt with probability ``p_uncond``
    :cite:p:`ho2022classifier`.  Book chapter *Text-to-image style generation and reward fine-tuning*.

    Parameters
    ----------
    x, y : torch.Tensor
        Images (n, 64) and prompt labels (n,) (from :func:`make_images`).
    steps, batch_size, lr, ema, progress
        As in :func:`~diffnotes.training.train`.
    sde : VPSDE, optional
        Forward process (default :class:`~diffnotes.sde.ConstantVP` with T = 5).
    hidden, depth
        Of the :class:`PromptScoreMLP`.
    t0 : float
        Early-stopping time of the loss.
    p_uncond : float
        Label-dropout probability, in (0, 1).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the weights and every draw.

    Returns
    -------
    TrainResult
        The conditional score ``score(x, y, t)`` to sample with is ``ema_model`` (``model`` without EMA).
    """
    x = _checks.points(x, "x", _SIDE * _SIDE, numpy=True)
    y = _check_prompts(y, x.shape[0])
    p_uncond = _checks.probability(p_uncond, "p_uncond", open_left=True, open_right=True)
    sde = ConstantVP(T=5.0) if sde is None else _checks.sde_or_default(sde)
    gen = _checks.generator(generator)
    model = as_score(PromptScoreMLP(hidden, depth, generator=gen), "eps", sde, conditional=True)
    loss = functools.partial(conditional_dsm_loss, t0=t0, sde=sde, p_uncond=p_uncond, n_classes=N_PROMPTS)
    return train(model, loss, (x.float(), y), steps=steps, batch_size=batch_size, lr=lr, generator=gen, ema=ema,
                 progress=progress)


def prompt_score(cond_score: Callable, y, guidance: float = 0.0) -> Callable:
    r"""The classifier-free guided score of prompts y: :math:`(1 + w)\,s(x, y, t) - w\,s(x, \varnothing, t)`.

    A thin, checked front of :func:`diffnotes.guidance.classifier_free_guidance` for prompt labels (a label outside
    0..N_PROMPTS-1 raises ``ValueError``).

    Parameters
    ----------
    cond_score : callable
        The conditional score ``cond_score(x, y, t)`` (label N_PROMPTS: the null prompt).
    y : int or array_like of int
        One prompt label for every row, or one per row (n,), in 0..N_PROMPTS-1.
    guidance : float
        The guidance weight w (0: the conditional score itself).

    Returns
    -------
    callable
        The guided score ``score(x, t)``.
    """
    y = _check_prompts(y)
    return classifier_free_guidance(cond_score, y if y.numel() > 1 else int(y[0]), guidance, N_PROMPTS,
                                    n_classes=N_PROMPTS)


# -- the sampler as a policy --------------------------------------------------------------------------------------
def step_coefficients(sde: VPSDE, t: float, t_next: float, eta: float = 1.0) -> tuple[float, float, float]:
    r"""The coefficients :math:`(c, d, \sigma)` of one stochastic DDIM step :math:`t \to t'`.

    With :math:`\bar\alpha = \alpha(t)^2`, :math:`\bar\alpha' = \alpha(t')^2`, the DDIM step of
    :func:`diffnotes.samplers.ddim` (:cite:p:`song2021denoising`) is :math:`x' = c\,x + d\,s(x, t) + \sigma\xi`,

    .. math::

        c = \sqrt{\bar\alpha'/\bar\alpha},\quad
        d = \frac{\sqrt{\bar\alpha'}(1-\bar\alpha)}{\sqrt{\bar\alpha}} - \sqrt{(1-\bar\alpha'-\sigma^2)(1-\bar\alpha)},
        \quad \sigma = \eta\sqrt{\frac{1-\bar\alpha'}{1-\bar\alpha}\Big(1-\frac{\bar\alpha}{\bar\alpha'}\Big)},

    so that the policy's transition is the Gaussian :math:`\mathsf N(c\,x + d\,s(x, t), \sigma^2 I)`; ``eta = 1`` is
    DDPM's ancestral step.  Book chapters *Text-to-image style generation and reward fine-tuning* and *Diffusion
    models and stochastic control*.

    Parameters
    ----------
    sde : VPSDE or None
        The forward process (None: :class:`~diffnotes.sde.ConstantVP`).
    t, t_next : float
        The step's times, :math:`0 < t' < t \le T`.
    eta : float
        DDIM stochasticity in (0, 1] (1: DDPM).

    Returns
    -------
    (float, float, float)
        :math:`(c, d, \sigma)`.
    """
    sde = _checks.sde_or_default(sde)
    eta = _check_eta(eta)
    t, t_next = float(t), float(t_next)
    if not (0 < t_next < t <= sde.T * (1 + 1e-12)):
        raise ValueError(f"need 0 < t_next < t <= T = {sde.T}, got t = {t}, t_next = {t_next}")
    return _coefficients(sde, t, t_next, eta)


def _check_eta(eta) -> float:
    eta = float(eta)
    if not (0 < eta <= 1):
        raise ValueError(f"eta must lie in (0, 1] for a stochastic chain (eta = 0 has no log-probabilities), got {eta}")
    return eta


def _coefficients(sde: VPSDE, t: float, t_next: float, eta: float) -> tuple[float, float, float]:
    """:func:`step_coefficients` for arguments already checked (a chain checks its grid and eta once)."""
    ab = float(sde.alpha(torch.tensor(t, dtype=torch.float64))) ** 2
    ab_next = float(sde.alpha(torch.tensor(t_next, dtype=torch.float64))) ** 2
    sigma = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
    c = math.sqrt(ab_next / ab)
    d = math.sqrt(ab_next) * (1 - ab) / math.sqrt(ab) - math.sqrt(max(1 - ab_next - sigma**2, 0.0) * (1 - ab))
    return c, d, sigma


def _gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    D = x_next.shape[1]
    return (-0.5 * ((x_next - mean) ** 2).sum(dim=1) / sigma**2 - D * math.log(sigma)
            - 0.5 * D * math.log(2 * math.pi))


def transition_log_prob(score: Callable, x: torch.Tensor, x_next: torch.Tensor, t: float, t_next: float, *,
                        sde: VPSDE | None = None, eta: float = 1.0) -> torch.Tensor:
    r"""The exact log-probability :math:`\log\pi(x'\mid x)` of one step of the stochastic DDIM chain, shape (n,).

    .. math::

        \log\pi(x'\mid x) = -\frac{\|x' - c\,x - d\,s(x, t)\|^2}{2\sigma^2} - D\log\sigma - \frac D2\log 2\pi

    with :math:`(c, d, \sigma)` of :func:`step_coefficients`.  Differentiable in the score's parameters: the
    per-step log-likelihood that DDPO's and DPOK's policy gradients use :cite:p:`black2024training,fan2023dpok`.

    Parameters
    ----------
    score : callable
        ``score(x, t)``.
    x, x_next : torch.Tensor
        States before and after the step, (n, D).
    t, t_next : float
        The step's times, t > t_next > 0.
    sde : VPSDE, optional
        Forward process.
    eta : float
        DDIM stochasticity in (0, 1].
    """
    x = _checks.points(x, "x")
    x_next = _checks.points(x_next, "x_next", x.shape[1])
    if x_next.shape[0] != x.shape[0]:
        raise ValueError(f"x and x_next must have the same rows, got {x.shape[0]} and {x_next.shape[0]}")
    sde = _checks.sde_or_default(sde)
    c, d, sigma = step_coefficients(sde, t, t_next, eta)
    mean = c * x + d * score(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
    return _gaussian_log_prob(x_next, mean, sigma)


@dataclass
class Chain:
    r"""A run of the stochastic chain: states :math:`x_0, \dots, x_K` (K+1, n, D), per-step log-probabilities
    (K, n), the grid ``times`` (K+1,), the per-step noise scales ``sigmas`` (K,) and ``final`` (n, D), the output
    (the last state, or its Tweedie denoising with ``final_denoise``).

    Parameters
    ----------
    states : torch.Tensor
        The visited states :math:`x_0, \dots, x_K`, (K + 1, n, D), detached.
    log_probs : torch.Tensor
        :math:`\log\pi(x_{k+1}\mid x_k)` of each step and path, (K, n), detached.
    times : torch.Tensor
        The grid :math:`t_0 > \dots > t_K`, (K + 1,).
    sigmas : torch.Tensor
        The noise scale :math:`\sigma_k` of each step, (K,).
    final : torch.Tensor
        The output (n, D), attached to the graph of the steps that were differentiated through.
    """

    states: torch.Tensor
    log_probs: torch.Tensor
    times: torch.Tensor
    sigmas: torch.Tensor
    final: torch.Tensor


def _grid(times) -> torch.Tensor:
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or times.numel() < 2 or not bool(torch.all(times[1:] < times[:-1])) or times[-1] <= 0:
        raise ValueError("times must be a strictly decreasing grid of at least 2 positive times")
    return times


def sample_chain(score: Callable, start: torch.Tensor, times, *, sde: VPSDE | None = None, eta: float = 1.0,
                 generator=None, grad_steps: int | None = 0, final_denoise: bool = False,
                 noise: Callable | None = None) -> Chain:
    r"""Run the stochastic DDIM chain as a policy and record every state and exact per-step log-probability.

    Step k draws :math:`x_{k+1} = c_k x_k + d_k\,s(x_k, t_k) + \sigma_k\xi_k` (:func:`step_coefficients`) and records
    :math:`\log\pi(x_{k+1}\mid x_k)` (:func:`transition_log_prob`).  With ``grad_steps = K'`` the graph is kept through
    the last K' steps only (the state is detached before them): the reparameterised, truncated reward gradient of
    DRaFT-K :cite:p:`clark2024directly` (``grad_steps=None``: through every step, AlignProp
    :cite:p:`prabhudesai2023aligning`); ``grad_steps=0`` runs without a graph (log-probabilities for REINFORCE are
    then recomputed by :func:`transition_log_prob`).  The same noise gives the same states as
    :func:`diffnotes.samplers.ddim` with this ``eta``.

    Parameters
    ----------
    score : callable
        ``score(x, t)``.
    start : torch.Tensor
        :math:`x_0`, (n, D), usually :math:`\mathsf N(0, I)` at the horizon.
    times : tensor
        Decreasing grid :math:`t_0 > \dots > t_K > 0`.
    sde : VPSDE, optional
        Forward process.
    eta : float
        DDIM stochasticity in (0, 1] (1: DDPM).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the noise.
    grad_steps : int or None
        Number of final steps to differentiate through (0: none, None: all).
    final_denoise : bool
        Return Tweedie's denoised estimate of the last state as ``final``.
    noise : callable, optional
        ``noise(like)`` replacing the Gaussian draws.
    """
    sde = _checks.sde_or_default(sde)
    times = _check_times(times, sde)
    eta = _check_eta(eta)
    K = times.numel() - 1
    if grad_steps is None:
        grad_steps = K
    grad_steps = _checks.positive_int(grad_steps, "grad_steps", minimum=0)
    # the samplers' loop (start, noise hook, trajectory, finite check); the states are kept in the graph
    loop = _Loop(_checks.points(start, "start"), generator, noise, return_trajectory=True, what="the chain")
    log_probs, sigmas = [], []
    for k in range(K):
        t, t_next = float(times[k]), float(times[k + 1])
        c, d, sigma = _coefficients(sde, t, t_next, eta)
        keep = k >= K - grad_steps
        x = loop.x if keep else loop.x.detach()
        with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
            mean = c * x + d * score(x, torch.full((x.shape[0],), t, dtype=x.dtype))
            x_next = mean + sigma * loop.draw(x)
            log_probs.append(_gaussian_log_prob(x_next.detach(), mean.detach(), sigma))
        loop.record(x_next)
        sigmas.append(sigma)
    x, states = loop.result()
    final = x
    if final_denoise:
        t_last = float(times[-1])
        final = sde.denoise(x, score(x, torch.full((x.shape[0],), t_last, dtype=x.dtype)), t_last)
    return Chain(states.detach(), torch.stack(log_probs), times, torch.tensor(sigmas, dtype=torch.float64), final)


def _stacked(chain: Chain, sde: VPSDE, eta: float):
    """All visited states x_0..x_{K-1} stacked step-major (K n, D), their times (K n,) and the step coefficients."""
    K, n = chain.states.shape[0] - 1, chain.states.shape[1]
    times, eta = _check_times(chain.times, sde), _check_eta(eta)
    coef = torch.tensor([_coefficients(sde, float(times[k]), float(times[k + 1]), eta) for k in range(K)],
                        dtype=torch.float64)
    x = chain.states[:-1].reshape(K * n, -1)
    t = chain.times[:-1].to(x.dtype).repeat_interleave(n)
    return x, t, coef.to(x.dtype), K, n


def chain_log_probs(score: Callable, chain: Chain, *, sde: VPSDE | None = None, eta: float = 1.0) -> torch.Tensor:
    r"""The log-probabilities :math:`\log\pi(x_{k+1}\mid x_k)` of a recorded chain under ``score``, (K, n).

    Equal to :func:`transition_log_prob` step by step, but the score is called **once**, on all K n visited states
    stacked step-major (rows :math:`k n, \dots, k n + n - 1` hold step k) with one time per row: ``score`` must
    accept K n rows (bind per-row labels repeated K times).  Differentiable in the score's parameters.

    Parameters
    ----------
    score : callable
        ``score(x, t)``, called once on the (K n, D) stacked states with (K n,) times.
    chain : Chain
        A recorded chain (:func:`sample_chain`).
    sde : VPSDE, optional
        Forward process (the chain's).
    eta : float
        DDIM stochasticity in (0, 1] (the chain's).
    """
    sde = _checks.sde_or_default(sde)
    x, t, coef, K, n = _stacked(chain, sde, eta)
    mean = coef[:, 0].repeat_interleave(n)[:, None] * x + coef[:, 1].repeat_interleave(n)[:, None] * score(x, t)
    mean = mean.reshape(K, n, -1)
    D = x.shape[1]
    sig = coef[:, 2][:, None]
    sq = ((chain.states[1:] - mean) ** 2).sum(dim=2)
    return -0.5 * sq / sig**2 - D * torch.log(sig) - 0.5 * D * math.log(2 * math.pi)


def chain_kl(score: Callable, reference: Callable, chain: Chain, *, sde: VPSDE | None = None,
             eta: float = 1.0) -> torch.Tensor:
    r"""The exact per-path KL of a chain to the pretrained chain, summed over steps at the visited states, (n,).

    Both transitions are Gaussian with the same variance, so each step contributes

    .. math::

        \mathrm{KL}\big(\pi_\theta(\cdot\mid x_k)\,\|\,\pi_{\rm ref}(\cdot\mid x_k)\big)
        = \frac{d_k^2\,\|s_\theta(x_k, t_k) - s_{\rm ref}(x_k, t_k)\|^2}{2\sigma_k^2},

    and the mean over paths drawn from :math:`\pi_\theta` is an unbiased estimate of the path KL
    :math:`\mathrm{KL}(P^\theta_{\rm path}\,\|\,P^{\rm ref}_{\rm path})` (chain rule), an upper bound on the KL of the
    outputs.  Differentiable in :math:`\theta` at the (fixed) visited states: DPOK's KL term :cite:p:`fan2023dpok`.
    As in :func:`chain_log_probs`, both scores are called once on the K n stacked states.

    Parameters
    ----------
    score : callable
        The trained score :math:`s_\theta(x, t)` (gradients flow through it).
    reference : callable
        The pretrained score :math:`s_{\rm ref}(x, t)` (evaluated without gradients).
    chain, sde, eta
        As in :func:`chain_log_probs` (the KL is taken at the chain's visited states).
    """
    sde = _checks.sde_or_default(sde)
    x, t, coef, K, n = _stacked(chain, sde, eta)
    with torch.no_grad():
        ref = reference(x, t)
    w = (coef[:, 1] ** 2 / (2 * coef[:, 2] ** 2)).repeat_interleave(n)
    per = w * ((score(x, t) - ref) ** 2).sum(dim=1)
    return per.reshape(K, n).sum(dim=0)


# -- controls --------------------------------------------------------------------------------------------------
class StepControl(nn.Module):
    r"""A learned offset :math:`u_k \in \mathbb R^D` of the score at each grid time: :math:`u(x, t_k) = u_k`.

    For Gaussian data and a linear reward the exact KL-regularised optimum of the chain is reached by a
    state-independent shift of every transition's mean (the Doob h-transform of a linear reward is linear in x), so
    this family contains the exact answer (:mod:`diffnotes.stochastic_control`).  Times off the grid raise
    ``ValueError``.  Book chapter *Diffusion models and stochastic control*.

    Parameters
    ----------
    dim : int
        Dimension D.
    times : tensor
        The decreasing grid (every grid time, the last one included, has its own offset).
    """

    def __init__(self, dim: int, times):
        super().__init__()
        self.dim = _checks.positive_int(dim, "dim")
        self.register_buffer("times", _grid(times).clone())
        self.offsets = nn.Parameter(torch.zeros(self.times.numel(), self.dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The offset of each row's grid time t (t must be one of the grid times), shape like x (n, dim).

        Parameters
        ----------
        x : torch.Tensor
            Points, (n, dim) (only their number of rows and dtype matter).
        t : float or torch.Tensor
            One grid time, or one per row.
        """
        x = _checks.points(x, "x", self.dim)
        tr = _checks.time_rows(t, x.shape[0], x).to(torch.float64)
        gap = (tr[:, None] - self.times[None, :]).abs()
        idx = gap.argmin(dim=1)
        if torch.any(gap.gather(1, idx[:, None]) > 1e-9 * (1 + tr.abs()[:, None])):
            raise ValueError("StepControl is defined on its grid times only")
        return self.offsets[idx].to(x.dtype)


class ControlledScore(nn.Module):
    r"""The pretrained score plus a control: :math:`s_u(x, t) = s_{\rm ref}(x, t) + u(x, t)`.

    The backward SDE :math:`\mathrm dY = [\tfrac12 g Y + g\,s_u(Y, t)]\,\mathrm dt + \sqrt g\,\mathrm dB` then has the
    drift of the pretrained model plus :math:`g\,u`: fine-tuning as control (review Section 7.1,
    :cite:p:`uehara2024fine`).  Only the control's parameters are trained (freeze the reference's own parameters);
    gradients still flow through the reference's dependence on x, as back-propagation through the sampler needs.

    Parameters
    ----------
    reference : callable
        The pretrained score ``reference(x, t)`` (not registered as a submodule: its parameters are not the
        module's).
    control : torch.nn.Module
        The control ``control(x, t)`` (e.g. a :class:`StepControl`), whose parameters are trained.
    """

    def __init__(self, reference: Callable, control: nn.Module):
        super().__init__()
        if not callable(reference):
            raise TypeError("reference must be a score callable score(x, t)")
        self.__dict__["reference"] = reference
        self.control = control

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The controlled score: the reference score plus the control at (x, t).

        Parameters
        ----------
        x : torch.Tensor
            Points, (n, D).
        t : float or torch.Tensor
            One time, or one per row.
        """
        return self.reference(x, t) + self.control(x, t)


# -- fine-tuning ------------------------------------------------------------------------------------------------
#: The methods of :func:`finetune`.
METHODS = ("ddpo", "dpok", "backprop", "guidance")


@dataclass
class FinetuneResult:
    r"""What :func:`finetune` returns: the fine-tuned ``score`` (``score(x, t)``, or ``score(x, y, t)`` for
    prompts; for ``"guidance"`` the guided score), the ``model`` whose parameters were trained (None for
    guidance), and per iteration the batch mean ``reward`` (with its standard error ``reward_se``) and the batch
    mean path ``kl`` to the pretrained chain (:func:`chain_kl`), all measured on the paths of that iteration before
    its update.

    Parameters
    ----------
    score : callable
        The fine-tuned (or, for ``"guidance"``, the guided) score.
    model : torch.nn.Module or None
        The trained module (None for ``"guidance"``).
    reward : numpy.ndarray
        Batch mean reward per iteration, (n_iters,).
    reward_se : numpy.ndarray
        Its standard error, (n_iters,).
    kl : numpy.ndarray
        Batch mean path KL to the pretrained chain per iteration, (n_iters,).
    extra : dict
        Room for method-specific records (empty by default).
    """

    score: Callable
    model: nn.Module | None
    reward: np.ndarray
    reward_se: np.ndarray
    kl: np.ndarray
    extra: dict = field(default_factory=dict)


def _reward_values(reward: Callable, x: torch.Tensor) -> torch.Tensor:
    r = reward(x)
    if not isinstance(r, torch.Tensor) or r.shape != (x.shape[0],):
        raise ValueError(f"reward must return a tensor of shape ({x.shape[0]},), one value per sample; got "
                         f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
    if not bool(torch.all(torch.isfinite(r.detach()))):
        raise ValueError("reward returned NaN or infinite values")
    return r


def finetune(method: str, model: nn.Module, reference: Callable, reward: Callable, *, times, dim: int,
             beta: float = 0.0, sde: VPSDE | None = None, eta: float = 1.0, n_iters: int = 50,
             batch_size: int = 64, lr: float = 1e-2, clip: float = 0.2, inner: int = 2, grad_steps: int | None = 1,
             strength: float | None = None, prompts=None, guidance: float = 0.0, final_denoise: bool = False,
             callback: Callable | None = None, generator=None) -> FinetuneResult:
    r"""Fine-tune a diffusion sampler toward a reward, with or without a KL penalty to the pretrained sampler.

    The problem (review Sections 3.1 and 7.1; :cite:p:`uehara2024fine`) is, for the chain
    :math:`\pi_\theta` of :func:`sample_chain` and the pretrained chain :math:`\pi_{\rm ref}`,

    .. math::

        \max_\theta\ \mathbb E_{\pi_\theta}\big[r(x_K)\big]
        - \beta\,\mathrm{KL}\big(P^\theta_{\rm path}\,\|\,P^{\rm ref}_{\rm path}\big),

    whose exact solution over all path laws tilts the pretrained output law, :math:`p_\beta \propto
    p_{\rm ref}\,e^{r/\beta}` (:class:`diffnotes.stochastic_control.TiltedGaussian`).  Each iteration draws
    ``batch_size`` paths from the current chain and updates the parameters of ``model`` with Adam:

    * ``"ddpo"`` :cite:p:`black2024training`: advantages :math:`A_i = (r_i - \bar r)/\mathrm{sd}(r)`, then ``inner``
      epochs on the clipped importance-ratio surrogate of PPO :cite:p:`schulman2017proximal` summed over steps,
      :math:`-\frac1n\sum_{i,k}\min\big(\rho_{ik}A_i, \mathrm{clip}(\rho_{ik}, 1-\epsilon, 1+\epsilon)A_i\big)`,
      :math:`\rho_{ik} = \pi_\theta(x_{k+1}^i\mid x_k^i)/\pi_{\theta_{\rm old}}(x_{k+1}^i\mid x_k^i)`;
    * ``"dpok"`` :cite:p:`fan2023dpok`: REINFORCE :cite:p:`williams1992simple` with advantages,
      :math:`-\frac1n\sum_i A_i\sum_k\log\pi_\theta(x^i_{k+1}\mid x^i_k)`, plus :math:`\beta` times the exact
      per-step KL at the visited states (:func:`chain_kl`); needs :math:`\beta > 0`.  Advantages are on the reward's
      scale: :math:`A_i = r_i - \bar r`, so that the KL weight means what it means in the objective above;
    * ``"backprop"`` (DRaFT-K :cite:p:`clark2024directly`, AlignProp :cite:p:`prabhudesai2023aligning`):
      :math:`-\frac1n\sum_i r(x^i_K)` differentiated through the last ``grad_steps`` steps of the reparameterised chain,
      plus :math:`\beta` times :func:`chain_kl` at the visited states;
    * ``"guidance"``: no training; the pretrained score plus :math:`\eta\,\nabla r(\hat x_0(x, t))`
      (:func:`diffnotes.reward.gradient_guidance`) with :math:`\eta` = ``strength`` (default :math:`1/\beta`),
      evaluated on ``n_iters`` batches.

    For ``"ddpo"`` with ``beta > 0`` the KL term is added as for DPOK.

    Parameters
    ----------
    method : {"ddpo", "dpok", "backprop", "guidance"}
        The method.
    model : torch.nn.Module
        The trainable score: ``model(x, t)``, or ``model(x, y, t)`` with ``prompts`` (e.g. a :class:`ControlledScore`
        or a copy of a pretrained conditional score).  Trained in place (ignored for ``"guidance"``).
    reference : callable
        The frozen pretrained score, same protocol as ``model``.
    reward : callable
        ``reward(x) -> (n,)`` (differentiable for ``"backprop"`` and ``"guidance"``).
    times : tensor
        The chain's decreasing time grid.
    dim : int
        Data dimension D (the start is :math:`\mathsf N(0, I_D)`).
    beta : float
        KL weight :math:`\beta \ge 0`.
    sde : VPSDE, optional
        Forward process.
    eta : float
        DDIM stochasticity in (0, 1].
    n_iters, batch_size, lr : int, int, float
        Iterations, paths per iteration, Adam learning rate.
    clip : float
        DDPO's clipping range :math:`\epsilon > 0`.
    inner : int
        DDPO's epochs per batch.
    grad_steps : int or None
        Steps differentiated through by ``"backprop"`` (None: all).
    strength : float, optional
        Guidance strength for ``"guidance"``.
    prompts : array of ints, optional
        Prompt labels; each path gets one drawn uniformly from them, and the scores are called with it, with
        classifier-free guidance of weight ``guidance``.
    guidance : float
        The classifier-free guidance weight w of the prompted scores (:func:`prompt_score`; ignored without
        ``prompts``).
    final_denoise : bool
        Score the Tweedie denoising of the last state instead of the state.
    callback : callable, optional
        ``callback(iteration, chain, score)`` after the paths of each iteration are drawn.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of every draw.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    beta = float(beta)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if method == "dpok" and beta <= 0:
        raise ValueError("DPOK regularises by the KL divergence: beta must be > 0")
    if method == "guidance" and strength is None and beta <= 0:
        raise ValueError("guidance needs a strength, or beta > 0 (strength 1/beta)")
    clip = float(clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"the clipping range must be > 0, got {clip!r}")
    if not callable(reward):
        raise TypeError("reward must be a callable reward(x) -> (n,)")
    if not callable(reference):
        raise TypeError("reference must be a score callable")
    sde = _checks.sde_or_default(sde)
    times = _check_times(times, sde)
    eta = _check_eta(eta)
    dim = _checks.positive_int(dim, "dim")
    n_iters = _checks.positive_int(n_iters, "n_iters")
    batch_size = _checks.positive_int(batch_size, "batch_size", minimum=2)
    inner = _checks.positive_int(inner, "inner")
    gen = _checks.generator(generator)
    prompt_set = None if prompts is None else _check_prompts(prompts)

    def scores(y, reps=1):
        trained = reference if model is None else model  # guidance trains nothing
        if y is None:
            return trained, reference
        y = y.repeat(reps)
        return prompt_score(trained, y, guidance), prompt_score(reference, y, guidance)

    if method == "guidance":
        model = None
        eta_g = strength if strength is not None else 1.0 / beta
    else:
        if not isinstance(model, nn.Module):
            raise TypeError("model must be a torch.nn.Module with trainable parameters")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        opt = torch.optim.Adam(params, lr=lr)
    rewards, ses, kls = [], [], []
    for it in range(n_iters):
        y = None
        if prompt_set is not None:
            y = prompt_set[torch.randint(0, prompt_set.numel(), (batch_size,), generator=gen)]
        s_model, s_ref = scores(y)
        K = times.numel() - 1
        m_all, r_all = scores(y, K)  # bound to the K n stacked states of chain_log_probs / chain_kl
        if method == "guidance":
            s_model = gradient_guidance(s_ref, reward, eta_g, sde=sde)
            m_all = gradient_guidance(r_all, reward, eta_g, sde=sde)
        start = torch.randn(batch_size, dim, generator=gen, dtype=torch.float64)
        backprop = method == "backprop"
        with torch.set_grad_enabled(backprop):
            chain = sample_chain(s_model, start, times, sde=sde, eta=eta, generator=gen,
                                 grad_steps=grad_steps if backprop else 0, final_denoise=final_denoise)
            r = _reward_values(reward, chain.final)
        if callback is not None:
            callback(it, chain, s_model)
        if method == "guidance":
            kl = chain_kl(m_all, r_all, chain, sde=sde, eta=eta).detach()
        else:
            with torch.no_grad():
                kl = chain_kl(m_all, r_all, chain, sde=sde, eta=eta)
        rd = r.detach()
        rewards.append(float(rd.mean()))
        ses.append(float(rd.std() / math.sqrt(batch_size)))
        kls.append(float(kl.mean()))
        if method == "guidance":
            continue
        if backprop:
            loss = -r.mean()
            if beta > 0:
                loss = loss + beta * chain_kl(m_all, r_all, chain, sde=sde, eta=eta).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            continue
        epochs = inner if method == "ddpo" else 1
        adv = (rd - rd.mean()) / rd.std().clamp_min(1e-12) if method == "ddpo" else rd - rd.mean()
        for _ in range(epochs):
            opt.zero_grad()
            lp = chain_log_probs(m_all, chain, sde=sde, eta=eta)  # (K, n)
            if method == "ddpo":
                ratio = torch.exp(lp - chain.log_probs)
                obj = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            else:
                obj = lp * adv
            loss = -obj.mean(dim=1).sum()
            if beta > 0:
                loss = loss + beta * chain_kl(m_all, r_all, chain, sde=sde, eta=eta).mean()
            loss.backward()
            opt.step()
    return FinetuneResult(s_model if method == "guidance" else model, model, np.array(rewards), np.array(ses),
                          np.array(kls))
