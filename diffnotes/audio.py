r"""Audio: synthetic waveforms, a DiffWave-style dilated convolutional score network, and spectral measures.

The review names audio synthesis (DiffWave, :cite:t:`kong2021diffwave`) among the first applications of diffusion
models (Section 3.1; :cite:p:`chen2024opportunities`).  This module makes a small, faithful version of it:

* :func:`make_waveforms`: sums of a few sinusoids with random frequencies, phases, amplitudes and attack-decay
  envelopes, sampled at 8 kHz for a few hundred samples, generated in code (nothing is downloaded),

  .. math::

      x(\tau) = c\sum_{k=1}^{K} a_k\,\big(1 - e^{-\tau/\tau^{\rm a}_k}\big)\,e^{-\tau/\tau^{\rm d}_k}\,
      \sin(2\pi f_k\tau + \varphi_k),

  with c making the root-mean-square value of every waveform 1;
* :class:`DilatedConvScore`: the network of DiffWave in miniature: a 1x1 input convolution, residual layers whose
  dilated convolutions (dilations :math:`1, 2, 4, \dots`, cycled) see an exponentially growing receptive field, the
  diffusion-time embedding added in every layer, the gated activation :math:`\tanh(\cdot)\odot\sigma(\cdot)` of
  WaveNet :cite:p:`oord2016wavenet`, residual and skip connections, and a zero-initialised output convolution;
* spectral measures, the way audio models are judged when listening is not enough: the power spectrum
  (:func:`power_spectrum`, a Hann-windowed periodogram), the frequencies of its largest peaks
  (:func:`peak_frequencies`), the share of the power near those peaks (:func:`spectral_concentration`: a tone is
  near 1, noise near 0), the log-spectral distance in dB between average spectra (:func:`log_spectral_distance`), the
  1-Wasserstein distance between the dominant frequencies of two sets (:func:`peak_frequency_distance`) and a
  short-time spectrogram (:func:`spectrogram`).  They use :mod:`scipy.signal`.

Book chapter: *Audio* (Part 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import signal
from scipy.stats import wasserstein_distance
from torch import nn

from . import _checks
from .networks import SinusoidalEmbedding

__all__ = ["SAMPLE_RATE", "make_waveforms", "DilatedConvScore", "log_time_dsm_loss", "power_spectrum",
           "peak_frequencies",
           "spectral_concentration", "log_spectral_distance", "peak_frequency_distance", "spectrogram"]

#: The sampling rate of the book's waveforms, in Hz.
SAMPLE_RATE = 8000


# -- data -------------------------------------------------------------------
def _rate(sample_rate) -> float:
    try:
        sr = float(sample_rate)
    except (TypeError, ValueError) as err:
        raise TypeError(f"sample_rate must be a number (Hz), got {sample_rate!r}") from err
    if not (math.isfinite(sr) and sr > 0):
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    return sr


def make_waveforms(n: int, length: int = 256, *, sample_rate: float = SAMPLE_RATE, max_partials: int = 3,
                   frequency_range=(250.0, 1500.0), generator=None, return_parameters: bool = False):
    r"""Draw n waveforms, each a sum of 1 to ``max_partials`` enveloped sinusoids (module docstring).

    For each waveform the number of partials K is uniform on :math:`\{1, \dots, K_{\max}\}`; each partial has a
    frequency :math:`f_k` uniform on ``frequency_range``, a phase uniform on :math:`[0, 2\pi)`, an amplitude uniform
    on [0.3, 1], an attack time :math:`\tau^{\rm a}_k` uniform on [0.5, 3] ms and a decay time :math:`\tau^{\rm d}_k`
    uniform on [10, 60] ms.  Every waveform is scaled to root-mean-square value 1.

    Parameters
    ----------
    n : int
        Number of waveforms, at least 1.
    length : int
        Number of samples per waveform (256 is 32 ms at 8 kHz), at least 8.
    sample_rate : float
        In Hz.
    max_partials : int
        The largest number of partials.
    frequency_range : (float, float)
        Lowest and highest frequency, :math:`0 < f_{\rm lo} < f_{\rm hi} < f_s/2` (:math:`f_s` the sample
        rate; :math:`f_s/2` the Nyquist frequency).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of every random choice.
    return_parameters : bool
        Also return a dict of the drawn ``frequencies``, ``amplitudes``, ``phases`` (each (n, max_partials), zero
        amplitude for absent partials) and ``n_partials`` (n,).

    Returns
    -------
    torch.Tensor
        Waveforms, shape (n, length), float64 (and the parameters when asked).
    """
    n = _checks.positive_int(n, "n")
    length = _checks.positive_int(length, "length", 8)
    K = _checks.positive_int(max_partials, "max_partials")
    sr = _rate(sample_rate)
    try:
        lo, hi = (float(v) for v in frequency_range)
    except (TypeError, ValueError) as err:
        raise TypeError(f"frequency_range must be two numbers (Hz), got {frequency_range!r}") from err
    if not (0 < lo < hi < sr / 2):
        raise ValueError(f"frequency_range must satisfy 0 < low < high < sample_rate / 2 = {sr / 2:g} Hz, got "
                         f"({lo:g}, {hi:g})")
    gen = _checks.generator(generator)

    def u(a, b, shape):
        return a + (b - a) * torch.rand(shape, generator=gen, dtype=torch.float64)

    n_partials = torch.randint(1, K + 1, (n,), generator=gen)
    freq = u(lo, hi, (n, K))
    phase = u(0.0, 2 * math.pi, (n, K))
    amp = u(0.3, 1.0, (n, K)) * (torch.arange(K)[None] < n_partials[:, None])
    attack = u(0.5e-3, 3e-3, (n, K))
    decay = u(10e-3, 60e-3, (n, K))
    tau = torch.arange(length, dtype=torch.float64) / sr
    env = (1 - torch.exp(-tau[None, None] / attack[..., None])) * torch.exp(-tau[None, None] / decay[..., None])
    x = (amp[..., None] * env * torch.sin(2 * math.pi * freq[..., None] * tau + phase[..., None])).sum(1)
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    if return_parameters:
        return x, dict(frequencies=freq, amplitudes=amp, phases=phase, n_partials=n_partials)
    return x


# -- the network -------------------------------------------------------------------
class _ResidualLayer(nn.Module):
    """Dilated conv (C -> 2C) + time projection, gated tanh * sigmoid, 1x1 conv to residual and skip (DiffWave)."""

    def __init__(self, channels: int, dilation: int, t_dim: int):
        super().__init__()
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.time = nn.Linear(t_dim, channels)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h, emb):
        z = self.dilated(h + self.time(emb)[:, :, None])
        gate, filt = z.chunk(2, dim=1)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        residual, skip = self.out(z).chunk(2, dim=1)
        return (h + residual) / math.sqrt(2), skip


class DilatedConvScore(nn.Module):
    r"""A 1-D dilated convolutional network for waveforms in the spirit of DiffWave :cite:p:`kong2021diffwave`.

    :math:`(x, t)\mapsto f_\theta(x, t)` on waveforms of shape (n, L):

    * a 1x1 convolution from the one audio channel to ``channels`` and a ReLU;
    * ``n_layers`` residual layers; layer i uses a kernel-3 convolution with dilation :math:`2^{i \bmod c}`
      (c = ``dilation_cycle``) to 2C channels after adding the projected time embedding to its input, the gated
      unit :math:`\tanh(z_1)\odot\sigma(z_2)` :cite:p:`oord2016wavenet`, and a 1x1 convolution split into a residual
      (added to the layer's input, scaled by :math:`1/\sqrt2`) and a skip output;
    * the skips summed and scaled by :math:`1/\sqrt{n_{\rm layers}}`, a 1x1 convolution, a ReLU and a
      zero-initialised 1x1 convolution to one channel (so training starts from the zero output, as in DiffWave).

    The time enters through :class:`~diffnotes.networks.SinusoidalEmbedding` of :math:`\log t` and a two-layer MLP
    (DiffWave embeds the discrete step index the same way).  The receptive field is
    :math:`1 + 2\sum_i 2^{i \bmod c}` samples.  What the output means is chosen by
    :func:`~diffnotes.networks.as_score` (DiffWave predicts the noise: ``"eps"``).  Unlike DiffWave, no mel
    spectrogram conditions the network: this is unconditional generation.  Book chapter: *Audio*.

    Parameters
    ----------
    length : int
        Waveform length L (the network is convolutional and accepts only this length, to catch mistakes).
    channels : int
        Residual channels C.
    n_layers : int
        Number of residual layers.
    dilation_cycle : int
        Dilations are :math:`1, 2, \dots, 2^{c-1}`, repeated.
    embedding_dim : int
        Width of the sinusoidal time embedding (even).
    generator : None, int, torch.Generator or numpy.random.Generator
        Source of the initial weights: every weight and bias is drawn from
        :math:`\mathsf U(-1/\sqrt{\rm fan_{in}}, 1/\sqrt{\rm fan_{in}})` (PyTorch's default range) with this
        generator, never from torch's global one; None draws from torch's global generator.
    """

    conditional = False

    def __init__(self, length: int, channels: int = 32, n_layers: int = 8, dilation_cycle: int = 8, *,
                 embedding_dim: int = 32, generator=None):
        super().__init__()
        self.length = _checks.positive_int(length, "length")
        _checks.sizes(channels=channels, n_layers=n_layers, dilation_cycle=dilation_cycle)
        self.channels, self.n_layers, self.dilation_cycle = int(channels), int(n_layers), int(dilation_cycle)
        self.dim = self.length
        self.embedding = SinusoidalEmbedding(embedding_dim, "log")
        t_dim = 4 * self.channels
        self.time_mlp = nn.Sequential(nn.Linear(self.embedding.n_features, t_dim), nn.SiLU(),
                                      nn.Linear(t_dim, t_dim), nn.SiLU())
        self.inp = nn.Conv1d(1, self.channels, 1)
        self.layers = nn.ModuleList(_ResidualLayer(self.channels, 2 ** (i % self.dilation_cycle), t_dim)
                                    for i in range(self.n_layers))
        self.skip = nn.Conv1d(self.channels, self.channels, 1)
        self.head = nn.Conv1d(self.channels, 1, 1)
        self._init(generator)

    def _init(self, generator) -> None:
        gen = _checks.generator(generator)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv1d, nn.Linear)):
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    for p in (module.weight, module.bias):
                        p.copy_((2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1) * bound)
            self.head.weight.zero_()
            self.head.bias.zero_()

    @property
    def receptive_field(self) -> int:
        """The number of input samples that one output sample depends on."""
        return 1 + 2 * sum(2 ** (i % self.dilation_cycle) for i in range(self.n_layers))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network output for waveforms x (n, L) and times t (a float or (n,) tensor), shaped like x.

        Parameters
        ----------
        x : torch.Tensor
            Waveforms, shape (n, L) with L the network's ``length``.
        t : float or torch.Tensor
            One time, or one per row.
        """
        x = _checks.points(x, "x", self.length)
        n = x.shape[0]
        p = next(self.parameters())
        rows = _checks.time_rows(t, n, x).to(dtype=p.dtype, device=p.device)
        emb = self.time_mlp(self.embedding(rows).to(p.dtype))
        h = torch.relu(self.inp(x.to(p.dtype)[:, None, :]))
        skips = 0
        for layer in self.layers:
            h, s = layer(h, emb)
            skips = skips + s
        out = self.head(torch.relu(self.skip(skips / math.sqrt(self.n_layers))))
        return out[:, 0, :].to(dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return (f"length={self.length}, channels={self.channels}, n_layers={self.n_layers}, "
                f"receptive_field={self.receptive_field}")


def log_time_dsm_loss(model, x0: torch.Tensor, t0: float = 1e-3, T: float | None = None, *, sde=None,
                      generator=None) -> torch.Tensor:
    r"""Denoising score matching with the times drawn log-uniformly on :math:`[t_0, T]` (low noise emphasised).

    :func:`~diffnotes.losses.dsm_loss` (noise-prediction weighting :math:`w = h`) evaluated at
    :math:`\log t \sim \mathsf U[\log t_0, \log T]`.  The time law changes only the weighting of the objective over
    t, not its minimiser (the true score at every t); it spends the training on the small noise levels where a
    waveform's fine structure is decided, as DiffWave's schedule of small :math:`\beta` does
    :cite:p:`kong2021diffwave`.  With uniform times most of the budget goes to large t, where the optimal denoiser is
    nearly the linear (Gaussian) one.  Book chapter: *Audio*.

    Parameters
    ----------
    model : callable
        The score ``s(x, t)`` being fitted.
    x0 : torch.Tensor
        Waveforms (n, L).
    t0, T : float
        The time range (T defaults to the horizon of ``sde``).
    sde : VPSDE, optional
        The forward process (default :class:`~diffnotes.sde.ConstantVP`).
    generator : torch.Generator, optional
        Source of the times and the noise.
    """
    from .losses import dsm_loss

    sde = _checks.sde_or_default(sde)
    T = sde.T if T is None else float(T)
    t0 = float(t0)
    if not 0 < t0 < T <= sde.T:
        raise ValueError(f"need 0 < t0 < T <= {sde.T:g}, got t0 = {t0:g}, T = {T:g}")
    x0 = _checks.sample(x0)
    gen = _checks.generator(generator)
    u = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    t = torch.exp(math.log(t0) + (math.log(T) - math.log(t0)) * u).to(x0.dtype)
    return dsm_loss(model, x0, t0, T, sde=sde, generator=gen, t=t)


# -- spectral measures -------------------------------------------------------------------
def _waves(x, name: str = "x") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of waveforms shaped (n, L)") from err
    if x.ndim != 2 or x.shape[1] < 8:
        raise ValueError(f"{name} must have shape (n, L) with L >= 8 samples, got {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch: give at least one waveform")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def power_spectrum(x, sample_rate: float = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    r"""The Hann-windowed periodogram of each waveform (power spectral density, one-sided).

    :func:`scipy.signal.periodogram` with ``window="hann"`` and the mean removed: the frequency grid is
    :math:`f_j = j\,f_s/L`, :math:`j = 0, \dots, \lfloor L/2\rfloor` (31.25 Hz apart for L = 256 at 8 kHz).

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n, L)
    sample_rate : float
        In Hz.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The frequencies (L//2 + 1,) in Hz and the spectra (n, L//2 + 1).
    """
    x = _waves(x)
    return signal.periodogram(x, fs=_rate(sample_rate), window="hann", detrend="constant", axis=-1)


def _peaks(power: np.ndarray, n_peaks: int) -> np.ndarray:
    """Bin indices of the n_peaks largest local maxima of each spectrum (the largest bins if there are fewer)."""
    out = np.empty((power.shape[0], n_peaks), dtype=int)
    for i, p in enumerate(power):
        idx, _ = signal.find_peaks(p)
        idx = idx[np.argsort(p[idx])[::-1]][:n_peaks]
        if idx.size < n_peaks:  # too few local maxima (e.g. a spectrum falling monotonically): take the largest bins
            rest = [j for j in np.argsort(p)[::-1] if j not in set(idx)]
            idx = np.concatenate([idx, rest[: n_peaks - idx.size]]).astype(int)
        out[i] = idx
    return out


def peak_frequencies(x, n_peaks: int = 1, sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """The frequencies (Hz) of the ``n_peaks`` largest local maxima of each waveform's power spectrum.

    Local maxima are found by :func:`scipy.signal.find_peaks` on :func:`power_spectrum`, ordered by power; the
    resolution is the bin width sample_rate / L.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n, L)
    n_peaks : int
        How many peaks per waveform.
    sample_rate : float
        In Hz.

    Returns
    -------
    numpy.ndarray
        Shape (n, n_peaks), strongest peak first.
    """
    n_peaks = _checks.positive_int(n_peaks, "n_peaks")
    f, p = power_spectrum(x, sample_rate)
    return f[_peaks(p, n_peaks)]


def spectral_concentration(x, n_peaks: int = 3, width: int = 2, sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    r"""The share of each waveform's power within ``width`` bins of its ``n_peaks`` largest spectral peaks.

    .. math::

        c = \frac{\sum_{j \in \cup_k [j_k - w, j_k + w]} P_j}{\sum_j P_j},

    about 1 for a few enveloped tones, and about :math:`n_{\rm peaks}(2w+1)/(L/2+1)` (plus the bias of choosing the
    largest peaks) for white noise, whose power is spread over every bin.  A Gaussian model fitted to the data's
    covariance reproduces the *average* spectrum but not this per-waveform concentration.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n, L)
    n_peaks : int
        Number of peaks.
    width : int
        Half-width w of the band around each peak, in bins (the Hann window spreads a tone over about 2 bins).
    sample_rate : float
        In Hz.

    Returns
    -------
    numpy.ndarray
        Shape (n,), values in [0, 1].
    """
    n_peaks = _checks.positive_int(n_peaks, "n_peaks")
    width = _checks.positive_int(width, "width", 0)
    _, p = power_spectrum(x, sample_rate)
    band = np.zeros_like(p, dtype=bool)
    for i, idx in enumerate(_peaks(p, n_peaks)):
        for j in idx:
            band[i, max(j - width, 0): j + width + 1] = True
    total = p.sum(1)
    if np.any(total <= 0):
        raise ValueError("x contains a waveform with no power (a constant signal): its concentration is undefined")
    return (p * band).sum(1) / total


def log_spectral_distance(x, reference, sample_rate: float = SAMPLE_RATE, floor_db: float = -60.0) -> float:
    r"""Root-mean-square difference in dB between the average power spectra of two sets of waveforms.

    .. math::

        \mathrm{LSD} = \Big(\frac{1}{J}\sum_{j=1}^{J}\big(10\log_{10}\bar P_j - 10\log_{10}\bar Q_j\big)^2\Big)^{1/2},

    over the bins above 0 Hz, :math:`\bar P` and :math:`\bar Q` the mean spectra (:func:`power_spectrum`), each
    floored at ``floor_db`` below its own maximum so that empty bins do not dominate.  Scaling every waveform by c
    gives :math:`|20\log_{10}c|` exactly.  This is the log-spectral distance used to judge speech and audio models,
    applied to average spectra (a distance between sets, not between paired waveforms).

    Parameters
    ----------
    x, reference : array_like or torch.Tensor, shapes (n, L) and (m, L)
    sample_rate : float
        In Hz.
    floor_db : float
        The floor relative to each spectrum's maximum, in dB (negative).
    """
    x, reference = _waves(x), _waves(reference, "reference")
    if x.shape[1] != reference.shape[1]:
        raise ValueError(f"x and reference must have the same length L, got {x.shape[1]} and {reference.shape[1]}")
    floor_db = float(floor_db)
    if not (math.isfinite(floor_db) and floor_db < 0):
        raise ValueError(f"floor_db must be a negative number of dB, got {floor_db}")
    _, p = power_spectrum(x, sample_rate)
    _, q = power_spectrum(reference, sample_rate)

    def db(s):
        s = s.mean(0)[1:]
        if not np.any(s > 0):
            raise ValueError("a set of waveforms has no power")
        return 10 * np.log10(np.maximum(s, s.max() * 10 ** (floor_db / 10)))

    return float(np.sqrt(np.mean((db(p) - db(q)) ** 2)))


def peak_frequency_distance(x, reference, sample_rate: float = SAMPLE_RATE) -> float:
    """The 1-Wasserstein distance (Hz) between the dominant frequencies of two sets of waveforms.

    The dominant frequency of a waveform is its strongest spectral peak (:func:`peak_frequencies`); the distance
    between the two empirical laws is :func:`scipy.stats.wasserstein_distance`.

    Parameters
    ----------
    x, reference : array_like or torch.Tensor, shapes (n, L) and (m, L)
    sample_rate : float
        In Hz.
    """
    x, reference = _waves(x), _waves(reference, "reference")
    return float(wasserstein_distance(peak_frequencies(x, 1, sample_rate)[:, 0],
                                      peak_frequencies(reference, 1, sample_rate)[:, 0]))


def spectrogram(x, sample_rate: float = SAMPLE_RATE, segment: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Short-time power spectra of one waveform (:func:`scipy.signal.spectrogram`, Hann window, 75 % overlap).

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (L,)
        One waveform.
    sample_rate : float
        In Hz.
    segment : int
        Samples per segment (frequency resolution sample_rate / segment).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Frequencies (Hz), segment times (s) and the power, shape (frequencies, times).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be one waveform of shape (L,), got shape {x.shape}")
    segment = _checks.positive_int(segment, "segment", 4)
    if segment > x.shape[0]:
        raise ValueError(f"segment ({segment}) must not exceed the waveform's length ({x.shape[0]})")
    _waves(x[None])
    return signal.spectrogram(x, fs=_rate(sample_rate), window="hann", nperseg=segment,
                              noverlap=3 * segment // 4)
