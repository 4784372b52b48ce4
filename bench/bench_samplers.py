r"""Benchmark: diffusers' schedulers against diffnotes' samplers on one exact score (``make bench``).

Set-up: the 8-Gaussian ring (radius 4, std 0.3) under the default DDPM schedule (1000 steps, betas 1e-4 to 0.02);
the VP SDE of the samplers is :class:`~diffnotes.sde.DiscreteVP` built from diffusers' own betas, so diffusers
timestep j is time t = (j + 1)/1000.  Every sampler gets the exact score, 5, 10, 20 or 50 score evaluations, and the
same starting noise at t = 1.

Main, noise-free figures (definitions in the report this script writes):

(a) the root-mean-square distance, over 20 000 starts, from each deterministic sampler's output to a precise solve of
    the probability-flow ODE from the same start (SciPy DOP853, rtol = atol = 1e-10);
(b) the exact error of the output variance on 1-D Gaussian data N(0, 0.25), where every sampler is linear.

Beside them: sliced Wasserstein distance (20 000 samples) and MMD (4000) to fresh data, and wall time per step.

The goal (report section "The goal at 5 and 10 evaluations on every row"): the package's default ``samplers.sample``
at least 20 % better than the best deterministic diffusers scheduler on (a) and (b) and on every transfer case
(rings of std 0.1 and 1.0, Gaussians of variance 0.01, 1 and 4), at 5 and at 10 evaluations, with no larger own work
per step; the default's configuration was chosen by bench/grid_rule.py on other data.  A learned-score case trains
four small networks by denoising score matching on the ring (the same recipe, four seeds) and compares the samplers
with a tight probability-flow solve driven by the same network; its goal is met only where it is met on every
network.
diffusers is used here only as the library being compared against; diffnotes never imports it.

Writes ``_build/bench/report.md``, ``_build/bench/bench_samplers.png`` and ``_build/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script writing PNG files, not a notebook
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.spatial  # noqa: E402
import torch  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import diffnotes  # noqa: E402
from diffnotes import metrics  # noqa: E402
from diffnotes.oracle import gaussian_output_law  # noqa: E402
from diffnotes.plotting import COLORS, use_style  # noqa: E402
from diffnotes.samplers import (  # noqa: E402
    DEFAULT_CONFIG,
    ddim,
    ddpm,
    dpm_solver_pp,
    exponential_multistep,
    on_nodes,
    power_grid,
    sample,
    time_grid,
)
from diffnotes.sde import DiscreteVP  # noqa: E402
from diffnotes.targets import Gaussian, ring_mixture  # noqa: E402

try:
    import diffusers
except ImportError:  # pragma: no cover - the benchmark needs the reference implementation
    sys.exit("bench_samplers.py needs diffusers (pinned in requirements.txt); run `make bench`.")

EVALS = (5, 10, 20, 50)
HEADLINE_EVALS = 10
T0 = 1e-3  # the DDPM grid's first node, t = 1/1000 (diffusers timestep 0)
CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
GAUSS_VAR = 0.25
ODE_TOL = 1e-10
N_PROJ = 100  # sliced Wasserstein directions (fixed, the same for every sampler)
OWN_EVALS = (5, 10, 50)  # budgets at which the samplers' own work is timed
GOAL_EVALS = (5, 10)  # budgets of the goal: >= 20 % better than the best diffusers scheduler on every row
GOAL_GAIN = 0.2
DEFAULT_KEY = "ours-default"  # the entry that is samplers.sample, the package's default (DEFAULT_CONFIG)
LEARNED_STEPS = 1500  # Adam steps of each DSM-trained network of the learned-score case
# (network initialisation, batch order) seeds of the learned-score case's trainings; the first is the one network
# of earlier reports
LEARNED_SEEDS = ((8, 9), (101, 201), (102, 202), (103, 203))
LEARNED_STARTS = 1000
LEARNED_ODE_TOL = 1e-8
OWN_REPEATS = 15
# Values measured earlier on this set-up (diffusers at 10 evaluations); the harness must reproduce them.
QUOTED = {"a": {"ddim": 0.157, "dpm": 0.159, "unipc": 0.169}, "b": {"unipc": 0.083, "dpm": 0.087, "ddim": 0.109}}
QUOTED_TOL = 1e-3  # they were given to three decimals


# ---------------------------------------------------------------------------------------------- set-up
def make_setup():
    betas = diffusers.DDIMScheduler(**CONFIG).betas.double()
    sde = DiscreteVP(betas)  # the very same grid as every scheduler below
    return sde, sde.alphas_cumprod


def on_ddpm_nodes(times: torch.Tensor, N: int = 1000) -> torch.Tensor:
    """Round a decreasing grid to the DDPM nodes k/N (diffnotes.samplers.on_nodes), so that every score call is at
    a timestep a discrete-time DDPM network knows (as for diffusers)."""
    return on_nodes(times, N)


class Counted:
    """A score function that counts its calls and hands every call the per-row times a network would get."""

    def __init__(self, score):
        self.score, self.calls = score, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


# ---------------------------------------------------------------------------------------------- samplers
@dataclass
class Entry:
    key: str
    label: str
    family: str  # "diffusers" or "diffnotes"
    deterministic: bool
    tau: float  # the time of the output: 0 when the last step is an x0-prediction (a step to t = 0), else T0
    grid: str
    run: object = None  # run(x, n_evals, score, generator) -> output
    variance: object = None  # variance(n_evals, gaussian_target) -> exact output variance, start N(0, 1)
    results: dict = field(default_factory=dict)


def diffusers_entries(sde, abar):
    def runner(make, custom_grid=None):
        def run(x, n, score, generator=None):
            sched = make()
            if custom_grid is None:
                sched.set_timesteps(n)
            else:
                sched.set_timesteps(timesteps=custom_grid(n))
            euler = isinstance(sched, diffusers.EulerDiscreteScheduler)
            # Euler works with x / alpha (variance-exploding coordinates); its start is the same noise scaled.
            lat = x * sched.init_noise_sigma if euler else x.clone()
            rows = None
            for j in sched.timesteps:
                jj = int(j)
                if rows is None or rows.shape[0] != x.shape[0]:
                    rows = torch.empty(x.shape[0], dtype=torch.float64)
                rows.fill_((jj + 1) / 1000)  # a pipeline broadcasts the timestep to the batch
                inp = sched.scale_model_input(lat, j)
                eps = score(inp, rows).mul_(-math.sqrt(1 - float(abar[jj])))  # eps = -sqrt(1 - abar) * score
                extra = {} if generator is None else {"generator": generator}  # only DDPM draws noise
                lat = sched.step(eps, j, lat, **extra).prev_sample
            return lat  # at sigma = 0 the Euler latents are the data coordinates

        return run

    def variance_by_linearity(run):
        def variance(n, gauss):
            # Deterministic and linear on Gaussian data: x_T = 1 gives the coefficient c, the variance is c^2.
            one = torch.ones(1, 1, dtype=torch.float64)
            c = float(run(one, n, gauss.score))
            c2 = float(run(2 * one, n, gauss.score))
            if not math.isclose(c2, 2 * c, rel_tol=1e-6, abs_tol=1e-9):
                raise RuntimeError("a deterministic scheduler is not linear on Gaussian data: harness broken")
            return c * c

        return variance

    def quadratic_timesteps(n):  # diffusers ablation: our quadratic grid, n nodes, the last at t = T0
        return [int(round(float(t) * 1000)) - 1 for t in on_ddpm_nodes(time_grid(sde, T0, n - 1, "quadratic"))]

    def ddpm_variance(n, gauss):
        # diffusers' DDPM is our ddpm on its timesteps with the final step to t = 0 (tests/test_parity_diffusers.py
        # checks the two agree to 1e-5 with shared noise); the oracle gives its exact output law.
        return float(gaussian_output_law(ddpm, gauss, sde.timesteps(n), final_denoise=True)[1])

    trailing = dict(timestep_spacing="trailing")
    specs = [
        ("ddim", "DDIM", True, T0, lambda: diffusers.DDIMScheduler(**CONFIG, **trailing, set_alpha_to_one=False,
                                                                   clip_sample=False), None),
        ("dpm", "DPMSolverMultistep (++ 2M)", True, 0.0,
         lambda: diffusers.DPMSolverMultistepScheduler(**CONFIG, **trailing, algorithm_type="dpmsolver++",
                                                       solver_order=2), None),
        ("unipc", "UniPCMultistep (bh2, order 2)", True, 0.0,
         lambda: diffusers.UniPCMultistepScheduler(**CONFIG, **trailing), None),
        ("euler", "EulerDiscrete", True, 0.0, lambda: diffusers.EulerDiscreteScheduler(**CONFIG, **trailing), None),
        ("ddpm", "DDPM (stochastic)", False, 0.0,
         lambda: diffusers.DDPMScheduler(**CONFIG, **trailing, clip_sample=False, variance_type="fixed_small"), None),
        ("dpm-quad", "DPMSolverMultistep (++ 2M), quadratic timesteps [ablation]", True, 0.0,
         lambda: diffusers.DPMSolverMultistepScheduler(**CONFIG, algorithm_type="dpmsolver++", solver_order=2),
         quadratic_timesteps),
    ]
    out = []
    for key, label, det, tau, make, custom in specs:
        run = runner(make, custom)
        grid = "trailing" if custom is None else "quadratic nodes (custom timesteps), last eval at t0, then x0"
        var = variance_by_linearity(run) if det else ddpm_variance
        out.append(Entry(key, label, "diffusers", det, tau, grid, run, var))
    return out


def ours_entries(sde):
    def grid(spacing):
        return lambda n: on_ddpm_nodes(time_grid(sde, T0, n, spacing))

    specs = [
        ("ours-ddim-quad", "ddim", ddim, {}, "quadratic"),
        ("ours-dpm-logsnr", "dpm_solver_pp (2M)", dpm_solver_pp, {}, "logsnr"),
        ("ours-dpm-quad", "dpm_solver_pp (2M)", dpm_solver_pp, {}, "quadratic"),
        ("ours-em2-quad", "exponential_multistep (order 2 + corrector)", exponential_multistep, {}, "quadratic"),
        ("ours-em3-quad", "exponential_multistep (order 3 + corrector)", exponential_multistep, {"order": 3},
         "quadratic"),
    ]
    out = []
    for key, label, sampler, opts, spacing in specs:
        g = grid(spacing)

        def run(x, n, score, generator=None, sampler=sampler, opts=opts, g=g):
            return sampler(score, x, g(n), sde=sde, **opts)

        def variance(n, gauss, sampler=sampler, opts=opts, g=g):
            return float(gaussian_output_law(sampler, gauss, g(n), **opts)[1])

        desc = f"{spacing} from t = 1 to t0 = {T0:g}, on DDPM nodes, n steps, no final denoising"
        out.append(Entry(key, f"{label}, {spacing}", "diffnotes", True, T0, desc, run, variance))

    # The package's default, called as a user would: samplers.sample (DEFAULT_CONFIG), n - 1 steps on the power grid
    # (rho = 2.5) to t_last = 0.03, then the final denoising call; its output is at t = 0.
    cfg = DEFAULT_CONFIG

    def default_grid(n):
        return on_ddpm_nodes(power_grid(sde, cfg["t_last"], n - 1, cfg["rho"]))

    def default_run(x, n, score, generator=None):
        return sample(score, x, n, sde=sde)

    def default_variance(n, gauss):
        return float(gaussian_output_law(exponential_multistep, gauss, default_grid(n), final_denoise=True,
                                         **cfg["options"])[1])

    desc = (f"power grid (rho = {cfg['rho']}) from t = 1 to t_last = {cfg['t_last']}, on DDPM nodes, n - 1 steps, "
            "then the final denoising call")
    out.append(Entry(DEFAULT_KEY, "samplers.sample (default: exponential_multistep order 3 + corrector, "
                     f"power grid rho {cfg['rho']}, final denoising at t = {cfg['t_last']})", "diffnotes", True, 0.0,
                     desc, default_run, default_variance))
    return out


# ---------------------------------------------------------------------------------------------- the reference
def pf_ode_reference(sde, score, x, t_end, tol=ODE_TOL):
    r"""Solve the probability-flow ODE dx/dt = -1/2 g(t) (x + score(x, t)) from t = 1 down to t_end, precisely.

    With :math:`G(t) = \int_0^t g` (piecewise linear for the DDPM grid, whose g is piecewise constant) the same ODE
    reads :math:`dx/dG = -\tfrac12 (x + s(x, t(G)))`, smooth in G: the 1000 jumps of g, which would force tiny
    steps in t, disappear.  DOP853 with rtol = atol = tol.  Returns the solution and the number of score calls.
    """
    n, D = x.shape
    rows = torch.empty(n, dtype=torch.float64)

    def rhs(G, y):
        rows.fill_(float(sde.inverse_integral(torch.tensor(G, dtype=torch.float64))))
        xt = torch.from_numpy(y.reshape(n, D))
        return (-0.5 * (xt + score(xt, rows))).reshape(-1).numpy()

    G1 = float(sde.integral(torch.tensor(1.0, dtype=torch.float64)))
    Ge = float(sde.integral(torch.tensor(t_end, dtype=torch.float64)))
    sol = solve_ivp(rhs, (G1, Ge), x.reshape(-1).numpy().copy(), method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"the reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].reshape(n, D).copy()), sol.nfev


def tweedie(sde, score, x, t):
    rows = torch.full((x.shape[0],), t, dtype=torch.float64)
    return sde.denoise(x, score(x, rows), t)


# ---------------------------------------------------------------------------------------------- the run
def rms(a, b):
    return float(((a - b) ** 2).sum(1).mean().sqrt())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000, help="starts for (a) and samples for SW")
    parser.add_argument("--mmd-samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every sampler and budget (min reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a busy machine)")
    parser.add_argument("--out", type=Path, default=Path("_build/bench"))
    args = parser.parse_args(argv)
    if args.samples < args.mmd_samples or args.mmd_samples < 100:
        parser.error("need --samples >= --mmd-samples >= 100")
    torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    def say(msg):
        print(f"[{time.perf_counter() - wall0:6.1f}s] {msg}", flush=True)

    sde, abar = make_setup()
    target = ring_mixture(8, radius=4.0, std=0.3, sde=sde)
    gauss = Gaussian([0.0], [GAUSS_VAR], sde)
    n = args.samples
    start = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = target.sample(n, generator=torch.Generator().manual_seed(1))

    # -- (a)'s reference: the probability-flow ODE from the same starts, to T0, then Tweedie at T0 ------------------
    ref_t0, nfev = pf_ode_reference(sde, target.score, start, T0)
    ref_0 = tweedie(sde, target.score, ref_t0, T0)
    check_n = min(1000, n)
    tight, _ = pf_ode_reference(sde, target.score, start[:check_n], T0, tol=1e-12)
    ref_accuracy = float((tight - ref_t0[:check_n]).abs().max())
    say(f"reference ODE: {nfev} score calls; max |x(1e-10) - x(1e-12)| = {ref_accuracy:.1e} on {check_n} starts")
    refs = {T0: ref_t0, 0.0: ref_0}

    def v(t):  # variance of the diffused Gaussian data at time t; v(0) is the data variance
        return GAUSS_VAR if t == 0 else float(gauss.moments(t)[1].reshape(-1)[0])

    def exact_variance(tau):  # the exact probability flow maps N(0, 1) at t = 1 to N(0, v(tau)/v(1))
        return v(tau) / v(1.0)

    entries = diffusers_entries(sde, abar) + ours_entries(sde)
    bandwidth = float(np.median(scipy.spatial.distance.pdist(data[:1000].numpy())))
    m = args.mmd_samples

    # -- every sampler, every budget: outputs, (a), (b), SW, MMD -----------------------------------------------------
    for e in entries:
        for k in EVALS:
            counted = Counted(target.score)
            gen = torch.Generator().manual_seed(3) if not e.deterministic else None
            t1 = time.perf_counter()
            out = e.run(start, k, counted, gen).double()
            elapsed = time.perf_counter() - t1
            if counted.calls != k:
                raise RuntimeError(f"{e.key} made {counted.calls} score calls for a budget of {k}")
            if not torch.all(torch.isfinite(out)):
                raise RuntimeError(f"{e.key} returned non-finite values at {k} evaluations")
            r = {"evals": k, "times": [elapsed / k]}
            r["a"] = rms(out, refs[e.tau]) if e.deterministic else None
            var = e.variance(k, gauss)
            r["variance"], r["exact_variance"] = var, exact_variance(e.tau)
            r["b"] = abs(var - exact_variance(e.tau))
            r["sw"] = metrics.sliced_wasserstein(out, data, n_projections=N_PROJ, rng=0)
            r["mmd"] = metrics.mmd(out[:m], data[:m], bandwidth=bandwidth)
            e.results[k] = r
            if k == HEADLINE_EVALS:
                e.results["sample10"] = out[:3000].numpy()
        say(f"{e.key:16s} a@10 = {_fmt(e.results[10]['a'])}  b@10 = {e.results[10]['b']:.4f}")

    # -- timing --------------------------------------------------------------------------------------------------------
    # Total wall time per step: the exact score on all starts, one call per step for every sampler; the runs of one
    # budget are back to back so that changes in the machine's load hit all samplers alike; the minimum over the
    # repeats (the metric run above is the first) is the least disturbed measurement.
    # Own work: the same runs with a score that costs nothing (-x), what each sampler adds to its score calls,
    # per-run set-up included; CPU time of this thread (all torch work runs on it), which a busy machine disturbs
    # far less than wall time; minimum of OWN_REPEATS interleaved runs, at 10 and at 50 steps.
    def trivial(x, t):
        return -x

    for _ in range(args.repeats - 1):
        for k in EVALS:
            for e in entries:
                gen = torch.Generator().manual_seed(3) if not e.deterministic else None
                t1 = time.perf_counter()
                e.run(start, k, target.score, gen)
                e.results[k]["times"].append((time.perf_counter() - t1) / k)
    own = {(e.key, k): [] for e in entries for k in OWN_EVALS}
    for _ in range(OWN_REPEATS):
        for k in OWN_EVALS:
            for e in entries:
                gen = torch.Generator().manual_seed(3) if not e.deterministic else None
                t1 = time.thread_time()
                e.run(start, k, trivial, gen)
                own[e.key, k].append((time.thread_time() - t1) / k)
    for e in entries:
        for k in EVALS:
            e.results[k]["ms_per_step"] = 1e3 * min(e.results[k].pop("times"))
        e.results["own_work_ms"] = {k: 1e3 * min(own[e.key, k]) for k in OWN_EVALS}
    say("timings done")

    # -- floors: what the sample metrics give for exact samples --------------------------------------------------------
    def data_sample(size, rng):
        return target.sample(size, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))

    sw_floor = metrics.noise_floor(lambda a, b: metrics.sliced_wasserstein(a, b, n_projections=N_PROJ, rng=0),
                                   data_sample, n, repeats=5, rng=4)
    mmd_floor = metrics.noise_floor(lambda a, b: metrics.mmd(a, b, bandwidth=bandwidth), data_sample, m,
                                    repeats=5, rng=5)
    floors = {
        "sw_two_data_samples": sw_floor.mean, "sw_two_data_samples_sd": sw_floor.std,
        "mmd_two_data_samples": mmd_floor.mean, "mmd_two_data_samples_sd": mmd_floor.std,
        "sw_exact_flow": metrics.sliced_wasserstein(ref_0, data, n_projections=N_PROJ, rng=0),
        "mmd_exact_flow": metrics.mmd(ref_0[:m], data[:m], bandwidth=bandwidth),
    }

    # -- validation: parity of our samplers with diffusers on the diffusers grid, and the quoted values --------------
    by = {e.key: e for e in entries}
    k = HEADLINE_EVALS
    ours_ddim = ddim(target.score, start, torch.cat([sde.timesteps(k), torch.tensor([T0], dtype=torch.float64)]),
                     sde=sde)
    ours_dpm = dpm_solver_pp(target.score, start, sde.timesteps(k), sde=sde, lower_order_final=False,
                             final_denoise=True)
    parity = {"ddim": float((ours_ddim - by["ddim"].run(start, k, target.score)).abs().max()),
              "dpm": float((ours_dpm - by["dpm"].run(start, k, target.score)).abs().max())}
    reproduced = {crit: {key: {"quoted": q, "measured": by[key].results[k][crit],
                               "ok": abs(by[key].results[k][crit] - q) <= QUOTED_TOL}
                         for key, q in vals.items()} for crit, vals in QUOTED.items()}
    # The other reading of "same final time": each x0-predicting scheduler against the ODE to its last evaluation
    # time followed by Tweedie there (it hides the final jump to t = 0).  Reported, not used.
    alt = {}
    for key in ("dpm", "unipc", "euler"):
        t_last = float(sde.timesteps(k)[-1])
        ref_last, _ = pf_ode_reference(sde, target.score, start[:check_n], t_last)
        out = by[key].run(start[:check_n], k, target.score).double()
        alt[key] = rms(out, tweedie(sde, target.score, ref_last, t_last))
    flags = [f"{c}/{kk}: {'ok' if r['ok'] else 'OFF'}" for c, d in reproduced.items() for kk, r in d.items()]
    say(f"validation: parity {parity}; quoted values {', '.join(flags)}")

    # -- transfer: the same samplers at 5 and 10 evaluations on other data -------------------------------------------
    transfer_by = {kk: {"a": {}, "b": {}} for kk in GOAL_EVALS}
    nt = min(2000, n)
    for std in (0.1, 1.0):
        other = ring_mixture(8, radius=4.0, std=std, sde=sde)
        r_t0, _ = pf_ode_reference(sde, other.score, start[:nt], T0)
        r_refs = {T0: r_t0, 0.0: tweedie(sde, other.score, r_t0, T0)}
        for kk in GOAL_EVALS:
            transfer_by[kk]["a"][f"ring std {std}"] = {
                e.key: rms(e.run(start[:nt], kk, other.score).double(), r_refs[e.tau])
                for e in entries if e.deterministic}
    for var in (0.01, 1.0, 4.0):
        g = Gaussian([0.0], [var], sde)

        def vv(t, g=g, var=var):
            return var if t == 0 else float(g.moments(t)[1].reshape(-1)[0])

        for kk in GOAL_EVALS:
            transfer_by[kk]["b"][f"N(0, {var:g})"] = {e.key: abs(e.variance(kk, g) - vv(e.tau) / vv(1.0)) / var
                                                      for e in entries if e.deterministic}
    transfer = transfer_by[k]
    say("transfer checks done")

    # -- the goal ------------------------------------------------------------------------------------------------------
    det_diff = [e for e in entries if e.family == "diffusers" and e.deterministic and e.key != "dpm-quad"]
    ours = [e for e in entries if e.family == "diffnotes"]
    best_a = min(det_diff, key=lambda e: e.results[k]["a"])
    best_b = min(det_diff, key=lambda e: e.results[k]["b"])

    def worst_ratio(e):
        return max(e.results[k]["a"] / best_a.results[k]["a"], e.results[k]["b"] / best_b.results[k]["b"])

    rivals = {e.key: e for e in (best_a, best_b)}
    # Time per step = the score call (the same function on the same points for every sampler, once per step) + the
    # sampler's own work; totals differ only by the own work, measured precisely with a free score, at this budget.
    budget = min(e.results["own_work_ms"][k] for e in rivals.values())
    fast = [e for e in ours if e.results["own_work_ms"][k] <= budget]
    best = min(fast or ours, key=worst_ratio)
    most_accurate = min(ours, key=worst_ratio)
    gain_a = 1 - best.results[k]["a"] / best_a.results[k]["a"]
    gain_b = 1 - best.results[k]["b"] / best_b.results[k]["b"]
    time_ok = {key: best.results["own_work_ms"][k] <= e.results["own_work_ms"][k] for key, e in rivals.items()}
    goal = {
        "headline_evals": k, "best_ours": best.key, "best_ours_label": best.label,
        "most_accurate_ours_ignoring_time": most_accurate.key,
        "best_diffusers_a": best_a.key, "best_diffusers_b": best_b.key,
        "a_ours": best.results[k]["a"], "a_diffusers": best_a.results[k]["a"], "gain_a": gain_a,
        "b_ours": best.results[k]["b"], "b_diffusers": best_b.results[k]["b"], "gain_b": gain_b,
        "ms_per_step_ours": best.results[k]["ms_per_step"],
        "ms_per_step_diffusers": {key: e.results[k]["ms_per_step"] for key, e in rivals.items()},
        "own_work_ms_ours": best.results["own_work_ms"][k],
        "own_work_ms_diffusers": {key: e.results["own_work_ms"][k] for key, e in rivals.items()},
        "time_per_step_no_larger": time_ok,
        "met": bool(gain_a >= 0.2 and gain_b >= 0.2 and all(time_ok.values())),
    }
    goal_rows = every_row_goal(entries, transfer_by)
    for kk, g in goal_rows.items():
        say(f"goal at {kk} evaluations, default on every row: {'MET' if g['met'] else 'NOT MET'} "
            f"({g['n_met']} of {len(g['rows'])} rows; worst ratio {g['worst_ratio']:.2f})")
    learned = learned_case(sde, target, entries, say)
    runtime = time.perf_counter() - wall0
    say(f"goal: {goal['best_ours']}: a {gain_a:.0%} better, b {gain_b:.0%} better, time {time_ok} -> "
        f"{'MET' if goal['met'] else 'NOT MET'}")

    # -- outputs -------------------------------------------------------------------------------------------------------
    meta = {
        "samples": n, "mmd_samples": m, "mmd_bandwidth": bandwidth, "repeats": args.repeats,
        "threads": args.threads, "t0": T0, "ode_tol": ODE_TOL, "ode_score_calls": nfev,
        "ode_accuracy_vs_1e-12": ref_accuracy, "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "scipy": scipy.__version__, "diffnotes": diffnotes.__version__
        if hasattr(diffnotes, "__version__") else "editable", "machine": platform.machine(),
        "runtime_s_before_outputs": runtime,
    }
    figure = args.out / "bench_samplers.png"
    plot(entries, floors, refs, best.key, figure)
    results = {
        "meta": meta, "floors": floors, "parity_max_abs": parity, "reproduced": reproduced,
        "alt_reference_last_eval_plus_tweedie": alt, "transfer_10_evals": transfer,
        "transfer_by_evals": {str(kk): v for kk, v in transfer_by.items()}, "goal": goal,
        "goal_every_row": {str(kk): v for kk, v in goal_rows.items()}, "learned": learned,
        "samplers": [{"key": e.key, "label": e.label, "family": e.family, "deterministic": e.deterministic,
                      "output_time": e.tau, "grid": e.grid,
                      "own_work_ms_per_step": {str(kk): v for kk, v in e.results["own_work_ms"].items()},
                      "by_evals": {str(kk): e.results[kk] for kk in EVALS}} for e in entries],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text(report(results, entries, figure.name))
    say(f"wrote {args.out}/report.md, {figure.name}, results.json; total {time.perf_counter() - wall0:.0f} s")
    return 0 if max(parity.values()) < 1e-4 else 1


def every_row_goal(entries, transfer_by):
    """For each goal budget: every row (the benchmark's (a) and (b) and every transfer case), the best deterministic
    diffusers scheduler there, the default's value, their ratio, and whether the default is >= GOAL_GAIN better;
    also the own work per step of the default against the rivals'."""
    rivals = [e for e in entries if e.family == "diffusers" and e.deterministic and e.key != "dpm-quad"]
    default = next(e for e in entries if e.key == DEFAULT_KEY)
    out = {}
    for kk in GOAL_EVALS:
        rows = {"(a) ring std 0.3 (benchmark)": {e.key: e.results[kk]["a"] for e in entries if e.deterministic},
                "(b) N(0, 0.25), absolute (benchmark)": {e.key: e.results[kk]["b"] for e in entries
                                                          if e.deterministic}}
        for c in ("a", "b"):
            for case, d in transfer_by[kk][c].items():
                rows[f"({c}) {case}" + (", relative" if c == "b" else "")] = d
        table = {}
        for name, d in rows.items():
            rival = min(rivals, key=lambda e, d=d: d[e.key])
            ratio = d[DEFAULT_KEY] / d[rival.key]
            table[name] = {"ours": d[DEFAULT_KEY], "diffusers": d[rival.key], "rival": rival.key, "ratio": ratio,
                           "met": bool(ratio <= 1 - GOAL_GAIN)}
        own = {e.key: e.results["own_work_ms"][kk] for e in rivals}
        ratios = [r["ratio"] for r in table.values()]
        out[kk] = {"rows": table, "n_met": sum(r["met"] for r in table.values()), "worst_ratio": max(ratios),
                   "own_work_ms_default": default.results["own_work_ms"][kk], "own_work_ms_diffusers": own,
                   "met": bool(all(r["met"] for r in table.values()))}
    return out


def learned_case(sde, target, entries, say):
    """DSM-trained networks on the ring's samples (LEARNED_NETS trainings that differ only in their seeds): every
    deterministic sampler at the goal budgets against a tight solve of the probability-flow ODE with the same network
    (its own flow, not the data's).  One network is not enough: a sampler's ratio to the best diffusers scheduler
    moves by a factor of up to 3 from one training to the next (measured at 10 evaluations), so the goal on this row
    is met only where it is met on every network."""
    import functools

    from diffnotes.losses import dsm_loss
    from diffnotes.networks import ScoreMLP, as_score
    from diffnotes.training import train

    x_train = target.sample(4000, generator=torch.Generator().manual_seed(7))
    starts = torch.randn(LEARNED_STARTS, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    rivals = [e.key for e in entries if e.family == "diffusers" and e.deterministic and e.key != "dpm-quad"]
    nets = []
    for k, (init_seed, batch_seed) in enumerate(LEARNED_SEEDS):
        net = as_score(ScoreMLP(2, hidden=64, depth=2, generator=init_seed), "eps", sde)
        t1 = time.perf_counter()
        train(net, functools.partial(dsm_loss, t0=T0, sde=sde), x_train, steps=LEARNED_STEPS, batch_size=256,
              lr=2e-3, generator=torch.Generator().manual_seed(batch_seed), progress=False)
        train_s = time.perf_counter() - t1

        def score(x, t, net=net):
            with torch.no_grad():
                return net(x, t)

        ref_t0, nfev = pf_ode_reference(sde, score, starts, T0, tol=LEARNED_ODE_TOL)
        ref_loose, _ = pf_ode_reference(sde, score, starts, T0, tol=LEARNED_ODE_TOL * 100)
        refs = {T0: ref_t0, 0.0: tweedie(sde, score, ref_t0, T0)}
        one = {"seeds": [init_seed, batch_seed], "train_s": train_s, "ode_score_calls": nfev,
               "ode_accuracy_vs_100x_looser": float((ref_t0 - ref_loose).abs().max()),
               "sw_net_flow_to_data": metrics.sliced_wasserstein(refs[0.0], x_train[:LEARNED_STARTS],
                                                                 n_projections=N_PROJ, rng=0),
               "rms": {e.key: {str(kk): rms(e.run(starts, kk, score).double(), refs[e.tau]) for kk in GOAL_EVALS}
                       for e in entries if e.deterministic},
               "goal": {}}
        for kk in GOAL_EVALS:
            rival = min(rivals, key=lambda key, kk=kk, one=one: one["rms"][key][str(kk)])
            ratio = one["rms"][DEFAULT_KEY][str(kk)] / one["rms"][rival][str(kk)]
            one["goal"][str(kk)] = {"rival": rival, "ratio": ratio, "met": bool(ratio <= 1 - GOAL_GAIN)}
        nets.append(one)
        say(f"learned score, network {k + 1}: trained in {train_s:.0f} s; default / best diffusers: " +
            ", ".join(f"{kk} evals {g['ratio']:.2f} ({g['rival']})" for kk, g in one["goal"].items()))
    res = {"train_steps": LEARNED_STEPS, "networks": nets, "goal": {}}
    for kk in map(str, GOAL_EVALS):
        ratios = [one["goal"][kk]["ratio"] for one in nets]
        res["goal"][kk] = {"ratios": ratios, "worst_ratio": max(ratios),
                           "n_met": sum(r <= 1 - GOAL_GAIN for r in ratios), "met": bool(max(ratios) <= 1 - GOAL_GAIN)}
    return res


def _fmt(x, spec=".4f"):
    return "—" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------- figure
def plot(entries, floors, refs, best_key, path):
    use_style()
    fig = plt.figure(figsize=(13, 8.2))
    gs = fig.add_gridspec(2, 4)
    ax_a, ax_b, ax_sw = fig.add_subplot(gs[0, 0:2]), fig.add_subplot(gs[0, 2]), fig.add_subplot(gs[0, 3])
    dif = [e for e in entries if e.family == "diffusers"]
    ours = [e for e in entries if e.family == "diffnotes"]
    style = {}
    for i, e in enumerate(dif):
        style[e.key] = dict(color="0.45" if e.key == "dpm-quad" else COLORS[i], ls="--", marker="s")
    ours_colors = ["#000000", "#56B4E9", "#8C564B", "#7B3294", "#1B7837", "#D55E00"]
    for i, e in enumerate(ours):
        style[e.key] = dict(color=ours_colors[i % len(ours_colors)], ls="-", marker="o")
    for e in entries:
        ks = list(EVALS)
        kw = dict(ms=4, lw=1.3, label=f"{'diffusers' if e.family == 'diffusers' else 'ours'}: {e.label}",
                  **style[e.key])
        if e.deterministic:
            ax_a.loglog(ks, [e.results[k]["a"] for k in ks], **kw)
        ax_b.loglog(ks, [e.results[k]["b"] for k in ks], **kw)
        ax_sw.loglog(ks, [e.results[k]["sw"] for k in ks], **kw)
    lo, hi = floors["sw_two_data_samples"] - floors["sw_two_data_samples_sd"], \
        floors["sw_two_data_samples"] + floors["sw_two_data_samples_sd"]
    band = ax_sw.axhspan(lo, hi, color="0.88", label="two data samples (mean +/- sd)")
    (line,) = ax_sw.plot([EVALS[0], EVALS[-1]], [floors["sw_exact_flow"]] * 2, color="0.3", lw=0.9, ls=":",
                         label="exact flow, same starts")
    ax_sw.legend(handles=[band, line], fontsize=7, loc="upper right")
    ax_a.set(title="(a) RMS distance to the exact probability flow", xlabel="score evaluations", ylabel="RMS")
    ax_b.set(title="(b) exact variance error, N(0, 0.25) data", xlabel="score evaluations", ylabel="|c^2 - exact|")
    ax_sw.set(title="sliced Wasserstein to data", xlabel="score evaluations")
    for ax in (ax_a, ax_b, ax_sw):
        ax.set_xticks(list(EVALS), [str(k) for k in EVALS])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_sw.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_a.legend(fontsize=7, loc="lower left")
    picks = [("exact flow (reference)", refs[0.0][:3000].numpy(), "0.3")]
    for key in ("unipc", "ddim"):
        e = next(x for x in entries if x.key == key)
        picks.append((f"diffusers {e.label.split(' ')[0]}, 10 evals", e.results["sample10"], COLORS[1]))
    best = next(e for e in ours if e.key == best_key)
    title = "ours: " + best.label.replace(", ", ",\n") + ", 10 evals"
    picks.append((title, best.results["sample10"], COLORS[3]))
    for i, (title, xy, c) in enumerate(picks):
        ax = fig.add_subplot(gs[1, i])
        ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.35, color=c)
        ax.set(title=title, xlim=(-5.5, 5.5), ylim=(-5.5, 5.5), aspect="equal")
        ax.title.set_fontsize(8)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- report
def report(res, entries, figure_name):
    meta, goal, floors = res["meta"], res["goal"], res["floors"]
    k = goal["headline_evals"]
    L = []
    w = L.append
    w("# Samplers benchmark: diffusers' schedulers and diffnotes' samplers on one exact score\n")
    w(f"Generated by `make bench` (`python bench/bench_samplers.py`). Run time "
      f"{meta['runtime_s_before_outputs']:.0f} s on this machine ({meta['threads']} torch thread); "
      f"torch {meta['torch']}, diffusers {meta['diffusers']}, SciPy {meta['scipy']}, Python {meta['python']}.\n")
    w("## Set-up\n")
    w("- Data: the 8-Gaussian ring (radius 4, std 0.3), exact score. Forward process: the default DDPM schedule "
      "(1000 steps, betas 1e-4 to 0.02) as `DiscreteVP` built from diffusers' own betas; diffusers timestep j is "
      "time t = (j + 1)/1000.")
    w(f"- Every sampler starts from the same {meta['samples']} draws of N(0, I) at t = 1 and may call the score "
      f"exactly 5, 10, 20 or 50 times (counted). Models get the timestep broadcast to the batch, as in a pipeline; "
      "diffusers gets the noise prediction eps = -sqrt(1 - abar) * score.")
    w("- diffusers (0.42.1): DDIM (trailing, set_alpha_to_one=False, clip_sample=False; stops at t0 = 0.001), "
      "DPMSolverMultistep (dpmsolver++, order 2, trailing), UniPCMultistep (defaults: bh2, order 2, trailing), "
      "EulerDiscrete (trailing, with scale_model_input), DDPM (trailing, fixed_small). DPM-Solver, UniPC, Euler and "
      "DDPM end with a step to sigma = 0, i.e. an x0 prediction: their output is a sample at t = 0. "
      "One ablation row runs DPMSolverMultistep on our quadratic grid via custom timesteps.")
    w("- Ours: time grids from t = 1 to t0 = 0.001 (the grid's first node), rounded to the DDPM nodes k/1000 so every "
      "score call is at a timestep a discrete-time network knows; n evaluations = n steps, no final denoising, so "
      "the output is at t0. `quadratic` is uniform in sqrt(t) (DDIM's grid), `logsnr` uniform in log-SNR.\n")
    w("## Definitions\n")
    w("**Output time.** tau = 0 for a sampler whose last step is an x0 prediction (a step to sigma = 0), "
      "tau = t0 = 0.001 for one that stops at the first DDPM node (diffusers' DDIM and all our rows).\n")
    w(f"**(a) Reference.** The probability-flow ODE in our time, dx/dt = -1/2 g(t) (x + score(x, t)), integrated "
      f"from t = 1 down to t0 = 0.001 from the same start by SciPy `solve_ivp` (DOP853, rtol = atol = 1e-10) in the "
      f"variable G(t) = int_0^t g (the same ODE, dx/dG = -1/2 (x + score); this removes the 1000 jumps of the "
      f"DDPM grid's piecewise-constant g); for tau = 0 it is followed by the same final denoising, Tweedie's "
      f"x0 = (x + h s)/alpha at t0 (our `final_denoise` at the grid's first node; it stands in for the flow from "
      f"0.001 to 0, which the exact score cannot evaluate at t = 0). {meta['ode_score_calls']} score calls; the "
      f"solution moves by at most {meta['ode_accuracy_vs_1e-12']:.1e} when the tolerance is tightened to 1e-12. "
      f"(a) = sqrt(mean over starts of |x_sampler - x_ref|^2), Euclidean in R^2.\n")
    w("**(b) Exact variance error.** Data N(0, 0.25) in 1-D: the exact score is linear, so each deterministic sampler "
      "maps its start x to c x. diffnotes: c^2 from `diffnotes.oracle.gaussian_output_law`; diffusers: the "
      "scheduler run on x = 1 with the exact linear eps-model (linearity checked with x = 2). The exact value is "
      "the law the exact probability flow produces from N(0, 1) at t = 1 at the output time: variance "
      "v(tau)/v(1), v(t) = abar(t) 0.25 + 1 - abar(t), so v(0) = 0.25, the data law, for samplers that end with an "
      "x0 prediction (their last step is a step to t = 0, and its error is part of the sampler's error), and "
      "v(0.001)/v(1) for those that stop at t0. (b) = |c^2 - v(tau)/v(1)|, absolute. For DDPM (stochastic) the "
      "oracle's exact output variance (ddpm, parity-tested against diffusers) is compared with the same target.\n")
    w(f"**Sample metrics.** Sliced Wasserstein (W2, {N_PROJ} fixed random directions) between {meta['samples']} "
      f"outputs and {meta['samples']} fresh data draws; unbiased MMD^2 (Gaussian kernel, bandwidth fixed at "
      f"{meta['mmd_bandwidth']:.3f}, the data's median distance) on {meta['mmd_samples']} of them. Floors: two "
      f"independent data samples of these sizes give SW {floors['sw_two_data_samples']:.4f} +/- "
      f"{floors['sw_two_data_samples_sd']:.4f} and MMD^2 {floors['mmd_two_data_samples']:.1e} +/- "
      f"{floors['mmd_two_data_samples_sd']:.1e} (5 repeats); the exact flow from the same starts gives SW "
      f"{floors['sw_exact_flow']:.4f}, MMD^2 {floors['mmd_exact_flow']:.1e}. With 8 well separated components, "
      f"SW is dominated by the random share of points per component: differences between samplers smaller than "
      f"the floor's spread say nothing, and since all samplers share their starts, the exact flow's value is the "
      f"baseline to compare with.\n")
    w(f"**Time per step.** Wall time of a whole run divided by its score calls (every sampler here makes one call "
      f"per step), with the exact score on {meta['samples']} points; the runs of one budget back to back, minimum of "
      f"{meta['repeats']} runs, {meta['threads']} torch thread. The score call is the same function on the same "
      f"points for every sampler, so the totals differ only by the samplers' own work, which is small against the "
      f"score call and lost in the machine's load changes. It is measured separately and decides the time "
      f"criterion: 'own work' is the CPU time of the same runs with a score that costs nothing (-x), per-run "
      f"set-up included, divided by the steps, at 10 and 50 steps, minimum of {OWN_REPEATS} interleaved runs. "
      f"diffusers' own work includes the conversion eps = -sqrt(1 - abar) score that its noise-prediction "
      f"interface needs (one multiplication a step).\n")
    w("## Validation of the harness\n")
    rep = res["reproduced"]
    w(f"Quoted values (diffusers, {k} evaluations) against this run:\n")
    w("| criterion | scheduler | quoted | measured | within 0.001 |")
    w("|---|---|---|---|---|")
    for crit, d in rep.items():
        for key, r in d.items():
            w(f"| ({crit}) | {key} | {r['quoted']:.3f} | {r['measured']:.4f} | {'yes' if r['ok'] else 'NO'} |")
    w("")
    alt = res["alt_reference_last_eval_plus_tweedie"]
    w("The quoted (a) values are reproduced only with the reference above (the flow to t0, then Tweedie). Against "
      "the other reading, the ODE to each scheduler's last evaluation time (t = 0.1 at 10 evaluations) followed "
      "by Tweedie there, the same outputs score " + ", ".join(f"{kk} {vv:.4f}" for kk, vv in alt.items()) +
      " (1000 starts): that reference contains the final jump from t = 0.1 to t = 0 itself and hides its error.\n")
    par = res["parity_max_abs"]
    w(f"Parity on the same starts at {k} evaluations: our `ddim` on the trailing grid + [0.001] vs diffusers DDIM, "
      f"max |diff| = {par['ddim']:.1e}; our `dpm_solver_pp(lower_order_final=False, final_denoise=True)` vs "
      f"DPMSolverMultistep, max |diff| = {par['dpm']:.1e}.\n")
    w("## Results\n")
    w(f"![benchmark]({figure_name})\n")
    w("(a) and (b): smaller is better; '—' for the stochastic DDPM. SW and MMD^2 against fresh data (floors above). "
      "ms/step: wall time with the exact score; own work: CPU time with a free score (at 10 and 50 steps).\n")
    w("| sampler | grid | evals | (a) RMS to exact flow | (b) variance error | SW | MMD^2 | ms/step | "
      "own work, ms/step |")
    w("|---|---|---|---|---|---|---|---|---|")
    for e in entries:
        for kk in EVALS:
            r = e.results[kk]
            name = f"{e.family}: {e.label}" if kk == EVALS[0] else ""
            grid = ("trailing" if e.family == "diffusers" and e.key != "dpm-quad" else
                    f"power {DEFAULT_CONFIG['rho']}" if e.key == DEFAULT_KEY else
                    "quadratic" if "quad" in e.key else "logsnr") if kk == EVALS[0] else ""
            own = f"{e.results['own_work_ms'][kk]:.3f}" if kk in e.results["own_work_ms"] else ""
            w(f"| {name} | {grid} | {kk} | {_fmt(r['a'])} | {r['b']:.4f} | {r['sw']:.4f} | {r['mmd']:.1e} | "
              f"{r['ms_per_step']:.2f} | {own} |")
    w("")
    w(f"## The goal at {k} evaluations\n")
    ga, gb = goal["gain_a"], goal["gain_b"]
    w(f"The best diffusers schedulers at {k} evaluations: {goal['best_diffusers_a']} on (a), "
      f"{goal['best_diffusers_b']} on (b). Our best sampler (the one of ours whose own work per step is no larger "
      f"than theirs and whose larger ratio to them on (a) and (b) is smallest; one sampler and grid for both): "
      f"**{goal['best_ours_label']}**.\n")
    w(f"- (a): {goal['a_ours']:.4f} against {goal['a_diffusers']:.4f} ({goal['best_diffusers_a']}): "
      f"{ga:.0%} smaller (goal: at least 20%).")
    w(f"- (b): {goal['b_ours']:.4f} against {goal['b_diffusers']:.4f} ({goal['best_diffusers_b']}): "
      f"{gb:.0%} smaller (goal: at least 20%).")
    w(f"- Time per step: own work {goal['own_work_ms_ours']:.3f} ms against " +
      ", ".join(f"{kk} {vv:.3f} ms" for kk, vv in goal["own_work_ms_diffusers"].items()) +
      f" ({', '.join(f'no larger than {kk}: {vv}' for kk, vv in goal['time_per_step_no_larger'].items())}); "
      f"total with the exact score {goal['ms_per_step_ours']:.2f} ms against " +
      ", ".join(f"{kk} {vv:.2f} ms" for kk, vv in goal["ms_per_step_diffusers"].items()) + ".")
    if goal["most_accurate_ours_ignoring_time"] != goal["best_ours"]:
        mk = goal["most_accurate_ours_ignoring_time"]
        me = next(e for e in entries if e.key == mk)
        w(f"- Without the time criterion the most accurate of ours at {k} evaluations is {me.label} "
          f"((a) {me.results[k]['a']:.4f}, (b) {me.results[k]['b']:.4f}), whose own work per step, "
          f"{me.results['own_work_ms'][k]:.3f} ms, is larger than the rivals' (see the table).")
    w(f"- **Goal {'met' if goal['met'] else 'NOT met'}.**\n")
    w("## Transfer: the same samplers at 10 evaluations on other data\n")
    w("Not used to choose anything; a check that the ranking is not specific to the benchmark's target. (a) as "
      "above on rings with other component std (2000 starts); (b) relative variance error |c^2 - exact|/var on "
      "N(0, var).\n")
    tr = res["transfer_10_evals"]
    cols = [(c, case) for c in ("a", "b") for case in tr[c]]
    w("| sampler | " + " | ".join(f"({c}) {case}" for c, case in cols) + " |")
    w("|---|" + "---|" * len(cols))
    for e in entries:
        if not e.deterministic:
            continue
        w(f"| {e.family}: {e.label} | " + " | ".join(f"{tr[c][case][e.key]:.4f}" for c, case in cols) + " |")
    rivals = [e.key for e in entries if e.family == "diffusers" and e.deterministic and e.key != "dpm-quad"]
    ratios = {(c, case): tr[c][case][goal["best_ours"]] / min(tr[c][case][key] for key in rivals) for c, case in cols}
    w("| **our best / best diffusers** | " + " | ".join(f"**{ratios[col]:.2f}**" for col in cols) + " |")
    w("")
    worse = [f"({c}) {case}" for (c, case), r in ratios.items() if r > 0.8]
    w(f"Our best sampler is at least 20% better than every diffusers scheduler in "
      f"{sum(r <= 0.8 for r in ratios.values())} of these {len(ratios)} cases" +
      (f"; not in {', '.join(worse)}." if worse else ".") +
      " The gain comes mostly from the time grid (see the ablation row: diffusers' own DPM-Solver++ on the quadratic "
      "timesteps). The trailing grid evaluates the score last at t = 1/n and then jumps to t = 0 in one x0 "
      "prediction, which costs most where the data have structure at small scales (small variance); for broad data "
      "that jump is nearly harmless, and there the trailing schedulers do as well as ours or better.\n")
    w(f"## The goal at {' and '.join(map(str, GOAL_EVALS))} evaluations on every row\n")
    w(f"The package's default, `samplers.sample` ({DEFAULT_CONFIG['sampler']} with {DEFAULT_CONFIG['options']} on "
      f"the power grid rho = {DEFAULT_CONFIG['rho']} to t_last = {DEFAULT_CONFIG['t_last']}, then the final "
      f"denoising call), against the best "
      f"deterministic diffusers scheduler of each row (trailing grids; the ablation row excluded). Goal: ratio "
      f"ours / theirs at most {1 - GOAL_GAIN:.1f} (at least {GOAL_GAIN:.0%} better). The grid rule is fixed in "
      f"the package; it was chosen by bench/grid_rule.py on a family of 1-D two-component Gaussian mixtures, not "
      f"on these targets.\n")
    for kk, g in res["goal_every_row"].items():
        w(f"**{kk} evaluations: goal {'met' if g['met'] else 'NOT met'}** ({g['n_met']} of {len(g['rows'])} rows; "
          f"own work per step {g['own_work_ms_default']:.3f} ms against " +
          ", ".join(f"{key} {v:.3f} ms" for key, v in g["own_work_ms_diffusers"].items()) + ").\n")
        w("| row | best diffusers | theirs | ours (default) | ratio | met, or missed by |")
        w("|---|---|---|---|---|---|")
        for name, r in g["rows"].items():
            verdict = "met" if r["met"] else f"missed: {r['ratio'] / (1 - GOAL_GAIN):.2f}x the goal"
            w(f"| {name} | {r['rival']} | {r['diffusers']:.4f} | {r['ours']:.4f} | {r['ratio']:.2f} | {verdict} |")
        w("")
    lr = res["learned"]
    nets = lr["networks"]
    w("## Learned score: DSM-trained networks\n")
    w(f"{len(nets)} `ScoreMLP`s (2 hidden layers of 64, noise prediction), each trained by denoising score matching "
      f"on the same 4000 draws of the ring ({lr['train_steps']} Adam steps; the trainings differ only in their "
      f"initialisation and batch seeds). Reference for each: the probability-flow ODE with the same network, DOP853 "
      f"at rtol = atol = {LEARNED_ODE_TOL:g} (it moves by at most "
      f"{max(n['ode_accuracy_vs_100x_looser'] for n in nets):.1e} at a 100 times looser tolerance), then Tweedie at "
      f"t0 for samplers that end with an x0 prediction, as in (a). {LEARNED_STARTS} starts. The networks' own flows "
      f"are at sliced Wasserstein " + ", ".join(f"{n['sw_net_flow_to_data']:.3f}" for n in nets) + " from the data "
      "(the learning error, which no sampler removes). A single network does not decide this row: the ratios "
      "below move a lot from one training to the next, so the goal counts as met only on every network.\n")
    w("| sampler | " + " | ".join(f"RMS at {kk} (network 1, 2, ...)" for kk in GOAL_EVALS) + " |")
    w("|---|" + "---|" * len(GOAL_EVALS))
    for e in entries:
        if e.key in nets[0]["rms"]:
            w(f"| {e.family}: {e.label} | " + " | ".join(
                ", ".join(f"{n['rms'][e.key][str(kk)]:.3f}" for n in nets) for kk in GOAL_EVALS) + " |")
    w("")
    w("Default / best diffusers, per network: " + "; ".join(
        f"{kk} evaluations " + ", ".join(f"{r:.2f}" for r in g["ratios"]) +
        f" ({'met' if g['met'] else 'NOT met'}: {g['n_met']} of {len(g['ratios'])} networks)"
        for kk, g in lr["goal"].items()) + ".\n")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
