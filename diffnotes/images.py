r"""Images: class-conditional generation of the 8x8 digits, and the quality measures the field uses, made small.

Section 3.1 of the review (book chapter *Images*, the first chapter of the part *Sample generation under controls*)
opens with what diffusion models are used for: image synthesis, unconditional and conditioned on a class or a text
prompt (DALL-E 2, Stable Diffusion, Imagen).  This module is a faithful small version of that workflow on real data
that ship with scikit-learn:

* **data**: the 1797 handwritten digits of :func:`sklearn.datasets.load_digits` (8x8 pixels with 17 grey levels
  0..16, ten classes; the UCI "optical recognition of handwritten digits" test set :cite:p:`alpaydin1998optical`),
  split once into a training and a test set stratified by class (:func:`load_digits_split`) and scaled to
  :math:`[-1, 1]` by :math:`x = v/8 - 1` (:func:`to_unit`, :func:`to_pixels`); images are flat rows of 64 numbers, the
  package's ``(n, D)`` protocol, row-major over the 8x8 grid;
* **model**: a class-conditional score network trained by denoising score matching with label dropout, so that
  one network gives the conditional score :math:`s(x, y, t)` and, at the null label, the unconditional one
  (:func:`train_digit_score`; :func:`~diffnotes.losses.conditional_dsm_loss`, :cite:p:`ho2022classifier`);
* **sampling**: the unconditional sampler and the classifier-free guided sampler
  :math:`\tilde s = (1 + \eta)\,s(x, y, t) - \eta\,s(x, \varnothing, t)` through the package's samplers
  (:func:`sample_digits`; :func:`~diffnotes.guidance.classifier_free_guidance`);
* **quality**, the way the field measures it, at 8x8: a digit classifier trained on the real training split only
  (:class:`DigitClassifier`), whose accuracy on class-conditional samples says whether they show their class; the
  Frechet distance between Gaussian fits to its penultimate-layer features of samples and of real test images (the
  recipe of FID :cite:p:`heusel2017gans`, with a small CNN in place of Inception; :func:`frechet_distance`,
  :func:`frechet_with_floor`), next to its floor between two halves of real data; and a memorisation check, each
  sample's nearest training image against its nearest test image (:func:`memorisation_check`; the question of
  :cite:t:`carlini2023extracting` and :cite:t:`somepalli2023diffusion`, asked in pixel space).

Which network
-------------
Two class-conditional networks are available through :func:`digit_score_network`: ``"unet"``, the package's
convolutional :class:`~diffnotes.networks.UNet` with a learned class embedding added to its time embedding
(:class:`ConditionalUNet`, the usual way class labels enter a diffusion U-Net :cite:p:`dhariwal2021diffusion`), and
``"mlp"``, the package's :class:`~diffnotes.networks.ConditionalScoreMLP` on the 64 pixels.  They were compared at
the chapter's budget, about 11 s of CPU on one thread for training (batch 128, Adam with learning rate 4e-3, EMA
0.99, label dropout 0.1, the default forward process :class:`~diffnotes.sde.ConstantVP` with T = 10; then 180
samples per strength by DDIM with 25 steps, scored by the classifier of :func:`train_digit_classifier` with its
defaults; measured on this project's shared 2-core machine):

* U-Net, channels (16,), 27k weights: about 47 ms per step, 225 steps; at guidance strength 1 the classifier
  recognised 64 % of the class-conditional samples, Frechet distance 4.8 times its floor;
* MLP, width 384, depth 2, 216k weights: about 11 ms per step, 1000 steps; 98 % recognised, 1.8 times the floor
  (width 256 and depth 3, 1200 steps: 90 %, 2.4 times);
* a hybrid with a convolutional stem and head around an MLP, tried in a prototype, cost three times the MLP per step
  and did worse than it.

At this size the convolutions' inductive bias does not pay for their cost on a CPU (the chapter prints the
per-step costs of both), so the chapter trains the MLP; the U-Net is here, tested, for a larger budget or an
accelerator.  The numbers above used random halves of the test split for the floor; with halves balanced by class
(``labels=``, as the chapter does, which halves the floor) and the chapter's horizon T = 5, the MLP's 1000 steps
give 97 % recognition and 2.6 times the floor at strength 0.5 (100 % and 3.2 times at strength 1), level with the
chapter's per-class Gaussian baseline (97 %, 2.5 times).  More training passes it: 2000 steps (about 20 s of CPU)
give 99 % and 2.2 times at strength 0.5, 4000 steps (about 32 s) 100 % and 2.35 times at 0.5 and 2.15 times at 1;
both are outside the chapter's budget.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn

from . import _checks
from .guidance import classifier_free_guidance
from .losses import conditional_dsm_loss
from .metrics import Floor
from .networks import ConditionalScoreMLP, UNet, _param_like, as_score, seeded, with_label
from .samplers import SAMPLERS, time_grid
from .sde import VPSDE
from .training import TrainResult, train

__all__ = [
    "IMAGE_SHAPE",
    "N_PIXELS",
    "N_CLASSES",
    "PIXEL_MAX",
    "DigitsSplit",
    "load_digits_split",
    "to_unit",
    "to_pixels",
    "check_images",
    "check_classes",
    "ConditionalUNet",
    "digit_score_network",
    "train_digit_score",
    "sample_digits",
    "DigitClassifier",
    "train_digit_classifier",
    "fit_gaussian",
    "frechet_distance",
    "feature_frechet_distance",
    "FrechetResult",
    "frechet_with_floor",
    "nearest_distances",
    "MemorisationCheck",
    "memorisation_check",
]

#: (channels, height, width) of one digit.
IMAGE_SHAPE = (1, 8, 8)
#: Pixels per digit, the dimension D of a flat image.
N_PIXELS = 64
#: The digits 0..9.
N_CLASSES = 10
#: The largest grey level of :func:`sklearn.datasets.load_digits` (levels are 0..16).
PIXEL_MAX = 16.0


# -- data ----------------------------------------------------------------------------------------------------------
def to_unit(pixels):
    r"""Grey levels :math:`v\in[0, 16]` to the model's scale :math:`x = v/8 - 1\in[-1, 1]` (tensor or array).

    Parameters
    ----------
    pixels : torch.Tensor, numpy.ndarray or float
        Grey levels (not checked or clipped).
    """
    return pixels / (PIXEL_MAX / 2) - 1.0


def to_pixels(x):
    r"""The inverse of :func:`to_unit`, :math:`v = 8(x + 1)`, clipped to the grey-level range [0, 16].

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray or float
        Values on the model's scale.
    """
    v = (x + 1.0) * (PIXEL_MAX / 2)
    return v.clamp(0.0, PIXEL_MAX) if isinstance(v, torch.Tensor) else np.clip(v, 0.0, PIXEL_MAX)


def check_images(x, name: str = "x", *, min_n: int = 1) -> torch.Tensor:
    """A batch of digits as a floating (n, 64) tensor; (n, 8, 8) and (n, 1, 8, 8) are flattened (row-major).

    Raises ``TypeError`` for what is not a floating torch tensor, ``ValueError`` for another image size, fewer than
    ``min_n`` images (an empty batch) or NaN/infinite entries; the messages name the argument.

    Parameters
    ----------
    x : torch.Tensor
        The digits, a floating tensor shaped (n, 64), (n, 8, 8) or (n, 1, 8, 8).
    name : str
        The argument's name in the error messages (default ``"x"``).
    min_n : int
        The fewest images accepted (default 1).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of digits shaped (n, 64), (n, 8, 8) or (n, 1, 8, 8), got "
                        f"{type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.ndim >= 2 and tuple(x.shape[1:]) in ((N_PIXELS,), IMAGE_SHAPE[1:], IMAGE_SHAPE):
        x = x.reshape(x.shape[0], N_PIXELS)
    else:
        raise ValueError(f"{name} must hold 8x8 digits shaped (n, 64), (n, 8, 8) or (n, 1, 8, 8), got shape "
                         f"{tuple(x.shape)}")
    return _checks.points(x, name, N_PIXELS, min_n=min_n)


def check_classes(y, n: int | None = None, name: str = "y") -> torch.Tensor:
    """Digit labels (an int, or one per row) as a long (n,) tensor with values in 0..9; anything else raises.

    Parameters
    ----------
    y : int or array_like of int
        One label for every row, or one per row; not empty.
    n : int, optional
        The number of rows (default: the length of ``y``, or 1 for a single label).
    name : str
        The argument's name in the error messages (default ``"y"``).
    """
    if isinstance(y, (list, tuple, np.ndarray, torch.Tensor)) and len(y) == 0:
        raise ValueError(f"{name} is empty: at least one label is needed")
    if n is None:
        t = torch.as_tensor(y)
        n = int(t.shape[0]) if t.ndim == 1 else 1
    y = _checks.labels(y, n)
    bad = sorted(set(y[(y < 0) | (y >= N_CLASSES)].tolist()))
    if bad:
        raise ValueError(f"{name} must hold digit classes 0..{N_CLASSES - 1}, got {bad}")
    return y


@dataclass(frozen=True)
class DigitsSplit:
    """The digits, split once into training and test images (flat, scaled to [-1, 1]) with their labels.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        Images, shapes (n_train, 64) and (n_test, 64), on the scale :func:`to_unit`.
    y_train, y_test : torch.Tensor
        Their classes 0..9 (long).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __iter__(self):
        """Unpack as ``x_train, y_train, x_test, y_test``."""
        return iter((self.x_train, self.y_train, self.x_test, self.y_test))


def load_digits_split(test_fraction: float = 0.2, *, generator=0, dtype=torch.float32,
                      seed=_checks.UNSET) -> DigitsSplit:
    r"""The 1797 digits of :func:`sklearn.datasets.load_digits`, split into train and test sets stratified by class.

    Each class is shuffled by ``generator`` and its first ``round(test_fraction * n_c)`` images go to the test
    set, so both sets hold every class in the data's proportions; the default (0.2, generator 0)
    gives 1438 training and 359 test images, the same on every machine.  Grey levels 0..16 are scaled to
    :math:`[-1, 1]` by :func:`to_unit`.  Nothing is downloaded: the data ship inside scikit-learn
    :cite:p:`alpaydin1998optical`.  Book chapter *Images*.

    Parameters
    ----------
    test_fraction : float
        Fraction of each class held out, in (0, 1).
    generator : int, numpy.random.Generator or torch.Generator
        Source of the split's shuffles (default: the seed 0; None draws fresh entropy).
    dtype : torch.dtype
        Floating dtype of the images.
    seed : int
        Deprecated former name of ``generator``.
    """
    from sklearn.datasets import load_digits

    frac = _checks.probability(test_fraction, "test_fraction", open_left=True, open_right=True)
    if seed is not _checks.UNSET:
        if generator != 0:
            raise TypeError("pass generator= only (seed= is its deprecated former name)")
        generator = _checks.renamed(None, seed, "seed")
    digits = load_digits()
    pixels, target = digits.data.astype(np.float64), digits.target.astype(np.int64)
    rng = _checks.numpy_generator(generator)
    test_idx, train_idx = [], []
    for c in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(target == c))
        k = int(round(frac * members.size))
        if not 0 < k < members.size:
            raise ValueError(f"test_fraction = {frac} leaves no training or no test image of class {c}")
        test_idx.append(members[:k])
        train_idx.append(members[k:])
    test_idx, train_idx = np.sort(np.concatenate(test_idx)), np.sort(np.concatenate(train_idx))
    x = torch.as_tensor(to_unit(pixels), dtype=dtype)
    y = torch.as_tensor(target)
    return DigitsSplit(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


# -- score networks ------------------------------------------------------------------------------------------------
class ConditionalUNet(UNet):
    r"""The package's U-Net with a class label: :math:`(x, y, t)\mapsto f_\theta(x, y, t)` on flat 8x8 images.

    A learned embedding of the label (classes :math:`0..C-1` and the null label :math:`C`) is added to the time
    embedding that every residual block of :class:`~diffnotes.networks.UNet` receives, as class labels enter the
    U-Nets of :cite:t:`dhariwal2021diffusion` and of classifier-free guidance :cite:p:`ho2022classifier`.  Trained with
    label dropout it gives the conditional and (at :attr:`null_label`) the unconditional network output.  Review
    Section 3.1 and Fig. 4; book chapter *Images*.

    Parameters
    ----------
    channels : sequence of int
        Widths of the U-Net levels (8x8 images allow up to three levels).
    n_classes : int
        Number of classes C.
    image_shape : tuple of int
        (C, H, W), default the digits' (1, 8, 8).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    **unet_options
        ``embedding_dim``, ``time_embedding``, ``groups`` of :class:`~diffnotes.networks.UNet`.
    """

    conditional = True

    def __init__(self, channels=(16,), n_classes: int = N_CLASSES, *, image_shape=IMAGE_SHAPE, generator=None,
                 **unet_options):
        n_classes = _checks.positive_int(n_classes, "n_classes")
        gen = _checks.generator(generator)
        super().__init__(image_shape, channels, generator=gen, **unet_options)
        self.n_classes = n_classes
        with seeded(gen):
            self.class_embedding = nn.Embedding(n_classes + 1, self.time_mlp[-1].out_features)

    @property
    def null_label(self) -> int:
        """The index of the null label, C."""
        return self.n_classes

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The output for flat images x (n, C*H*W), labels y (an int or (n,) ints in 0..C, C null) and times t.

        Parameters
        ----------
        x : torch.Tensor
            Flat images, shape (n, C*H*W).
        y : int or array_like of int
            One label, or one per row, in 0..C (C is the null label).
        t : float or torch.Tensor
            One time, or one per row.
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        n = x.shape[0]
        y = _checks.labels(y, n, device=p.device)
        if torch.any((y < 0) | (y > self.n_classes)):
            raise ValueError(f"labels must lie in 0..{self.n_classes} ({self.n_classes} is the null label), got "
                             f"{sorted(set(y.tolist()))}")
        xp = x.to(dtype=p.dtype, device=p.device)
        emb = self.time_mlp(self.embedding(_checks.time_rows(t, n, xp))) + self.class_embedding(y).to(xp.dtype)
        return self._unet(xp, emb).to(dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_classes={self.n_classes}"


#: The networks :func:`digit_score_network` builds, with their default sizes.
NETWORKS = {
    "mlp": "ConditionalScoreMLP(64, 10, hidden=384, depth=2)",
    "unet": "ConditionalUNet(channels=(16,))",
}


def digit_score_network(kind: str = "mlp", *, sde: VPSDE | None = None, generator=None, **options) -> nn.Module:
    r"""A class-conditional noise-prediction network for the digits, wrapped as a conditional score.

    Returns ``as_score(net, "eps", sde, conditional=True)``: a module computing
    :math:`s(x, y, t) = -\varepsilon_\theta(x, y, t)/\sqrt{h(t)}`, with the null label :math:`y = 10` for the
    unconditional score (see ``NETWORKS`` and the module's note on the choice).

    Parameters
    ----------
    kind : {"mlp", "unet"}
        :class:`~diffnotes.networks.ConditionalScoreMLP` on the 64 pixels (``hidden``, ``depth`` options; defaults 384,
        2) or :class:`ConditionalUNet` (``channels`` and the U-Net's options; default channels (16,)).
    sde : VPSDE, optional
        The forward process the network is trained with (default :class:`~diffnotes.sde.ConstantVP`).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    """
    sde = _checks.sde_or_default(sde)
    if kind == "mlp":
        options = {"hidden": 384, "depth": 2} | options
        net = ConditionalScoreMLP(N_PIXELS, N_CLASSES, generator=generator, **options)
    elif kind == "unet":
        net = ConditionalUNet(options.pop("channels", (16,)), N_CLASSES, generator=generator, **options)
    else:
        raise ValueError(f"kind must be one of {sorted(NETWORKS)}, got {kind!r}")
    return as_score(net, "eps", sde, conditional=True)


def train_digit_score(x, y, model: nn.Module | None = None, *, steps: int, sde: VPSDE | None = None,
                      t0: float = 1e-3, p_uncond: float = 0.1, batch_size: int = 128, lr: float = 4e-3,
                      ema: float | None = 0.99, generator=None, progress: bool = False) -> TrainResult:
    r"""Train a class-conditional score of the digits by denoising score matching with label dropout.

    Minimises :func:`~diffnotes.losses.conditional_dsm_loss`,

    .. math::

        \frac{1}{T - t_0}\int_{t_0}^T h(t)\,\mathbb E\Big\|s_\theta(x_t, \tau y, t) + \frac{\varepsilon}{\sqrt{h(t)}}
        \Big\|^2\,\mathrm dt,\qquad x_t = \alpha(t)x_0 + \sqrt{h(t)}\,\varepsilon,

    where the label is replaced by the null label with probability ``p_uncond`` (classifier-free training,
    :cite:p:`ho2022classifier`), with :func:`~diffnotes.training.train` (Adam, minibatches from a stream of
    permutations, EMA of the parameters).  Review Sections 3.1 and 5.1; book chapter *Images*.

    Parameters
    ----------
    x : torch.Tensor
        Training images (n, 64) on the scale of :func:`to_unit`.
    y : torch.Tensor
        Their classes (n,), in 0..9.
    model : torch.nn.Module, optional
        A conditional score from :func:`digit_score_network` (default ``digit_score_network("mlp", sde=sde,
        generator=generator)``).
    steps, batch_size, lr, ema, progress
        As in :func:`~diffnotes.training.train`.
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`); must be the model's.
    t0 : float
        Early-stopping time of the loss.
    p_uncond : float
        Label-dropout probability, in (0, 1): both the conditional and the unconditional score are needed for guidance.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the minibatches, times, noise and dropout (and of the default model's weights).

    Returns
    -------
    TrainResult
        ``losses``, ``model`` and ``ema_model``; the score to sample with is ``ema_model`` (``model`` if ``ema`` is
        None), called as ``score(x, y, t)``.
    """
    x = check_images(x, "x")
    y = check_classes(y, x.shape[0])
    p_uncond = _checks.probability(p_uncond, "p_uncond", open_left=True, open_right=True)
    gen = _checks.generator(generator)
    if model is None:
        model = digit_score_network("mlp", sde=sde, generator=gen)
    if not getattr(model, "conditional", False):
        raise TypeError("model must be a conditional score s(x, y, t), e.g. from digit_score_network")
    sde = _checks.sde_or_default(sde if sde is not None else getattr(model, "sde", None))
    loss = functools.partial(conditional_dsm_loss, t0=t0, sde=sde, p_uncond=p_uncond, n_classes=N_CLASSES)
    return train(model, loss, (x, y), steps=steps, batch_size=batch_size, lr=lr, generator=gen, ema=ema,
                 progress=progress)


def sample_digits(cond_score, y=None, *, n: int | None = None, eta=0.0, sde: VPSDE | None = None,
                  t0: float = 1e-3, n_steps: int = 25, sampler: str = "ddim", spacing: str = "logsnr",
                  generator=None, clip: bool = True) -> torch.Tensor:
    r"""Digits from a trained conditional score: unconditional, class-conditional, or with classifier-free guidance.

    With ``y=None`` the sampler follows the unconditional score :math:`s(x, \varnothing, t)`; with classes ``y`` it
    follows the guided score

    .. math::

        \tilde s(x, t) = (1 + \eta)\,s(x, y, t) - \eta\,s(x, \varnothing, t)

    (:func:`~diffnotes.guidance.classifier_free_guidance`; :math:`\eta = 0` is plain conditioning), from
    :math:`\mathsf N(0, I_{64})` at the horizon T down to ``t0`` on a grid of ``n_steps`` steps, ending with
    Tweedie's denoised estimate (``final_denoise``).  ``eta`` may differ between rows, so that a sweep over the
    guidance strength runs as one batch.  Review Sections 3.1 and 5.1; book chapter *Images*.

    Parameters
    ----------
    cond_score : callable
        ``cond_score(x, y, t)`` with a ``null_label`` attribute (from :func:`train_digit_score`).
    y : int or array of ints, optional
        The class of every row (one int with ``n``, or one per row), 0..9; None for unconditional samples.
    n : int, optional
        Number of samples (needed for ``y=None`` or an int ``y``).
    eta : float or array of floats
        Guidance strength :math:`\eta\ge0`, one or one per row (ignored for unconditional samples).
    sde : VPSDE, optional
        The forward process (default: the score's, else :class:`~diffnotes.sde.ConstantVP`).
    t0, n_steps, spacing
        Early-stopping time, number of steps and grid spacing (:func:`~diffnotes.samplers.time_grid`).
    sampler : str
        A name in :data:`diffnotes.samplers.SAMPLERS` (default the deterministic DDIM).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the start (and of the noise of stochastic samplers).
    clip : bool
        Clip the result to the pixel range [-1, 1].

    Returns
    -------
    torch.Tensor
        Flat images (n, 64), float64.
    """
    if not callable(cond_score):
        raise TypeError("cond_score must be a callable conditional score s(x, y, t)")
    null = getattr(cond_score, "null_label", None)
    if null is None:
        raise TypeError("cond_score has no null_label: train it with label dropout (train_digit_score)")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    sde = _checks.sde_or_default(sde if sde is not None else getattr(cond_score, "sde", None))
    if y is None or isinstance(y, (int, np.integer)):
        if n is None:
            raise ValueError("pass n, the number of samples, with y=None or a single class")
        n = _checks.positive_int(n, "n")
    if y is None:
        score = with_label(cond_score, null)
    else:
        labels = check_classes(y, n)
        n = labels.shape[0]
        rows = torch.as_tensor(eta, dtype=torch.float64)
        if rows.ndim == 0:
            strength = float(rows)
        elif rows.shape == (n,):
            strength = lambda t: rows.to(t)  # noqa: E731  one strength per row (a sweep in one batch)
        else:
            raise ValueError(f"eta must be one number or one per row (shape ({n},)), got shape {tuple(rows.shape)}")
        if not torch.all(torch.isfinite(rows)) or torch.any(rows < 0):
            raise ValueError(f"the guidance strength eta must be finite and >= 0, got {eta!r}")
        score = classifier_free_guidance(cond_score, labels, strength, null, n_classes=N_CLASSES)
    gen = _checks.generator(generator)
    grid = time_grid(sde, t0, n_steps, spacing)
    start = torch.randn(n, N_PIXELS, generator=gen, dtype=torch.float64)
    out = SAMPLERS[sampler](score, start, grid, sde=sde, generator=gen, final_denoise=True)
    return out.clamp(-1.0, 1.0) if clip else out


# -- the classifier ----------------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    r"""A small convolutional digit classifier whose penultimate layer gives the features of the Frechet distance.

    A 3x3 convolution to 16 channels at 8x8, 2x2 max pooling to 4x4, a dense layer of ``n_features`` units (the
    **features** :math:`\phi(x)`, :meth:`features`) and a dense layer to the ten logits; ReLU between layers.
    It plays the part of the Inception network of FID :cite:p:`heusel2017gans` at 8x8: trained on real training
    images only (:func:`train_digit_classifier`), it scores generated images it has never seen.  Book chapter
    *Images*.

    Parameters
    ----------
    n_features : int
        Width of the penultimate layer.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights.
    """

    def __init__(self, n_features: int = 64, *, generator=None):
        super().__init__()
        self.n_features = _checks.positive_int(n_features, "n_features")
        with seeded(generator):
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(16 * 4 * 4, self.n_features), nn.ReLU())
            self.head = nn.Linear(self.n_features, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features :math:`\\phi(x)`, (n, n_features), of digits (n, 64) on the [-1, 1] scale.

        Parameters
        ----------
        x : torch.Tensor
            Digits, shaped as :func:`check_images` accepts.
        """
        x = check_images(x, "x")
        p = _param_like(self)
        return self.body(x.to(dtype=p.dtype, device=p.device).reshape(-1, *IMAGE_SHAPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ten logits, shape (n, 10).

        Parameters
        ----------
        x : torch.Tensor
            Digits, shaped as :func:`check_images` accepts.
        """
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each image, (n,) long.

        Parameters
        ----------
        x : torch.Tensor
            Digits, shaped as :func:`check_images` accepts.
        """
        return self(x).argmax(dim=1).cpu()

    @torch.no_grad()
    def confidence(self, x: torch.Tensor, y) -> torch.Tensor:
        """The predicted probability :math:`c(y\\mid x)` of the given classes, (n,) float64.

        Parameters
        ----------
        x : torch.Tensor
            Digits, shaped as :func:`check_images` accepts.
        y : int or array_like of int
            One class, or one per image, in 0..9.
        """
        x = check_images(x, "x")
        y = check_classes(y, x.shape[0])
        return torch.softmax(self(x).double(), dim=1).cpu().gather(1, y[:, None]).squeeze(1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y) -> float:
        """The fraction of images classified as their class ``y``.

        Parameters
        ----------
        x : torch.Tensor
            Digits, shaped as :func:`check_images` accepts.
        y : int or array_like of int
            One class, or one per image, in 0..9.
        """
        x = check_images(x, "x")
        y = check_classes(y, x.shape[0])
        return float((self.predict(x) == y).double().mean())


def train_digit_classifier(x, y, *, steps: int = 200, batch_size: int = 128, lr: float = 3e-3,
                           weight_decay: float = 1e-4, n_features: int = 64, generator=None,
                           progress: bool = False) -> DigitClassifier:
    r"""Train a :class:`DigitClassifier` by cross-entropy on real training digits (Adam, minibatches).

    The classifier returned is in evaluation mode; report its accuracy on the held-out test split
    (:meth:`DigitClassifier.accuracy`) before using it to score samples.  Book chapter *Images*.

    Parameters
    ----------
    x, y : torch.Tensor
        Training images (n, 64) and classes (n,).
    steps, batch_size, lr, weight_decay, progress
        As in :func:`~diffnotes.training.train`.
    n_features : int
        Width of the feature layer.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights and of the minibatches.
    """
    x = check_images(x, "x")
    y = check_classes(y, x.shape[0])
    gen = _checks.generator(generator)
    clf = DigitClassifier(n_features, generator=gen)

    def loss(model, xb, yb, generator=None):
        return nn.functional.cross_entropy(model(xb), yb)

    train(clf, loss, (x.float(), y), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
          generator=gen, progress=progress)
    return clf.eval()


# -- the Frechet distance --------------------------------------------------------------------------------------------
def _features(a, name: str, min_n: int = 2) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers shaped (n, d), got {type(a).__name__}") from err
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be shaped (n, d) with d >= 1, got shape {arr.shape}")
    if arr.shape[0] < min_n:
        raise ValueError(f"{name} has {arr.shape[0]} rows; a mean and a covariance need at least {min_n}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def fit_gaussian(features) -> tuple[np.ndarray, np.ndarray]:
    """The mean (d,) and the unbiased covariance (d, d) of features (n, d), n >= 2, as float64 arrays.

    Parameters
    ----------
    features : array_like or torch.Tensor
        Finite features, shape (n, d), n >= 2.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The mean (d,) and the covariance (d, d).
    """
    f = _features(features, "features")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(m1, S1, m2, S2) -> float:
    r"""The Frechet distance between two Gaussian laws, the quantity of FID :cite:p:`heusel2017gans`.

    .. math::

        d^2\big(\mathsf N(m_1, \Sigma_1), \mathsf N(m_2, \Sigma_2)\big) = \|m_1 - m_2\|^2
        + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2 - 2\,(\Sigma_1\Sigma_2)^{1/2}\Big),

    the squared 2-Wasserstein distance between the two Gaussians :cite:p:`dowson1982frechet` (so it equals
    :func:`diffnotes.metrics.gaussian_w2` squared).  As in FID's reference code, the square root of the
    (non-symmetric) product is :func:`scipy.linalg.sqrtm`; its imaginary part, round-off for positive semi-definite
    covariances, is dropped, and if the product is singular enough for ``sqrtm`` to fail, :math:`10^{-6} I` is added to
    both covariances.  Returned as is (FID reports the squared distance), clipped at 0 against round-off.

    Parameters
    ----------
    m1, m2 : array_like
        Means, shape (d,).
    S1, S2 : array_like
        Covariances, shape (d, d), symmetric positive semi-definite.
    """
    m1, m2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (m1, m2))
    S1, S2 = (np.atleast_2d(np.asarray(S, dtype=np.float64)) for S in (S1, S2))
    d = m1.shape[0]
    if m1.ndim != 1 or m2.shape != (d,) or S1.shape != (d, d) or S2.shape != (d, d):
        raise ValueError(f"the means must be (d,) and the covariances (d, d) with one d, got {m1.shape}, "
                         f"{S1.shape}, {m2.shape}, {S2.shape}")
    for name, a in (("m1", m1), ("S1", S1), ("m2", m2), ("S2", S2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
    for name, S in (("S1", S1), ("S2", S2)):
        if np.max(np.abs(S - S.T)) > 1e-10 * max(np.max(np.abs(S)), 1e-300):
            raise ValueError(f"the covariance {name} must be symmetric")
    with warnings.catch_warnings():  # a singular product (dead feature units) is handled below, not warned about
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(S1 @ S2)
        if not np.all(np.isfinite(root)):
            eps = 1e-6 * np.eye(d)
            root = scipy.linalg.sqrtm((S1 + eps) @ (S2 + eps))
    if np.iscomplexobj(root):
        scale = max(float(np.max(np.abs(root))), 1e-300)
        if np.max(np.abs(root.imag)) > 1e-3 * scale:
            raise ValueError("the covariances are not positive semi-definite: (S1 S2)^(1/2) has a large imaginary "
                             "part")
        root = root.real
    value = float(np.sum((m1 - m2) ** 2) + np.trace(S1) + np.trace(S2) - 2.0 * np.trace(root))
    return max(value, 0.0)


def feature_frechet_distance(a, b) -> float:
    """The Frechet distance between Gaussian fits (:func:`fit_gaussian`) to two sets of features (n, d), (m, d).

    Parameters
    ----------
    a, b : array_like or torch.Tensor
        Finite features, shapes (n, d) and (m, d), each with at least 2 rows.
    """
    fa, fb = _features(a, "a"), _features(b, "b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension, got {fa.shape[1]} and {fb.shape[1]}")
    return frechet_distance(*fit_gaussian(fa), *fit_gaussian(fb))


@dataclass(frozen=True)
class FrechetResult:
    """The Frechet distance of samples to real data next to its floor (see :func:`frechet_with_floor`).

    Attributes
    ----------
    distance : float
        Mean over the repeats of the distance between the samples and one half of the real data.
    floor : Floor
        The distance between the two halves of the real data (mean, standard deviation, values).
    values : tuple of float
        The sample distances, one per repeat (paired with ``floor.values``).
    n : int
        The size of each compared set (half the real data).
    """

    distance: float
    floor: Floor
    values: tuple[float, ...]
    n: int

    @property
    def ratio(self) -> float:
        """distance / floor (1 means indistinguishable from real data at this size)."""
        return self.distance / self.floor.mean

    def __str__(self) -> str:
        return (f"Frechet distance {self.distance:.3g} (n = {self.n}), {self.floor}, ratio {self.ratio:.2f}")


def frechet_with_floor(features, reference, *, labels=None, repeats: int = 10, generator=None) -> FrechetResult:
    r"""The Frechet distance of sample features to real features, and its floor between two halves of the real data.

    The Frechet distance of Gaussian fits is biased upwards by the sampling error of the fitted means and
    covariances, by an amount that grows with the feature dimension and shrinks with the sample size, so a
    value means nothing alone.  At each repeat the real features are split at random into two disjoint halves A and
    B of m rows (:math:`m = \lfloor n_{\rm ref}/2\rfloor`; with ``labels``, half of each class, rounded down, so that
    both halves hold the classes in the same numbers, as class-conditional samples drawn in proportion do); the
    **floor** is :math:`d^2(A, B)`, what two samples of the real law score, and the samples' distance is
    :math:`d^2(S, B)` with S a random m of the sample features (all of them when there are m), paired with the
    same B.  A generator is as good as this measure can tell when its distance is within the floor's spread.  Book
    chapter *Images*; :cite:p:`heusel2017gans`.

    Parameters
    ----------
    features : array_like
        Features of the samples (n, d), n >= m.
    reference : array_like
        Features of real held-out data (n_ref, d), n_ref >= 4.
    labels : array_like, optional
        Classes of the reference rows (n_ref,), to split every class in two halves.
    repeats : int
        Number of random halvings, >= 2.
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of the halvings (an int seed or a numpy generator; a torch generator seeds a numpy one).
    """
    f = _features(features, "features")
    r = _features(reference, "reference", min_n=4)
    if f.shape[1] != r.shape[1]:
        raise ValueError(f"features and reference must have the same dimension, got {f.shape[1]} and {r.shape[1]}")
    repeats = _checks.positive_int(repeats, "repeats", 2)
    if labels is None:
        groups = [np.arange(r.shape[0])]
    else:
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.shape != (r.shape[0],) or lab.dtype.kind not in "iu":
            raise ValueError(f"labels must hold one integer class per reference row (shape ({r.shape[0]},)), got "
                             f"dtype {lab.dtype} and shape {lab.shape}")
        groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    m = sum(g.size // 2 for g in groups)
    if m < 2:
        raise ValueError("the halves of the reference need at least 2 rows each")
    if f.shape[0] < m:
        raise ValueError(f"features has {f.shape[0]} rows; the comparison with halves of the reference needs at least "
                         f"{m} (half of {r.shape[0]})")
    rng = _numpy_rng(generator)
    floors, values = [], []
    for _ in range(repeats):
        parts = [rng.permutation(g) for g in groups]
        a = r[np.concatenate([p[:p.size // 2] for p in parts])]
        b = r[np.concatenate([p[p.size // 2:2 * (p.size // 2)] for p in parts])]
        s = f if f.shape[0] == m else f[rng.choice(f.shape[0], m, replace=False)]
        floors.append(feature_frechet_distance(a, b))
        values.append(feature_frechet_distance(s, b))
    fl = np.array(floors)
    floor = Floor(mean=float(fl.mean()), std=float(fl.std(ddof=1)), values=tuple(floors))
    return FrechetResult(float(np.mean(values)), floor, tuple(values), m)


def _numpy_rng(generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
    if generator is None or (isinstance(generator, (int, np.integer)) and not isinstance(generator, bool)):
        return np.random.default_rng(generator)
    raise TypeError(f"generator must be None, an int seed, a numpy Generator or a torch.Generator, got "
                    f"{type(generator).__name__}")


# -- memorisation ----------------------------------------------------------------------------------------------------
def nearest_distances(x, reference) -> torch.Tensor:
    """Euclidean distance from each row of x (n, D) to its nearest row of ``reference`` (m, D), shape (n,), float64.

    Parameters
    ----------
    x : torch.Tensor
        Digits, shaped as :func:`check_images` accepts.
    reference : torch.Tensor
        Reference digits (e.g. the training images), shaped as :func:`check_images` accepts.
    """
    x = check_images(x, "x").double()
    ref = check_images(reference, "reference").double()
    return torch.cdist(x, ref).min(dim=1).values


@dataclass(frozen=True)
class MemorisationCheck:
    r"""Nearest training and test distances of each sample (see :func:`memorisation_check`).

    Attributes
    ----------
    d_train, d_test : torch.Tensor
        Distance of each sample to its nearest training image and to its nearest test image, (n,).
    """

    d_train: torch.Tensor
    d_test: torch.Tensor

    @property
    def ratio(self) -> torch.Tensor:
        """d_train / d_test per sample (0 for an exact copy of a training image)."""
        return self.d_train / self.d_test

    def fraction_copied(self, threshold: float = 1 / 3) -> float:
        """The fraction of samples whose nearest training image is closer than ``threshold`` times the nearest test
        image: near-copies of a training image.

        Parameters
        ----------
        threshold : float
            The ratio d_train / d_test below which a sample counts as a copy, positive and finite (default 1/3).
        """
        threshold = float(threshold)
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold}")
        return float((self.ratio < threshold).double().mean())

    def median_ratio(self) -> float:
        """The median of d_train / d_test."""
        return float(self.ratio.median())


def memorisation_check(samples, x_train, x_test) -> MemorisationCheck:
    r"""Each sample's nearest training image against its nearest test image.

    A generator that memorises returns (near-)copies of training images: their distance to the nearest training
    image is much smaller than to the nearest image of a held-out set, :math:`d_{\rm train}/d_{\rm test}\ll 1`
    (exactly 0 for a copy).  A generator that has learned the law places its samples no closer to the training
    images than fresh data are.  Since nearest-neighbour distances shrink as a set grows, the ratio of a fresh image
    depends on the sizes of the two sets, so the reference is the same check applied to real held-out images with
    sets of the same sizes (in the book: one half of the test split as the "samples", the other half as
    ``x_test``).  Every training image is searched, so no copy can hide.  This is the pixel-space form of the
    memorisation tests of :cite:t:`carlini2023extracting` and :cite:t:`somepalli2023diffusion`; book chapter
    *Images* (and *Memorisation and early stopping* for the theory).

    Parameters
    ----------
    samples : torch.Tensor
        Generated images (n, 64).
    x_train, x_test : torch.Tensor
        Training images and held-out images, none of them among the samples' training data for ``x_test``.
    """
    s = check_images(samples, "samples")
    tr = check_images(x_train, "x_train")
    te = check_images(x_test, "x_test")
    d_test = nearest_distances(s, te)
    if torch.any(d_test == 0):
        raise ValueError("some samples coincide with a test image: x_test must be held out from the samples")
    return MemorisationCheck(nearest_distances(s, tr), d_test)
