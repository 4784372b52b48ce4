"""Tests of diffnotes.audio: synthetic waveforms, the dilated convolutional score network, spectral measures."""

import math

import numpy as np
import pytest
import torch
from scipy import signal

from diffnotes import audio
from diffnotes.networks import as_score
from diffnotes.samplers import ddpm, time_grid
from diffnotes.sde import ConstantVP


def test_waveforms_are_reproducible_normalised_and_follow_their_parameters():
    x, par = audio.make_waveforms(50, 256, generator=3, return_parameters=True)
    assert x.shape == (50, 256) and x.dtype == torch.float64
    assert torch.equal(x, audio.make_waveforms(50, 256, generator=3))
    assert not torch.equal(x, audio.make_waveforms(50, 256, generator=4))
    assert torch.allclose(x.pow(2).mean(1), torch.ones(50, dtype=torch.float64))
    f = par["frequencies"]
    assert bool(((f >= 250) & (f <= 1500)).all())
    assert set(par["n_partials"].tolist()) <= {1, 2, 3}
    present = par["amplitudes"] > 0
    assert torch.equal(present.sum(1), par["n_partials"])


def test_peak_frequency_recovers_a_single_tone():
    """One partial: the strongest periodogram peak lies within one bin (31.25 Hz) of the drawn frequency."""
    x, par = audio.make_waveforms(40, 256, max_partials=1, generator=0, return_parameters=True)
    peak = audio.peak_frequencies(x)[:, 0]
    assert np.all(np.abs(peak - par["frequencies"][:, 0].numpy()) <= audio.SAMPLE_RATE / 256)


def test_peak_frequencies_of_a_sum_of_two_tones():
    tau = np.arange(256) / 8000
    x = np.sin(2 * np.pi * 500 * tau) + 0.5 * np.sin(2 * np.pi * 1250 * tau)  # both on the 31.25 Hz grid
    assert audio.peak_frequencies(x[None], 2)[0].tolist() == [500.0, 1250.0]


def test_power_spectrum_is_scipy_periodogram():
    x = audio.make_waveforms(3, 128, generator=1)
    f, p = audio.power_spectrum(x)
    f_ref, p_ref = signal.periodogram(x.numpy(), fs=8000, window="hann")
    assert np.allclose(f, f_ref) and np.allclose(p, p_ref)
    # Parseval for the windowed periodogram: the density integrates to the mean power of the windowed signal
    w = signal.get_window("hann", 128)
    xm = x.numpy() - x.numpy().mean(1, keepdims=True)
    power = ((xm * w) ** 2).sum(1) / (w**2).sum()
    assert np.allclose(p.sum(1) * (f[1] - f[0]), power, rtol=1e-12)


def test_spectral_concentration_tells_tones_from_noise():
    tones = audio.make_waveforms(200, 256, generator=2)
    noise = torch.randn(200, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c_tones, c_noise = audio.spectral_concentration(tones), audio.spectral_concentration(noise)
    assert np.all((c_tones >= 0) & (c_tones <= 1)) and np.all((c_noise >= 0) & (c_noise <= 1))
    assert c_tones.mean() > 0.95
    # white noise: 3 bands of 5 bins of 129 hold 15/129 = 0.12 of the power on average, more for the largest peaks
    assert 0.1 < c_noise.mean() < 0.4


def test_log_spectral_distance_of_a_scaled_copy():
    x = audio.make_waveforms(30, 256, generator=5)
    assert audio.log_spectral_distance(x, x) == 0.0
    assert math.isclose(audio.log_spectral_distance(2 * x, x), 20 * math.log10(2), rel_tol=1e-10)


def test_peak_frequency_distance():
    x = audio.make_waveforms(100, 256, max_partials=1, generator=6)
    assert audio.peak_frequency_distance(x, x) == 0.0
    tau = torch.arange(256, dtype=torch.float64) / 8000
    a = torch.sin(2 * math.pi * 500 * tau)[None].repeat(4, 1)
    b = torch.sin(2 * math.pi * 1000 * tau)[None].repeat(4, 1)
    assert audio.peak_frequency_distance(a, b) == 500.0


def test_spectrogram_shape():
    f, t, S = audio.spectrogram(audio.make_waveforms(1, 256, generator=0)[0], segment=32)
    assert f.shape == (17,) and S.shape == (17, t.shape[0]) and t.shape[0] == 29


def test_network_shapes_generator_and_sampler():
    net = audio.DilatedConvScore(64, channels=8, n_layers=4, dilation_cycle=3, generator=0)
    again = audio.DilatedConvScore(64, channels=8, n_layers=4, dilation_cycle=3, generator=0)
    other = audio.DilatedConvScore(64, channels=8, n_layers=4, dilation_cycle=3, generator=1)
    state, state2, state3 = net.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert not torch.equal(state["inp.weight"], state3["inp.weight"])
    assert net.receptive_field == 1 + 2 * (1 + 2 + 4 + 1)
    x = torch.randn(5, 64)
    assert torch.equal(net(x, 0.5), torch.zeros(5, 64))  # the output layer starts at zero
    torch.nn.init.normal_(net.head.weight, generator=torch.Generator().manual_seed(0))
    out = net(x, torch.full((5,), 0.5))
    assert out.shape == (5, 64) and bool(torch.isfinite(out).all())
    # a change in one input sample moves only outputs within the receptive field
    x2 = x.clone()
    x2[:, 0] += 1.0
    moved = (net(x2, 0.5) - out).abs().amax(0) > 0
    assert bool(moved[: net.receptive_field // 2 + 1].any()) and not bool(moved[net.receptive_field // 2 + 1:].any())
    sde = ConstantVP(T=4.0)
    samples = ddpm(as_score(net, "eps", sde), (3, 64), time_grid(sde, 1e-2, 5), sde=sde, generator=0)
    assert samples.shape == (3, 64)


def test_bad_inputs():
    net = audio.DilatedConvScore(32, channels=4, n_layers=2, generator=0)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        net(torch.zeros(2, 31), 0.5)
    with pytest.raises(TypeError, match="floating"):
        net(torch.zeros(2, 32, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        audio.make_waveforms(0)
    with pytest.raises(ValueError, match="Nyquist|sample_rate / 2"):
        audio.make_waveforms(3, frequency_range=(100.0, 5000.0))
    with pytest.raises(ValueError, match="empty batch"):
        audio.power_spectrum(np.zeros((0, 64)))
    with pytest.raises(ValueError, match="NaN"):
        audio.spectral_concentration(np.full((2, 64), np.nan))
    with pytest.raises(ValueError, match="same length"):
        audio.log_spectral_distance(np.ones((2, 64)), np.ones((2, 32)))
    with pytest.raises(ValueError, match="no power"):
        audio.spectral_concentration(np.ones((2, 64)))
    with pytest.raises(ValueError, match="sample_rate"):
        audio.peak_frequencies(np.ones((2, 64)), sample_rate=-1)
    with pytest.raises(ValueError, match="one waveform"):
        audio.spectrogram(np.ones((2, 64)))


def test_log_time_dsm_loss_draws_log_uniform_times_and_is_dsm():
    from diffnotes.losses import dsm_loss

    sde = ConstantVP(T=5.0)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return -x

    x0 = audio.make_waveforms(4000, 16, generator=0)
    loss = audio.log_time_dsm_loss(model, x0, 1e-3, sde=sde, generator=torch.Generator().manual_seed(7))
    t = seen[0]
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 5.0
    # log t uniform on [log 1e-3, log 5]: its mean is the midpoint, standard error 8.5 / sqrt(12 * 4000) ~ 0.04
    mid = 0.5 * (math.log(1e-3) + math.log(5.0))
    assert abs(float(torch.log(t).mean()) - mid) < 5 * (math.log(5.0) - math.log(1e-3)) / math.sqrt(12 * 4000)
    # the same draws handed to dsm_loss give the same number
    gen = torch.Generator().manual_seed(7)
    u = torch.rand(4000, generator=gen, dtype=torch.float64)
    t_ref = torch.exp(math.log(1e-3) + (math.log(5.0) - math.log(1e-3)) * u)
    ref = dsm_loss(model, x0, 1e-3, 5.0, sde=sde, generator=gen, t=t_ref)
    assert torch.allclose(loss, ref)
    with pytest.raises(ValueError, match="t0"):
        audio.log_time_dsm_loss(model, x0, 10.0, sde=sde)
