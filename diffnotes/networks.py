r"""Small score networks (and, re-exported from :mod:`diffnotes.parameterization`, the adapter to a score).

Section 4.1 of the review (book chapter *Learning the score*) fits a score :math:`s(x, t) \approx \nabla\log p_t(x)`
from a class :math:`\mathcal S` of neural networks (Remark 1: in practice a U-Net or transformer with a time
embedding; here, for 2-D and low-dimensional toys, a multilayer perceptron).  Section 5.1 (book chapter *Conditional
diffusion and guidance*) adds a label input with one extra *null* label :math:`\varnothing` so that one network
learns both the conditional and the unconditional score (classifier-free guidance).  Section 4.2 (book chapter
*Score approximation*) adds two networks with structure: the encoder-decoder score network of Chen, Huang, Zhao and
Wang for data on a linear subspace (:class:`EncoderDecoderScore`, the review's Fig. 5) and a small convolutional
U-Net for images (:class:`UNet`, the review's Fig. 4).

Networks may predict the score itself or, as is usual in practice, the noise, the clean data or the velocity;
:func:`~diffnotes.parameterization.as_score` turns any of them into a score function once, so that samplers, losses
and guidance only ever see the score protocol ``score(x, t)`` (or ``score(x, y, t)`` for conditional networks).  It
lives in :mod:`diffnotes.parameterization` with :func:`~diffnotes.parameterization.with_label`; both are importable
from here too, where they were first defined.

References: :cite:p:`ho2020denoising,song2021score,ho2022classifier,chen2023score,ronneberger2015unet`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from . import _checks
from .parameterization import PREDICTIONS, LabelledScore, ScoreAdapter, as_score, with_label
from .sde import VPSDE

__all__ = [
    "SinusoidalEmbedding",
    "ScoreMLP",
    "ConditionalScoreMLP",
    "EncoderDecoderScore",
    "UNet",
    "n_parameters",
    "seeded",
    "ScoreAdapter",
    "LabelledScore",
    "as_score",
    "with_label",
    "PREDICTIONS",
]

# -- helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(generator=None) -> Iterator[None]:
    """Layers built inside this block draw their initial weights from ``generator``, not from torch's global one.

    Every network constructor of the package takes ``generator=`` (an int seed, a :class:`torch.Generator` or a
    :class:`numpy.random.Generator`) and builds its layers inside ``seeded(generator)``: one seed is drawn from the
    generator and torch's CPU generator is re-seeded with it inside a :func:`torch.random.fork_rng` block, so the
    weights are reproducible from the caller's generator and the global generator's state is the same after the
    block as before (nothing is seeded globally).  ``generator=None`` leaves the global generator in charge (the
    usual PyTorch behaviour).  Use it for one's own layers too: ``with seeded(gen): head = nn.Linear(4, 2)``.

    Parameters
    ----------
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the initial weights (one seed is drawn from it); None leaves torch's global generator in charge.
    """
    gen = _checks.generator(generator)
    if gen is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _param_like(module: nn.Module) -> torch.Tensor:
    """A tensor carrying the dtype and device of the module's parameters."""
    for p in module.parameters():
        return p
    return torch.empty(0)


# -- the time embedding -------------------------------------------------------------------------------------
class SinusoidalEmbedding(nn.Module):
    r"""Sinusoidal features of the (log-)time: :math:`u \mapsto (\sin\omega_j u, \cos\omega_j u)_{j\le m}`.

    With ``kind="log"`` (default) the embedded variable is :math:`u = \log t`, which spreads the early-stopping range
    :math:`t\in[10^{-3}, 10]` over a few units so that small and large times are told apart equally well; with
    ``kind="linear"``, :math:`u = t`.  The frequencies :math:`\omega_j` are fixed (not learned) and spaced
    geometrically between ``min_frequency`` and ``max_frequency``, as in the positional encodings of transformers
    used by DDPM's U-Net :cite:p:`ho2020denoising`.

    Parameters
    ----------
    n_features : int
        Output width, an even integer (``n_features / 2`` frequencies).
    kind : {"log", "linear"}
        Embed :math:`\log t` or :math:`t`.
    min_frequency, max_frequency : float
        The frequency range, ``0 < min_frequency <= max_frequency``.
    """

    def __init__(self, n_features: int = 32, kind: str = "log", min_frequency: float = 1 / 16,
                 max_frequency: float = 4.0):
        super().__init__()
        if isinstance(n_features, bool) or int(n_features) != n_features or n_features < 2 or n_features % 2:
            raise ValueError(f"n_features must be an even integer >= 2, got {n_features!r}")
        if kind not in ("log", "linear"):
            raise ValueError(f"kind must be 'log' or 'linear', got {kind!r}")
        if not 0 < min_frequency <= max_frequency < math.inf:
            raise ValueError(f"need 0 < min_frequency <= max_frequency < inf, got {min_frequency}, {max_frequency}")
        self.kind = kind
        self.n_features = int(n_features)
        freqs = torch.logspace(math.log10(min_frequency), math.log10(max_frequency), self.n_features // 2,
                               dtype=torch.float64)
        self.register_buffer("frequencies", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed an (n,) tensor of times; returns (n, n_features) in the dtype of ``t``.

        Non-finite times raise ``ValueError`` (every network of this module embeds its time here, so none of them
        turns a NaN or infinite time into a silent NaN output).

        Parameters
        ----------
        t : torch.Tensor
            Times, shape (n,), finite.
        """
        if not bool(torch.all(torch.isfinite(t))):
            raise ValueError("the times t must be finite (got NaN or infinite values)")
        if self.kind == "log":
            if torch.any(t <= 0):
                raise ValueError("a log-time embedding needs t > 0 (use an early-stopping time t0 > 0)")
            u = torch.log(t)
        else:
            u = t
        arg = u[:, None] * self.frequencies.to(t)[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class ScoreMLP(nn.Module):
    r"""A multilayer perceptron :math:`(x, t) \mapsto f_\theta(x, t) \in \mathbb R^D` with a time embedding.

    The input is the concatenation of :math:`x` and a :class:`SinusoidalEmbedding` of :math:`\log t` (or
    :math:`t`); ``depth`` hidden layers of width ``hidden`` with SiLU activations follow.  What the output means (the
    score, the noise, the clean data or the velocity) is decided by :func:`as_score`, which turns the network into a
    score function: e.g. ``as_score(ScoreMLP(2), "eps", sde)`` is the noise-prediction parameterisation
    :math:`s_\theta = -\varepsilon_\theta/\sqrt{h(t)}` of DDPM :cite:p:`ho2020denoising`.  It is a small instance
    of the network class :math:`\mathcal S` of the review, Section 4.1 (book chapter *Learning the score*).

    Computations use the dtype and device of the parameters (float32 by default; ``.double()`` for float64); inputs
    are cast to them and the output is returned in the dtype and on the device of ``x``.

    Parameters
    ----------
    dim : int
        Data dimension D.
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers.
    time_embedding : {"log", "linear"}
        Embed :math:`\log t` (default) or :math:`t`.
    embedding_dim : int
        Width of the time embedding (even).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`seeded`); default torch's global generator.
    """

    conditional = False

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_embedding: str = "log",
                 embedding_dim: int = 32, *, generator=None):
        super().__init__()
        _checks.sizes(dim=dim, hidden=hidden, depth=depth)
        self.dim = int(dim)
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        with seeded(generator):
            self.net = _mlp(self.dim + self.embedding.n_features, int(hidden), int(depth), self.dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network output for inputs x (n, D) and times t, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        t : float or torch.Tensor
            One time for all rows or one per row (shape (n,)), finite (a diffusion time).
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        xp = x.to(dtype=p.dtype, device=p.device)
        tp = _checks.time_rows(t, x.shape[0], xp)
        out = self.net(torch.cat([xp, self.embedding(tp)], dim=1))
        return out.to(dtype=x.dtype, device=x.device)


class ConditionalScoreMLP(nn.Module):
    r"""A conditional network :math:`(x, y, t) \mapsto f_\theta(x, y, t)` with a learned class embedding.

    Labels are :math:`0, \dots, C-1` plus one extra *null* label :math:`\varnothing` with index :math:`C`
    (:attr:`null_label`): trained with label dropout (:func:`diffnotes.losses.conditional_dsm_loss`) the same network
    learns the conditional score :math:`\nabla\log p_t(x\mid y)` and, at :math:`y = \varnothing`, the unconditional
    score :math:`\nabla\log p_t(x)` -- the classifier-free guidance construction of Ho and Salimans
    :cite:p:`ho2022classifier` (review Section 5.1; book chapter *Conditional diffusion and guidance*).  Use
    :func:`as_score` (with ``conditional`` detected) to turn it into a conditional score function, and
    :func:`with_label` to fix a label.

    Parameters
    ----------
    dim : int
        Data dimension D.
    n_classes : int
        Number of classes C (the null label is C).
    hidden, depth, time_embedding, embedding_dim
        As in :class:`ScoreMLP`.
    class_embedding_dim : int
        Width of the learned class embedding.
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`seeded`); default torch's global generator.
    """

    conditional = True

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, depth: int = 3, time_embedding: str = "log",
                 embedding_dim: int = 32, class_embedding_dim: int = 16, *, generator=None):
        super().__init__()
        _checks.sizes(dim=dim, n_classes=n_classes, hidden=hidden, depth=depth,
                     class_embedding_dim=class_embedding_dim)
        self.dim, self.n_classes = int(dim), int(n_classes)
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        width = self.dim + self.embedding.n_features + int(class_embedding_dim)
        with seeded(generator):
            self.class_embedding = nn.Embedding(self.n_classes + 1, int(class_embedding_dim))
            self.net = _mlp(width, int(hidden), int(depth), self.dim)

    @property
    def null_label(self) -> int:
        """The index of the null label, C."""
        return self.n_classes

    def forward(self, x: torch.Tensor, y, t) -> torch.Tensor:
        """The output for x (n, D), labels y and times t, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        y : int or torch.Tensor
            One label for all rows or one per row, in 0..C (C, ``null_label``, means no label).
        t : float or torch.Tensor
            One time for all rows or one per row (shape (n,)), finite (a diffusion time).
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        y = _checks.labels(y, x.shape[0], device=p.device)
        if torch.any((y < 0) | (y > self.n_classes)):
            raise ValueError(f"labels must lie in 0..{self.n_classes} ({self.n_classes} is the null label), got "
                             f"{sorted(set(y.tolist()))}")
        xp = x.to(dtype=p.dtype, device=p.device)
        tp = _checks.time_rows(t, x.shape[0], xp)
        features = torch.cat([xp, self.embedding(tp), self.class_embedding(y).to(xp.dtype)], dim=1)
        return self.net(features).to(dtype=x.dtype, device=x.device)


# -- networks with structure (review Section 4.2) ----------------------------------------------------------
def n_parameters(module: nn.Module, trainable: bool = True) -> int:
    """The number of (trainable, by default) scalar parameters of a module: the network size of Section 4.2.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    trainable : bool
        Count only the parameters that require gradients (default) or all of them.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _check_basis(basis, D: int, d: int) -> torch.Tensor:
    if not isinstance(basis, torch.Tensor):
        try:
            basis = torch.as_tensor(basis, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"basis must be a ({D}, {d}) tensor or array, got {type(basis).__name__}") from err
    if not basis.is_floating_point():
        basis = basis.to(torch.float64)
    if basis.shape != (D, d):
        raise ValueError(f"basis must have shape (D, d) = ({D}, {d}), got {tuple(basis.shape)}")
    if not torch.all(torch.isfinite(basis)):
        raise ValueError("basis contains NaN or infinite entries")
    tol = 1e-8 if basis.dtype == torch.float64 else 1e-5
    gram = basis.T @ basis
    err = float((gram - torch.eye(d, dtype=basis.dtype, device=basis.device)).abs().max())
    if err > tol:
        raise ValueError(f"basis must have orthonormal columns (V^T V = I); max |V^T V - I| = {err:.3g} > {tol:g}. "
                         "Orthonormalise it first, e.g. with torch.linalg.qr or diffnotes.targets.orthonormal_basis")
    return basis.detach().clone()


def _orthonormalise(w: torch.Tensor) -> torch.Tensor:
    """The Q factor of the reduced QR decomposition of w, with the signs fixed so that diag(R) > 0 (a smooth map)."""
    q, r = torch.linalg.qr(w)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q)
    return q * signs[None, :]


class EncoderDecoderScore(nn.Module):
    r"""The encoder-decoder score network of Chen, Huang, Zhao and Wang for data on a linear subspace.

    .. math::

        s_{V,\theta}(x, t) = \frac{1}{h(t)}\big(V f_\theta(V^\top x, t) - x\big),
        \qquad V\in\mathbb R^{D\times d},\ V^\top V = I_d :

    a linear encoder :math:`V^\top` to d latent coordinates, a small network :math:`f_\theta` in d dimensions, a
    linear decoder :math:`V`, and the skip connection :math:`-x/h(t)` -- the simplified U-Net of the review's Fig. 5
    (Section 4.2; book chapter *Score approximation*) :cite:p:`chen2023score`.  It matches the decomposition of
    the score of data :math:`x = Az` on a d-dimensional subspace,

    .. math::

        \nabla\log p_t(x) = A\,\nabla\log p^{\rm ld}_t(A^\top x) - \frac{1}{h(t)}(I - AA^\top)x,

    exactly when :math:`V = A` and :math:`f(z, t) = z + h(t)\nabla\log p^{\rm ld}_t(z)`
    (:math:`= \alpha(t)\,\mathbb E[z_0\mid z_t = z]` by Tweedie's formula): the network then only has to learn a
    function of d variables, and its size depends on d, not on D.

    With ``latent_output="score"`` the latent network g is read as a latent score, :math:`f = z + h(t)\,g(z, t)`,
    so that :math:`s = V g(V^\top x, t) - (I - VV^\top)x/h(t)`: the same set of functions (for h > 0), but a
    different optimisation landscape.  With the direct form a small random :math:`f_\theta` outputs about 0, a
    basis vector that points off the data gets almost no gradient, and training from a random basis can stall on
    a plateau with one direction found; with the score form an untrained network is the projection
    :math:`V^\top x \mapsto V^\top x`, and learning the basis starts like principal component analysis.

    The basis is either learned, :math:`V = \mathrm{qr}(W)` (the Q factor of an unconstrained :math:`D\times d`
    parameter W, with diag(R) > 0), so it stays orthonormal after every optimiser step; or fixed to a given
    orthonormal ``basis`` (a buffer, not trained).  :attr:`basis` is the current V.

    The network outputs the score itself: use it as ``score(x, t)``, with the losses (``esm_loss``, ``dsm_loss``)
    and samplers directly, or through ``as_score(net, "score")``.  Computations use the dtype and device of the
    parameters (float32 by default; ``.double()`` for float64), or those of x for a parameter-free network (fixed
    basis and a plain-function latent); the output is returned in the dtype and on the device of ``x``.

    Parameters
    ----------
    dim : int
        Ambient dimension D.
    latent_dim : int
        Subspace dimension d, at most D.
    sde : VPSDE, optional
        The forward process giving :math:`h(t)` (default :class:`~diffnotes.sde.ConstantVP`).  Times must lie in
        (0, T].
    basis : array of shape (D, d), optional
        An orthonormal basis.  Fixed (not trained) unless ``learn_basis=True``, in which case it is the starting
        point of the learned basis.  Default: learned, from a random orthonormal start.
    learn_basis : bool, optional
        Whether V is trained (default: True without ``basis``, False with it).
    latent : callable, optional
        :math:`f(z, t)` for z of shape (n, d) and t of shape (n,), returning (n, d): a module (trained with the
        network) or a plain function (e.g. the exact latent map).  Default: a :class:`ScoreMLP` in d dimensions
        with the options below.
    latent_output : {"f", "score"}
        What the latent network returns: :math:`f` itself (default, the form of :cite:p:`chen2023score`) or a
        latent score g with :math:`f = z + h(t)\,g`.
    hidden, depth, time_embedding, embedding_dim
        The default latent :class:`ScoreMLP` (ignored when ``latent`` is given).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the random initial basis and of the default latent network's weights (see :func:`seeded`;
        default: torch's global generator).
    """

    conditional = False

    def __init__(self, dim: int, latent_dim: int, *, sde: VPSDE | None = None, basis=None,
                 learn_basis: bool | None = None, latent: Callable | None = None, latent_output: str = "f",
                 hidden: int = 64, depth: int = 2, time_embedding: str = "log", embedding_dim: int = 32,
                 generator=None):
        super().__init__()
        _checks.sizes(dim=dim, latent_dim=latent_dim)
        if latent_dim > dim:
            raise ValueError(f"the latent dimension d = {latent_dim} cannot exceed the ambient dimension D = {dim}")
        self.dim, self.latent_dim = int(dim), int(latent_dim)
        generator = _checks.generator(generator)
        sde = _checks.sde_or_default(sde)
        self.sde = sde
        if latent_output not in ("f", "score"):
            raise ValueError(f"latent_output must be 'f' or 'score', got {latent_output!r}")
        self.latent_output = latent_output
        if basis is None:
            if learn_basis is False:
                raise ValueError("learn_basis=False needs a basis to fix")
            start = _orthonormalise(torch.randn(self.dim, self.latent_dim, generator=generator, dtype=torch.float64))
            learn_basis = True
        else:
            start = _check_basis(basis, self.dim, self.latent_dim)
            learn_basis = bool(learn_basis)
        self.learn_basis = learn_basis
        if learn_basis:
            self.basis_weight = nn.Parameter(start.to(torch.get_default_dtype()))
        else:
            self.register_buffer("fixed_basis", start)
        if latent is None:
            _checks.sizes(hidden=hidden, depth=depth)
            latent = ScoreMLP(self.latent_dim, hidden, depth, time_embedding, embedding_dim, generator=generator)
        if isinstance(latent, nn.Module):
            self.latent = latent
        elif callable(latent):
            self.__dict__["latent"] = latent  # a plain function: not a submodule
        else:
            raise TypeError(f"latent must be a callable f(z, t), got {type(latent).__name__}")

    def _basis(self) -> torch.Tensor:
        return _orthonormalise(self.basis_weight) if self.learn_basis else self.fixed_basis

    @property
    def basis(self) -> torch.Tensor:
        """The current orthonormal basis V, shape (D, d) (a detached copy)."""
        return self._basis().detach().clone()

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The score :math:`(V f(V^\top x, t) - x)/h(t)`, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        t : float or torch.Tensor
            One time for all rows or one per row (shape (n,)), in (0, T].
        """
        x = _checks.points(x, "x", self.dim)
        like = next(self.parameters(), None)
        if like is None:
            like = x
        xp = x.to(dtype=like.dtype, device=like.device)
        tp = self.sde.check_time(_checks.time_rows(t, x.shape[0], xp)).to(xp)
        V = self._basis().to(xp)
        h = self.sde.h(tp)[:, None]
        z = xp @ V
        f = self.latent(z, tp)
        if not isinstance(f, torch.Tensor) or f.shape != (x.shape[0], self.latent_dim):
            raise ValueError(f"the latent network must return a tensor of shape ({x.shape[0]}, {self.latent_dim}), "
                             f"got {getattr(f, 'shape', type(f))}")
        f = f.to(xp)
        if self.latent_output == "score":
            out = f @ V.T - (xp - z @ V.T) / h  # V g(V^T x) - (I - V V^T) x / h
        else:
            out = (f @ V.T - xp) / h
        return out.to(dtype=x.dtype, device=x.device)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """The same as calling the network (the ``score(x, t)`` protocol of the exact targets).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D), floating.
        t : float or torch.Tensor
            One time for all rows or one per row (shape (n,)), in (0, T].
        """
        return self(x, t)

    def extra_repr(self) -> str:
        return (f"D={self.dim}, d={self.latent_dim}, learn_basis={self.learn_basis}, "
                f"latent_output={self.latent_output!r}, sde={self.sde!r}")


def _group_count(channels: int, max_groups: int) -> int:
    return math.gcd(channels, max_groups)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-conv, plus a (1x1) residual path."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_group_count(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_group_count(c_out, groups), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.residual = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    @property
    def in_channels(self) -> int:
        return self.conv1.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv2.out_channels

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.residual(x)


class UNet(nn.Module):
    r"""A compact convolutional U-Net for small images, on flat tensors: :math:`(x, t)\mapsto f_\theta(x, t)`.

    The U-Net of Ronneberger, Fischer and Brox :cite:p:`ronneberger2015unet` as used for diffusion by DDPM
    :cite:p:`ho2020denoising` (the review's Fig. 4 and Remark 1; Section 4.2, book chapter *Score
    approximation*), reduced to its skeleton:

    * a 3x3 convolution from the C image channels to ``channels[0]``;
    * one down-sampling level per entry c of ``channels``: a residual block (GroupNorm, SiLU, 3x3 convolutions,
      the time embedding added to every pixel) to c channels, whose output is kept for the skip connection, then
      2x2 average pooling;
    * a bottleneck residual block at resolution :math:`H/2^L \times W/2^L` (L = ``len(channels)``);
    * one up-sampling level per entry, in reverse: nearest-neighbour up-sampling, concatenation with the kept
      output of the same resolution (the skip connection), a residual block;
    * GroupNorm, SiLU and a 3x3 convolution back to C channels.

    The time enters through a :class:`SinusoidalEmbedding` followed by a two-layer MLP.  Inputs and outputs are flat,
    shape (n, C*H*W) (row-major C, H, W), so the network follows the package's ``model(x, t)`` protocol and works
    unchanged with the losses, :func:`~diffnotes.training.train` and the samplers; what the output means is chosen
    by :func:`as_score` (typically ``"eps"``).  Dtype and device handling are those of :class:`ScoreMLP`.

    Parameters
    ----------
    image_shape : tuple of int
        (C, H, W); H and W must be divisible by :math:`2^L`.
    channels : sequence of int
        Width of each level, from the finest resolution to the coarsest (L = its length, at least 1).
    embedding_dim : int
        Width of the sinusoidal time embedding (even).
    time_embedding : {"log", "linear"}
        Embed :math:`\log t` (default) or :math:`t`.
    groups : int
        Largest number of GroupNorm groups (the largest divisor of the channel count up to it is used).
    generator : int, torch.Generator or numpy.random.Generator, optional
        Source of the initial weights (see :func:`seeded`); default torch's global generator.
    """

    conditional = False

    def __init__(self, image_shape, channels=(16, 32), *, embedding_dim: int = 32, time_embedding: str = "log",
                 groups: int = 8, generator=None):
        super().__init__()
        shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in shape):
            raise ValueError(f"image_shape must be (C, H, W) with positive integers, got {image_shape!r}")
        chans = tuple(channels) if isinstance(channels, (tuple, list)) else None
        if not chans:
            raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
        _checks.sizes(**{f"channels[{k}]": c for k, c in enumerate(chans)}, groups=groups)
        C, H, W = (int(v) for v in shape)
        levels = len(chans)
        if H % 2**levels or W % 2**levels:
            raise ValueError(f"with {levels} levels the image height and width must be divisible by 2**{levels} = "
                             f"{2**levels}, got H = {H}, W = {W}; use fewer channels entries or pad the images")
        self.image_shape, self.channels = (C, H, W), tuple(int(c) for c in chans)
        self.dim = C * H * W
        self.embedding = SinusoidalEmbedding(embedding_dim, time_embedding)
        with seeded(generator):
            self._build(C, t_dim=4 * self.channels[0], groups=groups)

    def _build(self, C: int, t_dim: int, groups: int) -> None:
        self.time_mlp = nn.Sequential(nn.Linear(self.embedding.n_features, t_dim), nn.SiLU(),
                                      nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(C, self.channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        width = self.channels[0]
        for c in self.channels:
            self.down.append(_ResBlock(width, c, t_dim, groups))
            width = c
        self.middle = _ResBlock(width, width, t_dim, groups)
        self.up = nn.ModuleList()
        for c in reversed(self.channels):
            self.up.append(_ResBlock(width + c, c, t_dim, groups))
            width = c
        self.head = nn.Sequential(nn.GroupNorm(_group_count(width, groups), width), nn.SiLU(),
                                  nn.Conv2d(width, C, 3, padding=1))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network output for flat images x and times t, shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Flat images, shape (n, C*H*W), floating.
        t : float or torch.Tensor
            One time for all rows or one per row (shape (n,)), finite (a diffusion time).
        """
        x = _checks.points(x, "x", self.dim)
        p = _param_like(self)
        xp = x.to(dtype=p.dtype, device=p.device)
        n = x.shape[0]
        emb = self.time_mlp(self.embedding(_checks.time_rows(t, n, xp)))
        return self._unet(xp, emb).to(dtype=x.dtype, device=x.device)

    def _unet(self, xp: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Stem, down path, middle, up path with skips, head: flat images (n, C*H*W) and embeddings (n, t_dim)."""
        n = xp.shape[0]
        h = self.stem(xp.reshape(n, *self.image_shape))
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
            h = nn.functional.avg_pool2d(h, 2)
        h = self.middle(h, emb)
        for block in self.up:
            h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h).reshape(n, self.dim)

    def architecture(self) -> list[dict]:
        """The stages in the order of the forward pass, read from the modules, for drawing the network.

        Each stage is a dict with ``name``, ``kind`` (``"conv"``, ``"down"``, ``"middle"``, ``"up"``),
        ``in_channels``, ``out_channels``, ``resolution`` (H, W) at which it runs, ``parameters`` (its count) and,
        for the up-sampling blocks, ``skip_from`` (the name of the down block whose output is concatenated).
        """
        C, H, W = self.image_shape
        stages = [dict(name="input conv", kind="conv", in_channels=self.stem.in_channels,
                       out_channels=self.stem.out_channels, resolution=(H, W), parameters=n_parameters(self.stem))]
        for k, block in enumerate(self.down):
            stages.append(dict(name=f"down {k + 1}", kind="down", in_channels=block.in_channels,
                               out_channels=block.out_channels, resolution=(H >> k, W >> k),
                               parameters=n_parameters(block)))
        L = len(self.down)
        stages.append(dict(name="bottleneck", kind="middle", in_channels=self.middle.in_channels,
                           out_channels=self.middle.out_channels, resolution=(H >> L, W >> L),
                           parameters=n_parameters(self.middle)))
        for j, block in enumerate(self.up):
            k = L - 1 - j
            stages.append(dict(name=f"up {k + 1}", kind="up", in_channels=block.in_channels,
                               out_channels=block.out_channels, resolution=(H >> k, W >> k),
                               parameters=n_parameters(block), skip_from=f"down {k + 1}"))
        conv = self.head[-1]
        stages.append(dict(name="output conv", kind="conv", in_channels=conv.in_channels,
                           out_channels=conv.out_channels, resolution=(H, W),
                           parameters=n_parameters(self.head)))
        return stages

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, channels={self.channels}"
