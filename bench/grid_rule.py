r"""The rule that chose the default sampler configuration of diffnotes (``samplers.DEFAULT_CONFIG``).

Not part of ``make bench``'s measurement (run it with ``python bench/grid_rule.py``, about a minute on one core).  It
never looks at the benchmark's targets: its data are a fixed family of 1-D laws, symmetric two-component Gaussian
mixtures :math:`\tfrac12\mathsf N(-m, s^2) + \tfrac12\mathsf N(m, s^2)` with m in {0, 1, 2, 5} (m = 0: Gaussians)
and s in {0.03, 0.1, 0.3, 1, 3}, one per coordinate of a 20-dimensional product law whose exact score is
coordinate-wise (every sampler of diffnotes acts coordinate by coordinate with scalar coefficients, so one run
serves the whole family).  Forward process: the DDPM grid of ``make bench`` (1000 steps, betas 1e-4 to 0.02).

Candidates: solver ``exponential_multistep`` of order 2 or 3 with the corrector; grid uniform in :math:`t^{1/\rho}`
(``samplers.power_grid``) for rho in {1, 1.5, ..., 4}, rounded to the DDPM nodes; last step either none (the grid
ends at t0 = 0.001, every evaluation is a step, output at t0) or the final denoising call at t_last in
{0.001, ..., 0.1} (n - 1 steps and Tweedie's estimate, output at t = 0).  Error of a candidate at n evaluations: for
each member, the RMS over 256 common starts of the distance to the probability-flow solution from the same start
(3000 third-order steps on the log-SNR grid, followed by Tweedie's estimate at t0 for outputs at t = 0), divided by
the data scale :math:`\sqrt{m^2 + s^2}`; score: the mean over the family of its log, averaged over n = 5 and 10.
The candidate with the smallest score is the default.
"""

from __future__ import annotations

import itertools
import sys

import torch

from diffnotes.samplers import DEFAULT_CONFIG, exponential_multistep, on_nodes, power_grid, time_grid
from diffnotes.sde import DiscreteVP

T0 = 1e-3
M, S = (0.0, 1.0, 2.0, 5.0), (0.03, 0.1, 0.3, 1.0, 3.0)
RHOS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
LAST = (None, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 0.1)  # None: no final denoising, the grid ends at T0
BUDGETS = (5, 10)


def main() -> int:
    torch.set_num_threads(1)
    sde = DiscreteVP.ddpm()
    m = torch.tensor([a for a in M for _ in S], dtype=torch.float64)
    s = torch.tensor([b for _ in M for b in S], dtype=torch.float64)
    scale = torch.sqrt(m**2 + s**2)

    def score(x, t):  # exact score of the product of the 1-D mixtures, coordinate-wise
        t = t.reshape(-1, 1)
        a, h = sde.alpha(t), sde.h(t)
        v = a**2 * s**2 + h
        return (a * m * torch.tanh(x * a * m / v) - x) / v

    x0 = torch.randn(256, m.numel(), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref = exponential_multistep(score, x0, time_grid(sde, T0, 3000, "logsnr"), sde=sde, order=3)
    check = exponential_multistep(score, x0, time_grid(sde, T0, 1500, "logsnr"), sde=sde, order=3)
    print(f"reference: 3000 steps; moves by {float((ref - check).abs().max()):.1e} from 1500 steps")
    t0_rows = torch.full((x0.shape[0],), T0, dtype=torch.float64)
    refs = {False: ref, True: sde.denoise(ref, score(ref, t0_rows), T0)}

    def error(n, order, rho, last):
        denoise = last is not None
        grid = on_nodes(power_grid(sde, last if denoise else T0, n - 1 if denoise else n, rho), 1000)
        out = exponential_multistep(score, x0, grid, sde=sde, order=order, final_denoise=denoise)
        return float(torch.log(((out - refs[denoise]) ** 2).mean(0).sqrt() / scale).mean())

    rows = []
    for order, rho, last in itertools.product((2, 3), RHOS, LAST):
        errs = [error(n, order, rho, last) for n in BUDGETS]
        rows.append((sum(errs) / len(errs), errs, order, rho, last))
    rows.sort(key=lambda r: r[0])
    print("score  " + "  ".join(f"n={n}" for n in BUDGETS) + "  order  rho  final denoising at")
    for r in rows[:10]:
        print(f"{r[0]:6.3f} " + " ".join(f"{e:6.3f}" for e in r[1]) + f"  {r[2]}  {r[3]:4.1f}  {r[4]}")
    best = rows[0]
    chosen = (DEFAULT_CONFIG["options"]["order"], DEFAULT_CONFIG["rho"], DEFAULT_CONFIG["t_last"])
    ok = (best[2], best[3], best[4]) == chosen and DEFAULT_CONFIG["final_denoise"]
    print(f"rule's choice: order {best[2]}, rho {best[3]}, t_last {best[4]}; DEFAULT_CONFIG "
          f"{'agrees' if ok else 'DISAGREES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
