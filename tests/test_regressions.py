"""Tests that kill the bugs the rest of the suite let through (issue 20: planted one at a time, each survived).

Each test names the bug it was written against.  The expected values are computed by hand (the arithmetic is in the
comments) or come from an exact property, never from a second copy of the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffnotes import samplers
from diffnotes.estimators import ConditionalKernelScore, KernelScore
from diffnotes.networks import SinusoidalEmbedding
from diffnotes.samplers import (
    DETERMINISTIC,
    EVALS_PER_STEP,
    SAMPLERS,
    ddim,
    dpm_solver_pp,
    euler_maruyama,
    predictor_corrector,
    time_grid,
)
from diffnotes.sde import ConstantVP, LinearVP
from diffnotes.targets import GaussianMixture


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- forward paths: the joint law across times, not only the marginals ----------------------------------------------
def test_forward_path_has_the_covariance_of_the_markov_process():
    # Bug killed: each x_t drawn afresh as alpha(t) x0 + sqrt(h(t)) eps (right marginals, no coupling across times).
    # For the VP process started at a point x0, Cov(X_s, X_t) = (alpha(t)/alpha(s)) h(s) for s <= t; on
    # ConstantVP (g = 1), alpha(t) = exp(-t/2) and h(t) = 1 - exp(-t).  Times 0.3, 1.0, 2.5:
    #   h = 0.259182, 0.632121, 0.917915;  Cov(0.3, 1.0) = exp(-0.35) * 0.259182 = 0.182642,
    #   Cov(0.3, 2.5) = exp(-1.1) * 0.259182 = 0.086278, Cov(1.0, 2.5) = exp(-0.75) * 0.632121 = 0.298596.
    expected = torch.tensor([[0.259182, 0.182642, 0.086278],
                             [0.182642, 0.632121, 0.298596],
                             [0.086278, 0.298596, 0.917915]], dtype=torch.float64)
    sde = ConstantVP(T=5.0)
    n = 40_000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    paths = sde.forward_path(x0, torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=torch.float64), _gen(1))
    assert torch.equal(paths[0], x0)
    xs = paths[1:, :, 0]  # (3, n)
    mean = xs.mean(1)
    # Mean alpha(t) x0 = 1.5 exp(-t/2) = 1.290912, 0.909796, 0.429772; standard error sqrt(h/n) < 0.005.
    assert torch.allclose(mean, torch.tensor([1.290912, 0.909796, 0.429772], dtype=torch.float64), atol=0.025)
    cov = torch.cov(xs)
    # Standard error of a sample covariance of Gaussians: sqrt((C_ss C_tt + C_st^2) / n) <= sqrt(2 * 0.918^2 / n)
    # = 0.0065; tolerance 5 of those.  Losing the coupling puts the off-diagonal at 0 (off by 0.09 to 0.30).
    assert torch.allclose(cov, expected, atol=0.033)


def test_forward_path_increments_are_independent_of_the_past():
    # Bug killed (the same, seen from the Markov property): X_t - r X_s with r = alpha(t)/alpha(s) is independent of
    # X_s and has variance 1 - r^2.  LinearVP, s = 0.2, t = 0.5: G(t) = 0.1 t + 9.95 t^2, G(0.2) = 0.418,
    # G(0.5) = 2.5375, r = exp(-(2.5375 - 0.418)/2) = 0.346628, 1 - r^2 = 0.879849.
    sde = LinearVP()
    n = 40_000
    x0 = torch.randn(n, 2, dtype=torch.float64, generator=_gen(2))
    paths = sde.forward_path(x0, torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64), _gen(3))
    r = 0.346628
    inc = (paths[2] - r * paths[1]).reshape(-1)
    past = paths[1].reshape(-1)
    # Standard errors: variance sqrt(2/n) * 0.88 = 0.0062; covariance sqrt(0.88 * Var X_s / n) < 0.005.
    assert abs(float(inc.var()) - 0.879849) < 0.031
    assert abs(float(torch.cov(torch.stack([inc, past]))[0, 1])) < 0.025


# -- the time grids ------------------------------------------------------------------------------------------------
def test_quadratic_grid_is_uniform_in_the_square_root_of_time():
    # Bug killed: the quadratic grid raised to the third power.  T = 1, t0 = 0.01, 3 steps: sqrt(t) runs
    # 1, 0.7, 0.4, 0.1, so t = 1, 0.49, 0.16, 0.01.
    grid = time_grid(ConstantVP(T=1.0), 0.01, 3, "quadratic")
    assert torch.allclose(grid, torch.tensor([1.0, 0.49, 0.16, 0.01], dtype=torch.float64), rtol=1e-14, atol=0)
    # T = 4, t0 = 0.25, 2 steps: sqrt(t) runs 2, 1.25, 0.5, so the middle time is 1.5625.
    grid = time_grid(ConstantVP(T=4.0), 0.25, 2, "quadratic")
    assert torch.allclose(grid, torch.tensor([4.0, 1.5625, 0.25], dtype=torch.float64), rtol=1e-14, atol=0)


def test_uniform_and_log_grids_by_hand():
    # T = 2, t0 = 0.5, 3 steps: uniform 2, 1.5, 1, 0.5; log: ratio (0.5/2)^(1/3) = 0.629961, so 2, 1.259921, 0.793701.
    sde = ConstantVP(T=2.0)
    assert torch.allclose(time_grid(sde, 0.5, 3), torch.tensor([2.0, 1.5, 1.0, 0.5], dtype=torch.float64))
    assert torch.allclose(time_grid(sde, 0.5, 3, "log"),
                          torch.tensor([2.0, 1.259921, 0.793701, 0.5], dtype=torch.float64), atol=1e-6)


# -- DPM-Solver++: the lower-order final step ---------------------------------------------------------------------
def _mixture(sde):
    return GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]],
                           [torch.eye(2) * 0.2, torch.tensor([[0.4, 0.1], [0.1, 0.3]])], sde)


@pytest.mark.parametrize("n_steps", [3, 8, 14])
def test_dpm_solver_pp_below_15_steps_ends_with_one_ddim_step(n_steps):
    # Bug killed: the rule "with lower_order_final and fewer than 15 steps, the last step is first order" changed
    # (another threshold, another step made first order, or never).  Below 15 steps the output is the second-order
    # solver's state before the last step, moved by one DDIM step; every earlier step is the plain second-order one.
    sde = LinearVP()
    target = _mixture(sde)
    x = torch.randn(32, 2, dtype=torch.float64, generator=_gen(4))
    times = time_grid(sde, 1e-3, n_steps, "logsnr")
    out, traj = dpm_solver_pp(target.score, x, times, sde=sde, return_trajectory=True)
    _, plain = dpm_solver_pp(target.score, x, times, sde=sde, lower_order_final=False, return_trajectory=True)
    assert torch.equal(traj[:-1], plain[:-1])
    # The DDIM step and DPM-Solver++'s first-order step are the same map written two ways: equal to round-off.
    assert torch.allclose(out, ddim(target.score, plain[-2], times[-2:], sde=sde), atol=1e-12, rtol=0)
    # ... and it is not the second-order step (the rule matters at this size).
    assert float((out - plain[-1]).abs().max()) > 1e-5


def test_dpm_solver_pp_from_15_steps_keeps_the_second_order_final_step():
    sde = LinearVP()
    target = _mixture(sde)
    x = torch.randn(32, 2, dtype=torch.float64, generator=_gen(5))
    times = time_grid(sde, 1e-3, 15, "logsnr")
    assert torch.equal(dpm_solver_pp(target.score, x, times, sde=sde),
                       dpm_solver_pp(target.score, x, times, sde=sde, lower_order_final=False))


# -- predictor-corrector: the Langevin step size ---------------------------------------------------------------------
def test_predictor_corrector_langevin_step_by_hand():
    # Bug killed: the corrector's Langevin step eps = 2 snr^2 h(t') multiplied by ten.
    # Score -x (N(0, I) data is stationary under the VP process), no noise: the predictor maps x to
    # x (1 - g dt / 2) and each corrector step multiplies by (1 - eps).  ConstantVP (g = 1), times 1.0 -> 0.5,
    # snr = 0.25: predictor factor 1 - 0.25 = 0.75; h(0.5) = 1 - exp(-0.5) = 0.393469,
    # eps = 2 * 0.0625 * 0.393469 = 0.0491837, so one corrector step gives 0.75 * 0.950816 = 0.713112 and two
    # give 0.75 * 0.950816^2 = 0.678039.
    sde = ConstantVP()
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    times = torch.tensor([1.0, 0.5], dtype=torch.float64)
    quiet = dict(sde=sde, noise=torch.zeros_like)
    one = predictor_corrector(lambda y, t: -y, x, times, snr=0.25, **quiet)
    two = predictor_corrector(lambda y, t: -y, x, times, snr=0.25, n_corrector=2, **quiet)
    assert torch.allclose(one, 0.713112 * x, atol=1e-6, rtol=0)
    assert torch.allclose(two, 0.678039 * x, atol=1e-6, rtol=0)
    # The corrector's noise scale sqrt(2 eps) = sqrt(0.0983673) = 0.313636, on top of the predictor's
    # sqrt(g dt) = sqrt(0.5) = 0.707107 (noise of ones, zero score): 0 -> 0.707107 -> 0.707107 + 0.313636.
    kicked = predictor_corrector(lambda y, t: torch.zeros_like(y), torch.zeros(1, 1, dtype=torch.float64), times,
                                 sde=sde, snr=0.25, noise=torch.ones_like)
    assert abs(float(kicked) - (0.707107 + 0.313636)) < 1e-5


# -- the time embedding ----------------------------------------------------------------------------------------------
def test_sinusoidal_embedding_by_hand():
    # Bug killed: cosine replaced by sine (the features (sin, sin) instead of (sin, cos)).
    # Frequencies 1, 2, 4, 8; at u = 0: sin = 0, cos = 1; at u = pi/2: sin(pi/2, pi, 2 pi, 4 pi) = 1, 0, 0, 0 and
    # cos = 0, -1, 1, 1.
    emb = SinusoidalEmbedding(8, kind="linear", min_frequency=1.0, max_frequency=8.0)
    out = emb(torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    expected = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, -1, 1, 1]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)
    # The log embedding at t = 1 is the linear one at u = log 1 = 0.
    log = SinusoidalEmbedding(8, kind="log", min_frequency=1.0, max_frequency=8.0)
    assert torch.allclose(log(torch.ones(1, dtype=torch.float64)), expected[:1], atol=1e-12)


def test_sinusoidal_features_pair_up_on_the_unit_circle():
    emb = SinusoidalEmbedding(16)
    out = emb(torch.rand(50, dtype=torch.float64, generator=_gen(6)) * 5 + 1e-3)
    sin, cos = out[:, :8], out[:, 8:]
    assert torch.allclose(sin**2 + cos**2, torch.ones(50, 8, dtype=torch.float64), atol=1e-12)


# -- the kernel bandwidth ------------------------------------------------------------------------------------------
def test_default_kernel_bandwidths_by_hand():
    # Bug killed: the exponent of the rate-optimal bandwidth n^(-1/(D + 4)) changed.
    # n = 64, D = 2: 64^(-1/6) = 2^(-1) = 0.5.  Conditional, n = 256, d_x = d_y = 2 (exponent -1/(2 + 2 + 4)):
    # 256^(-1/8) = 0.5 as well.
    sde = ConstantVP()
    data = torch.randn(64, 2, dtype=torch.float64, generator=_gen(7))
    assert KernelScore(data, sde).bandwidth == pytest.approx(0.5, rel=1e-14)
    x = torch.randn(256, 2, dtype=torch.float64, generator=_gen(8))
    y = torch.randn(256, 2, dtype=torch.float64, generator=_gen(9))
    assert ConditionalKernelScore(x, y, sde).bandwidth == pytest.approx(0.5, rel=1e-14)
    # n = 3^8 = 6561, D = 4: 6561^(-1/8) = 1/3.
    big = torch.randn(6561, 4, dtype=torch.float64, generator=_gen(10))
    assert KernelScore(big, sde).bandwidth == pytest.approx(1 / 3, rel=1e-14)


# -- rows do not depend on the batch --------------------------------------------------------------------------------
class _RowNoise:
    """A noise hook with fixed per-row draws: the k-th call returns rows 0..n-1 of the k-th table."""

    def __init__(self, n_max, dim, n_calls, seed):
        self.table = torch.randn(n_calls, n_max, dim, dtype=torch.float64, generator=_gen(seed))
        self.calls = 0

    def __call__(self, like):
        out = self.table[self.calls, : like.shape[0]].to(like)
        self.calls += 1
        return out


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_row_of_the_output_does_not_depend_on_the_batch(name):
    # The property: a sampler treats rows independently.  Given the same start rows and the same per-row noise (the
    # noise hook returns, at its k-th call, the first n rows of one fixed table), the first k rows of a batch of n
    # equal the output for those k rows alone, to the last bit.  (With generator= the draws of a batch come from one
    # stream in row-major order, so a row's noise does depend on the batch size: use noise= for this property.)
    sampler = SAMPLERS[name]
    sde = LinearVP()
    target = _mixture(sde)
    times = time_grid(sde, 1e-3, 6, "logsnr")
    x = torch.randn(40, 2, dtype=torch.float64, generator=_gen(11))
    full = sampler(target.score, x, times, sde=sde, noise=_RowNoise(40, 2, 64, 12), final_denoise=True)
    for k in (1, 7):
        part = sampler(target.score, x[:k], times, sde=sde, noise=_RowNoise(40, 2, 64, 12), final_denoise=True)
        assert torch.allclose(part, full[:k], rtol=1e-15, atol=1e-15)


def test_the_noise_hook_is_what_a_generator_draws():
    # With generator= the sampler draws torch.randn(like.shape) from it at each injection: replaying the same
    # stream through the hook gives the same output.  Rows of a batch of n therefore depend on n through the stream.
    sde = LinearVP()
    target = _mixture(sde)
    times = time_grid(sde, 1e-3, 5, "logsnr")
    x = torch.randn(6, 2, dtype=torch.float64, generator=_gen(13))
    replay = _gen(14)
    a = euler_maruyama(target.score, x, times, sde=sde, generator=_gen(14))
    b = euler_maruyama(target.score, x, times, sde=sde,
                       noise=lambda like: torch.randn(like.shape, generator=replay, dtype=like.dtype))
    assert torch.equal(a, b)


# -- the registry of samplers ----------------------------------------------------------------------------------------
def test_the_registry_lists_every_public_sampler():
    # A public sampler is a public function of diffnotes.samplers called as sampler(score, x, times, ...).
    import inspect

    public = {name for name in samplers.__all__ if callable(getattr(samplers, name))
              and list(inspect.signature(getattr(samplers, name)).parameters)[:3] == ["score", "x", "times"]}
    assert public == set(SAMPLERS)
    assert "exponential_multistep" in SAMPLERS  # the one the hand-written registry omitted
    assert set(EVALS_PER_STEP) == set(SAMPLERS) and set(DETERMINISTIC) <= set(SAMPLERS)
    assert EVALS_PER_STEP["probability_flow_heun"] == EVALS_PER_STEP["predictor_corrector"] == 2
    assert set(DETERMINISTIC) == {"probability_flow_euler", "probability_flow_heun", "ddim", "dpm_solver_pp",
                                  "exponential_multistep"}


@pytest.mark.parametrize(("name", "options"), [
    ("ddim", {"eta": 2.0}), ("predictor_corrector", {"snr": -1.0}), ("predictor_corrector", {"n_corrector": -1}),
    ("dpm_solver_pp", {"order": 3}), ("exponential_multistep", {"order": 4}),
])
def test_options_are_checked_once_before_the_first_score_call(name, options):
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    with pytest.raises(ValueError):
        SAMPLERS[name](score, (3, 2), time_grid(LinearVP(), 1e-3, 4), sde=LinearVP(), generator=0, **options)
    assert not calls


# -- module names and re-exports (issue 20) ------------------------------------------------------------------------
def test_renamed_modules_keep_their_old_import_paths():
    from diffnotes import gmm_learning, losses, networks, optimization, parameterization

    for name in optimization.__all__:
        assert getattr(gmm_learning, name) is getattr(optimization, name)
    assert gmm_learning.dsm_loss is optimization.mixture_dsm_loss  # the former name, distinct from losses.dsm_loss
    assert gmm_learning.dsm_loss is not losses.dsm_loss
    for name in parameterization.__all__:
        assert getattr(networks, name) is getattr(parameterization, name) and name in networks.__all__


def test_one_tap_iteration_serves_the_ising_and_sk_models():
    # IsingModel.mean_field and SherringtonKirkpatrick.mean_field are the same iteration (spins.tap_mean_field); at its
    # fixed point the TAP equations hold: m = tanh(J m + y - m (J*J)(1 - m^2)).
    from diffnotes.ising import IsingModel, random_couplings
    from diffnotes.spins import SherringtonKirkpatrick, tap_mean_field

    model = IsingModel(random_couplings(5, 0.2, generator=0), ConstantVP())
    y = torch.randn(4, 5, dtype=torch.float64, generator=_gen(15))
    m = model.mean_field(y, tap=True)
    J = model.J
    assert torch.allclose(m, torch.tanh(m @ J + y - m * ((1 - m**2) @ J**2)), atol=1e-12, rtol=0)
    assert torch.equal(m, tap_mean_field(J, y, tap=True, max_iter=1000, tol=1e-13))
    sk = SherringtonKirkpatrick(6, 0.5, generator=1)
    ys = torch.randn(3, 6, dtype=torch.float64, generator=_gen(16))
    assert torch.equal(sk.mean_field(ys, tap=True),
                       tap_mean_field(sk.J, ys, tap=True, beta=sk.beta, field=sk.field, damping=0.5))


def test_every_name_a_chapter_imports_from_the_package_exists():
    # "No public import path used by a chapter breaks without a re-export": every `from diffnotes[.module] import a, b`
    # and `import diffnotes.module` of every chapter resolves.
    import importlib
    import re
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    missing = []
    for md in sorted(book.glob("part*/*.md")):
        text = md.read_text()
        for module, names in re.findall(r"^\s*from (diffnotes(?:\.\w+)?) import \(?([\w ,\n]+?)\)?$", text, re.M):
            mod = importlib.import_module(module)
            for name in (n.split(" as ")[0].strip() for n in names.replace("\n", " ").split(",")):
                is_module = module == "diffnotes" and importlib.util.find_spec(f"diffnotes.{name}") is not None
                if name and not hasattr(mod, name) and not is_module:
                    missing.append(f"{md.name}: {module}.{name}")
        for module in re.findall(r"^\s*import (diffnotes\.\w+)", text, re.M):
            if importlib.util.find_spec(module) is None:
                missing.append(f"{md.name}: {module}")
    assert not missing
